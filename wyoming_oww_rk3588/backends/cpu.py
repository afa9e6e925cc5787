"""CPU backends over onnxruntime: the exact reference path, and the fallback for every other.

The graphs are the shipped ONNX files, rewritten by `graphs.py` only to batch and stream.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import onnx

from .. import graphs
from ..errors import BackendUnavailable, ModelError
from ..models.registry import ModelInfo, builtin_feature_path

_LOGGER = logging.getLogger(__name__)


def session_options(threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # With --threads > 1, idle pool threads would spin between the engine's many small calls,
    # taking the cores that the other workers and the event loop need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # onnxruntime's shape-merge warnings are noise here
    return options


def make_session(model: onnx.ModelProto | str, threads: int = 1):
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, sess_options=session_options(threads), providers=["CPUExecutionProvider"])


#: Stream-steps per onnxruntime call of the streaming embedding: bigger calls spill the
#: activations out of the caches (benchmarks/bench_backlog.py: 5-15 % less per step at 200
#: streams that are behind, the same when live).
EMBEDDING_ROWS_PER_CALL = 64


class CpuFeatures:
    """Melspectrogram and speech embedding on onnxruntime, batched and streaming."""

    name = "cpu"

    def __init__(self, threads: int = 1) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as err:
            raise BackendUnavailable("onnxruntime is not installed; pip install onnxruntime") from err
        mel_model = onnx.load(str(builtin_feature_path("melspectrogram")))
        embedding_model = onnx.load(str(builtin_feature_path("embedding")))
        mel = graphs.batched_mel(mel_model)
        self._mel = make_session(mel, threads)
        streaming, self.layout = graphs.streaming_embedding(embedding_model)
        self._step = make_session(streaming, threads)
        # One step's mel, scaling and embedding in one call: what a live stream takes each 80 ms.
        self._fused = make_session(graphs.fused_features(mel, streaming), threads)
        self._window = make_session(embedding_model, threads)
        self._state_names = list(self.layout.state_names)

    def melspectrogram(self, audio: np.ndarray) -> np.ndarray:
        # The model's own STFT conv, batched: row for row bit-identical to openWakeWord's call.
        out = self._mel.run(None, {"input": np.ascontiguousarray(audio, dtype=np.float32)})[0]
        return out[:, 0]  # [B, 1, F, 32] -> [B, F, 32]

    def features_step(self, audio: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """audio [B, 1760] float32 (one step and its 480 samples of context) -> (embeddings
        [B, 96], states after the step): `melspectrogram`, scaling and `embed_step` in one call,
        the same numbers."""
        feeds = {"mel_input": np.ascontiguousarray(audio, dtype=np.float32)}
        feeds.update(zip(self._state_names, states))
        out = self._fused.run(None, feeds)
        return out[0][:, -1], out[1:]

    def embed_step(self, mel: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        embeddings, states = self.embed_steps(mel, states)
        return embeddings[:, -1], states

    def embed_steps(self, mel: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """mel [B, 8K, 32] (K consecutive steps) -> (embeddings [B, K, 96], states after step K)."""
        steps = mel.shape[1] // 8
        part = max(1, EMBEDDING_ROWS_PER_CALL // steps)
        if len(mel) <= part:
            return self._embed(mel, states)
        parts = [self._embed(mel[i : i + part], [s[i : i + part] for s in states]) for i in range(0, len(mel), part)]
        return np.concatenate([p[0] for p in parts]), [np.concatenate(layer) for layer in zip(*(p[1] for p in parts))]

    def _embed(self, mel: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = {"mel": np.ascontiguousarray(mel[..., None], dtype=np.float32)}
        feeds.update(zip(self._state_names, states))  # batch slices of C-ordered arrays stay contiguous
        out = self._step.run(None, feeds)
        return out[0], out[1:]

    def embed_windows(self, mel: np.ndarray) -> np.ndarray:
        if len(mel) == 0:
            return np.zeros((0, 96), np.float32)
        out = self._window.run(None, {"input_1": np.ascontiguousarray(mel[..., None], dtype=np.float32)})[0]
        return out.reshape(len(mel), 96)

    def close(self) -> None:
        pass


class CpuHeads:
    """Wake-word heads (ONNX) on onnxruntime: one batched call per step for all the heads of a
    round that share an opset (`score_many`), or one per head (`score`)."""

    name = "cpu"
    #: Merged sessions kept, one per set of heads scored together (satellites asking for
    #: different wake words make different sets).
    MERGED_SESSIONS = 8

    def __init__(self, threads: int = 1) -> None:
        self._threads = threads
        self._sessions: dict[str, object] = {}
        self._graphs: dict[str, onnx.ModelProto] = {}  # batched heads, to merge
        self._merged: dict[tuple[str, ...], list] = {}
        self._lock = threading.Lock()

    def unsupported_reason(self, model: ModelInfo) -> str | None:
        return None if model.format == "onnx" else f"{model.format} heads need the tflite backend"

    def load(self, model: ModelInfo) -> None:
        with self._lock:
            if model.name in self._sessions:
                return
            try:
                graph = graphs.batched_head(onnx.load(str(model.path)))
                session = make_session(graph, self._threads)
            except Exception as err:  # noqa: BLE001 - onnx/ort raise many types for a bad file
                raise ModelError(f"{model.path.name} cannot be loaded by onnxruntime ({err}); replace the file") from err
            self._sessions[model.name] = (session, session.get_inputs()[0].name)
            self._graphs[model.name] = graph

    def score(self, model: ModelInfo, windows: np.ndarray) -> np.ndarray:
        if model.name not in self._sessions:
            self.load(model)
        session, input_name = self._sessions[model.name]
        out = session.run(None, {input_name: np.ascontiguousarray(windows, dtype=np.float32)})[0]
        return out.reshape(len(windows), model.n_outputs)

    def score_many(self, models: list[ModelInfo], windows: list[np.ndarray]) -> list[np.ndarray]:
        """Each model's scores for its windows [B_i, window_i, 96], as `score` gives them."""
        out: list[np.ndarray] = [np.empty(0)] * len(models)
        for session, members, inputs in self._plan(models):
            feeds = {name: np.ascontiguousarray(windows[i], dtype=np.float32) for i, name in zip(members, inputs)}
            for i, scores in zip(members, session.run(None, feeds)):
                out[i] = scores.reshape(len(windows[i]), models[i].n_outputs)
        return out

    def _plan(self, models: list[ModelInfo]) -> list:
        """[(session, model indices, input names)]: one merged session per opset among `models`."""
        key = tuple(m.name for m in models)
        plan = self._merged.get(key)
        if plan is not None:
            return plan
        for model in models:
            self.load(model)
        # One group for every head that means the same at the newest default opset among them
        # (the built-ins: opset 13 and hey_rhasspy's 14), one per opset for the rest.
        newest = max((o.version for m in models for o in self._graphs[m.name].opset_import
                      if o.domain in ("", "ai.onnx")), default=None)
        groups: dict[tuple, list[int]] = {}
        for i, model in enumerate(models):
            graph = self._graphs[model.name]
            group = (("", newest),) if newest is not None and graphs.same_at_opset(graph, newest) else \
                tuple((o.domain, o.version) for o in graph.opset_import)
            groups.setdefault(group, []).append(i)
        plan = []
        for group, members in groups.items():
            if len(members) == 1:
                session, input_name = self._sessions[models[members[0]].name]
                plan.append((session, members, [input_name]))
                continue
            try:
                merged = graphs.merged_heads([self._graphs[models[i].name] for i in members],
                                             opset=newest if group == (("", newest),) else None)
                session = make_session(merged, self._threads)
            except Exception as err:  # noqa: BLE001 - then one call per head, as before
                _LOGGER.warning("Could not merge heads %s (%s); scoring them one by one",
                                ", ".join(models[i].name for i in members), err)
                plan += [(self._sessions[models[i].name][0], [i], [self._sessions[models[i].name][1]])
                         for i in members]
                continue
            plan.append((session, members, [graph_input.name for graph_input in merged.graph.input]))
        with self._lock:
            while len(self._merged) >= self.MERGED_SESSIONS:
                self._merged.pop(next(iter(self._merged)))
            self._merged[key] = plan
        return plan

    def close(self) -> None:
        self._sessions.clear()
        self._merged.clear()
