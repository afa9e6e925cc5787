#!/usr/bin/env bash
# Install an OpenCL runtime for tests and CI: the ICD loader, PoCL (a CPU OpenCL device) and
# PyOpenCL in .venv. Debian's pocl-opencl-icd works on these machines; PyPI's pyopencl[pocl]
# build does not (its LLVM rejects this CPU), so PoCL comes from apt. Idempotent.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${OPENCL_VENV_PYTHON:-$repo/.venv/bin/python}"

packages=(ocl-icd-libopencl1 pocl-opencl-icd)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! "$python" -c "import pyopencl" 2>/dev/null; then
    "$python" -m pip install --quiet --disable-pip-version-check "pyopencl>=2024.1"
fi

# Prove it: at least one platform with one device (PoCL's CPU device here).
"$python" - <<'PY'
import pyopencl as cl

devices = [f"{d.name.strip()} ({p.name.strip()})" for p in cl.get_platforms() for d in p.get_devices()]
assert devices, "no OpenCL device after install"
print("install-opencl: OpenCL devices:", "; ".join(devices))
PY
