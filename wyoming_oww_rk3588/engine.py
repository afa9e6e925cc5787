"""The engine: one per process, owns the backends, advances all streams in batched steps.

Each round takes one ready 80 ms frame from every stream that has one and runs each stage
once for all of them (one features batch, one call per wake-word model), then the
detectors. Connections never run models themselves.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np

from .backends.select import cpu_features_factory, select_features, select_heads
from .detector import Detection, DetectorConfig, update
from .features import FeaturePipeline
from .heads import HeadRunner
from .models.registry import ModelInfo, ModelRegistry
from .stream import StreamState

_LOGGER = logging.getLogger(__name__)


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
    ) -> None:
        from .backends.cpu import CpuHeads

        self.registry = registry or ModelRegistry()
        self.detector = detector or DetectorConfig()
        backend, self.features_reason = select_features(features_backend, threads=threads, precision=precision)
        self.features = FeaturePipeline(backend, fallback_factory=cpu_features_factory(threads))
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
        return StreamState(
            models=list(models),
            features=self.features.new_state(history),
            detector=detector or self.detector,
        )

    def process(
        self, streams: Sequence[StreamState], max_rounds: int | None = None
    ) -> list[tuple[StreamState, Detection]]:
        """Run rounds (one frame per ready stream each) until no stream has a full frame
        left, or `max_rounds`; returns the detections in order."""
        detections: list[tuple[StreamState, Detection]] = []
        rounds = 0
        while max_rounds is None or rounds < max_rounds:
            ready = [s for s in streams if s.ready]
            if not ready:
                break
            rounds += 1
            frames = np.stack([s.take_frame() for s in ready])
            self.features.step([s.features for s in ready], frames)
            self._score(ready, detections)
        return detections

    def _score(self, streams: list[StreamState], detections: list) -> None:
        members: dict[str, tuple[ModelInfo, list[tuple[StreamState, str]]]] = {}
        for stream in streams:
            for asked, info in stream.models:
                members.setdefault(info.name, (info, []))[1].append((stream, asked))
        histories: dict[tuple[int, ...], np.ndarray] = {}
        for info, listeners in members.values():
            windows = self._windows(info.window, [s for s, _ in listeners], histories)
            scores = self.heads.score(info, windows)
            for (stream, asked), row in zip(listeners, scores):
                labels = stream.labels
                for label, column in zip(info.labels, info.label_columns):
                    score = float(row[column])
                    stream.scores[label] = score
                    # Fast path: a low score on a quiet label changes no detector state.
                    if score < stream.detector.threshold_for(info.name, label) and label not in labels:
                        continue
                    found = update(stream.detector, labels, info.name, asked, label, score, stream.features.steps)
                    if found is not None:
                        detections.append((stream, found))

    @staticmethod
    def _windows(length: int, streams: list[StreamState], histories: dict) -> np.ndarray:
        """[B, length, 96] embedding windows; streams' histories are stacked once per round."""
        key = tuple(id(s) for s in streams)
        stacked = histories.get(key)
        if stacked is None:
            sizes = {len(s.features.embeddings) for s in streams}
            if len(sizes) != 1:
                return np.stack([s.features.window(length) for s in streams])
            stacked = histories[key] = np.stack([s.features.embeddings for s in streams])
        return stacked[:, -length:]

    def close(self) -> None:
        self.heads.close()
        self.features.backend.close()
