#!/usr/bin/env bash
# Mesa's rusticl, the OpenCL front end of mainline-kernel RK3588 boards (Panthor + panfrost), here
# on llvmpipe (the CPU) for tests/test_opencl_rusticl.py: a Debian trixie root filesystem made by
# mmdebstrap (as the image scripts in .ci/ make their stand-in base: the host's CA bundle,
# Check-Valid-Until off; a directory and chroot here, so no Docker daemon is needed),
# with mesa-opencl-icd (rusticl is in trixie's Mesa, not bookworm's) and a Python 3.13 venv of what
# the OpenCL exactness tests import, the reference openWakeWord 0.6.0 among it (--no-deps, as in
# script/setup). Wheels come through the host's pip (its index settings), then install offline.
#
#   .ci/install-rusticl.sh               make it, once (cached; made again when its recipe changes)
#   .ci/install-rusticl.sh run CMD [ARG...]   CMD in it: the repository read-only at /repo, the
#                                        host's /proc, /sys, /dev, a fresh /tmp, rusticl's llvmpipe
#                                        device as the only OpenCL device
#
# Needs root (mount namespace, chroot) and mmdebstrap (.ci/install-image-tools.sh installs it).
# Making it never fails the setup: without it the test skips and says what is missing.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/wyoming-oww-rk3588"
rootfs="$cache/rusticl-trixie"
# The rootfs's own environment: nothing of the host's (PIP_*, proxies, PYOPENCL_CTX) leaks in.
# OCL_ICD_VENDORS names the one ICD, so no other OpenCL platform can answer.
environment=(HOME=/root PATH=/opt/venv/bin:/usr/bin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/repo
             OCL_ICD_VENDORS=/etc/OpenCL/vendors/rusticl.icd RUSTICL_ENABLE=llvmpipe)
packages=ca-certificates,python3,python3-venv,ocl-icd-libopencl1,mesa-opencl-icd,clinfo
requirements=(numpy onnxruntime onnx pyopencl "wyoming<2" zeroconf pytest pytest-timeout
              tqdm requests scipy scikit-learn)
# The cache key: a changed recipe (suite, packages, requirements) makes a new root filesystem.
recipe=1
key="trixie $recipe $packages ${requirements[*]}"

log="$cache/install-rusticl.log"
say() { echo "install-rusticl: $*" >&2; }
# A failed step: its last log lines, then what it means.
failed() {
    tail -n 15 "$log" >&2
    say "$1 (log: $log); the rusticl test will skip"
    rm -rf "$rootfs.tmp"
    return 1
}

# CMD in ROOT with the mounts above, in a private mount namespace (nothing leaks to the host).
in_root() {
    local root="$1"
    shift
    # shellcheck disable=SC2016  # $1, $2, $@ are the inner shell's
    unshare --mount --propagation private --fork -- /bin/sh -c '
        set -e
        root="$1"; repo="$2"; shift 2
        mount -t proc proc "$root/proc"
        mount --rbind /sys "$root/sys"
        mount --rbind /dev "$root/dev"
        mount -t tmpfs tmpfs "$root/tmp"
        mkdir -p "$root/repo"
        mount --bind "$repo" "$root/repo"
        mount -o remount,bind,ro "$root/repo"
        exec chroot "$root" /usr/bin/env -i "$@"' sh "$root" "$repo" "${environment[@]}" "$@"
}

missing() {
    [ "$(id -u)" -eq 0 ] || { echo "needs root (a mount namespace and chroot)"; return; }
    command -v unshare >/dev/null || { echo "no unshare (util-linux)"; return; }
    command -v mmdebstrap >/dev/null || { echo "no mmdebstrap (bash .ci/install-image-tools.sh installs it)"; return; }
}

ready() { [ "$(cat "$rootfs/.ready" 2>/dev/null)" = "$key" ]; }

build() {
    local start=$SECONDS tmp="$rootfs.tmp" python arch hooks=()
    arch="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
    rm -rf "$tmp"
    mkdir -p "$cache"
    : >"$log"
    hooks+=(--customize-hook="upload /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt")
    # Check-Valid-Until off: mirrors served from a snapshot have expired Release files.
    if ! mmdebstrap --quiet --variant=minbase --arch="$arch" --include="$packages" \
            --aptopt='Acquire::Check-Valid-Until "false"' "${hooks[@]}" trixie "$tmp" \
            "deb http://deb.debian.org/debian trixie main" \
            "deb http://deb.debian.org/debian trixie-updates main" \
            "deb http://deb.debian.org/debian-security trixie-security main" >>"$log" 2>&1; then
        failed "mmdebstrap could not make a trixie root filesystem (no Debian mirror?)"
        return 1
    fi
    # cp313 wheels fetched by the host's pip (whatever index and trust it is set up with).
    python="$repo/.venv/bin/python"
    [ -x "$python" ] || python=python3
    local wheels="$tmp/var/cache/wheels" platforms=()
    case "$arch" in
        amd64) platforms=(--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64) ;;
        arm64) platforms=(--platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64) ;;
    esac
    if ! { "$python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
               --python-version 3.13 --implementation cp "${platforms[@]}" -d "$wheels" "${requirements[@]}" &&
           "$python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
               -d "$wheels" openwakeword==0.6.0; } >>"$log" 2>&1; then
        failed "pip could not fetch the Python 3.13 wheels"
        return 1
    fi
    if ! in_root "$tmp" /bin/sh -c "python3 -m venv /opt/venv &&
            pip install --quiet --no-index --find-links /var/cache/wheels ${requirements[*]@Q} &&
            pip install --quiet --no-index --find-links /var/cache/wheels --no-deps openwakeword==0.6.0" >>"$log" 2>&1; then
        failed "the venv in the trixie root filesystem did not install"
        return 1
    fi
    rm -rf "$wheels"
    echo "$key" >"$tmp/.ready"
    rm -rf "$rootfs"
    mv "$tmp" "$rootfs"
    say "trixie + rusticl made in $((SECONDS - start)) s ($(du -sm "$rootfs" | cut -f1) MB in $rootfs)"
}

if [ "${1:-}" = run ]; then
    shift
    why="$(missing)"
    [ -z "$why" ] || { say "cannot run: $why"; exit 3; }
    ready || { say "not made yet (bash .ci/install-rusticl.sh)"; exit 3; }
    in_root "$rootfs" "$@"
    exit
fi

why="$(missing)"
if [ -n "$why" ]; then
    say "$why; the rusticl test will skip"
    exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/install-rusticl.lock"
flock 9  # setup and a test run may both ask for it: one makes it, the other waits and reuses it
ready || build || exit 0
# Prove it: rusticl lists llvmpipe, and PyOpenCL in the venv sees it.
in_root "$rootfs" python -c "
import pyopencl as cl
found = [f'{d.name} ({p.name}, {p.version})' for p in cl.get_platforms() for d in p.get_devices()]
print('install-rusticl: OpenCL devices:', '; '.join(found))" ||
    say "made, but no OpenCL device answers in it; the rusticl test will say why"
exit 0
