"""One client's bytes: events in to its handler, events out, and a socket that wakes the server
only when the audio for the next 80 ms frame is there.

Home Assistant sends a satellite's audio in 10 ms chunks, each its own event: a plain reader
wakes the process 100 times a second per satellite, and on a small machine a wake-up (system
calls, caches gone cold) costs far more than the chunk. Only every eighth chunk completes a
frame that can fire, so the connection sets the socket's SO_RCVLOWAT to the bytes that frame
still needs: the kernel holds the chunks and wakes us once, when the chunk that completes the
frame arrives. The mark counts one chunk short of what the frame needs, in the size of the
client's last chunk event, so it is reached by the first bytes of the frame's last chunk even
when the chunks shrink a little (their timestamps lose digits at a new stream) and when a
chunk arrived in part. A client that sends less than that (much smaller chunks, `audio-stop`
after a partial frame) is read anyway once the audio should have arrived, by a timer that
drops the mark.

Reading pauses while the handler waits (a client far ahead of real time, `audio-stop`), so
TCP holds the client back; events already received are handled, in order, once it resumes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Awaitable, Callable, Protocol

from wyoming.event import Event

from .wire import EventParser, ProtocolViolation, encode

_LOGGER = logging.getLogger(__name__)

#: Bytes queued for a client that does not read before it is dropped (events out are small:
#: detections, info, errors; this is thousands of them).
MAX_UNSENT_BYTES = 1024 * 1024
#: How long past the expected arrival of a frame's last chunk the mark is dropped anyway.
LATE_S = 0.03


class EventHandler(Protocol):
    def handle_event(self, event: Event) -> Awaitable | None: ...

    def connection_lost(self) -> None: ...


class Connection(asyncio.Protocol):
    """`handler_factory(connection)` makes the handler once the transport is there. The handler
    answers each event with None, or with an awaitable that reading waits for."""

    def __init__(self, handler_factory: Callable[["Connection"], EventHandler],
                 write_transport: asyncio.WriteTransport | None = None,
                 on_lost: Callable[[], None] | None = None) -> None:
        self._factory = handler_factory
        self._on_lost = on_lost
        self._write_transport = write_transport
        self._parser = EventParser()
        self.transport: asyncio.BaseTransport | None = None
        self.handler: EventHandler | None = None
        self.peer = "stdio"
        self._sock: socket.socket | None = None
        self._waiting: asyncio.Task | None = None  # the handler's awaitable, while reading waits
        self._closed = False
        self._eof = False  # the client shut its side while an answer was pending
        self._chunk_bytes = 0  # the last audio-chunk event's size on the wire
        self._expect = (1, 0.0)  # (chunks until the next frame is complete, seconds per chunk)
        self._lowat = 1
        self._late: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"{peer[0]}:{peer[1]}"
        elif peer:
            self.peer = str(peer)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) and hasattr(socket, "SO_RCVLOWAT"):
            self._sock = sock
        self.handler = self._factory(self)

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        self._handle_buffered()

    def eof_received(self) -> bool:
        """The client has sent all it will: answer what it is waiting for, then close."""
        if self._waiting is None:
            return False
        self._eof = True
        return True  # keep the write side open until the answer is out

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiting is not None and self._write_transport is not None and exc is None:
            self._eof = True  # stdin ended with an answer pending: finish what came, then end
            return
        self._end()

    def _end(self) -> None:
        self._closed = True
        self._cancel_late()
        if self._waiting is not None:
            self._waiting.cancel()
        if self.handler is not None:
            self.handler.connection_lost()
        if self._on_lost is not None:
            self._on_lost()

    # ---- events in ------------------------------------------------------------------------
    def _handle_buffered(self) -> None:
        while self._waiting is None and not self._closed:
            try:
                event = self._parser.next()
            except ProtocolViolation as err:
                _LOGGER.warning("Dropping client %s: %s", self.peer, err)
                self.close()
                return
            if event is None:
                break
            if event.type == "audio-chunk" and event.payload:
                self._chunk_bytes = self._parser.last_size
            waiter = self.handler.handle_event(event)
            if waiter is not None:
                self._wait_for(waiter)
        if self._waiting is None and not self._closed:
            self._arm()

    def _wait_for(self, waiter: Awaitable) -> None:
        self.transport.pause_reading()
        self._set_lowat(1)
        self._waiting = asyncio.ensure_future(waiter)
        self._waiting.add_done_callback(self._resume)

    def _resume(self, task: asyncio.Task) -> None:
        self._waiting = None
        if self._closed or task.cancelled():
            return
        if task.exception() is not None:
            _LOGGER.error("Client %s: %s", self.peer, task.exception())
        if not self._eof:
            self.transport.resume_reading()
        self._handle_buffered()
        if self._eof and self._waiting is None:
            if self._write_transport is not None:  # stdio: stdin is already gone
                self._end()
            self.close()

    # ---- waking only for a whole frame --------------------------------------------------
    def expect(self, chunks: int, chunk_s: float) -> None:
        """The handler's word: the next frame completes `chunks` audio chunks from now, each
        `chunk_s` long (1: wake for anything)."""
        self._expect = (max(1, chunks), chunk_s)

    def _arm(self) -> None:
        self._cancel_late()
        chunks, chunk_s = self._expect
        if self._sock is None or chunks <= 1 or not self._chunk_bytes:
            self._set_lowat(1)
            return
        self._set_lowat(max(1, (chunks - 1) * self._chunk_bytes + 1 - self._parser.buffered))
        if self._lowat > 1:
            self._late = asyncio.get_running_loop().call_later(chunks * chunk_s + LATE_S, self._set_lowat, 1)

    def _set_lowat(self, value: int) -> None:
        if value == self._lowat or self._sock is None or self._closed:
            return
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, value)
            self._lowat = value
        except OSError as err:  # a kernel without it: read every chunk as it comes
            _LOGGER.debug("SO_RCVLOWAT not available (%s); reading every chunk", err)
            self._sock = None

    def _cancel_late(self) -> None:
        if self._late is not None:
            self._late.cancel()
            self._late = None

    # ---- events out -----------------------------------------------------------------------
    def send(self, event: Event) -> None:
        """Queue an event for the client; never waits (a client that does not read stalls only
        itself, and is dropped once it owes too much)."""
        writer = self._write_transport or self.transport
        if self._closed or writer is None or writer.is_closing():
            return
        writer.write(encode(event))
        if writer.get_write_buffer_size() > MAX_UNSENT_BYTES:
            _LOGGER.warning("Dropping client %s: it has not read %d bytes of answers", self.peer,
                            writer.get_write_buffer_size())
            writer.abort()

    def close(self) -> None:
        self._closed = True
        self._cancel_late()
        if self.transport is not None:
            self.transport.close()
        if self._write_transport is not None:
            self._write_transport.close()
