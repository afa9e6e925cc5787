"""The VAD gate: Silero VAD speech probability per 80 ms step, batched over every stream that
turned it on, and openWakeWord 0.6.0's rule for zeroing wake-word scores when speech is unlikely.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import AttributeProto, helper

from .features import FRAME_SAMPLES
from .models.registry import builtin_feature_path

# openWakeWord's `VAD.__call__` runs the model on 640-sample pieces (its `frame_size=160*4`
# default), so two per 80 ms step, and keeps their mean as that step's score.
VAD_FRAME_SAMPLES = 640
VAD_FRAMES_PER_STEP = FRAME_SAMPLES // VAD_FRAME_SAMPLES
VAD_STATE_SHAPE = (2, 64)  # LSTM h and c, per stream: [layers, 64]
# Step t is gated on the highest score of steps t-6 .. t-4 (`prediction_buffer[-7:-4]`): the
# 0.32-0.48 s of audio before the newest 80 ms, where the wake word was being spoken.
GATE_SLICE = slice(-7, -4)
SCORE_HISTORY = 7  # steps kept per stream: all the gate ever reads
INT16_SCALE = 32767  # openWakeWord divides by 32767, not 32768


@dataclass
class VadState:
    """One stream's VAD: LSTM state, recent speech scores, and whether its scores are zeroed."""

    threshold: float
    h: np.ndarray = field(default_factory=lambda: np.zeros(VAD_STATE_SHAPE, np.float32))
    c: np.ndarray = field(default_factory=lambda: np.zeros(VAD_STATE_SHAPE, np.float32))
    scores: list[float] = field(default_factory=list)  # float32 values, newest last
    muted: bool = True  # openWakeWord zeroes scores until 5 VAD steps exist

    def update(self, score: float) -> None:
        self.scores.append(score)
        del self.scores[:-SCORE_HISTORY]
        window = self.scores[GATE_SLICE]
        # openWakeWord compares a float32 maximum with the Python threshold; under numpy 2
        # (NEP 50) that comparison is made in float32, so it is made in float32 here too.
        self.muted = not window or np.float32(max(window)) < np.float32(self.threshold)


def _rename(graph: onnx.GraphProto, rename) -> None:
    """Rename every value in `graph` and its If branches (which read outer names)."""
    for node in graph.node:
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        if node.name:
            node.name = rename(node.name)
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                _rename(attr.g, rename)
            for sub in attr.graphs:
                _rename(sub, rename)
    for values in (graph.input, graph.output, graph.initializer, graph.value_info):
        for value in values:
            value.name = rename(value.name)


def two_frame_vad(model: onnx.ModelProto) -> onnx.ModelProto:
    """Silero VAD run twice in one graph (the second piece starts from the first's LSTM state),
    so one 80 ms step of every stream is one onnxruntime call. Weights are shared."""
    shared = {i.name for i in model.graph.initializer} | {"sr", ""}
    copies = []
    for prefix, wiring in (("first/", {}), ("second/", {"h": "first/hn", "c": "first/cn"})):
        graph = onnx.GraphProto()
        graph.CopyFrom(model.graph)
        _rename(graph, lambda n, p=prefix, w=wiring: w.get(n, n if n in shared else p + n))
        copies.append(graph)
    first, second = copies
    values = {v.name: v for g in copies for v in (*g.input, *g.output)}
    inputs = [values[n] for n in ("first/input", "second/input", "first/h", "first/c", "sr")]
    outputs = [values[n] for n in ("first/output", "second/output", "second/hn", "second/cn")]
    graph = helper.make_graph(
        [*first.node, *second.node], "silero_vad_two_frames", inputs, outputs, list(model.graph.initializer)
    )
    return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


class VadStage:
    """Silero VAD (the ONNX model openWakeWord ships) for many streams: one call per step."""

    def __init__(self, threads: int = 1) -> None:
        from .backends.cpu import make_session

        self._session = make_session(two_frame_vad(onnx.load(str(builtin_feature_path("silero_vad")))), threads)
        self._sample_rate = np.array(16000, np.int64)

    @staticmethod
    def new_state(threshold: float) -> VadState:
        return VadState(threshold=threshold)

    def step(self, streams: list, frames: np.ndarray) -> None:
        """Score one 80 ms frame ([B, 1280] int16) of each stream that has a `.vad` state
        (the others are skipped), and update its gate."""
        rows = [i for i, s in enumerate(streams) if s.vad is not None]
        if not rows:
            return
        states = [streams[i].vad for i in rows]
        # As openWakeWord: int16 / 32767 in float64, then float32.
        audio = (frames[rows] / INT16_SCALE).astype(np.float32)
        first, second, h, c = self._session.run(None, {
            "first/input": audio[:, :VAD_FRAME_SAMPLES],
            "second/input": audio[:, VAD_FRAME_SAMPLES:],
            "first/h": np.stack([s.h for s in states], axis=1),  # [2, B, 64]
            "first/c": np.stack([s.c for s in states], axis=1),
            "sr": self._sample_rate,
        })
        scores = (first[:, 0] + second[:, 0]) / np.float32(VAD_FRAMES_PER_STEP)  # np.mean of two, in float32
        for i, state in enumerate(states):
            state.h, state.c = h[:, i], c[:, i]
            state.update(float(scores[i]))
