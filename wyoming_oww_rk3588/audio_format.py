"""A client's audio format, checked, and its chunks turned into the engine's 16 kHz mono int16.

The bounds are what a microphone can send, not what the arithmetic accepts: at 1 Hz a 2 KiB
chunk resamples to 17 minutes of audio, and a server that takes that is deaf for everyone
while it scores it.
"""

from __future__ import annotations

import numpy as np
from wyoming.audio import AudioChunk, AudioChunkConverter

from .features import SAMPLE_RATE

#: Telephone audio is the least a wake word can be heard in (the mel bands reach 8 kHz).
MIN_RATE = 8_000
MAX_RATE = 384_000
MAX_CHANNELS = 32
_NATIVE = (SAMPLE_RATE, 2, 1)


class AudioFormatError(ValueError):
    """A chunk's format cannot be converted; the message says what is wrong."""


def parse_format(data: dict) -> tuple[int, int, int]:
    """(rate, width, channels) of an `audio-start` / `audio-chunk`, or AudioFormatError."""
    rate, width, channels = data.get("rate"), data.get("width"), data.get("channels")
    for name, value, low, high in (("rate", rate, MIN_RATE, MAX_RATE), ("width", width, 1, 4),
                                   ("channels", channels, 1, MAX_CHANNELS)):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise AudioFormatError(f"audio {name} must be an integer in [{low}, {high}], got {value!r}")
    return rate, width, channels


class StreamConverter:
    """One stream's converter: the resampler keeps state from chunk to chunk, so a new stream
    or a new format gets a new one."""

    def __init__(self) -> None:
        self._format: tuple[int, int, int] | None = None
        self._converter = AudioChunkConverter(rate=SAMPLE_RATE, width=2, channels=1)

    def convert(self, fmt: tuple[int, int, int], payload: bytes) -> np.ndarray:
        """int16 samples at 16 kHz mono; `payload` is a whole number of frames of `fmt`."""
        if fmt == _NATIVE:  # what satellites send: wyoming's converter would hand the bytes back as they are
            self._format = fmt
            return np.frombuffer(payload, np.int16)
        if fmt != self._format:
            self._format = fmt
            self._converter = AudioChunkConverter(rate=SAMPLE_RATE, width=2, channels=1)
        rate, width, channels = fmt
        if channels > 2:
            # wyoming's converter mixes stereo only: it would read 4 channels as twice as many
            # stereo frames (twice the audio, an octave down). Keep the first channel.
            payload = np.frombuffer(payload, np.uint8).reshape(-1, channels, width)[:, 0].tobytes()
            channels = 1
        chunk = AudioChunk(rate=rate, width=width, channels=channels, audio=payload)
        return np.frombuffer(self._converter.convert(chunk).audio, np.int16)
