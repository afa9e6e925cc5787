"""The OpenCL exactness tests on Mesa's rusticl, the OpenCL front end mainline-kernel RK3588
boards use (Panthor + panfrost), here on its llvmpipe device (the CPU).

.ci/install-rusticl.sh makes a Debian trixie root filesystem (rusticl is in trixie's Mesa, not
bookworm's) with a Python 3.13 venv and the reference openWakeWord 0.6.0; the test runs
tests/test_opencl_exactness.py in it, against this checkout (read-only at /repo), with rusticl's
ICD as the only one, and asserts every test passed (none skipped) and that they ran on rusticl.
The tests marked `inside` run only in there. Without root or mmdebstrap, or where the Debian or
Python registries cannot be reached, the test skips and says what is missing.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / ".ci" / "install-rusticl.sh"
INSIDE = os.environ.get("WYOMING_OWW_RUSTICL") == "inside"  # set by the outer test only
inside = pytest.mark.skipif(not INSIDE, reason="runs only in the trixie root filesystem (test_rusticl_*)")
outside = pytest.mark.skipif(INSIDE, reason="the outer test, not in the root filesystem")
# llvmpipe runs these kernels at ~0.15 GFLOP/s (6 s per 64-stream step here): the 64-stream
# case, 75 steps per precision, would take most of an hour. Its kernels' tiling (over 8 streams)
# is also run by test_both_kernel_tilings_step_like_the_cpu[latency] and the 40-stream cases;
# PoCL runs it in full.
DESELECTED = [f"tests/test_opencl_exactness.py::test_a_batch_of_streams_gets_the_cpus_mel_embeddings_and_head_scores"
              f"[{precision}-64]" for precision in ("fp32", "fp16")]
INSIDE_TESTS = ("test_inside_the_only_opencl_device_is_rusticls_llvmpipe",
                "test_inside_auto_leaves_llvmpipe_to_the_exact_cpu_path")


def _in_rusticl(*command: str, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    extra = [f"{k}={v}" for k, v in (env or {}).items()]
    return subprocess.run(["bash", str(SCRIPT), "run", "env", "WYOMING_OWW_RUSTICL=inside", *extra, *command],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def rusticl():
    """The trixie root filesystem, made here if setup has not (cached: seconds once made)."""
    made = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=3000)
    print(made.stderr.strip()[-600:])  # how long it took to make, if it was made now (pytest -s)
    probe = subprocess.run(["bash", str(SCRIPT), "run", "true"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        why = [line for line in (made.stderr + probe.stderr).splitlines() if line.startswith("install-rusticl:")]
        pytest.skip(f"no rusticl environment: {' | '.join(why[-2:]) or probe.stderr.strip()[-300:]}")


def _summary(output: str) -> dict[str, int]:
    """pytest's last line ("49 passed, 2 deselected, 1 warning in 300.1s") as counts, warnings aside."""
    last = output.strip().splitlines()[-1]
    return {kind: int(n) for n, kind in re.findall(r"(\d+) ([a-z]+)", last) if not kind.startswith("warning")}


@outside
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_rusticl_llvmpipe_passes_every_opencl_exactness_test(rusticl):
    done = _in_rusticl("python", "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--rootdir=/repo",
                       "-o", "timeout=1800", *(f"--deselect={test}" for test in DESELECTED),
                       "/repo/tests/test_opencl_exactness.py",
                       *(f"/repo/tests/test_opencl_rusticl.py::{name}" for name in INSIDE_TESTS), timeout=3400)
    output = done.stdout + done.stderr
    counts = _summary(done.stdout)
    assert done.returncode == 0 and set(counts) == {"passed", "deselected"}, output[-6000:]
    assert counts["deselected"] == len(DESELECTED), output[-3000:]
    assert counts["passed"] >= 40, output[-3000:]
    # The inside tests below pin the device every backend in that process ran on.
    for name in INSIDE_TESTS:
        # pytest names the file relative to where it runs (tests/... or repo/tests/...).
        assert re.search(rf"^PASSED (\S*/)?tests/test_opencl_rusticl\.py::{re.escape(name)}$", done.stdout, re.M), \
            output[-3000:]


@outside
@pytest.mark.timeout(600)
def test_rusticl_llvmpipe_posing_as_a_gpu_is_still_no_gpu_for_auto(rusticl):
    """RUSTICL_DEVICE_TYPE=gpu makes rusticl report llvmpipe as a GPU: auto must still take the CPU
    path, and an explicit opencl choice must still run on it."""
    done = _in_rusticl("python", "-c", """
import pyopencl as cl
from wyoming_oww_rk3588.backends.select import select_features
(device,) = [d for p in cl.get_platforms() for d in p.get_devices()]
assert device.type & cl.device_type.GPU, "RUSTICL_DEVICE_TYPE=gpu did not make llvmpipe a GPU"
auto, why = select_features("auto")
explicit, _ = select_features("opencl")
print("auto:", auto.name, "|", why)
print("opencl:", explicit.name, explicit.device.label)
""", env={"RUSTICL_DEVICE_TYPE": "gpu"}, timeout=580)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "auto: cpu | opencl unavailable: no OpenCL GPU device (found only: llvmpipe" in done.stdout, done.stdout
    assert re.search(r"opencl: opencl llvmpipe .*\(rusticl, OpenCL 3\.0", done.stdout), done.stdout


@outside
@pytest.mark.timeout(600)
def test_rusticl_without_an_enabled_driver_lists_no_device_and_the_reason_says_so(rusticl):
    """Mesa's rusticl with RUSTICL_ENABLE naming a driver that is absent (panfrost, off the board)
    shows a platform without devices: the explicit choice falls back to the CPU with the reason."""
    done = _in_rusticl("python", "-c", """
from wyoming_oww_rk3588.backends.select import select_features
backend, why = select_features("opencl")
print(backend.name, "|", why)
""", env={"RUSTICL_ENABLE": "panfrost"}, timeout=580)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "cpu | opencl unavailable: no OpenCL device found (platforms: rusticl)" in done.stdout, done.stdout


