"""Model registry: names ("alexa", "ALEXA", "alexa_v0.1", "ok_nabu") -> ModelInfo.

Built-in files are pinned by sha256 in `builtin/manifest.json`; custom `.onnx`/`.tflite`
heads come from user directories. A name from outside is only ever a dictionary key:
it never becomes a path, so nothing outside the model directories can be reached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import BackendUnavailable, ModelError

_LOGGER = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).parent / "builtin"
_MANIFEST = BUILTIN_DIR / "manifest.json"
_VERSION_SUFFIX = re.compile(r"_v(\d+(?:\.\d+)*)$")
HEAD_SUFFIXES = (".onnx", ".tflite")


@dataclass(frozen=True)
class ModelInfo:
    """One wake-word head: where it is, what it expects and what it reports."""

    name: str  # canonical key, e.g. "alexa"
    stem: str  # file stem, e.g. "alexa_v0.1"
    path: Path
    sha256: str
    format: str  # "onnx" | "tflite"
    window: int  # embeddings per input window (16, 22, 34, ...)
    n_outputs: int
    #: Reported labels and the output column each one reads. Single-output heads report
    #: their own name; multi-class heads (timer) their class names, background excluded.
    labels: tuple[str, ...]
    label_columns: tuple[int, ...]
    version: str | None = None
    phrase: str = ""
    languages: tuple[str, ...] = ("en",)
    builtin: bool = False
    aliases: tuple[str, ...] = field(default=())


def normalize_name(name: str) -> str:
    """Case, spaces, dashes and a `_v0.1` version suffix do not matter in a model name."""
    key = re.sub(r"[\s\-]+", "_", str(name).strip().lower())
    return _VERSION_SUFFIX.sub("", key)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _labels_from_output_name(name: str, output_name: str, n_outputs: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if n_outputs == 1:
        return (name,), (0,)
    try:
        mapping = json.loads(output_name)
        columns = sorted(int(k) for k in mapping)
        return tuple(str(mapping[str(c)]) for c in columns), tuple(columns)
    except (ValueError, TypeError, AttributeError):
        return tuple(f"{name}_{i}" for i in range(n_outputs)), tuple(range(n_outputs))


def _onnx_shapes(path: Path) -> tuple[int, int, str]:
    """(window, n_outputs, output name) of an ONNX head, read without running it."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        dims = model.graph.input[0].type.tensor_type.shape.dim
        out = model.graph.output[0]
        out_dims = out.type.tensor_type.shape.dim
        window, width = int(dims[1].dim_value), int(dims[2].dim_value)
        n_outputs = int(out_dims[-1].dim_value)
    except Exception as err:  # noqa: BLE001 - any parse failure is a bad file
        raise ModelError(f"{path.name} is not a readable ONNX wake-word head ({err}); replace the file") from err
    if width != 96 or window <= 0 or n_outputs <= 0:
        raise ModelError(
            f"{path.name} expects input [1, {window}, {width}]; a head takes [1, window, 96] embeddings"
        )
    return window, n_outputs, out.name


def _tflite_shapes(path: Path) -> tuple[int, int, str]:
    from ..backends.tflite import tflite_head_shapes

    return tflite_head_shapes(path)


def read_head(path: Path, name: str | None = None, **extra) -> ModelInfo:
    """Build a ModelInfo for one head file (raises ModelError on a bad file)."""
    path = Path(path)
    stem = path.stem
    key = name or normalize_name(stem)
    version_match = _VERSION_SUFFIX.search(stem.lower())
    fmt = path.suffix.lower().lstrip(".")
    if fmt == "onnx":
        window, n_outputs, out_name = _onnx_shapes(path)
    elif fmt == "tflite":
        window, n_outputs, out_name = _tflite_shapes(path)
    else:
        raise ModelError(f"{path.name}: unsupported model format; use .onnx or .tflite")
    labels, columns = _labels_from_output_name(key, out_name, n_outputs)
    return ModelInfo(
        name=key,
        stem=stem,
        path=path,
        sha256=extra.pop("sha256", None) or sha256_of(path),
        format=fmt,
        window=window,
        n_outputs=n_outputs,
        labels=labels,
        label_columns=columns,
        version=version_match.group(1) if version_match else None,
        **extra,
    )


