"""Engine cost per stream-step when streams arrive behind (a busy server), in one process.

N streams get K frames each before every `Engine.process` call (K = 1: live; K > 1: a
backlog that the engine moves up to MAX_STEPS_PER_ROUND frames per round), with every
built-in model listening. Prints CPU microseconds per stream-step, with the CPU embedding's
calls split at EMBEDDING_ROWS_PER_CALL stream-steps (as shipped) and unsplit, side by side.

Run: python benchmarks/bench_backlog.py [--streams 200] [--rounds 12]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import HEADS, audio_for  # noqa: E402

from wyoming_oww_rk3588.backends import cpu  # noqa: E402
from wyoming_oww_rk3588.engine import Engine  # noqa: E402
from wyoming_oww_rk3588.features import FRAME_SAMPLES  # noqa: E402


def cost(engine: Engine, audios: list[np.ndarray], frames_for, rounds: int) -> float:
    models = [(h, engine.registry.resolve(h)) for h in [*HEADS, "okay_nabu"]]
    streams = [engine.open_stream(models) for _ in audios]
    position, steps = [0] * len(audios), 0
    start = time.process_time()
    for _ in range(rounds):
        for i, stream in enumerate(streams):
            count = frames_for(i) * FRAME_SAMPLES
            stream.add_samples(audios[i][position[i] : position[i] + count])
            position[i] += count
            steps += count // FRAME_SAMPLES
        engine.process(streams)
    return (time.process_time() - start) / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    engine = Engine(features_backend="cpu", heads_backend="cpu", threads=1)
    audios = audio_for(args.streams, args.rounds * 8 * FRAME_SAMPLES / 16000)
    rng = np.random.default_rng(0)
    loads = {"live (1 frame)": lambda i: 1, "2 frames behind": lambda i: 2, "4 frames behind": lambda i: 4,
             "1-4 frames behind": lambda i: int(rng.integers(1, 5))}
    shipped = cpu.EMBEDDING_ROWS_PER_CALL
    print(f"# {args.streams} streams, {len(HEADS) + 1} models, CPU us per stream-step (one thread)")
    print(f"{'load':<20} {'split at ' + str(shipped):>12} {'unsplit':>10}")
    for name, frames_for in loads.items():
        row = []
        for rows in (shipped, 10**9):
            cpu.EMBEDDING_ROWS_PER_CALL = rows
            row.append(cost(engine, audios, frames_for, args.rounds))
        cpu.EMBEDDING_ROWS_PER_CALL = shipped
        print(f"{name:<20} {row[0]:>12.1f} {row[1]:>10.1f}")


if __name__ == "__main__":
    main()
