"""`convert --check`: simulator scores vs onnxruntime on real embeddings of recorded clips.

Rows per head: every window of real embeddings from the clips, seeded Gaussian windows (they
reach branches the clips do not, e.g. hey_jarvis's verifier runs when its first stage >= 0.5),
and one all-zero window (what the runtime pads a batch with).
"""

from __future__ import annotations

import json
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..features import EMBEDDING_DIM, MEL_FRAMES_PER_STEP, SAMPLE_RATE, WINDOW_FRAMES, scale_mel
from ..models.registry import ModelInfo

#: DESIGN.md's exactness contract for the NPU (fp16), absolute score difference.
NPU_TOLERANCE = 2e-2
DETECTION_THRESHOLD = 0.5
RANDOM_ROWS = 32
#: Silence around each clip, so every window position, including the phrase's end, is seen.
CLIP_PAD_S = 2.0
_REPO = Path(__file__).resolve().parents[2]


def default_clips_dir() -> Path:
    """The repo's test clips (openWakeWord's, see tests/audio/SOURCE.md), else ../shared/audio."""
    for candidate in (_REPO / "tests" / "audio", _REPO.parent / "shared" / "audio"):
        if sorted(candidate.glob("*.wav")):
            return candidate
    return _REPO / "tests" / "audio"


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as handle:
        if (handle.getframerate(), handle.getsampwidth(), handle.getnchannels()) != (SAMPLE_RATE, 2, 1):
            raise ValueError(f"{path.name}: need 16 kHz 16-bit mono")
        return np.frombuffer(handle.readframes(handle.getnframes()), np.int16)


def clip_embeddings(clips_dir: Path) -> dict[str, np.ndarray]:
    """{clip stem: embeddings [K, 96]}: openWakeWord's windowed embeddings (76 mel frames every 8)."""
    from ..backends.cpu import CpuFeatures

    features = CpuFeatures()
    out = {}
    for path in sorted(Path(clips_dir).glob("*.wav")):
        pad = np.zeros(int(CLIP_PAD_S * SAMPLE_RATE), np.int16)
        audio = np.concatenate([pad, _read_wav(path), pad]).astype(np.float32)
        mel = scale_mel(features.melspectrogram(audio[None]))[0]
        starts = range(0, len(mel) - WINDOW_FRAMES + 1, MEL_FRAMES_PER_STEP)
        out[path.stem] = features.embed_windows(np.stack([mel[s : s + WINDOW_FRAMES] for s in starts]))
    if not out:
        raise FileNotFoundError(f"no .wav clips in {clips_dir}")
    return out


def windows_of(embeddings: np.ndarray, window: int) -> np.ndarray:
    """Every run of `window` consecutive embeddings: [K - window + 1, window, 96]."""
    if len(embeddings) < window:
        return np.zeros((0, window, EMBEDDING_DIM), np.float32)
    view = np.lib.stride_tricks.sliding_window_view(embeddings, window, axis=0)
    return np.ascontiguousarray(view.transpose(0, 2, 1), dtype=np.float32)


@dataclass
class CheckRows:
    """One head's check inputs: real windows per clip, then random rows, then a zero row."""

    real: dict[str, np.ndarray]
    random: np.ndarray

    @property
    def all(self) -> np.ndarray:
        zero = np.zeros((1, *self.random.shape[1:]), np.float32)
        return np.concatenate([*self.real.values(), self.random, zero])


def check_rows(model: ModelInfo, clips: dict[str, np.ndarray]) -> CheckRows:
    # Seeded per window length, so every run (and the recorded fixture) sees the same rows.
    rng = np.random.default_rng(model.window)
    random = rng.standard_normal((RANDOM_ROWS, model.window, EMBEDDING_DIM)).astype(np.float32)
    return CheckRows({stem: windows_of(emb, model.window) for stem, emb in clips.items()}, random)


def reference_backend(model: ModelInfo):
    """The CPU path the engine would use for this head: onnxruntime, or the tflite backend."""
    if model.format == "onnx":
        from ..backends.cpu import CpuHeads

        return CpuHeads()
    from ..backends.tflite import TfliteHeads  # ImportError: no reference here

    return TfliteHeads()


@dataclass
class HeadCheck:
    model: ModelInfo
    max_error_real: float
    max_error_random: float
    zero_error: float
    cpu_detections: tuple[str, ...]
    npu_detections: tuple[str, ...]

    @property
    def ok(self) -> bool:
        worst = max(self.max_error_real, self.max_error_random, self.zero_error)
        return bool(worst <= NPU_TOLERANCE) and self.cpu_detections == self.npu_detections


def _detected(model: ModelInfo, scores: np.ndarray) -> bool:
    return bool(len(scores) and (scores[:, list(model.label_columns)] >= DETECTION_THRESHOLD).any())


def compare(model: ModelInfo, rows: CheckRows, npu: np.ndarray, cpu: np.ndarray) -> HeadCheck:
    """Score differences per row group, and on which clips each path fires."""
    error = np.abs(npu.astype(np.float64) - cpu).max(axis=1)
    n_real = sum(len(w) for w in rows.real.values())
    cpu_hits, npu_hits, start = [], [], 0
    for stem, windows in rows.real.items():
        end = start + len(windows)
        if _detected(model, cpu[start:end]):
            cpu_hits.append(stem)
        if _detected(model, npu[start:end]):
            npu_hits.append(stem)
        start = end
    return HeadCheck(
        model=model,
        max_error_real=float(error[:n_real].max(initial=0.0)),
        max_error_random=float(error[n_real:-1].max(initial=0.0)),
        zero_error=float(error[-1]),
        cpu_detections=tuple(cpu_hits),
        npu_detections=tuple(npu_hits),
    )


def record_fixture(path: Path, clips: dict[str, np.ndarray], checked: list[tuple[ModelInfo, CheckRows, np.ndarray]],
                   meta: dict) -> None:
    """Save the real embeddings once, and per head the simulator's scores on each real window
    (by start index) and on the zero window: the runtime tests' fake answers from this."""
    offsets = np.cumsum([0] + [len(e) for e in clips.values()])
    arrays = {"embeddings": np.concatenate(list(clips.values())).astype(np.float32)}
    models = {}
    for model, rows, scores in checked:
        starts = np.concatenate([offsets[i] + np.arange(len(w)) for i, w in enumerate(rows.real.values())])
        n_real = len(starts)
        arrays[f"{model.name}.starts"] = starts.astype(np.int32)
        arrays[f"{model.name}.scores"] = scores[:n_real].astype(np.float32)
        arrays[f"{model.name}.zero"] = scores[-1].astype(np.float32)
        models[model.name] = {"sha256": model.sha256, "window": model.window, "n_outputs": model.n_outputs}
    arrays["meta"] = np.array(json.dumps(dict(meta, clips=list(clips), models=models), sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
