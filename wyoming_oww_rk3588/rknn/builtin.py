"""The built-in heads, pre-converted for the RK3588 NPU and shipped in the package, so a board with
the NPU runtime runs them with no conversion step. `scripts/convert_builtin_rknn.py` makes them in
the converter's cache format (models/builtin/rknn/) and pins each in models/builtin/manifest.json
(section "rknn": the .rknn's sha256, the toolkit, the source model's sha256, the simulator check).
Users' own heads are converted into their cache as before."""

from __future__ import annotations

from pathlib import Path

from ..models.registry import BUILTIN_DIR, ModelInfo, load_manifest
from . import cache

BUILTIN_RKNN_DIR = BUILTIN_DIR / "rknn"
#: The rknn-toolkit2 release the shipped files come from (.ci/install-rknn.sh installs the same);
#: a board needs librknnrt.so of this release or newer.
TOOLKIT_VERSION = "2.5.0"


def pins() -> dict[str, dict]:
    """Head name -> its shipped .rknn's pin from the manifest."""
    return load_manifest().get("rknn", {})


def find(model: ModelInfo, batch: int | None = None) -> tuple[Path, dict] | None:
    """The shipped cache entry for a built-in head, only if it was made from this very model file
    (an edited model has none: its file is stale) and its entry names the pinned .rknn."""
    pin = pins().get(model.name) if model.builtin else None
    if pin is None or pin["source_sha256"] != model.sha256 or batch not in (None, pin["batch"]):
        return None
    found = cache.find_entry(BUILTIN_RKNN_DIR, model, batch=pin["batch"])
    if found is None or (found[1].get("rknn_file"), found[1].get("rknn_sha256")) != (Path(pin["file"]).name,
                                                                                      pin["sha256"]):
        return None
    return found
