"""What one engine round costs for one stream, back to back and after a gap (the "cold" cost).

One stream, five models (alexa, hey_jarvis, hey_mycroft, hey_rhasspy, okay_nabu), CPU
backends: thread CPU time of `Engine.process` per 80 ms frame when rounds follow each other,
and when each follows an 80 ms sleep (what a satellite's frames look like to the server).
Run: python benchmarks/bench_round.py [--frames 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from wyoming_oww_rk3588.engine import Engine

MODELS = ["alexa", "hey_jarvis", "hey_mycroft", "hey_rhasspy", "okay_nabu"]
FRAME = 1280


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=100)
    args = parser.parse_args()
    engine = Engine(features_backend="cpu", heads_backend="cpu")
    stream = engine.open_stream([(name, engine.registry.resolve(name)) for name in MODELS])
    audio = np.random.default_rng(0).normal(0, 300, 16000 * 60).astype(np.int16)
    steps = len(audio) // FRAME

    def round_cost(k: int) -> float:
        stream.add_samples(audio[(k % steps) * FRAME : (k % steps + 1) * FRAME])
        start = time.thread_time()
        engine.process([stream])
        return time.thread_time() - start

    for k in range(30):
        round_cost(k)
    for label, gap in (("back to back", 0.0), ("after an 80 ms sleep", 0.08)):
        costs = []
        for k in range(args.frames):
            costs.append(round_cost(k))
            if gap:
                time.sleep(gap)
        print(f"{label:<22} median {np.median(costs) * 1e3:6.2f} ms per round")


if __name__ == "__main__":
    main()
