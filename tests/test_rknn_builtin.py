"""The built-in heads ship pre-converted for the RK3588 NPU, one set per librknnrt release, each pinned
in the manifest with the toolkit and the source model it came from (a stale one fails here, saying
how to remake it). On a board, the set is chosen by the release the runtime itself reports, each
head is checked on load against the simulator's scores recorded for its file, and `auto` runs them
with no conversion step (through the thin RKNNLite fake: the backend, the cache lookup and the
board probe are the real code)."""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest

from fakes.rknnlite import FakeNpu, FakeRKNNLite, Recorded, fixture
from reference import engine_detections
from wyoming_oww_rk3588.backends import rknn as rknn_backend
from wyoming_oww_rk3588.backends.rknn import RknnHeads, parse_sdk_version
from wyoming_oww_rk3588.errors import BackendUnavailable
from wyoming_oww_rk3588.models.registry import BUILTIN_DIR, ModelRegistry, load_manifest, sha256_of
from wyoming_oww_rk3588.rknn import builtin, cache
from wyoming_oww_rk3588.rknn.check import NPU_TOLERANCE, default_clips_dir, padded_clip
from wyoming_oww_rk3588.rknn.toolkit import Toolkit

REPO = Path(__file__).resolve().parents[1]
REGISTRY = ModelRegistry()
HEADS = sorted(REGISTRY.models)
MANIFEST = load_manifest()
SETS = list(MANIFEST["rknn"])
REMAKE = "stale: remake it with `python scripts/convert_builtin_rknn.py --toolkit-python <that toolkit's venv>`"
# Bounds on what the package carries for the NPU, per set (all seven heads measure 3.9 MB at batch 32,
# and as much again merged into one file).
MAX_SET_BYTES = 9_000_000
MAX_VERIFY_BYTES = 150_000
#: The releases the issue asks for: airockchip's published runtime (and Frigate's), and the newest.
REQUIRED_SETS = ("2.3.2", "2.5.0")


def test_a_set_ships_for_each_runtime_release_users_get():
    assert set(REQUIRED_SETS) <= set(SETS) and SETS == sorted(SETS, key=builtin.release)
    assert list(builtin.sets()) == SETS
    assert {p.name for p in builtin.BUILTIN_RKNN_DIR.iterdir()} == set(SETS)  # no loose or stale folders


@pytest.mark.parametrize("version", SETS)
def test_every_builtin_head_has_a_pinned_rknn_at_the_runtimes_batch_in_each_set(version):
    pins = builtin.head_pins(version)
    assert sorted(pins) == sorted(MANIFEST["heads"]) == HEADS
    files = sorted(p.name for p in (builtin.BUILTIN_RKNN_DIR / version).iterdir())
    merged = MANIFEST["rknn"][version]["merged"]
    pinned = sorted(Path(pin["file"]).name for pin in [*pins.values(), merged])
    assert [f for f in files if f.endswith(".rknn")] == pinned  # nothing unpinned ships
    assert [f for f in files if not f.endswith((".rknn", ".json"))] == [builtin.VERIFY_FILE, builtin.VERIFY_MERGED_FILE]
    assert sum((BUILTIN_DIR / pin["file"]).stat().st_size for pin in [*pins.values(), merged]) < MAX_SET_BYTES
    verify = MANIFEST["rknn"][version]["verify"]
    assert sha256_of(BUILTIN_DIR / verify["file"]) == verify["sha256"]
    assert (BUILTIN_DIR / verify["file"]).stat().st_size < MAX_VERIFY_BYTES


