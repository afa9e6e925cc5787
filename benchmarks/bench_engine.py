"""CPU cost per stream: openWakeWord 0.6.0 vs this engine, same audio, same run.

Prints CPU-seconds per audio-second per stream with every built-in ONNX head listening
(6 heads), at 1, 8 and 64 streams, and the ratio engine / openWakeWord.
`--real-time` instead feeds one stream through each package's `Model.predict` 80 ms at a time,
paced like a live microphone (each call on a cold cache, as a server with one satellite sees it).
Run: python benchmarks/bench_engine.py [--seconds 5] [--streams 1 8 64] [--real-time]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import load_wav, oww_model, padded  # noqa: E402

from wyoming_oww_rk3588.engine import Engine  # noqa: E402

HEADS = ["alexa", "hey_jarvis", "hey_mycroft", "hey_rhasspy", "timer", "weather"]
STEP = 1280


def audio_for(n: int, seconds: float) -> list[np.ndarray]:
    clip = padded(load_wav("alexa_test.wav"), 1.0, 1.0)
    reps = int(np.ceil(seconds * 16000 / len(clip)))
    base = np.tile(clip, reps)[: int(seconds * 16000) // STEP * STEP]
    rng = np.random.default_rng(0)
    return [np.clip(base * rng.uniform(0.2, 2.0), -32768, 32767).astype(np.int16) for _ in range(n)]


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def run_oww(audios: list[np.ndarray]) -> float:
    models = [oww_model([f"{h}_v0.1" for h in HEADS]) for _ in audios]
    for m in models:  # warm up
        m.predict(np.zeros(STEP, np.int16))

    def go():
        for i in range(0, len(audios[0]), STEP):
            for model, audio in zip(models, audios):
                model.predict(audio[i : i + STEP])

    return cpu_seconds(go)


def run_engine(engine: Engine, audios: list[np.ndarray]) -> float:
    models = [(h, engine.registry.resolve(h)) for h in HEADS]
    streams = [engine.open_stream(models) for _ in audios]
    warm = engine.open_stream(models)
    warm.add_samples(np.zeros(STEP * 2, np.int16))
    engine.process([warm])

    def go():
        for i in range(0, len(audios[0]), STEP):
            for stream, audio in zip(streams, audios):
                stream.add_samples(audio[i : i + STEP])
            engine.process(streams)

    return cpu_seconds(go)


def run_real_time(seconds: float) -> None:
    """One stream, one `predict` per 80 ms of wall time, in this process: CPU share of a core."""
    from wyoming_oww_rk3588 import Model

    audio = audio_for(1, seconds)[0]
    makers = {
        "openWakeWord 0.6.0 Model.predict": lambda: oww_model([f"{h}_v0.1" for h in HEADS]),
        "wyoming_oww_rk3588 Model.predict": lambda: Model(wakeword_models=HEADS, inference_framework="cpu"),
    }
    used = {}
    for rep in range(2):  # alternating, twice: the machine drifts less between the two
        for name, make in makers.items():
            model = make()
            for i in range(0, 25 * STEP, STEP):
                model.predict(audio[i : i + STEP])
            start, cpu = time.monotonic(), time.process_time()
            for n, i in enumerate(range(0, len(audio), STEP)):
                delay = start + n * STEP / 16000 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                model.predict(audio[i : i + STEP])
            used.setdefault(name, []).append((time.process_time() - cpu) / (len(audio) / 16000))
    for name, shares in used.items():
        print(f"{name:<36} {min(shares) * 100:6.2f} % of a core (runs: {', '.join(f'{s * 100:.2f}' for s in shares)})")
    oww, ours = (min(v) for v in used.values())
    print(f"{'ratio':<36} {ours / oww:6.3f}  (1/{oww / ours:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="audio per stream")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--real-time", action="store_true", help="one stream through Model.predict, paced")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.real_time:
        print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; one stream, "
              f"{args.seconds:g} s in real time, 80 ms per call; heads: {', '.join(HEADS)}")
        run_real_time(args.seconds)
        return
    engine = Engine(features_backend="cpu", heads_backend="cpu", threads=1)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, onnxruntime 1 thread, "
          f"{args.seconds:g} s of audio per stream, heads: {', '.join(HEADS)}")
    print(f"{'streams':>8} {'openWakeWord':>14} {'engine':>12} {'ratio':>8}")
    print(f"{'':>8} {'CPU-s/audio-s':>14} {'CPU-s/audio-s':>12} {'':>8}")
    for n in args.streams:
        audios = audio_for(n, args.seconds)
        audio_s = n * len(audios[0]) / 16000
        oww = run_oww(audios) / audio_s
        ours = run_engine(engine, audios) / audio_s
        print(f"{n:>8} {oww:>14.5f} {ours:>12.5f} {ours / oww:>8.3f}  (1/{oww / ours:.1f})", flush=True)


if __name__ == "__main__":
    main()
