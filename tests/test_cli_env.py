"""Every option as an OWW_* environment variable (the plain Docker image and docker-compose.yml
configure the server that way): the same parsing and checks as the flag, a flag on the command
line wins, and a bad or unknown variable stops the server with one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wyoming_oww_rk3588.cli import build_parser, env_name, parse_settings


def test_every_option_has_a_variable_and_each_sets_what_its_flag_sets():
    env = {
        "OWW_URI": "tcp://127.0.0.1:10555", "OWW_THRESHOLD": "0.6", "OWW_TRIGGER_LEVEL": "2",
        "OWW_PRELOAD_MODEL": "okay_nabu, alexa", "OWW_MODEL_THRESHOLD": "alexa=0.7,okay_nabu=0.4",
        "OWW_CUSTOM_MODEL_DIR": "/data/models", "OWW_NOISE_SUPPRESSION": "true", "OWW_DEBUG": "0",
        "OWW_FEATURES_BACKEND": "cpu", "OWW_NPU_CORE_MASK": "0_1", "OWW_BATCH_WINDOW_MS": "0",
        "OWW_ZEROCONF": "yes", "PATH": "/usr/bin",  # others are not ours: ignored
    }
    settings = parse_settings([], env)
    flags = parse_settings(["--uri", "tcp://127.0.0.1:10555", "--threshold", "0.6", "--trigger-level", "2",
                            "--preload-model", "okay_nabu", "--preload-model", "alexa",
                            "--model-threshold", "alexa=0.7", "--model-threshold", "okay_nabu=0.4",
                            "--custom-model-dir", "/data/models", "--noise-suppression", "--features-backend", "cpu",
                            "--npu-core-mask", "0_1", "--batch-window-ms", "0", "--zeroconf"], {})
    assert settings == flags
    assert settings.custom_model_dirs == (Path("/data/models"),) and settings.zeroconf == "openWakeWord-rk3588"
    documented = {env_name(a) for a in build_parser()._actions if a.option_strings and a.dest not in ("help", "version")}
    assert {"OWW_THRESHOLD", "OWW_ZEROCONF", "OWW_RKNN_CACHE_DIR", "OWW_VAD_THRESHOLD"} <= documented


def test_a_flag_wins_over_its_variable_and_zeroconf_takes_a_name():
    settings = parse_settings(["--threshold", "0.3"], {"OWW_THRESHOLD": "0.6", "OWW_ZEROCONF": "Kitchen wake"})
    assert settings.threshold == 0.3 and settings.zeroconf == "Kitchen wake"
    assert parse_settings([], {"OWW_ZEROCONF": "false", "OWW_NOISE_SUPPRESSION": ""}).zeroconf is None


@pytest.mark.parametrize("name,value,says", [
    ("OWW_THRESHOLD", "high", "OWW_THRESHOLD='high': 'high' is not a number"),
    ("OWW_HEADS_BACKEND", "gpu", "OWW_HEADS_BACKEND='gpu': use one of auto, cpu, rknn, tflite"),
    ("OWW_DEBUG", "maybe", "OWW_DEBUG='maybe': use true or false"),
    ("OWW_MODEL_THRESHOLD", "alexa", "OWW_MODEL_THRESHOLD='alexa': 'alexa' is not NAME=THRESHOLD"),
    ("OWW_THRESHHOLD", "0.5", "environment variable OWW_THRESHHOLD is not an option; the options are OWW_"),
])
def test_a_bad_variable_stops_the_server_with_one_line_naming_it(name, value, says):
    env = {**os.environ, name: value}
    done = subprocess.run([sys.executable, "-m", "wyoming_oww_rk3588", "--version"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
