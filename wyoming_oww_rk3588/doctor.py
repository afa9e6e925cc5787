"""`python -m wyoming_oww_rk3588 doctor`: what this machine has for the GPU and NPU paths, which
backend each stage will use and why, and how fast each stage runs here. Each line says OK, or what
is missing and how to fix it; a missing piece is reported, never raised."""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import logging
import os
import platform
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import __version__, addon
from .backends.opencl_device import drm_driver, gpu_stack

_RESTART = "restart the add-on"
PACKAGES = {  # distribution -> (what it is for, the extra that installs it)
    "wyoming": ("the Wyoming protocol", ""), "onnxruntime": ("the CPU backend", ""), "numpy": ("everything", ""),
    "pyopencl": ("GPU features over OpenCL", "opencl"), "rknn-toolkit-lite2": ("NPU heads", "rknn"),
    "ai-edge-litert": ("your .tflite heads", "tflite"),
}
_RKNNRT_VERSION = re.compile(rb"librknnrt version: ([^\x00\n]{1,120})")


class Report:
    """Prints each line as it is found (the add-on log streams it); counts failures of the CPU floor."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.lines: list[tuple[str, str, str]] = []
        self.cpu_broken = False
        self.auto_features = "cpu"  # the features backend `auto` takes here

    def add(self, status: str, topic: str, text: str) -> None:
        self.lines.append((status, topic, text))
        print(f"{status:<7} {topic}: {text}", file=self.stream, flush=True)

    def section(self, title: str) -> None:
        print(f"== {title}", file=self.stream, flush=True)

    @contextmanager
    def guard(self, topic: str):
        """A check that crashes becomes one WARN line; the doctor goes on."""
        try:
            yield
        except Exception as err:  # noqa: BLE001 - the doctor must never take itself down
            self.add("WARN", topic, f"check failed unexpectedly ({type(err).__name__}: {err}); please report it")


def open_error(path: Path) -> str | None:
    """None when the node opens read-write, else why (a container sees every node, may open few)."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        return None
    except OSError as err:
        return err.strerror or str(err)


def rknnrt_version(path: Path) -> str | None:
    """The `librknnrt version: ...` string Rockchip builds into the library (read, not loaded)."""
    from .backends.rknn import librknnrt_version

    return librknnrt_version(path)


def _package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python(r: Report, machine: str, in_addon: bool = False) -> None:
    r.add("OK", "python", f"{platform.python_version()} on {machine}; wyoming-oww-rk3588 {__version__}")
    for dist, (purpose, extra) in PACKAGES.items():
        version = _package_version(dist)
        if version:
            r.add("OK", dist, f"{version} ({purpose})")
        elif dist == "rknn-toolkit-lite2" and machine != "aarch64":
            r.add("MISSING", dist, f"not installed: it exists for aarch64 only; {purpose} need an RK3588 board")
        else:
            if in_addon:  # the image installs every package of its arch: a gap is the image's
                fix = "update or reinstall the add-on (its image installs this package on aarch64)"
            else:
                fix = f"pip install 'wyoming-oww-rk3588[{extra}]'" if extra else "reinstall wyoming-oww-rk3588"
            r.add("MISSING", dist, f"not installed ({purpose}); fix: {fix}")


def _mali_fix(in_addon: bool) -> str:
    if in_addon:
        return (f"copy the board's libmali (e.g. libmali-valhall-g610-*.so, the build matching its kernel's Mali "
                f"driver) to {addon.VENDOR_DIR}/ and {_RESTART}")
    return ("install libmali for the Mali-G610 matching the kernel's Mali driver, and register it: "
            "echo /usr/lib/aarch64-linux-gnu/libmali.so.1 > /etc/OpenCL/vendors/mali.icd")


def _rusticl_fix(in_addon: bool) -> str:
    if in_addon:  # the add-on's image is the vendor stack's (libmali); Mesa's rusticl needs trixie's Mesa
        return ("the add-on's image carries only the vendor kernel's GPU stack: on a mainline kernel run this "
                "project's mainline image instead (docs/gpu.md)")
    return ("run the mainline image (it carries rusticl), or install mesa-opencl-icd from Debian trixie "
            "(Mesa >= 25.0; bookworm's Mesa has no rusticl)")


def _pass_node(node: str, in_addon: bool) -> str:
    return f"{_RESTART} (Home Assistant maps {node} as the host has it at start)" if in_addon \
        else f"docker run --device {node}"


