"""`auto` uses a device only where it is faster (backends/route.py): the choice from measured costs,
the pipeline sending each batch to its backend with the same scores, a failure moving everything
to the CPU, and the engine timing an accelerator beside the CPU at start. Backends of known cost
are the real CPU features with a sleep added (a fixed cost per call, or one per stream): sleeps
only get longer on a busy machine, and the costs are far apart."""

from __future__ import annotations

import time

import numpy as np
import pytest

from wyoming_oww_rk3588 import engine as engine_module
from wyoming_oww_rk3588.backends.cpu import CpuFeatures
from wyoming_oww_rk3588.backends.route import LARGE_BATCH, Cost, Route, choose
from wyoming_oww_rk3588.engine import Engine
from wyoming_oww_rk3588.errors import BackendFailed
from wyoming_oww_rk3588.features import FRAME_SAMPLES, FeaturePipeline


def test_each_batch_size_goes_to_the_cheaper_line():
    cpu = Cost("cpu", fixed_s=0.0, per_stream_s=1e-3)  # 1 ms a stream
    gpu = Cost("opencl", fixed_s=5e-3, per_stream_s=0.1e-3)  # 5 ms a call, 0.1 ms a stream
    route = Route([cpu, gpu])
    assert [route.pick(b) for b in (1, 5, 6, 64)] == ["cpu", "cpu", "opencl", "opencl"]
    assert route.crossover() == 6 and route.used() == {"cpu", "opencl"}
    assert route.describe().startswith("batches of 1-5 streams on cpu, 6 or more on opencl (cpu 1.00 ms at 1 stream")


def test_a_device_slower_at_every_size_is_never_used_and_ties_go_to_the_cpu():
    slow = Route([Cost("cpu", 0.0, 1e-3), Cost("opencl", 2e-3, 1e-3)])
    assert slow.used() == {"cpu"} and slow.crossover() is None and slow.describe().startswith("every batch on cpu")
    tie = Route([Cost("cpu", 1e-3, 1e-3), Cost("opencl", 1e-3, 1e-3)])
    assert tie.used() == {"cpu"}


def test_a_cost_is_the_line_through_two_timings():
    cost = Cost.fit("x", one_s=2e-3, large_s=2e-3 + 63 * 0.5e-3, large=64)
    assert cost.per_stream_s == pytest.approx(0.5e-3) and cost.fixed_s == pytest.approx(1.5e-3)
    assert Cost.fit("x", one_s=3e-3, large_s=1e-3).per_stream_s == 0.0  # noise never gives a negative slope


class Timed(CpuFeatures):
    """The CPU features under another name, costing `fixed_s` a call and `per_stream_s` a stream
    more; counts the streams of each call."""

    def __init__(self, name: str, fixed_s: float, per_stream_s: float, fail: bool = False) -> None:
        super().__init__()
        self.name, self.fixed_s, self.per_stream_s, self.fail = name, fixed_s, per_stream_s, fail
        self.batches: list[int] = []
        self.closed = False

    def _cost(self, batch: int) -> None:
        self.batches.append(batch)
        if self.fail:
            raise BackendFailed(f"{self.name} broke")
        time.sleep(self.fixed_s + self.per_stream_s * batch)

    def features_step(self, audio, states):
        self._cost(len(audio))
        return super().features_step(audio, states)

    def melspectrogram(self, audio):
        self._cost(len(audio))
        return super().melspectrogram(audio)

    def close(self) -> None:
        self.closed = True


def frames(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-8000, 8000, (batch, FRAME_SAMPLES)).astype(np.int16)


def test_choose_measures_both_and_splits_batches_where_the_lines_cross():
    cpu = Timed("cpu", fixed_s=0.0, per_stream_s=1e-3)
    gpu = Timed("gpu", fixed_s=0.02, per_stream_s=0.0)
    primary, alternates, route, measured = choose(gpu, lambda: cpu)
    assert primary is gpu and alternates == (cpu,) and route is measured
    assert route.pick(1) == "cpu" and route.pick(LARGE_BATCH) == "gpu"
    assert 2 <= route.crossover() <= 60, route.describe()


