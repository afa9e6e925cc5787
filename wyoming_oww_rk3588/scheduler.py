"""Runs the one engine beside the asyncio loop: gathers every live stream's audio, one batch at a time.

Connections only append samples to their stream's inbox. A single task moves inboxes into
the streams as soon as a frame is complete, runs `Engine.process` for all ready streams (on
the loop for a few frames, in executor threads for more), and hands detections back. While a
batch runs, audio keeps arriving, so load makes batches bigger instead of making anyone wait
longer; no delay is added by default. A batch takes at most one engine round from each
stream, so a stream that is minutes behind cannot hold up the others. A failing batch is isolated stream by stream, so one
bad stream can never make the engine deaf for the others.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from . import pacing
from .detector import Detection
from .engine import MAX_STEPS_PER_ROUND, Engine
from .features import FRAME_SAMPLES, SAMPLE_RATE
from .models.registry import ModelInfo
from .stream import StreamState

_LOGGER = logging.getLogger(__name__)


@dataclass(eq=False)
class StreamHandle:
    """A connection's view of its stream: samples go in, detections come out by callback."""

    id: int
    stream: StreamState
    on_detection: Callable[[Detection], None]
    on_error: Callable[[str], None]
    inbox: list[np.ndarray] = field(default_factory=list)
    inbox_samples: int = 0
    closed: bool = False
    drained: list[asyncio.Future] = field(default_factory=list)
    fed: int = 0  # samples fed since the stream opened
    #: (step, loop time at which its last sample arrived) of the latest complete frames, so a
    #: detection can say how long after its frame was complete it was answered.
    completed: collections.deque = field(default_factory=lambda: collections.deque(maxlen=2 * MAX_STEPS_PER_ROUND))

    def waited_s(self, step: int, now: float) -> float | None:
        """Seconds from the arrival of step `step`'s last sample to `now`, if still known."""
        for known, at in self.completed:
            if known == step:
                return now - at
        return None


#: Most samples a stream brings to one batch: one engine round. A stream far behind (a client
#: sending faster than real time, one huge chunk) then costs each batch no more than any
#: other, and streams that join meanwhile are scored in the next batch, not after its backlog.
BATCH_SAMPLES = MAX_STEPS_PER_ROUND * FRAME_SAMPLES

#: Audio a connection may have queued (30 s): a client further ahead of real time waits, its
#: socket unread, until that is scored, so TCP holds it back instead of server memory.
MAX_QUEUED_SAMPLES = 30 * SAMPLE_RATE

#: Below this many streams per part, splitting a batch across threads costs more than it saves.
MIN_STREAMS_PER_WORKER = 16
#: Least time from one batch's start to the next while no stream is behind. 0 (the default):
#: a frame is scored as soon as it is complete; frames that complete while a batch runs join
#: the next one, so load alone makes batches bigger. A window (--batch-window-ms, opt-in)
#: scores every stream's frames of that long in one batch, for less CPU at 1-8 satellites,
#: but holds each detection back by up to the window: Home Assistant gives speech-to-text only
#: the audio that comes after the detection, so that much of the user's command is lost.
DEFAULT_BATCH_WINDOW_S = 0.0
#: A batch of at most this many frames runs on the event loop itself (a few ms): at 1-8
#: satellites the hand-off to a thread and back costs more than it. Bigger ones go to the
#: executor so the loop reads on meanwhile (at 100 satellites sending 10 ms chunks that cut
#: the median detection time from 112 to 71 ms on the 2-core VM).
INLINE_FRAMES = 4


