"""Speex noise suppression gives openWakeWord 0.6.0's results (same speexdsp-ns binding), per
stream; without the binding, a one-line error that says what to install."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
from reference import (
    AUDIO_DIR,
    CPU_TOLERANCE,
    NOISES,
    engine_scores,
    first_exact_step,
    noisy,
    oww_model,
)
from test_vad import HEADS, oww_run

from wyoming_oww_rk3588.cli import parse_settings
from wyoming_oww_rk3588.denoise import NoiseSuppressor, speex_factory
from wyoming_oww_rk3588.detector import DetectorConfig
from wyoming_oww_rk3588.engine import Engine
from wyoming_oww_rk3588.errors import BackendUnavailable
from wyoming_oww_rk3588.features import FRAME_SAMPLES

CLIPS = sorted(p.name for p in AUDIO_DIR.glob("*.wav"))


def _speex_or_skip():
    try:
        return speex_factory()
    except BackendUnavailable as err:
        pytest.skip(f"speexdsp-ns cannot be installed here ({err}); bash .ci/install-speex.sh installs it")


def _worst(engine: Engine, ours: list[dict], ref: list[dict]) -> float:
    assert len(ours) == len(ref)
    worst = 0.0
    for name in HEADS:
        info = engine.registry.resolve(name)
        start = first_exact_step(info.window) - 1
        for label in info.labels:
            a = np.array([s[label] for s in ours[start:]])
            b = np.array([s[label] for s in ref[start:]])
            worst = max(worst, float(np.max(np.abs(a - b))))
    return worst


def test_denoised_audio_is_bit_identical_to_openwakewords_step_by_step():
    factory = _speex_or_skip()
    audio = noisy("hey_jarvis.wav", "white", 11)
    ours = NoiseSuppressor(factory)
    ref = oww_model(["alexa_v0.1"], enable_speex_noise_suppression=True)
    changed = 0
    for i in range(0, len(audio) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        frame = audio[i : i + FRAME_SAMPLES]
        cleaned = ours.process(frame)
        np.testing.assert_array_equal(cleaned, ref._suppress_noise_with_speex(frame))
        changed += int(np.any(cleaned != frame))
    assert changed > 10  # it really suppresses


def test_scores_match_openwakeword_with_noise_suppression_for_a_batch_of_noisy_streams():
    _speex_or_skip()
    engine = Engine(features_backend="cpu", heads_backend="cpu", noise_suppression=True)
    audios = [noisy(clip, NOISES[i % len(NOISES)], 20 + i) for i, clip in enumerate(CLIPS)]
    for audio, ours in zip(audios, engine_scores(engine, audios, HEADS)):
        ref, _ = oww_run(audio, enable_speex_noise_suppression=True)
        assert _worst(engine, ours, ref) <= CPU_TOLERANCE


def test_noise_suppression_changes_the_scores_it_should():
    _speex_or_skip()
    audio = noisy("alexa_test.wav", "white", 5)
    on = engine_scores(Engine(features_backend="cpu", heads_backend="cpu", noise_suppression=True), [audio], HEADS)[0]
    off = engine_scores(Engine(features_backend="cpu", heads_backend="cpu"), [audio], HEADS)[0]
    assert max(abs(a["alexa"] - b["alexa"]) for a, b in zip(on, off)) > 0.05


def test_vad_hears_the_raw_audio_while_features_hear_the_denoised_audio_as_in_openwakeword():
    _speex_or_skip()
    engine = Engine(features_backend="cpu", heads_backend="cpu", noise_suppression=True,
                    detector=DetectorConfig(vad_threshold=0.5))
    audios = [noisy("hey_mycroft_test.wav", "babble", 2), noisy("okay_nabu.wav", "hum", 3)]
    for audio, ours in zip(audios, engine_scores(engine, audios, HEADS)):
        ref, _ = oww_run(audio, vad_threshold=0.5, enable_speex_noise_suppression=True)
        assert _worst(engine, ours, ref) <= CPU_TOLERANCE


def test_each_stream_has_its_own_suppressor():
    _speex_or_skip()
    engine = Engine(features_backend="cpu", heads_backend="cpu", noise_suppression=True)
    models = [("alexa", engine.registry.resolve("alexa"))]
    a, b = engine.open_stream(models), engine.open_stream(models)
    assert a.denoiser is not b.denoiser
    loud = noisy("alexa_test.wav", "white", 1)
    alone = engine.open_stream(models)
    for i in range(0, len(loud), FRAME_SAMPLES):
        a.add_samples(loud[i : i + FRAME_SAMPLES])
        b.add_samples(np.zeros(FRAME_SAMPLES, np.int16))
        alone.add_samples(loud[i : i + FRAME_SAMPLES])
        engine.process([a, b])
        engine.process([alone])
        assert a.scores == alone.scores  # b's audio never leaks into a's suppressor


def test_without_the_binding_engine_and_model_say_what_to_install(monkeypatch):
    from wyoming_oww_rk3588 import Model

    monkeypatch.setitem(sys.modules, "speexdsp_ns", None)  # import fails as on an arch without a wheel
    for make in (lambda: Engine(features_backend="cpu", heads_backend="cpu", noise_suppression=True),
                 lambda: Model(["alexa"], inference_framework="cpu", enable_speex_noise_suppression=True)):
        with pytest.raises(BackendUnavailable, match=r"pip install 'wyoming-oww-rk3588\[speex\]'") as err:
            make()
        assert "\n" not in str(err.value)


def test_without_the_binding_the_server_does_not_start_and_logs_one_line(monkeypatch, caplog):
    from wyoming_oww_rk3588.server import run

    monkeypatch.setitem(sys.modules, "speexdsp_ns", None)
    settings = parse_settings(["--noise-suppression", "--features-backend", "cpu", "--heads-backend", "cpu",
                               "--uri", "tcp://127.0.0.1:0"])
    with caplog.at_level(logging.ERROR):
        assert run(settings) == 2
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage().startswith("Cannot start: noise suppression needs the speexdsp-ns package")
    assert "speex" in record.getMessage() and "\n" not in record.getMessage()
