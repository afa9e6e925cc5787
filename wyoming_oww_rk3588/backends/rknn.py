"""Wake-word heads on the RK3588 NPU through rknn-toolkit-lite2's RKNNLite, one padded batch per call.
The built-in heads ship pre-converted, one set per librknnrt release (rknn/builtin.py), chosen by the
release the runtime reports, and each shipped head is checked on load against the simulator's scores
recorded for its file; other heads are converted beforehand (`python -m wyoming_oww_rk3588.rknn
convert`). A head without a usable .rknn is declined by `unsupported_reason` and runs on the CPU."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import addon
from ..errors import BackendFailed, BackendUnavailable
from ..models.registry import ModelInfo
from ..rknn import builtin, cache
from ..rknn.board import (  # noqa: F401 - re-exported: doctor and the tests read them here
    LIBRKNNRT, MIN_DRIVER, RuntimeInfo, _point_runtime_at_mapped_device_tree, driver_version, librknnrt_version,
    parse_sdk_version, probe_board)
from ..rknn.check import NPU_TOLERANCE

_LOGGER = logging.getLogger(__name__)

#: --npu-core-mask value -> RKNNLite constant. `auto` lets the runtime pick an idle core, and is the
#: default: a call runs on one core (RKNNLite.init_runtime's docstring in the 2.3.2/2.5.0 wheels),
#: and the multi-core modes split one model's layers across cores (airockchip/rknn-toolkit2
#: CHANGELOG.md, v1.4.0), which a head of 0.1-0.9 MFLOP per row cannot repay. The batch is not
#: `rknn_batch_size` (which tiles a batch-1 graph) but fixed in each ONNX graph's N dimension
#: (rknn/convert.py), so one call scores up to 32 streams of every head in a merged file.
CORE_MASKS = {
    "auto": "NPU_CORE_AUTO", "0": "NPU_CORE_0", "1": "NPU_CORE_1", "2": "NPU_CORE_2",
    "0_1": "NPU_CORE_0_1", "0_1_2": "NPU_CORE_0_1_2",
}
_CONVERT = "python -m wyoming_oww_rk3588.rknn convert --all --out {dir}"


@dataclass
class _Head:
    runtime: object
    batch: int
    window: int
    n_outputs: int
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Merged:
    """The shipped file with every built-in head in one graph: input and output i are heads[i]'s."""

    runtime: object
    batch: int
    heads: list[str]
    windows: list[int]
    n_outputs: list[int]
    sources: dict[str, str]  # head name -> the sha256 of the model file it was made from
    lock: threading.Lock = field(default_factory=threading.Lock)


