"""openWakeWord-compatible Python API: `Model` and `AudioFeatures`, as the user's GPU document uses them.

Both are thin fronts on the engine: one stream, the same batched stages and backends the
server uses, with `inference_framework` choosing the backends and `.backends` saying which ran.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .backends.select import backends_for_framework, cpu_features_factory, select_features
from .detector import DetectorConfig
from .engine import Engine
from .features import EMBEDDING_DIM, FRAME_SAMPLES, MEL_FRAMES_PER_STEP, WINDOW_FRAMES, FeaturePipeline, scale_mel
from .errors import ModelError
from .models.registry import ModelInfo, ModelRegistry, normalize_name, read_head
from .verifier import DEFAULT_VERIFIER_THRESHOLD, bind_verifiers

_LOGGER = logging.getLogger(__name__)


class Model:
    """Wake-word scores per 80 ms of int16 audio, like `openwakeword.Model`.

    `wakeword_models`: names ("alexa", "okay_nabu", "alexa_v0.1") or paths of your own
    .onnx/.tflite heads; empty means every built-in model. `vad_threshold` (0 = off) zeroes
    scores when Silero VAD heard no speech 0.32-0.48 s earlier; `enable_speex_noise_suppression`
    needs the `speex` extra; `custom_verifier_models` maps model names to `.verifier.npz` files
    (convert openWakeWord's pickles with `python -m wyoming_oww_rk3588.verifier convert`), used
    for scores >= `custom_verifier_threshold`. VAD and verifiers work per 80 ms step, so calls of
    1280 samples give openWakeWord's scores; other sizes give the best step's.
    """

    def __init__(
        self,
        wakeword_models: Sequence[str] = (),
        inference_framework: str = "auto",
        vad_threshold: float = 0.0,
        enable_speex_noise_suppression: bool = False,
        custom_verifier_models: dict[str, str | Path] | None = None,
        custom_verifier_threshold: float = DEFAULT_VERIFIER_THRESHOLD,
        custom_model_dirs: Sequence[str | Path] = (),
        threshold: float = 0.5,
        ncpu: int = 1,
        **kwargs,
    ) -> None:
        features, heads = backends_for_framework(inference_framework)
        registry = ModelRegistry(custom_dirs=custom_model_dirs)
        chosen: list[tuple[str, ModelInfo]] = []
        for name in wakeword_models or registry.names():
            # Local paths are the caller's own choice here; the server only ever takes names.
            info = read_head(Path(name)) if os.path.isfile(name) else registry.resolve(name)
            chosen.append((info.name, info))
        self.models = {info.name: info for _, info in chosen}
        self._engine = Engine(
            registry,
            features_backend=kwargs.pop("features_backend", features),
            heads_backend=kwargs.pop("heads_backend", heads),
            detector=DetectorConfig(threshold=threshold, vad_threshold=vad_threshold),
            threads=ncpu,
            noise_suppression=enable_speex_noise_suppression,
            verifiers=bind_verifiers(dict(custom_verifier_models or {}), self._loaded_model),
            verifier_threshold=custom_verifier_threshold,
        )
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
        self._stream = self._engine.open_stream(chosen)
        self._last: dict[str, float] = {label: 0.0 for info in self.models.values() for label in info.labels}
        _LOGGER.info("Backends: features=%s heads=%s", *self.backends.values())

    def _loaded_model(self, name: str) -> ModelInfo:
        info = self.models.get(normalize_name(name))  # "alexa_v0.1", openWakeWord's key, is "alexa"
        if info is None:
            raise ModelError(f"custom verifier for {name!r} matches no loaded model; loaded: {', '.join(self.models)}")
        return info

    @property
    def backends(self) -> dict[str, str]:
        """What actually runs, e.g. {"features": "opencl", "heads": "rknn"}."""
        return self._engine.backends

    def predict(self, x: np.ndarray) -> dict[str, float]:
        """Scores for the newest 80 ms step(s) of `x` (int16); the highest score per label when
        `x` completes several steps, the previous scores when it completes none."""
        if not isinstance(x, np.ndarray) or x.dtype != np.int16:
            raise ValueError("predict() takes a numpy int16 array of 16 kHz mono samples")
        self._stream.add_samples(x.reshape(-1))
        best: dict[str, float] | None = None
        while self._stream.ready:
            self._engine.process([self._stream], max_rounds=1)
            scores = self._stream.scores
            best = dict(scores) if best is None else {k: max(v, scores[k]) for k, v in best.items()}
        if best is not None:
            self._last = best
        return dict(self._last)

    def reset(self) -> None:
        self._stream = self._engine.open_stream(list(self._stream.models))
        self._last = {k: 0.0 for k in self._last}


class AudioFeatures:
    """Melspectrogram and speech-embedding features, like `openwakeword.utils.AudioFeatures`."""

    def __init__(
        self,
        melspec_model_path: str = "",
        embedding_model_path: str = "",
        sr: int = 16000,
        ncpu: int = 1,
        inference_framework: str = "auto",
        device: str = "cpu",
    ) -> None:
        if melspec_model_path or embedding_model_path:
            raise ValueError("custom feature model paths are not supported; the built-in models are used")
        if sr != 16000:
            raise ValueError("only 16 kHz audio is supported (sr=16000)")
        features, _ = backends_for_framework(inference_framework)
        if features == "opencl" and device == "cpu":
            _LOGGER.info("inference_framework='opencl' with device='cpu': any OpenCL device may be used")
        backend, _ = select_features(features, threads=ncpu)
        self._pipeline = FeaturePipeline(backend, fallback_factory=cpu_features_factory(ncpu))
        self.backend = backend.name
        self._state = self._pipeline.new_state(120)
        self._pending = np.zeros(0, np.int16)

    # openWakeWord's one-shot helpers -------------------------------------------------
    def _get_melspectrogram(self, x, melspec_transform: Callable = scale_mel) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype != np.int16:
            raise ValueError(f"Input data must be 16-bit integers (16-bit PCM audio); got {x.dtype}")
        x = x[None] if x.ndim < 2 else x
        return np.squeeze(melspec_transform(self._pipeline.backend.melspectrogram(x.astype(np.float32))))

    def _get_embeddings_from_melspec(self, melspec: np.ndarray) -> np.ndarray:
        melspec = np.asarray(melspec, np.float32).reshape(-1, WINDOW_FRAMES, 32)
        return self._pipeline.backend.embed_windows(melspec)

    def _get_embeddings(self, x: np.ndarray, window_size: int = WINDOW_FRAMES, step_size: int = MEL_FRAMES_PER_STEP,
                        **kwargs) -> np.ndarray:
        spec = self._get_melspectrogram(x, **kwargs)
        starts = range(0, spec.shape[0] - window_size + 1, step_size)
        windows = np.stack([spec[i : i + window_size] for i in starts]).astype(np.float32)
        return np.squeeze(self._pipeline.backend.embed_windows(windows))

    def _get_melspectrogram_batch(self, x: np.ndarray, batch_size: int = 128, ncpu: int = 1) -> np.ndarray:
        """[N, samples] int16 -> [N, frames, 32]; each clip clipped on its own maximum."""
        x = np.asarray(x)
        out = [
            scale_mel(self._pipeline.backend.melspectrogram(x[i : i + batch_size].astype(np.float32)))
            for i in range(0, len(x), batch_size)
        ]
        return np.concatenate(out).astype(np.float32)

    def _get_embeddings_batch(self, x: np.ndarray, batch_size: int = 128, ncpu: int = 1) -> np.ndarray:
        """[N, frames, 32(, 1)] mel -> [N, windows, 96] (76-frame windows every 8 frames)."""
        x = np.asarray(x, np.float32).reshape(len(x), -1, 32)
        if x.shape[1] < WINDOW_FRAMES:
            raise ValueError("Embedding model requires the input melspectrograms to have at least 76 frames")
        starts = range(0, x.shape[1] - WINDOW_FRAMES + 1, MEL_FRAMES_PER_STEP)
        windows = np.stack([clip[i : i + WINDOW_FRAMES] for clip in x for i in starts])
        out = np.concatenate([
            self._pipeline.backend.embed_windows(windows[i : i + batch_size])
            for i in range(0, len(windows), batch_size)
        ])
        return out.reshape(len(x), len(starts), EMBEDDING_DIM)

    def embed_clips(self, x: np.ndarray, batch_size: int = 128, ncpu: int = 1) -> np.ndarray:
        return self._get_embeddings_batch(self._get_melspectrogram_batch(x, batch_size), batch_size)

    # Streaming, as openWakeWord's __call__ / get_features ------------------------------
    def __call__(self, x: np.ndarray) -> int:
        """Add int16 samples; returns the samples turned into features by this call."""
        self._pending = np.concatenate([self._pending, np.asarray(x, np.int16).reshape(-1)])
        steps = len(self._pending) // FRAME_SAMPLES
        for i in range(steps):
            frame = self._pending[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
            self._pipeline.step([self._state], frame[None])
        self._pending = self._pending[steps * FRAME_SAMPLES :]
        return steps * FRAME_SAMPLES

    def get_features(self, n_feature_frames: int = 16, start_ndx: int = -1) -> np.ndarray:
        """The newest `n_feature_frames` embeddings, [1, n, 96]."""
        buffer = self._state.embeddings
        if start_ndx != -1:
            end = start_ndx + n_feature_frames if start_ndx + n_feature_frames != 0 else len(buffer)
            return buffer[start_ndx:end][None].astype(np.float32)
        return buffer[-n_feature_frames:][None].astype(np.float32)

    def reset(self) -> None:
        self._state = self._pipeline.new_state(120)
        self._pending = np.zeros(0, np.int16)
