"""Convert Home Assistant's okay_nabu head (.tflite only) to ONNX once, op for op, and verify it.

Run from the repository root: `python scripts/convert_okay_nabu.py`; exits non-zero if the ONNX
file differs from the .tflite run by ai-edge-litert by more than 1e-5 anywhere.
"""

from __future__ import annotations

import hashlib
import sys
import wave
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SOURCE = ROOT / "scripts" / "sources" / "okay_nabu_v0.1.tflite"
SOURCE_SHA256 = "2982cecde4ee81cc7a2573d2602a7d54f0669425c94a7b64af77e0ff92b03a18"
TARGET = ROOT / "wyoming_oww_rk3588" / "models" / "builtin" / "okay_nabu_v0.1.onnx"
# The shared clips; tests/audio holds copies of the same files for checkouts without them.
SHARED_AUDIO = Path("/work/shared/audio")
AUDIO_DIR = SHARED_AUDIO if SHARED_AUDIO.is_dir() else ROOT / "tests" / "audio"
TOLERANCE = 1e-5
# The head's input name before onnx-tf/TFLite renamed it (its tflite name still says so);
# the other built-in heads use the same one.
INPUT_NAME = "onnx::Flatten_0"
OUTPUT_NAME = "score"


def _tflite_model(data: bytes):
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return model, names


def convert(data: bytes) -> onnx.ModelProto:
    """Translate every TFLite op to its ONNX equivalent; weights are copied bit for bit."""
    model, op_names = _tflite_model(data)
    (graph,) = model.subgraphs
    tensors = graph.tensors

    def name(index: int) -> str:
        if index == graph.inputs[0]:
            return INPUT_NAME
        if index == graph.outputs[0]:
            return OUTPUT_NAME
        return tensors[index].name.decode()

    def const(index: int) -> np.ndarray | None:
        raw = model.buffers[tensors[index].buffer].data
        if raw is None or len(raw) == 0:
            return None
        dtype = {0: np.float32, 2: np.int32}[tensors[index].type]
        return np.frombuffer(bytes(raw), dtype).reshape(tensors[index].shape)

    nodes: list[onnx.NodeProto] = []
    initializers: dict[str, np.ndarray] = {}

    def operand(index: int) -> str:
        array = const(index)
        if array is not None and array.dtype == np.float32:
            initializers[name(index)] = array
        return name(index)

    def emit(op_type: str, inputs: list[int], out: str, fused: int = 0, **attrs) -> None:
        if fused not in (0, 1):  # 1 is RELU, the only fused activation this head uses
            raise ValueError(f"unsupported fused activation {fused}")
        # TFLite fuses ReLU into ADD/FULLY_CONNECTED; ONNX needs it as its own node.
        pre = out + "_pre_relu" if fused else out
        nodes.append(helper.make_node(op_type, [operand(i) for i in inputs], [pre], **attrs))
        if fused:
            nodes.append(helper.make_node("Relu", [pre], [out]))

    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        kind = op_names[max(code.builtinCode, code.deprecatedBuiltinCode)]
        ins, out = [int(i) for i in op.inputs], name(int(op.outputs[0]))
        fused = getattr(op.builtinOptions, "fusedActivationFunction", 0)
        if kind == "RESHAPE":
            # [-1, 1536]: the -1 keeps the batch dimension free.
            initializers[name(ins[1])] = const(ins[1]).astype(np.int64)
            nodes.append(helper.make_node("Reshape", [operand(ins[0]), name(ins[1])], [out]))
        elif kind == "FULLY_CONNECTED":
            if op.builtinOptions.keepNumDims or len(tensors[ins[0]].shape) != 2:
                raise ValueError("FULLY_CONNECTED on a rank-2 input only")
            # TFLite weights are [out, in]: y = x W^T + b, which is Gemm with transB.
            emit("Gemm", ins, out, fused, transB=1)
        elif kind == "MEAN":
            axes = [int(a) for a in np.atleast_1d(const(ins[1]))]
            emit("ReduceMean", ins[:1], out, axes=axes, keepdims=int(op.builtinOptions.keepDims))
        elif kind in ("ADD", "SUB", "MUL"):
            emit(kind.title(), ins, out, fused)
        elif kind == "RSQRT":
            nodes.append(helper.make_node("Sqrt", [operand(ins[0])], [out + "_sqrt"]))
            nodes.append(helper.make_node("Reciprocal", [out + "_sqrt"], [out]))
        elif kind == "LOGISTIC":
            nodes.append(helper.make_node("Sigmoid", [operand(ins[0])], [out]))
        else:
            raise ValueError(f"unsupported TFLite op {kind}")

    shape_in = [int(d) for d in tensors[graph.inputs[0]].shape]
    shape_out = [int(d) for d in tensors[graph.outputs[0]].shape]
    onnx_graph = helper.make_graph(
        nodes,
        "okay_nabu_v0.1",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, shape_in)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, shape_out)],
        [numpy_helper.from_array(np.ascontiguousarray(a), n) for n, a in initializers.items()],
    )
    result = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name="wyoming_oww_rk3588 scripts/convert_okay_nabu.py",
        doc_string=f"okay_nabu_v0.1 from wyoming-openwakeword 1.8.2 ok_nabu_v0.1.tflite (sha256 {SOURCE_SHA256})",
    )
    result.ir_version = 7  # as the other built-in heads; opset 13 needs no newer
    onnx.checker.check_model(result, full_check=True)
    return result


