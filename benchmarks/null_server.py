"""The server with features and heads that do no arithmetic (zeros out), for bench_streams.py.

What CPU it still uses per stream-frame is the overhead outside inference: event parsing,
conversion, hand-offs, batching, detectors. On an RK3588 with the features on the GPU and the
heads on the NPU this is about all the CPU the server pays. Like those accelerators (and
unlike the CPU backend) the null features take one fused call per step and are never split
across worker threads.

Run: python benchmarks/null_server.py [server options...]   (same options as the server)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wyoming_oww_rk3588 import __main__ as entry, engine  # noqa: E402
from wyoming_oww_rk3588.features import EMBEDDING_DIM, MEL_BINS, MEL_HOP_SAMPLES, MEL_WINDOW_SAMPLES  # noqa: E402


class NullFeatures:
    name = "null"

    def __init__(self) -> None:
        from wyoming_oww_rk3588 import graphs
        from wyoming_oww_rk3588.models.registry import builtin_feature_path
        import onnx

        _, self.layout = graphs.streaming_embedding(onnx.load(str(builtin_feature_path("embedding"))))

    def melspectrogram(self, audio: np.ndarray) -> np.ndarray:
        frames = (audio.shape[1] - MEL_WINDOW_SAMPLES) // MEL_HOP_SAMPLES + 1
        return np.zeros((len(audio), frames, MEL_BINS), np.float32)

    def embed_step(self, mel: np.ndarray, states: list[np.ndarray]):
        return np.zeros((len(mel), EMBEDDING_DIM), np.float32), states

    def features_step(self, audio: np.ndarray, states: list[np.ndarray]):
        return np.zeros((len(audio), EMBEDDING_DIM), np.float32), states

    def embed_windows(self, mel: np.ndarray) -> np.ndarray:
        return np.zeros((len(mel), EMBEDDING_DIM), np.float32)

    def close(self) -> None:
        pass


class NullHeads:
    name = "null"

    def unsupported_reason(self, model) -> None:
        return None

    def load(self, model) -> None:
        pass

    def score(self, model, windows: np.ndarray) -> np.ndarray:
        return np.zeros((len(windows), model.n_outputs), np.float32)

    def close(self) -> None:
        pass


def main() -> int:
    engine.select_features = lambda *args, **kwargs: (NullFeatures(), "no-arithmetic benchmark double")
    engine.select_heads = lambda *args, **kwargs: [NullHeads()]
    return entry.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
