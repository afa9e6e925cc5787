"""The Wyoming protocol, one handler per connection: events in, engine streams, events out.

Sessions: `detect` picks the models; `audio-start` (or, as wyoming-satellite 1.0 does, the
first chunk) starts a fresh stream; `audio-stop` flushes and answers `not-detected` when
nothing fired. Every bad event gets one log line and an `error` event; the connection and
every other client carry on.
"""

from __future__ import annotations

import asyncio
import logging

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.server import AsyncEventHandler
from wyoming.wake import Detect, Detection, NotDetected

from .audio_format import AudioFormatError, StreamConverter, parse_format
from .detector import Detection as EngineDetection
from .models.registry import ModelInfo
from .scheduler import EngineRunner, StreamHandle
from .wire import GuardedReader

_LOGGER = logging.getLogger(__name__)


class WakeWordHandler(AsyncEventHandler):
    def __init__(self, reader, writer, runner: EngineRunner, info_event: Event, models: dict[str, ModelInfo]) -> None:
        super().__init__(reader, writer)
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "stdio")
        self._guarded = GuardedReader(reader, self.peer)
        self.runner = runner
        self.info_event = info_event
        self.all_models = models
        self._session: list[tuple[str, ModelInfo]] = list(self._everything())
        self._handle: StreamHandle | None = None
        self._converter = StreamConverter()
        self._detected = False
        self._tasks: set[asyncio.Task] = set()
        self._logged_errors: set[str] = set()

    def _everything(self) -> list[tuple[str, ModelInfo]]:
        return [("", info) for info in self.all_models.values()]

    # ---- connection loop -----------------------------------------------------------
    async def run(self) -> None:
        """wyoming's loop, with the guarded reader and per-event error isolation."""
        try:
            while True:
                try:
                    event = await self._guarded.read_event()
                except Exception as err:  # noqa: BLE001 - malformed data from the peer
                    _LOGGER.warning("Dropping client %s: unreadable event (%s)", self.peer, err)
                    break
                if event is None:
                    break
                try:
                    if not await self.handle_event(event):
                        break
                except (ConnectionError, asyncio.CancelledError):
                    raise
                except Exception as err:  # noqa: BLE001 - one bad event never ends the server
                    await self._error(f"{event.type} failed: {err}")
        except ConnectionError:
            pass
        finally:
            await self.disconnect()
            self.writer.close()

    async def disconnect(self) -> None:
        self._end_stream()
        for task in list(self._tasks):
            task.cancel()

    # ---- events ----------------------------------------------------------------------
    async def handle_event(self, event: Event) -> bool:
        if AudioChunk.is_type(event.type):
            await self._on_chunk(event)
        elif Detect.is_type(event.type):
            await self._on_detect(event)
        elif AudioStart.is_type(event.type):
            await self._on_start(event)
        elif AudioStop.is_type(event.type):
            await self._on_stop()
        elif Describe.is_type(event.type):
            await self.write_event(self.info_event)
        else:
            _LOGGER.debug("Client %s: ignoring unexpected %s event", self.peer, event.type)
            await self._error(f"unexpected event type {event.type!r}; this is a wake word service")
        return True

    async def _on_detect(self, event: Event) -> None:
        names = event.data.get("names")
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            await self._error("detect 'names' must be a list of model names")
            names = None
        if names:
            known, unknown = self.runner.engine.registry.resolve_many(names)
            known = [(asked, info) for asked, info in known if info.name in self.all_models]
            if unknown:
                await self._error(f"unknown wake word models: {', '.join(unknown)}; "
                                  f"available: {', '.join(self.all_models)}")
            self._session = known or self._everything()
        else:
            self._session = self._everything()
        # A new detect re-arms: the utterance that fired before can never fire again.
        self._end_stream()

    async def _on_start(self, event: Event) -> None:
        self._end_stream()
        try:
            parse_format(event.data)
        except AudioFormatError as err:
            await self._error(str(err))
            return
        self._begin_stream()

    def _begin_stream(self) -> None:
        self._detected = False
        self._converter = StreamConverter()  # its resampler state belongs to one stream
        self._handle = self.runner.open(self._session, self._on_detection, self._on_engine_error)

    def _end_stream(self) -> None:
        if self._handle is not None:
            self.runner.close(self._handle)
            self._handle = None

    async def _on_chunk(self, event: Event) -> None:
        try:
            fmt = parse_format(event.data)
        except AudioFormatError as err:
            await self._error(str(err))
            return
        payload = event.payload or b""
        frame_bytes = fmt[1] * fmt[2]
        if len(payload) % frame_bytes:
            await self._error(f"audio chunk of {len(payload)} bytes is not a whole number of "
                              f"{frame_bytes}-byte frames (width {fmt[1]} x {fmt[2]} channels); chunk dropped")
            return
        if not payload:
            _LOGGER.debug("Client %s sent an empty audio chunk", self.peer)
            return
        if self._handle is None:
            # wyoming-satellite 1.0 streams chunks after `detect` with no audio-start.
            self._begin_stream()
        self.runner.feed(self._handle, self._converter.convert(fmt, payload))
        if self.runner.backlogged(self._handle):
            await self.runner.drain(self._handle)  # stop reading until it is scored: TCP holds the client back

    async def _on_stop(self) -> None:
        handle = self._handle
        if handle is None:
            await self.write_event(NotDetected().event())
            return
        await self.runner.drain(handle)
        if handle is self._handle:
            self._end_stream()
        if not self._detected:
            await self.write_event(NotDetected().event())

    # ---- engine callbacks (on the event loop) -----------------------------------------
    def _on_detection(self, detection: EngineDetection) -> None:
        self._detected = True
        # Answer with the very name the client asked for (Home Assistant drops others);
        # a session on every model answers with what fired (a timer answers its class).
        name = detection.asked_name or detection.label
        _LOGGER.info("Client %s: detected %s at %d ms (score %.3f)", self.peer, name,
                     detection.timestamp_ms, detection.score)
        self._send(Detection(name=name, timestamp=detection.timestamp_ms).event())

    def _on_engine_error(self, message: str) -> None:
        self._send(Error(text=message, code="engine").event())

    def _send(self, event: Event) -> None:
        # Writes run as their own task: a client that does not read stalls only itself.
        task = asyncio.get_running_loop().create_task(self._write_quietly(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_quietly(self, event: Event) -> None:
        try:
            await self.write_event(event)
        except (ConnectionError, RuntimeError) as err:
            _LOGGER.debug("Client %s gone before %s could be sent (%s)", self.peer, event.type, err)

    async def _error(self, text: str) -> None:
        """The client gets an `error` event each time; the log gets each distinct problem once
        per connection (a client repeating a bad chunk would otherwise flood it)."""
        if text not in self._logged_errors:
            self._logged_errors.add(text)
            _LOGGER.warning("Client %s: %s", self.peer, text)
        try:
            await self.write_event(Error(text=text, code="bad-request").event())
        except (ConnectionError, RuntimeError):
            pass