def check_gpu_nodes(r: Report, root: Path, in_addon: bool) -> None:
    """Which GPU stack the kernel offers (kbase for libmali, or Panthor for Mesa's rusticl), and
    whether its node is here and opens."""
    stack = gpu_stack(root)
    if stack.name == "vendor":
        r.add("OK", "GPU stack", "vendor kernel: kbase (/dev/mali0), for Arm's libmali OpenCL")
    elif stack.name == "mainline":
        r.add("OK", "GPU stack", f"mainline kernel: Panthor (/dev/dri/{stack.panthor[0]}), for Mesa's rusticl OpenCL")
    else:
        r.add("MISSING", "GPU stack", "no Mali-G610 driver: neither kbase's /dev/mali0 (vendor kernel, libmali) "
              "nor a Panthor render node (mainline kernel 6.10+, Mesa rusticl); fix: boot one of them on an RK3588 "
              "board" + ("" if in_addon else ", then docker run --device /dev/mali0 or --device /dev/dri/renderD128")
              + " (docs/gpu.md)")
    mali = root / "dev/mali0"
    if stack.name == "vendor" and not stack.mali_node:
        r.add("MISSING", "Mali node", "the kernel has kbase (/sys/class/misc/mali0) but /dev/mali0 is not here; "
              f"fix: {_pass_node('/dev/mali0', in_addon)}")
    elif stack.mali_node and (error := open_error(mali)) is not None:
        r.add("MISSING", "Mali node", f"/dev/mali0 exists but does not open ({error}); fix: "
              + _pass_node("/dev/mali0", in_addon))
    elif stack.mali_node:
        gpuinfo = root / "sys/class/misc/mali0/device/gpuinfo"
        detail = gpuinfo.read_text(errors="replace").strip() if gpuinfo.is_file() else "GPU details not exposed"
        r.add("OK", "Mali node", f"/dev/mali0 opens ({detail})")
    for name in stack.panthor:
        node = root / "dev/dri" / name
        driver, version = drm_driver(node, root)
        shown = f"/dev/dri/{name} ({driver} {version}".rstrip() + ")"
        if name not in stack.panthor_passed:
            r.add("MISSING", "Panthor node", f"the host has {shown} but it is not here; fix: "
                  + _pass_node(f"/dev/dri/{name}", in_addon))
        elif (error := open_error(node)) is not None:
            r.add("MISSING", "Panthor node", f"{shown} does not open ({error}); fix: " + (
                _pass_node(f"/dev/dri/{name}", in_addon) if in_addon else
                f"give this user the node's group (render), or in a container docker run --device /dev/dri/{name}"))
        else:
            r.add("OK", "Panthor node", f"{shown} opens")
    for node in sorted((root / "dev/dri").glob("renderD*")):
        if node.name in stack.panthor:
            continue
        driver, version = drm_driver(node, root)
        error = open_error(node)
        r.add("OK" if error is None else "WARN", "DRM node", f"/dev/dri/{node.name}: {driver} {version}".rstrip()
              + (", opens" if error is None else f", does not open ({error})"))