@pytest.mark.parametrize("version", SETS)
@pytest.mark.parametrize("name", HEADS)
def test_each_shipped_rknn_is_made_from_todays_model_with_its_sets_toolkit(version, name):
    pin, model = builtin.head_pins(version)[name], REGISTRY.resolve(name)
    assert pin["source_sha256"] == model.sha256, f"{name}'s model changed, so its .rknn is {REMAKE}"
    assert pin["toolkit"] == version, f"{pin['file']} comes from another toolkit: {REMAKE}"
    assert pin["recipe"] == cache.RECIPE, f"the converter's recipe changed: {pin['file']} is {REMAKE}"
    assert (pin["platform"], pin["batch"]) == (cache.PLATFORM, cache.DEFAULT_BATCH), REMAKE
    assert Path(pin["file"]).parent == Path("rknn") / version
    assert sha256_of(BUILTIN_DIR / pin["file"]) == pin["sha256"], f"{pin['file']} is not the pinned file"
    json_path, entry = builtin.find(model, version)
    key = cache.cache_key(model.sha256, pin["toolkit"], pin["platform"], pin["batch"])
    assert json_path == cache.entry_paths(builtin.BUILTIN_RKNN_DIR / version, model, key)[0]
    assert (entry["status"], entry["rknn_sha256"], entry["window"], entry["n_outputs"], entry["toolkit"]) == (
        "ok", pin["sha256"], model.window, model.n_outputs, version)


@pytest.mark.parametrize("version", SETS)
@pytest.mark.parametrize("name", HEADS)
def test_each_shipped_rknn_passed_its_simulator_check(version, name):
    check = builtin.head_pins(version)[name]["check"]
    assert max(check["clips"], check["random"], check["zero"]) <= NPU_TOLERANCE
    expected = {"alexa": ["alexa_test"], "hey_jarvis": ["hey_jarvis"], "hey_mycroft": ["hey_mycroft_test"],
                "hey_rhasspy": ["hey_rhasspy"], "okay_nabu": ["okay_nabu"]}.get(name, [])
    assert check["fires_on"] == expected


@pytest.mark.parametrize("version", SETS)
@pytest.mark.parametrize("name", HEADS)
def test_the_on_load_check_is_the_sets_own_simulator_scores_on_real_windows(version, name):
    recorded, check = Recorded(fixture(version)), builtin.verification(version, name)
    assert recorded.meta["toolkit"] == version
    assert len(check.windows) == cache.DEFAULT_BATCH  # one NPU call at the shipped batch
    assert not check.windows[-1].any()  # the zero window the runtime pads with
    for window, expected in zip(check.windows[:-1], check.scores[:-1]):
        np.testing.assert_array_equal(recorded.answer(name, window), expected)
    # it reaches the scores where detections are decided, not only silence
    if name in ("alexa", "hey_jarvis", "hey_mycroft", "hey_rhasspy", "okay_nabu"):
        assert check.scores.max() >= 0.5


@pytest.mark.parametrize("version", SETS)
def test_each_sets_merged_file_holds_every_head_of_todays_models_and_passed_its_check(version):
    pin = MANIFEST["rknn"][version]["merged"]
    assert sorted(pin["heads"]) == HEADS and (pin["toolkit"], pin["recipe"], pin["batch"]) == (
        version, cache.RECIPE, cache.DEFAULT_BATCH), REMAKE
    assert pin["source_sha256"] == {name: REGISTRY.resolve(name).sha256 for name in HEADS}, REMAKE
    assert sha256_of(BUILTIN_DIR / pin["file"]) == pin["sha256"]
    assert max(pin["check"].values()) <= NPU_TOLERANCE
    json_path, entry = builtin.find_merged(version, [REGISTRY.resolve(name) for name in HEADS])
    assert (entry["heads"], entry["rknn_sha256"]) == (pin["heads"], pin["sha256"])
    recorded = Recorded(fixture(version, merged=True))
    for name in HEADS:
        check = builtin.merged_verification(version, name)
        for window, expected in zip(check.windows[:-1], check.scores[:-1]):
            np.testing.assert_array_equal(recorded.answer(name, window), expected)


def _toolkit_python(version: str) -> Path:
    return REPO / (".venv-rknn" if version == builtin.TOOLKIT_VERSION else f".venv-rknn-{version}") / "bin/python"


