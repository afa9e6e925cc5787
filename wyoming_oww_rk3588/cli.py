"""Command line: flags (and their OWW_* environment variables) -> a frozen Settings. Bad options
fail at start with one line."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .backends.select import FEATURE_BACKENDS, HEAD_BACKENDS
from .detector import DEFAULT_REFRACTORY_S, DEFAULT_THRESHOLD, DEFAULT_TRIGGER_LEVEL
from .verifier import DEFAULT_VERIFIER_THRESHOLD

DEFAULT_URI = "tcp://0.0.0.0:10400"
DEFAULT_ZEROCONF_NAME = "openWakeWord-rk3588"
NPU_CORE_MASKS = ("auto", "0", "1", "2", "0_1", "0_1_2")
DEFAULT_BATCH_WINDOW_MS = 0  # scheduler.DEFAULT_BATCH_WINDOW_S (a test keeps them equal)
MAX_BATCH_WINDOW_MS = 1000
#: Every option is also an environment variable: OWW_ + its name, e.g. OWW_THRESHOLD=0.6.
ENV_PREFIX = "OWW_"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Settings:
    uri: str = DEFAULT_URI
    custom_model_dirs: tuple[Path, ...] = ()
    preload_models: tuple[str, ...] = ()
    threshold: float = DEFAULT_THRESHOLD
    trigger_level: int = DEFAULT_TRIGGER_LEVEL
    refractory_seconds: float = DEFAULT_REFRACTORY_S
    model_thresholds: dict[str, float] = field(default_factory=dict)
    vad_threshold: float = 0.0  # 0 = VAD gate off
    noise_suppression: bool = False
    custom_verifiers: dict[str, Path] = field(default_factory=dict)  # model name -> .verifier.npz
    custom_verifier_threshold: float = DEFAULT_VERIFIER_THRESHOLD
    features_backend: str = "auto"
    heads_backend: str = "auto"
    precision: str = "fp32"
    npu_core_mask: str = "auto"
    rknn_cache_dir: Path | None = None
    threads: int = 1
    workers: int = field(default_factory=lambda: default_workers())
    batch_window_ms: int = DEFAULT_BATCH_WINDOW_MS
    zeroconf: str | None = None
    debug: bool = False


def default_workers() -> int:
    """Engine threads: every core up to 4 (an RK3588 has 4 big cores)."""
    import os

    return max(1, min(4, os.cpu_count() or 1))


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + error; we print one line
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside (0, 1]")
    return value


def _probability(text: str, below_one: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0 or (below_one and value == 1.0):
        raise argparse.ArgumentTypeError(f"{text} is outside [0, {'1)' if below_one else '1]'}")
    return value


def _batch_window(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of milliseconds") from None
    if not 0 <= value <= MAX_BATCH_WINDOW_MS:
        raise argparse.ArgumentTypeError(f"{text} is outside 0-{MAX_BATCH_WINDOW_MS} ms")
    return value


def _vad_threshold(text: str) -> float:
    return _probability(text, below_one=True)  # 1 would zero every score: speech never scores 1


def _custom_verifier(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PATH")
    return name, Path(path)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 3600 seconds")
    return value


def _model_threshold(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=THRESHOLD")
    return name, _unit_interval(value)


def _uri(text: str) -> str:
    from urllib.parse import urlparse

    parsed = urlparse(text)
    if parsed.scheme not in ("tcp", "unix", "stdio"):
        raise argparse.ArgumentTypeError(f"{text!r}: use tcp://HOST:PORT, unix://PATH or stdio://")
    if parsed.scheme == "tcp":
        try:
            port = parsed.port
        except ValueError:
            port = None
        if parsed.hostname is None or port is None:
            raise argparse.ArgumentTypeError(f"{text!r}: a tcp URI needs a host and a port, e.g. {DEFAULT_URI}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="wyoming-oww-rk3588",
        description="Wyoming wake word server (openWakeWord models; CPU, OpenCL GPU and RK3588 NPU backends). "
        "Subcommand: `doctor` checks this machine's GPU/NPU setup.",
        epilog="Every option is also an environment variable, OWW_ and its name: OWW_THRESHOLD=0.6, "
        "OWW_PRELOAD_MODEL=okay_nabu,alexa (comma-separated for a repeatable option), OWW_ZEROCONF=true; "
        "a flag on the command line wins over its variable.",
    )
    add = parser.add_argument
    add("--uri", type=_uri, default=DEFAULT_URI, help=f"where to listen (default {DEFAULT_URI})")
    add("--custom-model-dir", action="append", default=[], type=Path,
        help="directory of your own .onnx/.tflite wake word heads (repeatable)")
    add("--preload-model", action="append", default=[],
        help="model that must load at start (repeatable); every model is served either way")
    add("--threshold", type=_unit_interval, default=DEFAULT_THRESHOLD, help="score that counts as a detection (0-1]")
    add("--model-threshold", type=_model_threshold, action="append", default=[], metavar="NAME=T",
        help="per-model threshold override (repeatable)")
    add("--trigger-level", type=_positive_int, default=DEFAULT_TRIGGER_LEVEL,
        help="consecutive 80 ms frames over the threshold needed to fire")
    add("--refractory-seconds", type=_seconds, default=DEFAULT_REFRACTORY_S,
        help="audio seconds after a detection during which the same stream cannot fire again")
    add("--vad-threshold", type=_vad_threshold, default=0.0, metavar="P",
        help="zero scores unless Silero VAD heard speech (probability >= P) just before; 0 = off, else in (0, 1)")
    add("--noise-suppression", action="store_true",
        help="speex noise suppression before the features, as openWakeWord's (needs the speex extra)")
    add("--custom-verifier", type=_custom_verifier, action="append", default=[], metavar="NAME=PATH",
        help="verifier model (.verifier.npz) for a wake word model (repeatable); NAME.verifier.npz files in "
        "--custom-model-dir are used too")
    add("--custom-verifier-threshold", type=_probability, default=DEFAULT_VERIFIER_THRESHOLD, metavar="T",
        help=f"scores >= T are replaced by the model's verifier score (default {DEFAULT_VERIFIER_THRESHOLD})")
    add("--features-backend", choices=FEATURE_BACKENDS, default="auto",
        help="melspectrogram + embedding: auto (OpenCL GPU if it works, else CPU), cpu, opencl")
    add("--heads-backend", choices=HEAD_BACKENDS, default="auto",
        help="wake word heads: auto (NPU if it works, else CPU), cpu, rknn, tflite")
    add("--precision", choices=("fp32", "fp16"), default="fp32", help="OpenCL arithmetic precision")
    add("--npu-core-mask", choices=NPU_CORE_MASKS, default="auto", help="RK3588 NPU cores for the heads")
    add("--rknn-cache-dir", type=Path, default=None, help="where converted .rknn heads are kept")
    add("--threads", type=_positive_int, default=1, help="onnxruntime threads per engine worker")
    add("--workers", type=_positive_int, default=None,
        help="engine threads that share a big CPU batch (default: cores, at most 4)")
    add("--batch-window-ms", type=_batch_window, default=DEFAULT_BATCH_WINDOW_MS, metavar="MS",
        help="hold every satellite's audio up to this long and score it together: less CPU per "
        "satellite, but each detection comes up to this much later, and Home Assistant's speech-to-text "
        "never hears that much of the command after the wake word; 0 = each frame as soon as it is "
        f"complete (default {DEFAULT_BATCH_WINDOW_MS}, at most {MAX_BATCH_WINDOW_MS})")
    add("--zeroconf", nargs="?", const=DEFAULT_ZEROCONF_NAME, default=None, metavar="NAME",
        help=f"announce the service on the LAN with mDNS (default name {DEFAULT_ZEROCONF_NAME})")
    add("--model", action="append", default=[], help=argparse.SUPPRESS)  # wyoming-openwakeword's old flag
    add("--debug", action="store_true", help="log debug messages")
    add("--version", action="version", version=__version__)
    return parser


def env_name(action: argparse.Action) -> str:
    return ENV_PREFIX + action.dest.upper()


def env_args(parser: argparse.ArgumentParser, environ) -> list[str]:
    """The OWW_* environment variables as flags, for containers with no command line to edit (Docker
    Compose's `environment:`). They go before the real flags, so a flag given on the command line
    wins; a repeatable option takes a comma-separated list; a switch takes true/false. A variable
    that names no option, or a bad value, fails with one line naming the variable."""
    actions = {env_name(a): a for a in parser._actions
               if a.option_strings and a.help != argparse.SUPPRESS and a.dest not in ("help", "version")}
    args: list[str] = []
    for name in sorted(n for n in environ if n.startswith(ENV_PREFIX)):
        value, action = environ[name].strip(), actions.get(name)
        if action is None:
            parser.error(f"environment variable {name} is not an option; the options are {', '.join(sorted(actions))}")
        flag = action.option_strings[0]
        if action.nargs == 0 or action.nargs == "?":  # a switch; --zeroconf may also take a name
            if value.lower() in _TRUE:
                args.append(flag)
            elif value.lower() not in _FALSE:
                if action.nargs == 0:
                    parser.error(f"{name}={value!r}: use true or false")
                args.append(f"{flag}={value}")
            continue
        items = [v.strip() for v in value.split(",") if v.strip()] if action.default == [] else [value]
        for item in items:
            try:
                converted = action.type(item) if action.type else item
            except (argparse.ArgumentTypeError, ValueError) as err:
                parser.error(f"{name}={item!r}: {err}")
            if action.choices and converted not in action.choices:
                parser.error(f"{name}={item!r}: use one of {', '.join(map(str, action.choices))}")
            args.append(f"{flag}={item}")
    return args


def parse_settings(argv: list[str] | None = None, environ=None) -> Settings:
    import os

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(env_args(parser, os.environ if environ is None else environ) + argv)
    if args.model:
        import logging

        logging.getLogger(__name__).warning("--model is deprecated and ignored: every model is served")
    if args.zeroconf is not None and not args.uri.startswith("tcp://"):
        parser.error("--zeroconf needs a tcp:// --uri")
    return Settings(
        uri=args.uri,
        custom_model_dirs=tuple(args.custom_model_dir),
        preload_models=tuple(args.preload_model),
        threshold=args.threshold,
        trigger_level=args.trigger_level,
        refractory_seconds=args.refractory_seconds,
        model_thresholds=dict(args.model_threshold),
        vad_threshold=args.vad_threshold,
        noise_suppression=args.noise_suppression,
        custom_verifiers=dict(args.custom_verifier),
        custom_verifier_threshold=args.custom_verifier_threshold,
        features_backend=args.features_backend,
        heads_backend=args.heads_backend,
        precision=args.precision,
        npu_core_mask=args.npu_core_mask,
        rknn_cache_dir=args.rknn_cache_dir,
        threads=args.threads,
        workers=args.workers or default_workers(),
        batch_window_ms=args.batch_window_ms,
        zeroconf=args.zeroconf,
        debug=args.debug,
    )