def check_opencl(r: Report, root: Path, in_addon: bool, environ=None) -> None:
    """The OpenCL loader, the ICD the stack needs (libmali's or rusticl's, with RUSTICL_ENABLE), and
    the devices that answer."""
    from .backends import opencl_device

    environ = os.environ if environ is None else environ
    stack = gpu_stack(root)
    fix = _rusticl_fix(in_addon) if stack.name == "mainline" else _mali_fix(in_addon)
    try:
        ctypes.CDLL("libOpenCL.so.1")
        r.add("OK", "OpenCL loader", "libOpenCL.so.1 loads")
    except OSError as err:
        r.add("MISSING", "OpenCL loader", f"libOpenCL.so.1 does not load ({err}); fix: " + (
            "update or reinstall the add-on (its aarch64 image has the loader)" if in_addon
            else "apt-get install ocl-icd-libopencl1"))
    for name, library in stack.icds.items():
        if library.startswith("/") and not (root / library.lstrip("/")).exists():
            which = _rusticl_fix(in_addon) if "rusticl" in f"{name} {library}".lower() else _mali_fix(in_addon)
            r.add("MISSING", "OpenCL ICD", f"{name} names {library}, which does not exist; fix: {which}")
        else:
            r.add("OK", "OpenCL ICD", f"{name} -> {library}")
    if stack.name == "mainline":
        if not stack.rusticl_icd:
            r.add("MISSING", "OpenCL ICD", "no Mesa rusticl ICD (rusticl.icd) in /etc/OpenCL/vendors: Panthor's "
                  f"OpenCL is Mesa's rusticl (libmali needs the vendor kernel); fix: {fix}")
        # The user's value, not the one the backend sets for itself when it is unset.
        value = None if opencl_device.rusticl_set_here() else environ.get("RUSTICL_ENABLE")
        set_it = "" if in_addon else " (docker run -e RUSTICL_ENABLE=panfrost)"
        if value is None:
            r.add("WARN", "RUSTICL_ENABLE", "not set: Mesa before 26.2 lists the Mali-G610 only with "
                  "RUSTICL_ENABLE=panfrost; this server sets it for itself, other OpenCL programs (clinfo) "
                  f"need it; fix: set RUSTICL_ENABLE=panfrost{set_it}")
        elif not opencl_device.rusticl_enabled(value):
            r.add("MISSING", "RUSTICL_ENABLE", f"{value!r} does not list panfrost, so rusticl leaves the Mali-G610 "
                  f"out; fix: set RUSTICL_ENABLE=panfrost{set_it}")
        else:
            r.add("OK", "RUSTICL_ENABLE", value)
    elif stack.name == "vendor" and not stack.mali_icd:
        r.add("MISSING", "OpenCL ICD", f"no libmali ICD in /etc/OpenCL/vendors; fix: {fix}")
    from .errors import BackendUnavailable

    devices = []
    try:
        cl = opencl_device.import_pyopencl()
        for platform_ in cl.get_platforms():
            try:
                devices += [opencl_device.device_info(d) for d in platform_.get_devices()]
            except cl.Error:  # a platform without devices
                continue
    except BackendUnavailable as err:  # its message says what to install
        r.add("MISSING", "OpenCL devices", f"none listed: {err}")
    except Exception as err:  # noqa: BLE001 - cl.Error: PLATFORM_NOT_FOUND_KHR when no ICD loads
        r.add("MISSING", "OpenCL devices", f"no OpenCL platform ({err}); fix: {fix}")
    for info in devices:
        r.add("OK", "OpenCL device", f"{info.name} [{info.platform}] {'GPU' if info.is_gpu else 'not a GPU'}, "
              f"{info.version}, {info.compute_units} CUs, fp16 {'yes' if info.fp16 else 'no'}")
    if any("mali" in info.name.lower() and info.is_gpu for info in devices):
        r.add("OK", "Mali GPU", "found among OpenCL devices")
    elif stack.name is None:
        r.add("MISSING", "Mali GPU", "not among OpenCL devices; fix: a Mali driver first (see the GPU stack line)")
    else:
        node = "Mali node" if stack.name == "vendor" else "Panthor node"
        r.add("MISSING", "Mali GPU", f"not among OpenCL devices; fix: {fix} (and see the {node} line)")


def _compatible(root: Path) -> tuple[list[str], str | None]:
    """The device tree's compatible strings, from /proc or from Home Assistant's /device-tree mapping."""
    for name in ("proc/device-tree/compatible", "device-tree/compatible"):
        try:
            return [c for c in (root / name).read_bytes().decode(errors="replace").split("\0") if c], f"/{name}"
        except OSError:
            continue
    return [], None


def _npu_nodes(root: Path) -> list[Path]:
    nodes = [n for n in [root / "dev/rknpu", *sorted((root / "dev/dri").glob("renderD*"))]
             if n.exists() and (n.name == "rknpu" or drm_driver(n, root)[0].lower() == "rknpu")]
    fallback = root / "dev/dri/renderD129"  # rknpu's usual node, when neither sysfs nor the node tell
    return nodes or ([fallback] if fallback.exists() else [])


def _runtime_report(root: Path, machine: str, runtime_factory=None):
    """What RKNNLite itself reports after init (librknnrt and driver release, the head set they
    load): a RuntimeInfo, a one-line reason it cannot start, or None where it cannot run (not this
    machine's own root, not aarch64). `runtime_factory` stands in for RKNNLite in tests."""
    from .backends.rknn import RknnHeads
    from .errors import BackendUnavailable

    if runtime_factory is None and (root != Path("/") or machine != "aarch64"):
        return None
    try:
        heads = RknnHeads(runtime_factory=runtime_factory, library=root / "usr/lib/librknnrt.so")
    except BackendUnavailable as err:
        return str(err)
    try:
        return heads.runtime_info()
    finally:
        heads.close()


