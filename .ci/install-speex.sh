#!/usr/bin/env bash
# The speexdsp noise suppression binding openWakeWord 0.6.0 imports (speexdsp-ns, the same one
# the `speex` extra names), into .venv, so the noise suppression tests compare against the real
# package. Its wheels (cp311/cp312, manylinux_2_28 x86_64 and aarch64) bundle libspeexdsp: no
# compiler needed. Idempotent; never fails the setup: without it those tests skip and say why.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 0
python=".venv/bin/python"
if ! "$python" -c "import speexdsp_ns" 2>/dev/null; then
    if ! "$python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: "speexdsp-ns==0.1.2"; then
        echo "install-speex: speexdsp-ns has no wheel for this Python/arch; the noise suppression tests will skip" >&2
        exit 0
    fi
fi
"$python" -c "from speexdsp_ns import NoiseSuppression; NoiseSuppression.create(160, 16000); print('install-speex: speexdsp-ns ready')"
exit 0