@pytest.mark.parametrize("version", SETS)
def test_each_sets_toolkit_is_one_the_install_script_installs_and_the_one_in_its_venv(version):
    script = (REPO / ".ci/install-rknn.sh").read_text()
    assert re.search(rf'toolkit_version="{re.escape(builtin.TOOLKIT_VERSION)}"', script), REMAKE
    assert 'requested="${1:-$toolkit_version}"' in script  # `.ci/install-rknn.sh 2.3.2` installs another
    python = _toolkit_python(version)
    if not python.exists():
        pytest.skip(f"rknn-toolkit2 {version} venv not found ({python}): run .ci/install-rknn.sh {version}")
    with tempfile.TemporaryDirectory() as tmp:
        assert Toolkit(python).version(Path(tmp)) == version, f"the toolkit in {python} changed: {REMAKE}"


@pytest.mark.parametrize("runtime, expected", [
    ((2, 3, 2), "2.3.2"), ((2, 5, 0), "2.5.0"), ((2, 4, 0), "2.3.2"), ((2, 6, 1), "2.5.0"),
    ((2, 3, 0), None), ((1, 6, 0), None), (None, None),
])
def test_a_runtime_gets_its_own_release_else_the_newest_set_not_newer(runtime, expected):
    assert builtin.set_for(runtime) == expected


@pytest.mark.parametrize("reported, expected", [
    ("==============================================\nRKNN VERSION:\n  API: 2.3.2 (429f97ae6b@2025-04-09T09:09:27)\n"
     "  DRV: 0.9.8\n==============================================", ("2.3.2 (429f97ae6b@2025-04-09T09:09:27)", "0.9.8")),
    (("2.5.0 (abc@2025)", "0.9.6"), ("2.5.0 (abc@2025)", "0.9.6")),
    (None, (None, None)),
])
def test_the_runtimes_own_version_report_is_parsed(reported, expected):
    assert parse_sdk_version(reported) == expected


def test_an_edited_builtin_model_never_gets_the_stale_file():
    model = dataclasses.replace(REGISTRY.resolve("alexa"), sha256="0" * 64)
    assert all(builtin.find(model, v) is None for v in SETS)
    reason = RknnHeads(cache_dir=Path(tempfile.mkdtemp()), runtime_factory=object).unsupported_reason(model)
    assert "no converted .rknn" in reason


def test_a_users_own_head_is_not_served_from_the_package():
    assert all(builtin.find(dataclasses.replace(REGISTRY.resolve("alexa"), builtin=False), v) is None for v in SETS)


def _board(tmp_path: Path, library_version: str = "2.3.2") -> Path:
    """An RK3588 with the rknpu render node and /usr/lib/librknnrt.so (its version string inside)."""
    board = tmp_path / "board"
    lib = b"\x7fELF\0librknnrt version: " + library_version.encode() + b" (0000000@2025-01-01)\0"
    for name, data in {"proc/device-tree/compatible": b"radxa,rock-5b\0rockchip,rk3588\0",
                       "usr/lib/librknnrt.so": lib, "dev/dri/renderD129": b"",
                       "sys/class/drm/renderD129/device/uevent": b"DRIVER=RKNPU\n"}.items():
        (board / name).parent.mkdir(parents=True, exist_ok=True)
        (board / name).write_bytes(data)
    return board


def _on_board(monkeypatch, tmp_path, npu: FakeNpu) -> Path:
    """Make `RknnHeads()` see an RK3588 with rknn-toolkit-lite2 (the fake) and an empty user cache;
    the board's librknnrt.so is at tmp_path/board/usr/lib/librknnrt.so."""
    board = _board(tmp_path, npu.runtime)
    api = types.ModuleType("rknnlite.api")
    api.RKNNLite = npu.RKNNLite
    monkeypatch.setitem(sys.modules, "rknnlite", types.ModuleType("rknnlite"))
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)
    probe = rknn_backend.probe_board
    monkeypatch.setattr(rknn_backend, "probe_board", lambda: probe(board, machine="aarch64"))
    user_cache = tmp_path / "cache"  # empty: nothing was ever converted here
    monkeypatch.setenv(cache.CACHE_ENV, str(user_cache))
    return user_cache


