"""Builds the registry and the engine, serves Wyoming on the URI, announces it with zeroconf."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from functools import partial
from urllib.parse import urlparse

from wyoming.info import Attribution, Info, WakeModel, WakeProgram

from . import __version__
from .cli import Settings
from .detector import DetectorConfig
from .engine import Engine
from .errors import BackendUnavailable, ModelError
from .connection import Connection
from .handler import WakeWordHandler
from .pacing import paced_loop
from .models.registry import ModelInfo, ModelRegistry
from .scheduler import EngineRunner
from .verifier import Verifier, bind_verifiers, find_verifier_files

_LOGGER = logging.getLogger(__name__)

OWW_ATTRIBUTION = Attribution(name="David Scripka (openWakeWord)", url="https://github.com/dscripka/openWakeWord")
PROGRAM_ATTRIBUTION = Attribution(name="wyoming-oww-rk3588", url="https://github.com/dscripka/openWakeWord")
STOP_TIMEOUT_S = 1.5


def build_engine(settings: Settings) -> tuple[Engine, dict[str, ModelInfo]]:
    """The engine plus the models it serves; a custom model that fails to load is logged and left out."""
    registry = ModelRegistry(custom_dirs=settings.custom_model_dirs)
    rknn_options = {"core_mask": settings.npu_core_mask}
    if settings.rknn_cache_dir is not None:
        rknn_options["cache_dir"] = settings.rknn_cache_dir
    engine = Engine(
        registry,
        features_backend=settings.features_backend,
        heads_backend=settings.heads_backend,
        detector=DetectorConfig(
            threshold=settings.threshold,
            trigger_level=settings.trigger_level,
            refractory_s=settings.refractory_seconds,
            thresholds={registry.resolve(n).name: t for n, t in settings.model_thresholds.items()},
            vad_threshold=settings.vad_threshold,
        ),
        threads=settings.threads,
        precision=settings.precision,
        rknn_options=rknn_options,
        noise_suppression=settings.noise_suppression,
        verifiers=_verifiers(settings, registry),
        verifier_threshold=settings.custom_verifier_threshold,
    )
    for name in settings.preload_models:
        registry.resolve(name)  # unknown -> ModelError at start
    served: dict[str, ModelInfo] = {}
    for name, info in registry.models.items():
        try:
            engine.preload([info])
            served[name] = info
        except ModelError as err:
            if info.builtin or any(registry.resolve(p).name == name for p in settings.preload_models):
                raise
            _LOGGER.error("Model %s left out: %s", name, err)
    _LOGGER.info("Backends: features=%s heads=%s; models: %s",
                 engine.backends["features"], engine.backends["heads"], ", ".join(served))
    _LOGGER.info("Features: %s", engine.features_reason)  # which device, or why not the GPU
    if settings.vad_threshold or settings.noise_suppression or engine.verifiers:
        _LOGGER.info("Optional stages: VAD gate %s; noise suppression %s; verifiers: %s",
                     settings.vad_threshold or "off", "on" if settings.noise_suppression else "off",
                     ", ".join(engine.verifiers) or "none")
    return engine, served


def _verifiers(settings: Settings, registry: ModelRegistry) -> dict[str, Verifier]:
    """Verifier files beside custom models (a bad one is logged and left out), then the
    `--custom-verifier` ones (a bad one stops the start), which win for the same model."""
    found: dict[str, Verifier] = {}
    for name, path in find_verifier_files(settings.custom_model_dirs).items():
        try:
            found.update(bind_verifiers({name: path}, registry.resolve))
        except ModelError as err:
            _LOGGER.error("Verifier %s left out: %s", path.name, err)
    return {**found, **bind_verifiers(settings.custom_verifiers, registry.resolve)}


def build_info(models: dict[str, ModelInfo]) -> Info:
    wake_models = [
        WakeModel(
            name=info.name,
            description=info.phrase or info.name,
            phrase=info.phrase or info.name.replace("_", " "),
            attribution=OWW_ATTRIBUTION if info.builtin else Attribution(name="custom model", url=""),
            installed=True,
            languages=list(info.languages) or ["en"],
            version=info.version or "custom",
        )
        for info in models.values()
    ]
    program = WakeProgram(
        name="openwakeword",
        description="openWakeWord, batched on CPU / OpenCL GPU / RK3588 NPU",
        attribution=PROGRAM_ATTRIBUTION,
        installed=True,
        version=__version__,
        models=wake_models,
    )
    return Info(wake=[program])


def _lan_addresses() -> list[str]:
    """The host's IPv4 addresses that the LAN can reach (the default route's first)."""
    found: list[str] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("224.0.0.251", 5353))  # no packet is sent; this only asks the routing table
            found.append(probe.getsockname()[0])
    except OSError:
        pass
    try:
        for *_, addr in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            if addr[0] not in found and not addr[0].startswith("127."):
                found.append(addr[0])
    except OSError:
        pass
    return found or ["127.0.0.1"]


class ZeroconfAnnouncer:
    """Registers `<name>._wyoming._tcp.local.` for Home Assistant, and unregisters on exit."""

    def __init__(self, name: str, port: int, host: str) -> None:
        self.name, self.port = name, port
        self.addresses = [host] if host not in ("0.0.0.0", "", "::") else _lan_addresses()
        self._zc = None
        self._info = None

    async def start(self) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        self._info = AsyncServiceInfo(
            "_wyoming._tcp.local.",
            f"{self.name}._wyoming._tcp.local.",
            addresses=[socket.inet_aton(a) for a in self.addresses],
            port=self.port,
            server=f"{socket.gethostname()}.local.",
        )
        self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        # The call returns a task that finishes once the announcement has gone out.
        await (await self._zc.async_register_service(self._info))
        _LOGGER.info("Zeroconf: announced %s on %s port %d", self.name, ", ".join(self.addresses), self.port)

    async def stop(self) -> None:
        if self._zc is not None:
            await (await self._zc.async_unregister_service(self._info))  # sends the goodbye
            await self._zc.async_close()
            self._zc = None
            _LOGGER.info("Zeroconf: withdrew %s", self.name)


async def serve(settings: Settings, engine: Engine, models: dict[str, ModelInfo],
                started: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests) or no signals here
    runner = EngineRunner(engine, workers=settings.workers, batch_window_s=settings.batch_window_ms / 1000)
    runner.start()
    info_event = build_info(models).event()
    handler = partial(WakeWordHandler, runner=runner, info_event=info_event, models=models)
    server = await _listen(settings.uri, handler, stop)
    _LOGGER.info("Serving on %s", settings.uri)
    announcer = None
    if settings.zeroconf:
        parsed = urlparse(settings.uri)
        announcer = ZeroconfAnnouncer(settings.zeroconf, parsed.port, parsed.hostname)
        try:
            await announcer.start()
        except Exception as err:  # noqa: BLE001 - discovery is a convenience, serving goes on
            _LOGGER.error("Zeroconf announcement failed (%s); add the server in Home Assistant by host and port",
                          err)
            announcer = None
    if started is not None:
        started.set()
    await stop.wait()
    _LOGGER.info("Stopping")
    try:
        await asyncio.wait_for(_shutdown(server, announcer, runner), STOP_TIMEOUT_S)
    except asyncio.TimeoutError:
        _LOGGER.warning("Shutdown took longer than %.1f s; exiting anyway", STOP_TIMEOUT_S)


#: Connections the kernel holds until the loop accepts them. asyncio's default, 100, is too
#: few when hundreds of satellites reconnect at once (after a restart) while the loop is busy:
#: the kernel then drops or resets the rest.
LISTEN_BACKLOG = 1024


async def _listen(uri: str, handler, stop: asyncio.Event):
    """A listening server for tcp:// and unix://, or stdin/stdout as one connection for
    stdio:// (which stops the server when stdin closes); each connection gets a handler."""
    loop = asyncio.get_running_loop()
    parsed = urlparse(uri)
    if parsed.scheme == "tcp":
        return await loop.create_server(lambda: Connection(handler), parsed.hostname, parsed.port,
                                        backlog=LISTEN_BACKLOG, reuse_address=True)
    if parsed.scheme == "unix":
        return await loop.create_unix_server(lambda: Connection(handler), parsed.netloc + parsed.path,
                                             backlog=LISTEN_BACKLOG)
    writer, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(os.dup(1), "wb"))
    connection = Connection(handler, write_transport=writer, on_lost=stop.set)
    await loop.connect_read_pipe(lambda: connection, os.fdopen(os.dup(0), "rb"))
    return None


async def _shutdown(server, announcer, runner) -> None:
    if server is not None:
        server.close()  # stops listening; connections end with the process
    if announcer is not None:
        await announcer.stop()
    await runner.stop()


def run(settings: Settings) -> int:
    try:
        engine, models = build_engine(settings)
    except (ModelError, ValueError, BackendUnavailable) as err:
        _LOGGER.error("Cannot start: %s", err)
        return 2
    # Python's full collections walk every object still alive; the models, onnx and wyoming
    # leave ~40 000 that live as long as the process (a ~10 ms walk each time): set them aside.
    gc.collect()
    gc.freeze()
    try:
        # Reads need not come more often than once a batch window: the engine waits for it anyway.
        with asyncio.Runner(loop_factory=partial(paced_loop, settings.batch_window_ms / 1000)) as runner:
            runner.run(serve(settings, engine, models))
    except OSError as err:
        _LOGGER.error("Cannot serve on %s: %s", settings.uri, err)
        return 1
    finally:
        engine.close()
    return 0
