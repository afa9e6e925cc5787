"""The engine: one per process, owns the backends, advances all streams in batched steps.

Each round takes one ready 80 ms frame from every stream that has one and runs each stage
once for all of them (VAD and noise suppression where streams turned them on, one features
batch, one call per wake-word model and verifier), then the detectors. Connections never
run models themselves.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Iterable, Sequence

import numpy as np

from .backends.route import choose as choose_route
from .backends.select import cpu_features_factory, select_features, select_heads
from .denoise import NoiseSuppressor, speex_factory, suppress_noise
from .detector import Detection, DetectorConfig, update
from .features import FeaturePipeline
from .heads import HeadRunner
from .models.registry import ModelInfo, ModelRegistry
from .stream import StreamState
from .vad import VadStage
from .verifier import DEFAULT_VERIFIER_THRESHOLD, Verifier

_LOGGER = logging.getLogger(__name__)

#: Most frames one stream moves per round when it is behind (8 = 640 ms of audio).
MAX_STEPS_PER_ROUND = 8


@functools.lru_cache(maxsize=64)
def _window_index(length: int, steps: int, window: int) -> np.ndarray:
    """[steps, window] positions, in a history of `length` embeddings whose last `steps` are
    new, of the windows that end at each new step."""
    first = length - steps - window + 1
    return first + np.arange(steps)[:, None] + np.arange(window)[None, :]


class Engine:
    def __init__(
        self,
        registry: ModelRegistry | None = None,
        features_backend: str = "auto",
        heads_backend: str = "auto",
        detector: DetectorConfig | None = None,
        threads: int = 1,
        precision: str = "fp32",
        rknn_options: dict | None = None,
        noise_suppression: bool = False,
        verifiers: dict[str, Verifier] | None = None,
        verifier_threshold: float = DEFAULT_VERIFIER_THRESHOLD,
    ) -> None:
        from .backends.cpu import CpuHeads

        self.registry = registry or ModelRegistry()
        self.detector = detector or DetectorConfig()
        self._threads = threads
        self._vad_lock = threading.Lock()
        self.vad = VadStage(threads) if self.detector.vad_threshold > 0 else None
        # Checked here, so a missing binding stops the start with one line, not the first stream.
        self._speex = speex_factory() if noise_suppression else None
        self.verifiers = dict(verifiers or {})  # canonical model name -> Verifier
        self._threshold_rows: dict[tuple[str, int], tuple[DetectorConfig, np.ndarray]] = {}
        self.verifier_threshold = verifier_threshold
        backend, self.features_reason = select_features(features_backend, threads=threads, precision=precision)
        alternates, route = (), None
        if str(features_backend).lower() == "auto" and backend.name != "cpu":
            # A device only where it is faster: each batch size to the backend measured faster here.
            backend, alternates, route, measured = choose_route(backend, cpu_features_factory(threads))
            self.features_reason += f"; routed by measured speed: {measured.describe()}"
        self.features = FeaturePipeline(backend, fallback_factory=cpu_features_factory(threads),
                                        alternates=alternates, route=route)
        self.heads = HeadRunner(
            select_heads(heads_backend, threads=threads, rknn_options=rknn_options),
            cpu_factory=lambda: CpuHeads(threads=threads),
        )

    @property
    def backends(self) -> dict[str, str]:
        """What actually runs: {"features": "cpu"|"opencl", "heads": "cpu"|"rknn"|"tflite"|"rknn+cpu"}."""
        used = sorted(set(self.heads.names().values()), key=lambda n: (n == "cpu", n))
        return {"features": self.features.name, "heads": "+".join(used) or self.heads.backends[0].name}

    def preload(self, models: Iterable[ModelInfo]) -> None:
        for model in models:
            self.heads.backend_for(model)

    def open_stream(
        self, models: Sequence[tuple[str, ModelInfo]], detector: DetectorConfig | None = None
    ) -> StreamState:
        """A fresh stream listening to `models` ((asked name, model) pairs)."""
        self.preload(info for _, info in models)
        history = max((info.window for _, info in models), default=1)
        detector = detector or self.detector
        if detector.vad_threshold > 0 and self.vad is None:
            with self._vad_lock:
                self.vad = self.vad or VadStage(self._threads)
        return StreamState(
            models=list(models),
            features=self.features.new_state(history),
            detector=detector,
            vad=VadStage.new_state(detector.vad_threshold) if detector.vad_threshold > 0 else None,
            denoiser=NoiseSuppressor(self._speex) if self._speex is not None else None,
        )

    def process(
        self, streams: Sequence[StreamState], max_rounds: int | None = None
    ) -> list[tuple[StreamState, Detection]]:
        """Run rounds until no stream has a full frame left, or `max_rounds` rounds of one
        frame each; returns the detections in order.

        Without `max_rounds`, a stream that has fallen behind (a busy server) moves up to
        MAX_STEPS_PER_ROUND frames per round in one features call where the backend does that
        for less (the CPU): the same numbers, step by step through the heads and detectors,
        for less work per step, so a backlog clears faster than it grew."""
        detections: list[tuple[StreamState, Detection]] = []
        rounds = 0
        while max_rounds is None or rounds < max_rounds:
            ready = [s for s in streams if s.ready]
            if not ready:
                break
            rounds += 1
            groups: dict[int, list[StreamState]] = {}
            for stream in ready:
                groups.setdefault(self._steps_for(stream, max_rounds), []).append(stream)
            for steps, members in groups.items():
                self._advance(members, steps, detections)
        return detections

    def _steps_for(self, stream: StreamState, max_rounds: int | None) -> int:
        # VAD and noise suppression keep their per-frame state: those streams go one by one.
        if max_rounds is not None or stream.vad is not None or stream.denoiser is not None or not self.features.multi_step:
            return 1
        return min(MAX_STEPS_PER_ROUND, stream.ready_frames)

    def _advance(self, streams: list[StreamState], steps: int, detections: list) -> None:
        """`steps` frames of every stream through the features, then all of them through each
        model in one call, then the detectors step by step in order."""
        frames = np.stack([s.take_frames(steps) for s in streams])  # [B, steps, 1280]
        if steps == 1:
            if self.vad is not None:
                self.vad.step(streams, frames[:, 0])  # on the audio as it came, as openWakeWord does
            if self._speex is not None:
                frames = suppress_noise(streams, frames[:, 0])[:, None]
        states = [s.features for s in streams]
        embeddings = self.features.advance(states, frames)  # [B, steps, 96]
        scored = self._scores(streams, embeddings)
        first_step = [s.steps + 1 for s in states]
        self.features.push(states, embeddings)
        for k in range(steps):
            self._detect_step(streams, scored, k, first_step, detections)
        for info, listeners, scores, _ in scored:  # each stream's latest scores, per label
            for (i, _), row in zip(listeners, scores[:, -1].tolist()):
                streams[i].scores.update(zip(info.labels, row))

    def _scores(self, streams: list[StreamState], embeddings: np.ndarray) -> list:
        """Every model's scores for every step of its listeners, one call per model (one for
        all of them where the backend merges them): [(model, [(stream index, asked name)],
        scores [listeners, steps, labels] float32 with VAD-muted rows zeroed, and [listeners,
        steps] whether any label reached its threshold)]."""
        members: dict[str, tuple[ModelInfo, list[tuple[int, str]]]] = {}
        for i, stream in enumerate(streams):
            for asked, info in stream.models:
                members.setdefault(info.name, (info, []))[1].append((i, asked))
        steps = embeddings.shape[1]
        history = self.features.histories([s.features for s in streams])  # [B, H, 96], before this round
        extended = np.concatenate([history, embeddings], axis=1)  # [B, H + steps, 96]
        everyone = list(range(len(streams)))
        infos, windows = [], []
        gathered: dict[tuple, np.ndarray] = {}  # models of one window length share their windows
        for info, listeners in members.values():
            rows = [i for i, _ in listeners]
            key = (info.window, None if rows == everyone else tuple(rows))
            if key not in gathered:
                part = extended if key[1] is None else extended[rows]
                # The windows that end at each new step, in one gather: [B' * steps, window, 96].
                index = _window_index(extended.shape[1], steps, info.window)
                gathered[key] = np.take(part, index, axis=1).reshape(-1, info.window, extended.shape[2])
            infos.append(info)
            windows.append(gathered[key])
        out = []
        muted = [i for i, s in enumerate(streams) if s.vad is not None and s.vad.muted]
        for info, (_, listeners), model_windows, scores in zip(
                infos, members.values(), windows, self.heads.score_many(infos, windows)):
            verifier = self.verifiers.get(info.name)
            if verifier is not None:
                scores = verifier.rescore(scores, model_windows, info.label_columns, self.verifier_threshold)
            scores = np.asarray(scores)[:, list(info.label_columns)].reshape(len(listeners), steps, -1)
            if muted:
                scores = scores.copy()
                scores[[j for j, (i, _) in enumerate(listeners) if i in muted]] = 0.0
            # Compared as update() compares, Python floats (float64) against the thresholds.
            thresholds = self._thresholds(info, [streams[i].detector for i, _ in listeners])
            hot = (scores >= thresholds[:, None] if thresholds.ndim == 2 else scores >= thresholds).any(axis=2)
            out.append((info, listeners, scores, hot))
        return out

    def _detect_step(self, streams: list[StreamState], scored: list, k: int, first_step: list[int],
                     detections: list) -> None:
        """Step `k`'s scores of every model through their listeners' detectors. Only a stream
        with a score at or over its threshold, or a label still counting, can change state:
        `_scores` found the first kind for every step in one comparison per model, and only
        they go through `update`."""
        for info, listeners, scores, hot in scored:
            counting = [j for j, (i, _) in enumerate(listeners) if streams[i].labels]
            if not counting and not hot[:, k].any():
                continue  # the common case, one comparison: nothing over a threshold, nothing counting
            rows = set(np.flatnonzero(hot[:, k]).tolist())
            rows.update(counting)
            for j in sorted(rows):
                i, asked = listeners[j]
                stream = streams[i]
                for label, score in zip(info.labels, scores[j, k].tolist()):
                    found = update(stream.detector, stream.labels, info.name, asked, label, score, first_step[i] + k)
                    if found is not None:
                        detections.append((stream, found))

    def _thresholds(self, info: ModelInfo, detectors: list[DetectorConfig]) -> np.ndarray:
        """[labels], or [listeners, labels] where their detectors differ."""
        first = detectors[0]
        if all(d is first for d in detectors):
            # Kept per model and detector (a frozen config): one lookup per model per round.
            cached = self._threshold_rows.get((info.name, id(first)))
            if cached is None or cached[0] is not first:
                if len(self._threshold_rows) > 256:
                    self._threshold_rows.clear()
                cached = self._threshold_rows[(info.name, id(first))] = (
                    first, np.array([first.threshold_for(info.name, label) for label in info.labels]))
            return cached[1]
        return np.array([[d.threshold_for(info.name, label) for label in info.labels] for d in detectors])

    def close(self) -> None:
        self.heads.close()
        for backend in (self.features.backend, *self.features.alternates.values()):
            backend.close()