def _loaded_after_probe(npu: FakeNpu) -> list[Path]:
    """Files loaded for the heads: after the probe that asked the runtime its version."""
    first = next(i for i, (method, _, _) in enumerate(npu.calls) if method == "get_sdk_version")
    return [Path(path) for method, _, path in npu.calls[first:] if method == "load_rknn"]


@pytest.mark.parametrize("runtime", list(REQUIRED_SETS))
def test_auto_on_a_board_runs_every_builtin_head_from_its_runtimes_set_with_no_conversion(
        tmp_path, monkeypatch, runtime):
    from wyoming_oww_rk3588.engine import Engine

    npu = FakeNpu(Recorded(fixture(runtime)), runtime=runtime)
    user_cache = _on_board(monkeypatch, tmp_path, npu)
    clips = [padded_clip(p) for p in sorted(default_clips_dir().glob("*.wav"))]
    expected = engine_detections(Engine(features_backend="cpu", heads_backend="cpu"), clips, HEADS)
    engine = Engine(features_backend="cpu", heads_backend="auto")
    found = engine_detections(engine, clips, HEADS)
    assert engine.heads.names() == dict.fromkeys(HEADS, "rknn")
    assert found == expected and {label for _, label, _ in found} >= {"alexa", "okay_nabu", "hey_jarvis"}
    loaded = _loaded_after_probe(npu)
    pins = [*builtin.head_pins(runtime).values(), MANIFEST["rknn"][runtime]["merged"]]  # each head, then all in one
    assert sorted(p.name for p in loaded) == sorted(Path(pin["file"]).name for pin in pins)
    assert all(p.parent == builtin.BUILTIN_RKNN_DIR / runtime for p in loaded)
    assert not user_cache.exists() or not any(user_cache.iterdir())


@pytest.mark.parametrize("runtime, expected", [("2.4.0", "2.3.2"), ("2.6.1", "2.5.0")])
def test_a_runtime_between_releases_loads_the_newest_set_not_newer_than_itself(tmp_path, monkeypatch, runtime, expected):
    npu = FakeNpu(Recorded(fixture(expected)), runtime=runtime)
    _on_board(monkeypatch, tmp_path, npu)
    backend = RknnHeads()
    assert backend.runtime_info().head_set == expected
    backend.load(REGISTRY.resolve("okay_nabu"))
    assert _loaded_after_probe(npu)[-1].parent == builtin.BUILTIN_RKNN_DIR / expected


def test_a_runtime_older_than_every_set_leaves_the_heads_to_the_cpu_with_one_line_saying_what_to_install(
        tmp_path, monkeypatch, caplog):
    from wyoming_oww_rk3588.engine import Engine

    npu = FakeNpu(runtime="2.2.0")  # rejects every shipped file, as librknnrt does a newer model version
    _on_board(monkeypatch, tmp_path, npu)
    library = tmp_path / "board/usr/lib/librknnrt.so"  # its version string is all there is to read
    with caplog.at_level(logging.INFO):
        engine = Engine(features_backend="cpu", heads_backend="auto", rknn_options={"library": library})
        found = engine_detections(engine, [padded_clip(default_clips_dir() / "okay_nabu.wav")], ["okay_nabu"])
    assert engine.heads.names() == {"okay_nabu": "cpu"} and [label for _, label, _ in found] == ["okay_nabu"]
    (line,) = [r.getMessage() for r in caplog.records if "okay_nabu runs on cpu" in r.getMessage()]
    assert "librknnrt 2.2.0" in line and "older than every shipped head set" in line
    assert "install librknnrt 2.3.2 or 2.5.0" in line and "v2.3.2/rknpu2/runtime/Linux/librknn_api/aarch64" in line
    assert "\n" not in line and npu.count("inference") == 0


def test_a_head_that_matches_its_recorded_simulator_scores_on_load_runs_on_the_npu(tmp_path, caplog):
    npu = FakeNpu(runtime="2.5.0")
    backend = RknnHeads(cache_dir=tmp_path, runtime_factory=npu.RKNNLite)
    with caplog.at_level(logging.INFO):
        backend.load(REGISTRY.resolve("hey_jarvis"))
    (sent,) = [arg for method, _, arg in npu.calls if method == "inference"]
    np.testing.assert_array_equal(sent, builtin.verification("2.5.0", "hey_jarvis").windows)
    assert "checked on load" in caplog.text


