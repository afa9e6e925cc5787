"""The seed's Python API: `Model` and `AudioFeatures` behave like openWakeWord's."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from reference import CPU_TOLERANCE, first_exact_step, load_wav, oww_model, padded
from wyoming_oww_rk3588 import AudioFeatures, Model
from wyoming_oww_rk3588.models.registry import BUILTIN_DIR


@pytest.fixture(scope="module")
def oww_features():
    from openwakeword.utils import AudioFeatures as OwwFeatures

    return OwwFeatures(
        melspec_model_path=str(BUILTIN_DIR / "melspectrogram.onnx"),
        embedding_model_path=str(BUILTIN_DIR / "embedding_model.onnx"),
        inference_framework="onnx",
    )


def test_model_predict_matches_openwakeword_chunk_by_chunk():
    audio = padded(load_wav("hey_mycroft_test.wav"), 2.5, 1.0)
    ours = Model(wakeword_models=["hey_mycroft", "alexa"], inference_framework="cpu")
    ref = oww_model(["hey_mycroft_v0.1", "alexa_v0.1"])
    start = first_exact_step(16) - 1
    peak = 0.0
    for step, i in enumerate(range(0, len(audio), 1280)):
        a = ours.predict(audio[i : i + 1280])
        b = ref.predict(audio[i : i + 1280])
        assert set(a) == {"hey_mycroft", "alexa"}
        if step >= start:
            assert abs(a["hey_mycroft"] - b["hey_mycroft_v0.1"]) <= CPU_TOLERANCE
            assert abs(a["alexa"] - b["alexa_v0.1"]) <= CPU_TOLERANCE
        peak = max(peak, a["hey_mycroft"])
    assert peak > 0.5


@pytest.mark.parametrize("chunk", [320, 1000, 4000])
def test_peak_score_does_not_depend_on_chunk_size(chunk):
    audio = padded(load_wav("alexa_test.wav"), 1.0, 1.0)
    model = Model(wakeword_models=["alexa"], inference_framework="cpu")
    peak = max(model.predict(audio[i : i + chunk])["alexa"] for i in range(0, len(audio), chunk))
    model.reset()
    peak_1280 = max(model.predict(audio[i : i + 1280])["alexa"] for i in range(0, len(audio), 1280))
    assert peak == pytest.approx(peak_1280, abs=1e-6)
    assert peak > 0.5


def test_model_reports_and_logs_the_backends_that_run(caplog):
    with caplog.at_level(logging.INFO, logger="wyoming_oww_rk3588"):
        model = Model(wakeword_models=["alexa"], inference_framework="cpu")
    assert model.backends == {"features": "cpu", "heads": "cpu"}
    assert "features=cpu heads=cpu" in caplog.text


def test_rknn_framework_without_an_npu_falls_back_to_cpu_heads_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        model = Model(wakeword_models=["alexa"], inference_framework="rknn")
    assert model.backends["heads"] == "cpu"
    assert "rknn" in caplog.text.lower()


def test_unknown_framework_and_bad_options_fail_with_a_clear_error():
    with pytest.raises(ValueError, match="unknown inference_framework"):
        Model(inference_framework="cuda")
    with pytest.raises(ValueError, match=r"VAD threshold must be in \[0, 1\)"):
        Model(wakeword_models=["alexa"], inference_framework="cpu", vad_threshold=1.0)
    with pytest.raises(Exception, match="unknown wake word model"):
        Model(wakeword_models=["no_such_model"])


def test_default_model_lists_every_builtin_label():
    model = Model(inference_framework="cpu")
    scores = model.predict(np.zeros(1280, np.int16))
    assert {"alexa", "hey_jarvis", "hey_mycroft", "hey_rhasspy", "weather", "1_minute_timer"} <= set(scores)


def test_audiofeatures_one_shot_helpers_match_openwakeword(oww_features):
    ours = AudioFeatures(inference_framework="cpu")
    audio = padded(load_wav("alexa_test.wav"), 0.5, 0.5)
    np.testing.assert_allclose(ours._get_melspectrogram(audio), oww_features._get_melspectrogram(audio), atol=1e-4)
    np.testing.assert_allclose(ours._get_embeddings(audio), oww_features._get_embeddings(audio), atol=1e-4)
    batch = np.stack([audio[:16000], (audio[:16000] * 0.01).astype(np.int16), audio[-16000:]])
    ref = oww_features._get_melspectrogram_batch(batch, batch_size=2)
    np.testing.assert_allclose(ours._get_melspectrogram_batch(batch, batch_size=2), ref, atol=1e-4)
    np.testing.assert_allclose(
        ours._get_embeddings_batch(ref[:, :, :, None]), oww_features._get_embeddings_batch(ref[:, :, :, None]),
        atol=1e-4,
    )


def test_audiofeatures_streaming_matches_openwakeword_once_windows_hold_own_audio(oww_features):
    ours = AudioFeatures(inference_framework="cpu")
    oww_features.reset()
    audio = padded(load_wav("hey_jane.wav"), 1.0, 1.0)
    for i in range(0, len(audio), 1280):
        assert ours(audio[i : i + 1280]) == oww_features(audio[i : i + 1280]) == 1280
    own_steps = len(audio) // 1280 - 9
    np.testing.assert_allclose(
        ours.get_features(own_steps), oww_features.get_features(own_steps), atol=1e-4
    )
