"""`auto` puts a features batch on an accelerator only where that is faster on this machine.

Each features backend is timed at start doing the engine's own call (one 80 ms step of mel and
embedding) on one stream and on a large batch. A straight line through the two times, a fixed
cost per call plus a cost per stream, says which backend is cheaper at each batch size, and the
pipeline sends every batch to the cheaper one. On an RK3588 one stream's step (about 15 MFLOP)
is most likely faster on a Cortex-A76 than through a GPU driver round trip, and a hundred
streams the other way round; a device that is slower at every size is never used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..graphs import StreamingLayout

#: The large batch timed at start: about what 100 satellites bring per round.
LARGE_BATCH = 64
_AUDIO = 1280 + 480  # one step and the context the mel re-reads


@dataclass(frozen=True)
class Cost:
    """A backend's time for one features step of a batch: fixed_s + per_stream_s x streams."""

    name: str
    fixed_s: float
    per_stream_s: float

    def at(self, batch: int) -> float:
        return self.fixed_s + self.per_stream_s * batch

    @classmethod
    def fit(cls, name: str, one_s: float, large_s: float, large: int = LARGE_BATCH) -> "Cost":
        """The line through (1, one_s) and (large, large_s), never below zero."""
        per_stream = max((large_s - one_s) / (large - 1), 0.0)
        return cls(name, max(one_s - per_stream, 0.0), per_stream)

    def __str__(self) -> str:
        return (f"{self.name} {self.at(1) * 1e3:.2f} ms at 1 stream, {self.at(LARGE_BATCH) * 1e3:.2f} ms at "
                f"{LARGE_BATCH}")


def time_step(backend, batch: int, repeats: int = 5) -> float:
    """Median seconds of one features step of `batch` streams on `backend` (after a warm-up call)."""
    from ..features import MEL_FRAMES_PER_STEP, scale_mel

    audio = np.random.default_rng(0).integers(-3000, 3000, (batch, _AUDIO)).astype(np.float32)
    layout: StreamingLayout = backend.layout
    states = [np.zeros((batch, *shape), np.float32) for shape in layout.state_shapes]
    fused = getattr(backend, "features_step", None)

    def step() -> None:
        if fused is not None:
            fused(audio, states)
        else:
            backend.embed_step(scale_mel(backend.melspectrogram(audio))[:, -MEL_FRAMES_PER_STEP:], states)

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(backend, large: int = LARGE_BATCH) -> Cost:
    return Cost.fit(backend.name, time_step(backend, 1), time_step(backend, large), large)


class Route:
    """Which backend takes a batch of each size: the cheapest by the measured costs (ties go to
    the first listed, the CPU, which is exact)."""

    def __init__(self, costs: list[Cost]) -> None:
        if not costs:
            raise ValueError("a route needs at least one measured backend")
        self.costs = list(costs)
        self._picks: dict[int, str] = {}

    def pick(self, batch: int) -> str:
        name = self._picks.get(batch)
        if name is None:
            name = min(self.costs, key=lambda c: c.at(batch)).name  # min keeps the first of equals
            if len(self._picks) < 4096:
                self._picks[batch] = name
        return name

    def used(self) -> set[str]:
        """The backends that take some batch size (a line crosses another at most once)."""
        return {self.pick(1), self.pick(1 << 20)}

    def crossover(self) -> int | None:
        """The smallest batch that goes elsewhere than one stream does, if any."""
        first = self.pick(1)
        low, high = 1, 1 << 20
        if self.pick(high) == first:
            return None
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if self.pick(middle) == first else (low, middle)
        return high

    def describe(self) -> str:
        """One line: what goes where, and the measurements that say so."""
        costs = "; ".join(str(c) for c in self.costs)
        at = self.crossover()
        if at is None:
            return f"every batch on {self.pick(1)} ({costs})"
        return f"batches of 1-{at - 1} streams on {self.pick(1)}, {at} or more on {self.pick(at)} ({costs})"


def choose(accelerator, cpu_factory) -> tuple[object, tuple, Route | None, Route]:
    """For `auto`: time the accelerator beside the CPU and return (primary backend, alternates,
    the route when batches are split between them, else None, and the measured route). An
    accelerator slower at every size is closed and the CPU alone runs."""
    cpu = cpu_factory()
    measured = Route([measure(cpu), measure(accelerator)])  # the CPU first: it wins ties (exact)
    used = measured.used()
    if used == {cpu.name}:
        accelerator.close()
        return cpu, (), None, measured
    if used == {accelerator.name}:
        cpu.close()
        return accelerator, (), None, measured
    return accelerator, (cpu,), measured, measured
