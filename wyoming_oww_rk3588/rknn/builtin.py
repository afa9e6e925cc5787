"""The built-in heads, pre-converted for the RK3588 NPU and shipped in the package: one set per
librknnrt release (an older runtime rejects a newer toolkit's files, "Invalid RKNN model version"),
each made and simulator-checked by that release's rknn-toolkit2 (`scripts/convert_builtin_rknn.py`)
in models/builtin/rknn/<release>/, with the recorded inputs and simulator scores the backend checks
each head against on load (verify.npz), all pinned in models/builtin/manifest.json's "rknn" section.
Users' own heads are converted into their cache as before."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..models.registry import BUILTIN_DIR, ModelInfo, load_manifest, sha256_of
from . import cache

BUILTIN_RKNN_DIR = BUILTIN_DIR / "rknn"
VERIFY_FILE = "verify.npz"
VERIFY_MERGED_FILE = "verify_merged.npz"
_NOT_HEADS = ("verify", "merged")
#: The rknn-toolkit2 release `.ci/install-rknn.sh` installs by default (.venv-rknn); the other
#: sets' toolkits go into .venv-rknn-<release> (`.ci/install-rknn.sh <release>`).
TOOLKIT_VERSION = "2.5.0"
#: Where users get a runtime: airockchip/rknn-toolkit2 publishes librknnrt.so up to v2.3.2.
RUNTIME_URL = ("https://github.com/airockchip/rknn-toolkit2/raw/v{version}/"
               "rknpu2/runtime/Linux/librknn_api/aarch64/librknnrt.so")
PUBLISHED_RUNTIME = "2.3.2"
_RELEASE = re.compile(r"(\d+)\.(\d+)\.(\d+)")

Release = tuple[int, int, int]


def release(text: str | None) -> Release | None:
    """The first x.y.z in `text` ("2.3.2 (429f97ae6b@2025-04-09T09:09:27)" -> (2, 3, 2))."""
    match = _RELEASE.search(text or "")
    return tuple(int(p) for p in match.groups()) if match else None


def dotted(version: Release) -> str:
    return ".".join(map(str, version))


def sets() -> dict[str, dict]:
    """Release -> {"verify": pin of verify.npz, head name: pin of its .rknn, "merged": pin of the file
    with every head in one graph (and of its verify_merged.npz)}, oldest first."""
    found = load_manifest().get("rknn", {})
    return {v: found[v] for v in sorted(found, key=lambda v: release(v) or (0, 0, 0))}


def head_pins(version: str) -> dict[str, dict]:
    """Head name -> its pin in set `version`."""
    return {name: pin for name, pin in sets().get(version, {}).items() if name not in _NOT_HEADS}


def set_for(runtime: Release | None) -> str | None:
    """The set a runtime of release `runtime` loads: its own, else the newest older one; None if
    every set is newer (or the release is unknown)."""
    if runtime is None:
        return None
    usable = [v for v in sets() if release(v) <= runtime]
    exact = [v for v in usable if release(v) == runtime]
    return (exact or usable or [None])[-1]


def install_hint() -> str:
    """What to install when no set fits: the shipped releases and where the published one is."""
    return (f"install librknnrt {' or '.join(sets()) or PUBLISHED_RUNTIME} (e.g. "
            f"{RUNTIME_URL.format(version=PUBLISHED_RUNTIME)} as /usr/lib/librknnrt.so, docs/npu.md)")


def find(model: ModelInfo, version: str, batch: int | None = None) -> tuple[Path, dict] | None:
    """Set `version`'s cache entry for a built-in head, only if it was made from this very model
    file (an edited model has none: its file is stale) and its entry names the pinned .rknn."""
    pin = head_pins(version).get(model.name) if model.builtin else None
    if pin is None or pin["source_sha256"] != model.sha256 or batch not in (None, pin["batch"]):
        return None
    found = cache.find_entry(BUILTIN_RKNN_DIR / version, model, batch=pin["batch"])
    if found is None or (found[1].get("rknn_file"), found[1].get("rknn_sha256")) != (Path(pin["file"]).name,
                                                                                      pin["sha256"]):
        return None
    return found


def find_merged(version: str, models: list[ModelInfo]) -> tuple[Path, dict] | None:
    """Set `version`'s merged file and entry, if it holds every one of `models` (built-in, made
    from these very model files) and its entry names the pinned .rknn."""
    pin = sets().get(version, {}).get("merged")
    if pin is None or not models or any(not m.builtin or pin["source_sha256"].get(m.name) != m.sha256 for m in models):
        return None
    json_path = BUILTIN_DIR / Path(pin["file"]).with_suffix(".json")
    entry = cache.read_entry(json_path)
    if entry is None or (entry.get("rknn_file"), entry.get("rknn_sha256")) != (Path(pin["file"]).name, pin["sha256"]):
        return None
    return json_path, entry


def merged_verification(version: str, name: str) -> Verification | None:
    """Head `name`'s recorded inputs and the merged file's simulator scores for them."""
    pin = sets().get(version, {}).get("merged", {}).get("verify")
    path = BUILTIN_DIR / pin["file"] if pin else None
    if path is None or not path.is_file() or sha256_of(path) != pin["sha256"]:
        return None
    return read_verification(path, name)


@dataclass
class Verification:
    """Recorded inputs of one head ([R, window, 96]) and the simulator's scores for them ([R, n])."""

    windows: np.ndarray
    scores: np.ndarray


def verification(version: str, name: str) -> Verification | None:
    """What the backend runs a shipped head on at load; None when the set has no (intact) file."""
    pin = sets().get(version, {}).get("verify")
    path = BUILTIN_DIR / pin["file"] if pin else None
    if path is None or not path.is_file() or sha256_of(path) != pin["sha256"]:
        return None
    return read_verification(path, name)


def cached_verification(json_path: Path, entry: dict) -> Verification | None:
    """The rows a user's `convert --check` recorded beside its file, if intact (else None)."""
    name = entry.get("verify_file")
    path = Path(json_path).with_name(name) if name else None
    if path is None or not path.is_file() or sha256_of(path) != entry.get("verify_sha256"):
        return None
    with np.load(path) as data:
        return Verification(data["windows"], data["scores"])


def read_verification(path: Path, name: str) -> Verification | None:
    """Head `name`'s rows of a verify file (record_fixture's format: windows by start row)."""
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        if name not in meta["models"]:
            return None
        window = meta["models"][name]["window"]
        embeddings = data["embeddings"]
        windows = np.stack([embeddings[s : s + window] for s in data[f"{name}.starts"]])
        zero = np.zeros((1, window, embeddings.shape[1]), np.float32)
        return Verification(np.concatenate([windows, zero]),
                            np.concatenate([data[f"{name}.scores"], data[f"{name}.zero"][None]]))
