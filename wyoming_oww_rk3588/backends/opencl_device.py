"""Finding an OpenCL device, and saying in one line why there is none and what to do.

Two GPU stacks drive the RK3588's Mali-G610: the vendor kernel's kbase driver (/dev/mali0) with
Arm's libmali, and mainline's Panthor (a DRM render node) with Mesa's rusticl on panfrost. This
module tells them apart from /dev and /sys (for `auto`'s hints and for `doctor`). PyOpenCL is
imported here only, when the OpenCL backend is asked for.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendUnavailable

_LOGGER = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'wyoming-oww-rk3588[opencl]'"
LOADER_HINT = "apt-get install ocl-icd-libopencl1"
PLATFORM_HINT = ("is an OpenCL ICD in /etc/OpenCL/vendors? libmali's on a vendor kernel, Mesa rusticl's "
                 "(mesa-opencl-icd from Debian trixie) on a mainline kernel; run doctor (see docs/gpu.md)")
GPU_HINT = ("is the GPU passed to the container? --device /dev/mali0 (vendor kernel, libmali) or "
            "--device /dev/dri/renderD128 (mainline Panthor, Mesa rusticl); run doctor")
#: Kernel DRM drivers of Mali GPUs that Mesa's rusticl drives through its panfrost driver.
MAINLINE_DRIVERS = ("panthor", "panfrost")
#: CPU rasterisers some platforms list as GPUs on request (rusticl's RUSTICL_DEVICE_TYPE=gpu makes
#: llvmpipe one): `auto` never takes them for the GPU, as the exact onnxruntime path is faster.
SOFTWARE_DEVICES = ("llvmpipe", "softpipe", "swrast")
#: Mesa before 26.2 lists a panfrost device in rusticl only when RUSTICL_ENABLE names it.
RUSTICL_DRIVER = "panfrost"


class _DrmVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("name_len", ctypes.c_size_t), ("name", ctypes.c_void_p),
                ("date_len", ctypes.c_size_t), ("date", ctypes.c_void_p),
                ("desc_len", ctypes.c_size_t), ("desc", ctypes.c_void_p)]


_DRM_IOCTL_VERSION = (3 << 30) | (ctypes.sizeof(_DrmVersion) << 16) | (ord("d") << 8)  # _IOWR('d', 0, ...)


def drm_driver(node: Path, root: Path) -> tuple[str, str]:
    """(driver name, version) of a DRM node: DRM_IOCTL_VERSION when it opens, else sysfs's uevent."""
    try:
        fd = os.open(node, os.O_RDWR | os.O_CLOEXEC)
        try:
            buffer = ctypes.create_string_buffer(64)
            version = _DrmVersion(name_len=64, name=ctypes.addressof(buffer))
            fcntl.ioctl(fd, _DRM_IOCTL_VERSION, version, True)
            return buffer.value.decode(errors="replace"), f"{version.major}.{version.minor}.{version.patch}"
        finally:
            os.close(fd)
    except OSError:
        pass
    try:
        uevent = (root / "sys/class/drm" / node.name / "device/uevent").read_text()
        match = re.search(r"^DRIVER=(\S+)", uevent, re.MULTILINE)
        return (match.group(1) if match else "unknown"), ""
    except OSError:
        return "unknown", ""


@dataclass(frozen=True)
class GpuStack:
    """What /dev, /sys and /etc/OpenCL/vendors show of the two stacks. A container sees the host's
    /sys but only the device nodes passed in: a driver in sysfs without its node means "pass it"."""

    mali_node: bool  # /dev/mali0: kbase, the vendor kernel's driver, which libmali needs
    mali_in_sysfs: bool  # the kernel has kbase, whether or not the node was passed in
    panthor: tuple[str, ...]  # render nodes (renderD128) of a mainline Mali driver, from /dev/dri or sysfs
    panthor_passed: tuple[str, ...]  # those of them present in /dev/dri
    icds: dict  # ICD file name -> library it names

    @property
    def mali_icd(self) -> bool:
        return any("mali" in f"{name} {library}".lower() for name, library in self.icds.items())

    @property
    def rusticl_icd(self) -> bool:
        return any("rusticl" in f"{name} {library}".lower() for name, library in self.icds.items())

    @property
    def name(self) -> str | None:
        """"vendor" (kbase), "mainline" (Panthor) or None, by the kernel driver present."""
        if self.mali_node or self.mali_in_sysfs:
            return "vendor"
        return "mainline" if self.panthor else None


