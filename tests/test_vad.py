"""The VAD gate zeroes scores exactly where openWakeWord 0.6.0's `vad_threshold` does, batched."""

from __future__ import annotations

import numpy as np
import pytest

from reference import (AUDIO_DIR, CPU_TOLERANCE, NOISES, engine_scores, first_exact_step, load_wav, noisy,
                       oww_model, padded)
from wyoming_oww_rk3588.detector import DetectorConfig
from wyoming_oww_rk3588.engine import Engine
from wyoming_oww_rk3588.features import FRAME_SAMPLES
from wyoming_oww_rk3588.vad import VadStage

HEADS = ["alexa", "hey_jarvis", "hey_mycroft", "hey_rhasspy", "okay_nabu", "timer", "weather"]
STEMS = [f"{name}_v0.1" for name in HEADS]
VAD_THRESHOLD = 0.5
# The Silero VAD state starts at zero in both and sees the same audio, so its scores agree
# from the first step; only the batch changes them, by float32 rounding.
VAD_TOLERANCE = 1e-5
CLIPS = sorted(p.name for p in AUDIO_DIR.glob("*.wav"))
CASES = [(clip, NOISES[i % len(NOISES)], i) for i, clip in enumerate(CLIPS)]


def oww_run(audio: np.ndarray, **options) -> tuple[list[dict[str, float]], list[float]]:
    """openWakeWord's per-step scores (our label names) and its newest VAD score per step."""
    from reference import _label

    model = oww_model(STEMS, **options)
    scores, vad = [], []
    for i in range(0, len(audio) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        scores.append({_label(k): float(v) for k, v in model.predict(audio[i : i + FRAME_SAMPLES]).items()})
        vad.append(float(model.vad.prediction_buffer[-1]) if options.get("vad_threshold") else 0.0)
    return scores, vad


@pytest.fixture(scope="module")
def engine():
    return Engine(features_backend="cpu", heads_backend="cpu", detector=DetectorConfig(vad_threshold=VAD_THRESHOLD))


@pytest.fixture(scope="module")
def batch(engine):
    """Every clip with its noise, all streams advanced together; VAD scores recorded per step."""
    audios = [noisy(clip, noise, seed) for clip, noise, seed in CASES]
    models = [(n, engine.registry.resolve(n)) for n in HEADS]
    streams = [engine.open_stream(models) for _ in audios]
    scores, vad = [[] for _ in audios], [[] for _ in audios]
    for step in range(max(len(a) for a in audios) // FRAME_SAMPLES):
        live = [i for i, a in enumerate(audios) if (step + 1) * FRAME_SAMPLES <= len(a)]
        for i in live:
            streams[i].add_samples(audios[i][step * FRAME_SAMPLES : (step + 1) * FRAME_SAMPLES])
        engine.process([streams[i] for i in live])
        for i in live:
            scores[i].append(dict(streams[i].scores))
            vad[i].append(streams[i].vad.scores[-1])
    return audios, scores, vad


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c}+{n}" for c, n, _ in CASES])
def test_gated_scores_match_openwakeword_with_vad_threshold_per_frame(engine, batch, case):
    audios, scores, vad = batch
    ref_scores, ref_vad = oww_run(audios[case], vad_threshold=VAD_THRESHOLD)
    assert len(scores[case]) == len(ref_scores)
    # The VAD itself is exact from step 1, and so is the gate (closed while fewer than 5 steps exist).
    assert np.max(np.abs(np.array(vad[case]) - np.array(ref_vad))) <= VAD_TOLERANCE
    for name in HEADS:
        info = engine.registry.resolve(name)
        start = first_exact_step(info.window) - 1
        for label in info.labels:
            ours = np.array([s[label] for s in scores[case][start:]])
            ref = np.array([s[label] for s in ref_scores[start:]])
            assert np.max(np.abs(ours - ref)) <= CPU_TOLERANCE, label


def test_the_gate_both_opens_and_zeroes_real_scores_on_these_mixes(batch):
    audios, scores, _ = batch
    plain = engine_scores(Engine(features_backend="cpu", heads_backend="cpu"), audios, HEADS)
    start = first_exact_step(16) - 1
    zeroed = passed = 0
    for gated, ungated in zip(scores, plain):
        for g, u in zip(gated[start:], ungated[start:]):
            zeroed += any(u[k] > 1e-3 and g[k] == 0.0 for k in u)
            passed += any(g[k] > 1e-3 for k in g)
    assert zeroed > 10 and passed > 10, (zeroed, passed)


def test_scores_are_zero_until_five_vad_steps_exist_as_in_openwakeword(engine):
    stream = engine.open_stream([("alexa", engine.registry.resolve("alexa"))])
    muted = []
    for _ in range(6):
        stream.add_samples(np.full(FRAME_SAMPLES, 3000, np.int16))
        engine.process([stream])
        muted.append(stream.vad.muted)
    assert muted[:4] == [True] * 4  # openWakeWord's prediction_buffer[-7:-4] is empty: max score 0


def test_one_vad_call_per_round_for_all_streams_and_none_for_streams_without_it(engine):
    calls = []
    session = engine.vad._session
    engine.vad._session = type("Counting", (), {"run": lambda self, *a: calls.append(len(a[1]["first/input"]))
                                                or session.run(*a)})()
    try:
        models = [("alexa", engine.registry.resolve("alexa"))]
        streams = [engine.open_stream(models) for _ in range(5)]
        streams += [engine.open_stream(models, DetectorConfig()) for _ in range(3)]  # VAD off
        for stream in streams:
            stream.add_samples(np.zeros(3 * FRAME_SAMPLES, np.int16))
        engine.process(streams)
    finally:
        engine.vad._session = session
    assert calls == [5, 5, 5]
    assert all(s.vad is None for s in streams[5:])


def test_streams_without_vad_in_the_same_batch_score_as_if_it_did_not_exist(engine):
    audio = noisy("alexa_test.wav", "white", 7)
    models = [("alexa", engine.registry.resolve("alexa"))]
    with_vad, without = engine.open_stream(models), engine.open_stream(models, DetectorConfig())
    plain_engine = Engine(features_backend="cpu", heads_backend="cpu")
    reference = plain_engine.open_stream(models)
    for i in range(0, len(audio), FRAME_SAMPLES):
        for stream in (with_vad, without):
            stream.add_samples(audio[i : i + FRAME_SAMPLES])
        reference.add_samples(audio[i : i + FRAME_SAMPLES])
        engine.process([with_vad, without])
        plain_engine.process([reference])
        assert without.scores == reference.scores


def test_the_detector_sees_gated_scores():
    # At 3 % of its level the clip still scores ~1.0 for alexa, but Silero's speech
    # probability stays near 0.2: the gate at 0.5 keeps it from firing.
    clip = padded(load_wav("alexa_test.wav"), 2.5, 1.0)
    fired = {}
    for gain in (1.0, 0.03):
        for threshold in (0.0, VAD_THRESHOLD):
            engine = Engine(features_backend="cpu", heads_backend="cpu", detector=DetectorConfig(vad_threshold=threshold))
            stream = engine.open_stream([("alexa", engine.registry.resolve("alexa"))])
            stream.add_samples((clip * gain).astype(np.int16))
            fired[gain, threshold] = [d.model for _, d in engine.process([stream])]
    assert fired == {(1.0, 0.0): ["alexa"], (1.0, VAD_THRESHOLD): ["alexa"],
                     (0.03, 0.0): ["alexa"], (0.03, VAD_THRESHOLD): []}


@pytest.mark.parametrize("threshold", [-0.1, 1.0, 1.5])
def test_a_vad_threshold_outside_0_to_1_is_refused(threshold):
    with pytest.raises(ValueError, match=r"VAD threshold must be in \[0, 1\)"):
        DetectorConfig(vad_threshold=threshold)


def test_vad_stage_alone_matches_openwakewords_vad_class_on_a_batch():
    from openwakeword.vad import VAD

    from wyoming_oww_rk3588.models.registry import builtin_feature_path

    audios = [noisy(clip, "babble", 3) for clip in CLIPS[:4]]
    n = min(len(a) for a in audios) // FRAME_SAMPLES * FRAME_SAMPLES
    stage = VadStage()
    streams = [type("S", (), {"vad": stage.new_state(0.5)})() for _ in audios]
    refs = [VAD(model_path=str(builtin_feature_path("silero_vad"))) for _ in audios]
    worst = 0.0
    for i in range(0, n, FRAME_SAMPLES):
        frames = np.stack([a[i : i + FRAME_SAMPLES] for a in audios])
        stage.step(streams, frames)
        for stream, ref, frame in zip(streams, refs, frames):
            ref(frame)
            worst = max(worst, abs(stream.vad.scores[-1] - float(ref.prediction_buffer[-1])))
    assert worst <= VAD_TOLERANCE
