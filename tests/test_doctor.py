"""The doctor: run for real here (no GPU, no NPU: reported missing with fixes, exit 0), and on a
fake /dev, /sys, /proc and /usr/lib tree that looks like an RK3588 board or the add-on's container."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from wyoming_oww_rk3588 import doctor
from wyoming_oww_rk3588.backends import opencl_device

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
    for topic in ("GPU stack", "NPU node", "librknnrt", "Mali GPU"):
        found = lines(text, topic)
        assert found and all(line.startswith("MISSING") and "fix:" in line for line in found), (topic, found)
    assert "docker run --device /dev/mali0" in text  # standalone: Docker's flag, not the add-on's
    for topic in ("features cpu", "heads cpu"):
        (line,) = lines(text, topic)
        assert line.startswith("OK") and "ms per 80 ms step" in line and "real-time factor" in line
    assert lines(text, "features")[0].startswith("INFO") and "auto uses cpu" in text
    # Each features backend at 1 and 64 streams, and where auto sends each batch size from that.
    (line,) = lines(text, "features cpu by batch")
    assert "ms a step at 1 stream" in line and "at 64" in line
    (line,) = lines(text, "features auto")
    assert line.startswith("INFO") and "every batch on cpu" in line  # no GPU here: PoCL is never weighed
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
        assert opencl_device._DRM_IOCTL_VERSION == 0xC0406400


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


# -- the two GPU stacks: kbase + libmali (vendor kernel), Panthor + Mesa rusticl (mainline kernel) --

def make_files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def make_mainline_board(root: Path, *, icd: bool = True, passed: bool = True) -> Path:
    """A fake mainline RK3588: Panthor's render node (in sysfs always, in /dev/dri when passed in),
    and Debian trixie's mesa-opencl-icd (rusticl and Clover ICDs)."""
    make_files(root, {"sys/class/drm/renderD128/device/uevent": "DRIVER=panthor\nOF_NAME=gpu\n",
                      "sys/class/drm/card0/device/uevent": "DRIVER=rockchip-drm\n"})
    if passed:
        make_files(root, {"dev/dri/renderD128": ""})
    if icd:
        make_files(root, {"etc/OpenCL/vendors/rusticl.icd": "libRusticlOpenCL.so.1\n",
                          "etc/OpenCL/vendors/mesa.icd": "libMesaOpenCL.so.1\n"})
    return root


def gpu_lines(root: Path, environ: dict | None = None, in_addon: bool = False) -> dict[str, tuple[str, str]]:
    """topic -> (status, text) of the GPU checks; the OpenCL device lines are this machine's own."""
    report = doctor.Report(io.StringIO())
    doctor.check_gpu_nodes(report, root, in_addon)
    doctor.check_opencl(report, root, in_addon, environ={} if environ is None else environ)
    got: dict[str, tuple[str, str]] = {}
    for status, topic, text in report.lines:
        if topic in got and topic == "OpenCL ICD":  # several ICD lines: keep the worst
            if got[topic][0] == "MISSING":
                continue
        got[topic] = (status, text)
    return got


def test_vendor_stack_complete_names_kbase_and_libmali(tmp_path):
    got = gpu_lines(make_board(tmp_path))
    assert got["GPU stack"] == ("OK", "vendor kernel: kbase (/dev/mali0), for Arm's libmali OpenCL")
    assert got["Mali node"][0] == "OK" and got["OpenCL ICD"][0] == "OK"
    assert "Panthor node" not in got and "RUSTICL_ENABLE" not in got
    # Only the device list is this machine's (no Mali here): its fix is the vendor stack's.
    assert got["Mali GPU"][0] == "MISSING" and "libmali" in got["Mali GPU"][1] and "Mali node line" in got["Mali GPU"][1]


def test_panthor_with_rusticl_complete_names_the_mainline_stack(tmp_path):
    got = gpu_lines(make_mainline_board(tmp_path), {"RUSTICL_ENABLE": "panfrost"})
    assert got["GPU stack"] == ("OK", "mainline kernel: Panthor (/dev/dri/renderD128), for Mesa's rusticl OpenCL")
    assert got["Panthor node"] == ("OK", "/dev/dri/renderD128 (panthor) opens")
    assert got["RUSTICL_ENABLE"] == ("OK", "panfrost")
    assert got["OpenCL ICD"][0] == "OK"
    assert "Mali node" not in got, "no kbase advice on a mainline kernel"
    missing = {topic for topic, (status, _) in got.items() if status in ("MISSING", "WARN")}
    assert missing <= {"Mali GPU"}, got  # the device list is this machine's
    assert "mesa-opencl-icd" in got["Mali GPU"][1] and "Panthor node line" in got["Mali GPU"][1]


