"""Heads -> cached fp16 .rknn files for the RK3588 with a fixed batch: prepared here, built by
rknn-toolkit2 in its own process. One lock per cache key, taken in key order (no deadlock), and
the cache is re-read under the lock, so two converters never build the same file."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .. import graphs
from ..models.registry import ModelInfo
from . import cache, check
from .toolkit import Toolkit

_LOGGER = logging.getLogger(__name__)

#: The converted graph's output name. Heads like timer name their output with a JSON string
#: of class names, which the simulator cannot take; labels come from the registry anyway.
OUTPUT_NAME = "scores"
#: Check rows kept beside a converted file for the check on load (with the zero row: one batch of 32).
VERIFY_ROWS = cache.DEFAULT_BATCH - 1
#: Heads take 3-D input [batch, window, 96]. rknn-toolkit-lite2's `inference` documents
#: data_format for 4-D inputs only (None by default), and one lite2 release raised KeyError on
#: "nchw" for a 3-D input: so none is passed, here (the simulator) and on the board alike.
DATA_FORMAT = None


def prepare_onnx(model: ModelInfo, batch: int) -> onnx.ModelProto:
    """The head with openWakeWord's batch rewrite (`If` verifier -> per-row `Where`), the batch
    fixed at `batch` (the NPU runs static shapes) and its output renamed to OUTPUT_NAME."""
    prepared = graphs.batched_head(onnx.load(str(model.path)))
    graph = prepared.graph
    for value in (graph.input[0], graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    old = graph.output[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = OUTPUT_NAME
    graph.output[0].name = OUTPUT_NAME
    _gemm_as_matmul(graph)
    onnx.checker.check_model(prepared)
    return prepared


def _gemm_as_matmul(graph: onnx.GraphProto) -> None:
    """Gemm with constant weights -> MatMul (weights transposed here if transB) + Add.
    rknn-toolkit2 2.3.2 cannot build a Gemm whose output feeds a LayerNorm pattern (its constant
    folding fails on okay_nabu: KeyError 'MatMul;add_rs#1'), and builds MatMul + Add; the same
    products and sums, so 2.5.0 gets the same graph and every set is checked against onnxruntime."""
    inits = {init.name: init for init in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        simple = (node.op_type == "Gemm" and len(node.input) == 3 and node.input[1] in inits
                  and node.input[2] in inits and not attrs.get("transA")
                  and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0)
        if not simple:
            nodes.append(node)
            continue
        weights = node.input[1]
        if attrs.get("transB"):
            array = onnx.numpy_helper.to_array(inits[weights]).T.copy()
            inits[weights].CopyFrom(onnx.numpy_helper.from_array(array, weights))
        product = f"{node.output[0]}_matmul"
        nodes += [onnx.helper.make_node("MatMul", [node.input[0], weights], [product]),
                  onnx.helper.make_node("Add", [product, node.input[2]], [node.output[0]])]
    del graph.node[:]
    graph.node.extend(nodes)


def make_entry(model: ModelInfo, toolkit: str, platform: str, batch: int, **fields) -> dict:
    """A cache entry's fields (the runtime reads batch, window, n_outputs and data_format)."""
    return dict(
        model=model.name, stem=model.stem, source_sha256=model.sha256, source_format=model.format,
        toolkit=toolkit, platform=platform, batch=batch, recipe=cache.RECIPE,
        window=model.window, n_outputs=model.n_outputs, output_name=OUTPUT_NAME,
        data_format=DATA_FORMAT, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields,
    )


@dataclass
class Converted:
    """What happened to one head: `action` is converted, cached or failed."""

    model: ModelInfo
    entry: dict
    action: str
    #: Simulator scores for the check inputs (rows as given), when a check was asked for.
    scores: np.ndarray | None = None
    check_error: str | None = None


