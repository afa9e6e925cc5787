"""The NPU heads backend, driven through a thin fake of RKNNLite that replays the simulator's scores:
batching, padding, order, core masks, the cache, and every error path are the real code."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from fakes.rknnlite import FakeNpu, Recorded
from reference import engine_detections
from wyoming_oww_rk3588.backends.rknn import RknnHeads, probe_board
from wyoming_oww_rk3588.errors import BackendFailed, BackendUnavailable
from wyoming_oww_rk3588.models.registry import ModelRegistry
from wyoming_oww_rk3588.rknn import cache
from wyoming_oww_rk3588.rknn.check import default_clips_dir, padded_clip

REGISTRY = ModelRegistry()
RECORDED = Recorded()
BATCH = RECORDED.batch


@pytest.fixture
def npu(tmp_path):
    fake = FakeNpu(RECORDED)
    fake.write_cache(tmp_path, [REGISTRY.resolve(name) for name in RECORDED.meta["models"]])
    return fake


def heads(npu, tmp_path, **options) -> RknnHeads:
    """The backend, once it has learned the runtime's release (one probe context, then forgotten)."""
    backend = RknnHeads(cache_dir=tmp_path, runtime_factory=npu.RKNNLite, **options)
    backend.runtime_info()
    npu.forget()
    return backend


def test_the_fixture_covers_every_builtin_head_and_more_rows_than_one_batch():
    assert set(RECORDED.meta["models"]) == set(REGISTRY.models)
    assert all(len(RECORDED.scores(name)) > 2 * BATCH for name in REGISTRY.models)


@pytest.mark.parametrize("name", sorted(REGISTRY.models))
def test_every_head_returns_the_simulator_scores_row_for_row(npu, tmp_path, name):
    model = REGISTRY.resolve(name)
    backend = heads(npu, tmp_path)
    assert backend.unsupported_reason(model) is None
    scores = backend.score(model, RECORDED.windows(name))
    assert scores.shape == (len(RECORDED.scores(name)), model.n_outputs) and scores.dtype == np.float32
    np.testing.assert_array_equal(scores, RECORDED.scores(name))


def test_a_partial_batch_is_padded_with_zero_rows_and_the_padding_is_dropped(npu, tmp_path):
    model = REGISTRY.resolve("alexa")
    windows = RECORDED.windows("alexa")[:5]
    scores = heads(npu, tmp_path).score(model, windows)
    sent = [arg for method, _, arg in npu.calls if method == "inference"][-1]
    assert sent.shape == (BATCH, model.window, 96)
    np.testing.assert_array_equal(sent[:5], windows)
    assert not sent[5:].any()
    np.testing.assert_array_equal(scores, RECORDED.scores("alexa")[:5])


def test_more_streams_than_the_batch_take_ceil_n_over_batch_calls_in_order(npu, tmp_path):
    model = REGISTRY.resolve("timer")  # 7 outputs: columns must stay with their rows
    order = np.random.default_rng(0).permutation(len(RECORDED.scores("timer")))[: 2 * BATCH + 3]
    backend = heads(npu, tmp_path)
    backend.load(model)
    before = npu.count("inference")
    scores = backend.score(model, RECORDED.windows("timer")[order])
    assert npu.count("inference") - before == 3
    np.testing.assert_array_equal(scores, RECORDED.scores("timer")[order])


def test_an_empty_tick_makes_no_npu_call(npu, tmp_path):
    model = REGISTRY.resolve("alexa")
    backend = heads(npu, tmp_path)
    backend.load(model)
    before = npu.count("inference")
    assert backend.score(model, np.zeros((0, model.window, 96), np.float32)).shape == (0, 1)
    assert npu.count("inference") == before


def test_load_runs_one_warm_up_call_of_zeros(npu, tmp_path):
    heads(npu, tmp_path).load(REGISTRY.resolve("alexa"))
    assert [m for m, _, _ in npu.calls] == ["load_rknn", "init_runtime", "inference"]
    assert not npu.calls[-1][2].any()


@pytest.mark.parametrize("perturb", [0.0, 0.05])
def test_a_users_conversion_with_recorded_check_rows_is_checked_against_them_on_load(tmp_path, perturb):
    model = custom("hey_mycroft")
    fake = FakeNpu(RECORDED, perturb=perturb)
    fake.write_cache(tmp_path, [model], verify=True)
    backend = heads(fake, tmp_path)
    if perturb:
        with pytest.raises(BackendUnavailable, match=r"differs from rknn-toolkit2 2.5.0's simulator by 0.05"):
            backend.load(model)
        assert fake.released == ["hey_mycroft"]
        return
    backend.load(model)
    (sent,) = [arg for method, _, arg in fake.calls if method == "inference"]
    np.testing.assert_array_equal(sent[: BATCH - 1], RECORDED.windows("hey_mycroft")[: BATCH - 1])


