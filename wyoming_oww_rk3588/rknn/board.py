"""The RK3588 board as the NPU runtime sees it: the SoC, the rknpu node and driver release, librknnrt
and the release it reports (RKNNLite.get_sdk_version after init), each failure one line saying what
to do. Read by the NPU heads backend and by `doctor`; nothing here opens the NPU."""

from __future__ import annotations

import logging
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from .. import addon
from ..errors import BackendUnavailable
from . import builtin

_LOGGER = logging.getLogger(__name__)

LIBRKNNRT = "usr/lib/librknnrt.so"  # RKNNLite loads it from this path (relative to the root)
#: Rockchip's runtime warns below this rknpu driver; docs/npu.md recommends 0.9.6 or newer.
MIN_DRIVER = (0, 8, 8)
# /sys/module/rknpu/version is world-readable where rknpu is a module with MODULE_VERSION; debugfs
# is root-only (and absent in containers).
_DRIVER_VERSION_FILES = ("sys/module/rknpu/version", "sys/kernel/debug/rknpu/version", "proc/debug/rknpu/version")
_LIBRKNNRT_VERSION = re.compile(rb"librknnrt version: ([^\x00\n]{1,120})")
# Home Assistant maps the device tree of an add-on with `devicetree: true` at /device-tree.
_COMPATIBLE_FILES = ("proc/device-tree/compatible", "device-tree/compatible")


def _npu_device(root: Path) -> str | None:
    """The NPU's device node: /dev/rknpu (older kernels) or the DRM render node rknpu registers."""
    if (root / "dev/rknpu").exists():
        return "/dev/rknpu"
    for node in sorted((root / "dev/dri").glob("renderD*")):
        uevent = root / "sys/class/drm" / node.name / "device/uevent"
        try:
            if "rknpu" in uevent.read_text().lower():
                return f"/dev/dri/{node.name}"
        except OSError:
            if node.name == "renderD129":  # no sysfs (container): rknpu's usual node
                return "/dev/dri/renderD129"
    return None


def driver_version(root: Path = Path("/")) -> tuple[int, ...] | None:
    """The rknpu driver version, when the kernel exposes it to us (debugfs is often root-only)."""
    for name in _DRIVER_VERSION_FILES:
        try:
            match = re.search(r"(\d+)\.(\d+)\.(\d+)", (root / name).read_text())
        except OSError:
            continue
        if match:
            return tuple(int(p) for p in match.groups())
    return None


def _point_runtime_at_mapped_device_tree(root: Path = Path("/")) -> None:
    """rknn-toolkit-lite2 reads /proc/device-tree/compatible itself, which an add-on container
    hides; Home Assistant maps the same file at /device-tree (home-assistant/operating-system#3088).
    The runtime keeps that path in a module global (`rknn_runtime.DEVICE_COMPATIBLE_NODE`, seen in
    the 2.3.2 wheel), so point it there. Not yet verified on a board."""
    proc, mapped = root / _COMPATIBLE_FILES[0], root / _COMPATIBLE_FILES[1]
    if os.access(proc, os.R_OK) or not os.access(mapped, os.R_OK):
        return
    try:
        from rknnlite.api import rknn_runtime
    except ImportError:
        return
    if hasattr(rknn_runtime, "DEVICE_COMPATIBLE_NODE"):
        rknn_runtime.DEVICE_COMPATIBLE_NODE = str(mapped)
        _LOGGER.info("NPU runtime reads the board's identity from %s (container device tree)", mapped)


