"""Custom verifier models: openWakeWord's per-user logistic regression on a head's embedding window,
kept as plain arrays in a `.verifier.npz` file, and the converter from openWakeWord's pickles:
`python -m wyoming_oww_rk3588.verifier convert in.pkl out.verifier.npz` (trusted input only)."""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import ModelError
from .features import EMBEDDING_DIM
from .models.registry import ModelInfo, normalize_name

_LOGGER = logging.getLogger(__name__)

VERIFIER_SUFFIX = ".verifier.npz"
DEFAULT_VERIFIER_THRESHOLD = 0.1  # openWakeWord's `custom_verifier_threshold`
CONVERT_HINT = "convert it with `python -m wyoming_oww_rk3588.verifier convert IN.pkl OUT.verifier.npz`"
_KEYS = ("window", "mean", "scale", "coef", "intercept")


@dataclass(frozen=True)
class Verifier:
    """flatten -> StandardScaler -> binary LogisticRegression, as openWakeWord's pipeline computes it."""

    window: int  # embeddings per input: the head's window
    mean: np.ndarray  # [window * 96] float64 (zeros: no centring)
    scale: np.ndarray  # [window * 96] float64 (ones: no scaling)
    coef: np.ndarray  # [window * 96] float64
    intercept: float

    def probability(self, windows: np.ndarray) -> np.ndarray:
        """[B, window, 96] float32 embeddings -> [B] probability of the wake word (float64)."""
        x = np.asarray(windows, np.float32).reshape(len(windows), -1)
        # StandardScaler keeps float32 input in float32 (in-place `X -= mean_; X /= scale_`).
        x = (x - self.mean).astype(np.float32)
        x = (x / self.scale).astype(np.float32)
        z = x @ self.coef + self.intercept  # float64, as LogisticRegression's decision function
        return np.exp(-np.logaddexp(0.0, -z))  # expit, without overflow for large |z|

    def rescore(self, scores: np.ndarray, windows: np.ndarray, columns: tuple[int, ...], threshold: float) -> np.ndarray:
        """openWakeWord's rule: every label scoring >= threshold gets the verifier's probability
        instead. scores [B, outputs]; returns float64 scores (unchanged rows as they were)."""
        # openWakeWord compares float32 scores with a Python float: float32 under numpy 2 (NEP 50).
        picked = scores[:, list(columns)] >= np.float32(threshold)
        rows = np.flatnonzero(picked.any(axis=1))
        out = scores.astype(np.float64)
        if len(rows):
            probability = self.probability(windows[rows])
            block = out[np.ix_(rows, columns)]
            out[np.ix_(rows, columns)] = np.where(picked[rows], probability[:, None], block)
        return out


def save_verifier(verifier: Verifier, path: Path) -> None:
    with open(path, "wb") as handle:  # a file object, so numpy adds no `.npz` to the name
        np.savez(handle, window=np.int64(verifier.window), mean=verifier.mean, scale=verifier.scale,
                 coef=verifier.coef, intercept=np.float64(verifier.intercept))


def load_verifier(path: Path) -> Verifier:
    """Read a `.verifier.npz` (never a pickle); ModelError saying what is wrong otherwise."""
    path = Path(path)
    if path.suffix.lower() in (".pkl", ".pickle", ".joblib"):
        raise ModelError(f"{path.name} is a pickled verifier, which is never loaded at run time; {CONVERT_HINT}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in _KEYS}
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"{path.name} is not a verifier file ({err}); {CONVERT_HINT}") from None
    window, size = int(arrays["window"]), int(arrays["coef"].size)
    if window < 1 or size != window * EMBEDDING_DIM or any(arrays[k].size != size for k in ("mean", "scale")):
        raise ModelError(f"{path.name}: arrays do not fit a {window}-embedding window; {CONVERT_HINT}")
    values = [arrays[k].astype(np.float64).reshape(-1) for k in ("mean", "scale", "coef", "intercept")]
    if not all(np.isfinite(v).all() for v in values) or not (values[1] != 0).all():
        raise ModelError(f"{path.name}: non-finite or zero-scale values; {CONVERT_HINT}")
    return Verifier(window, values[0], values[1], values[2], float(values[3][0]))


def find_verifier_files(directories: Iterable[Path]) -> dict[str, Path]:
    """`NAME.verifier.npz` files beside custom models, by model name (first directory wins)."""
    found: dict[str, Path] = {}
    for directory in directories:
        if not Path(directory).is_dir():
            continue
        for path in sorted(Path(directory).iterdir()):
            if path.name.lower().endswith(VERIFIER_SUFFIX) and path.is_file():
                found.setdefault(normalize_name(path.name[: -len(VERIFIER_SUFFIX)]), path)
            elif path.suffix.lower() == ".pkl":
                _LOGGER.warning("%s is not loaded: pickled verifiers never are; %s", path.name, CONVERT_HINT)
    return found


