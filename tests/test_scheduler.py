"""The engine runner: batches from many streams, split across worker threads, lose nothing."""

from __future__ import annotations

import asyncio


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
