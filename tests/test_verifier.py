"""Custom verifiers: trained by openWakeWord 0.6.0, converted to .verifier.npz without running
the pickle's code, and applied per frame as openWakeWord applies them."""

from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import pytest

from reference import AUDIO_DIR, CPU_TOLERANCE, first_exact_step, load_wav, noisy, oww_model, padded
from wyoming_oww_rk3588 import Model
from wyoming_oww_rk3588.cli import parse_settings
from wyoming_oww_rk3588.errors import ModelError
from wyoming_oww_rk3588.features import FRAME_SAMPLES
from wyoming_oww_rk3588.models.registry import BUILTIN_DIR
from wyoming_oww_rk3588.verifier import load_verifier, main, verifier_from_pickle

NEGATIVE_CLIPS = ["hey_jane.wav", "hey_mycroft_test.wav", "hey_jarvis.wav"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(openWakeWord's pickle, our converted file) for an `alexa` verifier trained by the real package."""
    from openwakeword.custom_verifier_model import train_custom_verifier

    folder = tmp_path_factory.mktemp("verifier")
    np.random.seed(0)  # train_custom_verifier shifts the positive clips by np.random offsets
    train_custom_verifier(
        positive_reference_clips=[str(AUDIO_DIR / "alexa_test.wav")],
        negative_reference_clips=[str(AUDIO_DIR / name) for name in NEGATIVE_CLIPS],
        output_path=str(folder / "alexa_verifier.pkl"),
        model_name=str(BUILTIN_DIR / "alexa_v0.1.onnx"),
        inference_framework="onnx",
        melspec_model_path=str(BUILTIN_DIR / "melspectrogram.onnx"),
        embedding_model_path=str(BUILTIN_DIR / "embedding_model.onnx"),
    )
    assert main(["convert", str(folder / "alexa_verifier.pkl"), str(folder / "alexa.verifier.npz")]) == 0
    return folder / "alexa_verifier.pkl", folder / "alexa.verifier.npz"


AUDIOS = {
    "alexa": lambda: padded(load_wav("alexa_test.wav"), 2.5, 2.0),
    "alexa+white": lambda: noisy("alexa_test.wav", "white", 4),
    "alexa+babble": lambda: noisy("alexa_test.wav", "babble", 5),
    "hey_jane+hum": lambda: noisy("hey_jane.wav", "hum", 6),
    "okay_nabu": lambda: padded(load_wav("okay_nabu.wav"), 2.5, 1.0),
}


@pytest.mark.parametrize("case", list(AUDIOS))
def test_scores_match_openwakeword_with_the_same_verifier_per_frame(trained, case):
    pkl, npz = trained
    audio = AUDIOS[case]()
    ref = oww_model(["alexa_v0.1", "hey_mycroft_v0.1"], custom_verifier_models={"alexa_v0.1": str(pkl)})
    ours = Model(["alexa", "hey_mycroft"], inference_framework="cpu", custom_verifier_models={"alexa_v0.1": npz})
    plain = Model(["alexa"], inference_framework="cpu")
    start = first_exact_step(16) - 1
    verified = 0
    for step, i in enumerate(range(0, len(audio) - FRAME_SAMPLES + 1, FRAME_SAMPLES)):
        chunk = audio[i : i + FRAME_SAMPLES]
        a, b, raw = ours.predict(chunk), ref.predict(chunk), plain.predict(chunk)["alexa"]
        if step >= start:
            assert abs(a["alexa"] - b["alexa_v0.1"]) <= CPU_TOLERANCE, step
            assert abs(a["hey_mycroft"] - b["hey_mycroft_v0.1"]) <= CPU_TOLERANCE, step  # no verifier: untouched
            verified += raw >= 0.1 and abs(a["alexa"] - raw) > 1e-3
    if case.startswith("alexa"):
        assert verified > 0  # the verifier really re-scored frames


def test_verifier_probability_equals_scikit_learns_on_real_embeddings(trained):
    pkl, npz = trained
    from wyoming_oww_rk3588 import AudioFeatures

    embeddings = AudioFeatures(inference_framework="cpu")._get_embeddings(noisy("alexa_test.wav", "white", 9))
    windows = np.stack([embeddings[i : i + 16] for i in range(len(embeddings) - 15)]).astype(np.float32)
    with open(pkl, "rb") as handle:
        pipeline = pickle.load(handle)  # the test's own file: the real scikit-learn as the reference
    expected = np.array([pipeline.predict_proba(w[None])[0][-1] for w in windows])
    assert np.max(np.abs(load_verifier(npz).probability(windows) - expected)) <= 1e-6


def test_a_pipeline_without_standard_scaler_converts_too(tmp_path):
    from openwakeword.custom_verifier_model import flatten_features
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (40, 22, 96)).astype(np.float32)
    pipeline = make_pipeline(FunctionTransformer(flatten_features), LogisticRegression(max_iter=500))
    pipeline.fit(x, np.arange(40) % 2)
    path = tmp_path / "timer.pkl"
    path.write_bytes(pickle.dumps(pipeline, protocol=5))
    verifier = verifier_from_pickle(path)
    expected = np.array([pipeline.predict_proba(w[None])[0][-1] for w in x])
    assert verifier.window == 22
    assert np.max(np.abs(verifier.probability(x) - expected)) <= 1e-9


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_the_converter_refuses_a_pickle_that_would_run_code_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Exploit()))
    assert main(["convert", "evil.pkl", "out.verifier.npz"]) == 2
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out.verifier.npz").exists()


