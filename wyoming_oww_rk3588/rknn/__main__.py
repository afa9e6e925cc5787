"""`python -m wyoming_oww_rk3588.rknn convert [--all | MODEL ...] --out DIR [--check] [--batch N]`.
Exit 0: done (heads the toolkit cannot take are listed: they run on the CPU); 1: a checked head
is off by more than 2e-2 or fires on other clips than the CPU; 2: bad usage, no toolkit or no clips.
Every failure is one `error:` line saying what to do (--debug adds the traceback)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..errors import ModelError
from ..models.registry import ModelRegistry
from . import cache
from .check import (NPU_TOLERANCE, ClipsError, check_rows, clip_features, compare, default_clips_dir,
                    record_fixture, reference_backend)
from .convert import Converter
from .toolkit import PYTHON_ENV, Toolkit, ToolkitError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wyoming_oww_rk3588.rknn")
    commands = parser.add_subparsers(dest="command", required=True)
    conv = commands.add_parser("convert", help="convert wake-word heads to .rknn for the RK3588 NPU")
    conv.add_argument("models", nargs="*", metavar="MODEL", help="model names (see --all)")
    conv.add_argument("--all", action="store_true", help="every built-in and custom head")
    conv.add_argument("--out", type=Path, default=None,
                      help=f"cache directory (default ${cache.CACHE_ENV} or {cache.default_cache_dir()})")
    conv.add_argument("--check", action="store_true",
                      help=f"run each head in the simulator on real embeddings; fail if off by > {NPU_TOLERANCE}")
    conv.add_argument("--batch", type=int, default=cache.DEFAULT_BATCH, help="rows per NPU call (fixed)")
    conv.add_argument("--custom-model-dir", type=Path, action="append", default=[], help="your own heads")
    conv.add_argument("--toolkit-python", type=Path, default=None,
                      help=f"python of rknn-toolkit2's venv (default ${PYTHON_ENV}, else this Python if it "
                           "has rknn.api, else <checkout>/.venv-rknn)")
    conv.add_argument("--clips", type=Path, default=None,
                      help="folder of 16 kHz mono .wav clips for --check (default: the ones in the package)")
    conv.add_argument("--record-fixture", type=Path, default=None,
                      help="with --check: save simulator scores for the runtime tests' fake (.npz)")
    conv.add_argument("--force", action="store_true", help="convert again even if cached")
    conv.add_argument("--debug", action="store_true")
    return parser


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return _convert(args)
    except (ModelError, ToolkitError, ClipsError, OSError, ValueError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - one line, never a traceback, unless asked for
        if args.debug:
            raise
        print(f"error: unexpected {type(err).__name__}: {err}; run again with --debug and report it",
              file=sys.stderr)
        return 2


def _convert(args: argparse.Namespace) -> int:
    registry = ModelRegistry(custom_dirs=args.custom_model_dir)
    if args.all == bool(args.models):
        raise ModelError("name models to convert, or pass --all")
    models = list(registry.models.values()) if args.all else [registry.resolve(n) for n in args.models]
    if args.record_fixture and not args.check:
        raise ModelError("--record-fixture needs --check")
    out = args.out or cache.default_cache_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError("not writable")
    except OSError as err:
        raise ModelError(f"cannot write to {out} ({err.strerror or err}); "
                         "pass --out with a folder you can write") from err
    converter = Converter(out, Toolkit(args.toolkit_python), batch=args.batch)

    clips, rows = None, {}
    if args.check:
        clips = clip_features(args.clips or default_clips_dir())
        rows = {m.name: check_rows(m, clips) for m in models}
    results = converter.convert(models, {name: r.all for name, r in rows.items()}, force=args.force)

    print(f"{'head':<14} {'result':<10} {'batch':>5} {'max|d| real':>12} {'random':>8} {'zero':>8}"
          "  detections cpu / npu")
    failed_checks, recorded = [], []
    for res in results:
        line = f"{res.model.name:<14} {res.action:<10} {res.entry['batch']:>5}"
        if res.action == "failed":
            print(f"{line}  runs on the CPU: {res.entry['reason']}")
            continue
        if not args.check:
            print(line)
            continue
        if res.scores is None:
            failed_checks.append(res.model.name)
            print(f"{line}  check failed: {res.check_error}")
            continue
        try:
            cpu = reference_backend(res.model).score(res.model, rows[res.model.name].all)
        except ImportError as err:
            print(f"{line}  not checked: no CPU reference for {res.model.format} ({err})")
            continue
        head = compare(res.model, rows[res.model.name], res.scores, cpu)
        recorded.append((res.model, res.scores))
        if not head.ok:
            failed_checks.append(res.model.name)
        print(f"{line} {_fmt(head.max_error_real):>12} {_fmt(head.max_error_random):>8} {_fmt(head.zero_error):>8}"
              f"  {','.join(head.cpu_detections) or '-'} / {','.join(head.npu_detections) or '-'}"
              f"{'' if head.ok else '  FAIL'}")
    if args.record_fixture and recorded:
        meta = {"toolkit": results[0].entry["toolkit"], "platform": converter.platform, "batch": converter.batch}
        record_fixture(args.record_fixture, clips, recorded, meta)
        print(f"recorded simulator scores of {len(recorded)} heads in {args.record_fixture}")
    if failed_checks:
        print(f"error: {', '.join(failed_checks)} differ from onnxruntime by more than {NPU_TOLERANCE} "
              "or fire on other clips", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