class EngineRunner:
    """`workers` > 1 splits big CPU batches across threads (onnxruntime releases the GIL);
    an accelerator's batch is never split, since one big batch is what it is fast at."""

    def __init__(self, engine: Engine, workers: int = 1, batch_window_s: float = DEFAULT_BATCH_WINDOW_S) -> None:
        self.engine = engine
        self.workers = max(1, workers)
        self.batch_window_s = batch_window_s
        # More frames waiting than a window brings (+2: a chunk's worth and a partial frame) means behind.
        self.behind_frames = min(math.ceil(batch_window_s * SAMPLE_RATE / FRAME_SAMPLES) + 2, MAX_STEPS_PER_ROUND)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="engine")
        self._handles: dict[int, StreamHandle] = {}
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()  # a frame is ready, or a drain waits
        self._hurry = asyncio.Event()  # a stream is behind or a drain waits: no window
        self._task: asyncio.Task | None = None
        self._last_batch = float("-inf")  # loop time at which the last batch started
        self._loop_time: Callable[[], float] = lambda: 0.0
        self.batches = 0  # batches run, for tests and logs

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop_time = loop.time
        self._task = loop.create_task(self._run(), name="engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    def open(
        self,
        models: Sequence[tuple[str, ModelInfo]],
        on_detection: Callable[[Detection], None],
        on_error: Callable[[str], None],
    ) -> StreamHandle:
        handle = StreamHandle(next(self._ids), self.engine.open_stream(models), on_detection, on_error)
        self._handles[handle.id] = handle
        return handle

    def close(self, handle: StreamHandle) -> None:
        handle.closed = True
        self._handles.pop(handle.id, None)
        self._resolve(handle)

    def feed(self, handle: StreamHandle, samples: np.ndarray) -> None:
        if handle.closed or not len(samples):
            return
        handle.inbox.append(samples)
        handle.inbox_samples += len(samples)
        before, handle.fed = handle.fed, handle.fed + len(samples)
        if handle.fed // FRAME_SAMPLES > before // FRAME_SAMPLES:
            handle.completed.append((handle.fed // FRAME_SAMPLES, self._loop_time()))
        self._signal(handle)

    def now(self) -> float:
        return self._loop_time()

    @staticmethod
    def waiting_samples(handle: StreamHandle) -> int:
        """Samples fed and not yet scored (a partial frame, and whole ones waiting)."""
        return handle.inbox_samples + handle.stream.pending_samples

    def _signal(self, handle: StreamHandle) -> None:
        waiting = handle.inbox_samples + handle.stream.pending_samples
        if waiting >= FRAME_SAMPLES:
            self._wake.set()
        if waiting >= self.behind_frames * FRAME_SAMPLES:  # a client faster than real time, or a server behind
            self._hurry.set()

    def backlogged(self, handle: StreamHandle) -> bool:
        return handle.inbox_samples > MAX_QUEUED_SAMPLES

    async def drain(self, handle: StreamHandle) -> None:
        """Wait until every complete 80 ms frame fed so far has been scored."""
        if handle.closed:
            return
        future = asyncio.get_running_loop().create_future()
        handle.drained.append(future)
        self._wake.set()
        self._hurry.set()  # the client waits for the answer (audio-stop): no window
        await future

    @staticmethod
    def _resolve(handle: StreamHandle) -> None:
        for future in handle.drained:
            if not future.done():
                future.set_result(None)
        handle.drained.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            wait = self._last_batch + self.batch_window_s - loop.time()
            if wait > 0 and not self._hurry.is_set():
                try:  # audio keeps coming in: more streams join this batch
                    await asyncio.wait_for(self._hurry.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            self._wake.clear()
            self._hurry.clear()
            ready = []
            for handle in list(self._handles.values()):
                if handle.inbox:
                    self._take_inbox(handle)
                if handle.stream.ready:
                    ready.append(handle)
                elif not handle.inbox:
                    self._resolve(handle)
            if not ready:
                continue
            self._last_batch = loop.time()
            if sum(h.stream.ready_frames for h in ready) <= INLINE_FRAMES:
                results = [self._process(ready)]
            else:
                parts = self._split(ready)
                pacing.in_flight += 1
                try:
                    results = await asyncio.gather(*(loop.run_in_executor(self._executor, self._process, p) for p in parts))
                finally:
                    pacing.in_flight -= 1
            found = [pair for part_found, _ in results for pair in part_found]
            failed = [pair for _, part_failed in results for pair in part_failed]
            self.batches += 1
            for handle, detection in found:
                if not handle.closed:
                    handle.on_detection(detection)
            for handle, message in failed:
                if not handle.closed:
                    handle.on_error(message)
            for handle in ready:
                self._signal(handle)
                if handle.drained and handle.inbox:  # its client waits for the answer: no window
                    self._wake.set()
                    self._hurry.set()
                elif handle.inbox_samples + handle.stream.pending_samples < FRAME_SAMPLES and not handle.inbox:
                    self._resolve(handle)

    @staticmethod
    def _take_inbox(handle: StreamHandle) -> None:
        """Moves inbox audio into the stream until it holds BATCH_SAMPLES."""
        stream, taken = handle.stream, 0
        while taken < len(handle.inbox) and stream.pending_samples < BATCH_SAMPLES:
            chunk = handle.inbox[taken]
            room = BATCH_SAMPLES - stream.pending_samples
            if len(chunk) > room:
                handle.inbox[taken], chunk = chunk[room:], chunk[:room]
            else:
                taken += 1
            stream.add_samples(chunk)
            handle.inbox_samples -= len(chunk)
        del handle.inbox[:taken]

    def _split(self, ready: list[StreamHandle]) -> list[list[StreamHandle]]:
        if self.engine.backends["features"] != "cpu":
            return [ready]
        parts = min(self.workers, max(1, len(ready) // MIN_STREAMS_PER_WORKER))
        return [ready[i::parts] for i in range(parts)]

    def _process(self, handles: list[StreamHandle]):
        """Runs in the engine thread: ((handle, detection) pairs, (handle, error) pairs)."""
        by_stream = {id(h.stream): h for h in handles}
        failed: list[tuple[StreamHandle, str]] = []
        try:
            found = self.engine.process([h.stream for h in handles])
        except Exception:  # noqa: BLE001 - isolate the stream that breaks the batch
            _LOGGER.exception("A batch of %d streams failed; retrying stream by stream", len(handles))
            found = []
            for handle in handles:
                try:
                    found += self.engine.process([handle.stream])
                except Exception as err:  # noqa: BLE001
                    _LOGGER.error("Stream %d dropped its audio: the engine failed on it (%s)", handle.id, err)
                    handle.stream.chunks, handle.stream.pending_samples = [], 0
                    failed.append((handle, f"wake word engine failed on this stream: {err}"))
        return [(by_stream[id(stream)], detection) for stream, detection in found], failed
