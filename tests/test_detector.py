"""Detector: threshold, trigger level, refractory period and overrides, all in audio time."""

from __future__ import annotations

import pytest

from wyoming_oww_rk3588.detector import DetectorConfig, update


def fire_steps(config: DetectorConfig, scores: list[float], model: str = "alexa", label: str = "alexa") -> list[int]:
    states: dict = {}
    fired = []
    for step, score in enumerate(scores, start=1):
        found = update(config, states, model, "", label, score, step)
        if found is not None:
            assert found.timestamp_ms == step * 80
            fired.append(step)
    return fired


def test_fires_once_per_utterance_within_the_refractory_period():
    scores = [0.1, 0.9, 0.95, 0.9, 0.2] + [0.1] * 30 + [0.9]
    assert fire_steps(DetectorConfig(), scores) == [2, 36]


def test_refractory_is_counted_in_steps_of_audio():
    config = DetectorConfig(refractory_s=0.4)  # 5 steps
    assert fire_steps(config, [0.9] * 12) == [1, 6, 11]


def test_trigger_level_needs_consecutive_steps_over_the_threshold():
    config = DetectorConfig(trigger_level=3)
    assert fire_steps(config, [0.9, 0.9, 0.1, 0.9, 0.9, 0.9]) == [6]


def test_per_model_and_per_label_threshold_overrides():
    config = DetectorConfig(threshold=0.5, thresholds={"alexa": 0.8, "1_minute_timer": 0.3})
    assert fire_steps(config, [0.7]) == []
    assert fire_steps(config, [0.85]) == [1]
    assert fire_steps(config, [0.35], model="timer", label="1_minute_timer") == [1]
    assert fire_steps(config, [0.35], model="timer", label="5_minute_timer") == []


@pytest.mark.parametrize("kwargs", [{"threshold": 0}, {"threshold": 1.5}, {"trigger_level": 0},
                                    {"refractory_s": -1}, {"thresholds": {"alexa": 2}}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        DetectorConfig(**kwargs)
