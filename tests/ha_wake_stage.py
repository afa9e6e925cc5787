"""Home Assistant's own wake word stage against a server: run by a Python that has Home Assistant.

Feeds audio (int16 mono 16 kHz, from a .npy file) in real time, 10 ms at a time, through the
assist pipeline's own chunking (`chunk_samples` into `BYTES_PER_CHUNK` pieces, timestamps in
`MS_PER_CHUNK` steps, as `process_volume_only` makes them) into the Wyoming integration's
`WyomingWakeWordProvider`, exactly as a pipeline run does, and prints one JSON line: the name
detected, the chunks the provider took from the stream, and how many of those it handed back
as `queued_audio` (what speech-to-text still gets). Every other chunk went to the wake word
server and is lost to speech-to-text.

Usage: python ha_wake_stage.py PORT AUDIO.npy WAKE_WORD
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from types import SimpleNamespace

import numpy as np
from homeassistant.components.assist_pipeline.const import BYTES_PER_CHUNK, MS_PER_CHUNK
from homeassistant.components.assist_pipeline.vad import AudioBuffer, chunk_samples
from homeassistant.components.wyoming.data import WyomingService, load_wyoming_info
from homeassistant.components.wyoming.wake_word import WyomingWakeWordProvider


async def main(port: int, audio: np.ndarray, wake_word: str) -> dict:
    info = await load_wyoming_info("127.0.0.1", port)
    if info is None:
        raise SystemExit("no info from the server")
    provider = WyomingWakeWordProvider(None, SimpleNamespace(entry_id="test"), WyomingService("127.0.0.1", port, info))
    if not any(w.id == wake_word for w in await provider.get_supported_wake_words()):
        raise SystemExit(f"the server offers no wake word {wake_word!r}")
    taken = 0

    async def microphone():
        """The satellite's audio in real time, through the pipeline's chunking."""
        nonlocal taken
        leftover = AudioBuffer(BYTES_PER_CHUNK)
        timestamp_ms = 0
        data = audio.tobytes()
        start = time.monotonic()
        for n, i in enumerate(range(0, len(data), BYTES_PER_CHUNK)):
            delay = start + n * MS_PER_CHUNK / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            for chunk in chunk_samples(data[i : i + BYTES_PER_CHUNK], BYTES_PER_CHUNK, leftover):
                taken += 1
                yield chunk, timestamp_ms
                timestamp_ms += MS_PER_CHUNK

    result = await provider._async_process_audio_stream(microphone(), wake_word)  # noqa: SLF001
    return {
        "detected": None if result is None else result.wake_word_id,
        "taken": taken,
        "queued": 0 if result is None else len(result.queued_audio or []),
        "samples_per_chunk": BYTES_PER_CHUNK // 2,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]), np.load(sys.argv[2]), sys.argv[3]))))
