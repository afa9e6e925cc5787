"""Choosing OpenCL, refusing it with a reason, and leaving it without losing a frame.

On PoCL (CI) there is an OpenCL device but no GPU: `auto` must refuse it and say why, while an
explicit `opencl` runs on it. Device failures are simulated at the PyOpenCL boundary.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from reference import load_wav, padded
from wyoming_oww_rk3588.backends import opencl as opencl_module
from wyoming_oww_rk3588.backends.opencl import OpenClFeatures, probe
from wyoming_oww_rk3588.backends.select import select_features
from wyoming_oww_rk3588.errors import BackendFailed, BackendUnavailable


def _has_gpu() -> bool:
    import pyopencl as cl

    return any(d.type & cl.device_type.GPU for p in cl.get_platforms() for d in p.get_devices())


needs_no_gpu = pytest.mark.skipif(_has_gpu(), reason="an OpenCL GPU is present: auto would rightly take it")


@pytest.fixture()
def backend():
    backend = OpenClFeatures(device="any")
    yield backend
    backend.close()


@needs_no_gpu
def test_auto_refuses_an_opencl_without_a_gpu_and_says_what_to_check():
    backend, reason = probe("gpu")
    assert backend is None
    assert "no OpenCL GPU device" in reason and "/dev/mali0" in reason


@needs_no_gpu
def test_auto_selection_uses_the_cpu_with_one_log_line_saying_why(caplog):
    with caplog.at_level(logging.INFO):
        backend, why = select_features("auto")
    assert backend.name == "cpu" and "no OpenCL GPU device" in why
    lines = [r for r in caplog.records if "OpenCL" in r.getMessage()]
    assert len(lines) == 1 and "/dev/mali0" in lines[0].getMessage()


def test_an_explicit_opencl_choice_runs_on_any_device_after_its_self_test():
    backend, why = probe("any")
    assert backend is not None and backend.name == "opencl"
    assert "self test max error" in why
    selected, _ = select_features("opencl")
    assert selected.name == "opencl"


def test_a_failing_self_test_refuses_the_device_with_the_max_error(monkeypatch):
    real = OpenClFeatures.embed_step

    def off_by_one(self, mel, states):
        embeddings, new_states = real(self, mel, states)
        return embeddings + np.float32(1.0), new_states

    monkeypatch.setattr(OpenClFeatures, "embed_step", off_by_one)
    backend, why = probe("any")
    assert backend is None
    assert "self test failed" in why and "max error 1" in why


def test_a_missing_pyopencl_says_how_to_install_it_and_opencl_falls_back_to_cpu(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pyopencl", None)  # `import pyopencl` now raises ImportError
    with pytest.raises(BackendUnavailable, match=r"pip install 'wyoming-oww-rk3588\[opencl\]'"):
        OpenClFeatures()
    assert probe("any")[0] is None
    with caplog.at_level(logging.WARNING):
        backend, why = select_features("opencl")
    assert backend.name == "cpu" and "PyOpenCL is not installed" in why
    assert any("falling back to CPU" in r.getMessage() for r in caplog.records)


def test_no_opencl_platform_points_at_the_mali_icd(monkeypatch):
    import pyopencl as cl

    monkeypatch.setattr(cl, "get_platforms", lambda: [])
    backend, why = probe("any")
    assert backend is None and "/etc/OpenCL/vendors" in why


def test_no_icd_registered_names_the_loaders_error_and_the_mali_icd(tmp_path):
    """The real ICD loader with an empty vendors folder (as on a board without libmali's ICD):
    the reason names the loader's error in words, never a repr of pyopencl internals."""
    import os
    import subprocess

    code = "from wyoming_oww_rk3588.backends.opencl import probe; print(probe('any')[1])"
    env = {**os.environ, "OCL_ICD_VENDORS": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    why = out.stdout.strip()
    assert "PLATFORM_NOT_FOUND_KHR" in why and "/etc/OpenCL/vendors" in why, (why, out.stderr[-500:])
    assert "object at 0x" not in why and "nanobind" not in why


def test_pyopencl_ctx_naming_a_non_gpu_is_refused_by_auto_and_taken_by_opencl(monkeypatch):
    import pyopencl as cl

    cpu_devices = [(p, d) for p, plat in enumerate(cl.get_platforms()) for d, dev in enumerate(plat.get_devices())
                   if not dev.type & cl.device_type.GPU]
    if not cpu_devices:
        pytest.skip("no non-GPU OpenCL device here to point PYOPENCL_CTX at")
    monkeypatch.setenv("PYOPENCL_CTX", "%d:%d" % cpu_devices[0])
    backend, why = probe("gpu")
    assert backend is None and "not a GPU" in why
    assert probe("any")[0] is not None


def test_a_kernel_failure_raises_backend_failed_and_leaves_the_states_untouched(backend, monkeypatch):
    import pyopencl as cl

    rng = np.random.default_rng(0)
    states = [rng.normal(0, 1, (3, *s)).astype(np.float32) for s in backend.layout.state_shapes]
    before = [s.copy() for s in states]
    mel = rng.uniform(0, 4, (3, 8, 32)).astype(np.float32)
    _, after = backend.embed_step(mel, states)  # a working step does not touch its inputs either
    assert all(np.array_equal(a, b) for a, b in zip(states, before))

    def fail(*args, **kwargs):
        raise cl.RuntimeError("clEnqueueNDRangeKernel failed: OUT_OF_RESOURCES")

    monkeypatch.setattr(backend, "_launch", fail)
    with pytest.raises(BackendFailed, match="OUT_OF_RESOURCES"):
        backend.embed_step(mel, states)
    with pytest.raises(BackendFailed):
        backend.melspectrogram(np.zeros((3, 1760), np.float32))
    with pytest.raises(BackendFailed):
        backend.embed_windows(np.zeros((2, 76, 32), np.float32))
    assert all(np.array_equal(a, b) for a, b in zip(states, before))


def test_non_finite_results_raise_backend_failed_instead_of_returning_garbage(backend, monkeypatch):
    states = [np.zeros((1, *s), np.float32) for s in backend.layout.state_shapes]
    mel = np.zeros((1, 8, 32), np.float32)
    real = backend._run
    monkeypatch.setattr(backend, "_run", lambda *args: np.full_like(real(*args), np.nan))  # a device writing NaN
    with pytest.raises(BackendFailed, match="non-finite"):
        backend.embed_step(mel, states)
    with pytest.raises(BackendFailed, match="non-finite"):
        backend.embed_windows(np.zeros((2, 76, 32), np.float32))


def _index(streams, stream) -> int:
    return next(i for i, s in enumerate(streams) if s is stream)


def _run_engine(engine, audios, fail_at=None, monkeypatch=None):
    """Feed `audios` in 80 ms chunks through `engine`; optionally break its OpenCL kernels
    before step `fail_at`. Returns (detections as (stream, label, step), scores per stream)."""
    import pyopencl as cl

    models = [("alexa", engine.registry.resolve("alexa"))]
    streams = [engine.open_stream(models) for _ in audios]
    detections, scores = [], [[] for _ in audios]
    for step in range(len(audios[0]) // 1280):
        if step == fail_at:
            def fail(*args, **kwargs):
                raise cl.RuntimeError("clEnqueueNDRangeKernel failed: OUT_OF_RESOURCES")

            monkeypatch.setattr(engine.features.backend, "_launch", fail)
        for stream, samples in zip(streams, audios):
            stream.add_samples(samples[step * 1280 : (step + 1) * 1280])
        detections += [(_index(streams, s), d.label, d.step) for s, d in engine.process(streams)]
        for i, stream in enumerate(streams):
            scores[i].append(stream.scores["alexa"])
    assert all(stream.features.steps == len(audios[0]) // 1280 for stream in streams), "a frame was dropped"
    return detections, np.array(scores)


def test_a_kernel_failure_mid_stream_moves_streams_to_cpu_and_no_detection_is_lost(monkeypatch):
    from wyoming_oww_rk3588.engine import Engine

    audio = padded(load_wav("alexa_test.wav"), 2.5, 1.0)
    audios = [audio, (audio * 0.3).astype(np.int16), np.zeros_like(audio)]
    expected, expected_scores = _run_engine(Engine(features_backend="cpu", heads_backend="cpu"), audios)
    engine = Engine(features_backend="opencl", heads_backend="cpu")
    assert engine.backends["features"] == "opencl"
    # The wake word is at ~2.5 s (step ~31): the device dies before it, mid-stream.
    detections, scores = _run_engine(engine, audios, fail_at=20, monkeypatch=monkeypatch)
    assert engine.backends["features"] == "cpu"
    assert expected and all(step > 20 for _, _, step in expected), "the test needs detections after the failure"
    assert detections == expected
    assert np.abs(scores - expected_scores).max() <= 1e-3


def test_close_is_safe_to_call_twice(backend):
    backend.close()
    backend.close()
    assert opencl_module.TOLERANCE["fp32"] == 1e-3


def test_the_fused_features_step_raises_backend_failed_on_device_errors_and_non_finite_mel(backend, monkeypatch):
    import pyopencl as cl

    states = [np.zeros((2, *s), np.float32) for s in backend.layout.state_shapes]
    real = opencl_module.run_features

    def nan_mel(*args):  # a device writing NaN into the mel it keeps (relu layers could hide it)
        flat = real(*args)
        args[-1][:] = np.nan
        return flat

    monkeypatch.setattr(opencl_module, "run_features", nan_mel)
    with pytest.raises(BackendFailed, match="non-finite"):
        backend.features_step(np.zeros((2, 1760), np.float32), states)
    monkeypatch.setattr(opencl_module, "run_features", real)

    def fail(*args, **kwargs):
        raise cl.RuntimeError("clEnqueueNDRangeKernel failed: OUT_OF_RESOURCES")

    monkeypatch.setattr(backend, "_launch", fail)
    with pytest.raises(BackendFailed, match="OUT_OF_RESOURCES"):
        backend.features_step(np.zeros((2, 1760), np.float32), states)
