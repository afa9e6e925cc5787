"""Memory soak: does the server's RSS grow without bound (a leak) or grow once and stay (a plateau)?

The real server (a subprocess, CPU backends) gets N connections over TCP; each streams
minutes of audio (noise, then the alexa clip at the end) as fast as the server takes them,
every built-in model listening, one `detect` / `audio-start` / `audio-stop` session per minute,
as the memory test does. The detection at the end of each minute paces the client: it sends
the next minute once this one is scored, so what is measured is the server, not a backlog
of audio the client got ahead by. RSS is sampled from /proc against the audio scored so far (not the
wall clock, so a busy machine stretches the run but not the curve). Prints the curve, the
growth over each quarter of the run and the slope over its last half, and writes them to
benchmarks/results/.

Run: python benchmarks/soak_memory.py [--streams 32] [--minutes 60] [--env MALLOC_ARENA_MAX=2]
(--minutes is audio per stream: 32 streams x 60 min is 32 hours of audio; at ~8x real time
per stream on 2 cores that is ~10 min of wall time.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import async_read_event
from wyoming.wake import Detect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_streams import CHUNK, ROOT, cpu_seconds, free_port, start, wire_bytes  # noqa: E402
from reference import load_wav, padded  # noqa: E402  (bench_streams put tests/ on the path)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))


def one_minute() -> bytes:
    """A minute of audio as one session's bytes on the wire: detect, start, chunks, stop."""
    alexa = padded(load_wav("alexa_test.wav"), 1.0, 1.0)
    noise = np.random.default_rng(0).normal(0, 800, 16000 * 60 - len(alexa)).astype(np.int16)
    audio = np.concatenate([noise, alexa])
    events = [Detect(names=None).event(), AudioStart(rate=16000, width=2, channels=1).event()]
    events += [AudioChunk(rate=16000, width=2, channels=1, audio=audio[i : i + CHUNK].tobytes()).event()
               for i in range(0, len(audio), CHUNK)]
    events.append(AudioStop().event())
    return b"".join(wire_bytes(e) for e in events)


async def stream(port: int, session: bytes, minutes: int, done: list[int], index: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(minutes):
            writer.write(session)
            await writer.drain()
            while True:  # the session's answer: `detection` (the minute's last second), else `not-detected`
                event = await async_read_event(reader)
                if event is None:
                    raise SystemExit("the server closed a connection")
                if event.type in ("detection", "not-detected"):
                    break
                if event.type == "error":
                    raise SystemExit(f"server error: {event.data}")
            done[index] += 1
    finally:
        writer.close()


async def soak(port: int, pid: int, streams: int, minutes: int, every_s: float) -> list[tuple[float, float, int, float]]:
    """[(audio minutes per stream done, wall s, RSS kB, server CPU s)] sampled every `every_s`."""
    session = one_minute()
    done = [0] * streams
    t0, cpu0 = time.monotonic(), cpu_seconds(pid)
    curve = [(0.0, 0.0, rss_kb(pid), 0.0)]
    tasks = [asyncio.create_task(stream(port, session, minutes, done, i)) for i in range(streams)]
    while not all(t.done() for t in tasks):
        await asyncio.wait(tasks, timeout=every_s)
        curve.append((sum(done) / streams, time.monotonic() - t0, rss_kb(pid), cpu_seconds(pid) - cpu0))
        print(f"{curve[-1][0]:8.1f} {curve[-1][1]:8.0f} {curve[-1][2] / 1024:8.1f} {curve[-1][3]:8.0f}", flush=True)
    for task in tasks:
        task.result()  # a failed stream fails the soak
    return curve


def summary(curve: list[tuple[float, float, int, float]], minutes: int, windows: int = 12) -> list[str]:
    """RSS per window of audio: the minimum is nearest the server with no audio queued, the
    maximum adds what is in flight (and glibc keeps what was freed). A leak lifts both in
    proportion to the audio; a plateau stops lifting them."""
    audio = np.array([c[0] for c in curve])
    rss = np.array([c[2] for c in curve]) / 1024
    lines, lows, highs = [], [], []
    for w in range(windows):
        a, b = minutes * w / windows, minutes * (w + 1) / windows
        inside = rss[(audio > a) & (audio <= b)] if w else rss[(audio > 0) & (audio <= b)]
        if len(inside):
            lows.append(inside.min())
            highs.append(inside.max())
            lines.append(f"audio minutes {a:4.0f}-{b:<4.0f} RSS min {inside.min():6.1f} MB  max {inside.max():6.1f} MB")
    if len(lows) >= 4:
        half = len(lows) // 2
        for name, values in (("minimum", lows), ("maximum", highs)):
            lines.append(f"{name} RSS per window: {values[0]:.1f} -> {values[half - 1]:.1f} MB over the first half "
                         f"({values[half - 1] - values[0]:+.1f}), {values[half]:.1f} -> {values[-1]:.1f} MB over the "
                         f"last half ({values[-1] - values[half]:+.1f})")
    lines.append(f"RSS at start (models not loaded) {rss[0]:.1f} MB, peak {rss.max():.1f} MB, "
                 f"after the last session {rss[-1]:.1f} MB; server CPU {curve[-1][3]:.0f} s, wall {curve[-1][1]:.0f} s")
    return lines


def read_curve(path: Path) -> list[tuple[float, float, int, float]]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip() and line.lstrip()[0].isdigit()]
    return [(float(a), float(w), int(float(r) * 1024), float(c)) for a, w, r, c in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--minutes", type=int, default=60, help="audio minutes per stream")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server, e.g. MALLOC_ARENA_MAX=2")
    parser.add_argument("--server-args", default="", help="extra flags for the server")
    parser.add_argument("--out", default=None, help="results file (default benchmarks/results/soak_memory_<tag>.txt)")
    parser.add_argument("--tag", default="2core")
    parser.add_argument("--summarize", type=Path, help="only recompute the summary of a results file")
    args = parser.parse_args()
    if args.summarize:
        print("\n".join(summary(read_curve(args.summarize), args.minutes)))
        return

    port = free_port()
    os.environ.update(item.split("=", 1) for item in args.env)  # the server inherits them
    cmd = [sys.executable, "-m", "wyoming_oww_rk3588", "--uri", f"tcp://127.0.0.1:{port}",
           "--features-backend", "cpu", "--heads-backend", "cpu", *args.server_args.split()]
    proc = start(cmd, port)
    header = [f"# python benchmarks/soak_memory.py --streams {args.streams} --minutes {args.minutes} --every {args.every:g}"
              + "".join(f" --env {e}" for e in args.env) + (f" --server-args '{args.server_args}'" if args.server_args else ""),
              f"# {time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} cores; {args.streams} connections, "
              f"every built-in model, 1-minute sessions sent as fast as the server takes them",
              f"{'audio min':>8} {'wall s':>8} {'RSS MB':>8} {'CPU s':>8}   (audio minutes per stream; server CPU)"]
    print("\n".join(header), flush=True)
    try:
        curve = asyncio.run(soak(port, proc.pid, args.streams, args.minutes, args.every))
    finally:
        proc.terminate()
        proc.wait(10)
    rows = [f"{a:8.1f} {w:8.0f} {r / 1024:8.1f} {c:8.0f}" for a, w, r, c in curve]
    lines = summary(curve, args.minutes)
    print("\n".join(lines))
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"soak_memory_{args.tag}.txt"
    out.write_text("\n".join([*header, *rows, *("# " + line for line in lines)]) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
