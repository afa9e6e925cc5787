"""The heads stage: one batched call per wake-word model per step, on the backend that can run it.

Each model goes to the first backend in the ordered list that supports it (asked, not
tried); a backend that fails mid-stream is replaced by the CPU for that model, and the
call is redone there, so no step's score is lost.
"""

from __future__ import annotations

import logging

import numpy as np

from .backends.base import HeadBackend
from .errors import BackendUnavailable, ModelError
from .models.registry import ModelInfo

_LOGGER = logging.getLogger(__name__)


class HeadRunner:
    def __init__(self, backends: list[HeadBackend], cpu_factory) -> None:
        self.backends = backends
        self._cpu_factory = cpu_factory
        self._cpu: HeadBackend | None = next((b for b in backends if b.name == "cpu"), None)
        self._assigned: dict[str, HeadBackend] = {}

    @property
    def cpu(self) -> HeadBackend:
        if self._cpu is None:
            self._cpu = self._cpu_factory()
        return self._cpu

    def backend_for(self, model: ModelInfo) -> HeadBackend:
        """Pick (once) and load the backend that runs `model`; raises ModelError if none can."""
        backend = self._assigned.get(model.name)
        if backend is not None:
            return backend
        reasons = []
        for candidate in self.backends:
            reason = candidate.unsupported_reason(model)
            if reason is None:
                try:
                    candidate.load(model)
                except BackendUnavailable as err:
                    reasons.append(f"{candidate.name}: {err}")
                    continue
                if reasons:
                    _LOGGER.info("Model %s runs on %s (%s)", model.name, candidate.name, "; ".join(reasons))
                self._assigned[model.name] = candidate
                return candidate
            reasons.append(f"{candidate.name}: {reason}")
        raise ModelError(f"no heads backend can run {model.name}: {'; '.join(reasons)}")

    def names(self) -> dict[str, str]:
        return {name: backend.name for name, backend in self._assigned.items()}

    def score(self, model: ModelInfo, windows: np.ndarray) -> np.ndarray:
        backend = self.backend_for(model)
        try:
            return backend.score(model, windows)
        except Exception as err:  # noqa: BLE001 - any accelerator failure moves the model to CPU
            if backend.name == "cpu" or model.format != "onnx":
                raise
            _LOGGER.error("Heads backend %s failed on %s (%s); running %s on the CPU from now on",
                          backend.name, model.name, err, model.name)
            self.cpu.load(model)
            self._assigned[model.name] = self.cpu
            return self.cpu.score(model, windows)

    def score_many(self, models: list[ModelInfo], windows: list[np.ndarray]) -> list[np.ndarray]:
        """`score` for several models at once: a backend that offers `score_many` (the CPU) runs
        all of its models in one call; a failure there falls back to `score` model by model."""
        out: list[np.ndarray | None] = [None] * len(models)
        groups: dict[int, tuple[HeadBackend, list[int]]] = {}
        for i, model in enumerate(models):
            backend = self.backend_for(model)
            groups.setdefault(id(backend), (backend, []))[1].append(i)
        for backend, members in groups.values():
            many = getattr(backend, "score_many", None)
            if many is not None and len(members) > 1:
                try:
                    for i, scores in zip(members, many([models[i] for i in members], [windows[i] for i in members])):
                        out[i] = scores
                    continue
                except Exception as err:  # noqa: BLE001 - redone one by one, with score's fallback
                    _LOGGER.error("Heads backend %s failed on %d models at once (%s); scoring them one by one",
                                  backend.name, len(members), err)
            for i in members:
                out[i] = self.score(models[i], windows[i])
        return out

    def close(self) -> None:
        for backend in {id(b): b for b in [*self.backends, *self._assigned.values()]}.values():
            backend.close()