@pytest.mark.parametrize("perturb", [0.05, float("nan")])
def test_a_head_the_chip_scores_off_its_recorded_simulator_scores_runs_on_the_cpu_with_one_line(
        tmp_path, caplog, perturb):
    from wyoming_oww_rk3588.engine import Engine

    npu = FakeNpu(runtime="2.5.0", perturb=perturb)
    engine = Engine(features_backend="cpu", heads_backend="auto",
                    rknn_options={"cache_dir": tmp_path, "runtime_factory": npu.RKNNLite})
    with caplog.at_level(logging.INFO):
        found = engine_detections(engine, [padded_clip(default_clips_dir() / "alexa_test.wav")], ["alexa"])
    assert engine.heads.names() == {"alexa": "cpu"} and [label for _, label, _ in found] == ["alexa"]
    (line,) = [r.getMessage() for r in caplog.records if "alexa runs on cpu" in r.getMessage()]
    assert "differs from rknn-toolkit2 2.5.0's simulator by" in line and f"> {NPU_TOLERANCE}" in line
    assert npu.released.count("alexa") == 2  # the probe's context and the failed head's


def test_a_users_conversion_is_used_only_where_the_runtime_can_load_it(tmp_path):
    custom = dataclasses.replace(REGISTRY.resolve("alexa"), builtin=False)
    npu = FakeNpu(Recorded(fixture("2.3.2")), runtime="2.3.2")
    npu.write_cache(tmp_path, [custom], toolkit="2.5.0")  # made with a newer toolkit than the runtime
    backend = RknnHeads(cache_dir=tmp_path, runtime_factory=npu.RKNNLite)
    reason = backend.unsupported_reason(custom)
    assert "converted with rknn-toolkit2 2.5.0, newer than librknnrt 2.3.2" in reason
    assert "rknn-toolkit2 2.3.2" in reason and "\n" not in reason
    builtin_alexa = REGISTRY.resolve("alexa")  # the built-in falls back to its shipped 2.3.2 file
    backend.load(builtin_alexa)
    assert Path(npu.calls[-3][2]).parent == builtin.BUILTIN_RKNN_DIR / "2.3.2"
    npu.write_cache(tmp_path, [custom], toolkit="2.3.2")  # their own 2.3.2 conversion: used
    assert RknnHeads(cache_dir=tmp_path, runtime_factory=npu.RKNNLite).unsupported_reason(custom) is None


def test_the_fake_rejects_a_data_format_for_the_heads_3d_input_like_lite2_did_and_the_backend_passes_none(tmp_path):
    npu = FakeNpu()
    runtime = FakeRKNNLite(npu)
    with pytest.raises(KeyError):
        runtime.inference(inputs=[np.zeros((32, 16, 96), np.float32)], data_format="nchw")
    backend = RknnHeads(cache_dir=tmp_path, runtime_factory=npu.RKNNLite)
    windows = Recorded().windows("alexa")[:3]
    np.testing.assert_array_equal(backend.score(REGISTRY.resolve("alexa"), windows), Recorded().scores("alexa")[:3])


def test_without_a_runtime_the_reason_is_the_cache_and_no_shipped_set_in_one_line(tmp_path):
    reason = RknnHeads(cache_dir=tmp_path, runtime_factory=object).unsupported_reason(REGISTRY.resolve("alexa"))
    assert "no converted .rknn" in reason and "release could not be learned" in reason and "\n" not in reason
    with pytest.raises(BackendUnavailable):
        RknnHeads(cache_dir=tmp_path, runtime_factory=object).load(REGISTRY.resolve("alexa"))


def _inference_calls(npu: FakeNpu) -> list[str]:
    return [model for method, model, _ in npu.calls if method == "inference"]


