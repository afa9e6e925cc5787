"""What the OpenCL kernels compute, read from the shipped ONNX files, and their source text.

The mel and embedding graphs are parsed into plain layer descriptions (weights re-laid out for
the kernels, never a second copy on disk); each embedding conv becomes one instantiation of
the `kernels/conv.cl` template with its shapes and tiling as #defines.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import BackendUnavailable
from ..graphs import CONV_CONTEXT_ROWS

STEP_FRAMES = 8  # new mel frames per 80 ms step
WINDOW_FRAMES = 76  # openWakeWord's embedding window
MEL_BINS = 32
EMBEDDING_DIM = 96


def fft_mel_weights(mel_model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray] | None:
    """(analysis window [512], mel matrix [257, 32]) when the model's STFT convs are exactly a
    windowed 512-point DFT (as DESIGN.md measured), else None.

    Then the mel kernel runs an FFT (in float-float) for the same power spectrum. The CPU backend
    keeps the conv itself: an FFT is more exact, but openWakeWord's float32 conv rounds quiet
    bins differently enough to move scores by ~1e-4..1e-3 on narrow-band audio (chirps, tones),
    and the CPU path promises openWakeWord's scores on any audio.
    """
    inits = {i.name: numpy_helper.to_array(i) for i in mel_model.graph.initializer}
    convs = [n for n in mel_model.graph.node if n.op_type == "Conv"]
    matmul = next((n for n in mel_model.graph.node if n.op_type == "MatMul"), None)
    if len(convs) != 2 or matmul is None:
        return None
    real, imag = (inits[c.input[1]][:, 0, :].astype(np.float64) for c in convs)
    if real.shape != (257, 512):
        return None
    window = real[0]
    k, n = np.arange(257)[:, None], np.arange(512)
    angle = 2 * np.pi * k * n / 512
    if max(np.abs(window * np.cos(angle) - real).max(), np.abs(-window * np.sin(angle) - imag).max()) > 1e-6:
        return None
    return window.astype(np.float32), inits[matmul.input[1]].astype(np.float32)


def kernel_source(name: str) -> str:
    return resources.files("wyoming_oww_rk3588").joinpath("kernels", name).read_text()


def _unsupported(what: str) -> BackendUnavailable:
    return BackendUnavailable(f"{what}; the OpenCL kernels only implement openWakeWord's shipped models, use cpu")


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


@dataclass(frozen=True)
class MelSpec:
    """The mel model: STFT filters, mel matrix and the dB clipping constants."""

    n_fft: int
    hop: int
    filters_re: np.ndarray  # [bins, n_fft]
    filters_im: np.ndarray
    window: np.ndarray | None  # [n_fft] when the filters are verified to be window * DFT
    mel: np.ndarray  # [bins, mels]
    clip_min: float
    db_mul: float  # dB = log(x) * db_mul / db_div (10 and ln 10 in the graph)
    db_div: float
    top_db: float

    @property
    def bins(self) -> int:
        return self.filters_re.shape[0]

    def nonzero_bins(self) -> tuple[np.ndarray, np.ndarray]:
        """Per mel filter, the [lo, hi) range of bins outside which its weights are zero."""
        lo = np.zeros(self.mel.shape[1], np.int32)
        hi = np.zeros(self.mel.shape[1], np.int32)
        for m in range(self.mel.shape[1]):
            nz = np.flatnonzero(self.mel[:, m])
            if len(nz):
                lo[m], hi[m] = nz[0], nz[-1] + 1
        return lo, hi


def read_mel(model: onnx.ModelProto) -> MelSpec:
    graph = model.graph
    values = _constants(graph)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    ops = [n.op_type for n in graph.node if n.op_type != "Constant"]
    tail = ["MatMul", "Clip", "Log", "Mul", "Div", "Sub", "ReduceMax", "Sub", "Cast", "Clip"]
    if len(convs) != 2 or ops[-len(tail):] != tail:
        raise _unsupported("the melspectrogram graph is not openWakeWord's")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in convs[0].attribute}
    real, imag = (values[c.input[1]][:, 0, :].astype(np.float32) for c in convs)
    matmul = next(n for n in graph.node if n.op_type == "MatMul")
    clip = next(n for n in graph.node if n.op_type == "Clip" and n.input[0] == matmul.output[0])
    reduce_max = next(n for n in graph.node if n.op_type == "ReduceMax")
    top = next(n for n in graph.node if n.op_type == "Sub" and n.input[0] == reduce_max.output[0])
    log = next(n for n in graph.node if n.op_type == "Log")
    mul = next(n for n in graph.node if n.op_type == "Mul" and n.input[0] == log.output[0])
    div = next(n for n in graph.node if n.op_type == "Div" and n.input[0] == mul.output[0])
    if any(name not in values for name in (clip.input[1], mul.input[1], div.input[1], top.input[1])):
        raise _unsupported("the melspectrogram's dB constants are not constants")
    fft = fft_mel_weights(model)  # (window, mel) only when the filters are window * DFT
    return MelSpec(
        n_fft=real.shape[1],
        hop=int(attrs["strides"][0]),
        filters_re=real,
        filters_im=imag,
        window=None if fft is None else fft[0],
        mel=values[matmul.input[1]].astype(np.float32),
        clip_min=float(values[clip.input[1]]),
        db_mul=float(values[mul.input[1]]),
        db_div=float(values[div.input[1]]),
        top_db=float(values[top.input[1]]),
    )


@dataclass(frozen=True)
class ConvLayer:
    """One conv (+ bias, LeakyRelu, floor) with the max-pool in front of it, as the kernel sees it."""

    cin: int
    cout: int
    kt: int  # time taps (valid)
    kf: int  # frequency taps (same padding)
    tout: int  # output rows per stream
    fout: int  # output frequency bins
    pt: int  # pooling of the stored input: time
    pf: int  # and frequency
    stateful: bool
    weight: np.ndarray  # [kt*kf*cin, cout], k = (kt_i*kf + kf_i)*cin + ci
    bias: np.ndarray | None
    alpha: float | None
    floor: float | None

    @property
    def state_size(self) -> int:
        """Floats of this layer's streaming state per stream ([cin, 2, fout])."""
        return self.cin * CONV_CONTEXT_ROWS * self.fout if self.stateful else 0

    @property
    def out_size(self) -> int:
        return self.tout * self.fout * self.cout

    @property
    def in_size(self) -> int:
        """Floats of the stored (unpooled) input per stream."""
        rows = self.tout if self.stateful else self.tout + self.kt - 1
        return rows * self.pt * self.fout * self.pf * self.cin

    @property
    def flops(self) -> int:
        return 2 * self.tout * self.fout * self.cout * self.kt * self.kf * self.cin


