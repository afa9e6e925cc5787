"""OpenCL features backend: melspectrogram and speech embedding on a GPU (the RK3588's
Mali-G610; any OpenCL device for tests) through PyOpenCL and the kernels in `kernels/`.

All streams of a call run as one batch: one upload, one kernel per mel call or per embedding
layer, one download. States come in and go out as numpy arrays in the CPU backend's format, so a
stream can move to the CPU backend at any step; a device error raises BackendFailed, never garbage.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import numpy as np
import onnx

from .. import graphs
from ..errors import BackendFailed, BackendUnavailable
from ..models.registry import builtin_feature_path
from . import opencl_kernels as K
from .opencl_device import build_program, choose_device, device_info
from .opencl_host import OutputRing, PinnedArrays, pack
from .opencl_plan import Plan, one_piece, run, run_features

#: DESIGN.md's exactness contract: fp32 within 1e-3 absolute; fp16 within 2e-2, absolute on
#: scores and relative to the embedding scale (max |embedding|, ~70) on embeddings, since half
#: weights alone move embeddings of that size by ~0.1 (half's spacing at 64 is 0.06).
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2}


def allowed_error(precision: str, scale: float) -> float:
    """Largest embedding error the contract allows at `precision` for embeddings of size `scale`."""
    return TOLERANCE[precision] * (1.0 if precision == "fp32" else max(1.0, scale))


#: Streams per kernel launch at most (int32 indexing and device memory stay bounded).
MAX_CAPACITY = 1 << 16
#: Tiling variant by batch capacity (measured on an H100): "n"arrow (1 channel per work-item)
#: and "l"atency tiles keep small batches to a few memory round trips per layer; "t"hroughput
#: tiles (4 rows x COUT/8 channels per work-item) reach ~37 % of fp32 peak on large ones.
VARIANTS = (("n", 8), ("l", 512), ("t", MAX_CAPACITY))
FLUSH_EVERY = 4


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class OpenClFeatures:
    """Melspectrogram and speech embedding as OpenCL kernels, batched and streaming.

    device: "gpu" (GPUs only), "any" or "auto" (a GPU first, else any device, e.g. PoCL);
    PYOPENCL_CTX picks the device; `context` (a pyopencl Context) overrides both. precision:
    "fp32", or "fp16" (half storage of weights and activations everywhere; half arithmetic too
    where the device has cl_khr_fp16). `mel_fft=False` forces the direct-DFT mel kernel and
    `tiles` overrides the tiling (benchmarks and tests only).
    """

    name = "opencl"

    def __init__(self, device: str = "auto", precision: str = "fp32", context=None, mel_fft: bool = True,
                 tiles: dict | None = None) -> None:
        if precision not in TOLERANCE:
            raise ValueError(f"unknown precision {precision!r}; use fp32 or fp16")
        if context is not None:
            from .opencl_device import import_pyopencl

            cl, dev = import_pyopencl(), context.devices[0]
        else:
            cl, dev = choose_device("gpu" if device == "gpu" else "any")
        self._cl = cl
        self.precision = precision
        self.device = device_info(dev)
        self.half_math = precision == "fp16" and self.device.fp16
        self._store_bytes = 2 if precision == "fp16" else 4
        self._lock = threading.Lock()
        self._plans: dict[tuple[str, int], Plan] = {}
        self._mel_buffers: dict[str, tuple] = {}
        try:
            self.context = context or cl.Context([dev])
            self.queue = cl.CommandQueue(self.context, dev)
            # Large batches overlap uploads, kernels and downloads across three in-order queues.
            self.queue_up, self.queue_down = cl.CommandQueue(self.context, dev), cl.CommandQueue(self.context, dev)
            self._pinned = PinnedArrays(cl, self.context, self.queue)
            embedding = onnx.load(str(builtin_feature_path("embedding")))
            _, self.layout = graphs.streaming_embedding(embedding)
            self._layers = {"step": K.read_embedding(embedding, windowed=False),
                            "window": K.read_embedding(embedding, windowed=True)}
            sizes = [lay.state_size for lay in self._layers["step"] if lay.stateful]
            if sizes != [int(np.prod(shape)) for shape in self.layout.state_shapes]:
                raise BackendUnavailable("the embedding's streaming states do not match the CPU layout; use cpu")
            self._mel = K.read_mel(onnx.load(str(builtin_feature_path("melspectrogram"))))
            if not mel_fft:
                self._mel = K.MelSpec(**{**self._mel.__dict__, "window": None})
            self._build_mel()
            self._upload_weights()
            self._tiles = tiles or {}
            # Flush the queue every this many kernels of a small batch, so the device starts
            # while the rest is still being enqueued (some drivers hold commands until a read).
            self.flush_every = int(self._tiles.get("flush", FLUSH_EVERY))
            self._tilings: dict[str, list[K.Tiling]] = {}
            self._programs = {"step_n": self._build_conv("step", "n")}  # name -> (built prefix, program)
        except cl.Error as err:
            raise BackendUnavailable(f"OpenCL setup failed on {self.device.label} ({err}); use cpu") from err
        per_stream = 4 * (self._layers["step"][0].in_size + K.EMBEDDING_DIM) + 8 * sum(sizes) + \
            2 * self._store_bytes * max(lay.out_size for lay in self._layers["step"])
        capacity = min(MAX_CAPACITY, self.device.global_mem // 4 // per_stream, self.device.max_alloc // per_stream)
        self.max_capacity = 1 << max(0, int(capacity).bit_length() - 1)

    # -- setup -------------------------------------------------------------------------------
    def _buffer(self, array: np.ndarray):
        flags = self._cl.mem_flags
        return self._cl.Buffer(self.context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=np.ascontiguousarray(array))

    def _upload_weights(self) -> None:
        store = np.float16 if self.precision == "fp16" else np.float32
        self._weights = [
            (self._buffer(layer.weight.astype(store)), None if layer.bias is None else self._buffer(layer.bias))
            for layer in self._layers["step"]
        ]

    def _kernel_fits(self, program, names: list[str], sizes: list[int]) -> bool:
        info = self._cl.kernel_work_group_info.WORK_GROUP_SIZE
        dev = self.context.devices[0]
        return all(self._cl.Kernel(program, n).get_work_group_info(info, dev) >= s for n, s in zip(names, sizes))

    def _build_mel(self) -> None:
        spec, dev = self._mel, self.device
        work_group = 1 << (min(256, dev.max_work_group).bit_length() - 1)
        pairs = 4
        while pairs > 1 and K.mel_local_bytes(spec, work_group, pairs) > dev.local_mem:
            pairs //= 2
        while True:
            defines = K.mel_program_defines(spec, work_group, pairs)
            options = [f"-D{k}={v}" for k, v in defines.items()]
            program = build_program(self._cl, self.context, K.kernel_source("mel.cl"), options, "melspectrogram")
            if work_group == 1 or self._kernel_fits(program, ["melspectrogram"], [work_group]):
                break
            work_group //= 2
        self._mel_program, self._mel_group, self._mel_bound = program, work_group, None
        self._mel_options, self._scaled_mel, self._scaled_bound = options, None, None
        self._mel_kernel = self._cl.Kernel(program, "melspectrogram")
        lo, hi = spec.nonzero_bins()
        fft = defines["MEL_FFT"] == 1
        self._mel_consts = [
            self._buffer(spec.window if fft else np.zeros(1, np.float32)),
            self._buffer(K.twiddles(spec.n_fft)),
            self._buffer(np.zeros(1, np.float32) if fft else spec.filters_re),
            self._buffer(np.zeros(1, np.float32) if fft else spec.filters_im),
            self._buffer(spec.mel), self._buffer(lo), self._buffer(hi),
        ]
        self.mel_method = "fft" if fft else "dft"

    def _build_conv(self, which: str, variant: str):
        """The program for `which` layers ("step" | "window") in one tiling variant ("n"arrow or
        "l"atency for small batches, "t"hroughput), kernels `{which}_{variant}{index}`; tiles
        shrink until the device takes them. Returns (the variant's prefix, program)."""
        layers, dev, prefix = self._layers[which], self.device, f"{which}_{variant}"
        latency, rn = variant != "t", int(self._tiles.get("rn", 1 if variant == "n" else 3))
        mt = int(self._tiles.get("mt", 32))
        while True:
            tilings = [K.choose_tiling(lay, dev.max_work_group, dev.local_mem, rm=int(self._tiles.get("rm", 4)),
                                       mt=mt, latency=latency, rn=rn) for lay in layers]
            source = K.conv_program_source(layers, tilings, prefix, self.precision == "fp16", self.half_math)
            program = build_program(self._cl, self.context, source, [], "embedding")
            names = [f"{prefix}{i}" for i in range(len(layers))]
            if mt == 1 or self._kernel_fits(program, names, [t.work_group for t in tilings]):
                self._tilings[prefix] = tilings
                return prefix, program
            if latency and mt <= 2:  # even small latency tiles do not fit: use the throughput ones
                return self._build_conv(which, "t")
            mt //= 2

    def _plan(self, which: str, batch: int) -> Plan:
        capacity = min(self.max_capacity, _pow2_at_least(batch))
        variant = next(v for v, most in VARIANTS if capacity <= most)
        variant = {"narrow": "n", "latency": "l", "throughput": "t"}.get(self._tiles.get("mode"), variant)
        key = (which, capacity)
        if key not in self._plans:
            if f"{which}_{variant}" not in self._programs:
                self._programs[f"{which}_{variant}"] = self._build_conv(which, variant)
            built, program = self._programs[f"{which}_{variant}"]
            # Keep the newest few plans: the engine's batch size changes only as streams come and go.
            for old in [k for k in self._plans if k[0] == which][: -2 or None]:
                del self._plans[old]
            self._plans[key] = Plan(self, self._layers[which], program, built, capacity)
        return self._plans[key]

    # -- running -----------------------------------------------------------------------------
    @contextmanager
    def _device_errors(self, what: str):
        try:
            yield
        except (self._cl.Error, MemoryError) as err:
            raise BackendFailed(f"OpenCL {what} failed on {self.device.name} ({err})") from err

    def _launch(self, kernel, global_size: tuple, local_size: tuple, wait_for=None):
        return self._cl.enqueue_nd_range_kernel(self.queue, kernel, global_size, local_size, wait_for=wait_for)

    def _run(self, plan: Plan, batch: int, inputs: list[np.ndarray]) -> np.ndarray:
        return run(self, plan, batch, inputs)

    def melspectrogram(self, audio: np.ndarray) -> np.ndarray:
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        batch, samples = audio.shape
        spec = self._mel
        frames = (samples - spec.n_fft) // spec.hop + 1
        if batch == 0 or frames <= 0:
            return np.zeros((batch, max(frames, 0), K.MEL_BINS), np.float32)
        with self._lock, self._device_errors("melspectrogram"):
            in_buf, out_buf, staging, outputs = self._mel_io(audio.size, batch * frames * K.MEL_BINS)
            pack([audio], staging[: audio.size])
            self._cl.enqueue_copy(self.queue, in_buf, staging[: audio.size], is_blocking=False)
            if self._mel_bound != (in_buf, out_buf, samples, frames):
                self._mel_kernel.set_args(in_buf, np.int32(samples), np.int32(frames), *self._mel_consts, out_buf)
                self._mel_bound = (in_buf, out_buf, samples, frames)
            self._launch(self._mel_kernel, (batch * self._mel_group,), (self._mel_group,))
            out = outputs.take(batch * frames * K.MEL_BINS).reshape(batch, frames, K.MEL_BINS)
            self._cl.enqueue_copy(self.queue, out, out_buf, is_blocking=True)
        if not np.isfinite(out).all():
            raise BackendFailed(f"OpenCL melspectrogram on {self.device.name} returned non-finite values")
        return out

    def _mel_io(self, in_floats: int, out_floats: int):
        """Mel device buffers, host staging and output ring, grown to the next power of two."""
        flags = self._cl.mem_flags
        if "in" not in self._mel_buffers or self._mel_buffers["in"][0] < in_floats:
            size = _pow2_at_least(in_floats)
            self._mel_buffers["in"] = (size, self._cl.Buffer(self.context, flags.READ_ONLY, 4 * size),
                                       self._pinned.new(size))
        if "out" not in self._mel_buffers or self._mel_buffers["out"][0] < out_floats:
            size = _pow2_at_least(out_floats)
            self._mel_buffers["out"] = (size, self._cl.Buffer(self.context, flags.READ_WRITE, 4 * size),
                                        OutputRing(self._pinned, size, slots=2))
        (_, in_buf, staging), (_, out_buf, outputs) = self._mel_buffers["in"], self._mel_buffers["out"]
        return in_buf, out_buf, staging, outputs

    def embed_step(self, mel: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        mel = np.asarray(mel, np.float32)
        batch = len(mel)
        shapes = self.layout.state_shapes
        if mel.shape[1:] != (K.STEP_FRAMES, K.MEL_BINS) or len(states) != len(shapes) or any(
            np.shape(s) != (batch, *shape) for s, shape in zip(states, shapes)
        ):
            raise ValueError(f"embed_step takes mel [B, 8, 32] and states {list(shapes)} with a leading B")
        sizes = [int(np.prod(shape)) for shape in shapes]
        embeddings, new_states = [], [[] for _ in shapes]
        with self._lock, self._device_errors("embed_step"):
            for start in range(0, max(batch, 1), self.max_capacity):
                rows = slice(start, min(batch, start + self.max_capacity))
                n = rows.stop - rows.start
                if n == 0:
                    break
                plan = self._plan("step", n)
                flat = self._run(plan, n, [mel[rows]] + [s[rows] for s in states])
                embeddings.append(flat[: n * K.EMBEDDING_DIM].reshape(n, K.EMBEDDING_DIM))
                offset = n * K.EMBEDDING_DIM
                for i, (size, shape) in enumerate(zip(sizes, shapes)):
                    new_states[i].append(flat[offset : offset + n * size].reshape(n, *shape))
                    offset += n * size
        if batch == 0:
            return np.zeros((0, K.EMBEDDING_DIM), np.float32), [np.zeros((0, *s), np.float32) for s in shapes]
        join = (lambda parts: parts[0]) if len(embeddings) == 1 else np.concatenate
        result = join(embeddings)
        if not np.isfinite(result).all():
            raise BackendFailed(f"OpenCL embed_step on {self.device.name} returned non-finite embeddings")
        return result, [join(parts) for parts in new_states]

    def features_step(self, audio: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """`embed_step(scale_mel(melspectrogram(audio)), states)` in one device round trip: the
        scaled mel stays on the device and feeds the embedding kernels directly. audio: [B, 1760]
        (one step's 1280 samples behind 480 of context, 8 mel frames); same results and errors
        as the two calls. FeaturePipeline uses it when a backend offers it (optional interface)."""
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        batch, shapes = len(audio), self.layout.state_shapes
        spec = self._mel
        if audio.ndim != 2 or (audio.shape[1] - spec.n_fft) // spec.hop + 1 != K.STEP_FRAMES or \
                len(states) != len(shapes) or any(np.shape(s) != (batch, *shape) for s, shape in zip(states, shapes)):
            raise ValueError(f"features_step takes audio [B, samples] of {K.STEP_FRAMES} mel frames and states "
                             f"{list(shapes)} with a leading B")
        with self._lock, self._device_errors("features_step"):
            kernel = self._scaled_mel_kernel() if 0 < batch <= self.max_capacity and one_piece(batch) else None
        if kernel is None:  # large batches pipeline their chunks: the two calls
            mel = self.melspectrogram(audio) / np.float32(10) + np.float32(2)
            return self.embed_step(mel, states)
        with self._lock, self._device_errors("features_step"):
            plan = self._plan("step", batch)
            _, _, _, outputs = self._mel_io(audio.size, batch * plan.in_sizes[0])
            mel = outputs.take(batch * plan.in_sizes[0])
            flat = run_features(self, plan, batch, audio, states, kernel, self._mel_group, mel)
        if not np.isfinite(mel).all():
            raise BackendFailed(f"OpenCL melspectrogram on {self.device.name} returned non-finite values")
        embeddings = flat[: batch * K.EMBEDDING_DIM].reshape(batch, K.EMBEDDING_DIM)
        if not np.isfinite(embeddings).all():
            raise BackendFailed(f"OpenCL embed_step on {self.device.name} returned non-finite embeddings")
        new_states, offset = [], batch * K.EMBEDDING_DIM
        for shape, size in zip(shapes, plan.in_sizes[1:]):
            new_states.append(flat[offset : offset + batch * size].reshape(batch, *shape))
            offset += batch * size
        return embeddings, new_states

    def _scaled_mel_kernel(self):
        """The mel kernel built with MEL_SCALE=1 (writes x/10 + 2), built on first use; None
        where the device does not take it at the plain kernel's work-group size."""
        if self._scaled_mel is None:
            options = self._mel_options + ["-DMEL_SCALE=1"]
            fp = self._cl.device_fp_config
            if self.context.devices[0].single_fp_config & fp.CORRECTLY_ROUNDED_DIVIDE_SQRT:
                options.append("-cl-fp32-correctly-rounded-divide-sqrt")  # x/10 as numpy rounds it
            try:
                program = build_program(self._cl, self.context, K.kernel_source("mel.cl"), options, "melspectrogram")
            except BackendUnavailable:
                program = None
            fits = program is not None and self._kernel_fits(program, ["melspectrogram"], [self._mel_group])
            self._scaled_mel = self._cl.Kernel(program, "melspectrogram") if fits else False
        return self._scaled_mel or None

    def _bind_scaled_mel(self, audio_buf, out_buf, samples: int) -> None:
        frames = (samples - self._mel.n_fft) // self._mel.hop + 1
        if self._scaled_bound != (audio_buf, out_buf, samples):
            self._scaled_mel.set_args(audio_buf, np.int32(samples), np.int32(frames), *self._mel_consts, out_buf)
            self._scaled_bound = (audio_buf, out_buf, samples)

    def _audio_io(self, floats: int):
        """(device input buffer, page-locked staging) for `floats` audio samples (the mel's)."""
        in_buf, _, staging, _ = self._mel_io(floats, 1)
        return in_buf, staging

    def embed_windows(self, mel: np.ndarray) -> np.ndarray:
        mel = np.asarray(mel, np.float32)
        if mel.shape[1:] != (K.WINDOW_FRAMES, K.MEL_BINS):
            raise ValueError("embed_windows takes mel [N, 76, 32]")
        parts = []
        with self._lock, self._device_errors("embed_windows"):
            for start in range(0, len(mel), self.max_capacity):
                chunk = mel[start : start + self.max_capacity]
                flat = self._run(self._plan("window", len(chunk)), len(chunk), [chunk])
                parts.append(flat.reshape(len(chunk), K.EMBEDDING_DIM))
        result = np.concatenate(parts) if parts else np.zeros((0, K.EMBEDDING_DIM), np.float32)
        if not np.isfinite(result).all():
            raise BackendFailed(f"OpenCL embed_windows on {self.device.name} returned non-finite embeddings")
        return result

    def time_device_step(self, batch: int, iterations: int = 10) -> tuple[float, float]:
        """Seconds per 80 ms step of the mel kernel and of the embedding kernels alone, inputs
        already on the device and nothing copied back: what the device itself sustains."""
        if not 0 < batch <= self.max_capacity:
            raise ValueError(f"batch must be in 1..{self.max_capacity}")
        audio = np.random.default_rng(0).normal(0, 3000, (batch, 1760)).astype(np.float32)
        mel = self.melspectrogram(audio) / np.float32(10) + np.float32(2)  # binds the mel kernel
        self.embed_step(mel, [np.zeros((batch, *s), np.float32) for s in self.layout.state_shapes])
        plan = self._plan("step", batch)
        plan.bind(batch)
        times = []
        with self._lock, self._device_errors("time_device_step"):
            mel = [(self._mel_kernel, (batch * self._mel_group,), (self._mel_group,))]
            for launches in (mel, list(plan.launches(batch))):
                self.queue.finish()
                start = time.perf_counter()
                for _ in range(iterations):
                    for kernel, size, group in launches:
                        self._launch(kernel, size, group)
                self.queue.finish()
                times.append((time.perf_counter() - start) / iterations)
        return times[0], times[1]

    def close(self) -> None:
        with self._lock:
            self._plans.clear()
            self._mel_buffers.clear()
            self._mel_bound = self._scaled_bound = None
            for queue in (self.queue, self.queue_up, self.queue_down):
                try:
                    queue.finish()
                except self._cl.Error:  # a failed device: nothing left to wait for
                    pass


def self_test(backend, reference=None, steps: int = 3) -> tuple[float, float]:
    """(max |backend - CPU| over scaled mel and streaming embeddings, max |CPU embedding|) for
    one fixed input: three streams (loud harmonics, quiet noise, silence), `steps` 80 ms steps."""
    from ..features import FRAME_SAMPLES, MEL_CONTEXT_SAMPLES, scale_mel
    from .cpu import CpuFeatures

    reference = reference or CpuFeatures()
    rng = np.random.default_rng(20240605)
    n = MEL_CONTEXT_SAMPLES + steps * FRAME_SAMPLES
    t = np.arange(n) / 16000
    loud = 9000 * sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 12))
    audio = np.stack([np.clip(loud, -32768, 32767), rng.normal(0, 300, n), np.zeros(n)]).round().astype(np.float32)
    ours = [np.zeros((3, *s), np.float32) for s in backend.layout.state_shapes]
    theirs = [s.copy() for s in ours]
    error = scale = 0.0
    for step in range(steps):
        chunk = audio[:, step * FRAME_SAMPLES : step * FRAME_SAMPLES + MEL_CONTEXT_SAMPLES + FRAME_SAMPLES]
        mel_ours, mel_ref = scale_mel(backend.melspectrogram(chunk)), scale_mel(reference.melspectrogram(chunk))
        emb_ours, ours = backend.embed_step(mel_ref, ours)
        emb_ref, theirs = reference.embed_step(mel_ref, theirs)
        error = max(error, float(np.abs(mel_ours - mel_ref).max()), float(np.abs(emb_ours - emb_ref).max()))
        scale = max(scale, float(np.abs(emb_ref).max()))
    return error, scale


def probe(kind: str = "gpu", precision: str = "fp32") -> tuple[OpenClFeatures | None, str]:
    """(backend, what runs) when an OpenCL device of `kind` ("gpu" for auto, "any" for an explicit
    opencl choice) builds the kernels and passes the start-up self test, else (None, why)."""
    try:
        backend = OpenClFeatures(device=kind, precision=precision)
    except BackendUnavailable as err:
        return None, str(err)
    try:
        error, scale = self_test(backend)
    except (BackendFailed, BackendUnavailable) as err:
        backend.close()
        return None, f"the OpenCL self test could not run on {backend.device.label} ({err}); use cpu"
    limit = allowed_error(precision, scale)
    if not error <= limit:
        backend.close()
        return None, (f"the OpenCL self test failed on {backend.device.label}: max error {error:.3g} > "
                      f"{limit:.3g} against the CPU backend; use cpu and report the device")
    return backend, f"opencl {precision} on {backend.device.label}; self test max error {error:.1e}"
