#!/usr/bin/env bash
# Install rknn-toolkit2 (the RKNN converter and x86 simulator) into its own venv:
# `.ci/install-rknn.sh` gives 2.5.0 in .venv-rknn, `.ci/install-rknn.sh 2.3.2` gives 2.3.2 in
# .venv-rknn-2.3.2 (the built-in heads ship one set per runtime release, each made by its own
# toolkit). Its pins (numpy<=1.26.4, onnx<=1.18, protobuf<=4.25.4) clash with the runtime's, so it
# never shares the main venv; the runtime talks to it only through a subprocess. Idempotent.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
toolkit_version="2.5.0"
requested="${1:-$toolkit_version}"
if [ "$requested" = "$toolkit_version" ]; then
    venv="${RKNN_VENV:-$repo/.venv-rknn}"
else
    venv="${RKNN_VENV:-$repo/.venv-rknn-$requested}"
fi
toolkit_version="$requested"
python="${RKNN_BASE_PYTHON:-python3.11}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$toolkit_version" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
assert version("rknn-toolkit2") == sys.argv[1]
from rknn.api import RKNN  # noqa: F401 - also proves torch, onnx and pkg_resources import
PY
then
    echo "install-rknn: rknn-toolkit2 $toolkit_version already in $venv"
    exit 0
fi

start=$SECONDS
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
# --no-deps: the wheel's own requirements list pulls a CUDA torch (about 4 GB); these are
# the packages it actually imports, under the pins it was built against.
"${pip[@]}" --no-deps "rknn-toolkit2==$toolkit_version"
"${pip[@]}" "numpy<=1.26.4" "onnx<=1.18" onnxruntime "protobuf<=4.25.4" scipy psutil \
    ruamel.yaml tqdm fast-histogram opencv-python-headless "setuptools<70"
# The CPU wheel of exactly this version is on the CI machines' find-links; any other
# version resolves to a CUDA build.
"${pip[@]}" "torch==2.13.0"
# pip then complains that rknn-toolkit2 wants torch<=2.4 and opencv-python: expected, the
# toolkit runs with CPU torch 2.13 and headless OpenCV (checked by the import below and CI).
# torch's install drops pkg_resources, which rknn.api imports: put setuptools<70 back.
"${pip[@]}" --force-reinstall --no-deps "setuptools<70"
"$venv/bin/python" -c "from rknn.api import RKNN" >/dev/null
echo "install-rknn: rknn-toolkit2 $toolkit_version installed in $venv in $((SECONDS - start)) s"