def bind_verifiers(paths: dict[str, Path], resolve: Callable[[str], ModelInfo]) -> dict[str, Verifier]:
    """{model name: verifier file} -> {canonical model name: Verifier}, each checked against its head."""
    bound: dict[str, Verifier] = {}
    for name, path in paths.items():
        info = resolve(name)  # ModelError for an unknown model
        verifier = load_verifier(Path(path))
        if verifier.window != info.window:
            raise ModelError(f"verifier {Path(path).name} takes {verifier.window} embeddings but model "
                             f"{info.name} has a {info.window}-embedding window; train it for {info.name}")
        bound[info.name] = verifier
    return bound


# The converter: the only place that unpickles, and only what openWakeWord's pickle holds. -------

def flatten_features(x):
    """Stands in for openwakeword.custom_verifier_model.flatten_features while reading a pickle."""
    return [i.flatten() for i in x]


class _Recorded:
    """Stands in for a scikit-learn class while reading a pickle: keeps its state, runs no code."""

    def __setstate__(self, state: dict) -> None:
        self.state = dict(state)


_SKLEARN = {"Pipeline", "FunctionTransformer", "StandardScaler", "LogisticRegression"}
_NUMPY = {"ndarray", "dtype", "_reconstruct", "scalar", "_frombuffer"}
_NUMPY_MODULES = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                  "numpy._core.numeric"}


class _VerifierUnpickler(pickle.Unpickler):
    """Only numpy arrays, four scikit-learn class names (as inert records) and openWakeWord's
    flatten function resolve; anything else in the file is refused."""

    def find_class(self, module: str, name: str):
        if module.startswith("sklearn.") and name in _SKLEARN:
            return type(name, (_Recorded,), {})
        if module in _NUMPY_MODULES and name in _NUMPY:
            return super().find_class(module, name)
        if (module, name) == ("openwakeword.custom_verifier_model", "flatten_features"):
            return flatten_features
        raise ModelError(f"the pickle holds {module}.{name}, which an openWakeWord verifier does not; not converted")


def verifier_from_pickle(path: Path) -> Verifier:
    """openWakeWord's train_custom_verifier output (flatten, StandardScaler, LogisticRegression)."""
    with open(path, "rb") as handle:
        try:
            model = _VerifierUnpickler(handle).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as err:
            raise ModelError(f"{Path(path).name} is not a readable verifier pickle ({err})") from None
    steps = [s for _, s in model.state.get("steps", [])] if isinstance(model, _Recorded) else []
    kinds = [type(s).__name__ for s in steps]
    if kinds not in (["FunctionTransformer", "StandardScaler", "LogisticRegression"],
                     ["FunctionTransformer", "LogisticRegression"]) or steps[0].state.get("func") is not flatten_features:
        raise ModelError(f"{Path(path).name}: expected openWakeWord's pipeline (flatten_features, StandardScaler, "
                         f"LogisticRegression), found {kinds or type(model).__name__}")
    lr = steps[-1].state
    coef, classes = np.asarray(lr["coef_"], np.float64), np.asarray(lr["classes_"])
    if coef.shape[0] != 1 or len(classes) != 2 or coef.shape[1] % EMBEDDING_DIM:
        raise ModelError(f"{Path(path).name}: not a binary classifier on whole embedding windows")
    size = coef.shape[1]
    scaler = steps[1].state if len(steps) == 3 else {}
    mean = scaler.get("mean_") if scaler.get("with_mean", False) else None
    scale = scaler.get("scale_") if scaler.get("with_std", False) else None
    return Verifier(
        window=size // EMBEDDING_DIM,
        mean=np.zeros(size) if mean is None else np.asarray(mean, np.float64).reshape(size),
        scale=np.ones(size) if scale is None else np.asarray(scale, np.float64).reshape(size),
        coef=coef.reshape(size),
        intercept=float(np.asarray(lr.get("intercept_", 0.0), np.float64).reshape(-1)[0]),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wyoming_oww_rk3588.verifier", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="openWakeWord verifier pickle -> .verifier.npz "
                                  "(unpickles: run it only on files you trust)")
    convert.add_argument("source", type=Path, help="openWakeWord's verifier .pkl (train_custom_verifier output)")
    convert.add_argument("target", type=Path, help=f"output file, e.g. NAME{VERIFIER_SUFFIX} beside the model")
    args = parser.parse_args(argv)
    try:
        verifier = verifier_from_pickle(args.source)
        save_verifier(verifier, args.target)
    except (ModelError, OSError) as err:
        sys.stderr.write(f"convert: {err}\n")
        return 2
    print(f"{args.target}: verifier for a {verifier.window}-embedding window")
    return 0


if __name__ == "__main__":
    sys.exit(main())
