"""The doctor: run for real here (no GPU, no NPU: reported missing with fixes, exit 0), and on a
fake /dev, /sys, /proc and /usr/lib tree that looks like an RK3588 board or the add-on's container."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from wyoming_oww_rk3588 import doctor

RUNTIME_VERSION = "2.5.0 (fake0000@2025-06-01T00:00:00)"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = doctor.main(list(argv), stream=out)
    return code, out.getvalue()


def lines(text: str, topic: str) -> list[str]:
    return [line for line in text.splitlines() if line[8:].startswith(f"{topic}:")]


def make_board(root: Path, *, proc_dt: bool = True, driver: str = "0.9.8", runtime: str = RUNTIME_VERSION) -> Path:
    """A fake RK3588 board: Mali kbase node, rknpu render node, device tree, runtime library, ICD."""
    files = {
        "dev/mali0": "",
        "sys/class/misc/mali0/device/gpuinfo": "Mali-G610 4 cores r0p0 0xA867\n",
        "dev/dri/renderD128": "",
        "sys/class/drm/renderD128/device/uevent": "DRIVER=rockchip-drm\nOF_NAME=display-subsystem\n",
        "dev/dri/renderD129": "",
        "sys/class/drm/renderD129/device/uevent": "DRIVER=RKNPU\nOF_NAME=npu\n",
        "sys/kernel/debug/rknpu/version": f"RKNPU driver: v{driver}\n",
        "etc/OpenCL/vendors/mali.icd": "/usr/lib/aarch64-linux-gnu/libmali.so.1\n",
        "usr/lib/aarch64-linux-gnu/libmali.so.1": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    compatible = root / ("proc/device-tree/compatible" if proc_dt else "device-tree/compatible")
    compatible.parent.mkdir(parents=True, exist_ok=True)
    compatible.write_bytes(b"radxa,rock-5b\0rockchip,rk3588\0")
    (root / "usr/lib/librknnrt.so").write_bytes(b"\x7fELF" + b"\0" * 64 + f"librknnrt version: {runtime}\0".encode()
                                               + b"\0" * 64)
    return root


def test_real_run_here_reports_missing_gpu_and_npu_with_fixes_and_exits_0(monkeypatch):
    monkeypatch.delenv("SUPERVISOR_TOKEN", raising=False)
    code, text = run("--seconds", "0.2")
    assert code == 0, text
    for topic in ("Mali node", "NPU node", "librknnrt", "Mali GPU"):
        found = lines(text, topic)
        assert found and all(line.startswith("MISSING") and "fix:" in line for line in found), (topic, found)
    assert "docker run --device /dev/mali0" in text  # standalone: Docker's flag, not the add-on's
    for topic in ("features cpu", "heads cpu"):
        (line,) = lines(text, topic)
        assert line.startswith("OK") and "ms per 80 ms step" in line and "real-time factor" in line
    assert lines(text, "features")[0].startswith("INFO") and "auto uses cpu" in text
    assert "the CPU pipeline works" in text
    for line in text.splitlines():  # every line is a section or says OK / INFO / WARN / MISSING
        assert line.startswith(("== ", "OK ", "INFO ", "WARN ", "MISSING ")), line


def test_no_timing_with_zero_seconds():
    code, text = run("--seconds", "0")
    assert code == 0 and "Timing" not in text and not lines(text, "features cpu")


def test_fake_board_shows_npu_and_mali_present(tmp_path):
    root = make_board(tmp_path)
    report = doctor.Report(io.StringIO())
    doctor.check_npu(report, root, "aarch64", in_addon=False)
    doctor.check_gpu_nodes(report, root, in_addon=False)
    doctor.check_opencl(report, root, in_addon=False)
    got = {(status, topic): text for status, topic, text in report.lines}
    assert got[("OK", "SoC")] == "radxa,rock-5b rockchip,rk3588 (from /proc/device-tree/compatible)"
    assert got[("OK", "NPU node")] == "/dev/dri/renderD129 opens"
    assert got[("OK", "rknpu driver")] == "0.9.8"
    assert got[("OK", "librknnrt")] == f"/usr/lib/librknnrt.so {RUNTIME_VERSION}"
    assert ("OK", "NPU runtime") in got
    assert got[("OK", "Mali node")] == "/dev/mali0 opens (Mali-G610 4 cores r0p0 0xA867)"
    assert got[("OK", "OpenCL ICD")] == "mali.icd -> /usr/lib/aarch64-linux-gnu/libmali.so.1"
    drm = [text for status, topic, text in report.lines if topic == "DRM node"]
    assert drm == ["/dev/dri/renderD128: rockchip-drm, opens", "/dev/dri/renderD129: RKNPU, opens"]
    assert not [line for line in report.lines if line[0] == "MISSING" and line[1] != "Mali GPU"]


def test_addon_container_reads_the_soc_from_home_assistants_device_tree_mapping(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERVISOR_TOKEN", "x")
    root = make_board(tmp_path, proc_dt=False)
    (root / "usr/lib/librknnrt.so").unlink()
    code, text = run("--root", str(root), "--seconds", "0")
    assert code == 0
    assert lines(text, "SoC")[0] == "OK      SoC: radxa,rock-5b rockchip,rk3588 (from /device-tree/compatible)"
    assert "copy librknnrt.so to /share/rk3588/" in lines(text, "librknnrt")[0]


def test_old_driver_and_mismatched_runtime_say_what_to_update(tmp_path, monkeypatch):
    root = make_board(tmp_path, driver="0.8.2", runtime="2.3.2 (abc@2025)")
    monkeypatch.setattr(doctor, "_package_version", lambda dist: "2.5.0" if dist == "rknn-toolkit-lite2" else None)
    report = doctor.Report(io.StringIO())
    doctor.check_npu(report, root, "aarch64", in_addon=False)
    got = {topic: (status, text) for status, topic, text in report.lines}
    assert got["rknpu driver"] == ("MISSING", "0.8.2 is older than 0.8.8; fix: update the board's kernel")
    assert got["librknnrt"][0] == "WARN" and "2.3.2" in got["librknnrt"][1] and "2.5.0" in got["librknnrt"][1]
    assert got["NPU runtime"][0] == "MISSING" and "too old" in got["NPU runtime"][1]


def test_a_node_that_exists_but_does_not_open_asks_for_passthrough(tmp_path):
    root = make_board(tmp_path)
    for node in ("dev/mali0", "dev/dri/renderD129"):  # a directory stands in for a node the cgroup refuses
        (root / node).unlink()
        (root / node).mkdir()
    report = doctor.Report(io.StringIO())
    doctor.check_gpu_nodes(report, root, in_addon=False)
    doctor.check_npu(report, root, "aarch64", in_addon=False)
    got = {topic: (status, text) for status, topic, text in report.lines}
    assert got["Mali node"][0] == "MISSING" and "does not open" in got["Mali node"][1]
    assert "docker run --device /dev/mali0" in got["Mali node"][1]
    assert got["NPU node"][0] == "MISSING" and "does not open (Is a directory)" in got["NPU node"][1]
    assert "docker run --device /dev/dri/renderD129" in got["NPU node"][1]


def test_npu_render_node_without_sysfs_is_found_by_its_usual_name(tmp_path):
    (tmp_path / "dev/dri").mkdir(parents=True)
    (tmp_path / "dev/dri/renderD129").write_text("")
    assert doctor._npu_nodes(tmp_path) == [tmp_path / "dev/dri/renderD129"]


def test_a_check_that_crashes_becomes_one_warn_line(monkeypatch):
    def broken(*args):
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(doctor, "check_opencl", broken)
    code, text = run("--seconds", "0")
    assert code == 0
    assert "WARN    opencl: check failed unexpectedly (RuntimeError: driver exploded)" in text


def test_a_failing_cpu_floor_exits_1(monkeypatch):
    from wyoming_oww_rk3588.backends import cpu

    def broken(self, model, windows):
        raise RuntimeError("onnxruntime broke")

    monkeypatch.setattr(cpu.CpuHeads, "score", broken)
    code, text = run("--seconds", "0.1")
    assert code == 1
    assert lines(text, "heads cpu")[0].startswith("MISSING") and "the CPU pipeline FAILED" in text


def test_rknnrt_version_is_read_from_the_library_bytes(tmp_path):
    library = tmp_path / "librknnrt.so"
    library.write_bytes(b"junk\0librknnrt version: 2.3.2 (429f97ae6b@2025-04-09T09:09:27)\0more")
    assert doctor.rknnrt_version(library) == "2.3.2 (429f97ae6b@2025-04-09T09:09:27)"
    library.write_bytes(b"no version here")
    assert doctor.rknnrt_version(library) is None


@pytest.mark.timeout(120)
def test_python_m_doctor_dispatches_to_the_doctor():
    done = subprocess.run([sys.executable, "-m", "wyoming_oww_rk3588", "doctor", "--seconds", "0.1"],
                          capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr
    assert "== NPU (RKNN)" in done.stdout and "OK      features cpu:" in done.stdout


def test_drm_version_ioctl_number_is_linuxs_for_64_bit():
    # DRM_IOCTL_VERSION as libdrm defines it on 64-bit Linux: _IOWR('d', 0x00, struct drm_version).
    if sys.maxsize > 2**32:
        assert doctor._DRM_IOCTL_VERSION == 0xC0406400


def test_drm_driver_of_a_node_that_is_no_drm_device_falls_back_to_sysfs(tmp_path):
    (tmp_path / "sys/class/drm/null/device").mkdir(parents=True)
    (tmp_path / "sys/class/drm/null/device/uevent").write_text("DRIVER=panthor\n")
    assert doctor.drm_driver(Path("/dev/null"), tmp_path) == ("panthor", "")  # the ioctl answers ENOTTY


def _broken_board(root: Path) -> Path:
    """A board where every NPU and GPU piece needs the user: no librknnrt.so, nodes that do not
    open, no libmali ICD, no device tree where containers look."""
    make_board(root, proc_dt=False)
    (root / "usr/lib/librknnrt.so").unlink()
    (root / "etc/OpenCL/vendors/mali.icd").unlink()
    (root / "device-tree/compatible").unlink()
    for node in ("dev/mali0", "dev/dri/renderD129"):
        (root / node).unlink()
        (root / node).mkdir()  # a directory stands in for a node the cgroup refuses
    return root


def _fix_lines(root: Path, in_addon: bool) -> dict[str, str]:
    report = doctor.Report(io.StringIO())
    doctor.check_python(report, "aarch64", in_addon)
    doctor.check_gpu_nodes(report, root, in_addon)
    doctor.check_opencl(report, root, in_addon)
    doctor.check_npu(report, root, "aarch64", in_addon)
    return {f"{topic}: {text}": status for status, topic, text in report.lines if status in ("MISSING", "WARN")}


def test_in_the_add_on_every_fix_says_where_to_put_files_and_never_docker_flags(tmp_path):
    found = _fix_lines(_broken_board(tmp_path), in_addon=True)
    text = "\n".join(found)
    assert "docker" not in text and "apt-get" not in text and "pip install" not in text, text
    assert "copy librknnrt.so to /share/rk3588/ and restart the add-on" in text
    assert "libmali" in text and "to /share/rk3588/ and restart the add-on" in text
    assert "the add-on maps it at /device-tree" in text
    assert "NPU runtime: cannot read" in text  # the backend's own probe speaks the add-on's language too
    mali = next(line for line in found if line.startswith("Mali node"))
    assert "restart the add-on" in mali


def test_on_a_plain_host_the_fixes_are_the_hosts_and_dockers(tmp_path):
    found = _fix_lines(_broken_board(tmp_path), in_addon=False)
    text = "\n".join(found)
    assert "/share/rk3588" not in text and "add-on" not in text.replace("(add-on: devicetree: true)", ""), text
    assert "copy rknn-toolkit2's rknpu2/runtime/Linux/librknn_api/aarch64/librknnrt.so to /usr/lib/" in text
    assert "docker run --device /dev/mali0" in text and "docker run --device /dev/dri/renderD129" in text
    assert "/etc/OpenCL/vendors/mali.icd" in text


@pytest.mark.parametrize("environ, expected", [
    ({"SUPERVISOR_TOKEN": "abc"}, True), ({"HASSIO_TOKEN": "abc"}, True), ({}, False),
    ({"SUPERVISOR_TOKEN": ""}, False),
])
def test_the_add_on_is_recognised_by_the_token_the_supervisor_gives_it(environ, expected):
    from wyoming_oww_rk3588 import addon

    assert addon.in_addon(environ) is expected


def test_the_doctor_run_in_the_add_on_gives_no_docker_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERVISOR_TOKEN", "x")
    code, text = run("--root", str(_broken_board(tmp_path)), "--seconds", "0", "--rknn-cache-dir", str(tmp_path))
    assert code == 0 and "docker" not in text and "apt-get" not in text, text
