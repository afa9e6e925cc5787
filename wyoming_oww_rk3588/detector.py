"""Scores -> detections: threshold, trigger level and refractory period, all in audio time.
The VAD gate (`vad_threshold`, applied in vad.py) zeroes scores before they reach it.

Time is counted in 80 ms steps of the stream's own audio, never the wall clock, so a
replayed file behaves exactly like live audio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .features import MS_PER_STEP

DEFAULT_THRESHOLD = 0.5
DEFAULT_TRIGGER_LEVEL = 1
DEFAULT_REFRACTORY_S = 2.0


@dataclass(frozen=True)
class DetectorConfig:
    threshold: float = DEFAULT_THRESHOLD
    trigger_level: int = DEFAULT_TRIGGER_LEVEL  # consecutive steps at or over the threshold
    refractory_s: float = DEFAULT_REFRACTORY_S
    #: Per-model (or per-label) threshold overrides, keyed by canonical name.
    thresholds: dict[str, float] = field(default_factory=dict)
    #: Silero VAD speech probability under which scores are zeroed; 0 turns the VAD off.
    vad_threshold: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.vad_threshold) < 1.0:
            raise ValueError(f"VAD threshold must be in [0, 1) (0 = off), got {self.vad_threshold}")
        for name, value in {"threshold": self.threshold, **self.thresholds}.items():
            if not 0.0 < float(value) <= 1.0:
                raise ValueError(f"threshold for {name} must be in (0, 1], got {value}")
        if int(self.trigger_level) < 1:
            raise ValueError(f"trigger level must be at least 1, got {self.trigger_level}")
        if not (float(self.refractory_s) >= 0 and math.isfinite(self.refractory_s)):
            raise ValueError(f"refractory seconds must be >= 0, got {self.refractory_s}")

    def threshold_for(self, model: str, label: str) -> float:
        return self.thresholds.get(label, self.thresholds.get(model, self.threshold))

    @property
    def refractory_steps(self) -> int:
        return math.ceil(self.refractory_s * 1000 / MS_PER_STEP)


@dataclass(frozen=True)
class Detection:
    model: str  # canonical model name
    label: str  # what fired (the model name, or a class of a multi-class model)
    asked_name: str  # the name the client asked for (what it expects back)
    score: float
    step: int  # 1-based step of the stream at which it fired
    timestamp_ms: int  # audio time since the stream started, at the end of that step


@dataclass
class LabelState:
    above: int = 0  # consecutive steps at or over the threshold
    quiet_until: int = 0  # first step at which a new detection may fire


def update(
    config: DetectorConfig,
    states: dict[str, LabelState],
    model: str,
    asked_name: str,
    label: str,
    score: float,
    step: int,
) -> Detection | None:
    """Feed one step's score for one label; returns a Detection when it fires."""
    state = states.setdefault(label, LabelState())
    if score >= config.threshold_for(model, label):
        state.above += 1
    else:
        state.above = 0
        if state.quiet_until <= step:
            del states[label]  # back to the default state: keep the dict to active labels
        return None
    if state.above < config.trigger_level or step < state.quiet_until:
        return None
    state.above = 0
    state.quiet_until = step + config.refractory_steps
    return Detection(
        model=model, label=label, asked_name=asked_name, score=float(score), step=step,
        timestamp_ms=step * MS_PER_STEP,
    )