@outside
def test_without_mmdebstrap_the_install_step_passes_and_says_what_is_missing(tmp_path):
    """Setup never fails on it: a machine without mmdebstrap gets one line and exit 0, and `run`
    refuses with the same reason (what the test's skip then quotes)."""
    import shutil

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "id", "unshare", "mkdir", "cat"):  # everything the script needs but mmdebstrap
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    bash = shutil.which("bash")
    made = subprocess.run([bash, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)
    assert made.returncode == 0, made.stderr
    expected = "no mmdebstrap (bash .ci/install-image-tools.sh installs it)" if os.geteuid() == 0 else "needs root"
    assert expected in made.stderr and "the rusticl test will skip" in made.stderr, made.stderr
    ran = subprocess.run([bash, str(SCRIPT), "run", "true"], capture_output=True, text=True, env=env, timeout=60)
    assert ran.returncode == 3 and f"cannot run: {expected}" in ran.stderr, ran.stderr


@inside
def test_inside_the_only_opencl_device_is_rusticls_llvmpipe():
    import pyopencl as cl

    from wyoming_oww_rk3588.backends.opencl import OpenClFeatures

    devices = [(p.name, d.name) for p in cl.get_platforms() for d in p.get_devices()]
    assert len(devices) == 1 and devices[0][0] == "rusticl" and devices[0][1].startswith("llvmpipe"), devices
    backend = OpenClFeatures(device="any")
    assert backend.device.platform == "rusticl" and backend.device.version.startswith("OpenCL 3.0")
    assert not backend.device.is_gpu and not backend.device.fp16  # llvmpipe: a CPU, no cl_khr_fp16
    backend.close()


@inside
def test_inside_auto_leaves_llvmpipe_to_the_exact_cpu_path():
    from wyoming_oww_rk3588.backends.select import select_features

    backend, why = select_features("auto")
    assert backend.name == "cpu" and "no OpenCL GPU device (found only: llvmpipe" in why, why
    explicit, why = select_features("opencl")
    assert explicit.name == "opencl" and "rusticl" in why, why
    explicit.close()


# -- on the board: finding Panthor + rusticl (fake /dev and /sys trees; the ICD is not loaded) --

def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


PANTHOR = {"sys/class/drm/renderD128/device/uevent": "DRIVER=panthor\n", "dev/dri/renderD128": "",
           "etc/OpenCL/vendors/rusticl.icd": "libRusticlOpenCL.so.1\n"}


@outside
def test_rusticl_enable_is_set_to_panfrost_only_where_panthor_is_passed_in_and_the_user_set_none(tmp_path):
    from wyoming_oww_rk3588.backends.opencl_device import enable_rusticl_panfrost

    board = _tree(tmp_path / "board", PANTHOR)
    environ: dict[str, str] = {}
    assert enable_rusticl_panfrost(board, environ) and environ == {"RUSTICL_ENABLE": "panfrost"}
    environ = {"RUSTICL_ENABLE": "llvmpipe"}  # the user's choice stays
    assert not enable_rusticl_panfrost(board, environ) and environ == {"RUSTICL_ENABLE": "llvmpipe"}
    unpassed = _tree(tmp_path / "unpassed", {"sys/class/drm/renderD128/device/uevent": "DRIVER=panthor\n"})
    vendor = _tree(tmp_path / "vendor", {"dev/mali0": "", "sys/class/drm/renderD128/device/uevent": "DRIVER=rockchip-drm\n",
                                         "dev/dri/renderD128": ""})
    for root in (unpassed, vendor, tmp_path / "empty"):
        environ = {}
        assert not enable_rusticl_panfrost(root, environ) and environ == {}, root


@outside
@pytest.mark.parametrize("value, listed", [("panfrost", True), ("llvmpipe,panfrost", True), ("panfrost:0", True),
                                           ("llvmpipe", False), ("", False), (None, False), ("panfrostx", False)])
def test_rusticl_enable_values_that_list_panfrost(value, listed):
    from wyoming_oww_rk3588.backends.opencl_device import rusticl_enabled

    assert rusticl_enabled(value) is listed


@outside
def test_the_hint_when_no_gpu_answers_names_what_this_boards_stack_lacks(tmp_path):
    from wyoming_oww_rk3588.backends.opencl_device import GPU_HINT, gpu_hint

    board = _tree(tmp_path / "board", PANTHOR)
    assert "RUSTICL_ENABLE=panfrost" in gpu_hint(board, {"RUSTICL_ENABLE": "llvmpipe"})
    assert "does the node open" in gpu_hint(board, {"RUSTICL_ENABLE": "panfrost"})
    (board / "etc/OpenCL/vendors/rusticl.icd").unlink()
    assert "mesa-opencl-icd from Debian trixie" in gpu_hint(board, {})
    (board / "dev/dri/renderD128").unlink()
    assert gpu_hint(board, {}).endswith("docker run --device /dev/dri/renderD128")
    vendor = _tree(tmp_path / "vendor", {"sys/class/misc/mali0/dev": "10:123\n"})
    assert gpu_hint(vendor, {}).endswith("docker run --device /dev/mali0")
    _tree(vendor, {"dev/mali0": ""})
    assert "libmali ICD" in gpu_hint(vendor, {})
    assert gpu_hint(tmp_path / "pc", {}) == GPU_HINT and "/dev/mali0" in GPU_HINT and "renderD128" in GPU_HINT
