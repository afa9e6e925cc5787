"""One audio stream's state, as plain data: pending samples, features buffers, detector counters,
and the optional stages' state (VAD, noise suppressor)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .detector import DetectorConfig, LabelState
from .features import FRAME_SAMPLES, FeatureState
from .models.registry import ModelInfo
from .vad import VadState


@dataclass
class StreamState:
    models: list[tuple[str, ModelInfo]]  # (name the client asked for, model)
    features: FeatureState
    detector: DetectorConfig
    labels: dict[str, LabelState] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)  # latest score per label
    chunks: list[np.ndarray] = field(default_factory=list)  # int16 samples not yet framed
    pending_samples: int = 0
    vad: VadState | None = None  # VAD gate on: Silero LSTM state and recent speech scores
    denoiser: object | None = None  # noise suppression on: this stream's speex suppressor

    def add_samples(self, samples: np.ndarray) -> None:
        if len(samples):
            self.chunks.append(samples)
            self.pending_samples += len(samples)

    @property
    def ready(self) -> bool:
        return self.pending_samples >= FRAME_SAMPLES

    @property
    def ready_frames(self) -> int:
        return self.pending_samples // FRAME_SAMPLES

    def take_frames(self, count: int) -> np.ndarray:
        """The next `count` frames, [count, 1280] (call only when `ready_frames >= count`)."""
        buffer = np.concatenate(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
        size = count * FRAME_SAMPLES
        frames, rest = buffer[:size], buffer[size:]
        self.chunks = [rest] if len(rest) else []
        self.pending_samples = len(rest)
        return frames.reshape(count, FRAME_SAMPLES)