def probe_board(root: Path = Path("/"), machine: str | None = None, in_addon: bool | None = None) -> None:
    """Raise BackendUnavailable with the fix when this is not an RK3588 the NPU runtime can use;
    the fix is the add-on's (files in /share/rk3588) when running in it."""
    machine = machine or platform.machine()
    in_addon = addon.in_addon() if in_addon is None else in_addon
    if machine != "aarch64":
        raise BackendUnavailable(f"the NPU heads need an RK3588 board (aarch64); this machine is {machine}")
    compatible = None
    for name in _COMPATIBLE_FILES:
        try:
            compatible = (root / name).read_bytes()
            break
        except OSError:
            continue
    if compatible is None:
        raise BackendUnavailable(
            "cannot read /proc/device-tree/compatible nor /device-tree/compatible; "
            + ("the add-on maps it at /device-tree (devicetree: true): update the add-on" if in_addon
               else "in a container, map it in: docker run -v /proc/device-tree/compatible:/device-tree/compatible:ro (Docker hides /sys/firmware; docker-compose.yml mounts it)")
        )
    if b"rockchip,rk3588" not in compatible:
        board = compatible.replace(b"\0", b" ").decode(errors="replace").strip()
        raise BackendUnavailable(f"this board ({board}) is not an RK3588; the NPU heads need one")
    if not (root / LIBRKNNRT).is_file():
        source = f"librknnrt.so {builtin.PUBLISHED_RUNTIME} ({builtin.RUNTIME_URL.format(version=builtin.PUBLISHED_RUNTIME)})"
        raise BackendUnavailable(
            f"/{LIBRKNNRT} is missing; " + (f"copy {source} to {addon.VENDOR_DIR}/ and restart the add-on"
                                            if in_addon else f"copy {source} to /usr/lib/ (docs/npu.md)")
        )
    node = _npu_device(root)
    if node is None:
        raise BackendUnavailable(
            "no NPU device node (/dev/dri/renderD129 or /dev/rknpu); boot the host with Rockchip's rknpu driver, "
            + ("then restart the add-on (it maps the node when the host has it)" if in_addon
               else "and in a container map the node in (docker run --device /dev/dri/renderD129)")
        )
    version = driver_version(root)
    if version is not None and version < MIN_DRIVER:
        raise BackendUnavailable(
            f"rknpu driver {'.'.join(map(str, version))} is too old (need >= "
            f"{'.'.join(map(str, MIN_DRIVER))}, 0.9.6+ recommended); update the board's kernel"
        )


def librknnrt_version(path: Path) -> str | None:
    """The `librknnrt version: ...` string Rockchip builds into the library (read, not loaded)."""
    try:
        match = _LIBRKNNRT_VERSION.search(Path(path).read_bytes())
    except OSError:
        return None
    return match.group(1).decode(errors="replace").strip() if match else None


def parse_sdk_version(reported) -> tuple[str | None, str | None]:
    """(librknnrt, driver) from what RKNNLite.get_sdk_version() returns after init_runtime: its
    `RKNN VERSION:` block, "  API: 2.3.2 (429f97ae6b@...)" and "  DRV: 0.9.8" lines (the strings of
    rknn-toolkit-lite2 2.3.2 and 2.5.0's rknn_runtime; RKNN_QUERY_SDK_VERSION's api/drv fields)."""
    if reported is None:
        return None, None
    if isinstance(reported, (tuple, list)):  # (api, drv) or (sdk, api, drv), as the runtime's query gives
        items = [str(x).strip() for x in reported]
        if len(items) >= 2 and builtin.release(items[-2]) and builtin.release(items[-1]):
            return items[-2], items[-1]
    text = "\n".join(map(str, reported)) if isinstance(reported, (tuple, list)) else str(reported)
    api = re.search(r"API:\s*([^\n]+)", text) or re.search(r"librknnrt version:\s*([^\n]+)", text)
    drv = re.search(r"DRV:\s*(?:rknnrt:\s*)?([^\n]+)", text)
    api_text = api.group(1).strip() if api else (text.strip() if builtin.release(text) else None)
    return api_text, drv.group(1).strip() if drv else None


@dataclass
class RuntimeInfo:
    """What the NPU runtime is, as RKNNLite reports it after init_runtime, and the set it loads."""

    librknnrt: str | None  # e.g. "2.3.2 (429f97ae6b@2025-04-09T09:09:27)"; None: not learned
    driver: str | None  # rknpu driver version, as the runtime reports it
    source: str  # where the version came from
    head_set: str | None  # the shipped set of built-in heads this runtime loads

    @property
    def release(self) -> builtin.Release | None:
        return builtin.release(self.librknnrt)

    def describe(self) -> str:
        runtime = f"librknnrt {self.librknnrt} ({self.source})" if self.librknnrt else "librknnrt of unknown release"
        return f"{runtime}, rknpu driver {self.driver or 'not reported'}"

    def no_set_reason(self) -> str:
        """One line: why no shipped set loads here and what to install."""
        shipped = ", ".join(builtin.sets()) or "none"
        if self.release is None:
            what = "its release could not be learned (no shipped head file initialised)"
        else:
            what = f"it is older than every shipped head set ({shipped})"
        return f"{self.describe()}: {what}; {builtin.install_hint()}"