def test_choose_keeps_only_the_cpu_when_the_device_is_slower_everywhere():
    cpu = Timed("cpu", fixed_s=0.0, per_stream_s=0.0)
    gpu = Timed("gpu", fixed_s=0.02, per_stream_s=1e-3)
    primary, alternates, route, measured = choose(gpu, lambda: cpu)
    assert primary is cpu and alternates == () and route is None and gpu.closed
    assert measured.describe().startswith("every batch on cpu")


def routed_pipeline(gpu_fail: bool = False) -> tuple[FeaturePipeline, Timed, Timed]:
    cpu, gpu = Timed("cpu", 0.0, 0.0), Timed("gpu", 0.0, 0.0)
    route = Route([Cost("cpu", 0.0, 1e-3), Cost("gpu", 5e-3, 0.0)])  # crossover at 5 streams
    pipeline = FeaturePipeline(gpu, fallback_factory=None, alternates=(cpu,), route=route)
    gpu.fail = gpu_fail  # after the start (silence) ran on it
    return pipeline, cpu, gpu


def test_the_pipeline_sends_each_batch_to_its_backend_with_the_cpus_numbers():
    routed, cpu, gpu = routed_pipeline()
    alone = FeaturePipeline(CpuFeatures())
    assert routed.name == "cpu+gpu" and routed.multi_step
    small, large = [routed.new_state(16) for _ in range(2)], [routed.new_state(16) for _ in range(8)]
    small_ref, large_ref = [alone.new_state(16) for _ in range(2)], [alone.new_state(16) for _ in range(8)]
    for step in range(4):
        cpu.batches.clear(), gpu.batches.clear()
        got_small = routed.step(small, frames(2, step))
        got_large = routed.step(large, frames(8, 100 + step))
        assert set(cpu.batches) == {2} and set(gpu.batches) == {8}, (cpu.batches, gpu.batches)
        # Both wrap the CPU's arithmetic: the same numbers as a pipeline of the CPU alone,
        # while a stream's state moves between backends with its batch size.
        np.testing.assert_array_equal(got_small, alone.step(small_ref, frames(2, step)))
        np.testing.assert_array_equal(got_large, alone.step(large_ref, frames(8, 100 + step)))


def test_a_failing_device_moves_every_batch_to_the_routes_cpu_and_loses_no_step():
    routed, cpu, gpu = routed_pipeline(gpu_fail=True)
    alone = FeaturePipeline(CpuFeatures())
    streams, reference = [routed.new_state(16) for _ in range(8)], [alone.new_state(16) for _ in range(8)]
    np.testing.assert_array_equal(routed.step(streams, frames(8, 1)), alone.step(reference, frames(8, 1)))
    assert gpu.closed and routed.route is None and routed.backend is cpu and routed.name == "cpu"
    gpu.batches.clear()
    routed.step(streams, frames(8, 2))
    assert gpu.batches == []


def test_engine_auto_times_an_accelerator_beside_the_cpu_and_says_what_goes_where(monkeypatch):
    # The CPU's own arithmetic plus 0.25 s a call: far slower than the CPU for one stream. (Where
    # its line crosses the CPU's, if anywhere, depends on how busy the machine was while timed.)
    gpu = Timed("gpu", fixed_s=0.25, per_stream_s=0.0)
    monkeypatch.setattr(engine_module, "select_features", lambda *a, **k: (gpu, "gpu found"))
    engine = Engine(features_backend="auto", heads_backend="cpu")
    try:
        assert "routed by measured speed: " in engine.features_reason
        assert engine.backends["features"] in ("cpu", "cpu+gpu")
        if engine.features.route is None:  # slower at every size: closed, the CPU alone
            assert engine.features.name == "cpu" and gpu.closed
        assert engine.features.route is None or engine.features.route.pick(1) == "cpu"
        gpu.batches.clear()
        engine.features.step([engine.features.new_state(16)], frames(1, 0))
        assert gpu.batches == []  # one stream never waits for the slow device
    finally:
        engine.close()
    # Asked for by name, a backend is used as asked: no timing, no route.
    monkeypatch.setattr(engine_module, "select_features", lambda *a, **k: (Timed("gpu", 0, 0), "asked"))
    asked = Engine(features_backend="opencl", heads_backend="cpu")
    assert asked.features.route is None and asked.features.name == "gpu"
    asked.close()
