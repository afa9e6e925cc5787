"""Many satellites at once, over real TCP: this server vs wyoming-openwakeword 1.8.2, same load, same run.

N connections each stream real-time-paced 16 kHz audio in 64 ms chunks (wyoming-satellite's
size) with "alexa" at a known time. Reported per N: detections got/expected, added latency
(p50/p99) from sending the chunk that completes the phrase (the last sample of the 80 ms
frame at which openWakeWord's scores first pass 0.5, found offline) to receiving the
detection, and server
CPU-seconds per audio-second (from /proc). Our server listens with every built-in model on
every stream; the peer (its own tflite models, `--preload-model alexa`) listens with one.

Run: python benchmarks/bench_streams.py [--streams 1 8 32 100 200 400] [--peer .venv-peer/bin/python]
The peer needs its own venv: python3 -m venv .venv-peer && .venv-peer/bin/pip install
wyoming-openwakeword==1.8.2 "numpy<2"  (it silently never fires without --preload-model).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import async_read_event, write_event
from wyoming.wake import Detect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from reference import load_wav  # noqa: E402

CHUNK = 1024  # samples: 64 ms
LEAD_S, TAIL_S = 1.5, 1.5
TICK = os.sysconf("SC_CLK_TCK")


def first_firing_sample(audio: np.ndarray) -> int:
    """The last sample of the first 80 ms frame at which "alexa" scores >= 0.5 (offline)."""
    from wyoming_oww_rk3588 import Model

    model = Model(wakeword_models=["alexa"], inference_framework="cpu")
    for step, i in enumerate(range(0, len(audio), 1280)):
        if model.predict(audio[i : i + 1280])["alexa"] >= 0.5:
            return (step + 1) * 1280 - 1
    raise SystemExit("the benchmark clip does not fire offline")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start(cmd: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {' '.join(cmd)}")
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")


def wire_bytes(event) -> bytes:
    """An event exactly as the wyoming package writes it to a socket."""
    buffer = io.BytesIO()
    write_event(event, buffer)
    return buffer.getvalue()


def chunk_bytes(audio: np.ndarray) -> list[bytes]:
    """Every chunk of the clip, serialised once: 400 clients re-encoding the same JSON headers
    would cost the shared 2 cores a third of a core that the servers then lack."""
    return [wire_bytes(AudioChunk(rate=16000, width=2, channels=1, audio=audio[i : i + CHUNK].tobytes()).event())
            for i in range(0, len(audio), CHUNK)]


async def one_stream(port: int, chunks: list[bytes], phrase_end: int, name: str, offset_s: float, out: list) -> None:
    await asyncio.sleep(offset_s)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(wire_bytes(Detect(names=[name]).event()) + wire_bytes(AudioStart(rate=16000, width=2, channels=1).event()))
        sent_phrase_at: list[float] = []
        detected_at: list[float] = []

        async def read_events():
            while True:
                event = await async_read_event(reader)
                if event is None:
                    return
                if event.type == "detection":
                    detected_at.append(time.monotonic())
                if event.type in ("not-detected",):
                    return

        task = asyncio.create_task(read_events())
        t0 = time.monotonic()
        for n, chunk in enumerate(chunks):
            await asyncio.sleep(max(0.0, t0 + n * CHUNK / 16000 - time.monotonic()))
            writer.write(chunk)
            if n * CHUNK <= phrase_end < (n + 1) * CHUNK:
                sent_phrase_at.append(time.monotonic())
        writer.write(wire_bytes(AudioStop().event()))
        try:
            await asyncio.wait_for(task, 10)
        except asyncio.TimeoutError:
            task.cancel()
        latency = (detected_at[0] - sent_phrase_at[0]) if detected_at and sent_phrase_at else None
        out.append(latency)
    finally:
        writer.close()


async def load(port: int, n: int, audio: np.ndarray, phrase_end: int, name: str) -> list:
    results: list = []
    rng = np.random.default_rng(n)
    chunks = chunk_bytes(audio)
    await asyncio.gather(*(one_stream(port, chunks, phrase_end, name, float(rng.uniform(0, 0.5)), results)
                           for _ in range(n)))
    return results


def settle(proc: subprocess.Popen, limit_s: float = 120.0) -> None:
    """Wait until a server has worked off what it still had queued (an overloaded peer goes on
    for a while after its clients left), so it does not take CPU from the next measurement."""
    deadline = time.monotonic() + limit_s
    last = cpu_seconds(proc.pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = cpu_seconds(proc.pid)
        if now - last < 0.05:
            return
        last = now


def measure(proc: subprocess.Popen, port: int, n: int, audio, phrase_end, name) -> dict:
    before, client_before = cpu_seconds(proc.pid), time.process_time()
    results = asyncio.run(load(port, n, audio, phrase_end, name))
    used = cpu_seconds(proc.pid) - before
    client = time.process_time() - client_before
    latencies = np.array([r for r in results if r is not None]) * 1000
    return {
        "got": len(latencies),
        "expected": n,
        "p50": float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
        "p99": float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
        "cpu": used / (n * len(audio) / 16000),
        "client": client / (len(audio) / 16000 + 0.5),  # cores the load generator itself used
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 100, 200, 400])
    parser.add_argument("--peer", default=str(ROOT / ".venv-peer" / "bin" / "python"),
                        help="python of a venv with wyoming-openwakeword 1.8.2 (skipped if missing)")
    parser.add_argument("--peer-max", type=int, default=200, help="largest N to run the peer at")
    parser.add_argument("--lead", type=float, default=LEAD_S,
                        help="seconds of audio before the phrase: a long lead shows whether a load is held")
    parser.add_argument("--server-args", default="", help="extra flags for our server, e.g. '--threads 2'")
    args = parser.parse_args()

    clip = load_wav("alexa_test.wav")
    audio = np.concatenate([np.zeros(int(args.lead * 16000), np.int16), clip, np.zeros(int(TAIL_S * 16000), np.int16)])
    phrase_end = first_firing_sample(audio)

    servers = []
    port = free_port()
    ours = start([sys.executable, "-m", "wyoming_oww_rk3588", "--uri", f"tcp://127.0.0.1:{port}",
                  "--features-backend", "cpu", "--heads-backend", "cpu", *args.server_args.split()], port)
    servers.append(("wyoming-oww-rk3588 (7 models)", ours, port, "alexa", max(args.streams)))
    if Path(args.peer).exists():
        peer_port = free_port()
        peer = start([args.peer, "-m", "wyoming_openwakeword", "--uri", f"tcp://127.0.0.1:{peer_port}",
                      "--preload-model", "alexa"], peer_port)
        servers.append(("wyoming-openwakeword 1.8.2 (1 model)", peer, peer_port, "alexa", args.peer_max))
    else:
        print(f"# peer skipped: {args.peer} not found (see this script's docstring)")

    print(f"# {os.cpu_count()} cores; {len(audio) / 16000:.2f} s per stream, fires at {phrase_end / 16000:.2f} s; "
          f"64 ms chunks, real-time pacing; client in this process (events serialised once by the wyoming package, written to real TCP sockets)")
    print("# latency: from sending the chunk that completes the firing frame to receiving the detection")
    print(f"{'server':<38} {'N':>5} {'detections':>11} {'p50 ms':>8} {'p99 ms':>8} {'CPU-s/audio-s':>14} "
          f"{'client cores':>12}")
    try:
        for n in args.streams:
            for label, proc, p, name, limit in servers:
                if n > limit:
                    continue
                for _, other, *_ in servers:
                    settle(other)
                r = measure(proc, p, n, audio, phrase_end, name)
                print(f"{label:<38} {n:>5} {r['got']:>5}/{r['expected']:<5} {r['p50']:>8.1f} {r['p99']:>8.1f} "
                      f"{r['cpu']:>14.5f} {r['client']:>12.2f}", flush=True)
    finally:
        for _, proc, *_ in servers:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