class RknnHeads:
    """HeadBackend over RKNNLite: one runtime context per head, batched over all streams."""

    name = "rknn"

    def __init__(self, cache_dir: Path | str | None = None, core_mask: str = "auto", runtime_factory=None,
                 batch: int | None = None, library: Path | None = None) -> None:
        """`runtime_factory` makes RKNNLite-like objects (default: the real class, which needs
        the board); `batch` picks converted files of that batch when several are cached;
        `library` is the librknnrt.so whose built-in version string is the fallback when no
        shipped file initialises (default /usr/lib/librknnrt.so with the real runtime)."""
        core_mask = str(core_mask)
        if core_mask not in CORE_MASKS:
            raise ValueError(f"unknown NPU core mask {core_mask!r}; use one of {', '.join(CORE_MASKS)}")
        if runtime_factory is None:
            probe_board()
            try:
                from rknnlite.api import RKNNLite
            except ImportError as err:
                raise BackendUnavailable(
                    f"rknn-toolkit-lite2 is not installed ({err}); pip install rknn-toolkit-lite2"
                ) from err
            _point_runtime_at_mapped_device_tree()
            runtime_factory = RKNNLite
            library = library or Path("/") / LIBRKNNRT
        self._factory = runtime_factory
        self._library = library
        self.core_mask = core_mask
        self.cache_dir = Path(cache_dir) if cache_dir else cache.default_cache_dir()
        self.batch = batch
        self._heads: dict[str, _Head] = {}
        self._lock = threading.Lock()
        self._runtime_info: RuntimeInfo | None = None
        self._merged: _Merged | None = None
        self._merged_state = "untried"  # untried | loaded | unusable
        self._failed: set[str] = set()
        #: NPU inference calls made so far (benchmarks report calls per tick).
        self.calls = 0

    # -- which runtime, which set -------------------------------------------------------------

    def runtime_info(self) -> RuntimeInfo:
        """The runtime's release and driver as RKNNLite reports them, learned once. RKNNLite reports
        them only from an initialised context, and a context needs a model: so one shipped head is
        initialised and released, oldest set first (an older file is the likeliest to load)."""
        if self._runtime_info is None:
            librknnrt = driver = None
            source = "reported by RKNNLite"
            for version in builtin.sets():
                pins = builtin.head_pins(version)
                if not pins:
                    continue
                librknnrt, driver = self._reported_versions(builtin.BUILTIN_DIR / min(pins.values(), key=lambda p: p["file"])["file"])
                if librknnrt:
                    break
            if librknnrt is None and self._library is not None:
                librknnrt, source = librknnrt_version(self._library), f"read from {self._library}"
            head_set = builtin.set_for(builtin.release(librknnrt))
            self._runtime_info = RuntimeInfo(librknnrt, driver, source, head_set)
            _LOGGER.info("NPU runtime: %s; built-in heads from set %s", self._runtime_info.describe(),
                         head_set or "none")
        return self._runtime_info

    def _reported_versions(self, rknn_path: Path) -> tuple[str | None, str | None]:
        try:
            runtime = self._factory()
        except Exception as err:  # noqa: BLE001 - a factory that cannot make a context
            _LOGGER.debug("RKNNLite() failed: %s", err)
            return None, None
        try:
            if runtime.load_rknn(str(rknn_path)) != 0:
                return None, None
            if runtime.init_runtime(core_mask=getattr(runtime, CORE_MASKS[self.core_mask])) != 0:
                return None, None
            return parse_sdk_version(runtime.get_sdk_version())
        except Exception as err:  # noqa: BLE001 - a runtime that cannot take this file says nothing
            _LOGGER.debug("NPU runtime probe with %s failed: %s", rknn_path.name, err)
            return None, None
        finally:
            self._release_runtime(runtime)

    def _find(self, model: ModelInfo) -> tuple[tuple[Path, dict] | None, str | None]:
        """(entry, None) for a usable .rknn, else (what was found, why it cannot be used). The user's
        cache comes first (their own conversion), if the runtime can load it, then the shipped set
        for this runtime; if neither is usable, the cache's reason (else the shipped file's)."""
        info = self.runtime_info()
        found = cache.find_entry(self.cache_dir, model, batch=self.batch, max_toolkit=info.release)
        problem = self._problem(model, found)
        if found is None:
            newer = cache.find_entry(self.cache_dir, model, batch=self.batch)
            if newer is not None and newer[1].get("status") == "ok":
                problem = (f"{newer[0].name} was converted with rknn-toolkit2 {newer[1].get('toolkit')}, newer than "
                           f"{info.describe()}; convert it with rknn-toolkit2 {info.head_set or builtin.PUBLISHED_RUNTIME} "
                           f"(--toolkit-python) or install librknnrt {newer[1].get('toolkit')}")
        if problem is None:
            return found, None
        if not model.builtin:
            return found, problem
        if info.head_set is None:  # the fix is the runtime; converting it yourself is the other way
            return found, f"{info.no_set_reason()}; or your own conversion: {problem}"
        shipped = builtin.find(model, info.head_set, self.batch)
        if shipped is None:
            return found, problem
        shipped_problem = self._problem(model, shipped)
        if shipped_problem is None or found is None:  # a damaged shipped file says so
            return shipped, shipped_problem
        return found, problem

    def _problem(self, model: ModelInfo, found: tuple[Path, dict] | None) -> str | None:
        if found is None:
            return f"no converted .rknn in {self.cache_dir}; {self._convert_advice(model)}"
        json_path, entry = found
        if entry.get("status") != "ok":
            return f"rknn-toolkit2 {entry.get('toolkit')} could not convert it ({entry.get('reason')})"
        problem = cache.rknn_problem(json_path, entry)  # reads and hashes the .rknn
        if problem:
            return f"{problem}; {self._convert_advice(model, force=True)}"
        if (entry.get("window"), entry.get("n_outputs")) != (model.window, model.n_outputs):
            return f"{json_path.name} does not match the model's shapes; convert it again"
        return None

    def _convert_advice(self, model: ModelInfo, force: bool = False) -> str:
        """How to get a .rknn: the command here, or in the add-on (which has no converter) a PC's."""
        flag = " --force" if force else ""
        if addon.in_addon():
            custom = "" if model.builtin else " --custom-model-dir YOUR_MODELS"
            return (f"convert it on a PC with rknn-toolkit2 (`python -m wyoming_oww_rk3588.rknn convert "
                    f"{model.name}{custom} --out rknn{flag}`, docs/npu.md) and copy the rknn folder's files "
                    f"to {self.cache_dir}")
        return f"run `{_CONVERT.format(dir=self.cache_dir)}{flag}`"

    # -- loading, checking, running -----------------------------------------------------------

    def unsupported_reason(self, model: ModelInfo) -> str | None:
        return None if model.name in self._heads else self._find(model)[1]

    def load(self, model: ModelInfo) -> None:
        with self._lock:
            if model.name in self._heads:
                return
            found, reason = self._find(model)
            if reason:
                raise BackendUnavailable(reason)
            json_path, entry = found
            head = _Head(self._open(model, json_path.with_name(entry["rknn_file"]), entry),
                         entry["batch"], entry["window"], entry["n_outputs"])
            try:
                checked = self._verify(model, head, json_path, entry)
            except BackendUnavailable:
                self._release(head)
                raise
            self._heads[model.name] = head
            _LOGGER.info("Model %s on the NPU (%s, toolkit %s, batch %d, cores %s%s)", model.name,
                         entry["rknn_file"], entry.get("toolkit"), head.batch, self.core_mask, checked)

    def _verify(self, model: ModelInfo, head: _Head, json_path: Path, entry: dict) -> str:
        """Run a head on the inputs recorded with its file (shipped, or by `convert --check`) and
        compare with the simulator's scores for that very file: the only accuracy check that runs on
        the chip itself. A file without them gets a warm-up call of zeros (it pays the runtime's
        first-call setup and proves the NPU answers)."""
        shipped_set = json_path.parent.name if json_path.parent.parent == builtin.BUILTIN_RKNN_DIR else None
        recorded = (builtin.verification(shipped_set, model.name) if shipped_set
                    else builtin.cached_verification(json_path, entry))
        windows = recorded.windows if recorded else np.zeros((1, head.window, 96), np.float32)
        try:
            scores = self._run(model, head, windows)
        except BackendFailed as err:
            raise BackendUnavailable(f"the NPU does not run {model.name}: {err}") from err
        if recorded is None:
            return ""
        error = float(np.abs(scores.astype(np.float64) - recorded.scores).max())
        if not error <= NPU_TOLERANCE:  # NaN fails too
            raise BackendUnavailable(
                f"{model.name} on the NPU ({self.runtime_info().describe()}) differs from rknn-toolkit2 "
                f"{entry.get('toolkit')}'s simulator by {error:.2g} (> {NPU_TOLERANCE}) on its recorded inputs; "
                "it runs on the CPU (please report it with `python -m wyoming_oww_rk3588 doctor`)")
        return f", checked on load: {error:.1e} from the simulator"

    def _open(self, model: ModelInfo, rknn_path: Path, entry: dict):
        runtime = self._factory()
        try:
            ret = runtime.load_rknn(str(rknn_path))
            if ret != 0:
                raise BackendUnavailable(
                    f"RKNNLite.load_rknn({rknn_path.name}) returned {ret}; convert it again: "
                    f"{self._convert_advice(model, force=True)}"
                )
            ret = runtime.init_runtime(core_mask=getattr(runtime, CORE_MASKS[self.core_mask]))
            if ret != 0:
                raise BackendUnavailable(
                    f"RKNNLite.init_runtime(cores {self.core_mask}) returned {ret} for {model.name} "
                    f"(rknn-toolkit2 {entry.get('toolkit')}'s file on {self.runtime_info().describe()}): NPU busy, "
                    "or a runtime older than the file (see RKNN's log lines above and docs/npu.md)"
                )
        except BackendUnavailable:
            self._release_runtime(runtime)
            raise
        except Exception as err:  # noqa: BLE001 - RKNNLite raises OSError etc. for a missing library
            self._release_runtime(runtime)
            raise BackendUnavailable(f"RKNNLite cannot start for {model.name} ({err}); see docs/npu.md") from err
        return runtime

    def _run(self, model: ModelInfo, head: _Head, windows: np.ndarray) -> np.ndarray:
        """windows [B, W, 96] -> scores [B, n]: padded to the file's fixed batch, split if larger."""
        rows = len(windows)
        out = np.empty((rows, head.n_outputs), np.float32)
        chunk = np.zeros((head.batch, head.window, 96), np.float32)
        with head.lock:
            for start in range(0, rows, head.batch):
                part = windows[start : start + head.batch]
                chunk[: len(part)] = part
                chunk[len(part) :] = 0.0  # padding rows: scored, then dropped
                try:
                    # No data_format: lite2 documents it for 4-D inputs only, and one release
                    # raised KeyError on "nchw" for this 3-D input (rknn/convert.py, DATA_FORMAT).
                    self.calls += 1
                    result = head.runtime.inference(inputs=[chunk])
                except Exception as err:  # noqa: BLE001 - any runtime error is a failed call
                    raise BackendFailed(f"RKNNLite.inference raised {err!r} on {model.name}") from err
                if not result or result[0] is None or np.size(result[0]) != head.batch * head.n_outputs:
                    got = "nothing" if not result or result[0] is None else f"shape {np.shape(result[0])}"
                    raise BackendFailed(f"RKNNLite.inference returned {got} on {model.name} (see RKNN's log)")
                out[start : start + len(part)] = np.asarray(result[0], np.float32).reshape(head.batch, -1)[: len(part)]
        return out

    def score(self, model: ModelInfo, windows: np.ndarray) -> np.ndarray:
        if model.name in self._failed:  # failed mid-stream: the engine moves it to the CPU, never reopens it here
            raise BackendFailed(f"{model.name} failed on the NPU earlier")
        head = self._heads.get(model.name)
        if head is None:
            self.load(model)
            head = self._heads[model.name]
        windows = np.asarray(windows, np.float32)
        if windows.shape[1:] != (head.window, 96):
            raise ValueError(f"{model.name} takes windows [B, {head.window}, 96], not {list(windows.shape)}")
        try:
            return self._run(model, head, windows)
        except BackendFailed:
            # The engine moves this head to the CPU; free its NPU context now.
            with self._lock:
                self._heads.pop(model.name, None)
                self._failed.add(model.name)
            self._release(head)
            raise

    # -- all heads in one call ------------------------------------------------------------------

    def score_many(self, models: list[ModelInfo], windows: list[np.ndarray]) -> list[np.ndarray]:
        """Each model's scores, as `score` gives them: in one NPU call per batch of rows for all of
        them when the runtime's set has a merged file holding every one (heads not asked for get
        zero rows and their outputs are ignored), else one call per head."""
        merged = self._merged_for(models)
        if merged is None:
            return [self.score(model, w) for model, w in zip(models, windows)]
        try:
            return self._run_merged(merged, models, [np.asarray(w, np.float32) for w in windows])
        except BackendFailed:
            self._drop_merged("it failed mid-stream")
            raise  # HeadRunner scores these models again one by one

    def _merged_for(self, models: list[ModelInfo]) -> _Merged | None:
        if self._merged_state == "unusable" or any(m.name not in self._heads for m in models):
            return None
        with self._lock:
            if self._merged_state == "untried":
                self._merged_state = "unusable"
                self._merged = self._load_merged()
                if self._merged is not None:
                    self._merged_state = "loaded"
        merged = self._merged
        if merged is None or any(merged.sources.get(m.name) != m.sha256 or not m.builtin for m in models):
            return None  # a head it does not hold (say, your own file under a built-in's name)
        return merged

    def _load_merged(self) -> _Merged | None:
        """Open and check the runtime set's merged file, or None (then one call per head) with a log line."""
        head_set = self.runtime_info().head_set
        pin = builtin.sets().get(head_set or "", {}).get("merged") if head_set else None
        if pin is None:
            return None
        from ..models.registry import ModelRegistry

        try:
            models = [ModelRegistry().resolve(name) for name in pin["heads"]]
        except Exception as err:  # noqa: BLE001 - a registry without every built-in head
            _LOGGER.info("Merged NPU heads not used (%s); one NPU call per head", err)
            return None
        found = builtin.find_merged(head_set, models)
        problem = cache.rknn_problem(*found) if found else "it does not match today's built-in models"
        if problem:
            _LOGGER.warning("Merged NPU heads of set %s not used (%s); one NPU call per head", head_set, problem)
            return None
        json_path, entry = found
        runtime = self._factory()
        try:
            if runtime.load_rknn(str(json_path.with_name(entry["rknn_file"]))) != 0 or runtime.init_runtime(
                    core_mask=getattr(runtime, CORE_MASKS[self.core_mask])) != 0:
                raise BackendFailed("load_rknn or init_runtime returned an error (see RKNN's log)")
            merged = _Merged(runtime, entry["batch"], entry["heads"], entry["windows"], entry["n_outputs"],
                             entry["source_sha256"])
            recorded = {name: builtin.merged_verification(head_set, name) for name in merged.heads}
            if any(r is None for r in recorded.values()):
                raise BackendFailed(f"{builtin.VERIFY_MERGED_FILE} is missing or corrupt")
            scores = self._run_merged(merged, models, [r.windows for r in recorded.values()])
            error = max(float(np.abs(s.astype(np.float64) - recorded[m.name].scores).max()) for m, s in zip(models, scores))
            if not error <= NPU_TOLERANCE:
                raise BackendFailed(f"it differs from rknn-toolkit2 {entry.get('toolkit')}'s simulator by {error:.2g} "
                                    f"(> {NPU_TOLERANCE}) on its recorded inputs")
        except Exception as err:  # noqa: BLE001 - anything: the per-head files still serve
            self._release_runtime(runtime)
            _LOGGER.warning("Merged NPU heads of set %s not used (%s); one NPU call per head", head_set, err)
            return None
        _LOGGER.info("NPU heads %s in one call per tick (%s, checked on load: %.1e from the simulator)",
                     ", ".join(merged.heads), entry["rknn_file"], error)
        return merged

    def _run_merged(self, merged: _Merged, models: list[ModelInfo], windows: list[np.ndarray]) -> list[np.ndarray]:
        """windows[i] [B_i, W_i, 96] of models[i] -> their scores, ceil(max B_i / batch) calls."""
        slot = {name: i for i, name in enumerate(merged.heads)}
        for model, w in zip(models, windows):
            if w.shape[1:] != (merged.windows[slot[model.name]], 96):
                raise ValueError(f"{model.name} takes windows [B, {merged.windows[slot[model.name]]}, 96], "
                                 f"not {list(w.shape)}")
        out = [np.empty((len(w), model.n_outputs), np.float32) for model, w in zip(models, windows)]
        rows = max((len(w) for w in windows), default=0)
        chunks = [np.zeros((merged.batch, window, 96), np.float32) for window in merged.windows]
        with merged.lock:
            for start in range(0, rows, merged.batch):
                for chunk in chunks:
                    chunk[:] = 0.0  # heads not asked for, and padding rows: scored, then dropped
                for model, w in zip(models, windows):
                    part = w[start : start + merged.batch]
                    chunks[slot[model.name]][: len(part)] = part
                try:
                    self.calls += 1
                    result = merged.runtime.inference(inputs=chunks)  # no data_format: see _run
                except Exception as err:  # noqa: BLE001 - any runtime error is a failed call
                    raise BackendFailed(f"RKNNLite.inference raised {err!r} on the merged heads") from err
                if not result or len(result) != len(merged.heads) or any(
                        r is None or np.size(r) != merged.batch * n for r, n in zip(result, merged.n_outputs)):
                    raise BackendFailed("RKNNLite.inference returned too few or wrong-sized outputs on the merged heads")
                for i, (model, w) in enumerate(zip(models, windows)):
                    taken = len(w[start : start + merged.batch])
                    scores = np.asarray(result[slot[model.name]], np.float32).reshape(merged.batch, -1)
                    out[i][start : start + taken] = scores[:taken]
        return out

    def _drop_merged(self, why: str) -> None:
        with self._lock:
            merged, self._merged, self._merged_state = self._merged, None, "unusable"
        if merged is not None:
            _LOGGER.error("Merged NPU heads %s; one NPU call per head from now on", why)
            with merged.lock:
                self._release_runtime(merged.runtime)

    def _release(self, head: _Head) -> None:
        with head.lock:
            self._release_runtime(head.runtime)

    @staticmethod
    def _release_runtime(runtime) -> None:
        try:
            runtime.release()
        except Exception as err:  # noqa: BLE001 - a broken context may not release cleanly
            _LOGGER.debug("RKNNLite.release failed: %s", err)

    def close(self) -> None:
        with self._lock:
            heads, self._heads = list(self._heads.values()), {}
            merged, self._merged = self._merged, None
        for head in heads:
            self._release(head)
        if merged is not None:
            with merged.lock:
                self._release_runtime(merged.runtime)
