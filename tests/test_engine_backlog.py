"""A stream that has fallen behind catches up several frames per round, with the very numbers
(bit for bit) and detections it gets one frame at a time."""

from __future__ import annotations

import numpy as np
from reference import generated, load_wav, padded

from wyoming_oww_rk3588.engine import MAX_STEPS_PER_ROUND, Engine
from wyoming_oww_rk3588.features import FRAME_SAMPLES

NAMES = ["alexa", "hey_jarvis", "hey_mycroft", "okay_nabu", "timer"]


class RecordingEngine(Engine):
    """Keeps every stream's scores after every step, and the frame counts of each features call."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.log: dict[int, list[dict[str, float]]] = {}
        self.advanced: list[int] = []
        advance = self.features.advance

        def counting(states, frames):
            self.advanced.append(frames.shape[1])
            return advance(states, frames)

        self.features.advance = counting

    def _detect_step(self, streams, scored, k, *args) -> None:
        super()._detect_step(streams, scored, k, *args)
        rows: dict[int, dict[str, float]] = {}
        for info, listeners, scores, _ in scored:
            for j, (i, _) in enumerate(listeners):
                rows.setdefault(i, {}).update(zip(info.labels, scores[j, k].tolist()))
        for i, stream in enumerate(streams):
            self.log.setdefault(id(stream), []).append(rows.get(i, {}))


def _audios() -> list[np.ndarray]:
    clips = [padded(load_wav("alexa_test.wav"), 2.5, 1.5), padded(load_wav("okay_nabu.wav"), 2.0, 1.0),
             generated("speechlike", 4.0), padded(load_wav("hey_mycroft_test.wav"), 1.0, 1.0)]
    return [clip[: len(clip) // FRAME_SAMPLES * FRAME_SAMPLES] for clip in clips]


def _run(engine: RecordingEngine, audios: list[np.ndarray], feeds: list[int]):
    """Feed each stream `feeds[i]` samples at a time, then let the engine catch up."""
    models = [(n, engine.registry.resolve(n)) for n in NAMES]
    streams = [engine.open_stream(models) for _ in audios]
    index = {id(s): i for i, s in enumerate(streams)}
    detections = []
    for start in range(0, max(len(a) for a in audios), FRAME_SAMPLES):
        for stream, audio, feed in zip(streams, audios, feeds):
            if start % feed == 0:
                stream.add_samples(audio[start : start + feed])
        for stream, found in engine.process(streams):
            detections.append((index[id(stream)], found.label, found.timestamp_ms))
    return streams, detections, [engine.log[id(s)] for s in streams]


def test_catching_up_several_frames_per_round_gives_the_same_scores_states_and_detections():
    audios = _audios()
    live = RecordingEngine(features_backend="cpu", heads_backend="cpu")
    behind = RecordingEngine(features_backend="cpu", heads_backend="cpu")
    live_streams, live_found, live_scores = _run(live, audios, [FRAME_SAMPLES] * len(audios))
    # Uneven backlogs: 5, 3, 2 and 9 frames at a time (more than a round takes, too).
    behind_streams, behind_found, behind_scores = _run(behind, audios, [n * FRAME_SAMPLES for n in (5, 3, 2, 9)])

    assert set(live.advanced) == {1}
    assert MAX_STEPS_PER_ROUND in behind.advanced and {2, 3} & set(behind.advanced)
    assert behind_scores == live_scores  # every step's scores, exactly
    for ours, theirs in zip(behind_streams, live_streams):
        assert ours.features.steps == theirs.features.steps
        assert np.array_equal(ours.features.embeddings, theirs.features.embeddings)
        assert all(np.array_equal(a, b) for a, b in zip(ours.features.conv_states, theirs.features.conv_states))
    assert sorted(behind_found) == sorted(live_found)
    assert {(i, name) for i, name, _ in live_found} >= {(0, "alexa"), (1, "okay_nabu"), (3, "hey_mycroft")}


def test_api_rounds_stay_one_frame_each():
    engine = RecordingEngine(features_backend="cpu", heads_backend="cpu")
    stream = engine.open_stream([("alexa", engine.registry.resolve("alexa"))])
    stream.add_samples(np.zeros(FRAME_SAMPLES * 3, np.int16))
    engine.process([stream], max_rounds=1)
    assert engine.advanced == [1] and stream.ready_frames == 2


def test_cpu_embedding_calls_split_into_parts_give_what_one_stream_alone_gets():
    from wyoming_oww_rk3588.backends.cpu import EMBEDDING_ROWS_PER_CALL, CpuFeatures

    cpu = CpuFeatures()
    rng = np.random.default_rng(5)
    batch, steps = 40, 4  # parts of EMBEDDING_ROWS_PER_CALL // 4 streams
    assert batch > EMBEDDING_ROWS_PER_CALL // steps
    mel = rng.normal(0, 1, (batch, 8 * steps, 32)).astype(np.float32)
    states = [rng.normal(0, 1, (batch, *s)).astype(np.float32) for s in cpu.layout.state_shapes]
    together, together_states = cpu.embed_steps(mel, states)
    for i in (0, 17, 39):
        alone, alone_states = cpu.embed_steps(mel[i : i + 1], [s[i : i + 1] for s in states])
        assert np.array_equal(together[i], alone[0])
        assert all(np.array_equal(a[i], b[0]) for a, b in zip(together_states, alone_states))


class _OneStepAtATime:
    """The CPU backend as a backend without `embed_steps` (like the OpenCL one), optionally
    offering the fused `features_step`."""

    def __init__(self, fused: bool) -> None:
        from wyoming_oww_rk3588.backends.cpu import CpuFeatures

        self._cpu = CpuFeatures()
        self.name, self.layout = "one-step", self._cpu.layout
        self.melspectrogram, self.embed_step = self._cpu.melspectrogram, self._cpu.embed_step
        if fused:
            from wyoming_oww_rk3588.features import scale_mel

            self.features_step = lambda audio, states: self.embed_step(scale_mel(self.melspectrogram(audio)), states)


def test_advancing_several_frames_on_a_one_step_backend_equals_single_steps():
    from wyoming_oww_rk3588.features import FeaturePipeline

    audios = np.stack([a[: 12 * FRAME_SAMPLES] for a in _audios()]).reshape(4, 12, FRAME_SAMPLES)
    for fused in (False, True):
        pipe = FeaturePipeline(_OneStepAtATime(fused))
        assert not pipe.multi_step
        stepped, advanced = ([pipe.new_state(16) for _ in audios] for _ in range(2))
        for k in range(12):
            pipe.step(stepped, audios[:, k])
        for k in range(0, 12, 3):
            embeddings = pipe.advance(advanced, audios[:, k : k + 3])
            for j in range(3):
                pipe.push(advanced, embeddings[:, j])
        for a, b in zip(stepped, advanced):
            assert a.steps == b.steps == 12
            assert np.array_equal(a.embeddings, b.embeddings) and np.array_equal(a.context, b.context)
            assert all(np.array_equal(x, y) for x, y in zip(a.conv_states, b.conv_states))
