"""Wyoming framing: bytes from a socket, however they were cut, give wyoming's own events back."""

from __future__ import annotations

import io

import pytest
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event, read_event
from wyoming.info import Describe
from wyoming.wake import Detect

from wyoming_oww_rk3588.wire import MAX_HEADER_BYTES, EventParser, ProtocolViolation, encode

EVENTS = [
    Describe().event(),
    Detect(names=["okay_nabu", "alexa"]).event(),
    AudioStart(rate=16000, width=2, channels=1, timestamp=0).event(),
    *(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(range(256)) + bytes(64), timestamp=10 * i).event()
      for i in range(3)),
    Event(type="audio-chunk", data={"rate": 16000, "width": 2, "channels": 1}, payload=b"\x01\x02"),
    AudioStop(timestamp=30).event(),
]
WIRE = b"".join(encode(e) for e in EVENTS)


def _parse(pieces) -> list[Event]:
    parser, out = EventParser(), []
    for piece in pieces:
        parser.feed(piece)
        while (event := parser.next()) is not None:
            out.append(event)
    assert parser.buffered == 0
    return out


def _same(a: Event, b: Event) -> bool:
    return a.type == b.type and a.data == b.data and (a.payload or None) == (b.payload or None)


def test_encode_is_what_wyoming_reads():
    stream = io.BytesIO(WIRE)
    for event in EVENTS:
        assert _same(read_event(stream), event)


@pytest.mark.parametrize("size", [1, 2, 7, 100, 469, 4096, len(WIRE)])
def test_any_cut_of_the_bytes_gives_the_same_events(size):
    events = _parse(WIRE[i : i + size] for i in range(0, len(WIRE), size))
    assert len(events) == len(EVENTS) and all(map(_same, events, EVENTS))


def test_last_size_is_each_events_bytes_on_the_wire():
    parser = EventParser()
    parser.feed(WIRE)
    for event in EVENTS:
        assert _same(parser.next(), event)
        assert parser.last_size == len(encode(event))


@pytest.mark.parametrize("line, needle", [
    (b"not json\n", "not JSON"),
    (b"[1]\n", "no string 'type'"),
    (b'{"type": "audio-chunk", "payload_length": 99999999999}\n', "exceeds the limit"),
    (b'{"type": "audio-chunk", "data_length": -1}\n', "non-negative integer"),
    (b'{"type": "audio-chunk", "data_length": true}\n', "non-negative integer"),
    (b'{"type": "x", "data": [1]}\n', "JSON object"),
    (b'{"type": "x", "data_length": 3}\n[1]', "JSON object"),
    (b'{"type": "x", "data_length": 3}\nabc', "not JSON"),
])
def test_bad_framing_is_refused_with_what_is_wrong(line, needle):
    parser = EventParser()
    parser.feed(line)
    with pytest.raises(ProtocolViolation, match=needle):
        parser.next()


def test_a_header_line_longer_than_any_wyoming_header_is_refused_before_its_end():
    parser = EventParser()
    parser.feed(b"{" + b" " * MAX_HEADER_BYTES)
    with pytest.raises(ProtocolViolation, match="too long"):
        parser.next()


def test_a_huge_announced_payload_is_refused_before_it_arrives():
    parser = EventParser()
    parser.feed(b'{"type": "audio-chunk", "payload_length": 8589934592}\n')
    with pytest.raises(ProtocolViolation, match="exceeds"):
        parser.next()
