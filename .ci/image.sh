#!/usr/bin/env bash
# Build this repository's images from its Dockerfile and run them; aarch64 runs under qemu-user on
# an x86 host (.ci/install-image-tools.sh). FLAVOR is one of
#   vendor    the plain Docker image for Rockchip's vendor kernel (target server, Debian bookworm)
#   mainline  the plain Docker image for mainline kernels (target server, STACK=mainline, trixie)
#   addon     the Home Assistant add-on (the last stage, built as the Supervisor does, from
#             Home Assistant's base image)
#
#   .ci/image.sh base  ARCH FLAVOR        the base image (the real one if pullable, else a stand-in)
#   .ci/image.sh build ARCH FLAVOR        build it; prints the tag, time and size
#   .ci/image.sh tag   ARCH FLAVOR        the tag `build` gives it
#   .ci/image.sh emulation-args ARCH      `docker run` arguments an emulated ARCH needs (one per line)
#   .ci/image.sh run   ARCH FLAVOR NAME CMD [ARG...]   CMD in it (host network), as container NAME
#
# ARCH is amd64 or aarch64. Where the real base cannot be pulled (no Docker Hub or ghcr.io), the
# stand-in is Debian of the same release from mmdebstrap with the host's CA bundle and pip trust
# settings (registries may sit behind a TLS proxy), cached as a Docker image. The stand-in for
# the add-on lacks s6-overlay and bashio: tests/test_addon_run.py covers those parts.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage="usage: $0 base|build|tag|run ARCH FLAVOR ... | emulation-args ARCH"
command="${1:?$usage}"
arch="${2:?$usage}"
shift 2
case "$arch" in
    amd64) debian_arch=amd64 ;;
    aarch64) debian_arch=arm64 ;;
    *) echo "image: ARCH must be amd64 or aarch64, not '$arch'" >&2; exit 2 ;;
esac
cache="${XDG_CACHE_HOME:-$HOME/.cache}/wyoming-oww-rk3588"

emulation_args() {
    if [ "$arch" = aarch64 ] && [ "$(uname -m)" != aarch64 ]; then
        # qemu-user (Debian's 7.2 and 10.0 alike) hands the guest the host's x86 /proc/cpuinfo;
        # onnxruntime's cpuinfo library then finds no ARM core and dereferences NULL at import
        # (SIGSEGV right after reading /sys/devices/system/cpu/*/cache). Show it Cortex-A76
        # cores (the RK3588's big core), as many as the host has.
        mkdir -p "$cache"
        local cpuinfo="$cache/cpuinfo-aarch64"
        for ((cpu = 0; cpu < $(nproc --all); cpu++)); do
            printf 'processor\t: %d\nBogoMIPS\t: 48.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' "$cpu"
        done >"$cpuinfo"
        printf '%s\n' -v "$cpuinfo:/proc/cpuinfo:ro"
    fi
}

if [ "$command" = emulation-args ]; then
    emulation_args
    exit 0
fi

flavor="${1:?$usage}"
shift
case "$flavor" in
    vendor) suite=bookworm; real="debian:bookworm-slim"; target=server; stack=vendor; image="local/wyoming-oww-rk3588:$arch" ;;
    mainline) suite=trixie; real="debian:trixie-slim"; target=server; stack=mainline; image="local/wyoming-oww-rk3588:$arch-mainline" ;;
    addon) suite=bookworm; real="ghcr.io/home-assistant/$arch-base-debian:bookworm"; target=addon; stack=vendor
           image="local/wyoming-oww-rk3588-addon:$arch" ;;
    *) echo "image: FLAVOR must be vendor, mainline or addon, not '$flavor'" >&2; exit 2 ;;
esac
if [ "$arch" = aarch64 ] && [ "$flavor" != addon ]; then
    real="arm64v8/$real"  # Docker Hub's per-arch repository: no --platform with the legacy builder
fi
standin="local/standin-debian-$suite:$arch"

base() {
    if docker image inspect "$real" >/dev/null 2>&1 || timeout 120 docker pull -q "$real" >/dev/null 2>&1; then
        echo "$real"
        return
    fi
    if ! docker image inspect "$standin" >/dev/null 2>&1; then
        command -v mmdebstrap >/dev/null || { echo "image: cannot pull $real and no mmdebstrap to make a stand-in (bash .ci/install-image-tools.sh)" >&2; exit 1; }
        mkdir -p "$cache"
        local start=$SECONDS tarball="$cache/standin-$suite-$arch.tar" hooks=()
        # The host's trust settings: its CA bundle (after ca-certificates has written its own)
        # and pip's config, so that apt and pip in the Dockerfile's steps reach the registries.
        hooks+=(--customize-hook="upload /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt")
        [ -f /etc/pip.conf ] && hooks+=(--customize-hook="upload /etc/pip.conf /etc/pip.conf")
        # Check-Valid-Until off: mirrors served from a snapshot have expired Release files.
        mmdebstrap --quiet --variant=minbase --arch="$debian_arch" --include=ca-certificates \
            --aptopt='Acquire::Check-Valid-Until "false"' "${hooks[@]}" "$suite" "$tarball" \
            "deb http://deb.debian.org/debian $suite main" \
            "deb http://deb.debian.org/debian $suite-updates main" \
            "deb http://deb.debian.org/debian-security $suite-security main" >&2
        docker import "$tarball" "$standin" >/dev/null
        rm -f "$tarball"
        echo "image: stand-in $standin made in $((SECONDS - start)) s" >&2
    fi
    echo "$standin"
}

case "$command" in
base)
    base
    ;;
tag)
    echo "$image"
    ;;
build)
    from="$(base)"
    start=$SECONDS
    # The legacy builder without --platform: dockerd 20.10 (Debian's) mislabels the arch of
    # intermediate images of a foreign-arch build; binfmt's qemu runs its RUN steps all the same.
    DOCKER_BUILDKIT=0 docker build --network host --target "$target" --build-arg "BUILD_FROM=$from" \
        --build-arg "BUILD_ARCH=$arch" --build-arg "STACK=$stack" -t "$image" "$repo" >&2
    size=$(docker image inspect "$image" --format '{{.Size}}')
    echo "image: $image built from $from in $((SECONDS - start)) s, $((size / 1000000)) MB"
    ;;
run)
    name="${1:?usage: $0 run ARCH FLAVOR NAME CMD [ARG...]}"
    entry="${2:?usage: $0 run ARCH FLAVOR NAME CMD [ARG...]}"
    shift 2
    mapfile -t extra < <(emulation_args)
    # --init: Docker's own (native) init reaps and forwards signals; --ulimit core=0: qemu-user
    # writes the whole guest address space as a core file on a crash, which takes many minutes.
    exec docker run --rm --init --name "$name" --network host --ulimit core=0 "${extra[@]}" \
        --entrypoint "$entry" "$image" "$@"
    ;;
*)
    echo "image: unknown command '$command' (base, build, tag, run or emulation-args)" >&2
    exit 2
    ;;
esac
