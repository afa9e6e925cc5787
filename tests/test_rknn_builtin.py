"""The built-in heads ship pre-converted for the RK3588 NPU: each .rknn is pinned in the manifest
with the toolkit and the source model it came from (a stale one fails here, saying how to remake
it), and `auto` on a board with the NPU runtime runs them with no conversion step (through the
thin RKNNLite fake: the backend, the cache lookup and the board probe are the real code)."""

from __future__ import annotations

import dataclasses
import re
import sys
import tempfile
import types
from pathlib import Path

import pytest

from fakes.rknnlite import FakeNpu, Recorded
from reference import engine_detections
from wyoming_oww_rk3588.backends import rknn as rknn_backend
from wyoming_oww_rk3588.backends.rknn import RknnHeads
from wyoming_oww_rk3588.models.registry import BUILTIN_DIR, ModelRegistry, load_manifest, sha256_of
from wyoming_oww_rk3588.rknn import builtin, cache
from wyoming_oww_rk3588.rknn.check import NPU_TOLERANCE, default_clips_dir, padded_clip
from wyoming_oww_rk3588.rknn.toolkit import Toolkit, default_python

REPO = Path(__file__).resolve().parents[1]
REGISTRY = ModelRegistry()
HEADS = sorted(REGISTRY.models)
MANIFEST = load_manifest()
REMAKE = "stale: remake it with `python scripts/convert_builtin_rknn.py`"
# Bounds on what the package carries for the NPU (all seven heads measure 4.2 MB at batch 32).
MAX_TOTAL_BYTES = 6_000_000


def test_every_builtin_head_has_a_pinned_rknn_at_the_runtimes_batch():
    assert sorted(MANIFEST["rknn"]) == sorted(MANIFEST["heads"]) == HEADS
    files = sorted(p.name for p in builtin.BUILTIN_RKNN_DIR.iterdir())
    pinned = sorted(Path(pin["file"]).name for pin in MANIFEST["rknn"].values())
    assert [f for f in files if f.endswith(".rknn")] == pinned  # nothing unpinned ships
    assert [f for f in files if not f.endswith((".rknn", ".json"))] == []
    assert sum((BUILTIN_DIR / pin["file"]).stat().st_size for pin in MANIFEST["rknn"].values()) < MAX_TOTAL_BYTES


@pytest.mark.parametrize("name", HEADS)
def test_each_shipped_rknn_is_made_from_todays_model_with_the_pinned_toolkit(name):
    pin, model = MANIFEST["rknn"][name], REGISTRY.resolve(name)
    assert pin["source_sha256"] == model.sha256, f"{name}'s model changed, so its .rknn is {REMAKE}"
    assert pin["toolkit"] == builtin.TOOLKIT_VERSION, f"{name}.rknn comes from another toolkit: {REMAKE}"
    assert pin["recipe"] == cache.RECIPE, f"the converter's recipe changed: {name}.rknn is {REMAKE}"
    assert (pin["platform"], pin["batch"]) == (cache.PLATFORM, cache.DEFAULT_BATCH), REMAKE
    assert sha256_of(BUILTIN_DIR / pin["file"]) == pin["sha256"], f"{pin['file']} is not the pinned file"
    json_path, entry = builtin.find(model)
    key = cache.cache_key(model.sha256, pin["toolkit"], pin["platform"], pin["batch"])
    assert json_path == cache.entry_paths(builtin.BUILTIN_RKNN_DIR, model, key)[0]
    assert (entry["status"], entry["rknn_sha256"], entry["window"], entry["n_outputs"]) == (
        "ok", pin["sha256"], model.window, model.n_outputs)


@pytest.mark.parametrize("name", HEADS)
def test_each_shipped_rknn_passed_its_simulator_check(name):
    check = MANIFEST["rknn"][name]["check"]
    assert max(check["clips"], check["random"], check["zero"]) <= NPU_TOLERANCE
    expected = {"alexa": ["alexa_test"], "hey_jarvis": ["hey_jarvis"], "hey_mycroft": ["hey_mycroft_test"],
                "hey_rhasspy": ["hey_rhasspy"], "okay_nabu": ["okay_nabu"]}.get(name, [])
    assert check["fires_on"] == expected


def test_the_pinned_toolkit_is_the_one_ci_installs_and_the_one_here():
    script = (REPO / ".ci/install-rknn.sh").read_text()
    assert re.search(rf'toolkit_version="{re.escape(builtin.TOOLKIT_VERSION)}"', script), REMAKE
    python = default_python()
    if python is None or not python.exists():
        pytest.skip(f"rknn-toolkit2 venv not found ({python}): run .ci/install-rknn.sh")
    with tempfile.TemporaryDirectory() as tmp:
        assert Toolkit(python).version(Path(tmp)) == builtin.TOOLKIT_VERSION, f"the toolkit changed: {REMAKE}"


def test_an_edited_builtin_model_never_gets_the_stale_file():
    model = dataclasses.replace(REGISTRY.resolve("alexa"), sha256="0" * 64)
    assert builtin.find(model) is None
    reason = RknnHeads(cache_dir=Path(tempfile.mkdtemp()), runtime_factory=object).unsupported_reason(model)
    assert "no converted .rknn" in reason


def test_a_users_own_head_is_not_served_from_the_package():
    assert builtin.find(dataclasses.replace(REGISTRY.resolve("alexa"), builtin=False)) is None


def test_auto_on_a_board_runs_every_builtin_head_on_the_npu_with_no_conversion(tmp_path, monkeypatch):
    from wyoming_oww_rk3588.engine import Engine

    # An RK3588 with the rknpu render node and /usr/lib/librknnrt.so, and rknn-toolkit-lite2 (the fake).
    board = tmp_path / "board"
    for name, data in {"proc/device-tree/compatible": b"radxa,rock-5b\0rockchip,rk3588\0",
                       "usr/lib/librknnrt.so": b"\x7fELF", "dev/dri/renderD129": b"",
                       "sys/class/drm/renderD129/device/uevent": b"DRIVER=RKNPU\n"}.items():
        (board / name).parent.mkdir(parents=True, exist_ok=True)
        (board / name).write_bytes(data)
    npu = FakeNpu(Recorded())
    api = types.ModuleType("rknnlite.api")
    api.RKNNLite = npu.RKNNLite
    monkeypatch.setitem(sys.modules, "rknnlite", types.ModuleType("rknnlite"))
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)
    probe = rknn_backend.probe_board
    monkeypatch.setattr(rknn_backend, "probe_board", lambda: probe(board, machine="aarch64"))
    user_cache = tmp_path / "cache"  # empty: nothing was ever converted here
    monkeypatch.setenv(cache.CACHE_ENV, str(user_cache))

    clips = [padded_clip(p) for p in sorted(default_clips_dir().glob("*.wav"))]
    expected = engine_detections(Engine(features_backend="cpu", heads_backend="cpu"), clips, HEADS)
    engine = Engine(features_backend="cpu", heads_backend="auto")
    found = engine_detections(engine, clips, HEADS)
    assert engine.heads.names() == dict.fromkeys(HEADS, "rknn")
    assert found == expected and {label for _, label, _ in found} >= {"alexa", "okay_nabu", "hey_jarvis"}
    loaded = [Path(path) for method, _, path in npu.calls if method == "load_rknn"]
    assert sorted(p.name for p in loaded) == sorted(Path(pin["file"]).name for pin in MANIFEST["rknn"].values())
    assert all(p.parent == builtin.BUILTIN_RKNN_DIR for p in loaded)
    assert not user_cache.exists() or not any(user_cache.iterdir())
