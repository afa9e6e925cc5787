"""The add-on's s6 scripts, run by bash against a fake `bashio` and a fake `python3` that records
its arguments: every flag the run script can emit parses with the server's own parser and means
what the option says; the init, doctor and discovery scripts do what they claim; shellcheck."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wyoming_oww_rk3588 import discovery, doctor
from wyoming_oww_rk3588.cli import build_parser, parse_settings

REPO = Path(__file__).resolve().parent.parent
S6 = REPO / "addon" / "rootfs" / "etc" / "s6-overlay" / "s6-rc.d"
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
FAKE_BASHIO = """
# The bashio functions the add-on's scripts use. Options come from $OPTIONS_DIR/<key>, written
# the way bashio prints them: true/false, numbers as in options.json, one list item per line.
bashio::config() { cat "${OPTIONS_DIR}/$1"; }
bashio::config.true() { [[ "$(bashio::config "$1")" == "true" ]]; }
bashio::log.info() { echo "INFO: $*" >&2; }
bashio::log.warning() { echo "WARNING: $*" >&2; }
bashio::log.error() { echo "ERROR: $*" >&2; }
"""
FAKE_PYTHON = '#!/bin/bash\nprintf "%s\\0" "$@" > "$ARGV_OUT"\n'


def tool(name: str) -> str | None:
    """A linter on PATH or in this venv (.ci/install-addon-tools.sh puts them there)."""
    return shutil.which(name) or next((str(p) for p in [Path(sys.executable).parent / name] if p.exists()), None)


def run_script(tmp_path: Path, script: Path, options: dict, env: dict | None = None) -> tuple[list[str], str]:
    """(argv the script gave python3, stderr) for `options` merged over config.yaml's defaults."""
    options_dir, bin_dir = tmp_path / "options", tmp_path / "bin"
    options_dir.mkdir(exist_ok=True)
    bin_dir.mkdir(exist_ok=True)
    for key, value in {**CONFIG["options"], **options}.items():
        lines = value if isinstance(value, list) else [value]
        text = "\n".join("true" if v is True else "false" if v is False else str(v) for v in lines)
        (options_dir / key).write_text(text)
    (tmp_path / "bashio.sh").write_text(FAKE_BASHIO)
    for name, body in (("python3", FAKE_PYTHON), ("hostname", "#!/bin/bash\necho abcd1234-openwakeword-rk3588\n")):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    argv_out = tmp_path / "argv"
    argv_out.unlink(missing_ok=True)
    done = subprocess.run(
        ["bash", "-c", 'source "$1"; source "$2"', "bash", str(tmp_path / "bashio.sh"), str(script)],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OPTIONS_DIR": str(options_dir),
             "ARGV_OUT": str(argv_out), **(env or {})},
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    argv = argv_out.read_bytes().decode().split("\0")[:-1] if argv_out.exists() else []
    return argv, done.stderr


def option_cases() -> list[dict]:
    """Every choice of each list option, both ends of each range, lists of 0-2 models, both bools."""
    cases = [{}]
    for key, element in CONFIG["schema"].items():
        if isinstance(element, list):
            continue
        if match := re.match(r"list\((.+)\)", element):
            cases += [{key: choice} for choice in match[1].split("|")]
        elif match := re.match(r"(int|float)\(([\d.]+),([\d.]+)\)", element):
            cast = int if match[1] == "int" else float
            cases += [{key: cast(match[2])}, {key: cast(match[3])}]
        elif element == "bool":
            cases += [{key: True}, {key: False}]
    cases += [{"preload_models": ["okay_nabu"]}, {"preload_models": ["alexa", "hey jarvis"]},
              {"custom_model_dir": "/share/my wake words"}]
    return cases


