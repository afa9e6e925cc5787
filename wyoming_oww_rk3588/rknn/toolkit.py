"""rknn-toolkit2 as a subprocess: find its interpreter, hand `worker.py` a JSON job, read the result.
The toolkit pins numpy<=1.26 and onnx<=1.18, so it usually lives in its own venv (`.ci/install-rknn.sh`)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .worker import log_problems

PYTHON_ENV = "WYOMING_OWW_RKNN_PYTHON"
WORKER = Path(__file__).with_name("worker.py")
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]
_HOW = ("install rknn-toolkit2 of your board's librknnrt release (2.3.2 or 2.5.0) in its own venv (docs/npu.md: "
        f".ci/install-rknn.sh [RELEASE] in a checkout), then pass --toolkit-python PATH or set {PYTHON_ENV}")


class ToolkitError(RuntimeError):
    """rknn-toolkit2 cannot be run; the message says how to install or point to it."""


def checkout_python() -> Path | None:
    """<repo>/.venv-rknn/bin/python when this package runs from a source checkout (never from
    site-packages, where the parent folder is not ours)."""
    if not (_PACKAGE_PARENT / "pyproject.toml").is_file():
        return None
    return _PACKAGE_PARENT / ".venv-rknn" / "bin" / "python"


def current_has_toolkit() -> bool:
    """Whether this interpreter can import rknn.api (found without importing it: that pulls in torch)."""
    try:
        return importlib.util.find_spec("rknn.api") is not None
    except (ImportError, ValueError):
        return False


def default_python() -> Path | None:
    """The toolkit's interpreter when none is given: $WYOMING_OWW_RKNN_PYTHON, else this Python if it
    has rknn.api, else the checkout's .venv-rknn; None when there is none of these."""
    if os.environ.get(PYTHON_ENV):
        return Path(os.environ[PYTHON_ENV])
    if current_has_toolkit():
        return Path(sys.executable)
    return checkout_python()


class Toolkit:
    def __init__(self, python: Path | str | None = None, timeout_s: float = 1800) -> None:
        """`python`: the toolkit's interpreter (--toolkit-python); default: `default_python()`."""
        found = Path(python) if python else default_python()
        self.timeout_s = timeout_s
        self._version: str | None = None
        if found is None:
            raise ToolkitError(f"rknn-toolkit2 not found: this Python ({sys.executable}) cannot import rknn.api "
                               f"and no toolkit Python is configured; {_HOW}")
        if not found.exists():
            raise ToolkitError(f"rknn-toolkit2's Python not found at {found}; {_HOW}")
        self.python = found

    def version(self, workdir: Path) -> str:
        if self._version is None:
            self._version = self.run({"command": "version"}, workdir)["toolkit"]
        return self._version

    def _spawn(self, job: dict, workdir: Path, attempt: int) -> tuple[dict | None, str]:
        """Run `job` in a fresh toolkit process: (its result JSON or None, how it ended)."""
        result_path = workdir / f"{job['command']}-{attempt}-result.json"
        job_path = workdir / f"{job['command']}-{attempt}-job.json"
        job_path.write_text(json.dumps(dict(job, result=str(result_path)), indent=1))
        # The worker imports only the toolkit's own packages: keep ours off its path.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        with open(workdir / "worker.log", "ab") as log:
            try:
                code = subprocess.run([str(self.python), str(WORKER), str(job_path)], stdout=log,
                                      stderr=subprocess.STDOUT, env=env, timeout=self.timeout_s).returncode
                ended = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            except subprocess.TimeoutExpired:
                ended = f"timed out after {self.timeout_s:.0f} s"
        try:
            return json.loads(result_path.read_text()), ended
        except (OSError, ValueError):
            return None, ended

    def run(self, job: dict, workdir: Path) -> dict:
        """Run a build job; a model that crashes the toolkit (it segfaults on some graphs) is
        reported failed and the models after it go on in a fresh process."""
        workdir = Path(workdir)
        job = dict(job, command=job.get("command", "build"))
        if job["command"] == "version":
            result, ended = self._spawn(job, workdir, 0)
            if result is None:
                tail = (workdir / "worker.log").read_text(errors="replace")[-400:].strip().replace("\n", " | ")
                raise ToolkitError(f"rknn-toolkit2 in {self.python} does not run ({ended}): {tail}")
            return result
        pending, reports, toolkit = list(job["models"]), {}, None
        for attempt in range(1, len(pending) + 1):
            result, ended = self._spawn(dict(job, models=pending), workdir, attempt)
            result = result or {"models": {}}
            toolkit = result.get("toolkit", toolkit)
            for name, report in result["models"].items():
                if report["status"] == "running":  # the model in hand when the process died
                    log = workdir / f"{name}.log"
                    problems = "; ".join(log_problems(log, warnings=False)) if log.exists() else ""
                    reason = f"{report['stage']} crashed rknn-toolkit2 ({ended})"
                    reason += f": {problems}" if problems else ""
                    report = {"status": "failed", "stage": report["stage"], "reason": reason}
                reports[name] = report
            pending = [spec for spec in pending if spec["name"] not in reports]
            if not pending:
                break
            if not result["models"]:  # died before its first model: no progress to be had
                break
        for spec in pending:
            reports[spec["name"]] = {"status": "failed", "stage": "worker",
                                     "reason": f"the rknn-toolkit2 process ended ({ended}) before this model"}
        return {"toolkit": toolkit, "models": reports}
