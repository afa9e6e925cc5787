"""The Wyoming protocol, one handler per connection: events in, engine streams, events out.

Sessions: `detect` picks the models; `audio-start` (or, as wyoming-satellite 1.0 does, the
first chunk) starts a fresh stream; `audio-stop` flushes and answers `not-detected` when
nothing fired. Every bad event gets one log line and an `error` event; the connection and
every other client carry on. Bytes, framing and flow control are the connection's
(connection.py); events are handled as they are parsed, with no task per event.
"""

from __future__ import annotations

import logging
import math
from typing import Awaitable

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.wake import Detect, Detection, NotDetected

from .audio_format import AudioFormatError, StreamConverter, parse_format
from .connection import Connection
from .detector import Detection as EngineDetection
from .features import FRAME_SAMPLES, SAMPLE_RATE
from .models.registry import ModelInfo
from .scheduler import EngineRunner, StreamHandle

_LOGGER = logging.getLogger(__name__)


class WakeWordHandler:
    def __init__(self, connection: Connection, runner: EngineRunner, info_event: Event,
                 models: dict[str, ModelInfo]) -> None:
        self.connection = connection
        self.peer = connection.peer
        self.runner = runner
        self.info_event = info_event
        self.all_models = models
        self._session: list[tuple[str, ModelInfo]] = list(self._everything())
        self._handle: StreamHandle | None = None
        self._converter = StreamConverter()
        self._detected = False
        self._format: tuple | None = None  # the last chunk format that passed parse_format
        self._logged_errors: set[str] = set()

    def _everything(self) -> list[tuple[str, ModelInfo]]:
        return [("", info) for info in self.all_models.values()]

    def connection_lost(self) -> None:
        self._end_stream()

    # ---- events ----------------------------------------------------------------------
    def handle_event(self, event: Event) -> Awaitable | None:
        """Handles one event; returns what reading must wait for, if anything. A failing
        event answers the client with an error and never ends the connection."""
        try:
            if AudioChunk.is_type(event.type):
                return self._on_chunk(event)
            if Detect.is_type(event.type):
                self._on_detect(event)
            elif AudioStart.is_type(event.type):
                self._on_start(event)
            elif AudioStop.is_type(event.type):
                return self._on_stop()
            elif Describe.is_type(event.type):
                self.connection.send(self.info_event)
            else:
                _LOGGER.debug("Client %s: ignoring unexpected %s event", self.peer, event.type)
                self._error(f"unexpected event type {event.type!r}; this is a wake word service")
        except Exception as err:  # noqa: BLE001 - one bad event never ends the server
            self._error(f"{event.type} failed: {err}")
        return None

    def _on_detect(self, event: Event) -> None:
        names = event.data.get("names")
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            self._error("detect 'names' must be a list of model names")
            names = None
        if names:
            known, unknown = self.runner.engine.registry.resolve_many(names)
            known = [(asked, info) for asked, info in known if info.name in self.all_models]
            if unknown:
                self._error(f"unknown wake word models: {', '.join(unknown)}; "
                            f"available: {', '.join(self.all_models)}")
            self._session = known or self._everything()
        else:
            self._session = self._everything()
        # A new detect re-arms: the utterance that fired before can never fire again.
        self._end_stream()

    def _on_start(self, event: Event) -> None:
        self._end_stream()
        try:
            parse_format(event.data)
        except AudioFormatError as err:
            self._error(str(err))
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
        self.connection.expect(1, 0.0)

    def _on_chunk(self, event: Event) -> Awaitable | None:
        data = event.data
        fmt = (data.get("rate"), data.get("width"), data.get("channels"))
        # Checked once per format: 16000.0 == 16000 and True == 1, so a repeat must be ints too.
        if fmt != self._format or type(fmt[0]) is not int or type(fmt[1]) is not int or type(fmt[2]) is not int:
            try:
                fmt = self._format = parse_format(data)
            except AudioFormatError as err:
                self._error(str(err))
                return None
        payload = event.payload or b""
        frame_bytes = fmt[1] * fmt[2]
        if len(payload) % frame_bytes:
            self._error(f"audio chunk of {len(payload)} bytes is not a whole number of "
                        f"{frame_bytes}-byte frames (width {fmt[1]} x {fmt[2]} channels); chunk dropped")
            return None
        if not payload:
            _LOGGER.debug("Client %s sent an empty audio chunk", self.peer)
            return None
        if self._handle is None:
            # wyoming-satellite 1.0 streams chunks after `detect` with no audio-start.
            self._begin_stream()
        samples = self._converter.convert(fmt, payload)
        self.runner.feed(self._handle, samples)
        if self.runner.backlogged(self._handle):
            return self.runner.drain(self._handle)  # stop reading until it is scored: TCP holds the client back
        if len(samples):
            # Chunks like this one until the next frame is complete: the connection wakes for that one.
            missing = FRAME_SAMPLES - self.runner.waiting_samples(self._handle) % FRAME_SAMPLES
            self.connection.expect(math.ceil(missing / len(samples)), len(samples) / SAMPLE_RATE)
        return None

    def _on_stop(self) -> Awaitable:
        handle = self._handle
        self.connection.expect(1, 0.0)
        return self._finish(handle)

    async def _finish(self, handle: StreamHandle | None) -> None:
        if handle is not None:
            await self.runner.drain(handle)
            if handle is self._handle:
                self._end_stream()
        if handle is None or not self._detected:
            self.connection.send(NotDetected().event())

    # ---- engine callbacks (on the event loop) -----------------------------------------
    def _on_detection(self, detection: EngineDetection) -> None:
        self._detected = True
        # Answer with the very name the client asked for (Home Assistant drops others);
        # a session on every model answers with what fired (a timer answers its class).
        name = detection.asked_name or detection.label
        self.connection.send(Detection(name=name, timestamp=detection.timestamp_ms).event())
        # How long the answer took from the arrival of the frame's last sample: Home Assistant's
        # speech-to-text never hears what the user says in that time.
        waited = None if self._handle is None else self._handle.waited_s(detection.step, self.runner.now())
        _LOGGER.info("Client %s: detected %s at %d ms (score %.3f; answered %s after its frame was complete)",
                     self.peer, name, detection.timestamp_ms, detection.score,
                     "?" if waited is None else f"{waited * 1000:.1f} ms")

    def _on_engine_error(self, message: str) -> None:
        self.connection.send(Error(text=message, code="engine").event())

    def _error(self, text: str) -> None:
        """The client gets an `error` event each time; the log gets each distinct problem once
        per connection (a client repeating a bad chunk would otherwise flood it)."""
        if text not in self._logged_errors:
            self._logged_errors.add(text)
            _LOGGER.warning("Client %s: %s", self.peer, text)
        self.connection.send(Error(text=text, code="bad-request").event())
