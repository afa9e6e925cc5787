"""Users' own .tflite wake-word heads on ai-edge-litert (optional extra `[tflite]`).

The runtime is imported only when a .tflite head is read or run, never at import time.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailable, ModelError
from ..models.registry import ModelInfo

_LOGGER = logging.getLogger(__name__)

_MISSING = "ai-edge-litert is not installed; pip install 'wyoming-oww-rk3588[tflite]'"


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        raise BackendUnavailable(_MISSING) from err
    return Interpreter


def _open(path: Path, threads: int = 1):
    interpreter_class = _interpreter_class()
    try:
        return interpreter_class(model_path=str(path), num_threads=threads)
    except Exception as err:  # noqa: BLE001 - the runtime raises ValueError/RuntimeError for bad files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path.name} is not a readable TFLite wake-word head ({reason}); replace the file") from err


def tflite_head_shapes(path: Path) -> tuple[int, int, str]:
    """(window, n_outputs, output tensor name) of a .tflite head, read without running it."""
    path = Path(path)
    interpreter = _open(path)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{path.name} has {len(inputs)} inputs and {len(outputs)} outputs; a head has one of each")
    shape, out_shape = [int(d) for d in inputs[0]["shape"]], [int(d) for d in outputs[0]["shape"]]
    if len(shape) != 3 or shape[2] != 96 or shape[1] <= 0 or len(out_shape) != 2 or out_shape[1] <= 0:
        raise ModelError(f"{path.name} maps {shape} to {out_shape}; a head maps [1, window, 96] to [1, outputs]")
    if inputs[0]["dtype"] != np.float32 or outputs[0]["dtype"] != np.float32:
        raise ModelError(f"{path.name} is a quantized model; only float32 TFLite heads are supported")
    return shape[1], out_shape[1], outputs[0]["name"]


class _Model:
    """One head's interpreters, one per batch size seen (each resized once, then reused)."""

    def __init__(self, path: Path, threads: int) -> None:
        self.path, self.threads = path, threads
        self.by_batch: dict[int, tuple[object, int, int]] = {}
        self.rows_only = False  # set when the file's graph cannot take a batch dimension
        self.lock = threading.Lock()  # a TFLite interpreter is not safe to share between threads

    def interpreter(self, batch: int, n_outputs: int):
        """(interpreter, input index, output index) for `batch` rows, or None if it cannot batch."""
        if batch in self.by_batch:
            return self.by_batch[batch]
        interpreter = _open(self.path, self.threads)
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        if batch != int(inp["shape"][0]):
            try:
                interpreter.resize_tensor_input(inp["index"], [batch, *inp["shape"][1:]], strict=False)
                interpreter.allocate_tensors()
            except Exception:  # noqa: BLE001 - a reshape to a fixed [1, ...] makes resizing fail
                return None
            # A graph that reshapes to e.g. [1, -1] "resizes" but mixes rows: check the shape.
            if tuple(interpreter.get_output_details()[0]["shape"]) != (batch, n_outputs):
                return None
        else:
            interpreter.allocate_tensors()
        self.by_batch[batch] = (interpreter, inp["index"], out["index"])
        return self.by_batch[batch]


class TfliteHeads:
    """Wake-word heads (.tflite) on ai-edge-litert, batched where the graph allows it."""

    name = "tflite"

    def __init__(self, threads: int = 1) -> None:
        # Only check that the runtime exists: importing it costs time that ONNX-only servers need not pay.
        if importlib.util.find_spec("ai_edge_litert") is None:
            raise BackendUnavailable(_MISSING)
        self._threads = threads
        self._models: dict[str, _Model] = {}
        self._lock = threading.Lock()

    def unsupported_reason(self, model: ModelInfo) -> str | None:
        return None if model.format == "tflite" else f"{model.format} heads run on the cpu backend"

    def load(self, model: ModelInfo) -> None:
        with self._lock:
            if model.name in self._models:
                return
            entry = _Model(Path(model.path), self._threads)
            entry.interpreter(1, model.n_outputs)  # raises ModelError/BackendUnavailable now, not mid-stream
            self._models[model.name] = entry

    def score(self, model: ModelInfo, windows: np.ndarray) -> np.ndarray:
        if model.name not in self._models:
            self.load(model)
        entry = self._models[model.name]
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        if len(windows) == 0:
            return np.zeros((0, model.n_outputs), np.float32)
        with entry.lock:
            runner = None if entry.rows_only else entry.interpreter(len(windows), model.n_outputs)
            if runner is not None:
                return self._run(runner, windows).reshape(len(windows), model.n_outputs)
            if not entry.rows_only:
                _LOGGER.info("%s cannot be batched; scoring its windows one at a time", model.path.name)
                entry.rows_only = True
            runner = entry.interpreter(1, model.n_outputs)
            return np.concatenate([self._run(runner, w[None]) for w in windows]).reshape(-1, model.n_outputs)

    @staticmethod
    def _run(runner, windows: np.ndarray) -> np.ndarray:
        interpreter, input_index, output_index = runner
        interpreter.set_tensor(input_index, windows)
        interpreter.invoke()
        return interpreter.get_tensor(output_index).copy()

    def close(self) -> None:
        self._models.clear()