@pytest.mark.parametrize("option, constant", [
    ("auto", "NPU_CORE_AUTO"), ("0", "NPU_CORE_0"), ("1", "NPU_CORE_1"), ("2", "NPU_CORE_2"),
    ("0_1", "NPU_CORE_0_1"), ("0_1_2", "NPU_CORE_0_1_2"),
])
def test_the_core_mask_option_maps_to_the_rknnlite_constant(npu, tmp_path, option, constant):
    heads(npu, tmp_path, core_mask=option).load(REGISTRY.resolve("alexa"))
    (mask,) = [arg for method, _, arg in npu.calls if method == "init_runtime"]
    assert mask == getattr(npu.RKNNLite(), constant)


def test_an_unknown_core_mask_is_a_usage_error(npu, tmp_path):
    with pytest.raises(ValueError, match="0_1_2"):
        heads(npu, tmp_path, core_mask="3")


def custom(name: str):
    """A built-in head as if it were a user's own (no pre-converted file ships for it)."""
    return dataclasses.replace(REGISTRY.resolve(name), builtin=False)


def test_a_head_never_converted_is_declined_with_the_command_that_converts_it(npu, tmp_path):
    reason = heads(npu, tmp_path / "empty").unsupported_reason(custom("alexa"))
    assert "python -m wyoming_oww_rk3588.rknn convert" in reason and "empty" in reason


