"""The .rknn cache shared by converter (writes) and NPU backend (reads): content-hash keys, atomic
writes, fcntl locks. An entry is a JSON file renamed into place after its .rknn, so a reader that
sees the entry sees a whole file."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

from ..models.registry import ModelInfo, sha256_of

_LOGGER = logging.getLogger(__name__)

PLATFORM = "rk3588"
#: Rows per NPU call. One call per head covers a house full of satellites (<= 32 streams);
#: padding is cheap next to the per-call overhead (see docs/npu.md), and 256 streams take 8 calls.
DEFAULT_BATCH = 32
#: Bump when the graph preparation changes, so old files are not reused (2: Gemm as MatMul + Add).
RECIPE = 2
ENTRY_FORMAT = 1
CACHE_ENV = "WYOMING_OWW_RKNN_CACHE"


def default_cache_dir() -> Path:
    """$WYOMING_OWW_RKNN_CACHE, else $XDG_CACHE_HOME (or ~/.cache)/wyoming_oww_rk3588/rknn."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wyoming_oww_rk3588" / "rknn"


def cache_key(source_sha256: str, toolkit: str, platform: str, batch: int) -> str:
    text = json.dumps([source_sha256, toolkit, platform, int(batch), RECIPE])
    return hashlib.sha256(text.encode()).hexdigest()


def entry_paths(cache_dir: Path, model: ModelInfo, key: str) -> tuple[Path, Path]:
    """(.json entry, .rknn file) for one model and key."""
    base = f"{model.stem}.{key[:16]}"
    return Path(cache_dir) / f"{base}.json", Path(cache_dir) / f"{base}.rknn"


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes 0600 files; the server may run as another user than the converter.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_entry(json_path: Path, entry: dict, rknn_bytes: bytes | None = None) -> dict:
    """Store a conversion result: the .rknn first (if any), then its entry."""
    entry = dict(entry, format=ENTRY_FORMAT)
    if rknn_bytes is not None:
        rknn_path = json_path.with_suffix(".rknn")
        write_atomic(rknn_path, rknn_bytes)
        entry.update(rknn_file=rknn_path.name, rknn_sha256=hashlib.sha256(rknn_bytes).hexdigest())
    write_atomic(json_path, json.dumps(entry, indent=1, sort_keys=True).encode())
    return entry


def read_entry(json_path: Path) -> dict | None:
    """The entry, or None when absent or unreadable (a broken entry is rebuilt, never trusted)."""
    try:
        entry = json.loads(Path(json_path).read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and entry.get("format") == ENTRY_FORMAT else None


def rknn_problem(json_path: Path, entry: dict) -> str | None:
    """None when an `ok` entry's .rknn is present and matches its sha256, else what is wrong."""
    rknn_path = Path(json_path).with_name(entry.get("rknn_file", ""))
    if not entry.get("rknn_file") or not rknn_path.is_file():
        return f"{rknn_path.name or 'its .rknn file'} is missing"
    if sha256_of(rknn_path) != entry.get("rknn_sha256"):
        return f"{rknn_path.name} is corrupt (sha256 mismatch)"
    return None


def toolkit_release(entry: dict) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in str(entry.get("toolkit", "")).split("."))


def find_entry(cache_dir: Path, model: ModelInfo, platform: str = PLATFORM,
               batch: int | None = None, max_toolkit: tuple[int, ...] | None = None) -> tuple[Path, dict] | None:
    """The best entry for `model` (same source sha256, platform and, if given, batch; with
    `max_toolkit`, only files a runtime of that release loads: toolkit not newer): a converted
    one first, then the newest toolkit and file; None if never converted."""
    found = []
    for json_path in sorted(Path(cache_dir).glob("*.json")):
        entry = read_entry(json_path)
        if (entry and entry.get("source_sha256") == model.sha256 and entry.get("platform") == platform
                and batch in (None, entry.get("batch"))
                and (max_toolkit is None or toolkit_release(entry) <= tuple(max_toolkit))):
            found.append((json_path, entry))
    if not found:
        return None

    def rank(item):
        entry = item[1]
        return (entry.get("status") == "ok", toolkit_release(entry), entry.get("created", ""))

    return max(found, key=rank)


@contextlib.contextmanager
def locked(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive fcntl lock on `path` (created if needed); logs once if it must wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _LOGGER.info("Waiting for another process converting %s", what)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
