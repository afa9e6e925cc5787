#!/usr/bin/env bash
# Home Assistant 2025.4.4 (its wyoming integration and assist pipeline) in .venv-ha, for the test
# that drives the server through Home Assistant's own wake word code
# (tests/test_home_assistant_path.py). Home Assistant 2025.x needs Python 3.13: the first
# python3.13 found (PATH, then pyenv) makes the venv. Idempotent; never fails the setup:
# without it that test skips and says why.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 0
venv=.venv-ha
if "$venv/bin/python" -c "import homeassistant.components.wyoming.wake_word" 2>/dev/null; then
    echo "install-ha: Home Assistant ready in $venv"
    exit 0
fi
python=""
for candidate in python3.13 "$HOME/.pyenv/versions/"3.13*/bin/python3.13; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; assert sys.version_info >= (3, 13)' 2>/dev/null; then
        python="$(command -v "$candidate")"
        break
    fi
done
if [ -z "$python" ]; then
    echo "install-ha: no Python 3.13 here; the Home Assistant path test will skip" >&2
    exit 0
fi
rm -rf "$venv"
if ! { "$python" -m venv "$venv" &&
       "$venv/bin/pip" install --quiet --disable-pip-version-check "homeassistant==2025.4.4" "wyoming==1.7.1" "numpy<3"; }; then
    echo "install-ha: Home Assistant did not install; the Home Assistant path test will skip" >&2
    exit 0
fi
"$venv/bin/python" -c "import homeassistant.components.wyoming.wake_word; print('install-ha: Home Assistant 2025.4.4 ready in $venv')" \
    || echo "install-ha: Home Assistant installed but its wyoming integration does not import; the test will skip" >&2
exit 0
