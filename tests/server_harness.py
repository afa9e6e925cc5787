"""A real server on a free 127.0.0.1 port (in a thread, own event loop) and real wyoming clients."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from contextlib import asynccontextmanager

import numpy as np
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event

from wyoming_oww_rk3588.cli import parse_settings
from wyoming_oww_rk3588.server import build_engine, serve


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.settings = parse_settings(["--uri", f"tcp://127.0.0.1:{self.port}", "--features-backend", "cpu",
                                        "--heads-backend", "cpu", *args])
        self.engine, self.models = build_engine(self.settings)
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None

    def _main(self) -> None:
        async def go():
            self.loop = asyncio.get_running_loop()
            self.stop_event = asyncio.Event()
            started = asyncio.Event()
            task = asyncio.create_task(serve(self.settings, self.engine, self.models, started, self.stop_event))
            await started.wait()
            self._started.set()
            await task

        asyncio.run(go())

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        assert self._started.wait(30), "server did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self._thread.join(10)
        self.engine.close()


@asynccontextmanager
async def client(port: int):
    async with AsyncTcpClient("127.0.0.1", port) as c:
        yield c


async def read_until(c, types: set[str], timeout: float = 10.0) -> Event:
    deadline = time.monotonic() + timeout
    while True:
        event = await asyncio.wait_for(c.read_event(), max(0.01, deadline - time.monotonic()))
        assert event is not None, "server closed the connection"
        if event.type in types:
            return event


async def drain_events(c, wait: float = 0.3) -> list[Event]:
    """Every event that arrives within `wait` seconds of quiet."""
    events = []
    while True:
        try:
            event = await asyncio.wait_for(c.read_event(), wait)
        except asyncio.TimeoutError:
            return events
        if event is None:
            return events
        events.append(event)


async def send_audio(c, audio: np.ndarray, chunk_samples: int = 160, rate: int = 16000, width: int = 2,
                     channels: int = 1, start: bool = True, stop: bool = True, timestamps=None) -> None:
    """Send int16 mono `audio` already converted to the given raw format bytes by the caller
    when width/channels/rate differ (see `encode`)."""
    payload = audio.tobytes()
    step = chunk_samples * width * channels
    if start:
        await c.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
    for n, i in enumerate(range(0, len(payload), step)):
        event = AudioChunk(rate=rate, width=width, channels=channels, audio=payload[i : i + step]).event()
        if timestamps is not None:
            event.data["timestamp"] = timestamps(n)
        await c.write_event(event)
    if stop:
        await c.write_event(AudioStop().event())


def encode(audio16k: np.ndarray, rate: int, width: int, channels: int) -> np.ndarray:
    """int16 16 kHz mono -> raw samples at `rate`, `width` bytes, `channels` (as a numpy array)."""
    x = audio16k.astype(np.float64)
    if rate != 16000:
        t_out = np.arange(int(len(x) * rate / 16000)) / rate
        x = np.interp(t_out, np.arange(len(x)) / 16000, x)
    if width == 4:
        data = (x * 65536).astype(np.int32)
    elif width == 2:
        data = x.astype(np.int16)
    else:
        raise ValueError(width)
    if channels > 1:
        data = np.repeat(data[:, None], channels, axis=1).reshape(-1)
    return data
