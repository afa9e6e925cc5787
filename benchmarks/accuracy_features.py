"""How exact the features and scores are, on every kind of signal: CPU and OpenCL against the
real openWakeWord 0.6.0 package, and the mel and embeddings against a float64 reference.

Signals: tests/reference.py `signal_kinds()` (sweeps over the whole band at 100..full scale,
tones on and between STFT bins, square waves, clipping, DC, impulse trains, a lone click, white
and pink noise, the clips at 1 %..300 % gain), 6 s each. Prints
(1) per signal kind, the worst |score - openWakeWord| over every built-in head and every step
    whose windows hold only the signal, for the CPU and OpenCL backends, and the worst per head;
(2) the scaled mel's max error against float64 per 1760-sample call;
(3) the max difference of embeddings between backends, from step 12 on.
The CPU backend runs the model's own STFT conv (openWakeWord's arithmetic); OpenCL runs a
float-float FFT, more exact than either float32 conv, so it differs from openWakeWord by the
conv's own rounding.

Run: python benchmarks/accuracy_features.py [--precision fp32|fp16]   (OpenCL: any device, PoCL here)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import BUILTIN_ONNX_HEADS, engine_scores, oww_scores, score_differences, signal_kinds  # noqa: E402

from wyoming_oww_rk3588.backends.cpu import CpuFeatures  # noqa: E402
from wyoming_oww_rk3588.backends.opencl_kernels import fft_mel_weights  # noqa: E402
from wyoming_oww_rk3588.engine import Engine  # noqa: E402
from wyoming_oww_rk3588.features import FRAME_SAMPLES, MEL_CONTEXT_SAMPLES, FeaturePipeline  # noqa: E402
from wyoming_oww_rk3588.models.registry import builtin_feature_path  # noqa: E402


class Float64Mel(CpuFeatures):
    """The mel model's function with every step after the audio in float64."""

    name = "f64"

    def __init__(self) -> None:
        super().__init__()
        import onnx

        self._window, self._mel_matrix = (a.astype(np.float64) for a in
                                          fft_mel_weights(onnx.load(str(builtin_feature_path("melspectrogram")))))

    def melspectrogram(self, audio: np.ndarray) -> np.ndarray:
        frames = np.lib.stride_tricks.sliding_window_view(np.asarray(audio, np.float64), 512, axis=1)[:, ::160]
        spectrum = np.fft.rfft(frames * self._window, axis=-1)
        db = 10 * np.log10(np.maximum((spectrum.real**2 + spectrum.imag**2) @ self._mel_matrix, 1e-10))
        return np.maximum(db, db.max(axis=(1, 2), keepdims=True) - 80).astype(np.float32)


def embeddings(backend, audios: list[np.ndarray]) -> np.ndarray:
    pipe = FeaturePipeline(backend)
    states = [pipe.new_state(16) for _ in audios]
    out = []
    for step in range(len(audios[0]) // FRAME_SAMPLES):
        frames = np.stack([a[step * FRAME_SAMPLES : (step + 1) * FRAME_SAMPLES] for a in audios])
        out.append(pipe.step(states, frames).copy())
    return np.stack(out)


def score_table(kinds: dict[str, dict[str, np.ndarray]], engines: dict[str, Engine]) -> None:
    stems = [f"{h}_v0.1" for h in BUILTIN_ONNX_HEADS]
    per_head: dict[str, dict[str, float]] = {name: {} for name in engines}
    print("scores, max |ours - openWakeWord 0.6.0| per signal kind (worst head, signal):")
    print(f"  {'kind':<20}" + "".join(f"{name:<44}" for name in engines))
    for kind, signals in kinds.items():
        reference = [oww_scores(audio, stems) for audio in signals.values()]
        row = f"  {kind:<20}"
        for name, engine in engines.items():
            ours = engine_scores(engine, list(signals.values()), BUILTIN_ONNX_HEADS)
            worst = (0.0, "", "")
            for signal, mine, ref in zip(signals, ours, reference):
                for label, diff in score_differences(mine, ref, engine.registry, BUILTIN_ONNX_HEADS).items():
                    worst = max(worst, (diff, label, signal))
                    per_head[name][label] = max(per_head[name].get(label, 0.0), diff)
            cell = f"{worst[0]:.2e} ({worst[1]}, {worst[2]})" if worst[0] else "0 (bit-identical)"
            row += cell.ljust(44)
        print(row, flush=True)
    print("scores, max |ours - openWakeWord 0.6.0| per head over every kind:")
    for label in per_head[next(iter(engines))]:
        print(f"  {label:<20}" + "".join(f"{per_head[name][label]:<12.2e}" for name in engines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    args = parser.parse_args()
    kinds = signal_kinds()
    engines = {"cpu": Engine(features_backend="cpu", heads_backend="cpu"),
               "opencl": Engine(features_backend="opencl", heads_backend="cpu", precision=args.precision)}
    opencl = engines["opencl"].features.backend
    if engines["opencl"].backends["features"] != "opencl":
        raise SystemExit(f"no OpenCL device: {engines['opencl'].features_reason}")
    print(f"# OpenCL on {opencl.device.name} ({args.precision})")
    score_table(kinds, engines)

    audios = [audio for signals in kinds.values() for audio in signals.values()]
    backends = {"cpu": CpuFeatures(), "opencl": opencl, "f64": Float64Mel()}
    batch = np.stack(audios)
    calls = [batch[:, s * FRAME_SAMPLES - MEL_CONTEXT_SAMPLES : (s + 1) * FRAME_SAMPLES].astype(np.float32)
             for s in range(1, batch.shape[1] // FRAME_SAMPLES)]
    reference = [backends["f64"].melspectrogram(c) for c in calls]
    print(f"scaled mel, max |x - float64| per 1760-sample call ({len(audios)} signals):")
    for name in ("cpu", "opencl"):
        error = max(float(np.abs(backends[name].melspectrogram(c) - r).max()) / 10 for c, r in zip(calls, reference))
        print(f"  {name:<7} {error:.2e}")

    found = {name: embeddings(backend, audios)[12:] for name, backend in backends.items()}
    scale = float(np.abs(found["f64"]).max())
    print(f"embeddings end to end, max |a - b| (max |embedding| {scale:.1f}):")
    for a, b in [("opencl", "cpu"), ("opencl", "f64"), ("cpu", "f64")]:
        diff = float(np.abs(found[a] - found[b]).max())
        print(f"  {a:<7} {b:<5} {diff:.2e}  ({diff / scale:.1e} of the scale)")


if __name__ == "__main__":
    main()
