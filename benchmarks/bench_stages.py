"""CPU cost per stream of each optional stage: openWakeWord 0.6.0's vs this engine's, same audio.

Stages: the Silero VAD (`vad_threshold`), speex noise suppression, and a custom verifier
(every frame verified: its worst case). Prints CPU-ms per stream per 80 ms step at 1, 8 and
64 streams, and the ratio engine / openWakeWord.
Run: python benchmarks/bench_stages.py [--seconds 5] [--streams 1 8 64]
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import NOISES, noisy  # noqa: E402

from wyoming_oww_rk3588.features import FRAME_SAMPLES  # noqa: E402
from wyoming_oww_rk3588.models.registry import builtin_feature_path  # noqa: E402
from wyoming_oww_rk3588.vad import VadStage  # noqa: E402

WINDOW = 16  # alexa's embedding window


def audio_for(n: int, seconds: float) -> list[np.ndarray]:
    steps = int(seconds * 16000) // FRAME_SAMPLES
    out = []
    for i in range(n):
        clip = noisy("alexa_test.wav", NOISES[i % len(NOISES)], seed=i)
        out.append(np.resize(clip, steps * FRAME_SAMPLES))
    return out


def cpu_ms_per_stream_step(fn, streams: int, steps: int) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) * 1000 / (streams * steps)


class _Stream:
    """The two stream fields the stages read."""

    def __init__(self, vad=None, denoiser=None) -> None:
        self.vad, self.denoiser = vad, denoiser


def bench_vad(audios: list[np.ndarray]) -> tuple[float, float]:
    from openwakeword.vad import VAD

    steps = len(audios[0]) // FRAME_SAMPLES
    refs = [VAD(model_path=str(builtin_feature_path("silero_vad"))) for _ in audios]
    stage = VadStage()
    streams = [_Stream(vad=stage.new_state(0.5)) for _ in audios]
    frames = [np.stack([a[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES] for a in audios]) for i in range(steps)]
    stage.step(streams, frames[0])  # warm up both
    refs[0](frames[0][0])

    def oww():
        for batch in frames:
            for ref, frame in zip(refs, batch):
                ref(frame)

    def ours():
        for batch in frames:
            stage.step(streams, batch)

    return cpu_ms_per_stream_step(oww, len(audios), steps), cpu_ms_per_stream_step(ours, len(audios), steps)


def bench_speex(audios: list[np.ndarray]) -> tuple[float, float] | None:
    from wyoming_oww_rk3588.denoise import NoiseSuppressor, speex_factory, suppress_noise
    from wyoming_oww_rk3588.errors import BackendUnavailable

    try:
        factory = speex_factory()
    except BackendUnavailable:
        return None
    from openwakeword.model import Model

    steps = len(audios[0]) // FRAME_SAMPLES
    refs = []
    for _ in audios:  # openWakeWord's own method on its own suppressor, without loading models
        model = Model.__new__(Model)
        model.speex_ns = factory.create(160, 16000)
        refs.append(model)
    streams = [_Stream(denoiser=NoiseSuppressor(factory)) for _ in audios]
    frames = [np.stack([a[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES] for a in audios]) for i in range(steps)]

    def oww():
        for batch in frames:
            for ref, frame in zip(refs, batch):
                ref._suppress_noise_with_speex(frame)

    def ours():
        for batch in frames:
            suppress_noise(streams, batch)

    return cpu_ms_per_stream_step(oww, len(audios), steps), cpu_ms_per_stream_step(ours, len(audios), steps)


def _verifier_pipeline():
    from openwakeword.custom_verifier_model import train_verifier_model

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (200, WINDOW, 96)).astype(np.float32)
    return train_verifier_model(x, np.arange(200) % 2)


def bench_verifier(n: int, steps: int) -> tuple[float, float]:
    from wyoming_oww_rk3588.verifier import verifier_from_pickle

    pipeline = _verifier_pipeline()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v.pkl"
        path.write_bytes(pickle.dumps(pipeline))
        verifier = verifier_from_pickle(path)
    rng = np.random.default_rng(1)
    windows = [rng.normal(0, 1, (n, WINDOW, 96)).astype(np.float32) for _ in range(steps)]
    scores = np.ones((n, 1), np.float32)  # every frame over the threshold: every frame verified

    def oww():  # openWakeWord: one predict_proba per stream per verified frame
        for batch in windows:
            for window in batch:
                pipeline.predict_proba(window[None])[0][-1]

    def ours():
        for batch in windows:
            verifier.rescore(scores, batch, (0,), 0.1)

    return cpu_ms_per_stream_step(oww, n, steps), cpu_ms_per_stream_step(ours, n, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="audio per stream")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 64])
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, onnxruntime 1 thread, "
          f"{args.seconds:g} s of noisy audio per stream; CPU-ms per stream per 80 ms step")
    print(f"{'stage':>18} {'streams':>8} {'openWakeWord':>13} {'engine':>9} {'ratio':>7}")
    for n in args.streams:
        audios = audio_for(n, args.seconds)
        steps = len(audios[0]) // FRAME_SAMPLES
        rows = {"vad (silero)": bench_vad(audios), "noise suppression": bench_speex(audios),
                "verifier (worst)": bench_verifier(n, steps)}
        for stage, result in rows.items():
            if result is None:
                print(f"{stage:>18} {n:>8} {'speexdsp-ns not installed (bash .ci/install-speex.sh)':>40}")
                continue
            oww, ours = result
            print(f"{stage:>18} {n:>8} {oww:>13.4f} {ours:>9.4f} {ours / oww:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