def gpu_stack(root: Path = Path("/")) -> GpuStack:
    dri = root / "dev/dri"
    names = sorted({p.name for p in [*dri.glob("renderD*"), *(root / "sys/class/drm").glob("renderD*")]})
    panthor = tuple(n for n in names if drm_driver(dri / n, root)[0].lower() in MAINLINE_DRIVERS)
    icds = {}
    for icd in sorted((root / "etc/OpenCL/vendors").glob("*.icd")):
        try:
            icds[icd.name] = icd.read_text(errors="replace").strip()
        except OSError:
            continue
    return GpuStack(mali_node=(root / "dev/mali0").exists(), mali_in_sysfs=(root / "sys/class/misc/mali0").exists(),
                    panthor=panthor, panthor_passed=tuple(n for n in panthor if (dri / n).exists()), icds=icds)


def rusticl_enabled(value: str | None) -> bool:
    """Whether a RUSTICL_ENABLE value ("panfrost", "llvmpipe,panfrost", "panfrost:0") lists panfrost."""
    return any(part.split(":")[0].strip() == RUSTICL_DRIVER for part in (value or "").split(","))


_set_here: list[str] = []  # the RUSTICL_ENABLE value this process set, if it did


def rusticl_set_here() -> bool:
    """Whether RUSTICL_ENABLE was set by this process (enable_rusticl_panfrost), not by the user."""
    return bool(_set_here) and os.environ.get("RUSTICL_ENABLE") == _set_here[-1]


def enable_rusticl_panfrost(root: Path = Path("/"), environ=os.environ) -> bool:
    """Set RUSTICL_ENABLE=panfrost where a Panthor GPU is passed in and the variable is unset, so
    that Mesa before 26.2 lists the Mali-G610; True when set. Must run before the ICD loader first
    lists platforms (rusticl reads it then); a value the user set is never changed."""
    if "RUSTICL_ENABLE" in environ or not gpu_stack(root).panthor_passed:
        return False
    environ["RUSTICL_ENABLE"] = RUSTICL_DRIVER
    if environ is os.environ:
        _set_here.append(RUSTICL_DRIVER)
    _LOGGER.info("RUSTICL_ENABLE=%s set: a Panthor GPU is here and Mesa before 26.2 lists it only then",
                 RUSTICL_DRIVER)
    return True


def is_software(name: str) -> bool:
    return name.strip().lower().startswith(SOFTWARE_DEVICES)


def import_pyopencl():
    """The pyopencl module, or BackendUnavailable saying how to install what is missing."""
    enable_rusticl_panfrost()
    try:
        import pyopencl as cl
    except ImportError as err:
        if "libOpenCL" in str(err):
            raise BackendUnavailable(f"the OpenCL ICD loader libOpenCL.so.1 is missing; {LOADER_HINT}") from err
        raise BackendUnavailable(f"PyOpenCL is not installed; {INSTALL_HINT}") from err
    except OSError as err:  # a loader that is present but cannot be loaded
        raise BackendUnavailable(f"the OpenCL ICD loader cannot be loaded ({err}); {LOADER_HINT}") from err
    return cl


@dataclass(frozen=True)
class DeviceInfo:
    """What the kernels and the benchmark need to know about the chosen device."""

    name: str
    platform: str
    version: str
    driver: str
    is_gpu: bool
    compute_units: int
    clock_mhz: int
    max_work_group: int
    local_mem: int
    global_mem: int
    max_alloc: int
    fp16: bool

    @property
    def label(self) -> str:
        return f"{self.name} ({self.platform}, {self.version}, driver {self.driver})"


def device_info(device) -> DeviceInfo:
    import pyopencl as cl

    return DeviceInfo(
        name=device.name.strip(),
        platform=device.platform.name.strip(),
        version=device.version.strip(),
        driver=device.driver_version.strip(),
        is_gpu=_is_gpu(cl, device),
        compute_units=int(device.max_compute_units),
        clock_mhz=int(device.max_clock_frequency),
        max_work_group=int(device.max_work_group_size),
        local_mem=int(device.local_mem_size),
        global_mem=int(device.global_mem_size),
        max_alloc=int(device.max_mem_alloc_size),
        fp16="cl_khr_fp16" in device.extensions.split(),
    )


def _is_gpu(cl, device) -> bool:
    return bool(device.type & cl.device_type.GPU) and not is_software(device.name)


