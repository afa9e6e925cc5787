"""How exact the features are, end to end: CPU, OpenCL and openWakeWord's own arithmetic
against a float64 reference, on the same audio.

Streams: the test clips, silence, noise and tones at 11 gains from 0.02 to 3 (66 streams),
each through FeaturePipeline in 80 ms steps (each backend computing its own mel). Prints
(1) the scaled mel's max error against float64 per step call, and (2) the max difference of
embeddings between every pair, from step 12 on (buffers hold only the stream's own audio).
"onnx" is the CPU backend with the shipped STFT-conv mel graph: openWakeWord's arithmetic.

Run: python benchmarks/accuracy_features.py [--precision fp32|fp16]   (OpenCL: any device, PoCL here)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import generated, load_wav, padded  # noqa: E402

from wyoming_oww_rk3588.backends.cpu import CpuFeatures  # noqa: E402
from wyoming_oww_rk3588.backends.opencl import OpenClFeatures  # noqa: E402
from wyoming_oww_rk3588.features import FRAME_SAMPLES, MEL_CONTEXT_SAMPLES, FeaturePipeline  # noqa: E402


class Float64Mel(CpuFeatures):
    """The mel model's function with every step after the audio in float64."""

    name = "f64"

    def melspectrogram(self, audio: np.ndarray) -> np.ndarray:
        window, mel = (a.astype(np.float64) for a in self._fft)
        frames = np.lib.stride_tricks.sliding_window_view(np.asarray(audio, np.float64), len(window), axis=1)[:, ::160]
        spectrum = np.fft.rfft(frames * window, axis=-1)
        db = 10 * np.log10(np.maximum((spectrum.real**2 + spectrum.imag**2) @ mel, 1e-10))
        return np.maximum(db, db.max(axis=(1, 2), keepdims=True) - 80).astype(np.float32)


class OnnxMel(CpuFeatures):
    name = "onnx"

    def __init__(self) -> None:
        super().__init__()
        self._fft = None  # the shipped STFT-conv graph, as openWakeWord runs it


def streams() -> list[np.ndarray]:
    clips = [padded(load_wav(c), 2.5, 2.0) for c in ("alexa_test.wav", "hey_mycroft_test.wav", "hey_jane.wav")]
    clips += [generated(kind, 6.0) for kind in ("silence", "noise", "tones")]
    length = min(len(c) for c in clips) // FRAME_SAMPLES * FRAME_SAMPLES
    return [np.clip(c[:length] * g, -32768, 32767).astype(np.int16) for g in np.geomspace(0.02, 3, 11) for c in clips]


def embeddings(backend, audios: list[np.ndarray]) -> np.ndarray:
    pipe = FeaturePipeline(backend)
    states = [pipe.new_state(16) for _ in audios]
    out = []
    for step in range(len(audios[0]) // FRAME_SAMPLES):
        frames = np.stack([a[step * FRAME_SAMPLES : (step + 1) * FRAME_SAMPLES] for a in audios])
        out.append(pipe.step(states, frames).copy())
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    args = parser.parse_args()
    audios = streams()
    backends = {"cpu": CpuFeatures(), "opencl": OpenClFeatures(device="any", precision=args.precision),
                "onnx": OnnxMel(), "f64": Float64Mel()}
    print(f"# {len(audios)} streams, OpenCL on {backends['opencl'].device.name} ({args.precision})")

    batch = np.stack(audios)
    calls = [batch[:, s * FRAME_SAMPLES - MEL_CONTEXT_SAMPLES : (s + 1) * FRAME_SAMPLES].astype(np.float32)
             for s in range(1, batch.shape[1] // FRAME_SAMPLES)]
    reference = [backends["f64"].melspectrogram(c) for c in calls]
    print("scaled mel, max |x - float64| per 1760-sample call:")
    for name in ("cpu", "opencl", "onnx"):
        error = max(float(np.abs(backends[name].melspectrogram(c) - r).max()) / 10 for c, r in zip(calls, reference))
        print(f"  {name:<7} {error:.2e}")

    found = {name: embeddings(backend, audios)[12:] for name, backend in backends.items()}
    scale = float(np.abs(found["f64"]).max())
    print(f"embeddings end to end, max |a - b| (max |embedding| {scale:.1f}):")
    for a, b in [("opencl", "cpu"), ("opencl", "onnx"), ("opencl", "f64"), ("cpu", "onnx"), ("cpu", "f64"), ("onnx", "f64")]:
        diff = float(np.abs(found[a] - found[b]).max())
        print(f"  {a:<7} {b:<5} {diff:.2e}  ({diff / scale:.1e} of the scale)")


if __name__ == "__main__":
    main()