def tflite_scores(windows: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(SOURCE))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    scores = []
    for window in windows:  # batch 1: the file's own shape, no resizing
        interpreter.set_tensor(inp["index"], window[None].astype(np.float32))
        interpreter.invoke()
        scores.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.array(scores)


def clip_windows(window: int) -> np.ndarray:
    """Windows of real embeddings of every shared clip (openWakeWord's windowed embedding)."""
    from wyoming_oww_rk3588.backends.cpu import CpuFeatures
    from wyoming_oww_rk3588.features import MEL_FRAMES_PER_STEP, WINDOW_FRAMES, scale_mel

    features = CpuFeatures()
    windows = []
    for path in sorted(AUDIO_DIR.glob("*.wav")):
        with wave.open(str(path)) as handle:
            audio = np.frombuffer(handle.readframes(handle.getnframes()), np.int16)
        # Silence around the clip, so windows slide over its start and its end.
        audio = np.concatenate([np.zeros(32000, np.int16), audio, np.zeros(32000, np.int16)])
        mel = scale_mel(features.melspectrogram(audio[None].astype(np.float32)))[0]
        starts = range(0, len(mel) - WINDOW_FRAMES + 1, MEL_FRAMES_PER_STEP)
        embeddings = features.embed_windows(np.stack([mel[s : s + WINDOW_FRAMES] for s in starts]))
        windows += [embeddings[i : i + window] for i in range(len(embeddings) - window + 1)]
    if not windows:
        raise SystemExit(f"no clips in {AUDIO_DIR}")
    return np.stack(windows).astype(np.float32)


def onnx_scores(model: onnx.ModelProto, windows: np.ndarray, batched: bool) -> np.ndarray:
    from wyoming_oww_rk3588 import graphs
    from wyoming_oww_rk3588.backends.cpu import make_session

    if batched:
        session = make_session(graphs.batched_head(model))
        return session.run(None, {INPUT_NAME: windows})[0]
    session = make_session(model)
    return np.concatenate([session.run(None, {INPUT_NAME: w[None]})[0] for w in windows])


def main() -> int:
    data = SOURCE.read_bytes()
    if hashlib.sha256(data).hexdigest() != SOURCE_SHA256:
        print(f"{SOURCE} is not the expected file (sha256 mismatch)")
        return 1
    model = convert(data)
    print("ops:", " ".join(n.op_type for n in model.graph.node))
    window = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value

    rng = np.random.default_rng(0)
    cases = {
        # Real embeddings spread about N(2, 16^2); unit-scale ones probe other LayerNorm ranges.
        "random": np.concatenate([rng.normal(2, 16, (500, window, 96)), rng.normal(0, 1, (500, window, 96))]),
        "real": clip_windows(window),
    }
    ok = True
    for label, windows in cases.items():
        windows = windows.astype(np.float32)
        reference = tflite_scores(windows)
        single = onnx_scores(model, windows, batched=False)
        batched = onnx_scores(model, windows, batched=True)
        diff = float(np.abs(single - reference).max())
        batch_diff = float(np.abs(batched - single).max())
        print(f"{label}: {len(windows)} windows, scores {reference.min():.3g}..{reference.max():.3g}, "
              f"max |onnx - tflite| = {diff:.3g}, max |batched - per-row| = {batch_diff:.3g}")
        ok &= diff <= TOLERANCE and batch_diff <= TOLERANCE
    if not ok:
        print(f"FAILED: difference above {TOLERANCE}; {TARGET.name} not written")
        return 1
    TARGET.write_bytes(model.SerializeToString())
    print(f"wrote {TARGET.relative_to(ROOT)} sha256 {hashlib.sha256(TARGET.read_bytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
