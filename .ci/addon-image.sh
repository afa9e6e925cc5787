#!/usr/bin/env bash
# Build the add-on image from this repository's Dockerfile the way Home Assistant's Supervisor
# does (BUILD_FROM/BUILD_ARCH), on a stand-in base where ghcr.io/home-assistant cannot be pulled,
# and run commands in it; aarch64 runs under qemu-user on an x86 host (.ci/install-image-tools.sh).
#
#   .ci/addon-image.sh base  ARCH          the base image (HA's if pullable, else a stand-in)
#   .ci/addon-image.sh build ARCH          the add-on image local/wyoming-oww-rk3588-addon:ARCH
#   .ci/addon-image.sh run   ARCH NAME CMD [ARG...]   CMD in it (host network), as container NAME
#
# ARCH is amd64 or aarch64. The stand-in is Debian bookworm from mmdebstrap with the host's CA
# bundle and pip trust settings (registries may sit behind a TLS proxy), cached as a Docker image.
# It lacks s6-overlay and bashio: tests/test_addon_run.py covers those parts.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command="${1:?usage: $0 base|build|run ARCH ...}"
arch="${2:?usage: $0 $command amd64|aarch64 ...}"
shift 2
case "$arch" in
    amd64) debian_arch=amd64 ;;
    aarch64) debian_arch=arm64 ;;
    *) echo "addon-image: ARCH must be amd64 or aarch64, not '$arch'" >&2; exit 2 ;;
esac
ha_base="ghcr.io/home-assistant/$arch-base-debian:bookworm"
standin="local/standin-base-debian:$arch"
image="local/wyoming-oww-rk3588-addon:$arch"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/wyoming-oww-rk3588"

base() {
    if docker image inspect "$ha_base" >/dev/null 2>&1 || timeout 120 docker pull -q "$ha_base" >/dev/null 2>&1; then
        echo "$ha_base"
        return
    fi
    if ! docker image inspect "$standin" >/dev/null 2>&1; then
        command -v mmdebstrap >/dev/null || { echo "addon-image: cannot pull $ha_base and no mmdebstrap to make a stand-in (bash .ci/install-image-tools.sh)" >&2; exit 1; }
        mkdir -p "$cache"
        local start=$SECONDS tarball="$cache/standin-$arch.tar" hooks=()
        # The host's trust settings: its CA bundle (after ca-certificates has written its own)
        # and pip's config, so that apt and pip in the Dockerfile's steps reach the registries.
        hooks+=(--customize-hook="upload /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt")
        [ -f /etc/pip.conf ] && hooks+=(--customize-hook="upload /etc/pip.conf /etc/pip.conf")
        # Check-Valid-Until off: mirrors served from a snapshot have expired Release files.
        mmdebstrap --quiet --variant=minbase --arch="$debian_arch" --include=ca-certificates \
            --aptopt='Acquire::Check-Valid-Until "false"' "${hooks[@]}" bookworm "$tarball" \
            "deb http://deb.debian.org/debian bookworm main" \
            "deb http://deb.debian.org/debian bookworm-updates main" \
            "deb http://deb.debian.org/debian-security bookworm-security main" >&2
        docker import "$tarball" "$standin" >/dev/null
        rm -f "$tarball"
        echo "addon-image: stand-in $standin made in $((SECONDS - start)) s" >&2
    fi
    echo "$standin"
}

case "$command" in
base)
    base
    ;;
build)
    from="$(base)"
    start=$SECONDS
    # The legacy builder without --platform: dockerd 20.10 (Debian's) mislabels the arch of
    # intermediate images of a foreign-arch build; binfmt's qemu runs its RUN steps all the same.
    DOCKER_BUILDKIT=0 docker build --network host --build-arg "BUILD_FROM=$from" \
        --build-arg "BUILD_ARCH=$arch" -t "$image" "$repo" >&2
    size=$(docker image inspect "$image" --format '{{.Size}}')
    echo "addon-image: $image built from $from in $((SECONDS - start)) s, $((size / 1000000)) MB"
    ;;
run)
    name="${1:?usage: $0 run ARCH NAME CMD [ARG...]}"
    entry="${2:?usage: $0 run ARCH NAME CMD [ARG...]}"
    shift 2
    extra=()
    if [ "$arch" = aarch64 ] && [ "$(uname -m)" != aarch64 ]; then
        # qemu-user (Debian's 7.2 and 10.0 alike) hands the guest the host's x86 /proc/cpuinfo;
        # onnxruntime's cpuinfo library then finds no ARM core and dereferences NULL at import
        # (SIGSEGV right after reading /sys/devices/system/cpu/*/cache). Show it Cortex-A76
        # cores (the RK3588's big core), as many as the host has.
        mkdir -p "$cache"
        cpuinfo="$cache/cpuinfo-aarch64"
        for ((cpu = 0; cpu < $(nproc --all); cpu++)); do
            printf 'processor\t: %d\nBogoMIPS\t: 48.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' "$cpu"
        done >"$cpuinfo"
        extra+=(-v "$cpuinfo:/proc/cpuinfo:ro")
    fi
    # --init: Docker's own (native) init reaps and forwards signals; --ulimit core=0: qemu-user
    # writes the whole guest address space as a core file on a crash, which takes many minutes.
    exec docker run --rm --init --name "$name" --network host --ulimit core=0 "${extra[@]}" \
        --entrypoint "$entry" "$image" "$@"
    ;;
*)
    echo "addon-image: unknown command '$command' (base, build or run)" >&2
    exit 2
    ;;
esac
