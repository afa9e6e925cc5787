"""Backend choice by name: an explicit table, `auto` as an ordered list, one log line per skip.

Optional backends are imported only here, only when asked for, so a missing PyOpenCL or
rknn-toolkit-lite2 never breaks `import wyoming_oww_rk3588`.
"""

from __future__ import annotations

import importlib
import logging

from ..errors import BackendUnavailable
from .base import FeatureBackend, HeadBackend

_LOGGER = logging.getLogger(__name__)

FEATURE_BACKENDS = ("auto", "cpu", "opencl")
HEAD_BACKENDS = ("auto", "cpu", "rknn", "tflite")
FRAMEWORKS = ("auto", "cpu", "onnx", "opencl", "rknn", "tflite")


def backends_for_framework(framework: str) -> tuple[str, str]:
    """The seed API's single `inference_framework` -> (features backend, heads backend)."""
    framework = str(framework).lower()
    table = {
        "auto": ("auto", "auto"),
        "cpu": ("cpu", "cpu"),
        "onnx": ("cpu", "cpu"),  # openWakeWord's name for its onnxruntime path
        "opencl": ("opencl", "auto"),
        "rknn": ("auto", "rknn"),
        "tflite": ("auto", "tflite"),
    }
    if framework not in table:
        raise ValueError(f"unknown inference_framework {framework!r}; use one of {', '.join(FRAMEWORKS)}")
    return table[framework]


def _cpu_features(threads: int) -> FeatureBackend:
    from .cpu import CpuFeatures

    return CpuFeatures(threads=threads)


def cpu_features_factory(threads: int = 1):
    return lambda: _cpu_features(threads)


def select_features(name: str = "auto", threads: int = 1, precision: str = "fp32") -> tuple[FeatureBackend, str]:
    """(backend, why) for the features stage; never fails over to nothing: CPU is the floor."""
    name = str(name).lower()
    if name not in FEATURE_BACKENDS:
        raise ValueError(f"unknown features backend {name!r}; use one of {', '.join(FEATURE_BACKENDS)}")
    if name in ("auto", "opencl"):
        try:
            opencl = importlib.import_module(".opencl", __package__)
            backend, reason = opencl.probe("gpu" if name == "auto" else "any", precision=precision)
        except (ImportError, BackendUnavailable) as err:
            backend, reason = None, str(err)
        if backend is not None:
            return backend, reason
        if name == "opencl":
            _LOGGER.warning("OpenCL features backend unavailable: %s; falling back to CPU", reason)
        else:
            _LOGGER.info("Features on CPU: OpenCL skipped (%s)", reason)
        return _cpu_features(threads), f"opencl unavailable: {reason}"
    return _cpu_features(threads), "asked for cpu"


def _optional_heads(module: str, class_name: str, **kwargs) -> HeadBackend:
    try:
        cls = getattr(importlib.import_module(f".{module}", __package__), class_name)
    except ImportError as err:
        raise BackendUnavailable(f"{module} backend is not installed ({err})") from err
    return cls(**kwargs)


def select_heads(name: str = "auto", threads: int = 1, rknn_options: dict | None = None) -> list[HeadBackend]:
    """Ordered heads backends: each model runs on the first that supports it; CPU always among them."""
    from .cpu import CpuHeads

    name = str(name).lower()
    if name not in HEAD_BACKENDS:
        raise ValueError(f"unknown heads backend {name!r}; use one of {', '.join(HEAD_BACKENDS)}")
    chosen: list[HeadBackend] = []
    if name in ("auto", "rknn"):
        try:
            chosen.append(_optional_heads("rknn", "RknnHeads", **(rknn_options or {})))
        except (BackendUnavailable, TypeError) as err:
            log = _LOGGER.warning if name == "rknn" else _LOGGER.info
            log("Heads on CPU: rknn unavailable (%s); run `python -m wyoming_oww_rk3588 doctor`", err)
    if name != "tflite":
        chosen.append(CpuHeads(threads=threads))
    try:
        # .tflite heads (users' own files) need the tflite runtime; ONNX heads never do.
        chosen.append(_optional_heads("tflite", "TfliteHeads"))
    except BackendUnavailable as err:
        if name == "tflite":
            _LOGGER.warning("tflite heads backend unavailable (%s); ONNX heads run on the CPU", err)
    if name == "tflite":
        chosen.append(CpuHeads(threads=threads))
    return chosen
