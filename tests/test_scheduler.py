"""The engine runner: batches from many streams, split across worker threads, lose nothing."""

from __future__ import annotations

import asyncio

import numpy as np

from reference import load_wav, padded
from wyoming_oww_rk3588.engine import Engine
from wyoming_oww_rk3588.scheduler import EngineRunner


def _detections(workers: int, streams: int) -> list[list[tuple[str, int]]]:
    engine = Engine(features_backend="cpu", heads_backend="cpu")
    models = [(name, engine.registry.resolve(name)) for name in ("alexa", "hey_mycroft")]
    clips = [padded(load_wav("alexa_test.wav"), 1.0 + 0.08 * (i % 5), 1.0) for i in range(streams)]

    async def go():
        runner = EngineRunner(engine, workers=workers)
        runner.start()
        found: list[list[tuple[str, int]]] = [[] for _ in range(streams)]
        handles = [
            runner.open(models, lambda d, i=i: found[i].append((d.label, d.timestamp_ms)), lambda m: None)
            for i in range(streams)
        ]
        for start in range(0, max(len(c) for c in clips), 640):  # 40 ms chunks, all streams interleaved
            for handle, clip in zip(handles, clips):
                runner.feed(handle, clip[start : start + 640])
            await asyncio.sleep(0)
        await asyncio.gather(*(runner.drain(h) for h in handles))
        await runner.stop()
        return found, runner.batches

    found, batches = asyncio.run(go())
    assert batches > 0
    return found


def test_split_batches_give_the_same_detections_as_one_thread():
    one = _detections(workers=1, streams=40)
    two = _detections(workers=2, streams=40)
    assert one == two
    assert all(d and d[0][0] == "alexa" for d in two)
    # a later start means a later detection, in audio time
    assert two[0][0][1] < two[4][0][1]


def _runner_with_period(period_s: float):
    engine = Engine(features_backend="cpu", heads_backend="cpu")
    return EngineRunner(engine, workers=1, batch_window_s=period_s), [("alexa", engine.registry.resolve("alexa"))]


def test_satellites_whose_frames_complete_within_one_period_share_one_batch():
    runner, models = _runner_with_period(600.0)  # longer than any stall of a busy machine
    frame = np.zeros(1280, np.int16)

    async def go():
        runner.start()
        handles = [runner.open(models, lambda d: None, lambda m: None) for _ in range(8)]
        runner.feed(handles[0], frame)  # the first batch starts at once
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        for handle in handles[1:]:  # real-time satellites: one frame each, at other phases
            runner.feed(handle, frame)
            await asyncio.sleep(0)
        assert [h.stream.features.steps for h in handles] == [1] + [0] * 7  # waiting for the period
        for _ in range(runner.behind_frames):  # more than a window brings: behind, the batch starts now
            runner.feed(handles[0], frame)
        await asyncio.wait_for(asyncio.gather(*(runner.drain(h) for h in handles)), 60)
        await runner.stop()
        return [h.stream.features.steps for h in handles]

    assert asyncio.run(go()) == [1 + runner.behind_frames] + [1] * 7
    assert runner.batches == 2


def test_a_client_faster_than_real_time_is_never_held_by_the_period():
    runner, models = _runner_with_period(600.0)
    clip = padded(load_wav("alexa_test.wav"), 1.0, 1.0)
    found = []

    async def go():
        runner.start()
        handle = runner.open(models, found.append, lambda m: None)
        for start in range(0, len(clip), 1024):  # as fast as it can send
            runner.feed(handle, clip[start : start + 1024])
            await asyncio.sleep(0)
        await asyncio.wait_for(runner.drain(handle), 60)  # would wait 600 s if it were held
        await runner.stop()
        return handle.stream.features.steps

    assert asyncio.run(go()) == len(clip) // 1280
    assert [d.label for d in found] == ["alexa"]


def test_one_satellites_frames_within_a_window_are_scored_in_one_engine_round():
    """The window's point at one satellite: its frames wait, then go through the features and
    every model in one round (one cold start for several frames), with the same detections."""
    runner, models = _runner_with_period(600.0)
    calls = []
    advance = runner.engine.features.advance

    def counting(states, frames):
        calls.append(frames.shape[1])
        return advance(states, frames)

    runner.engine.features.advance = counting
    frame = np.zeros(1280, np.int16)

    async def go():
        runner.start()
        handle = runner.open(models, lambda d: None, lambda m: None)
        runner.feed(handle, frame)  # the first batch starts at once
        for _ in range(5):
            await asyncio.sleep(0)
        for _ in range(runner.behind_frames - 1):  # fewer than "behind": they wait for the window
            runner.feed(handle, frame)
            await asyncio.sleep(0)
        waiting = handle.stream.features.steps
        await asyncio.wait_for(runner.drain(handle), 60)  # a client waiting on audio-stop ends the wait
        await runner.stop()
        return waiting, handle.stream.features.steps

    assert asyncio.run(go()) == (1, runner.behind_frames)
    assert calls == [1, runner.behind_frames - 1]
    assert runner.batches == 2