def check_npu(r: Report, root: Path, machine: str, in_addon: bool, runtime_factory=None) -> None:
    from .backends.rknn import MIN_DRIVER, RuntimeInfo, driver_version, probe_board
    from .errors import BackendUnavailable
    from .rknn import builtin

    compatible, where = _compatible(root)
    if where is None:
        r.add("MISSING", "SoC", f"no device tree: this {machine} machine is no RK3588 board" if machine != "aarch64"
              else "device tree not readable (/proc/device-tree/compatible); fix: " + (
                  "the add-on maps it at /device-tree: update the add-on" if in_addon
                  else "docker run -v /proc/device-tree/compatible:/device-tree/compatible:ro (Docker hides /sys/firmware; docker-compose.yml mounts it)"))
    elif any(c.startswith("rockchip,rk3588") for c in compatible):
        r.add("OK", "SoC", f"{' '.join(compatible)} (from {where})")
    else:
        r.add("MISSING", "SoC", f"{' '.join(compatible) or 'unknown'} is not an RK3588: no NPU heads here")
    npu = _npu_nodes(root)
    if not npu:
        r.add("MISSING", "NPU node", "no /dev/dri/renderD129 (rknpu) nor /dev/rknpu; fix: boot the host with "
              "Rockchip's rknpu driver (the board's vendor kernel), then " + (
                  f"{_RESTART} (it maps the node)" if in_addon else "docker run --device /dev/dri/renderD129"))
    for node in npu:
        shown, error = f"/{node.relative_to(root)}", open_error(node)
        r.add("OK", "NPU node", f"{shown} opens") if error is None else r.add(
            "MISSING", "NPU node", f"{shown} exists but does not open ({error}); fix: " + (
                f"{_RESTART} (Home Assistant maps it as the host has it at start)" if in_addon
                else f"give this user access (the node's group, e.g. render), or in a container pass it in "
                f"(docker run --device {shown})"))
    report = _runtime_report(root, machine, runtime_factory)
    reported = report if isinstance(report, RuntimeInfo) else None
    # Without root: /sys/module/rknpu/version (world-readable where rknpu is a module), then the
    # DRM version of rknpu's render node, then what the runtime reports; debugfs needs root.
    versions = [v for n in npu if n.name != "rknpu" and (v := drm_driver(n, root)[1])]
    from_runtime = builtin.release(reported.driver) if reported and reported.driver else None
    driver = driver_version(root) or (tuple(int(x) for x in versions[0].split(".")) if versions else from_runtime)
    if driver is None:
        where = "in a shell on the host (not in this add-on)" if in_addon else "on the host"
        r.add("WARN", "rknpu driver", "version not readable without root here (no /sys/module/rknpu/version, the "
              "render node does not open, the runtime did not report it); "
              f"{where}, as root: cat /sys/kernel/debug/rknpu/version")
    elif driver < MIN_DRIVER:
        r.add("MISSING", "rknpu driver", f"{'.'.join(map(str, driver))} is older than "
              f"{'.'.join(map(str, MIN_DRIVER))}; fix: update the board's kernel")
    else:
        r.add("OK", "rknpu driver", ".".join(map(str, driver)))
    library, lite = root / "usr/lib/librknnrt.so", _package_version("rknn-toolkit-lite2")
    source = builtin.RUNTIME_URL.format(version=builtin.PUBLISHED_RUNTIME)
    version = None
    if not library.is_file():
        r.add("MISSING", "librknnrt", "/usr/lib/librknnrt.so not found; fix: " + (
            f"copy librknnrt.so to {addon.VENDOR_DIR}/ and {_RESTART} (release {builtin.PUBLISHED_RUNTIME}: {source})"
            if in_addon else "copy rknn-toolkit2's rknpu2/runtime/Linux/librknn_api/aarch64/librknnrt.so to "
            f"/usr/lib/ (release {builtin.PUBLISHED_RUNTIME}: {source})"))
    elif (version := rknnrt_version(library)) and lite and version.split(".")[:2] != lite.split(".")[:2]:
        # Not known to break (the Python wrapper calls the library's C API), but not tried here.
        r.add("WARN", "librknnrt", f"{version} with rknn-toolkit-lite2 {lite}, another release: untested; if the NPU "
              f"does not start, fix: install the rknn-toolkit-lite2 of the library's release, or librknnrt {lite}")
    else:
        r.add("OK", "librknnrt", f"/usr/lib/librknnrt.so {version or '(version string not found)'}")
    runtime = reported.librknnrt if reported and reported.librknnrt else version
    head_set = builtin.set_for(builtin.release(runtime))
    if runtime is None:
        pass  # no library, or no version string in it: said above
    elif head_set is None:
        r.add("MISSING", "NPU head set", f"librknnrt {runtime} is older than every shipped set of built-in heads "
              f"({', '.join(builtin.sets())}): they run on the CPU; fix: {builtin.install_hint()}")
    else:
        exact = "" if builtin.release(head_set) == builtin.release(runtime) else f", the newest not newer than {runtime}"
        r.add("OK", "NPU head set", f"{head_set} (built-in heads converted by rknn-toolkit2 {head_set}{exact}; "
              "each checked against its simulator scores when loaded)")
    try:
        probe_board(root, machine, in_addon=in_addon)
        r.add("OK", "NPU runtime", "the board checks of the rknn heads backend pass")
    except BackendUnavailable as err:
        r.add("MISSING", "NPU runtime", str(err))
        return  # RKNNLite cannot start either, for the same reason
    if reported is not None:
        r.add("OK" if reported.head_set else "MISSING", "NPU runtime",
              f"RKNNLite reports {reported.describe()}; " + (f"built-in heads from set {reported.head_set}"
                                                             if reported.head_set else reported.no_set_reason()))
    elif isinstance(report, str):
        r.add("MISSING", "NPU runtime", f"RKNNLite does not start: {report}")


