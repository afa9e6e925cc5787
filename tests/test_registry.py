"""Model registry: names to files, never a client name to a path."""

from __future__ import annotations

import shutil

import pytest

from wyoming_oww_rk3588.errors import ModelError
from wyoming_oww_rk3588.models.registry import BUILTIN_DIR, ModelRegistry, load_manifest, sha256_of


def test_every_builtin_file_matches_its_pinned_sha256():
    manifest = load_manifest()
    for section in ("features", "heads"):
        for entry in manifest[section].values():
            assert sha256_of(BUILTIN_DIR / entry["file"]) == entry["sha256"], entry["file"]


def test_builtin_heads_with_windows_and_labels():
    registry = ModelRegistry()
    windows = {name: info.window for name, info in registry.models.items()}
    assert windows == {"alexa": 16, "hey_jarvis": 16, "hey_mycroft": 16, "hey_rhasspy": 16, "okay_nabu": 16,
                       "timer": 34, "weather": 22}
    assert registry.resolve("timer").labels[0] == "1_minute_timer"
    assert registry.resolve("okay_nabu").labels == ("okay_nabu",)


@pytest.mark.parametrize("name", ["alexa", "ALEXA", "alexa_v0.1", " Alexa ", "ok_nabu", "okay-nabu", "Okay Nabu"])
def test_names_resolve_case_insensitively_with_versions_and_aliases(name):
    assert ModelRegistry().resolve(name).name in ("alexa", "okay_nabu")


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..", "alexa/../../x", "", "models/alexa"])
def test_path_like_names_never_resolve(name):
    with pytest.raises(ModelError):
        ModelRegistry().resolve(name)


def test_custom_directory_adds_heads_and_skips_broken_files(tmp_path, caplog):
    shutil.copy(BUILTIN_DIR / "alexa_v0.1.onnx", tmp_path / "my_word_v2.0.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    (tmp_path / "notes.txt").write_text("ignored")
    registry = ModelRegistry(custom_dirs=[tmp_path])
    info = registry.resolve("my_word")
    assert info.version == "2.0" and info.window == 16 and not info.builtin
    assert "broken" not in registry.models
    assert "broken.onnx" in caplog.text


def test_a_custom_model_never_shadows_a_builtin(tmp_path):
    shutil.copy(BUILTIN_DIR / "weather_v0.1.onnx", tmp_path / "alexa.onnx")
    assert ModelRegistry(custom_dirs=[tmp_path]).resolve("alexa").builtin


def test_missing_custom_directory_is_a_warning_not_a_crash(tmp_path, caplog):
    registry = ModelRegistry(custom_dirs=[tmp_path / "nope"])
    assert "alexa" in registry.models and "does not exist" in caplog.text