def test_panthor_without_rusticls_icd_says_to_run_the_mainline_image_or_install_trixies_mesa(tmp_path):
    got = gpu_lines(make_mainline_board(tmp_path, icd=False), {"RUSTICL_ENABLE": "panfrost"})
    status, text = got["OpenCL ICD"]
    assert status == "MISSING" and "no Mesa rusticl ICD" in text
    assert "fix: run the mainline image" in text and "mesa-opencl-icd from Debian trixie" in text
    assert "libmali" not in text.split("fix:")[1]


def test_panthor_without_rusticl_enable_says_to_set_it(tmp_path):
    got = gpu_lines(make_mainline_board(tmp_path), {})
    status, text = got["RUSTICL_ENABLE"]
    assert status == "WARN" and "not set" in text and "Mesa before 26.2" in text
    assert text.endswith("fix: set RUSTICL_ENABLE=panfrost (docker run -e RUSTICL_ENABLE=panfrost)")
    status, text = gpu_lines(make_mainline_board(tmp_path), {"RUSTICL_ENABLE": "llvmpipe"})["RUSTICL_ENABLE"]
    assert status == "MISSING" and "'llvmpipe' does not list panfrost" in text and "fix: set RUSTICL_ENABLE=panfrost" in text


def test_panthor_on_the_host_but_not_passed_in_asks_for_the_render_node(tmp_path):
    got = gpu_lines(make_mainline_board(tmp_path, passed=False), {"RUSTICL_ENABLE": "panfrost"})
    assert got["GPU stack"][0] == "OK"
    status, text = got["Panthor node"]
    assert status == "MISSING" and "the host has /dev/dri/renderD128" in text
    assert text.endswith("fix: docker run --device /dev/dri/renderD128")


def test_no_gpu_driver_names_both_stacks_and_their_device_lines(tmp_path):
    got = gpu_lines(make_files(tmp_path, {"sys/class/drm/card0/device/uevent": "DRIVER=virtio_gpu\n"}))
    status, text = got["GPU stack"]
    assert status == "MISSING" and "/dev/mali0" in text and "Panthor" in text
    assert "docker run --device /dev/mali0 or --device /dev/dri/renderD128" in text
    assert "Mali node" not in got and "Panthor node" not in got and "RUSTICL_ENABLE" not in got
    assert "OpenCL ICD" not in got  # no ICD advice before there is a driver to pair it with
    assert got["Mali GPU"][0] == "MISSING" and "GPU stack line" in got["Mali GPU"][1]


def test_in_the_add_on_a_mainline_kernel_is_told_to_use_the_mainline_image(tmp_path):
    got = gpu_lines(make_mainline_board(tmp_path, icd=False), {}, in_addon=True)
    text = "\n".join(f"{topic}: {text}" for topic, (status, text) in got.items() if status != "OK")
    assert "mainline image" in text and "docker" not in text and "apt-get" not in text, text


def test_the_kbase_node_missing_in_a_container_is_asked_for(tmp_path):
    root = make_board(tmp_path)
    (root / "dev/mali0").unlink()  # the kernel has kbase (sysfs), the container did not get the node
    got = gpu_lines(root)
    assert got["GPU stack"][0] == "OK" and got["Mali node"][0] == "MISSING"
    assert got["Mali node"][1].endswith("fix: docker run --device /dev/mali0")


def test_gpu_stack_tells_the_two_stacks_apart_by_kernel_driver(tmp_path):
    root = make_mainline_board(tmp_path)
    stack = opencl_device.gpu_stack(root)
    assert stack.name == "mainline" and stack.panthor == stack.panthor_passed == ("renderD128",)
    assert stack.rusticl_icd and not stack.mali_icd
    assert opencl_device.gpu_stack(make_board(tmp_path / "vendor")).name == "vendor"
    assert opencl_device.gpu_stack(tmp_path / "nothing").name is None
