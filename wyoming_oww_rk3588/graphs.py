"""ONNX graph rewrites that make openWakeWord's models batchable and streamable.

The weights stay those of the shipped files; only the plumbing around them changes:
- mel: the final `Clip(x, ReduceMax(x) - 80, inf)` takes its maximum per batch row,
  so many streams share one call without changing any stream's numbers;
- embedding: each time-kernel-3 conv gets a 2-row state input/output (streaming form),
  so one new embedding per 80 ms step costs ~1/8 of a 76-frame window;
- heads: a symbolic batch dimension; hey_jarvis's `If` verifier becomes a `Where`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Rows of context a time-kernel-3 valid convolution needs from the previous step.
CONV_CONTEXT_ROWS = 2


def _set_batch_dim(value_info: onnx.ValueInfoProto, name: str = "batch") -> None:
    dim0 = value_info.type.tensor_type.shape.dim[0]
    dim0.Clear()
    dim0.dim_param = name


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def batched_mel(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return the mel graph with its top-80-dB clip computed per batch row.

    Input `input` [B, samples] float32 -> output [B, 1, frames, 32] (before x/10 + 2).
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    nodes = list(graph.node)
    reduce_max = next(n for n in nodes if n.op_type == "ReduceMax")
    final_clip = next(n for n in nodes if n.op_type == "Clip" and n.output[0] == graph.output[0].name)
    # ReduceMax over everything but the batch axis, kept as [B, 1, 1, 1] so Sub/Max broadcast.
    for attr in list(reduce_max.attribute):
        reduce_max.attribute.remove(attr)
    reduce_max.attribute.extend(
        [helper.make_attribute("keepdims", 1), helper.make_attribute("axes", [1, 2, 3])]
    )
    # Clip's min must be a scalar; Max(x, floor) is the same function with a per-row floor.
    index = nodes.index(final_clip)
    graph.node.remove(final_clip)
    graph.node.insert(
        index, helper.make_node("Max", [final_clip.input[0], final_clip.input[1]], [final_clip.output[0]])
    )
    del graph.output[:]
    graph.output.extend(
        [helper.make_tensor_value_info(final_clip.output[0], TensorProto.FLOAT, ["batch", 1, "frames", 32])]
    )
    _drop_unweighted_bins(graph)
    used = {i for n in graph.node for i in n.input}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return model


def _drop_unweighted_bins(graph: onnx.GraphProto) -> None:
    """Keep only the STFT bins that the mel filterbank weighs (120 of 257 for openWakeWord's:
    nothing above ~3.8 kHz): the two STFT convs then do less than half their work.

    The numbers stay bit for bit: each kept bin is the same 512-term dot product (onnxruntime's
    conv accumulates along the kernel, whatever the number of filters), and in the filterbank
    MatMul a dropped bin only ever added 0 * power = +0 to a sum, which changes nothing."""
    inits = {i.name: i for i in graph.initializer}
    matmul = next(n for n in graph.node if n.op_type == "MatMul")
    convs = [n for n in graph.node if n.op_type == "Conv"]
    weights = numpy_helper.to_array(inits[matmul.input[1]])
    kept = np.flatnonzero(np.any(weights != 0, axis=1))
    filters = [numpy_helper.to_array(inits[c.input[1]]) for c in convs]
    if len(kept) == len(weights) or any(f.shape[0] != len(weights) for f in filters) or len(convs) != 2:
        return
    for conv, array in zip(convs, filters):
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array[kept]), conv.input[1]))
    inits[matmul.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(weights[kept]), matmul.input[1]))


@dataclass(frozen=True)
class StreamingLayout:
    """Shapes of the streaming embedding graph's state tensors (one per time-kernel-3 conv).

    `state_shapes[i]` is [channels, 2, freq] for one stream (NCHW without N).
    """

    state_names: tuple[str, ...]
    state_shapes: tuple[tuple[int, int, int], ...]
    frames_per_step: int = 8


def streaming_embedding(model: onnx.ModelProto) -> tuple[onnx.ModelProto, StreamingLayout]:
    """Rewrite the 76-frame embedding graph into a stateful streaming step.

    Inputs: `mel` [B, 8K, 32, 1] (K steps' new mel frames, NHWC like the original; K = 1
    live), then one state per time-kernel-3 conv, `state_i` [B, C_i, 2, F_i].
    Outputs: `embeddings` [B, K, 96], then `state_i_out` (the conv input's last 2 rows).
    K steps in one call give, bit for bit, what K calls of one step give, for less work per
    step (onnxruntime's convs run longer rows): the engine uses that to catch up a backlog.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    nodes = list(graph.node)
    first, last = nodes[0], nodes[-1]
    assert first.op_type == "Reshape" and last.op_type == "Reshape", "unexpected embedding graph"

    new_nodes: list[onnx.NodeProto] = [
        # NHWC -> NCHW; the original Reshape does the same for a 1-channel input.
        helper.make_node("Transpose", ["mel"], [first.output[0]], perm=[0, 3, 1, 2])
    ]
    state_inputs, state_outputs, names, shapes = [], [], [], []
    # Frequency size entering each layer, tracked to size the states.
    freq = 32
    body = _clip_before_leaky_relu(nodes[1:-1], inits, graph)
    for node in body:
        if node.op_type == "MaxPool":
            kernel = next(a.ints for a in node.attribute if a.name == "kernel_shape")
            freq //= kernel[1]
        if node.op_type == "Conv":
            kernel = next(a.ints for a in node.attribute if a.name == "kernel_shape")
            if kernel[0] == 3:
                i = len(names)
                cin = inits[node.input[1]].shape[1]
                name = f"state_{i}"
                joined = f"{name}_joined"
                new_nodes.append(helper.make_node("Concat", [name, node.input[0]], [joined], axis=2))
                starts, ends, axes = f"{name}_s", f"{name}_e", f"{name}_a"
                new_nodes += [
                    _const(starts, np.array([-CONV_CONTEXT_ROWS], np.int64)),
                    _const(ends, np.array([np.iinfo(np.int64).max], np.int64)),
                    _const(axes, np.array([2], np.int64)),
                    helper.make_node("Slice", [joined, starts, ends, axes], [f"{name}_out"]),
                ]
                conv = onnx.NodeProto()
                conv.CopyFrom(node)
                conv.input[0] = joined
                new_nodes.append(conv)
                state_inputs.append(
                    helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", cin, 2, freq])
                )
                state_outputs.append(
                    helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["batch", cin, 2, freq])
                )
                names.append(name)
                shapes.append((int(cin), CONV_CONTEXT_ROWS, freq))
                continue
        new_nodes.append(node)
    # [B, 96, K, 1] -> [B, K, 96, 1] -> [B, K, 96]
    new_nodes += [
        helper.make_node("Transpose", [last.input[0]], ["embeddings_nk"], perm=[0, 2, 1, 3]),
        _const("embeddings_shape", np.array([0, -1, 96], np.int64)),
        helper.make_node("Reshape", ["embeddings_nk", "embeddings_shape"], ["embeddings"]),
    ]

    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.input[:]
    graph.input.extend(
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", "frames", 32, 1])] + state_inputs
    )
    del graph.output[:]
    graph.output.extend(
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", "steps", 96])] + state_outputs
    )
    # Drop the now unused Reshape shape constants.
    used = {i for n in graph.node for i in n.input}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return model, StreamingLayout(tuple(names), tuple(shapes))


def _clip_before_leaky_relu(nodes: list, inits: dict, graph) -> list:
    """Rewrite each `Max(LeakyRelu(x, a), c)` as `LeakyRelu(Clip(x, c/a), a)` where that is
    the same function in float32 (a > 0 > c and a * (c/a) rounds to c exactly): onnxruntime
    then fuses the Clip into the conv before it instead of running a separate Max pass."""
    out, i = [], 0
    while i < len(nodes):
        node = nodes[i]
        after = nodes[i + 1] if i + 1 < len(nodes) else None
        if (node.op_type == "LeakyRelu" and after is not None and after.op_type == "Max"
                and after.input[0] == node.output[0] and after.input[1] in inits):
            alpha = np.float32(next((a.f for a in node.attribute if a.name == "alpha"), 0.01))
            floor = inits[after.input[1]]
            if floor.size == 1 and alpha > 0 > floor.item():
                low = np.float32(floor.item() / alpha)
                if np.float32(alpha * low) == np.float32(floor.item()):
                    name = f"{node.output[0]}_clip"
                    graph.initializer.append(numpy_helper.from_array(np.array(low, np.float32), f"{name}_min"))
                    out += [helper.make_node("Clip", [node.input[0], f"{name}_min"], [name]),
                            helper.make_node("LeakyRelu", [name], [after.output[0]], alpha=float(alpha))]
                    i += 2
                    continue
        out.append(node)
        i += 1
    return out


def batched_head(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give a head a symbolic batch dimension; turn an `If` verifier into a per-row `Where`."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    _set_batch_dim(graph.input[0])
    _set_batch_dim(graph.output[0])
    for node in list(graph.node):
        if node.op_type != "If":
            continue
        branches = {a.name: a.g for a in node.attribute}
        then_g, else_g = branches["then_branch"], branches["else_branch"]
        index = list(graph.node).index(node)
        # The condition was Cast(GreaterOrEqual(...)) to bool; Where takes it as is.
        inlined = list(then_g.node) + list(else_g.node)
        graph.initializer.extend(then_g.initializer)
        graph.initializer.extend(else_g.initializer)
        where = helper.make_node(
            "Where", [node.input[0], then_g.output[0].name, else_g.output[0].name], [node.output[0]]
        )
        graph.node.remove(node)
        for offset, extra in enumerate(inlined + [where]):
            graph.node.insert(index + offset, extra)
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return model


#: Ops whose only change between default-domain opsets 13 and 14 is element types they accept
#: (onnx's Changelog; Reshape-14's new `allowzero` defaults to the old behaviour): a head made
#: at opset 13 computes the same at 14 when it uses nothing else that changed.
_SAME_AT_14 = frozenset({"Add", "Sub", "Mul", "Div", "Relu", "Identity", "Reshape"})


def same_at_opset(model: onnx.ModelProto, target: int) -> bool:
    """Whether every op of `model` (subgraphs too) means the same at default-domain opset
    `target` as at its own: the same schema version, or a change that only added types."""
    from onnx import defs

    own = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    if set(own) != {"ai.onnx"} or own["ai.onnx"] > target:
        return False
    version = own["ai.onnx"]

    def nodes(graph):
        for node in graph.node:
            yield node
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    yield from nodes(attribute.g)

    for node in nodes(model.graph):
        if node.domain not in ("", "ai.onnx"):
            return False
        try:
            same = defs.get_schema(node.op_type, target).since_version == defs.get_schema(node.op_type, version).since_version
        except Exception:  # noqa: BLE001 - an op onnx does not know: leave the head as it is
            return False
        if not same and not (version == 13 and target == 14 and node.op_type in _SAME_AT_14
                             and not any(a.name == "allowzero" and a.i for a in node.attribute)):
            return False
    return True


def merged_heads(heads: list[onnx.ModelProto], opset: int | None = None) -> onnx.ModelProto:
    """Several batched heads as one graph: head i's input and output get the prefix `h{i}_`.

    One onnxruntime call then runs them all: each head's nodes, weights and shapes stay its
    own, so every score is what its own session gives, for one call's overhead instead of one
    per head (at one or two satellites that overhead, on a cold cache, is most of the heads'
    cost). The heads must share their opset imports, or be `same_at_opset(head, opset)` for the
    `opset` given (the caller groups them)."""
    from onnx import compose

    prefixed = [compose.add_prefix(head, f"h{i}_") for i, head in enumerate(heads)]
    graph = helper.make_graph(
        [n for m in prefixed for n in m.graph.node], "merged_heads",
        [i for m in prefixed for i in m.graph.input], [o for m in prefixed for o in m.graph.output],
        [t for m in prefixed for t in m.graph.initializer],
    )
    imports = [helper.make_opsetid("", opset)] if opset is not None else list(heads[0].opset_import)
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = max(h.ir_version for h in heads)
    onnx.checker.check_model(model)
    return model


def fused_features(mel: onnx.ModelProto, streaming: onnx.ModelProto) -> onnx.ModelProto:
    """One graph for one 80 ms step: audio [B, 1760] and the streaming states in, the
    embedding and the next states out. `batched_mel`, openWakeWord's `x/10 + 2`, and
    `streaming_embedding`, node for node: the same numbers as the three run one after the
    other, for one onnxruntime call (at one satellite a call's fixed cost, on a cold cache,
    is much of the step's)."""
    from onnx import compose

    mel_out = mel.graph.output[0].name
    adapter = helper.make_graph(
        [
            _const("ten", np.array(10, np.float32)),
            _const("two", np.array(2, np.float32)),
            helper.make_node("Div", [mel_out, "ten"], ["scaled_div"]),
            helper.make_node("Add", ["scaled_div", "two"], ["scaled"]),
            helper.make_node("Transpose", ["scaled"], ["mel"], perm=[0, 2, 3, 1]),  # [B,1,F,32] -> [B,F,32,1]
        ],
        "scale_mel",
        [helper.make_tensor_value_info(mel_out, onnx.TensorProto.FLOAT, ["batch", 1, "frames", 32])],
        [helper.make_tensor_value_info("mel", onnx.TensorProto.FLOAT, ["batch", "frames", 32, 1])],
    )
    adapter_model = helper.make_model(adapter, opset_imports=list(mel.opset_import))
    adapter_model.ir_version = mel.ir_version
    scaled = compose.merge_models(mel, adapter_model, io_map=[(mel_out, mel_out)], prefix1="mel_", prefix2="scale_")
    embedding_input = streaming.graph.input[0].name
    imports = {o.domain: o.version for o in streaming.opset_import}
    del scaled.opset_import[:]
    scaled.opset_import.extend(helper.make_opsetid(d, v) for d, v in imports.items())
    scaled.ir_version = streaming.ir_version
    fused = compose.merge_models(scaled, streaming, io_map=[("scale_mel", embedding_input)],
                                 inputs=None)
    onnx.checker.check_model(fused)
    return fused
