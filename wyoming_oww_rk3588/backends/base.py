"""The two narrow interfaces every backend implements, and the errors they raise.

Features backends turn audio into embeddings (mel + speech embedding); heads backends
turn windows of embeddings into wake-word scores. Arrays in, arrays out: the stage
logic (framing, scaling, buffers) lives in `features.py` and `engine.py`, not here.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import BackendFailed, BackendUnavailable, ModelError  # noqa: F401 (re-exported)
from ..graphs import StreamingLayout
from ..models.registry import ModelInfo


@runtime_checkable
class FeatureBackend(Protocol):
    name: str
    #: Shapes of the streaming embedding state, shared by every features backend so
    #: that streams can move between backends mid-stream.
    layout: StreamingLayout

    def melspectrogram(self, audio: np.ndarray) -> np.ndarray:
        """[B, samples] float32 (int16 values) -> [B, frames, 32] float32.

        The mel model's output *before* openWakeWord's `x/10 + 2`, with its top-80 dB clip
        taken per row (per stream and step), never across the batch.
        """

    def embed_step(
        self, mel: np.ndarray, states: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One streaming step: mel [B, 8, 32] (already `x/10 + 2`) and the per-layer states
        (`layout.state_shapes` with a leading B) -> (embeddings [B, 96], new states)."""

    def embed_windows(self, mel: np.ndarray) -> np.ndarray:
        """openWakeWord's windowed form: mel [N, 76, 32] -> embeddings [N, 96]."""

    # Optional (looked up with getattr, so not part of the protocol): features_step(audio
    # [B, 1760], states) -> embed_step(scale_mel(melspectrogram(audio)), states) in one go;
    # FeaturePipeline uses it where a backend offers it (the OpenCL one: one device round trip).

    def close(self) -> None: ...


@runtime_checkable
class HeadBackend(Protocol):
    name: str

    def unsupported_reason(self, model: ModelInfo) -> str | None:
        """None when this backend can run `model`, else a one-line reason (asked before loading)."""

    def load(self, model: ModelInfo) -> None:
        """Prepare `model`; raises ModelError (bad file) or BackendUnavailable."""

    def score(self, model: ModelInfo, windows: np.ndarray) -> np.ndarray:
        """windows [B, model.window, 96] float32 -> scores [B, model.n_outputs] float32."""

    def close(self) -> None: ...
