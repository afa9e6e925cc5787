"""Scores equal openWakeWord 0.6.0's on any audio, not only on speech: sweeps, tones on and
between STFT bins, square waves, clipping, DC, impulses, a lone click, white and pink noise,
and the clips at 1 %..300 % gain. Every built-in head, every step whose windows hold only the
signal. CPU within 1e-4 (it runs the model's own STFT conv: bit-identical mel), OpenCL fp32
(PoCL in CI, any device elsewhere) within 1e-3.
"""

from __future__ import annotations

from functools import lru_cache

import pytest
from reference import (
    BUILTIN_ONNX_HEADS,
    CPU_TOLERANCE,
    engine_scores,
    oww_scores,
    score_differences,
    signal_kinds,
)

from wyoming_oww_rk3588.engine import Engine

OPENCL_TOLERANCE = 1e-3
KINDS = signal_kinds()


@lru_cache(maxsize=None)
def _reference(kind: str) -> dict[str, list[dict]]:
    return {name: oww_scores(audio, [f"{h}_v0.1" for h in BUILTIN_ONNX_HEADS]) for name, audio in KINDS[kind].items()}


def _worst(engine: Engine, kind: str) -> dict[str, tuple[float, str]]:
    """label -> (worst difference, signal) over the kind's signals, all run as one batch."""
    names = list(KINDS[kind])
    ours = engine_scores(engine, [KINDS[kind][n] for n in names], BUILTIN_ONNX_HEADS)
    worst: dict[str, tuple[float, str]] = {}
    for name, scores in zip(names, ours):
        for label, diff in score_differences(scores, _reference(kind)[name], engine.registry, BUILTIN_ONNX_HEADS).items():
            worst[label] = max(worst.get(label, (0.0, "")), (diff, name))
    return worst


@pytest.fixture(scope="module")
def cpu_engine():
    engine = Engine(features_backend="cpu", heads_backend="cpu")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def opencl_engine():
    pytest.importorskip("pyopencl", reason="pyopencl is not installed (bash .ci/install-opencl.sh)")
    engine = Engine(features_backend="opencl", heads_backend="cpu")
    if engine.backends["features"] != "opencl":
        pytest.skip("no usable OpenCL device (bash .ci/install-opencl.sh installs PoCL)")
    yield engine
    engine.close()


@pytest.mark.parametrize("kind", list(KINDS))
def test_cpu_scores_match_openwakeword_on_every_kind_of_signal(cpu_engine, kind):
    worst = _worst(cpu_engine, kind)
    bad = {label: w for label, w in worst.items() if w[0] > CPU_TOLERANCE}
    assert not bad, f"{kind}: max |cpu - openWakeWord| over {CPU_TOLERANCE}: {bad}"


@pytest.mark.parametrize("kind", list(KINDS))
def test_opencl_scores_match_openwakeword_on_every_kind_of_signal(opencl_engine, kind):
    worst = _worst(opencl_engine, kind)
    bad = {label: w for label, w in worst.items() if w[0] > OPENCL_TOLERANCE}
    assert not bad, f"{kind}: max |opencl - openWakeWord| over {OPENCL_TOLERANCE}: {bad}"
