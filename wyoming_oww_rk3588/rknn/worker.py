"""Runs in rknn-toolkit2's own venv, never the server's: `<toolkit python> worker.py JOB.json` builds,
exports and simulates the job's prepared heads; its result JSON is rewritten at every stage, so a
toolkit crash loses only the model in hand, and says where."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

# Printed by every build of rknn-toolkit2 2.5.0, which then succeeds: not a failure.
_HARMLESS = ("Unkown op target: 0",)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def toolkit_version() -> str:
    from importlib.metadata import version

    return version("rknn-toolkit2")


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1)
    os.replace(tmp, path)


@contextlib.contextmanager
def _captured(log_path: Path):
    """Send this process's fds 1 and 2 (the toolkit's C and Python logs) to `log_path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "wb") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def log_problems(log_path: Path, warnings: bool = True) -> list[str]:
    """The toolkit's last error lines, else its first warnings (a missing tensorflow is only one)."""
    lines = [line.strip() for line in _ANSI.sub("", log_path.read_text(errors="replace")).splitlines()
             if not any(h in line for h in _HARMLESS)]
    errors = [line for line in lines if line.startswith("E ")]
    return errors[-3:] or ([line for line in lines if line.startswith("W ")][:2] if warnings else [])


def _simulate(rknn, inputs_path: str, outputs_path: str, batch: int, data_format: str | None) -> None:
    """Run the input rows through the simulator a batch at a time: `windows` for a head, or
    `windows_0`, `windows_1`, ... (same row count) for a merged file's inputs, in its input order;
    writes `scores` (or `scores_0`, ...) with the rows as given."""
    import numpy as np

    data = np.load(inputs_path)
    keys = ["windows"] if "windows" in data.files else [f"windows_{i}" for i in range(len(data.files))]
    inputs = [data[k] for k in keys]
    rows = len(inputs[0])
    if rows % batch or any(len(x) != rows for x in inputs):
        raise ValueError(f"input rows {[len(x) for x in inputs]} are not one multiple of the batch {batch}")
    outputs: list[list] = [[] for _ in inputs]
    for start in range(0, rows, batch):
        # The same call as the board's (backends/rknn.py): no data_format for the 3-D input.
        args = {} if data_format is None else {"data_format": data_format}
        out = rknn.inference(inputs=[x[start : start + batch] for x in inputs], **args)
        if out is None or len(out) != len(inputs):
            raise RuntimeError(f"inference returned {None if out is None else len(out)} outputs")
        for kept, result in zip(outputs, out):
            kept.append(np.asarray(result, np.float32).reshape(batch, -1))
    names = ["scores"] if keys == ["windows"] else [f"scores_{i}" for i in range(len(keys))]
    np.savez(outputs_path, **{name: np.concatenate(kept) for name, kept in zip(names, outputs)})


def run_model(spec: dict, job: dict, log_path: Path, progress=lambda stage: None) -> dict:
    """Load, build, export (if asked) and simulate (if asked) one model; never raises.
    `progress(stage)` is told each stage first, so a crash of the toolkit can be placed."""
    from rknn.api import RKNN

    stage = "load"
    progress(stage)
    rknn = RKNN(verbose=False)
    try:
        with _captured(log_path):
            if rknn.config(target_platform=job["platform"]) != 0:
                raise RuntimeError("config returned an error")
            if spec["format"] == "tflite":
                ret = rknn.load_tflite(model=spec["source"])
                build_args = {"rknn_batch_size": job["batch"]}  # tflite heads keep their batch of 1
            else:
                ret = rknn.load_onnx(model=spec["source"])
                build_args = {}  # the prepared ONNX already has the fixed batch
            if ret != 0:
                raise RuntimeError(f"load returned {ret}")
            stage = "build"
            progress(stage)
            # fp16 throughout: quantizing would need a calibration set and loses the 2e-2 budget.
            ret = rknn.build(do_quantization=False, **build_args)
            if ret != 0:
                raise RuntimeError(f"build returned {ret}")
            if spec.get("export"):
                stage = "export"
                progress(stage)
                if rknn.export_rknn(spec["export"]) != 0:
                    raise RuntimeError("export_rknn returned an error")
            if spec.get("inputs"):
                stage = "simulate"
                progress(stage)
                # No target: the x86 simulator, which only runs a model built in this process.
                if rknn.init_runtime() != 0:
                    raise RuntimeError("init_runtime (simulator) returned an error")
                _simulate(rknn, spec["inputs"], spec["outputs"], job["batch"], job.get("data_format"))
        return {"status": "ok", "log": str(log_path)}
    except Exception as err:  # noqa: BLE001 - the toolkit raises anything; report it, go on
        detail = "; ".join(log_problems(log_path)) if log_path.exists() else ""
        reason = f"{stage} failed: {err}" + (f" ({detail})" if detail else "")
        return {"status": "failed", "stage": stage, "reason": reason, "log": str(log_path)}
    finally:
        with contextlib.suppress(Exception):
            rknn.release()


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    result_path = Path(job["result"])
    result = {"toolkit": toolkit_version(), "models": {}}
    if job.get("command") == "version":
        _write_json(result_path, result)
        return 0
    for spec in job["models"]:
        name = spec["name"]

        def progress(stage: str) -> None:
            result["models"][name] = {"status": "running", "stage": stage}
            _write_json(result_path, result)

        result["models"][name] = run_model(spec, job, result_path.with_name(f"{name}.log"), progress)
        _write_json(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
