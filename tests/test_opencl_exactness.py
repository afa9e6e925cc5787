"""The OpenCL features backend computes what the CPU backend and openWakeWord 0.6.0 compute.

Runs on whatever OpenCL device PyOpenCL finds (PoCL in CI, a GPU where there is one).
fp32: embeddings and scores within 1e-3 absolute; fp16 (half storage): scores within 2e-2, and
embeddings within 2e-2 of their own scale (max |embedding| is ~70: half weights alone move
them by ~0.1, as half's spacing at 64 is 0.06).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from reference import (
    FIRST_OWN_EMBEDDING_STEP,
    engine_scores,
    first_exact_step,
    generated,
    load_wav,
    oww_scores,
    padded,
)

from wyoming_oww_rk3588.backends.cpu import CpuFeatures, CpuHeads, make_session
from wyoming_oww_rk3588.backends.opencl import OpenClFeatures, allowed_error
from wyoming_oww_rk3588.features import FRAME_SAMPLES, FeaturePipeline, scale_mel
from wyoming_oww_rk3588.models.registry import (
    BUILTIN_DIR,
    ModelRegistry,
    builtin_feature_path,
)

FP32_TOLERANCE = 1e-3
FP16_SCORE_TOLERANCE = 2e-2
ONNX_HEADS = ["alexa", "hey_jarvis", "hey_mycroft", "hey_rhasspy", "timer", "weather"]


CASES = {
    **{clip: (lambda clip=clip: padded(load_wav(clip), 2.5, 2.0))
       for clip in ("alexa_test.wav", "hey_mycroft_test.wav", "hey_jane.wav")},
    **{kind: (lambda kind=kind: generated(kind, 6.0)) for kind in ("silence", "noise", "tones")},
}


@pytest.fixture(scope="module")
def cpu():
    return CpuFeatures()


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def opencl(request):
    backend = OpenClFeatures(device="any", precision=request.param)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def opencl32():
    backend = OpenClFeatures(device="any")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def oww_features():
    from openwakeword.utils import AudioFeatures

    return AudioFeatures(melspec_model_path=str(BUILTIN_DIR / "melspectrogram.onnx"),
                         embedding_model_path=str(BUILTIN_DIR / "embedding_model.onnx"), inference_framework="onnx")


def _embedding_limit(backend, reference: np.ndarray) -> float:
    return allowed_error(backend.precision, float(np.abs(reference).max()))


def test_mel_clips_each_row_at_its_own_top_80_db_like_the_model_run_row_by_row(opencl32, cpu):
    rng = np.random.default_rng(7)
    t = np.arange(1760) / 16000
    rows = []
    for i, gain in enumerate(np.geomspace(1e-3, 30, 24)):
        x = gain * (3000 * np.sin(2 * np.pi * (200 + 90 * i) * t) + rng.normal(0, 500, len(t)))
        x[: 512 + 160 * (i % 7)] = 0  # silent frames: far below this row's max - 80 dB
        rows.append(np.clip(np.round(x), -32768, 32767))
    rows.append(np.zeros(1760))
    audio = np.stack(rows).astype(np.float32)
    original = make_session(str(builtin_feature_path("melspectrogram")))  # the unmodified graph
    alone = np.stack([original.run(None, {"input": row[None]})[0][0, 0] for row in audio])
    ours = opencl32.melspectrogram(audio)
    assert ours.shape == (25, 8, 32)
    # 1e-2 dB is 1e-3 after openWakeWord's x/10 + 2
    assert np.abs(ours - alone).max() <= 10 * FP32_TOLERANCE
    assert np.abs(ours - cpu.melspectrogram(audio)).max() <= 10 * FP32_TOLERANCE
    clipped = list(range(24))  # every row but the silent one has silent frames at its floor
    floors = ours.max(axis=(1, 2)) - 80
    assert np.allclose(ours.min(axis=(1, 2))[clipped], floors[clipped], atol=1e-3), "each row has its own floor"
    assert len(np.unique(np.round(floors[clipped]))) > 10


@pytest.mark.parametrize("samples", [512, 1280, 1760, 16000])
def test_mel_of_any_length_matches_the_cpu(opencl32, cpu, samples):
    audio = np.round(np.random.default_rng(samples).normal(0, 4000, (3, samples))).astype(np.float32)
    ours, theirs = opencl32.melspectrogram(audio), cpu.melspectrogram(audio)
    assert ours.shape == theirs.shape == (3, (samples - 512) // 160 + 1, 32)
    assert np.abs(ours - theirs).max() <= 10 * FP32_TOLERANCE


def test_direct_dft_mel_matches_the_fft_mel(cpu):
    backend = OpenClFeatures(device="any", mel_fft=False)
    assert backend.mel_method == "dft"
    audio = np.round(np.random.default_rng(3).normal(0, 4000, (4, 1760))).astype(np.float32)
    assert np.abs(backend.melspectrogram(audio) - cpu.melspectrogram(audio)).max() <= 10 * FP32_TOLERANCE


@pytest.mark.parametrize("case", list(CASES))
def test_mel_matches_openwakeword_on_whole_clips(opencl32, oww_features, case):
    audio = CASES[case]()
    theirs = oww_features._get_melspectrogram(audio)
    ours = scale_mel(opencl32.melspectrogram(audio[None].astype(np.float32)))[0]
    assert np.abs(ours - theirs).max() <= FP32_TOLERANCE


@pytest.mark.parametrize("case", list(CASES))
def test_streaming_embeddings_match_openwakewords_windows(opencl, oww_features, case):
    mel = oww_features._get_melspectrogram(CASES[case]())
    windows = np.stack([mel[i : i + 76] for i in range(0, len(mel) - 75, 8)])
    theirs = oww_features.embedding_model_predict(windows[..., None].astype(np.float32))
    # Step k's embedding covers the 76 frames that end with its 8 new ones: 4 leading frames
    # put those ends on openWakeWord's window grid (starts 0, 8, 16, ...).
    frames = np.concatenate([mel[:4], mel])[: (len(mel) + 4) // 8 * 8].astype(np.float32)
    states = [np.zeros((1, *s), np.float32) for s in opencl.layout.state_shapes]
    ours = []
    for k in range(len(frames) // 8):
        embedding, states = opencl.embed_step(frames[None, 8 * k : 8 * k + 8], states)
        ours.append(embedding[0])
    ours = np.stack(ours[9 : 9 + len(theirs)])
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= _embedding_limit(opencl, theirs)


@pytest.mark.parametrize("case", list(CASES))
def test_end_to_end_embeddings_match_openwakewords_streaming_features(opencl32, case):
    """Audio in, embeddings out, in 1280-sample steps: openWakeWord's AudioFeatures against the
    OpenCL features pipeline, once both buffers hold only the clip's own audio."""
    from openwakeword.utils import AudioFeatures

    audio = CASES[case]()
    theirs_features = AudioFeatures(melspec_model_path=str(BUILTIN_DIR / "melspectrogram.onnx"),
                                    embedding_model_path=str(BUILTIN_DIR / "embedding_model.onnx"),
                                    inference_framework="onnx")
    pipe = FeaturePipeline(opencl32)
    state = pipe.new_state(16)
    error = 0.0
    for step in range(len(audio) // FRAME_SAMPLES):
        frame = audio[step * FRAME_SAMPLES : (step + 1) * FRAME_SAMPLES]
        theirs_features(frame)
        ours = pipe.step([state], frame[None])[0]
        if step + 1 >= FIRST_OWN_EMBEDDING_STEP:
            error = max(error, float(np.abs(ours - theirs_features.feature_buffer[-1]).max()))
    assert error <= FP32_TOLERANCE


def test_windowed_embeddings_match_the_cpu(opencl, cpu, oww_features):
    mel = oww_features._get_melspectrogram(CASES["alexa_test.wav"]())
    windows = np.stack([mel[i : i + 76] for i in range(0, len(mel) - 75, 8)]).astype(np.float32)
    theirs = cpu.embed_windows(windows)
    assert np.abs(opencl.embed_windows(windows) - theirs).max() <= _embedding_limit(opencl, theirs)
    assert opencl.embed_windows(np.zeros((0, 76, 32), np.float32)).shape == (0, 96)


def _streams(batch: int) -> list[np.ndarray]:
    """`batch` streams: every case at gains from 0.02 to 3, cycled."""
    base = [make() for make in CASES.values()]
    length = min(len(a) for a in base)
    gains = np.geomspace(0.02, 3.0, max(1, -(-batch // len(base))))
    audios = [np.clip(a[:length] * g, -32768, 32767).astype(np.int16) for g in gains for a in base]
    return audios[:batch]


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_a_batch_of_streams_gets_the_cpus_mel_embeddings_and_head_scores(opencl, cpu, batch):
    """Stage by stage on the same inputs (mel; embeddings from the same mel and states), then
    end to end through the features pipeline, each backend on its own mel, to head scores."""
    audios = _streams(batch)
    heads, registry = CpuHeads(), ModelRegistry()
    models = [registry.resolve(name) for name in ONNX_HEADS]
    history = max(m.window for m in models)
    pipes = [FeaturePipeline(opencl), FeaturePipeline(cpu)]
    streams = [[pipe.new_state(history) for _ in audios] for pipe in pipes]
    conv_states = [np.stack(layer) for layer in zip(*(s.conv_states for s in streams[1]))]
    mel_error = embedding_error = end_to_end_error = score_error = scale = 0.0
    for step in range(len(audios[0]) // FRAME_SAMPLES):
        frames = np.stack([a[step * FRAME_SAMPLES : (step + 1) * FRAME_SAMPLES] for a in audios])
        mel = pipes[1].mel_steps(streams[1], frames)
        mel_error = max(mel_error, float(np.abs(pipes[0].mel_steps(streams[1], frames) - mel).max()))
        ours, _ = opencl.embed_step(mel, conv_states)
        theirs, conv_states = cpu.embed_step(mel, conv_states)
        embedding_error = max(embedding_error, float(np.abs(ours - theirs).max()))
        scale = max(scale, float(np.abs(theirs).max()))
        ends = [pipe.step(side, frames) for pipe, side in zip(pipes, streams)]
        if step + 1 >= FIRST_OWN_EMBEDDING_STEP:
            end_to_end_error = max(end_to_end_error, float(np.abs(ends[0] - ends[1]).max()))
        for model in models:
            if step + 1 >= first_exact_step(model.window):
                a, b = (heads.score(model, np.stack([s.window(model.window) for s in side])) for side in streams)
                score_error = max(score_error, float(np.abs(a - b).max()))
    assert mel_error <= FP32_TOLERANCE
    assert embedding_error <= allowed_error(opencl.precision, scale)
    assert end_to_end_error <= allowed_error(opencl.precision, scale), "embeddings, each backend on its own mel"
    assert score_error <= (FP32_TOLERANCE if opencl.precision == "fp32" else FP16_SCORE_TOLERANCE)


def test_engine_on_opencl_scores_every_frame_like_openwakeword():
    from wyoming_oww_rk3588.engine import Engine

    engine = Engine(features_backend="opencl", heads_backend="cpu")
    assert engine.backends["features"] == "opencl"
    audio = padded(load_wav("alexa_test.wav"), 2.5, 1.0)
    ours = engine_scores(engine, [audio], ONNX_HEADS)[0]
    ref = oww_scores(audio, [f"{h}_v0.1" for h in ONNX_HEADS])
    for name in ONNX_HEADS:
        info = engine.registry.resolve(name)
        start = first_exact_step(info.window) - 1
        for label in info.labels:
            diff = max(abs(a[label] - b[label]) for a, b in zip(ours[start:], ref[start:]))
            assert diff <= FP32_TOLERANCE, f"{label}: max |opencl - openWakeWord| = {diff}"
    assert max(s["alexa"] for s in ours) > 0.5
    engine.close()


def test_nothing_in_the_backend_copies_weights_out_of_the_onnx_files():
    # The kernels' weights are re-laid-out views of the shipped graphs, checked here against them.
    from wyoming_oww_rk3588.backends import opencl_kernels as K

    model = onnx.load(str(builtin_feature_path("embedding")))
    layers = K.read_embedding(model, windowed=False)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert len(layers) == len(convs) == 20
    for layer, conv in zip(layers, convs):
        w = weights[conv.input[1]]
        assert np.array_equal(layer.weight, w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))


def _assert_a_random_step_like_the_cpu(backend, cpu, batch: int, rng) -> None:
    states = [rng.normal(0, 1, (batch, *s)).astype(np.float32) for s in backend.layout.state_shapes]
    mel = rng.uniform(-1, 4, (batch, 8, 32)).astype(np.float32)
    ours, our_states = backend.embed_step(mel, states)
    theirs, their_states = cpu.embed_step(mel, states)
    assert np.abs(ours - theirs).max() <= FP32_TOLERANCE
    assert all(np.abs(a - b).max() <= FP32_TOLERANCE for a, b in zip(our_states, their_states))


@pytest.mark.parametrize("mode", ["narrow", "latency", "throughput"])
def test_both_kernel_tilings_step_like_the_cpu(cpu, mode):
    """Each batch size picks a tiling (narrow, latency, throughput): every one is exact."""
    backend = OpenClFeatures(device="any", tiles={"mode": mode})
    rng = np.random.default_rng(11)
    _assert_a_random_step_like_the_cpu(backend, cpu, 100, rng)
    windows = rng.uniform(-1, 4, (5, 76, 32)).astype(np.float32)
    assert np.abs(backend.embed_windows(windows) - cpu.embed_windows(windows)).max() <= FP32_TOLERANCE
    backend.close()


def test_a_batch_split_into_overlapping_chunks_steps_like_the_cpu(opencl32, cpu, monkeypatch):
    """Large batches go through the device in chunks on three queues; forced here for 40 streams."""
    from wyoming_oww_rk3588.backends import opencl_plan

    monkeypatch.setattr(opencl_plan, "CHUNK_MIN", 8)
    _assert_a_random_step_like_the_cpu(opencl32, cpu, 40, np.random.default_rng(5))


def test_states_passed_back_as_returned_are_read_in_place_and_stay_exact(opencl32, cpu, monkeypatch):
    """Returned states live in page-locked memory; passed back unchanged they are DMA'd as they
    are (no packing), with or without chunking, and are never overwritten while held."""
    from wyoming_oww_rk3588.backends import opencl_plan

    monkeypatch.setattr(opencl_plan, "DIRECT_MIN_BYTES", 0)  # the in-place DMA also for 24 streams
    rng = np.random.default_rng(9)
    mel = [rng.uniform(-1, 4, (24, 8, 32)).astype(np.float32) for _ in range(4)]
    ours = theirs = [np.zeros((24, *s), np.float32) for s in opencl32.layout.state_shapes]
    for step, chunk_min in enumerate((10**9, 10**9, 6, 6)):
        monkeypatch.setattr(opencl_plan, "CHUNK_MIN", chunk_min)
        assert step == 0 or all(opencl32._pinned.holds(s) for s in ours)
        before = [s.copy() for s in ours]
        e_ours, new = opencl32.embed_step(mel[step], ours)
        assert all(np.array_equal(b, s) for b, s in zip(before, ours)), "inputs held by the caller changed"
        e_theirs, theirs = cpu.embed_step(mel[step], theirs)
        assert np.abs(e_ours - e_theirs).max() <= FP32_TOLERANCE
        assert all(np.abs(a - b).max() <= FP32_TOLERANCE for a, b in zip(new, theirs))
        ours = new


@pytest.mark.parametrize("batch", [1, 5, 40])
def test_the_fused_features_step_equals_mel_then_embed_step(opencl, monkeypatch, batch):
    """features_step keeps the scaled mel on the device (one round trip); it gives what
    melspectrogram + x/10 + 2 + embed_step give, reads states passed back in place, never
    changes its inputs, and takes the two-call path for batches that are pipelined in chunks."""
    from wyoming_oww_rk3588.backends import opencl_plan

    if batch == 40:
        monkeypatch.setattr(opencl_plan, "CHUNK_MIN", 8)
    rng = np.random.default_rng(11)
    audio = [np.round(rng.normal(0, 6000, (batch, 1760)) * rng.uniform(0, 1, (batch, 1))).astype(np.float32)
             for _ in range(3)]
    ours = theirs = [rng.normal(0, 1, (batch, *s)).astype(np.float32) for s in opencl.layout.state_shapes]
    for step in range(3):
        before = [s.copy() for s in ours]
        e_ours, new = opencl.features_step(audio[step], ours)
        assert all(np.array_equal(b, s) for b, s in zip(before, ours)), "inputs held by the caller changed"
        e_theirs, theirs = opencl.embed_step(scale_mel(opencl.melspectrogram(audio[step])), theirs)
        # Identical where the device divides x/10 correctly rounded (numpy's); else within ulps,
        # which half storage can round apart by one half-ulp.
        limit = 1e-4 if opencl.precision == "fp32" else allowed_error("fp16", float(np.abs(e_theirs).max()))
        assert np.abs(e_ours - e_theirs).max() <= limit * max(1.0, float(np.abs(e_theirs).max()))
        assert all(np.abs(a - b).max() <= limit * max(1.0, float(np.abs(b).max())) for a, b in zip(new, theirs))
        theirs = [s.copy() for s in theirs]
        ours = new