def load_manifest() -> dict:
    return json.loads(_MANIFEST.read_text())


def builtin_feature_path(key: str) -> Path:
    """Path of a built-in feature model ("melspectrogram", "embedding", "silero_vad"), checked."""
    entry = load_manifest()["features"][key]
    path = BUILTIN_DIR / entry["file"]
    if not path.is_file():
        raise ModelError(f"built-in model {entry['file']} is missing; reinstall wyoming-oww-rk3588")
    if sha256_of(path) != entry["sha256"]:
        raise ModelError(f"built-in model {entry['file']} fails its sha256 check; reinstall wyoming-oww-rk3588")
    return path


class ModelRegistry:
    """Every head this process can serve, by canonical name, built-ins first."""

    def __init__(self, custom_dirs: Sequence[Path | str] = (), include_builtin: bool = True) -> None:
        self.models: dict[str, ModelInfo] = {}
        self._aliases: dict[str, str] = {}
        if include_builtin:
            self._add_builtin()
        for directory in custom_dirs:
            self._add_directory(Path(directory))

    def _add(self, info: ModelInfo) -> None:
        if info.name in self.models:
            _LOGGER.warning(
                "Model %s from %s ignored: a model named %s is already loaded from %s",
                info.stem, info.path.parent, info.name, self.models[info.name].path.parent,
            )
            return
        self.models[info.name] = info
        for alias in (info.stem.lower(), *info.aliases):
            self._aliases.setdefault(normalize_name(alias), info.name)

    def _add_builtin(self) -> None:
        for key, entry in load_manifest()["heads"].items():
            path = BUILTIN_DIR / entry["file"]
            if not path.is_file():
                raise ModelError(f"built-in model {entry['file']} is missing; reinstall wyoming-oww-rk3588")
            if sha256_of(path) != entry["sha256"]:
                raise ModelError(
                    f"built-in model {entry['file']} fails its sha256 check; reinstall wyoming-oww-rk3588"
                )
            self._add(
                read_head(
                    path,
                    name=key,
                    sha256=entry["sha256"],
                    phrase=entry.get("phrase", ""),
                    languages=tuple(entry.get("languages", ["en"])),
                    aliases=tuple(entry.get("aliases", [])),
                    builtin=True,
                )
            )

    def _add_directory(self, directory: Path) -> None:
        if not directory.is_dir():
            _LOGGER.warning("Custom model directory %s does not exist; no custom models loaded from it", directory)
            return
        for path in sorted(directory.iterdir()):
            if path.suffix.lower() not in HEAD_SUFFIXES or not path.is_file():
                continue
            try:
                info = read_head(path, phrase=normalize_name(path.stem).replace("_", " ").title())
            except (ModelError, BackendUnavailable) as err:
                _LOGGER.error("Custom model %s skipped: %s", path.name, err)
                continue
            self._add(info)

    def names(self) -> list[str]:
        return list(self.models)

    def resolve(self, name: str) -> ModelInfo:
        """Look a client-given name up; raises ModelError naming it when unknown."""
        key = normalize_name(name)
        key = self._aliases.get(key, key)
        info = self.models.get(key)
        if info is None:
            raise ModelError(f"unknown wake word model {name!r}; known: {', '.join(self.models)}")
        return info

    def resolve_many(self, names: Iterable[str]) -> tuple[list[tuple[str, ModelInfo]], list[str]]:
        """(known (asked name, info) pairs without duplicates, unknown names)."""
        known: list[tuple[str, ModelInfo]] = []
        unknown: list[str] = []
        seen: set[str] = set()
        for name in names:
            try:
                info = self.resolve(name)
            except ModelError:
                unknown.append(str(name))
                continue
            if info.name not in seen:
                seen.add(info.name)
                known.append((str(name), info))
        return known, unknown
