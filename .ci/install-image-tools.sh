#!/usr/bin/env bash
# What building and running the images here takes (tests/test_image.py): Debian's
# docker.io (the test starts dockerd when none runs), docker-compose (checks docker-compose.yml), qemu-user-static with binfmt_misc (the
# aarch64 image's steps under emulation) and mmdebstrap (a stand-in for Home Assistant's base
# image when ghcr.io cannot be pulled). Only where it can work: root with apt. Idempotent;
# never fails the setup: without these the image tests skip and say what is missing.
set -uo pipefail
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-image-tools: needs root and apt-get; the image tests will skip" >&2
    exit 0
fi
packages=(docker.io docker-compose qemu-user-static binfmt-support mmdebstrap arch-test)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null; }; then
        echo "install-image-tools: apt could not install ${missing[*]}; the image tests will skip" >&2
        exit 0
    fi
fi
# binfmt_misc, where the kernel looks up qemu for aarch64 binaries; containers (and this
# machine's init) may not mount it.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null ||
        echo "install-image-tools: cannot mount binfmt_misc; the aarch64 image test will skip" >&2
fi
if [ -e /proc/sys/fs/binfmt_misc/register ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64 2>/dev/null ||
        echo "install-image-tools: cannot register qemu-aarch64 with binfmt_misc; the aarch64 image test will skip" >&2
fi
echo "install-image-tools: $(dockerd --version 2>/dev/null | cut -d, -f1), $(qemu-aarch64-static --version 2>/dev/null | head -1), mmdebstrap $(mmdebstrap --version 2>/dev/null | awk '{print $2}')"
exit 0
