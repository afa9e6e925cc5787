"""`doctor` on an RK3588 for the NPU: the runtime's release and the rknpu driver's, read without root
(what RKNNLite reports after init, /sys/module/rknpu/version, the render node), and which shipped
set of built-in heads that runtime loads. The board is a fake /dev, /sys, /usr/lib tree and RKNNLite
the thin fake; the doctor and the backend are the real code."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from fakes.rknnlite import FakeNpu
from wyoming_oww_rk3588 import doctor


def board(root: Path, library: str | None = "2.3.2 (429f97ae6b@2025-04-09T09:09:27)",
          module_version: str | None = None, debugfs: str | None = None) -> Path:
    files = {"proc/device-tree/compatible": b"radxa,rock-5b\0rockchip,rk3588\0",
             # a plain file stands in for the node: DRM's version ioctl cannot be asked here
             "dev/dri/renderD129": b"", "sys/class/drm/renderD129/device/uevent": b"DRIVER=RKNPU\n"}
    if library:
        files["usr/lib/librknnrt.so"] = b"\x7fELF\0librknnrt version: " + library.encode() + b"\0"
    if module_version:
        files["sys/module/rknpu/version"] = module_version.encode() + b"\n"
    if debugfs:
        files["sys/kernel/debug/rknpu/version"] = f"RKNPU driver: v{debugfs}\n".encode()
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def npu_lines(root: Path, npu: FakeNpu | None = None) -> dict[str, list[tuple[str, str]]]:
    report = doctor.Report(io.StringIO())
    doctor.check_npu(report, root, "aarch64", in_addon=False, runtime_factory=npu.RKNNLite if npu else None)
    got: dict[str, list[tuple[str, str]]] = {}
    for status, topic, text in report.lines:
        got.setdefault(topic, []).append((status, text))
    return got


def test_the_runtime_and_driver_releases_come_from_rknnlite_after_init_without_root(tmp_path):
    got = npu_lines(board(tmp_path), FakeNpu(runtime="2.3.2", driver="0.9.8"))
    assert got["rknpu driver"] == [("OK", "0.9.8")]  # no debugfs, no sysfs file, no ioctl: the runtime said so
    assert got["NPU head set"][0][0] == "OK" and got["NPU head set"][0][1].startswith("2.3.2 (")
    (status, text), = [line for line in got["NPU runtime"] if "RKNNLite reports" in line[1]]
    assert status == "OK" and "librknnrt 2.3.2 (429f97ae6b@2025-04-09T09:09:27)" in text
    assert "rknpu driver 0.9.8" in text and text.endswith("built-in heads from set 2.3.2")


def test_the_driver_release_is_read_from_sys_module_without_root(tmp_path):
    got = npu_lines(board(tmp_path, module_version="0.9.6"))
    assert got["rknpu driver"] == [("OK", "0.9.6")]


def test_a_driver_release_nobody_reports_says_where_root_can_read_it(tmp_path):
    (status, text), = npu_lines(board(tmp_path))["rknpu driver"]
    assert status == "WARN" and "not readable without root" in text and "/sys/kernel/debug/rknpu/version" in text


@pytest.mark.parametrize("library, status, says", [
    ("2.5.0 (x@2025)", "OK", "2.5.0 (built-in heads converted by rknn-toolkit2 2.5.0;"),
    ("2.4.0 (x@2025)", "OK", "2.3.2 (built-in heads converted by rknn-toolkit2 2.3.2, the newest not newer than 2.4.0"),
    ("2.2.0 (x@2024)", "MISSING", "librknnrt 2.2.0 (x@2024) is older than every shipped set of built-in heads "
                                  "(2.3.2, 2.5.0): they run on the CPU; fix: install librknnrt 2.3.2 or 2.5.0"),
])
def test_which_shipped_set_the_librarys_release_loads(tmp_path, library, status, says):
    (got_status, text), = npu_lines(board(tmp_path, library=library))["NPU head set"]
    assert got_status == status and says in text and "\n" not in text


def test_a_missing_runtime_names_the_published_file(tmp_path):
    (status, text), = npu_lines(board(tmp_path, library=None))["librknnrt"]
    assert status == "MISSING"
    assert "https://github.com/airockchip/rknn-toolkit2/raw/v2.3.2/rknpu2/runtime/Linux/librknn_api/aarch64/librknnrt.so" in text


def test_a_runtime_older_than_every_set_is_reported_by_rknnlite_too(tmp_path):
    got = npu_lines(board(tmp_path, library="2.2.0 (x@2024)"), FakeNpu(runtime="2.2.0"))
    (status, text), = [line for line in got["NPU runtime"] if "RKNNLite reports" in line[1]]
    assert status == "MISSING" and "librknnrt 2.2.0 (x@2024) (read from" in text
    assert "older than every shipped head set" in text and "install librknnrt 2.3.2 or 2.5.0" in text