def test_the_converter_refuses_other_scikit_learn_models(tmp_path, capsys):
    from sklearn.preprocessing import StandardScaler

    (tmp_path / "scaler.pkl").write_bytes(pickle.dumps(StandardScaler().fit(np.ones((3, 96)))))
    assert main(["convert", str(tmp_path / "scaler.pkl"), str(tmp_path / "x.verifier.npz")]) == 2
    assert "expected openWakeWord's pipeline" in capsys.readouterr().err


def test_run_time_loading_never_unpickles_and_says_how_to_convert(trained, tmp_path):
    pkl, _ = trained
    with pytest.raises(ModelError, match="never loaded at run time; convert it with"):
        load_verifier(pkl)
    renamed = tmp_path / "sneaky.verifier.npz"
    renamed.write_bytes(pkl.read_bytes())
    with pytest.raises(ModelError, match="not a verifier file"):
        load_verifier(renamed)
    with pytest.raises(ModelError, match="pickled verifier"):
        Model(["alexa"], inference_framework="cpu", custom_verifier_models={"alexa": pkl})


def test_a_verifier_for_a_model_that_is_not_loaded_or_of_another_window_is_refused(trained):
    _, npz = trained
    with pytest.raises(ModelError, match="matches no loaded model"):
        Model(["alexa"], inference_framework="cpu", custom_verifier_models={"hey_mycroft": npz})
    with pytest.raises(ModelError, match="16 embeddings but model timer has a"):
        Model(["timer"], inference_framework="cpu", custom_verifier_models={"timer": npz})


def test_server_uses_verifiers_beside_custom_models_and_from_the_flag(trained, tmp_path, caplog):
    from wyoming_oww_rk3588.server import build_engine

    pkl, npz = trained
    models = tmp_path / "models"
    models.mkdir()
    (models / "alexa.verifier.npz").write_bytes(npz.read_bytes())
    (models / "hey_jarvis.verifier.npz").write_bytes(b"not a verifier")
    (models / "alexa_verifier.pkl").write_bytes(pkl.read_bytes())
    base = ["--custom-model-dir", str(models), "--features-backend", "cpu", "--heads-backend", "cpu"]
    with caplog.at_level(logging.INFO):
        engine, _ = build_engine(parse_settings([*base, "--custom-verifier-threshold", "0.2"]))
    assert set(engine.verifiers) == {"alexa"} and engine.verifier_threshold == 0.2
    assert "Verifier hey_jarvis.verifier.npz left out" in caplog.text
    assert "alexa_verifier.pkl is not loaded" in caplog.text
    assert "verifiers: alexa" in caplog.text
    engine, _ = build_engine(parse_settings([*base, "--custom-verifier", f"hey_mycroft={npz}"]))
    assert set(engine.verifiers) == {"alexa", "hey_mycroft"}
    with pytest.raises(ModelError, match="unknown wake word model 'nope'"):
        build_engine(parse_settings([*base, "--custom-verifier", f"nope={npz}"]))
