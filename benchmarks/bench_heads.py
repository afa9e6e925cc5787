"""Heads stage per 80 ms tick, N streams x every built-in head: CPU batched vs openWakeWord's call per
stream vs the NPU path, one call per head or every head in one call (the merged file), with the NPU
calls each makes per tick counted (host side only, or the real NPU on a board with --rknn-cache DIR).
Run: python benchmarks/bench_heads.py [--streams 1 8 64 256] [--ticks 20] [--batch 32] [--rknn-cache DIR]"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime

from wyoming_oww_rk3588.backends import rknn as rknn_backend
from wyoming_oww_rk3588.backends.cpu import CpuHeads
from wyoming_oww_rk3588.backends.rknn import RknnHeads
from wyoming_oww_rk3588.errors import BackendUnavailable
from wyoming_oww_rk3588.models.registry import ModelRegistry
from wyoming_oww_rk3588.rknn import cache
from wyoming_oww_rk3588.rknn.convert import make_entry

SIMULATOR_NOTE = """\
What rknn-toolkit2's x86 simulator can tell: that each head converts, its fp16 scores (see
`python -m wyoming_oww_rk3588.rknn convert --all --check`), and how many NPU calls a tick takes
(the column above). What it cannot tell: NPU time. It emulates the NPU on the x86 CPU, so its
timings say nothing about the RK3588, and it does not model the fixed cost of each call in the
runtime and driver (job submission, fp32<->fp16 conversion, cache maintenance). A head is only
0.1-0.9 MFLOP per row, so that fixed cost is expected to dominate: hence few, large calls.
Measure on the board: this benchmark with --rknn-cache DIR, or rknn-toolkit2's eval_perf()."""


class InstantNpu:
    """An RKNNLite stand-in that answers at once: leaves only RknnHeads' own host-side work."""

    NPU_CORE_AUTO = 0

    def __init__(self, verbose: bool = False) -> None:
        self._out: list[np.ndarray] = []
        self._n_outputs = [1]

    def load_rknn(self, path: str) -> int:
        n_outputs = json.loads(Path(path).with_suffix(".json").read_text())["n_outputs"]
        self._n_outputs = n_outputs if isinstance(n_outputs, list) else [n_outputs]  # a merged file: one per head
        return 0

    def init_runtime(self, core_mask: int = 0) -> int:
        return 0

    def get_sdk_version(self) -> str:
        return f"RKNN VERSION:\n  API: {rknn_backend.builtin.TOOLKIT_VERSION} (stand-in)\n  DRV: 0.9.8"

    def inference(self, inputs):
        rows = len(inputs[0])
        if not self._out or len(self._out[0]) != rows:
            self._out = [np.zeros((rows, n), np.float32) for n in self._n_outputs]
        return self._out

    def release(self) -> None:
        pass


def _placeholder_cache(directory: Path, models, batch: int) -> None:
    for model in models:
        key = cache.cache_key(model.sha256, "bench", cache.PLATFORM, batch)
        json_path, _ = cache.entry_paths(directory, model, key)
        entry = make_entry(model, "bench", cache.PLATFORM, batch, status="ok", reason=None)
        cache.write_entry(json_path, entry, b"placeholder")


def ms_per_tick(tick, ticks: int) -> float:
    tick()  # warm-up: first calls allocate
    times = []
    for _ in range(ticks):
        start = time.perf_counter()
        tick()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--ticks", type=int, default=20, help="ticks timed per cell (median)")
    parser.add_argument("--batch", type=int, default=cache.DEFAULT_BATCH, help="the NPU files' fixed batch")
    parser.add_argument("--rknn-cache", type=Path, default=None,
                        help="on an RK3588: converted heads to time on the real NPU (rknn-toolkit-lite2)")
    parser.add_argument("--core-mask", default="auto", help="NPU cores with --rknn-cache")
    args = parser.parse_args()
    models = list(ModelRegistry().models.values())
    rng = np.random.default_rng(0)
    cpu = CpuHeads(threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.rknn_cache:
            try:
                npu = RknnHeads(cache_dir=args.rknn_cache, core_mask=args.core_mask, batch=args.batch)
            except BackendUnavailable as err:
                raise SystemExit(f"--rknn-cache: {err}") from None
        else:
            _placeholder_cache(Path(tmp), models, args.batch)
            # The stand-in answers zeros: the check on load (scores vs the simulator's) is not what is timed.
            rknn_backend.NPU_TOLERANCE = float("inf")
            npu = RknnHeads(cache_dir=tmp, runtime_factory=InstantNpu, batch=args.batch)
        for model in models:
            cpu.load(model)
            npu.load(model)
        print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, onnxruntime "
              f"{onnxruntime.__version__} on 1 thread; {len(models)} heads: {', '.join(m.name for m in models)}")
        unit = "npu ms" if args.rknn_cache else "host ms"
        print(f"{'streams':>7} | {'cpu batched':>11} {'calls':>5} | {'per stream':>10} {'calls':>5} {'x batched':>9}"
              f" | {'npu calls':>9} {'rows':>5} {unit:>7} | {'merged calls':>12} {unit:>7}")
        for n in args.streams:
            windows = {m.name: rng.standard_normal((n, m.window, 96)).astype(np.float32) for m in models}

            def batched():
                for model in models:
                    cpu.score(model, windows[model.name])

            def per_stream():
                for model in models:
                    for row in windows[model.name]:
                        cpu.score(model, row[None])

            def on_npu():
                for model in models:
                    npu.score(model, windows[model.name])

            def on_npu_merged():
                npu.score_many(models, [windows[m.name] for m in models])

            def calls_per_tick(tick) -> int:
                before = npu.calls
                tick()
                return npu.calls - before

            t_batched = ms_per_tick(batched, args.ticks)
            t_single = ms_per_tick(per_stream, max(1, args.ticks // max(1, n // 8)))
            t_host = ms_per_tick(on_npu, args.ticks)
            t_merged = ms_per_tick(on_npu_merged, args.ticks)  # its first call opens and checks the merged file
            npu_calls, merged_calls = calls_per_tick(on_npu), calls_per_tick(on_npu_merged)
            print(f"{n:>7} | {t_batched:>8.2f} ms {len(models):>5} | {t_single:>7.2f} ms {n * len(models):>5}"
                  f" {t_single / t_batched:>8.1f}x | {npu_calls:>9} {math.ceil(n / args.batch) * args.batch:>5}"
                  f" {t_host:>7.2f} | {merged_calls:>12} {t_merged:>7.2f}")
        npu.close()
    print("\ncpu batched / per stream: milliseconds of one CPU core per 80 ms tick (median); "
          f"npu: NPU calls per tick (counted) at batch {args.batch}, one per head, padded rows per head; "
          "merged: every head in one file, NPU calls per tick (counted; one per batch of rows), "
          + ("ms per tick on the NPU." if args.rknn_cache else "host ms per tick without the NPU."))
    print(SIMULATOR_NOTE)


if __name__ == "__main__":
    main()
