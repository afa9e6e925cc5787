"""Every stream's features state lives in one StatePool: rows that are plain numbers, freed with
their stream, grown safely while a batch runs in another thread."""

from __future__ import annotations

import gc
import threading

import numpy as np
from reference import load_wav, padded

from wyoming_oww_rk3588 import cli, scheduler
from wyoming_oww_rk3588.backends.cpu import CpuFeatures
from wyoming_oww_rk3588.features import FRAME_SAMPLES, FeaturePipeline


def test_the_servers_default_window_is_the_schedulers():
    assert cli.DEFAULT_BATCH_WINDOW_MS == round(scheduler.DEFAULT_BATCH_WINDOW_S * 1000)
    assert cli.Settings().batch_window_ms == cli.DEFAULT_BATCH_WINDOW_MS


def test_a_new_stream_starts_from_silence_and_a_closed_one_gives_its_row_back():
    pipeline = FeaturePipeline(CpuFeatures())
    first = pipeline.new_state(16)
    assert first.steps == 0 and not first.context.any()
    assert np.array_equal(first.embeddings, np.tile(pipeline.silence.embedding, (16, 1)))
    assert all(np.array_equal(a, b) for a, b in zip(first.conv_states, pipeline.silence.conv_states))
    pipeline.step([first], load_wav("alexa_test.wav")[None, :FRAME_SAMPLES])
    slot = first.slot
    del first
    gc.collect()
    again = pipeline.new_state(16)
    assert again.slot == slot  # reused, and reset to silence
    assert again.steps == 0 and not again.context.any()
    assert all(np.array_equal(a, b) for a, b in zip(again.conv_states, pipeline.silence.conv_states))


def test_streams_keep_their_own_history_length_when_a_longer_one_joins():
    pipeline = FeaturePipeline(CpuFeatures())
    short = pipeline.new_state(16)
    audio = padded(load_wav("alexa_test.wav"), 0.5, 0.5)
    frames = audio[: len(audio) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    for frame in frames[:20]:
        pipeline.step([short], frame[None])
    before = short.embeddings.copy()
    long = pipeline.new_state(34)  # grows every row's history; older rows are silence
    assert short.embeddings.shape == (16, 96) and np.array_equal(short.embeddings, before)
    assert long.embeddings.shape == (34, 96)
    assert pipeline.histories([short, long]).shape == (2, 34, 96)


def test_streams_opening_while_a_batch_runs_in_another_thread_lose_nothing():
    """Opening streams grows the pool; a batch in a worker thread at the same moment must still
    write its rows where the next batch reads them: the same embeddings as a quiet run."""
    audio = padded(load_wav("alexa_test.wav"), 0.5, 0.5)
    frames = audio[: len(audio) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)

    def run(open_meanwhile: bool) -> np.ndarray:
        pipeline = FeaturePipeline(CpuFeatures())
        states = [pipeline.new_state(16) for _ in range(4)]
        extra, stop = [], threading.Event()

        def opener():
            while not stop.is_set():
                extra.append(pipeline.new_state(16))  # 16, 32, 64, ... rows: many grows

        thread = threading.Thread(target=opener) if open_meanwhile else None
        if thread:
            thread.start()
        try:
            out = [pipeline.step(states, np.stack([frame] * 4)) for frame in frames]
        finally:
            stop.set()
            if thread:
                thread.join()
        if open_meanwhile:
            assert len(extra) > 16
        return np.stack(out)

    np.testing.assert_array_equal(run(True), run(False))