@pytest.mark.parametrize("options", option_cases(), ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_run_script_flags_parse_with_the_servers_parser_and_mean_the_options(tmp_path, options):
    argv, _ = run_script(tmp_path, S6 / "openwakeword" / "run", options)
    assert argv[:2] == ["-m", "wyoming_oww_rk3588"]
    settings = parse_settings(argv[2:])  # exits (fails the test) on any flag the server rejects
    merged = {**CONFIG["options"], **options}
    assert settings.uri == "tcp://0.0.0.0:10400"
    assert settings.threshold == pytest.approx(merged["threshold"])
    assert settings.trigger_level == merged["trigger_level"]
    assert settings.refractory_seconds == pytest.approx(merged["refractory_seconds"])
    assert settings.features_backend == merged["features_backend"]
    assert settings.heads_backend == merged["heads_backend"]
    assert settings.npu_core_mask == merged["npu_core_mask"]
    assert settings.batch_window_ms == merged["batch_window_ms"]
    assert settings.vad_threshold == pytest.approx(merged["vad_threshold"])
    assert settings.noise_suppression is merged["noise_suppression"]
    assert settings.custom_verifier_threshold == pytest.approx(merged["custom_verifier_threshold"])
    assert settings.custom_model_dirs == (Path(merged["custom_model_dir"]),)
    assert settings.preload_models == tuple(merged["preload_models"])
    assert settings.debug is merged["debug_logging"]
    assert settings.rknn_cache_dir == Path("/share/rk3588/rknn")


def test_every_flag_written_in_the_run_script_is_one_the_server_knows():
    known = set(build_parser()._option_string_actions)
    written = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", (S6 / "openwakeword" / "run").read_text()))
    assert written and written <= known, written - known
    used = set(re.findall(r"bashio::config(?:\.true)? '([a-z_]+)'", (S6 / "openwakeword" / "run").read_text()))
    assert used == set(CONFIG["schema"])  # every option reaches the server, and only options


def test_doctor_script_logs_the_self_check_with_the_servers_npu_settings(tmp_path):
    argv, log = run_script(tmp_path, S6 / "doctor" / "run", {"npu_core_mask": "0_1"})
    assert argv[:3] == ["-m", "wyoming_oww_rk3588", "doctor"]
    args = doctor.build_parser().parse_args(argv[3:])
    assert (args.npu_core_mask, args.rknn_cache_dir, args.seconds) == ("0_1", Path("/share/rk3588/rknn"), 1.0)
    assert "Self check" in log


def test_discovery_script_announces_this_hostname_and_port(tmp_path):
    argv, _ = run_script(tmp_path, S6 / "discovery" / "run", {})
    assert argv[:2] == ["-m", "wyoming_oww_rk3588.discovery"]
    args = discovery.build_parser().parse_args(argv[2:])
    assert (args.command, args.host, args.port, args.uri) == ("announce", "abcd1234-openwakeword-rk3588", 10400,
                                                              "tcp://127.0.0.1:10400")


def init_env(tmp_path: Path) -> dict:
    dirs = {name: tmp_path / name for name in ("share/rk3588", "usr/lib", "etc/OpenCL/vendors")}
    dirs["usr/lib"].mkdir(parents=True)
    return {"RK3588_VENDOR_DIR": str(dirs["share/rk3588"]), "RK3588_LIB_DIR": str(dirs["usr/lib"]),
            "RK3588_ICD_DIR": str(dirs["etc/OpenCL/vendors"])}


def test_init_links_the_boards_libraries_from_share(tmp_path):
    env = init_env(tmp_path)
    vendor = Path(env["RK3588_VENDOR_DIR"])
    vendor.mkdir(parents=True)
    (vendor / "librknnrt.so").write_bytes(b"librknnrt version: 2.5.0")
    (vendor / "libmali-valhall-g610-g13p0-gbm.so").write_bytes(b"\x7fELF")
    models = tmp_path / "share/openwakeword"
    _, log = run_script(tmp_path, S6 / "init-addon" / "run", {"custom_model_dir": str(models)}, env)
    link = tmp_path / "usr/lib/librknnrt.so"
    assert link.is_symlink() and link.resolve() == vendor / "librknnrt.so"
    icd = tmp_path / "etc/OpenCL/vendors/mali.icd"
    assert icd.read_text().strip() == str(vendor / "libmali-valhall-g610-g13p0-gbm.so")
    assert models.is_dir()
    assert "NPU: using" in log and "GPU: OpenCL loads" in log


def test_init_without_libraries_says_the_cpu_runs_everything(tmp_path):
    env = init_env(tmp_path)
    _, log = run_script(tmp_path, S6 / "init-addon" / "run", {"custom_model_dir": str(tmp_path / "models")}, env)
    assert not (tmp_path / "usr/lib/librknnrt.so").exists()
    assert not (tmp_path / "etc/OpenCL/vendors/mali.icd").exists()
    assert Path(env["RK3588_VENDOR_DIR"]).is_dir()  # made, so the user sees where to copy them
    assert "run on the CPU" in log and "features run on the CPU" in log


def test_s6_services_are_complete_and_start_in_order():
    services = {p.name: (p / "type").read_text().strip() for p in S6.iterdir() if (p / "type").exists()}
    assert services == {"init-addon": "oneshot", "doctor": "oneshot", "openwakeword": "longrun", "discovery": "oneshot"}
    assert {p.name for p in (S6 / "user" / "contents.d").iterdir()} == set(services)
    order = {name: {d.name for d in (S6 / name / "dependencies.d").iterdir()} for name in services}
    assert order == {"init-addon": {"base"}, "doctor": {"init-addon"}, "openwakeword": {"doctor"},
                     "discovery": {"openwakeword"}}
    for name, kind in services.items():
        if kind == "oneshot":
            assert (S6 / name / "up").read_text().strip() == f"/etc/s6-overlay/s6-rc.d/{name}/run"
    scripts = [S6 / name / "run" for name in services] + [S6 / "openwakeword" / "finish"]
    for script in scripts:
        assert os.access(script, os.X_OK), f"{script} must be executable"
        assert script.read_text().startswith("#!/command/with-contenv bashio\n"), script


def test_scripts_pass_shellcheck():
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (bash .ci/install-addon-tools.sh installs it)")
    scripts = sorted(str(p) for p in S6.glob("*/run")) + [str(S6 / "openwakeword" / "finish")]
    done = subprocess.run([shellcheck, "--shell=bash", "--severity=style", *scripts], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
