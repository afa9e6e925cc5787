"""A thin stand-in for rknn-toolkit-lite2 2.5.0's RKNNLite: same methods, same -1/None failures,
answering with rknn-toolkit2's simulator scores recorded in tests/fixtures/rknn/ for its own small
stand-in files and for the real .rknn files shipped for the built-in heads (re-record with
`python -m wyoming_oww_rk3588.rknn convert --all --check --record-fixture <that file>`)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np

from wyoming_oww_rk3588.models.registry import ModelInfo
from wyoming_oww_rk3588.rknn import builtin, cache
from wyoming_oww_rk3588.rknn.convert import make_entry

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rknn" / "simulator_scores.npz"
# onnxruntime's last bits can differ between machines and batch sizes; recorded windows differ
# from each other by far more than this.
MATCH_ATOL = 1e-4
_FILE_MAGIC = b"fake-rknn:"
#: The real .rknn files shipped for the built-in heads, by sha256: the fake loads them as those heads.
SHIPPED = {pin["sha256"]: name for name, pin in builtin.pins().items()}


class Recorded:
    """The fixture: real embedding histories, and per head the simulator's score per window."""

    def __init__(self, path: Path = FIXTURE) -> None:
        data = np.load(path)
        self.meta = json.loads(str(data["meta"]))
        self.batch = int(self.meta["batch"])
        self.embeddings = data["embeddings"]
        self.heads = {
            name: (data[f"{name}.starts"], data[f"{name}.scores"], data[f"{name}.zero"])
            for name in self.meta["models"]
        }
        self._windows: dict[str, np.ndarray] = {}

    def windows(self, name: str) -> np.ndarray:
        """Every recorded input of head `name`: [R, window, 96] (a copy)."""
        if name not in self._windows:
            window = self.meta["models"][name]["window"]
            self._windows[name] = np.stack([self.embeddings[s : s + window] for s in self.heads[name][0]])
        return self._windows[name].copy()

    def scores(self, name: str) -> np.ndarray:
        return self.heads[name][1]

    def answer(self, name: str, row: np.ndarray) -> np.ndarray:
        starts, scores, zero = self.heads[name]
        if not row.any():
            return zero
        windows = self._windows.get(name)
        if windows is None:
            windows = self.windows(name)
        error = np.abs(windows - row).reshape(len(windows), -1).max(axis=1)
        best = int(error.argmin())
        if error[best] > MATCH_ATOL:
            raise AssertionError(f"fake NPU: no recorded simulator output for this {name} window "
                                 f"(nearest differs by {error[best]:.2g}); the test fed an unrecorded input")
        return scores[best]


class FakeNpu:
    """What the fake RKNNLite objects share: recorded answers, planned failures, a call log."""

    def __init__(self, recorded: Recorded | None = None) -> None:
        self.recorded = recorded or Recorded()
        self.calls: list[tuple[str, str | None, object]] = []  # (method, model, argument)
        self.released: list[str | None] = []
        self._plans: dict[tuple[str, str | None], dict[int, object]] = {}
        self._counts: Counter = Counter()

    def fail(self, method: str, on_call: int = 1, model: str | None = None, result: object = "default") -> None:
        """Make the `on_call`-th call of `method` (counted for `model`, or for all) fail the way
        RKNNLite does (-1, or None for inference), or return `result`, or raise it if an exception."""
        self._plans.setdefault((method, model), {})[on_call] = result

    def planned(self, method: str, model: str | None):
        keys = dict.fromkeys([(method, model), (method, None)])
        for key in keys:
            self._counts[key] += 1
        for key in keys:
            plan = self._plans.get(key, {})
            if self._counts[key] in plan:
                return True, plan[self._counts[key]]
        return False, None

    def RKNNLite(self, verbose: bool = False) -> "FakeRKNNLite":  # noqa: N802 - mirrors the class name
        return FakeRKNNLite(self)

    def count(self, method: str, model: str | None = None) -> int:
        return sum(1 for m, name, _ in self.calls if m == method and model in (None, name))

    def write_cache(self, cache_dir: Path, models: list[ModelInfo]) -> None:
        """Cache entries as the converter writes them, with small fake .rknn files."""
        for model in models:
            recorded = self.recorded.meta["models"][model.name]
            if recorded["sha256"] != model.sha256:
                raise AssertionError(f"{FIXTURE.name} was recorded for another {model.name}; record it again")
            key = cache.cache_key(model.sha256, self.recorded.meta["toolkit"], cache.PLATFORM, self.recorded.batch)
            json_path, _ = cache.entry_paths(cache_dir, model, key)
            entry = make_entry(model, self.recorded.meta["toolkit"], cache.PLATFORM, self.recorded.batch,
                               status="ok", reason=None)
            cache.write_entry(json_path, entry, _FILE_MAGIC + model.name.encode())


class FakeRKNNLite:
    NPU_CORE_AUTO = 0
    NPU_CORE_0 = 1
    NPU_CORE_1 = 2
    NPU_CORE_2 = 4
    NPU_CORE_0_1 = 3
    NPU_CORE_0_1_2 = 7
    NPU_CORE_ALL = 0xFFFF

    def __init__(self, npu: FakeNpu) -> None:
        self._npu = npu
        self.model: str | None = None
        self.ready = False

    def _failure(self, method: str, default: object):
        fails, result = self._npu.planned(method, self.model)
        if not fails:
            return False, None
        if isinstance(result, BaseException):
            raise result
        return True, default if isinstance(result, str) and result == "default" else result

    def load_rknn(self, path: str) -> int:
        data = Path(path).read_bytes() if Path(path).is_file() else b""
        if data.startswith(_FILE_MAGIC):
            self.model = data[len(_FILE_MAGIC):].decode()
        else:
            self.model = SHIPPED.get(hashlib.sha256(data).hexdigest())
        self._npu.calls.append(("load_rknn", self.model, path))
        fails, result = self._failure("load_rknn", -1)
        if fails:
            return result
        return 0 if self.model in self._npu.recorded.heads else -1

    def init_runtime(self, core_mask: int = NPU_CORE_AUTO) -> int:
        self._npu.calls.append(("init_runtime", self.model, core_mask))
        fails, result = self._failure("init_runtime", -1)
        if fails:
            return result
        if self.model is None:
            return -1
        self.ready = True
        return 0

    def inference(self, inputs, data_format=None, inputs_pass_through=None, get_frame_id=False):
        (batch,) = inputs
        self._npu.calls.append(("inference", self.model, np.array(batch, copy=True)))
        fails, result = self._failure("inference", None)
        if fails:
            return result
        window = self._npu.recorded.meta["models"].get(self.model, {}).get("window")
        if not self.ready or np.shape(batch) != (self._npu.recorded.batch, window, 96):
            return None  # RKNNLite logs an error and returns None for a wrong-sized input
        return [np.stack([self._npu.recorded.answer(self.model, row) for row in batch])]

    def release(self) -> None:
        self._npu.released.append(self.model)
        self.ready = False