def test_in_the_add_on_a_head_never_converted_says_to_convert_on_a_pc_and_copy_it_to_share(npu, tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERVISOR_TOKEN", "x")  # the add-on has no rknn-toolkit2 to convert with
    share = tmp_path / "share" / "rk3588" / "rknn"
    reason = heads(npu, share).unsupported_reason(custom("alexa"))
    assert "convert it on a PC" in reason and f"copy the rknn folder's files to {share}" in reason


@pytest.mark.parametrize("in_addon, board, expected", [
    (True, {"lib": False}, "rknpu2/runtime/Linux/librknn_api/aarch64/librknnrt.so) to "
                           "/share/rk3588/ and restart the add-on"),
    (False, {"lib": False}, "librknnrt.so) to /usr/lib/ (docs/npu.md)"),
    (True, {"node": None}, "restart the add-on"),
    (False, {"node": None}, "docker run --device /dev/dri/renderD129"),
])
def test_the_board_probe_gives_the_add_ons_fix_in_the_add_on(tmp_path, in_addon, board, expected):
    with pytest.raises(BackendUnavailable) as err:
        probe_board(_board(tmp_path, **board), machine="aarch64", in_addon=in_addon)
    assert expected in str(err.value) and ("docker" not in str(err.value) if in_addon else True)


def test_a_head_the_toolkit_could_not_convert_is_declined_with_the_toolkit_reason(npu, tmp_path):
    model = custom("hey_jarvis")
    for path in tmp_path.glob("hey_jarvis*"):
        path.unlink()
    json_path, _ = cache.entry_paths(tmp_path, model, "f" * 64)
    cache.write_entry(json_path, {"model": model.name, "source_sha256": model.sha256, "platform": "rk3588",
                                  "toolkit": "2.5.0", "batch": BATCH, "status": "failed",
                                  "reason": "build failed: If is not supported"})
    assert "If is not supported" in heads(npu, tmp_path).unsupported_reason(model)


def test_a_corrupt_rknn_file_is_declined_and_never_loaded(npu, tmp_path):
    model = custom("alexa")
    (rknn_file,) = tmp_path.glob("alexa*.rknn")
    rknn_file.write_bytes(b"truncated")
    backend = heads(npu, tmp_path)
    assert "corrupt" in backend.unsupported_reason(model)
    with pytest.raises(BackendUnavailable, match="corrupt"):
        backend.load(model)
    assert npu.count("load_rknn") == 0


def test_the_newest_batch_is_used_unless_one_is_asked_for(npu, tmp_path):
    model = REGISTRY.resolve("alexa")
    json_path, entry = cache.find_entry(tmp_path, model)
    other = dict(entry, batch=BATCH * 2, created="9999-01-01T00:00:00Z")
    other_json = json_path.with_name(f"{model.stem}.0123456789abcdef.json")
    cache.write_entry(other_json, other, b"fake-rknn:alexa")
    assert cache.find_entry(tmp_path, model)[1]["batch"] == BATCH * 2
    assert cache.find_entry(tmp_path, model, batch=BATCH)[1]["batch"] == BATCH


@pytest.mark.parametrize("method, match", [
    ("load_rknn", "load_rknn"), ("init_runtime", "init_runtime"), ("inference", "does not run alexa"),
])
def test_start_up_failures_are_backend_unavailable_and_release_the_context(npu, tmp_path, method, match):
    backend = heads(npu, tmp_path)
    npu.fail(method, on_call=1)
    with pytest.raises(BackendUnavailable, match=match):
        backend.load(REGISTRY.resolve("alexa"))
    assert npu.released == ["alexa"]


def test_a_runtime_that_raises_at_start_up_is_backend_unavailable(npu, tmp_path):
    backend = heads(npu, tmp_path)
    npu.fail("init_runtime", result=OSError("/usr/lib/librknnrt.so: cannot open shared object file"))
    with pytest.raises(BackendUnavailable, match="librknnrt.so"):
        backend.load(REGISTRY.resolve("alexa"))


@pytest.mark.parametrize("result", [None, [None], [np.zeros(3, np.float32)], RuntimeError("NPU timeout")])
def test_a_failed_call_mid_stream_is_backend_failed_and_frees_the_head(npu, tmp_path, result):
    model = REGISTRY.resolve("alexa")
    backend = heads(npu, tmp_path)
    windows = RECORDED.windows("alexa")[:BATCH]
    backend.score(model, windows)  # warm-up is call 1, this is call 2
    npu.fail("inference", on_call=3, result=result)
    with pytest.raises(BackendFailed, match="alexa"):
        backend.score(model, windows)
    assert npu.released == ["alexa"]


def test_close_releases_every_npu_context(npu, tmp_path):
    backend = heads(npu, tmp_path)
    for name in ("alexa", "timer"):
        backend.load(REGISTRY.resolve(name))
    backend.close()
    assert sorted(npu.released) == ["alexa", "timer"]


def test_the_real_runtime_off_an_rk3588_is_unavailable_with_one_line_saying_why():
    with pytest.raises(BackendUnavailable) as err:
        RknnHeads()
    assert "\n" not in str(err.value) and ("aarch64" in str(err.value) or "rknn" in str(err.value))


def _board(root, compatible=b"radxa,rock-5b\0rockchip,rk3588\0", lib=True, node="rknpu", driver=None,
           device_tree="proc/device-tree"):
    (root / device_tree).mkdir(parents=True)
    (root / device_tree / "compatible").write_bytes(compatible)
    if lib:
        (root / "usr/lib").mkdir(parents=True)
        (root / "usr/lib/librknnrt.so").write_bytes(b"\x7fELF")
    if node == "rknpu":
        (root / "dev").mkdir()
        (root / "dev/rknpu").touch()
    elif node:
        (root / "dev/dri").mkdir(parents=True)
        (root / "dev/dri" / node).touch()
        (root / "sys/class/drm" / node / "device").mkdir(parents=True)
        (root / "sys/class/drm" / node / "device/uevent").write_text("DRIVER=RKNPU\nOF_NAME=npu\n")
    if driver:
        (root / "sys/kernel/debug/rknpu").mkdir(parents=True)
        (root / "sys/kernel/debug/rknpu/version").write_text(f"RKNPU driver: v{driver}\n")
    return root


@pytest.mark.parametrize("board, match", [
    ({"compatible": b"rockchip,rk3566\0"}, "not an RK3588"),
    ({"lib": False}, "librknnrt.so"),
    ({"node": None}, "device node"),
    ({"driver": "0.8.2"}, "0.8.2 is too old"),
])
def test_the_board_probe_names_what_is_missing(tmp_path, board, match):
    with pytest.raises(BackendUnavailable, match=match):
        probe_board(_board(tmp_path, **board), machine="aarch64")


@pytest.mark.parametrize("board", [{}, {"node": "renderD129", "driver": "0.9.8"}, {"device_tree": "device-tree"}])
def test_the_board_probe_passes_an_rk3588_with_runtime_and_npu_node(tmp_path, board):
    probe_board(_board(tmp_path, **board), machine="aarch64")


def test_the_board_probe_asks_for_the_device_tree_in_a_container(tmp_path):
    with pytest.raises(BackendUnavailable, match="device-tree"):
        probe_board(tmp_path, machine="aarch64")


def test_an_npu_failure_mid_stream_moves_the_head_to_the_cpu_and_loses_no_detection(npu, tmp_path, caplog):
    from wyoming_oww_rk3588.engine import Engine

    clips = [padded_clip(default_clips_dir() / f"{stem}.wav") for stem in RECORDED.meta["clips"]]
    names = ["alexa", "hey_mycroft"]
    expected = engine_detections(Engine(features_backend="cpu", heads_backend="cpu"), clips, names)
    assert {label for _, label, _ in expected} == {"alexa", "hey_mycroft"}

    # alexa's NPU call fails on the very step at which it fires (call 1 is load's warm-up).
    alexa_step = next(step for _, label, step in expected if label == "alexa")
    npu.fail("inference", on_call=1 + alexa_step, model="alexa")
    npu.fail("init_runtime", on_call=1, model="merged_heads")  # one call per head (the merged file: below)
    engine = Engine(features_backend="cpu", heads_backend="rknn",
                    rknn_options={"cache_dir": tmp_path, "runtime_factory": npu.RKNNLite})
    with caplog.at_level(logging.ERROR):
        found = engine_detections(engine, clips, names)
    assert found == expected
    assert engine.heads.names() == {"alexa": "cpu", "hey_mycroft": "rknn"}
    assert npu.count("inference", "hey_mycroft") == 1 + max(len(c) for c in clips) // 1280
    assert "alexa" in caplog.text


def test_a_merged_npu_call_failing_mid_stream_goes_one_call_per_head_and_loses_no_detection(npu, tmp_path, caplog):
    from wyoming_oww_rk3588.engine import Engine

    clips = [padded_clip(default_clips_dir() / f"{stem}.wav") for stem in RECORDED.meta["clips"]]
    names = ["alexa", "hey_mycroft"]
    expected = engine_detections(Engine(features_backend="cpu", heads_backend="cpu"), clips, names)
    alexa_step = next(step for _, label, step in expected if label == "alexa")
    npu.fail("inference", on_call=1 + alexa_step, model="merged_heads")  # call 1 is its check on load
    engine = Engine(features_backend="cpu", heads_backend="rknn",
                    rknn_options={"cache_dir": tmp_path, "runtime_factory": npu.RKNNLite})
    with caplog.at_level(logging.ERROR):
        found = engine_detections(engine, clips, names)
    assert found == expected
    assert engine.heads.names() == {"alexa": "rknn", "hey_mycroft": "rknn"}
    assert "Merged NPU heads it failed mid-stream" in caplog.text
    steps = max(len(c) for c in clips) // 1280
    assert npu.count("inference", "merged_heads") == 1 + alexa_step
    # from the failed tick on, one call per head: its own check on load, then each remaining tick
    assert npu.count("inference", "hey_mycroft") == 1 + steps - alexa_step + 1


def test_runtime_is_pointed_at_the_add_on_device_tree_when_proc_hides_it(tmp_path, monkeypatch):
    import sys
    import types

    from wyoming_oww_rk3588.backends import rknn as rknn_backend

    runtime = types.ModuleType("rknnlite.api.rknn_runtime")
    runtime.DEVICE_COMPATIBLE_NODE = "/proc/device-tree/compatible"
    api = types.ModuleType("rknnlite.api")
    api.rknn_runtime = runtime
    monkeypatch.setitem(sys.modules, "rknnlite", types.ModuleType("rknnlite"))
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)
    monkeypatch.setitem(sys.modules, "rknnlite.api.rknn_runtime", runtime)
    (tmp_path / "device-tree").mkdir()
    (tmp_path / "device-tree" / "compatible").write_bytes(b"rockchip,rk3588\0")
    rknn_backend._point_runtime_at_mapped_device_tree(tmp_path)
    assert runtime.DEVICE_COMPATIBLE_NODE == str(tmp_path / "device-tree" / "compatible")
    # where /proc shows it, the runtime is left alone
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "device-tree" / "compatible").write_bytes(b"rockchip,rk3588\0")
    runtime.DEVICE_COMPATIBLE_NODE = "/proc/device-tree/compatible"
    rknn_backend._point_runtime_at_mapped_device_tree(tmp_path)
    assert runtime.DEVICE_COMPATIBLE_NODE == "/proc/device-tree/compatible"
