"""An event loop that wakes at most once a tick when it has nothing to do.

Only with the opt-in batch window (--batch-window-ms; the default 0 makes the tick 0 and this
a plain loop): the engine then scores audio once a window anyway (scheduler.py), so waking
at most once per window reads every satellite's chunks of that window in one go and adds no
latency that the window does not (a wake-up on a shared machine costs more than a chunk).
With no window, connection.py's low-water mark keeps wake-ups to one per frame instead. Ready callbacks and timers (the engine's
window among them) never wait, nor does a loop waiting for an engine batch: a loop with work
goes on at once.
"""

from __future__ import annotations

import asyncio
import selectors
import time

#: Tick of a loop made without one; the server passes its batch window.
TICK_S = 0.02
#: Engine batches running in worker threads: while any is, the loop never waits, so it starts
#: the next batch as soon as one ends (a late start would cost the engine its time).
in_flight = 0


class PacedSelector(selectors.DefaultSelector):
    _last = float("-inf")

    def __init__(self, tick_s: float = TICK_S) -> None:
        super().__init__()
        self.tick_s = tick_s

    def select(self, timeout: float | None = None):
        if (timeout is None or timeout > 0) and not in_flight:
            wait = self._last + self.tick_s - time.monotonic()
            if wait > 0:
                wait = wait if timeout is None else min(wait, timeout)
                time.sleep(wait)  # the kernel keeps the sockets' data meanwhile
                timeout = None if timeout is None else max(0.0, timeout - wait)
        events = super().select(timeout)
        self._last = time.monotonic()
        return events


def paced_loop(tick_s: float = TICK_S) -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop(PacedSelector(tick_s))