def _padded(windows: np.ndarray, batch: int) -> np.ndarray:
    rows = -(-len(windows) // batch) * batch
    out = np.zeros((rows, *windows.shape[1:]), np.float32)
    out[: len(windows)] = windows
    return out


class Converter:
    def __init__(self, out_dir: Path, toolkit: Toolkit, batch: int = cache.DEFAULT_BATCH,
                 platform: str = cache.PLATFORM) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, not {batch}")
        self.out_dir = Path(out_dir)
        self.toolkit = toolkit
        self.batch = batch
        self.platform = platform

    def _entry(self, model: ModelInfo, toolkit: str, **fields) -> dict:
        return make_entry(model, toolkit, self.platform, self.batch, **fields)

    def _spec(self, model: ModelInfo, workdir: Path) -> dict:
        if model.format == "onnx":
            source = workdir / f"{model.name}.onnx"
            onnx.save(prepare_onnx(model, self.batch), str(source))
        else:
            source = model.path  # the toolkit batches a .tflite itself (rknn_batch_size)
        return {"name": model.name, "format": model.format, "source": str(source)}

    def convert(self, models: list[ModelInfo], check_inputs: dict[str, np.ndarray] | None = None,
                force: bool = False) -> list[Converted]:
        """Convert (or find cached) every model; with `check_inputs` ({name: windows [R, W, 96]}),
        also run those rows through the simulator on a build made in the same process."""
        check_inputs = check_inputs or {}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="rknn-convert-") as tmp:
            workdir = Path(tmp)
            version = self.toolkit.version(workdir)
            keys = {m.name: cache.cache_key(m.sha256, version, self.platform, self.batch) for m in models}
            paths = {m.name: cache.entry_paths(self.out_dir, m, keys[m.name])[0] for m in models}
            with contextlib.ExitStack() as locks:
                for model in sorted(models, key=lambda m: keys[m.name]):
                    locks.enter_context(cache.locked(paths[model.name].with_suffix(".lock"), model.name))
                return self._convert_locked(models, paths, version, check_inputs, force, workdir)

    def _convert_locked(self, models, paths, version, check_inputs, force, workdir) -> list[Converted]:
        done: dict[str, Converted] = {}
        specs = []
        for model in models:
            json_path = paths[model.name]
            entry = cache.read_entry(json_path)
            # Failed entries are retried: the cause (say, tensorflow missing for .tflite) may be gone.
            valid = (not force and entry is not None and entry.get("status") == "ok"
                     and cache.rknn_problem(json_path, entry) is None)
            if valid:
                done[model.name] = Converted(model, entry, "cached")
                if model.name not in check_inputs:
                    continue
            try:
                spec = self._spec(model, workdir)
            except Exception as err:  # noqa: BLE001 - a head our rewrite cannot take
                reason = f"graph preparation failed: {err}"
                done[model.name] = self._failed(model, json_path, version, reason)
                continue
            if not valid:
                spec["export"] = str(workdir / f"{model.name}.rknn")
            if model.name in check_inputs:
                windows = _padded(np.asarray(check_inputs[model.name], np.float32), self.batch)
                spec["inputs"] = str(workdir / f"{model.name}-inputs.npz")
                spec["outputs"] = str(workdir / f"{model.name}-outputs.npz")
                np.savez(spec["inputs"], windows=windows)
            specs.append(spec)
        job = {"command": "build", "platform": self.platform, "batch": self.batch,
               "data_format": DATA_FORMAT, "models": specs}
        results = self.toolkit.run(job, workdir)["models"] if specs else {}
        for spec in specs:
            model = next(m for m in models if m.name == spec["name"])
            outcome = results[model.name]
            if "export" in spec:
                if outcome["status"] == "ok":
                    entry = self._entry(model, version, status="ok", reason=None)
                    if "inputs" in spec:  # simulated the very build exported: the board checks against it
                        entry.update(self._write_verification(model, paths[model.name], check_inputs[model.name],
                                                              np.load(spec["outputs"])["scores"]))
                    entry = cache.write_entry(paths[model.name], entry, Path(spec["export"]).read_bytes())
                    done[model.name] = Converted(model, entry, "converted")
                    _LOGGER.info("%s: converted for %s with rknn-toolkit2 %s", model.name, self.platform, version)
                else:
                    done[model.name] = self._failed(model, paths[model.name], version, outcome["reason"])
            if "inputs" in spec and model.name in done:
                if outcome["status"] == "ok":
                    rows = len(check_inputs[model.name])
                    done[model.name].scores = np.load(spec["outputs"])["scores"][:rows]
                else:
                    done[model.name].check_error = outcome["reason"]
        return [done[m.name] for m in models]

    @staticmethod
    def _write_verification(model: ModelInfo, json_path: Path, windows: np.ndarray, scores: np.ndarray) -> dict:
        """Save a batch of check rows and this build's simulator scores beside the entry (the
        backend runs the file on them when it loads it on the board); the entry's fields for it."""
        windows = np.asarray(windows, np.float32)
        keep = check.verification_rows(model, scores[: len(windows) - 1], VERIFY_ROWS)
        rows = np.concatenate([keep, [len(windows) - 1]])  # and the zero window, last of the check rows
        path = json_path.with_suffix(".verify.npz")
        buffer = io.BytesIO()
        np.savez_compressed(buffer, windows=windows[rows], scores=np.asarray(scores[rows], np.float32))
        cache.write_atomic(path, buffer.getvalue())
        return {"verify_file": path.name, "verify_sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}

    def _failed(self, model: ModelInfo, json_path: Path, version: str, reason: str) -> Converted:
        _LOGGER.warning("%s: rknn-toolkit2 %s cannot convert it (%s); it will run on the CPU",
                        model.name, version, reason)
        entry = cache.write_entry(json_path, self._entry(model, version, status="failed", reason=reason))
        return Converted(model, entry, "failed")


#: The file that runs several heads in one NPU call (`merged_heads.<key>.rknn`).
MERGED_NAME = "merged_heads"


def prepare_merged(models: list[ModelInfo], batch: int) -> onnx.ModelProto:
    """Every head prepared as for its own file, then side by side in one graph (graphs.merged_heads,
    as the CPU path merges them): input i and output i (`h{i}_scores`) are models[i]'s, each fixed
    at `batch` rows, so one NPU call scores them all. The heads must mean the same at the newest
    opset among them (the built-ins do)."""
    heads = [prepare_onnx(model, batch) for model in models]
    newest = max(o.version for h in heads for o in h.opset_import if o.domain in ("", "ai.onnx"))
    if not all(graphs.same_at_opset(h, newest) for h in heads):
        raise ValueError(f"the heads do not all mean the same at opset {newest}; convert them one by one")
    return graphs.merged_heads(heads, opset=newest)


def merged_key(models: list[ModelInfo], toolkit: str, platform: str, batch: int) -> str:
    return cache.cache_key(":".join(f"{m.name}={m.sha256}" for m in models), toolkit, platform, batch)


def make_merged_entry(models: list[ModelInfo], toolkit: str, platform: str, batch: int, **fields) -> dict:
    """A merged file's cache entry: its heads in input order with their source sha256, windows and
    output counts (the runtime feeds and reads it by these)."""
    return dict(
        model=MERGED_NAME, heads=[m.name for m in models], source_sha256={m.name: m.sha256 for m in models},
        windows=[m.window for m in models], n_outputs=[m.n_outputs for m in models], toolkit=toolkit,
        platform=platform, batch=batch, recipe=cache.RECIPE, data_format=DATA_FORMAT,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields,
    )


def convert_merged(toolkit: Toolkit, out_dir: Path, models: list[ModelInfo], check_inputs: dict[str, np.ndarray],
                   batch: int = cache.DEFAULT_BATCH, platform: str = cache.PLATFORM) -> tuple[dict, dict | None]:
    """Build, export and simulate `models` as one merged file into `out_dir` (no lock: for the
    built-in sets' script). Returns (entry, {name: simulator scores on its check rows}) or
    (failed entry, None). Every head's check rows must be equally many."""
    with tempfile.TemporaryDirectory(prefix="rknn-merged-") as tmp:
        workdir = Path(tmp)
        version = toolkit.version(workdir)
        key = merged_key(models, version, platform, batch)
        json_path = Path(out_dir) / f"{MERGED_NAME}.{key[:16]}.json"
        source = workdir / f"{MERGED_NAME}.onnx"
        onnx.save(prepare_merged(models, batch), str(source))
        inputs = {f"windows_{i}": _padded(np.asarray(check_inputs[m.name], np.float32), batch)
                  for i, m in enumerate(models)}
        np.savez(workdir / "inputs.npz", **inputs)
        spec = {"name": MERGED_NAME, "format": "onnx", "source": str(source), "export": str(workdir / "merged.rknn"),
                "inputs": str(workdir / "inputs.npz"), "outputs": str(workdir / "outputs.npz")}
        job = {"command": "build", "platform": platform, "batch": batch, "data_format": DATA_FORMAT, "models": [spec]}
        outcome = toolkit.run(job, workdir)["models"][MERGED_NAME]
        if outcome["status"] != "ok":
            return make_merged_entry(models, version, platform, batch, status="failed", reason=outcome["reason"]), None
        entry = cache.write_entry(json_path, make_merged_entry(models, version, platform, batch, status="ok", reason=None),
                                  Path(spec["export"]).read_bytes())
        outputs = np.load(spec["outputs"])
        scores = {m.name: outputs[f"scores_{i}"][: len(check_inputs[m.name])] for i, m in enumerate(models)}
        return entry, scores
