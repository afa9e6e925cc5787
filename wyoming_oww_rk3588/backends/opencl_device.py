"""Finding an OpenCL device, and saying in one line why there is none and what to do.

PyOpenCL is imported here only, when the OpenCL backend is asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import BackendUnavailable

INSTALL_HINT = "pip install 'wyoming-oww-rk3588[opencl]'"
LOADER_HINT = "apt-get install ocl-icd-libopencl1"
PLATFORM_HINT = "is libmali's OpenCL ICD installed in /etc/OpenCL/vendors? (see docs/gpu.md)"
GPU_HINT = "is /dev/mali0 (or /dev/dri) passed to the container?"


def import_pyopencl():
    """The pyopencl module, or BackendUnavailable saying how to install what is missing."""
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
        is_gpu=bool(device.type & cl.device_type.GPU),
        compute_units=int(device.max_compute_units),
        clock_mhz=int(device.max_clock_frequency),
        max_work_group=int(device.max_work_group_size),
        local_mem=int(device.local_mem_size),
        global_mem=int(device.global_mem_size),
        max_alloc=int(device.max_mem_alloc_size),
        fp16="cl_khr_fp16" in device.extensions.split(),
    )


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
    if not devices:
        raise BackendUnavailable(f"no OpenCL device found; {PLATFORM_HINT}")
    wanted = os.environ.get("PYOPENCL_CTX", "").strip()
    if wanted:
        device = _device_from_env(cl, wanted)
        if kind == "gpu" and not device.type & cl.device_type.GPU:
            raise BackendUnavailable(
                f"PYOPENCL_CTX={wanted} selects {device.name.strip()}, not a GPU; auto uses OpenCL only on a "
                "GPU, ask for the opencl features backend to run on it"
            )
        return cl, device
    gpus = [d for d in devices if d.type & cl.device_type.GPU]
    if gpus:
        return cl, gpus[0]
    found = ", ".join(sorted({d.name.strip() for d in devices}))
    if kind == "gpu":
        raise BackendUnavailable(f"no OpenCL GPU device (found only: {found}); {GPU_HINT}")
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
