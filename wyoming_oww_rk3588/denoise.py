"""Speex noise suppression before the features, as openWakeWord 0.6.0 does it: the speexdsp-ns
binding, one suppressor per stream, 160-sample frames, speexdsp's default preprocess settings.
"""

from __future__ import annotations

import numpy as np

from .errors import BackendUnavailable
from .features import SAMPLE_RATE

SPEEX_FRAME_SAMPLES = 160  # openWakeWord's `NoiseSuppression.create(160, 16000)`
INSTALL_HINT = (
    "pip install 'wyoming-oww-rk3588[speex]' (speexdsp-ns has wheels for Python 3.11 and 3.12 on "
    "x86_64 and aarch64), or turn noise suppression off"
)


def speex_factory():
    """speexdsp-ns's NoiseSuppression class; BackendUnavailable (one line: what to install) if absent."""
    try:
        from speexdsp_ns import NoiseSuppression
    except ImportError as err:  # also a wheel whose bundled libspeexdsp does not load here
        raise BackendUnavailable(f"noise suppression needs the speexdsp-ns package ({err}); {INSTALL_HINT}") from None
    return NoiseSuppression


class NoiseSuppressor:
    """One stream's speex suppressor; its state follows the stream's audio from the first sample."""

    def __init__(self, factory=None) -> None:
        self._ns = (factory or speex_factory()).create(SPEEX_FRAME_SAMPLES, SAMPLE_RATE)

    def process(self, frame: np.ndarray) -> np.ndarray:
        """[n * 160] int16 -> the same samples, denoised."""
        data = np.ascontiguousarray(frame, np.int16).tobytes()
        size = SPEEX_FRAME_SAMPLES * 2
        cleaned = b"".join(self._ns.process(data[i : i + size]) for i in range(0, len(data), size))
        return np.frombuffer(cleaned, np.int16)


def suppress_noise(streams: list, frames: np.ndarray) -> np.ndarray:
    """frames [B, 1280] int16 with each row whose stream has a `.denoiser` replaced by its
    denoised audio (speexdsp has no batched call: one C call per 10 ms per stream)."""
    out = frames
    for i, stream in enumerate(streams):
        if stream.denoiser is not None:
            if out is frames:
                out = frames.copy()
            out[i] = stream.denoiser.process(frames[i])
    return out
