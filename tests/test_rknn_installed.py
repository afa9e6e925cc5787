"""The converter from a pip-installed wheel, run outside the checkout: it finds rknn-toolkit2 and its
reference clips without the repo, and every failure is one line saying what to do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from wyoming_oww_rk3588.models.registry import load_manifest
from wyoming_oww_rk3588.rknn import toolkit
from wyoming_oww_rk3588.rknn.builtin import BUILTIN_RKNN_DIR
from wyoming_oww_rk3588.rknn.check import CLIPS_DIR

REPO = Path(__file__).resolve().parents[1]
TOOLKIT = toolkit.default_python()


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, python of a fresh venv with that wheel, a working folder outside the checkout)."""
    root = tmp_path_factory.mktemp("installed")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "wyoming_oww_rk3588", src / "wyoming_oww_rk3588",
                    ignore=shutil.ignore_patterns("__pycache__", "*.lock"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(root / "dist"), str(src)], check=True, timeout=600)
    (wheel,) = (root / "dist").glob("wyoming_oww_rk3588-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=300)
    python = root / "venv" / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies come from the test's own venv, appended after the wheel's site-packages
    # (a path line in a .pth does not run that folder's .pth files: the editable checkout stays out).
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(purelib, "deps-from-test-venv.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=600)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return wheel, python, elsewhere


def _convert(installed, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    _, python, cwd = installed
    env = {k: v for k, v in (env or os.environ).items() if k not in ("PYTHONPATH", toolkit.PYTHON_ENV)}
    return subprocess.run([str(python), "-m", "wyoming_oww_rk3588.rknn", "convert", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_wheel_ships_the_reference_clips_and_the_builtin_rknn_heads(installed):
    wheel, python, cwd = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for clip in CLIPS_DIR.glob("*.wav"):
        assert f"wyoming_oww_rk3588/rknn/clips/{clip.name}" in names
    for path in BUILTIN_RKNN_DIR.rglob("*"):  # every set's heads, cache entries and verify.npz
        if path.is_file():
            assert f"wyoming_oww_rk3588/models/builtin/rknn/{path.relative_to(BUILTIN_RKNN_DIR)}" in names
    sets = load_manifest()["rknn"]
    # per set: seven heads, and the file with all seven in one graph
    assert len([n for n in names if n.endswith(".rknn")]) == sum(len(s) - 1 for s in sets.values()) == 8 * len(sets)
    where = subprocess.run([str(python), "-c", "import wyoming_oww_rk3588; print(wyoming_oww_rk3588.__file__)"],
                           cwd=cwd, capture_output=True, text=True, check=True).stdout
    assert str(python.parents[1]) in where and str(REPO) not in where


def test_without_a_toolkit_it_says_in_one_line_how_to_get_one(installed, tmp_path):
    result = _convert(installed, "--all", "--out", str(tmp_path), "--check")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cannot import rknn.api" in result.stderr and "--toolkit-python" in result.stderr
    assert ".venv-rknn/bin/python" not in result.stderr  # no guess inside site-packages


def test_a_missing_toolkit_python_is_one_line(installed, tmp_path):
    result = _convert(installed, "alexa", "--out", str(tmp_path), "--toolkit-python", str(tmp_path / "nope"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not found at" in result.stderr


needs_toolkit = pytest.mark.skipif(TOOLKIT is None or not TOOLKIT.exists(),
                                   reason=f"rknn-toolkit2 venv not found ({TOOLKIT}): run .ci/install-rknn.sh")


@needs_toolkit
def test_the_installed_converter_converts_and_checks_on_its_own_clips(installed, tmp_path):
    result = _convert(installed, "alexa", "okay_nabu", "--out", str(tmp_path), "--check",
                      "--toolkit-python", str(TOOLKIT))
    assert result.returncode == 0, result.stderr
    assert "alexa_test / alexa_test" in result.stdout and "okay_nabu / okay_nabu" in result.stdout
    assert len(list(tmp_path.glob("*.rknn"))) == 2


@needs_toolkit
def test_check_without_clips_says_so_in_one_line(installed, tmp_path):
    empty = tmp_path / "no-clips"
    empty.mkdir()
    result = _convert(installed, "alexa", "--out", str(tmp_path), "--check", "--clips", str(empty),
                      "--toolkit-python", str(TOOLKIT))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "no .wav clips" in result.stderr and "--clips" in result.stderr


def test_the_shipped_clips_are_the_test_clips():
    shipped = {p.name: p.read_bytes() for p in CLIPS_DIR.glob("*.wav")}
    assert shipped == {p.name: p.read_bytes() for p in (REPO / "tests" / "audio").glob("*.wav")}


def test_the_current_python_is_the_toolkit_when_it_has_rknn_api(monkeypatch):
    monkeypatch.delenv(toolkit.PYTHON_ENV, raising=False)
    monkeypatch.setattr(toolkit, "current_has_toolkit", lambda: True)
    assert toolkit.default_python() == Path(sys.executable)
    monkeypatch.setenv(toolkit.PYTHON_ENV, "/opt/rknn/bin/python")  # configured wins
    assert toolkit.default_python() == Path("/opt/rknn/bin/python")
    monkeypatch.delenv(toolkit.PYTHON_ENV)
    monkeypatch.setattr(toolkit, "current_has_toolkit", lambda: False)
    assert toolkit.default_python() == REPO / ".venv-rknn" / "bin" / "python"  # from this checkout


@pytest.mark.parametrize("args, says", [
    (["alexa", "--out", "/proc/no/such/folder"], "pass --out with a folder you can write"),
    (["nosuch", "--out", "{tmp}"], "unknown wake word model 'nosuch'"),
    (["alexa", "--out", "{tmp}", "--batch", "0"], "batch must be >= 1"),
    (["alexa", "--out", "{tmp}", "--record-fixture", "{tmp}/x.npz"], "--record-fixture needs --check"),
])
def test_usage_errors_are_one_line_with_exit_2(tmp_path, capsys, args, says):
    from wyoming_oww_rk3588.rknn.__main__ import main

    assert main(["convert", *(a.format(tmp=tmp_path) for a in args)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


@needs_toolkit
def test_an_unreadable_clip_is_one_line(tmp_path, capsys):
    from wyoming_oww_rk3588.rknn.__main__ import main

    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "broken.wav").write_bytes(b"RIFF")
    assert main(["convert", "alexa", "--out", str(tmp_path), "--check", "--clips", str(clips),
                 "--toolkit-python", str(TOOLKIT)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read clip" in err and "--clips" in err, err
