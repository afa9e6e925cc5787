"""Limits on what a client may send, checked before anything is read or allocated.

Events are read in wyoming's framing (a JSON header line, then `data_length` bytes of JSON
data and `payload_length` bytes of payload, as `wyoming.event.async_read_event` reads them)
into wyoming's `Event`. This reader refuses a header that is not a JSON object with a string
`type`, or that announces more data than a wake word client ever needs, so one client cannot
make the server buffer gigabytes; and it parses each header once (wyoming's reader would parse
it again after the checks: at hundreds of satellites, 6 000 chunks a second, that shows).
"""

from __future__ import annotations

import asyncio
import json
import logging

from wyoming.event import Event

_LOGGER = logging.getLogger(__name__)

MAX_DATA_BYTES = 64 * 1024  # JSON data of one event
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024  # one audio chunk: 4 MiB is > 10 s of 48 kHz stereo 32-bit


class ProtocolViolation(ValueError):
    """The peer broke the framing; the connection is dropped (wyoming treats ValueError as EOF)."""


class GuardedReader:
    """Reads checked wyoming events from an asyncio.StreamReader."""

    def __init__(self, reader: asyncio.StreamReader, peer: str) -> None:
        self._reader = reader
        self._peer = peer
        self.violation: str | None = None

    def _refuse(self, reason: str) -> ProtocolViolation:
        self.violation = reason
        _LOGGER.warning("Dropping client %s: %s", self._peer, reason)
        return ProtocolViolation(reason)

    async def read_event(self) -> Event | None:
        """The next event; None at the end of the stream or after a violation (logged once,
        and the connection is dropped, as wyoming's reader ends on a ValueError)."""
        try:
            header = await self._header()
            if header is None:
                return None
            data = header.get("data") or {}
            if header.get("data_length"):
                try:
                    extra = json.loads(await self.readexactly(header["data_length"]))
                except ValueError as err:
                    raise self._refuse("event data is not JSON") from err
                if not isinstance(extra, dict):
                    raise self._refuse("event data must be a JSON object")
                data.update(extra)
            payload = await self.readexactly(header["payload_length"]) if header.get("payload_length") else None
        except ProtocolViolation:
            return None
        return Event(type=header["type"], data=data, payload=payload)

    async def _header(self) -> dict | None:
        try:
            line = await self._reader.readline()
        except ValueError as err:  # longer than the StreamReader's limit (64 KiB)
            raise self._refuse("event header line too long; a Wyoming header is one short JSON line") from err
        if not line:
            return None
        try:
            header = json.loads(line)
        except ValueError as err:
            raise self._refuse("event header is not JSON; is this a Wyoming client?") from err
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            raise self._refuse("event header has no string 'type'; is this a Wyoming client?")
        for key, limit in (("data_length", MAX_DATA_BYTES), ("payload_length", MAX_PAYLOAD_BYTES)):
            value = header.get(key)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise self._refuse(f"{key} must be a non-negative integer, got {value!r}")
            if value > limit:
                raise self._refuse(f"{key} {value} exceeds the limit of {limit} bytes")
        if "data" in header and not isinstance(header["data"], dict):
            raise self._refuse("event 'data' must be a JSON object")
        return header

    async def readexactly(self, n: int) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except asyncio.IncompleteReadError as err:
            raise self._refuse("connection closed in the middle of an event") from err
