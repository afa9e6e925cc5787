"""Features cost per stream per 80 ms step: CPU (onnxruntime) windowed and streaming, OpenCL streaming.

One process, same inputs, ratios against the CPU. Rows per backend and batch: ms per step for
the whole batch, us per stream, x vs CPU streaming, the real-time streams the device sustains at
that batch (80 ms / step time * batch) and, for OpenCL, the fraction of the device's fp32 peak.
OpenCL "fused" rows take the same step through `features_step` (one device round trip, as
FeaturePipeline runs it on this backend); "device" rows time the kernels alone (inputs resident on the device, nothing copied back);
the other OpenCL rows go through the backend's numpy interface (uploads, downloads, host copies).

Run: python benchmarks/bench_features.py [--batches 1 8 64 512] [--gpu-batches 4096 32768]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wyoming_oww_rk3588 import graphs  # noqa: E402
from wyoming_oww_rk3588.backends.cpu import CpuFeatures, make_session  # noqa: E402
from wyoming_oww_rk3588.features import scale_mel  # noqa: E402
from wyoming_oww_rk3588.models.registry import builtin_feature_path  # noqa: E402

STEP_S = 0.080
STEP_SAMPLES = 1760  # 1280 new samples + 480 of context, as each step reads
#: fp32 lanes per compute unit, for the peak estimate (units x clock x lanes x 2 FLOP per FMA).
LANES = [("H100", 128), ("H200", 128), ("A100", 64), ("NVIDIA", 128), ("Mali-G610", 32), ("Mali", 32)]


def nominal_mflop() -> tuple[float, float]:
    """(mel, streaming embedding) MFLOP per stream per step as the ONNX graphs compute them."""
    from wyoming_oww_rk3588.backends import opencl_kernels as K

    mel = K.read_mel(onnx.load(str(builtin_feature_path("melspectrogram"))))
    frames = (STEP_SAMPLES - mel.n_fft) // mel.hop + 1
    mel_flop = frames * (2 * 2 * mel.bins * mel.n_fft + 2 * mel.bins * mel.mel.shape[1])
    layers = K.read_embedding(onnx.load(str(builtin_feature_path("embedding"))), windowed=False)
    return mel_flop / 1e6, sum(layer.flops for layer in layers) / 1e6


def peak_gflops(info, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, f"{override:.0f} GFLOP/s (given)"
    if not info.is_gpu:
        return None, "n/a (not a GPU; pass --peak-gflops)"
    lanes = next((n for key, n in LANES if key.lower() in f"{info.name} {info.platform}".lower()), None)
    if lanes is None:
        return None, "unknown (pass --peak-gflops)"
    peak = info.compute_units * info.clock_mhz * 1e6 * lanes * 2 / 1e9
    return peak, (f"{peak:.0f} GFLOP/s = {info.compute_units} units x {info.clock_mhz} MHz x {lanes} fp32 lanes "
                  "x 2 (FMA), from the device's OpenCL report and the lane count of its architecture")


def timed(fn, min_time: float, warmup: int = 2, min_iter: int = 3) -> float:
    for _ in range(warmup):
        fn()
    iterations, start = 0, time.perf_counter()
    while iterations < min_iter or time.perf_counter() - start < min_time:
        fn()
        iterations += 1
    return (time.perf_counter() - start) / iterations


def inputs(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gains = rng.uniform(0.01, 1.0, (batch, 1))
    return np.round(rng.normal(0, 6000, (batch, STEP_SAMPLES)) * gains).astype(np.float32)


def streaming_step(backend, batch: int):
    audio = inputs(batch)
    states = [np.zeros((batch, *s), np.float32) for s in backend.layout.state_shapes]

    def step():
        nonlocal states
        mel = scale_mel(backend.melspectrogram(audio))
        _, states = backend.embed_step(mel, states)

    return step


def fused_step(backend, batch: int):
    """The same step through `features_step` (mel, x/10 + 2 and embedding in one device round
    trip), as FeaturePipeline runs it on a backend that offers it."""
    audio = inputs(batch)
    states = [np.zeros((batch, *s), np.float32) for s in backend.layout.state_shapes]

    def step():
        nonlocal states
        _, states = backend.features_step(audio, states)

    return step


def windowed_step(threads: int, batch: int):
    """openWakeWord's way: the mel model on the step's samples, the embedding on a 76-frame window."""
    mel_session = make_session(graphs.batched_mel(onnx.load(str(builtin_feature_path("melspectrogram")))), threads)
    window_session = make_session(str(builtin_feature_path("embedding")), threads)
    audio = inputs(batch)
    window = np.random.default_rng(1).uniform(0, 4, (batch, 76, 32, 1)).astype(np.float32)

    def step():
        mel_session.run(None, {"input": audio})
        window_session.run(None, {"input_1": window})

    return step


def profile_layers(backend, batch: int) -> list[str]:
    """Per-kernel device time of one step at `batch` (OpenCL profiling events)."""
    cl = backend._cl
    queue = cl.CommandQueue(backend.context, backend.context.devices[0],
                            properties=cl.command_queue_properties.PROFILING_ENABLE)
    backend.time_device_step(batch, iterations=1)  # binds every kernel for this batch
    plan = backend._plan("step", batch)
    launches = [("mel", None, (backend._mel_kernel, (batch * backend._mel_group,), (backend._mel_group,)))]
    launches += [(f"conv{i}", layer, launch)
                 for i, (layer, launch) in enumerate(zip(plan.layers, plan.launches(batch)))]
    for _ in range(2):  # the second pass is timed
        events = [cl.enqueue_nd_range_kernel(queue, k, size, group) for _, _, (k, size, group) in launches]
        queue.finish()
    out = [f"per-kernel device time, {backend.precision}, batch {batch}:"]
    for (name, layer, (_, _, (group,))), event in zip(launches, events):
        seconds = (event.profile.end - event.profile.start) * 1e-9
        what = ""
        if layer is not None:
            gflops = layer.flops * batch / seconds / 1e9
            what = (f"{layer.kt}x{layer.kf} {layer.cin:>2}->{layer.cout:<2} rows {layer.tout}x{layer.fout:<2} "
                    f"pool {layer.pt}x{layer.pf}  {gflops:8.0f} GFLOP/s")
        out.append(f"  {name:<7}{seconds * 1e3:9.3f} ms  wg {group:<4} {what}")
    return out


def transfer_rates(backend, megabytes: int) -> str:
    """Host<->device copy rates (page-locked host memory) and the host packing rate, GB/s."""
    from wyoming_oww_rk3588.backends.opencl_host import pack

    cl, floats = backend._cl, megabytes << 18
    host, source = backend._pinned.new(floats), np.ones(floats, np.float32)
    device = cl.Buffer(backend.context, cl.mem_flags.READ_WRITE, 4 * floats)
    rates = {}
    for name, fn in (("pack", lambda: pack([source], host)),
                     ("upload", lambda: cl.enqueue_copy(backend.queue, device, host, is_blocking=True)),
                     ("download", lambda: cl.enqueue_copy(backend.queue, host, device, is_blocking=True))):
        rates[name] = 4 * floats / timed(fn, 0.2) / 1e9
    return "host/device rates: " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in rates.items()) + f" ({megabytes} MB)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 512])
    parser.add_argument("--gpu-batches", type=int, nargs="*", default=[], help="OpenCL only, e.g. 4096 32768")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16"])
    parser.add_argument("--cpu-threads", type=int, default=1)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument("--peak-gflops", type=float, default=None)
    parser.add_argument("--device", default="any", help="OpenCL device kind: gpu | any")
    parser.add_argument("--tiles", nargs="*", default=[], help="extra tilings to try, e.g. rm=8,mt=16 mode=latency")
    parser.add_argument("--tile-batches", type=int, nargs="*", default=[], help="batches for --tiles")
    parser.add_argument("--profile-batch", type=int, default=0, help="per-kernel times at this batch")
    parser.add_argument("--transfer-mb", type=int, default=256, help="size for the copy-rate check (0: skip)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)

    from wyoming_oww_rk3588.backends.opencl import OpenClFeatures

    mel_mflop, emb_mflop = nominal_mflop()
    mflop = mel_mflop + emb_mflop
    backends = {p: OpenClFeatures(device=args.device, precision=p) for p in args.precisions}
    info = next(iter(backends.values())).device
    peak, peak_how = peak_gflops(info, args.peak_gflops)
    lines = [
        f"# features cost per stream per 80 ms step -- {time.strftime('%Y-%m-%d')}",
        f"OpenCL device: {info.label}; mel kernel: {next(iter(backends.values())).mel_method}",
        f"CPU: {platform.processor() or platform.machine()}, onnxruntime with {args.cpu_threads} thread(s)",
        f"nominal work: mel {mel_mflop:.2f} + streaming embedding {emb_mflop:.2f} = {mflop:.2f} MFLOP per stream "
        "per step (direct STFT conv; the FFT kernel does fewer)",
        f"fp32 peak: {peak_how}",
        "",
        f"{'backend':<22}{'batch':>7}{'ms/step':>10}{'us/stream':>11}{'x cpu-str':>10}{'x cpu-win':>10}"
        f"{'RT streams':>12}{'% peak':>8}",
    ]
    if args.transfer_mb:
        lines.insert(-2, transfer_rates(next(iter(backends.values())), args.transfer_mb))
    print("\n".join(lines), flush=True)
    cpu = CpuFeatures(threads=args.cpu_threads)
    best = {}

    def row(name: str, batch: int, seconds: float, ref: dict) -> None:
        per_stream = seconds / batch
        cells = [f"{name:<22}{batch:>7}{seconds * 1e3:>10.3f}{per_stream * 1e6:>11.2f}"]
        for key in ("cpu-streaming", "cpu-windowed"):
            base = ref.get((key, batch))
            cells.append(f"{base / seconds:>10.2f}" if base else f"{'-':>10}")
        streams = STEP_S / seconds * batch
        cells.append(f"{streams:>12.0f}")
        pct = 100 * mflop * 1e6 * batch / seconds / (peak * 1e9) if peak and name.startswith("opencl") else None
        cells.append(f"{pct:>7.2f}%" if pct is not None else f"{'':>8}")
        line = "".join(cells)
        lines.append(line)
        print(line, flush=True)
        if name.startswith("opencl") and streams > best.get(name, (0, 0))[0]:
            best[name] = (streams, batch)

    ref: dict = {}
    for batch in args.batches + args.gpu_batches:
        if batch in args.batches:
            for key, make in (("cpu-windowed", lambda: windowed_step(args.cpu_threads, batch)),
                              ("cpu-streaming", lambda: streaming_step(cpu, batch))):
                ref[(key, batch)] = timed(make(), args.min_time)
                row(key, batch, ref[(key, batch)], ref)
        for precision, backend in backends.items():
            if batch > backend.max_capacity:
                continue
            row(f"opencl-{precision}", batch, timed(streaming_step(backend, batch), args.min_time), ref)
            row(f"opencl-{precision}-fused", batch, timed(fused_step(backend, batch), args.min_time), ref)
            audio = inputs(batch)
            api_mel = timed(lambda: backend.melspectrogram(audio), args.min_time / 2)
            mel_s, emb_s = backend.time_device_step(batch, iterations=max(3, int(2000 / batch) + 3))
            row(f"opencl-{precision}-device", batch, mel_s + emb_s, ref)
            lines.append(f"{'':<22}{'':>7}   (device: mel {mel_s * 1e3:.3f} ms + embedding {emb_s * 1e3:.3f} ms; "
                         f"mel call through the API {api_mel * 1e3:.3f} ms)")
            print(lines[-1], flush=True)
    for spec in args.tiles:
        tiles = {k: (v if k == "mode" else int(v)) for k, v in (kv.split("=") for kv in spec.split(","))}
        backend = OpenClFeatures(device=args.device, precision="fp32", tiles=tiles)
        for batch in args.tile_batches or [max(args.batches + args.gpu_batches)]:
            batch = min(batch, backend.max_capacity)
            mel_s, emb_s = backend.time_device_step(batch, iterations=max(3, int(2000 / batch) + 3))
            whole = timed(streaming_step(backend, batch), args.min_time)
            lines.append(f"tiles {spec}: batch {batch}, embedding kernels {emb_s * 1e3:.3f} ms/step "
                         f"({STEP_S / (mel_s + emb_s) * batch:.0f} RT streams device-only), "
                         f"whole step through the API {whole * 1e3:.3f} ms")
            print(lines[-1], flush=True)
        backend.close()
    if args.profile_batch:
        for backend in backends.values():
            lines += profile_layers(backend, min(args.profile_batch, backend.max_capacity))
            print("\n".join(lines[-22:]), flush=True)
    lines.append("")
    for name, (streams, batch) in best.items():
        lines.append(f"max real-time streams, {name}: {streams:.0f} (at batch {batch})")
    print("\n".join(lines[-len(best) - 1:]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