@contextmanager
def _captured(logger_name: str):
    """The log lines `select` writes while choosing (its reasons), kept instead of printed."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(logger_name)
    old_propagate, old_level = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)  # the reasons are INFO lines, below a default root logger's level
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = old_propagate
        logger.setLevel(old_level)


def check_choice(r: Report, threads: int, rknn_options: dict) -> tuple[dict, list]:
    """What `auto` picks per stage and why; returns the features backends and heads list to time."""
    from .backends.select import select_features, select_heads
    from .models.registry import ModelRegistry

    features = {}
    with _captured("wyoming_oww_rk3588.backends.select"):
        for name in ("auto", "opencl", "cpu"):
            if name in features:  # auto already built it (an OpenCL context costs a kernel build)
                continue
            backend, why = select_features(name, threads=threads)
            if name == "auto":
                r.add("OK" if backend.name != "cpu" else "INFO", "features", f"auto uses {backend.name}: {why}")
                r.auto_features = backend.name
            if backend.name in features:
                backend.close()
            features.setdefault(backend.name, backend)
    with _captured("wyoming_oww_rk3588.backends.select") as records:
        heads = select_heads("auto", threads=threads, rknn_options=rknn_options)
    for record in records:  # without select's "run doctor" advice: this is the doctor
        r.add("INFO", "heads", record.getMessage().split("; run `")[0])
    placed: dict[str, list[str]] = {}
    for model in ModelRegistry().models.values():
        reasons = []
        for backend in heads:
            if (reason := backend.unsupported_reason(model)) is None:
                placed.setdefault(backend.name, []).append(model.name)
                break
            reasons.append(f"{backend.name}: {reason}")
        if reasons:
            status = "INFO" if len(reasons) < len(heads) else "MISSING"
            r.add(status, "heads", f"{model.name} skips {'; '.join(reasons)}")
    for name, models in placed.items():
        r.add("OK" if name != "cpu" else "INFO", "heads", f"{name} runs {', '.join(models)}")
    return features, heads


def _timed(seconds: float, step) -> float:
    """Milliseconds per call of `step`, after a warm-up, over about `seconds` (at least 5 calls)."""
    for _ in range(3):
        step()
    calls, start = 0, time.perf_counter()
    while calls < 5 or time.perf_counter() - start < seconds:
        step()
        calls += 1
    return (time.perf_counter() - start) * 1000 / calls


def _time_one(r: Report, topic: str, seconds: float, step, prefix: str = "") -> None:
    try:
        ms = max(_timed(seconds, step), 1e-6)
        r.add("OK", topic, f"{prefix}{ms:.2f} ms per 80 ms step, real-time factor {ms / 80:.4f} "
              f"(~{int(80 / ms)} streams)")
    except Exception as err:  # noqa: BLE001 - report it and go on to the next backend
        cpu = topic.endswith(" cpu")  # the CPU is the floor: its failure fails the doctor
        r.cpu_broken |= cpu
        r.add("MISSING" if cpu else "WARN", topic, f"failed while timed ({type(err).__name__}: {err})")


def route_features(r: Report, features: dict) -> None:
    """Each features backend at one stream and at a large batch, and where `auto` sends each batch
    size from that (the server measures the same way at start: backends/route.py)."""
    from .backends.route import LARGE_BATCH, Route, measure

    costs = {}
    for name, backend in features.items():
        try:
            costs[name] = cost = measure(backend)
        except Exception as err:  # noqa: BLE001 - report it and go on to the next backend
            r.add("WARN", f"features {name} by batch", f"failed while timed at {LARGE_BATCH} streams ({type(err).__name__}: {err})")
            continue
        r.add("OK", f"features {name} by batch", f"{cost.at(1) * 1e3:.2f} ms a step at 1 stream, "
              f"{cost.at(LARGE_BATCH) * 1e3:.1f} ms at {LARGE_BATCH} ({cost.per_stream_s * 1e3:.3f} ms a stream)")
    # auto weighs only the CPU and the device it would take (a GPU, never a CPU OpenCL).
    usable = [costs[n] for n in dict.fromkeys(["cpu", r.auto_features]) if n in costs]
    if usable:
        r.add("INFO", "features auto", Route(usable).describe())


def time_stages(r: Report, features: dict, heads: list, seconds: float) -> None:
    from .features import FRAME_SAMPLES, MEL_CONTEXT_SAMPLES, MEL_FRAMES_PER_STEP, scale_mel
    from .models.registry import ModelRegistry

    rng = np.random.default_rng(0)  # fixed input: runs compare across boards
    audio = rng.integers(-3000, 3000, (1, FRAME_SAMPLES + MEL_CONTEXT_SAMPLES)).astype(np.float32)
    for name, backend in features.items():
        states = [np.zeros((1, *shape), np.float32) for shape in backend.layout.state_shapes]

        def step(backend=backend):
            nonlocal states
            _, states = backend.embed_step(scale_mel(backend.melspectrogram(audio))[:, -MEL_FRAMES_PER_STEP:], states)

        _time_one(r, f"features {name}", seconds, step)
    models = list(ModelRegistry().models.values())
    for backend in heads:
        mine = [m for m in models if backend.unsupported_reason(m) is None]
        windows = {m.name: rng.standard_normal((1, m.window, 96)).astype(np.float32) for m in mine}
        if mine:
            _time_one(r, f"heads {backend.name}", seconds,
                      lambda b=backend, ms=mine: [b.score(m, windows[m.name]) for m in ms], f"{len(mine)} models: ")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wyoming-oww-rk3588 doctor", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed run per stage and backend (0: none)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads, as the server's --threads")
    parser.add_argument("--npu-core-mask", default="auto", help="as the server's --npu-core-mask")
    parser.add_argument("--rknn-cache-dir", type=Path, default=None, help="as the server's --rknn-cache-dir")
    parser.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)  # tests: fake /dev, /sys
    return parser


def main(argv: list[str] | None = None, stream=None) -> int:
    """0 when the CPU pipeline works (accelerators only add lines), 1 when even the CPU floor fails."""
    args = build_parser().parse_args(argv)
    r = Report(stream)
    machine = platform.machine()
    in_addon = addon.in_addon()
    for title, topic, check in (
        ("Python and packages", "packages", lambda: check_python(r, machine, in_addon)),
        ("GPU (OpenCL, Mali-G610)", "gpu nodes", lambda: check_gpu_nodes(r, args.root, in_addon)),
        (None, "opencl", lambda: check_opencl(r, args.root, in_addon)),
        ("NPU (RKNN)", "npu", lambda: check_npu(r, args.root, machine, in_addon)),
    ):
        if title:
            r.section(title)
        with r.guard(topic):
            check()
    r.section("Backends")
    features, heads = {}, []
    rknn_options = {"core_mask": args.npu_core_mask}
    rknn_options.update({"cache_dir": args.rknn_cache_dir} if args.rknn_cache_dir else {})
    with r.guard("backend choice"):
        features, heads = check_choice(r, args.threads, rknn_options)
    if args.seconds > 0:
        r.section(f"Timing ({args.seconds:g} s per stage and backend, one stream)")
        with r.guard("timing"):
            time_stages(r, features, heads, args.seconds)
        r.section("Features per batch size (what auto routes where)")
        with r.guard("routing"):
            route_features(r, features)
    for backend in [*features.values(), *heads]:
        with r.guard("close"):
            backend.close()
    missing = [topic for status, topic, _ in r.lines if status == "MISSING"]
    r.section(f"{len(missing)} missing; the CPU pipeline {'FAILED' if r.cpu_broken else 'works'}")
    return 1 if r.cpu_broken else 0
