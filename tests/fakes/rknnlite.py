"""A thin stand-in for rknn-toolkit-lite2's RKNNLite (2.3.2 / 2.5.0) on a board with a given
librknnrt release: same methods, same -1/None failures, answering with the simulator scores of the
toolkit that made the file (tests/fixtures/rknn/<release>/, recorded by scripts/convert_builtin_rknn.py)
for its own small stand-in files and for the real .rknn files shipped for the built-in heads.
Like the real runtime it refuses, in init_runtime, a file from a toolkit newer than itself
("Invalid RKNN model version"); it reports its versions through get_sdk_version() as lite2 does
(an `RKNN VERSION:` block with `API:` and `DRV:` lines); and it raises KeyError on a data_format for
a 3-D input, as one lite2 release did."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np

from wyoming_oww_rk3588.models.registry import ModelInfo
from wyoming_oww_rk3588.rknn import builtin, cache
from wyoming_oww_rk3588.rknn.convert import make_entry

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rknn"
FIXTURE = FIXTURES / builtin.TOOLKIT_VERSION / "simulator_scores.npz"
# onnxruntime's last bits can differ between machines and batch sizes; recorded windows differ
# from each other by far more than this.
MATCH_ATOL = 1e-4
_FILE_MAGIC = b"fake-rknn:"
#: The real .rknn files shipped for the built-in heads, by sha256: (toolkit release, head name).
SHIPPED = {pin["sha256"]: (version, name) for version in builtin.sets()
           for name, pin in builtin.head_pins(version).items()}
#: The shipped merged files (every built-in head in one graph), by sha256: (release, their heads).
MERGED = "merged_heads"
SHIPPED_MERGED = {s["merged"]["sha256"]: (version, s["merged"]["heads"])
                  for version, s in builtin.sets().items() if "merged" in s}
#: A librknnrt 2.3.2's build tag, as the runtime reports it.
_BUILD = {"2.3.2": "429f97ae6b@2025-04-09T09:09:27"}


def fixture(version: str, merged: bool = False) -> Path:
    return FIXTURES / version / ("merged_scores.npz" if merged else "simulator_scores.npz")


class Recorded:
    """The fixture: real embedding histories, and per head the simulator's score per window."""

    def __init__(self, path: Path = FIXTURE) -> None:
        if not Path(path).suffix:  # a release: its fixture
            path = fixture(str(path))
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
    """What the fake RKNNLite objects share: the board's runtime release, recorded answers per
    toolkit release, planned failures, a call log. `perturb` is added to every score (a chip that
    mis-runs the files)."""

    def __init__(self, recorded: Recorded | None = None, runtime: str = "2.5.0", driver: str = "0.9.8",
                 perturb: float = 0.0) -> None:
        self.recorded = recorded or Recorded()
        self._recorded = {self.recorded.meta["toolkit"]: self.recorded}
        self.runtime = runtime
        self.driver = driver
        self.perturb = perturb
        self.calls: list[tuple[str, str | None, object]] = []  # (method, model, argument)
        self.released: list[str | None] = []
        self._plans: dict[tuple[str, str | None], dict[int, object]] = {}
        self._counts: Counter = Counter()

    def recorded_for(self, version: str, merged: bool = False) -> Recorded:
        key = (version, merged) if merged else version
        if key not in self._recorded:
            self._recorded[key] = Recorded(fixture(version, merged))
        return self._recorded[key]

    def sdk_version(self) -> str:
        build = _BUILD.get(self.runtime, "fake")
        return ("==============================================\nRKNN VERSION:\n"
                f"  API: {self.runtime} ({build})\n  DRV: {self.driver}\n"
                "==============================================")

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

    def forget(self) -> None:
        """Drop the call log and counts so far (say, the backend's runtime probe)."""
        self.calls.clear()
        self.released.clear()
        self._counts.clear()

    def count(self, method: str, model: str | None = None) -> int:
        return sum(1 for m, name, _ in self.calls if m == method and model in (None, name))

    def write_cache(self, cache_dir: Path, models: list[ModelInfo], toolkit: str | None = None,
                    verify: bool = False) -> None:
        """Cache entries as the converter of release `toolkit` (default: the fixture's) writes
        them, with small fake .rknn files; with `verify`, as `convert --check` does: a batch of
        recorded windows and their simulator scores beside each."""
        recorded = self.recorded_for(toolkit or self.recorded.meta["toolkit"])
        toolkit = recorded.meta["toolkit"]
        for model in models:
            if recorded.meta["models"][model.name]["sha256"] != model.sha256:
                raise AssertionError(f"the {toolkit} fixture was recorded for another {model.name}; record it again")
            key = cache.cache_key(model.sha256, toolkit, cache.PLATFORM, recorded.batch)
            json_path, _ = cache.entry_paths(cache_dir, model, key)
            entry = make_entry(model, toolkit, cache.PLATFORM, recorded.batch, status="ok", reason=None)
            if verify:
                windows = np.concatenate([recorded.windows(model.name)[: recorded.batch - 1],
                                          np.zeros((1, model.window, 96), np.float32)])
                scores = np.concatenate([recorded.scores(model.name)[: recorded.batch - 1],
                                         recorded.heads[model.name][2][None]])
                path = json_path.with_suffix(".verify.npz")
                np.savez_compressed(path, windows=windows, scores=scores)
                entry.update(verify_file=path.name, verify_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
            cache.write_entry(json_path, entry, _FILE_MAGIC + f"{toolkit}:{model.name}".encode())


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
        self.toolkit: str | None = None
        self.merged_heads: list[str] = []
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
            self.toolkit, self.model = data[len(_FILE_MAGIC):].decode().split(":")
        else:
            digest = hashlib.sha256(data).hexdigest()
            self.toolkit, self.model = SHIPPED.get(digest, (None, None))
            if digest in SHIPPED_MERGED:
                self.toolkit, self.merged_heads = SHIPPED_MERGED[digest]
                self.model = MERGED
        self._npu.calls.append(("load_rknn", self.model, path))
        fails, result = self._failure("load_rknn", -1)
        if fails:
            return result
        return 0 if self.model is not None else -1

    def init_runtime(self, core_mask: int = NPU_CORE_AUTO) -> int:
        self._npu.calls.append(("init_runtime", self.model, core_mask))
        fails, result = self._failure("init_runtime", -1)
        if fails:
            return result
        if self.model is None or builtin.release(self.toolkit) > builtin.release(self._npu.runtime):
            return -1  # librknnrt: "Invalid RKNN model version", rknn_init fails
        self.ready = True
        return 0

    def get_sdk_version(self):
        self._npu.calls.append(("get_sdk_version", self.model, None))
        return self._npu.sdk_version() if self.ready else None

    def inference(self, inputs, data_type=None, data_format=None, inputs_pass_through=None, get_frame_id=False):
        if self.model == MERGED:
            return self._merged_inference(inputs, data_format)
        (batch,) = inputs
        self._npu.calls.append(("inference", self.model, np.array(batch, copy=True)))
        if data_format is not None and np.ndim(batch) != 4:
            raise KeyError(data_format)  # as one lite2 release did for a 3-D input
        fails, result = self._failure("inference", None)
        if fails:
            return result
        recorded = self._npu.recorded_for(self.toolkit)
        window = recorded.meta["models"].get(self.model, {}).get("window")
        if not self.ready or np.shape(batch) != (recorded.batch, window, 96):
            return None  # RKNNLite logs an error and returns None for a wrong-sized input
        return [np.stack([recorded.answer(self.model, row) for row in batch]) + np.float32(self._npu.perturb)]

    def _merged_inference(self, inputs, data_format):
        """One output per head of the merged file, each its simulator's answer to that head's input."""
        self._npu.calls.append(("inference", MERGED, [np.array(x, copy=True) for x in inputs]))
        if data_format is not None:
            raise KeyError(data_format)
        fails, result = self._failure("inference", None)
        if fails:
            return result
        recorded = self._npu.recorded_for(self.toolkit, merged=True)
        shapes = [(recorded.batch, recorded.meta["models"][name]["window"], 96) for name in self.merged_heads]
        if not self.ready or [np.shape(x) for x in inputs] != shapes:
            return None
        return [np.stack([recorded.answer(name, row) for row in x]) + np.float32(self._npu.perturb)
                for name, x in zip(self.merged_heads, inputs)]

    def release(self) -> None:
        self._npu.released.append(self.model)
        self.ready = False