def gpu_hint(root: Path = Path("/"), environ=os.environ) -> str:
    """What to do when no OpenCL GPU answers, for the stack this machine has."""
    stack = gpu_stack(root)
    if stack.name == "mainline":
        node = f"/dev/dri/{stack.panthor[0]}"
        if not stack.panthor_passed:
            return f"the host has a Panthor GPU at {node}: pass it, docker run --device {node}"
        if not stack.rusticl_icd:
            return ("a Panthor GPU is here; its OpenCL is Mesa's rusticl: run the mainline image or install "
                    "mesa-opencl-icd from Debian trixie (Mesa >= 25.0)")
        if not rusticl_enabled(environ.get("RUSTICL_ENABLE")):
            return f"RUSTICL_ENABLE={environ.get('RUSTICL_ENABLE')} does not list panfrost: set RUSTICL_ENABLE=panfrost"
        return f"rusticl lists no panfrost device for {node}: does the node open for this user? run doctor"
    if stack.mali_in_sysfs and not stack.mali_node:
        return "the host has kbase's /dev/mali0: pass it, docker run --device /dev/mali0"
    if stack.mali_node and not stack.mali_icd:
        return "no libmali ICD in /etc/OpenCL/vendors (see docs/gpu.md)"
    return GPU_HINT


def _all_devices(cl) -> list:
    try:
        platforms = cl.get_platforms()
    except cl.Error as err:  # ocl-icd answers PLATFORM_NOT_FOUND_KHR when no ICD is registered
        raise BackendUnavailable(f"no OpenCL platform found ({err}); "
                                 f"{PLATFORM_HINT}") from err
    devices = []
    for platform in platforms:
        try:
            devices += platform.get_devices()
        except cl.Error:  # a platform with no device of any type
            continue
    if not platforms:
        raise BackendUnavailable(f"no OpenCL platform found; {PLATFORM_HINT}")
    return devices


def choose_device(kind: str = "any"):
    """(pyopencl module, device) for `kind` "gpu" (GPUs only) or "any" (a GPU first, else any
    device such as PoCL). PYOPENCL_CTX ("platform:device" indices) picks the device; "gpu"
    still refuses a non-GPU one."""
    if kind not in ("gpu", "any"):
        raise ValueError(f"unknown OpenCL device kind {kind!r}; use gpu or any")
    cl = import_pyopencl()
    devices = _all_devices(cl)
    if not devices:  # e.g. rusticl with no driver enabled: its platform is there, empty
        names = ", ".join(sorted({p.name.strip() for p in cl.get_platforms()}))
        raise BackendUnavailable(f"no OpenCL device found (platforms: {names}); "
                                 f"{gpu_hint() if gpu_stack().name else PLATFORM_HINT}")
    wanted = os.environ.get("PYOPENCL_CTX", "").strip()
    if wanted:
        device = _device_from_env(cl, wanted)
        if kind == "gpu" and not _is_gpu(cl, device):
            raise BackendUnavailable(
                f"PYOPENCL_CTX={wanted} selects {device.name.strip()}, not a GPU; auto uses OpenCL only on a "
                "GPU, ask for the opencl features backend to run on it"
            )
        return cl, device
    gpus = [d for d in devices if _is_gpu(cl, d)]
    if gpus:
        return cl, gpus[0]
    found = ", ".join(sorted({d.name.strip() for d in devices}))
    if kind == "gpu":
        raise BackendUnavailable(f"no OpenCL GPU device (found only: {found}); {gpu_hint()}")
    return cl, devices[0]


def _device_from_env(cl, wanted: str):
    parts = wanted.split(":")
    try:
        platform = cl.get_platforms()[int(parts[0] or 0)]
        devices = platform.get_devices()
        return devices[int(parts[1]) if len(parts) > 1 and parts[1] else 0]
    except (ValueError, IndexError, cl.Error) as err:
        raise BackendUnavailable(
            f"PYOPENCL_CTX={wanted} names no OpenCL device ({err}); use 'platform:device' indices, e.g. 0:0"
        ) from err


def build_program(cl, context, source: str, options: list[str], what: str):
    """Compile `source`; a compiler error becomes BackendUnavailable with the log's first lines."""
    try:
        return cl.Program(context, source).build(options=options)
    except cl.Error as err:
        log = " | ".join(line for line in str(err).splitlines() if "error" in line.lower())[:400]
        raise BackendUnavailable(f"the OpenCL {what} kernels failed to build ({log or err}); use cpu") from err
