"""The other two listeners: stdio:// (one client on stdin/stdout, as wyoming-openwakeword's own
test runs it) and unix://, with the real wyoming client and the alexa clip."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time

import numpy as np
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncUnixClient
from wyoming.event import read_event, write_event
from wyoming.info import Describe
from wyoming.wake import Detect

from reference import load_wav, padded

SERVER = [sys.executable, "-m", "wyoming_oww_rk3588", "--features-backend", "cpu", "--heads-backend", "cpu"]
ALEXA = padded(load_wav("alexa_test.wav"), 1.0, 1.0)


def _events(audio: np.ndarray) -> list:
    chunks = [AudioChunk(rate=16000, width=2, channels=1, audio=audio[i : i + 1024].tobytes()).event()
              for i in range(0, len(audio), 1024)]
    return [Detect(names=["alexa"]).event(), AudioStart(rate=16000, width=2, channels=1).event(), *chunks,
            AudioStop().event(), Describe().event()]


def test_stdio_answers_describe_detects_and_exits_when_stdin_closes():
    wire = io.BytesIO()
    for event in _events(ALEXA):
        write_event(event, wire)
    done = subprocess.run([*SERVER, "--uri", "stdio://"], input=wire.getvalue(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    out = io.BytesIO(done.stdout)
    types = []
    while (event := read_event(out)) is not None:
        types.append((event.type, event.data.get("name")))
    assert ("detection", "alexa") in types
    assert types[-1][0] == "info", types


def test_unix_socket_detects(tmp_path):
    path = tmp_path / "wake.sock"
    proc = subprocess.Popen([*SERVER, "--uri", f"unix://{path}"], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not path.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)

        async def go():
            async with AsyncUnixClient(str(path)) as c:
                for event in _events(ALEXA)[:-1]:
                    await c.write_event(event)
                while True:
                    event = await asyncio.wait_for(c.read_event(), 30)
                    if event.type in ("detection", "not-detected"):
                        return event

        answer = asyncio.run(go())
        assert answer.type == "detection" and answer.data["name"] == "alexa"
    finally:
        proc.terminate()
        proc.wait(10)
