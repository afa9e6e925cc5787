"""The Wyoming protocol over real TCP with the real `wyoming` client, as HA and satellites use it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from wyoming.audio import AudioChunk, AudioStart
from wyoming.info import Describe, Info
from wyoming.wake import Detect, Detection

from reference import load_wav, padded
from server_harness import ServerThread, client, drain_events, encode, read_until, send_audio

ALEXA = load_wav("alexa_test.wav")
MYCROFT = load_wav("hey_mycroft_test.wav")
JANE = load_wav("hey_jane.wav")
NABU = load_wav("okay_nabu.wav")


@pytest.fixture(scope="module")
def server():
    with ServerThread() as srv:
        yield srv


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_describe_lists_every_model_with_phrase_languages_and_attribution(server):
    async def go():
        async with client(server.port) as c:
            await c.write_event(Describe().event())
            return Info.from_event(await read_until(c, {"info"}))

    info = run(go())
    assert len(info.wake) == 1
    models = {m.name: m for m in info.wake[0].models}
    assert set(models) == set(server.models)
    for model in models.values():
        assert model.phrase and model.languages and model.attribution.name and model.installed and model.version


def test_home_assistant_habit_gets_the_exact_id_back_mid_stream_without_audio_stop(server):
    audio = padded(ALEXA, 1.0, 1.0)

    async def go():
        async with client(server.port) as c:
            await c.write_event(Detect(names=["alexa"]).event())
            start = AudioStart(rate=16000, width=2, channels=1).event()
            start.data["timestamp"] = None
            await c.write_event(start)
            await send_audio(c, audio, chunk_samples=160, start=False, stop=False)
            return Detection.from_event(await read_until(c, {"detection"}))

    detection = run(go())
    assert detection.name == "alexa"
    # The phrase ends ~1.62 s in; the detection's audio time is computed from samples.
    assert 1000 <= detection.timestamp <= 2600 and detection.timestamp % 80 == 0


@pytest.mark.parametrize("asked", ["ALEXA", "alexa_v0.1", "Alexa"])
def test_names_match_case_insensitively_with_or_without_version_and_come_back_as_asked(server, asked):
    async def go():
        async with client(server.port) as c:
            await c.write_event(Detect(names=[asked]).event())
            await send_audio(c, padded(ALEXA, 1.0, 1.0))
            return Detection.from_event(await read_until(c, {"detection"}))

    assert run(go()).name == asked


def test_unknown_names_get_an_error_naming_them_and_the_session_goes_on(server):
    async def go():
        async with client(server.port) as c:
            await c.write_event(Detect(names=["no_such_model", "../../etc/passwd", "alexa"]).event())
            error = await read_until(c, {"error"})
            await send_audio(c, padded(ALEXA, 1.0, 1.0))
            return error, Detection.from_event(await read_until(c, {"detection"}))

    error, detection = run(go())
    assert "no_such_model" in error.data["text"] and "../../etc/passwd" in error.data["text"]
    assert detection.name == "alexa"


def test_detect_without_names_listens_with_every_model(server):
    async def go():
        async with client(server.port) as c:
            await c.write_event(Detect(names=None).event())
            await send_audio(c, padded(MYCROFT, 1.0, 1.0))
            return Detection.from_event(await read_until(c, {"detection"}))

    assert run(go()).name == "hey_mycroft"


def test_near_miss_gets_not_detected_after_audio_stop(server):
    async def go():
        async with client(server.port) as c:
            await c.write_event(Detect(names=None).event())
            await send_audio(c, padded(JANE, 1.0, 1.0))
            return await read_until(c, {"detection", "not-detected"})

    assert run(go()).type == "not-detected"


def test_several_sessions_on_one_connection_and_it_stays_responsive(server):
    async def go():
        results = []
        async with client(server.port) as c:
            for clip, name in ((ALEXA, "alexa"), (JANE, None), (MYCROFT, "hey_mycroft"), (ALEXA, "alexa")):
                await c.write_event(Detect(names=[name] if name else ["alexa", "hey_mycroft"]).event())
                await send_audio(c, padded(clip, 1.0, 1.0))
                event = await read_until(c, {"detection", "not-detected"})
                results.append(event.data.get("name") if event.type == "detection" else None)
                if event.type == "detection":
                    # the session still ends with audio-stop; nothing else may come back
                    assert [e.type for e in await drain_events(c)] == []
            await c.write_event(Describe().event())
            await read_until(c, {"info"})
        return results

    assert run(go()) == ["alexa", None, "hey_mycroft", "alexa"]


def test_a_phrase_ending_1_5_s_after_audio_start_is_heard(server):
    lead = int(1.5 * 16000) - len(ALEXA)
    audio = np.concatenate([np.zeros(lead, np.int16), ALEXA, np.zeros(16000, np.int16)])

    async def go():
        async with client(server.port) as c:
            await c.write_event(Detect(names=["alexa"]).event())
            await send_audio(c, audio, stop=False)
            return Detection.from_event(await read_until(c, {"detection"}))

    assert run(go()).timestamp <= 2500


def test_okay_nabu_fires_out_of_the_box_and_hey_jane_does_not(server):
    async def go(clip, names):
        async with client(server.port) as c:
            await c.write_event(Detect(names=names).event())
            await send_audio(c, padded(clip, 1.0, 1.0))
            return await read_until(c, {"detection", "not-detected"})

    nabu = run(go(NABU, ["okay_nabu"]))
    assert nabu.type == "detection" and nabu.data["name"] == "okay_nabu"
    assert run(go(JANE, ["okay_nabu"])).type == "not-detected"


def test_wyoming_satellite_1_0_habit_no_audio_start_ns_timestamps_and_re_arm(server):
    """detect, then 64 ms chunks stamped with a monotonic clock in ns, no audio-start/stop;
    after a detection, a new detect re-arms and the same utterance never fires again."""
    audio = padded(NABU, 1.0, 0.3)
    phrase_end = int((1.0 + len(NABU) / 16000) * 16000)
    clock = lambda n: 987_654_321_000 + n * 64_000_000  # noqa: E731

    async def go():
        async with client(server.port) as c:
            await c.write_event(Detect(names=["ok_nabu"]).event())
            await send_audio(c, audio, chunk_samples=1024, start=False, stop=False, timestamps=clock)
            first = Detection.from_event(await read_until(c, {"detection"}))
            # the satellite pauses, re-arms, and streams the rest of the room's audio
            await c.write_event(Detect(names=["ok_nabu"]).event())
            tail = np.concatenate([audio[phrase_end - 4000 :], np.zeros(32000, np.int16)])
            await send_audio(c, tail, chunk_samples=1024, start=False, stop=False, timestamps=clock)
            stale = [e for e in await drain_events(c, 1.5) if e.type == "detection"]
            await c.write_event(Detect(names=["ok_nabu"]).event())
            await send_audio(c, audio, chunk_samples=1024, start=False, stop=False, timestamps=clock)
            second = Detection.from_event(await read_until(c, {"detection"}))
            return first, stale, second

    first, stale, second = run(go())
    assert first.name == second.name == "ok_nabu"
    assert stale == []
    assert first.timestamp < 3500 and second.timestamp < 3500  # audio time, not the client's clock


@pytest.mark.parametrize(
    "rate,width,channels",
    [(8000, 2, 1), (16000, 2, 1), (22050, 2, 1), (44100, 2, 1), (48000, 2, 1), (16000, 2, 2), (16000, 4, 1),
     (48000, 4, 2), (16000, 2, 4), (48000, 4, 6)],
)
def test_any_audio_format_is_converted_and_still_detects(server, rate, width, channels):
    raw = encode(padded(ALEXA, 1.0, 1.0), rate, width, channels)

    async def go():
        async with client(server.port) as c:
            await c.write_event(Detect(names=["alexa"]).event())
            await send_audio(c, raw, chunk_samples=rate // 50, rate=rate, width=width, channels=channels)
            return await read_until(c, {"detection", "not-detected"})

    event = run(go())
    assert event.type == "detection", f"{rate} Hz, {width} bytes, {channels} channels"


def test_chunks_of_a_changed_format_mid_stream_are_still_converted(server):
    audio = padded(ALEXA, 1.0, 1.0)
    half = len(audio) // 2 // 160 * 160

    async def go():
        async with client(server.port) as c:
            await c.write_event(Detect(names=["alexa"]).event())
            await send_audio(c, audio[:half], stop=False)
            raw = encode(audio[half:], 48000, 2, 1)
            for i in range(0, len(raw), 960):
                await c.write_event(AudioChunk(rate=48000, width=2, channels=1, audio=raw[i : i + 960].tobytes()).event())
            return await read_until(c, {"detection"})

    assert run(go()).type == "detection"
