"""okay_nabu's ONNX conversion equals its .tflite source, and users' .tflite heads run batched."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from reference import AUDIO_DIR, engine_scores, load_wav, padded
from wyoming_oww_rk3588 import graphs
from wyoming_oww_rk3588.backends.cpu import CpuFeatures, CpuHeads, make_session
from wyoming_oww_rk3588.engine import Engine
from wyoming_oww_rk3588.features import MEL_FRAMES_PER_STEP, WINDOW_FRAMES, scale_mel
from wyoming_oww_rk3588.models.registry import ModelRegistry

ROOT = Path(__file__).resolve().parent.parent
TFLITE = ROOT / "scripts" / "sources" / "okay_nabu_v0.1.tflite"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def litert():
    return pytest.importorskip("ai_edge_litert.interpreter")


@pytest.fixture(scope="module")
def nabu():
    return ModelRegistry().resolve("okay_nabu")


@pytest.fixture(scope="module")
def real_windows(nabu) -> np.ndarray:
    """[N, 16, 96] windows of real embeddings of every test clip, padded with silence."""
    features = CpuFeatures()
    windows = []
    for path in sorted(AUDIO_DIR.glob("*.wav")):
        audio = padded(load_wav(path.name), 2.0, 2.0)
        mel = scale_mel(features.melspectrogram(audio[None].astype(np.float32)))[0]
        starts = range(0, len(mel) - WINDOW_FRAMES + 1, MEL_FRAMES_PER_STEP)
        embeddings = features.embed_windows(np.stack([mel[s : s + WINDOW_FRAMES] for s in starts]))
        windows += [embeddings[i : i + nabu.window] for i in range(len(embeddings) - nabu.window + 1)]
    return np.stack(windows).astype(np.float32)


@pytest.fixture(scope="module")
def random_windows(nabu) -> np.ndarray:
    # Real embeddings spread about N(2, 16^2); random ones also reach high okay_nabu scores.
    return np.random.default_rng(7).normal(2, 16, (200, nabu.window, 96)).astype(np.float32)


def _tflite_rows(litert, windows: np.ndarray) -> np.ndarray:
    """The .tflite file as published: batch 1, no resizing."""
    interpreter = litert.Interpreter(model_path=str(TFLITE))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    scores = []
    for window in windows:
        interpreter.set_tensor(inp["index"], window[None])
        interpreter.invoke()
        scores.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.array(scores)


def test_committed_onnx_is_what_the_conversion_script_produces():
    pytest.importorskip("ai_edge_litert")  # the script reads the .tflite with its flatbuffer schema
    spec = importlib.util.spec_from_file_location("convert_okay_nabu", ROOT / "scripts" / "convert_okay_nabu.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    converted = script.convert(TFLITE.read_bytes()).SerializeToString()
    assert converted == (ROOT / "wyoming_oww_rk3588" / "models" / "builtin" / "okay_nabu_v0.1.onnx").read_bytes()


@pytest.mark.parametrize("kind", ["real", "random"])
def test_okay_nabu_onnx_equals_tflite(litert, nabu, kind, request):
    windows = request.getfixturevalue(f"{kind}_windows")
    ours = CpuHeads().score(nabu, windows)
    reference = _tflite_rows(litert, windows)
    assert ours.shape == reference.shape == (len(windows), 1)
    assert float(np.abs(ours - reference).max()) <= TOLERANCE


def test_okay_nabu_batched_graph_equals_per_row_runs(nabu, random_windows):
    model = onnx.load(str(nabu.path))
    batched = make_session(graphs.batched_head(model)).run(None, {"onnx::Flatten_0": random_windows})[0]
    single = make_session(model)
    rows = np.concatenate([single.run(None, {"onnx::Flatten_0": w[None]})[0] for w in random_windows])
    assert float(np.abs(batched - rows).max()) <= 1e-6


@pytest.mark.parametrize("batch", [1, 7])
def test_tflite_backend_equals_cpu_onnx(litert, nabu, real_windows, random_windows, tmp_path, batch):
    from wyoming_oww_rk3588.backends.tflite import TfliteHeads

    shutil.copy(TFLITE, tmp_path / "my_nabu.tflite")
    info = ModelRegistry(custom_dirs=[tmp_path]).resolve("my_nabu")
    heads, cpu = TfliteHeads(), CpuHeads()
    assert heads.unsupported_reason(info) is None and heads.unsupported_reason(nabu) is not None
    heads.load(info)
    for windows in (real_windows, random_windows):
        for start in range(0, len(windows) - batch + 1, batch):
            chunk = windows[start : start + batch]
            ours = heads.score(info, chunk)
            assert ours.shape == (batch, 1)
            assert float(np.abs(ours - cpu.score(nabu, chunk)).max()) <= TOLERANCE
    heads.close()


def test_registry_reads_a_custom_tflite_head(litert, tmp_path):
    shutil.copy(TFLITE, tmp_path / "my_nabu.tflite")
    registry = ModelRegistry(custom_dirs=[tmp_path])
    info = registry.resolve("My Nabu")
    assert (info.format, info.window, info.n_outputs, info.labels) == ("tflite", 16, 1, ("my_nabu",))
    assert not info.builtin and registry.resolve("ok_nabu").builtin


def test_broken_tflite_in_custom_dir_is_skipped_with_an_error(litert, tmp_path, caplog):
    (tmp_path / "broken.tflite").write_bytes(np.random.default_rng(0).bytes(4096))
    shutil.copy(TFLITE, tmp_path / "my_nabu.tflite")
    with caplog.at_level(logging.ERROR):
        registry = ModelRegistry(custom_dirs=[tmp_path])
    assert "broken" not in registry.names() and "my_nabu" in registry.names()
    assert any("broken.tflite" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_okay_nabu_stays_quiet_on_a_near_miss_clip():
    engine = Engine(features_backend="cpu", heads_backend="cpu")
    scores = engine_scores(engine, [padded(load_wav("hey_jane.wav"), 2.5, 2.0)], ["okay_nabu"])[0]
    assert max(step["okay_nabu"] for step in scores) < 0.5
    engine.close()
