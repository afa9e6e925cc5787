"""The optional stages through a real server: `--vad-threshold`, `--noise-suppression`, verifiers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from wyoming.wake import Detect

from reference import load_wav, padded
from server_harness import ServerThread, client, read_until, send_audio
from wyoming_oww_rk3588.denoise import speex_factory
from wyoming_oww_rk3588.errors import BackendUnavailable

ALEXA = padded(load_wav("alexa_test.wav"), 2.5, 1.0)


def _speex_flags() -> list[str]:
    try:
        speex_factory()
    except BackendUnavailable:
        return []  # the VAD part of these tests still runs
    return ["--noise-suppression"]


def outcome(port: int, audio: np.ndarray) -> str:
    async def go():
        async with client(port) as c:
            await c.write_event(Detect(names=["alexa"]).event())
            await send_audio(c, audio, chunk_samples=1024)
            event = await read_until(c, {"detection", "not-detected"})
            return event.type

    return asyncio.run(asyncio.wait_for(go(), 60))


@pytest.fixture(scope="module")
def gated():
    with ServerThread("--vad-threshold", "0.5", *_speex_flags()) as srv:
        yield srv


def test_a_spoken_wake_word_passes_the_vad_gate_and_noise_suppression(gated):
    assert gated.engine.vad is not None
    assert outcome(gated.port, ALEXA) == "detection"


def test_a_wake_word_too_faint_for_the_vad_is_not_detected_although_it_scores(gated):
    # At 3 % of its level alexa still scores ~1.0, but Silero's speech probability stays ~0.2.
    faint = (ALEXA * 0.03).astype(np.int16)
    assert outcome(gated.port, faint) == "not-detected"
    with ServerThread() as plain:
        assert outcome(plain.port, faint) == "detection"


def test_a_verifier_that_rejects_everything_silences_its_model(tmp_path):
    from wyoming_oww_rk3588.verifier import Verifier, save_verifier

    size = 16 * 96
    save_verifier(Verifier(16, np.zeros(size), np.ones(size), np.zeros(size), -30.0), tmp_path / "alexa.verifier.npz")
    with ServerThread("--custom-model-dir", str(tmp_path)) as srv:
        assert set(srv.engine.verifiers) == {"alexa"}
        assert outcome(srv.port, ALEXA) == "not-detected"
