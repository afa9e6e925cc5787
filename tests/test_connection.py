"""The socket wakes the server once per 80 ms frame, not per 10 ms chunk, and never late.

A real server (in a thread) and the real wyoming client over TCP, sending Home Assistant's
10 ms chunks in real time. The server's reads are counted where the bytes enter it.
"""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.wake import Detect

from reference import load_wav, padded
from server_harness import ServerThread, client, read_until
from wyoming_oww_rk3588 import connection

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_RCVLOWAT"), reason="no SO_RCVLOWAT on this platform")


@pytest.fixture(scope="module")
def server():
    with ServerThread() as srv:
        yield srv


@pytest.fixture
def reads(monkeypatch):
    counted = []
    original = connection.Connection.data_received

    def counting(self, data):
        counted.append(len(data))
        return original(self, data)

    monkeypatch.setattr(connection.Connection, "data_received", counting)
    return counted


async def _stream(c, audio: np.ndarray, chunk: int, start_ts: int = 0) -> None:
    """Real time: chunk n goes out at n chunk-durations after the first."""
    begin = time.monotonic()
    for n, i in enumerate(range(0, len(audio) - chunk + 1, chunk)):
        delay = begin + n * chunk / 16000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=audio[i : i + chunk].tobytes(),
                                       timestamp=start_ts + i // 16).event())


def test_ten_ms_chunks_wake_the_server_about_once_a_frame_and_the_wake_word_is_heard(server, reads):
    audio = padded(load_wav("alexa_test.wav"), 1.0, 1.0)

    async def go():
        async with client(server.port) as c:
            await c.write_event(Detect(names=["alexa"]).event())
            await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await _stream(c, audio, 160)
            return await read_until(c, {"detection"}, 5)

    assert asyncio.run(go()).data["name"] == "alexa"
    chunks, frames = len(audio) // 160, len(audio) // 1280
    # Without the low-water mark every chunk is its own read; with it, about one per frame
    # (a loaded machine may split or merge a few).
    assert len(reads) <= 2 * frames + 8 < chunks, (len(reads), frames, chunks)


def test_audio_stop_after_a_partial_frame_is_answered_at_once(server):
    """The mark waits for a whole frame; a client that stops short is still read (the timer)."""
    audio = np.random.default_rng(3).normal(0, 300, 1280 * 5 + 480).astype(np.int16)

    async def go():
        async with client(server.port) as c:
            await c.write_event(Detect(names=["alexa"]).event())
            await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await _stream(c, audio, 160)
            sent = time.monotonic()
            await c.write_event(AudioStop().event())
            answer = await read_until(c, {"not-detected", "detection"}, 5)
            return answer.type, time.monotonic() - sent

    kind, waited = asyncio.run(go())
    assert kind == "not-detected"
    assert waited < 0.5, waited


def test_a_client_switching_to_smaller_chunks_mid_stream_is_still_heard(server):
    """The mark counts the last chunk's size; chunks that shrink to a quarter are read on time anyway."""
    audio = padded(load_wav("alexa_test.wav"), 1.0, 1.0)

    async def go():
        async with client(server.port) as c:
            await c.write_event(Detect(names=["alexa"]).event())
            await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await _stream(c, audio[:16000], 640)
            await _stream(c, audio[16000:], 160, start_ts=1000)
            return await read_until(c, {"detection"}, 5)

    assert asyncio.run(go()).data["name"] == "alexa"


def test_a_client_that_shuts_its_side_after_audio_stop_still_gets_the_answer(server):
    """Half-close (shutdown(SHUT_WR)) right after audio-stop: the detection and the end of the
    stream are still answered before the server closes."""
    from wyoming.event import async_read_event

    from wyoming_oww_rk3588.wire import encode

    audio = padded(load_wav("alexa_test.wav"), 1.0, 0.2)

    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(encode(Detect(names=["alexa"]).event()) + encode(AudioStart(rate=16000, width=2, channels=1).event()))
        for i in range(0, len(audio), 1600):
            writer.write(encode(AudioChunk(rate=16000, width=2, channels=1, audio=audio[i : i + 1600].tobytes()).event()))
        writer.write(encode(AudioStop().event()))
        writer.write_eof()
        types = []
        while (event := await asyncio.wait_for(async_read_event(reader), 30)) is not None:
            types.append(event.type)
        writer.close()
        return types

    assert asyncio.run(go()) == ["detection"]
