"""Wyoming's framing, bytes to events and back, with limits checked before anything is allocated.

An event is a JSON header line, then `data_length` bytes of JSON data and `payload_length`
bytes of payload (`wyoming.event.async_read_event` reads the same). `EventParser` takes
whatever a socket read returned and yields every complete event in it: one pass over one
buffer, with no coroutine per event. At hundreds of satellites sending Home Assistant's 10 ms
chunks that is 25 000 events a second, and the per-event cost of a stream reader was what
limited how many satellites one process could hold. It refuses a header that is not a JSON
object with a string `type`, or that announces more than a wake word client ever needs, so one
client cannot make the server buffer gigabytes. Events go out in wyoming's own encoding.
"""

from __future__ import annotations

import io
import json

from wyoming.event import Event, write_event

MAX_HEADER_BYTES = 64 * 1024  # one header line (what asyncio's StreamReader allowed)
MAX_DATA_BYTES = 64 * 1024  # JSON data of one event
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024  # one audio chunk: 4 MiB is > 10 s of 48 kHz stereo 32-bit


class ProtocolViolation(ValueError):
    """The peer broke the framing; the message says how. The connection is dropped."""


class EventParser:
    """Bytes in (`feed`), complete events out (`next`), in order.

    `last_size` is the wire size of the event `next` returned last, so a connection can tell
    how many bytes its client's audio chunks take."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0  # start of the first unparsed byte
        self._header: dict | None = None  # parsed header whose body has not fully arrived
        self._header_size = 0
        self.last_size = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buffer[: self._pos]  # amortised: once per read, not per event
            self._pos = 0
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received that no returned event holds yet."""
        return len(self._buffer) - self._pos

    def next(self) -> Event | None:
        """The next complete event, or None until more bytes come; ProtocolViolation if the
        bytes cannot be Wyoming."""
        buffer, pos = self._buffer, self._pos
        if self._header is None:
            end = buffer.find(b"\n", pos)
            if end < 0:
                if len(buffer) - pos > MAX_HEADER_BYTES:
                    raise ProtocolViolation("event header line too long; a Wyoming header is one short JSON line")
                return None
            self._header = _check_header(buffer[pos:end])
            self._header_size = end + 1 - pos
            pos = self._pos = end + 1
        header = self._header
        data_length = header.get("data_length") or 0
        payload_length = header.get("payload_length") or 0
        if len(buffer) - pos < data_length + payload_length:
            return None
        data = header.get("data") or {}
        if data_length:
            try:
                extra = json.loads(buffer[pos : pos + data_length])
            except ValueError as err:
                raise ProtocolViolation("event data is not JSON") from err
            if not isinstance(extra, dict):
                raise ProtocolViolation("event data must be a JSON object")
            data.update(extra)
            pos += data_length
        payload = bytes(buffer[pos : pos + payload_length]) if payload_length else None
        self._pos = pos + payload_length
        self.last_size = self._header_size + data_length + payload_length
        self._header = None
        return Event(type=header["type"], data=data, payload=payload)


def _check_header(line: bytes | bytearray) -> dict:
    try:
        header = json.loads(line)
    except ValueError as err:
        raise ProtocolViolation("event header is not JSON; is this a Wyoming client?") from err
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolViolation("event header has no string 'type'; is this a Wyoming client?")
    for key, limit in (("data_length", MAX_DATA_BYTES), ("payload_length", MAX_PAYLOAD_BYTES)):
        value = header.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ProtocolViolation(f"{key} must be a non-negative integer, got {value!r}")
        if value > limit:
            raise ProtocolViolation(f"{key} {value} exceeds the limit of {limit} bytes")
    if "data" in header and not isinstance(header["data"], dict):
        raise ProtocolViolation("event 'data' must be a JSON object")
    return header


def encode(event: Event) -> bytes:
    """The event exactly as wyoming writes it."""
    out = io.BytesIO()
    write_event(event, out)
    return out.getvalue()