@pytest.mark.parametrize("runtime", list(REQUIRED_SETS))
@pytest.mark.parametrize("names", [HEADS, ["okay_nabu", "hey_jarvis"]])
def test_all_listened_heads_take_one_npu_call_per_tick_from_the_merged_file_with_the_cpus_detections(
        tmp_path, runtime, names, caplog):
    from wyoming_oww_rk3588.engine import Engine

    npu = FakeNpu(Recorded(fixture(runtime)), runtime=runtime)
    engine = Engine(features_backend="cpu", heads_backend="rknn",
                    rknn_options={"cache_dir": tmp_path, "runtime_factory": npu.RKNNLite})
    clips = [padded_clip(default_clips_dir() / f"{stem}.wav") for stem in ("okay_nabu", "hey_jarvis", "alexa_test")]
    expected = engine_detections(Engine(features_backend="cpu", heads_backend="cpu"), clips, names)
    with caplog.at_level(logging.INFO):
        found = engine_detections(engine, clips, names)
    assert found == expected and {label for _, label, _ in found} >= {"okay_nabu", "hey_jarvis"}
    steps = max(len(c) for c in clips) // 1280
    calls = _inference_calls(npu)
    # after each head's own check on load and the merged file's: one call per tick, for all of them
    assert calls[-steps:] == ["merged_heads"] * steps and calls.count("merged_heads") == steps + 1
    assert "in one call per tick (merged_heads." in caplog.text


def test_a_users_head_among_them_keeps_one_call_per_head(tmp_path):
    custom = dataclasses.replace(REGISTRY.resolve("alexa"), builtin=False)
    npu = FakeNpu()
    npu.write_cache(tmp_path, [custom])
    backend = RknnHeads(cache_dir=tmp_path, runtime_factory=npu.RKNNLite)
    models = [custom, REGISTRY.resolve("weather")]
    for model in models:
        backend.load(model)
    windows = [Recorded().windows(m.name)[:3] for m in models]
    backend.score_many(models, windows)  # the merged file is opened and checked once, then not used here
    npu.forget()
    scores = backend.score_many(models, windows)
    assert _inference_calls(npu) == ["alexa", "weather"]
    np.testing.assert_array_equal(scores[0], Recorded().scores("alexa")[:3])


def test_more_streams_than_the_batch_take_ceil_n_over_batch_merged_calls_in_order(tmp_path):
    npu = FakeNpu()
    backend = RknnHeads(cache_dir=tmp_path, runtime_factory=npu.RKNNLite)
    models = [REGISTRY.resolve(n) for n in ("timer", "hey_rhasspy")]
    for model in models:
        backend.load(model)
    merged = Recorded(fixture("2.5.0", merged=True))
    order = np.random.default_rng(0).permutation(len(merged.scores("timer")))[: 2 * cache.DEFAULT_BATCH + 3]
    windows = [merged.windows("timer")[order], merged.windows("hey_rhasspy")[order[:5]]]
    backend.score_many(models, windows)  # loads and checks the merged file
    npu.forget()
    scores = backend.score_many(models, windows)
    assert _inference_calls(npu) == ["merged_heads"] * 3
    np.testing.assert_array_equal(scores[0], merged.scores("timer")[order])
    np.testing.assert_array_equal(scores[1], merged.scores("hey_rhasspy")[order[:5]])


def test_a_merged_file_the_chip_scores_off_is_not_used_and_the_heads_go_one_call_each(tmp_path, caplog):
    npu = FakeNpu()
    backend = RknnHeads(cache_dir=tmp_path, runtime_factory=npu.RKNNLite)
    models = [REGISTRY.resolve(n) for n in ("alexa", "weather")]
    for model in models:
        backend.load(model)
    npu.perturb = 0.05  # from here on: the merged file's check on load sees it
    with caplog.at_level(logging.WARNING):
        backend.score_many(models, [Recorded().windows(m.name)[:2] for m in models])
    assert "Merged NPU heads of set 2.5.0 not used" in caplog.text and "differs from" in caplog.text
    assert _inference_calls(npu)[-2:] == ["alexa", "weather"]