def read_embedding(model: onnx.ModelProto, windowed: bool) -> list[ConvLayer]:
    """The embedding graph's conv stack, for the streaming step (8 rows in, stateful time
    convs) or for openWakeWord's 76-frame window (valid time convs, no state)."""
    graph = model.graph
    values = _constants(graph)
    rows, freq = (WINDOW_FRAMES if windowed else STEP_FRAMES), MEL_BINS
    pending_pool = (1, 1)
    specs: list[dict] = []
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            w = values[node.input[1]].astype(np.float32)  # [cout, cin, kt, kf]
            cout, cin, kt, kf = w.shape
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            if (list(attrs.get("strides", [1, 1])) != [1, 1] or attrs.get("group", 1) != 1
                    or pads != [0, kf // 2, 0, kf // 2] or kt not in (1, 3) or kf not in (1, 3)):
                raise _unsupported("an embedding conv has an unexpected stride, group or padding")
            stateful = kt == 3 and not windowed
            if windowed:
                rows -= kt - 1
            specs.append(dict(
                cin=cin, cout=cout, kt=kt, kf=kf, tout=rows, fout=freq, pt=pending_pool[0],
                pf=pending_pool[1], stateful=stateful,
                weight=np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(kt * kf * cin, cout)),
                bias=values[node.input[2]].astype(np.float32) if len(node.input) > 2 else None,
                alpha=None, floor=None,
            ))
            pending_pool = (1, 1)
        elif node.op_type == "LeakyRelu":
            specs[-1]["alpha"] = float(attrs.get("alpha", 0.01))
        elif node.op_type == "Max":
            specs[-1]["floor"] = float(next(values[i] for i in node.input if i in values).reshape(-1)[0])
        elif node.op_type == "MaxPool":
            kernel, strides = tuple(attrs["kernel_shape"]), tuple(attrs.get("strides", attrs["kernel_shape"]))
            if kernel != strides or any(p for p in attrs.get("pads", [])):
                raise _unsupported("an embedding max-pool overlaps or pads")
            pending_pool = kernel
            rows, freq = rows // kernel[0], freq // kernel[1]
        elif node.op_type not in ("Reshape",):
            raise _unsupported(f"the embedding graph has a {node.op_type} node")
    for spec in specs:
        if (spec["bias"] is None) != (spec["alpha"] is None) or (spec["alpha"] is None) != (spec["floor"] is None):
            raise _unsupported("an embedding conv is not conv + bias + LeakyRelu + Max, nor a plain conv")
    layers = [ConvLayer(**spec) for spec in specs]
    last = layers[-1]
    if (last.tout, last.fout, last.cout) != (1, 1, EMBEDDING_DIM) or layers[0].cin != 1:
        raise _unsupported("the embedding graph does not end in one 96-d vector per window")
    return layers


@dataclass(frozen=True)
class Tiling:
    rm: int  # rows per work-item
    rn: int  # channels per work-item
    mt: int  # work-items along rows
    nt: int  # work-items along channels
    kc: int  # K elements per local-memory chunk

    @property
    def rows(self) -> int:
        return self.rm * self.mt

    @property
    def work_group(self) -> int:
        return self.mt * self.nt


def latency_tiling(layer: ConvLayer, max_work_group: int, local_mem: int, mt: int = 8, rn: int = 3) -> Tiling | None:
    """Small tiles for small batches: 1 row x `rn` channels per work-item and K-chunks as deep
    as local memory allows, so a layer costs a few memory round trips (batch 1 is latency-bound)."""
    nt = layer.cout // rn if layer.cout % rn == 0 else layer.cout
    while mt > 1 and mt * nt > max_work_group:
        mt //= 2
    if mt * nt > max_work_group:
        return None
    budget = local_mem - 1024
    ktot = layer.kt * layer.kf * layer.cin
    chunks = [kc for kc in range(layer.cin, 3, -1) if layer.cin % kc == 0 and kc % 4 == 0]
    chunks += [kc for kc in range(ktot, 0, -1) if ktot % kc == 0]  # scalar gather
    kc = next((kc for kc in chunks if 4 * kc * (mt + 1 + layer.cout) <= budget), None)
    return None if kc is None else Tiling(1, layer.cout // nt, mt, nt, kc)


def choose_tiling(layer: ConvLayer, max_work_group: int, local_mem: int, rm: int = 4, mt: int = 32,
                  latency: bool = False, rn: int = 3) -> Tiling:
    """Tiles that fit the device: work-group <= its limit, local tiles <= half its local memory."""
    if latency:
        tiling = latency_tiling(layer, max_work_group, local_mem, mt=min(mt, 8), rn=rn)
        if tiling is not None:
            return tiling
    nt = next(n for n in (8, 6, 4, 3, 2, 1) if layer.cout % n == 0)
    mt = max(1, min(mt, max_work_group // nt))
    ktot = layer.kt * layer.kf * layer.cin
    fits = lambda kc: 4 * kc * (rm * mt + 1 + layer.cout) <= local_mem // 2  # noqa: E731
    for kc in (32, 16, 8, 4):  # the kernel's vector gather: 4 | KC | CIN
        if layer.cin % kc == 0 and fits(kc):
            return Tiling(rm, layer.cout // nt, mt, nt, kc)
    for kc in (24, 16, 12, 9, 8, 6, 4, 3, 2, 1):
        if ktot % kc == 0 and fits(kc):
            return Tiling(rm, layer.cout // nt, mt, nt, kc)
    return Tiling(1, layer.cout // nt, 1, nt, 1)


def _float(value: float) -> str:
    return f"{np.float32(value)!r}".replace("np.float32(", "").rstrip(")") + "f"


def conv_program_source(layers: list[ConvLayer], tilings: list[Tiling], prefix: str,
                        half_storage: bool, half_math: bool) -> str:
    """One program with one kernel per layer, `{prefix}{index}`."""
    body = kernel_source("conv.cl")
    parts = ["#pragma OPENCL EXTENSION cl_khr_fp16 : enable\n"] if half_math else []
    for index, (layer, tiling) in enumerate(zip(layers, tilings)):
        defines = dict(
            KNAME=f"{prefix}{index}", CIN=layer.cin, COUT=layer.cout, KT=layer.kt, KF=layer.kf,
            TOUT=layer.tout, FOUT=layer.fout, PT=layer.pt, PF=layer.pf, STATEFUL=int(layer.stateful),
            ACT=int(layer.alpha is not None), ALPHA=_float(layer.alpha or 0.0), FLOOR=_float(layer.floor or 0.0),
            X_HALF=int(half_storage and index > 0), Y_HALF=int(half_storage and index < len(layers) - 1),
            W_HALF=int(half_storage), HALF_MATH=int(half_math),
            RM=tiling.rm, RN=tiling.rn, MT=tiling.mt, NT=tiling.nt, KC=tiling.kc,
        )
        parts.append("".join(f"#define {k} {v}\n" for k, v in defines.items()))
        parts.append(body)
        parts.append("".join(f"#undef {k}\n" for k in defines))
    return "\n".join(parts)


def mel_program_defines(spec: MelSpec, work_group: int, pairs: int) -> dict[str, str | int]:
    return dict(
        WG=work_group, PAIRS=pairs, N_FFT=spec.n_fft, LOG2_N=int(np.log2(spec.n_fft)), HOP=spec.hop,
        N_BINS=spec.bins, N_MELS=spec.mel.shape[1], CLIP_MIN=_float(spec.clip_min),
        TOP_DB=_float(spec.top_db), DB_MUL=_float(spec.db_mul), DB_DIV=_float(spec.db_div),
        MEL_FFT=int(spec.window is not None and spec.n_fft & (spec.n_fft - 1) == 0),
    )


def mel_local_bytes(spec: MelSpec, work_group: int, pairs: int) -> int:
    """Local memory of one mel work-group: float-float FFT frames, power rows, the reduction."""
    return pairs * spec.n_fft * 16 + 2 * pairs * spec.bins * 4 + work_group * 4


def twiddles(n_fft: int) -> np.ndarray:
    """exp(-2 pi i j / n) for j < n/2 in float-float, [n/2, 4] as (re hi, re lo, im hi, im lo);
    computed in float64, whose 53 bits cover float-float's 48."""
    angle = -2 * np.pi * np.arange(n_fft // 2) / n_fft
    parts = []
    for value in (np.cos(angle), np.sin(angle)):
        hi = value.astype(np.float32)
        parts += [hi, (value - hi).astype(np.float32)]
    return np.stack(parts, axis=1)
