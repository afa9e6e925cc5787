"""Heads converted by rknn-toolkit2 2.5.0 (in .venv-rknn) score like onnxruntime in its x86 simulator.
CI runs every built-in head at the default batch (one toolkit process, about 15 s in all);
WYOMING_OWW_RKNN_FULL=1 also checks batches 1, 8 and 64."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fakes.rknnlite import FIXTURE, FIXTURES, Recorded
from wyoming_oww_rk3588 import graphs
from wyoming_oww_rk3588.backends.cpu import CpuHeads, make_session
from wyoming_oww_rk3588.backends.rknn import RknnHeads
from wyoming_oww_rk3588.models.registry import ModelRegistry
from wyoming_oww_rk3588.rknn import builtin, cache
from wyoming_oww_rk3588.rknn import check
from wyoming_oww_rk3588.rknn.__main__ import main as cli_main
from wyoming_oww_rk3588.rknn.check import NPU_TOLERANCE, check_rows, clip_features, compare, default_clips_dir
from wyoming_oww_rk3588.rknn.convert import Converter, convert_merged
from wyoming_oww_rk3588.rknn.toolkit import Toolkit, default_python

if default_python() is None or not default_python().exists():
    pytest.skip(f"rknn-toolkit2 venv not found ({default_python()}): run .ci/install-rknn.sh (CI does)",
                allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
REGISTRY = ModelRegistry()
HEADS = sorted(REGISTRY.models)
FULL = os.environ.get("WYOMING_OWW_RKNN_FULL") == "1"
#: Which clip each shipped head must fire on (the rest must stay quiet), so a match is not vacuous.
POSITIVES = {"alexa": ("alexa_test",), "hey_jarvis": ("hey_jarvis",), "hey_mycroft": ("hey_mycroft_test",),
             "hey_rhasspy": ("hey_rhasspy",), "okay_nabu": ("okay_nabu",)}
CPU = CpuHeads()
#: rknn-toolkit2 2.5.0's compiler segfaults on hey_jarvis (its verifier as Where) at batch 1 only.
KNOWN_CRASHES = {1: {"hey_jarvis": True}}


@pytest.fixture(scope="module")
def clips():
    return clip_features(default_clips_dir())


def _checked(tmp_dir: Path, clips, batch: int):
    models = [REGISTRY.resolve(name) for name in HEADS]
    rows = {m.name: check_rows(m, clips) for m in models}
    results = Converter(tmp_dir, Toolkit(), batch=batch).convert(models, {n: r.all for n, r in rows.items()})
    return {r.model.name: r for r in results}, rows, tmp_dir


@pytest.fixture(scope="module")
def converted(tmp_path_factory, clips):
    return _checked(tmp_path_factory.mktemp("rknn"), clips, cache.DEFAULT_BATCH)


def test_every_builtin_head_converts_to_an_fp16_rk3588_file(converted):
    results, _, _ = converted
    assert {name: r.action for name, r in results.items()} == dict.fromkeys(HEADS, "converted")
    for result in results.values():
        assert (result.entry["platform"], result.entry["batch"], result.entry["status"]) == ("rk3588", 32, "ok")


@pytest.mark.parametrize("name", HEADS)
def test_simulator_scores_match_onnxruntime_within_2e_2_on_real_clip_embeddings(converted, name):
    results, rows, _ = converted
    model = REGISTRY.resolve(name)
    cpu = CPU.score(model, rows[name].all)
    head = compare(model, rows[name], results[name].scores, cpu)
    assert sum(len(w) for w in rows[name].real.values()) > 100
    assert head.max_error_real <= NPU_TOLERANCE
    assert head.max_error_random <= NPU_TOLERANCE
    assert head.zero_error <= NPU_TOLERANCE


@pytest.mark.parametrize("name", HEADS)
def test_detections_on_the_clips_match_the_cpu_path(converted, name):
    results, rows, _ = converted
    model = REGISTRY.resolve(name)
    head = compare(model, rows[name], results[name].scores, CPU.score(model, rows[name].all))
    assert head.npu_detections == head.cpu_detections == POSITIVES.get(name, ())


def test_hey_jarvis_verifier_rewritten_as_where_runs_on_the_npu_on_both_branches(converted):
    results, rows, _ = converted
    model = REGISTRY.resolve("hey_jarvis")
    prepared = graphs.batched_head(onnx.load(str(model.path)))
    (where,) = [n for n in prepared.graph.node if n.op_type == "Where"]
    prepared.graph.output.append(helper.make_tensor_value_info(where.input[0], TensorProto.BOOL, None))
    session = make_session(prepared)
    windows = rows["hey_jarvis"].all
    verify = session.run([where.input[0]], {session.get_inputs()[0].name: windows})[0].ravel()
    error = np.abs(results["hey_jarvis"].scores - CPU.score(model, windows)).ravel()
    assert verify.sum() >= 5 and (~verify).sum() >= 5  # both branches seen
    assert error[verify].max() <= NPU_TOLERANCE and error[~verify].max() <= NPU_TOLERANCE


def test_the_fake_npus_recorded_scores_are_what_the_simulator_gives_today(converted, clips):
    _recorded_scores_are_the_simulators(converted, clips, FIXTURE)


def _recorded_scores_are_the_simulators(converted, clips, path):
    results, _, _ = converted
    recorded = Recorded(path)
    rerecord = f"record it again: python scripts/convert_builtin_rknn.py (it writes {path})"
    assert list(recorded.meta["clips"]) == list(clips.steps), f"the test clips changed; {rerecord}"
    assert recorded.meta["toolkit"] == results["alexa"].entry["toolkit"]
    for name in HEADS:
        assert recorded.meta["models"][name]["sha256"] == REGISTRY.resolve(name).sha256, f"{name} changed; {rerecord}"
        real = len(recorded.scores(name))
        np.testing.assert_allclose(results[name].scores[:real], recorded.scores(name), atol=1e-3)


OTHER_TOOLKIT = "2.3.2"
OTHER_PYTHON = REPO / f".venv-rknn-{OTHER_TOOLKIT}" / "bin" / "python"


@pytest.mark.skipif(not OTHER_PYTHON.exists(),
                    reason=f"rknn-toolkit2 {OTHER_TOOLKIT} venv not found: run .ci/install-rknn.sh {OTHER_TOOLKIT}")
def test_the_232_sets_recorded_scores_are_what_rknn_toolkit2_232_simulates(tmp_path, clips):
    """The shipped 2.3.2 set's fixture and on-load check come from that toolkit's simulator (about a minute)."""
    models = [REGISTRY.resolve(name) for name in HEADS]
    rows = {m.name: check_rows(m, clips) for m in models}
    results = Converter(tmp_path, Toolkit(OTHER_PYTHON), batch=cache.DEFAULT_BATCH).convert(
        models, {n: r.all for n, r in rows.items()})
    converted = ({r.model.name: r for r in results}, rows, tmp_path)
    assert all(r.entry["toolkit"] == OTHER_TOOLKIT for r in results)
    _recorded_scores_are_the_simulators(converted, clips, FIXTURES / OTHER_TOOLKIT / "simulator_scores.npz")


@pytest.mark.parametrize("release", [builtin.TOOLKIT_VERSION, OTHER_TOOLKIT])
def test_every_head_merged_into_one_file_scores_like_onnxruntime_and_like_its_recorded_fixture(tmp_path, clips, release):
    """One NPU call for every head: the merged file, built by each toolkit, in its simulator."""
    python = default_python() if release == builtin.TOOLKIT_VERSION else OTHER_PYTHON
    if not python.exists():
        pytest.skip(f"rknn-toolkit2 {release} venv not found: run .ci/install-rknn.sh {release}")
    models = [REGISTRY.resolve(name) for name in HEADS]
    rows = {m.name: check_rows(m, clips) for m in models}
    entry, scores = convert_merged(Toolkit(python), tmp_path, models, {n: r.all for n, r in rows.items()})
    assert entry["status"] == "ok" and entry["toolkit"] == release and entry["heads"] == HEADS
    recorded = Recorded(FIXTURES / release / "merged_scores.npz")
    for model in models:
        head = compare(model, rows[model.name], scores[model.name], CPU.score(model, rows[model.name].all))
        assert head.ok and head.npu_detections == POSITIVES.get(model.name, ()), model.name
        real = len(recorded.scores(model.name))
        np.testing.assert_allclose(scores[model.name][:real], recorded.scores(model.name), atol=1e-3)


def test_the_runtime_backend_accepts_every_converted_head_from_the_cache(converted):
    _, _, cache_dir = converted
    backend = RknnHeads(cache_dir=cache_dir, runtime_factory=object)  # asks the cache only
    assert {name: backend.unsupported_reason(REGISTRY.resolve(name)) for name in HEADS} == dict.fromkeys(HEADS)


@pytest.mark.skipif(not FULL, reason="other batches: set WYOMING_OWW_RKNN_FULL=1 (about 15 s more)")
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_other_batch_sizes_score_the_same_or_leave_the_head_to_the_cpu_with_a_reason(tmp_path, clips, batch):
    results, rows, _ = _checked(tmp_path, clips, batch)
    failed = {name: r.entry["reason"] for name, r in results.items() if r.action == "failed"}
    assert {name: "SIGSEGV" in reason for name, reason in failed.items()} == KNOWN_CRASHES.get(batch, {})
    backend = RknnHeads(cache_dir=tmp_path, runtime_factory=object)
    for name in HEADS:
        model = REGISTRY.resolve(name)
        if name in failed:
            assert "could not convert" in backend.unsupported_reason(model)
            continue
        head = compare(model, rows[name], results[name].scores, CPU.score(model, rows[name].all))
        assert head.ok, name


def _cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wyoming_oww_rk3588.rknn", "convert", *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def test_the_cli_converts_checks_and_then_reuses_the_cache(tmp_path):
    first = _cli("alexa", "--out", str(tmp_path), "--check")
    assert first.returncode == 0, first.stderr
    assert "alexa          converted" in first.stdout and "alexa_test / alexa_test" in first.stdout
    # the checked build's rows and simulator scores, for the board's check on load
    json_path, entry = cache.find_entry(tmp_path, REGISTRY.resolve("alexa"))
    recorded = np.load(json_path.with_name(entry["verify_file"]))
    assert recorded["windows"].shape == (cache.DEFAULT_BATCH, 16, 96) and not recorded["windows"][-1].any()
    assert recorded["scores"].max() >= 0.5  # it holds the rows where alexa fires
    again = _cli("alexa", "--out", str(tmp_path))
    assert again.returncode == 0 and "alexa          cached" in again.stdout


def test_two_processes_converting_the_same_head_build_it_once(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "wyoming_oww_rk3588.rknn", "convert", "weather",
                               "--out", str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    actions = sorted(line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("weather"))
    assert actions == ["cached", "converted"]
    assert len(list(tmp_path.glob("*.rknn"))) == 1 and not list(tmp_path.glob(".*.tmp"))


def test_a_head_the_toolkit_cannot_take_is_recorded_and_left_to_the_cpu(tmp_path):
    # rknn-toolkit2 reads .tflite only through tensorflow, which .ci/install-rknn.sh leaves out.
    custom = tmp_path / "custom"
    custom.mkdir()
    shutil.copy(REPO / "scripts/sources/okay_nabu_v0.1.tflite", custom / "my_nabu.tflite")
    result = _cli("my_nabu", "--custom-model-dir", str(custom), "--out", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    assert "failed" in result.stdout and "tensorflow" in result.stdout
    model = ModelRegistry(custom_dirs=[custom]).resolve("my_nabu")
    reason = RknnHeads(cache_dir=tmp_path / "cache", runtime_factory=object).unsupported_reason(model)
    assert "could not convert" in reason and "tensorflow" in reason


def test_a_check_over_the_tolerance_exits_non_zero(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(check, "NPU_TOLERANCE", 0.0)  # fp16 is never bit-exact: every head fails
    assert cli_main(["convert", "alexa", "--out", str(tmp_path), "--check"]) == 1
    assert "FAIL" in capsys.readouterr().out
