"""`convert --check`: simulator vs onnxruntime on each head's input at every 80 ms step of real clips,
on seeded Gaussian windows (they reach branches the clips do not: hey_jarvis's verifier runs only
when its first stage >= 0.5), and on the all-zero window the runtime pads batches with."""

from __future__ import annotations

import json
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..features import EMBEDDING_DIM, FRAME_SAMPLES, SAMPLE_RATE, FeaturePipeline
from ..models.registry import ModelInfo

#: DESIGN.md's exactness contract for the NPU (fp16), absolute score difference.
NPU_TOLERANCE = 2e-2
DETECTION_THRESHOLD = 0.5
RANDOM_ROWS = 32
#: Silence around each clip (as tests/reference.py pads), so the phrase's end is seen.
CLIP_PAD_BEFORE_S, CLIP_PAD_AFTER_S = 1.0, 1.5
#: The reference clips shipped with the package (copies of tests/audio, see SOURCE.md there).
CLIPS_DIR = Path(__file__).with_name("clips")


def default_clips_dir() -> Path:
    """The clips `--check` uses when not given `--clips`: the ones shipped in the package."""
    return CLIPS_DIR


def padded_clip(path: Path) -> np.ndarray:
    """A 16 kHz mono clip with silence around it, cut to whole 80 ms frames (int16)."""
    with wave.open(str(path)) as handle:
        if (handle.getframerate(), handle.getsampwidth(), handle.getnchannels()) != (SAMPLE_RATE, 2, 1):
            raise ValueError(f"{Path(path).name}: need 16 kHz 16-bit mono")
        clip = np.frombuffer(handle.readframes(handle.getnframes()), np.int16)
    before, after = (np.zeros(int(s * SAMPLE_RATE), np.int16) for s in (CLIP_PAD_BEFORE_S, CLIP_PAD_AFTER_S))
    audio = np.concatenate([before, clip, after])
    return audio[: len(audio) // FRAME_SAMPLES * FRAME_SAMPLES]


class ClipsError(ValueError):
    """No usable reference clips; the message says what to pass."""


@dataclass
class ClipFeatures:
    """Embeddings exactly as the engine's CPU features stage makes them for each clip."""

    silence: np.ndarray  # [96]: what every stream's history holds before its first step
    steps: dict[str, np.ndarray]  # clip stem -> [N, 96], one embedding per 80 ms step

    def windows(self, stem: str, window: int) -> np.ndarray:
        """The head's input at every step of the clip: [N, window, 96]."""
        history = np.concatenate([np.tile(self.silence, (window - 1, 1)), self.steps[stem]])
        return windows_of(history, window)


def clip_features(clips_dir: Path) -> ClipFeatures:
    """Stream every .wav in `clips_dir` through the CPU features pipeline, 1280 samples a step."""
    from ..backends.cpu import CpuFeatures

    pipeline = FeaturePipeline(CpuFeatures())
    steps = {}
    for path in sorted(Path(clips_dir).glob("*.wav")):
        try:
            audio = padded_clip(path)
        except (OSError, EOFError, ValueError, wave.Error) as err:
            raise ClipsError(f"cannot read clip {path} ({str(err) or type(err).__name__}); "
                             "pass --clips DIR with 16 kHz mono .wav files") from err
        state = pipeline.new_state(1)
        frames = audio.reshape(-1, FRAME_SAMPLES)
        steps[path.stem] = np.stack([pipeline.step([state], frame[None])[0] for frame in frames])
    if not steps:
        raise ClipsError(f"no .wav clips in {clips_dir}; pass --clips DIR with 16 kHz mono .wav files")
    return ClipFeatures(pipeline.silence.embedding.astype(np.float32), steps)


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


def check_rows(model: ModelInfo, clips: ClipFeatures) -> CheckRows:
    # Seeded per window length, so every run (and the recorded fixture) sees the same rows.
    rng = np.random.default_rng(model.window)
    random = rng.standard_normal((RANDOM_ROWS, model.window, EMBEDDING_DIM)).astype(np.float32)
    return CheckRows({stem: clips.windows(stem, model.window) for stem in clips.steps}, random)


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


def verification_rows(model: ModelInfo, scores: np.ndarray, rows: int) -> np.ndarray:
    """`rows` indices of a head's real check rows for the on-load check: its highest scores (where
    a detection is decided) and rows spread evenly over the rest, in order."""
    peak = scores[:, list(model.label_columns)].max(axis=1)
    top = np.argsort(-peak, kind="stable")[: rows // 4]
    rest = np.setdiff1d(np.arange(len(scores)), top)
    spread = rest[np.linspace(0, len(rest) - 1, rows - len(top)).round().astype(int)]
    return np.unique(np.concatenate([top, spread]))


def record_fixture(path: Path, clips: ClipFeatures, checked: list[tuple[ModelInfo, np.ndarray]], meta: dict,
                   rows: int | None = None) -> None:
    """Save each clip's embedding history once (silence, then its steps), and per head the
    simulator's scores at every step (by window start) and on the zero window: the runtime
    tests' fake answers from this file alone. With `rows`, only that many steps per head
    (`verification_rows`): the small file the backend checks a shipped head with on load."""
    longest = max(model.window for model, _ in checked)
    history = [np.concatenate([np.tile(clips.silence, (longest - 1, 1)), e]) for e in clips.steps.values()]
    offsets = np.cumsum([0] + [len(h) for h in history])
    arrays = {"embeddings": np.concatenate(history).astype(np.float32)}
    models = {}
    for model, scores in checked:
        skip = longest - model.window  # silence rows this head's first window does not reach
        starts = np.concatenate([offsets[i] + skip + np.arange(len(e)) for i, e in enumerate(clips.steps.values())])
        real = scores[: len(starts)]
        keep = np.arange(len(starts)) if rows is None else verification_rows(model, real, rows)
        arrays[f"{model.name}.starts"] = starts[keep].astype(np.int32)
        arrays[f"{model.name}.scores"] = real[keep].astype(np.float32)
        arrays[f"{model.name}.zero"] = scores[-1].astype(np.float32)
        models[model.name] = {"sha256": model.sha256, "window": model.window, "n_outputs": model.n_outputs}
    clip_rows = {stem: [int(offsets[i]), int(offsets[i + 1])] for i, stem in enumerate(clips.steps)}
    arrays["meta"] = np.array(json.dumps(dict(meta, clips=clip_rows, longest=longest, models=models), sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
