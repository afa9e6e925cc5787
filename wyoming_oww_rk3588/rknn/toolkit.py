"""rknn-toolkit2 as a subprocess: find its interpreter, hand `worker.py` a JSON job, read the result.

The toolkit pins numpy<=1.26 and onnx<=1.18, so it lives in its own venv (`.ci/install-rknn.sh`).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

PYTHON_ENV = "WYOMING_OWW_RKNN_PYTHON"
WORKER = Path(__file__).with_name("worker.py")
_REPO = Path(__file__).resolve().parents[2]


class ToolkitError(RuntimeError):
    """rknn-toolkit2 cannot be run; the message says how to install or point to it."""


def default_python() -> Path:
    """$WYOMING_OWW_RKNN_PYTHON, else <repo>/.venv-rknn/bin/python."""
    return Path(os.environ.get(PYTHON_ENV) or _REPO / ".venv-rknn" / "bin" / "python")


class Toolkit:
    def __init__(self, python: Path | str | None = None, timeout_s: float = 1800) -> None:
        self.python = Path(python) if python else default_python()
        self.timeout_s = timeout_s
        self._version: str | None = None
        if not self.python.exists():
            raise ToolkitError(
                f"rknn-toolkit2's Python not found at {self.python}; run .ci/install-rknn.sh, "
                f"or pass --toolkit-python / set {PYTHON_ENV}"
            )

    def version(self, workdir: Path) -> str:
        if self._version is None:
            self._version = self.run({"command": "version"}, workdir)["toolkit"]
        return self._version

    def run(self, job: dict, workdir: Path) -> dict:
        """Run one job in a fresh toolkit process; models it never reported come back failed."""
        workdir = Path(workdir)
        result_path = workdir / f"{job.get('command', 'build')}-result.json"
        job = dict(job, result=str(result_path))
        job_path = workdir / f"{job.get('command', 'build')}-job.json"
        job_path.write_text(json.dumps(job, indent=1))
        log_path = workdir / "worker.log"
        # The worker imports only the toolkit's own packages: keep ours off its path.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        with open(log_path, "ab") as log:
            try:
                proc = subprocess.run(
                    [str(self.python), str(WORKER), str(job_path)],
                    stdout=log, stderr=subprocess.STDOUT, env=env, timeout=self.timeout_s, check=False,
                )
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = f"timeout after {self.timeout_s:.0f} s"
        try:
            result = json.loads(result_path.read_text())
        except (OSError, ValueError):
            if job.get("command") == "version":
                tail = log_path.read_text(errors="replace")[-400:].strip().replace("\n", " | ")
                raise ToolkitError(f"rknn-toolkit2 in {self.python} does not run ({code}): {tail}") from None
            result = {"models": {}}
        for spec in job.get("models", []):
            result["models"].setdefault(spec["name"], {
                "status": "failed", "stage": "worker",
                "reason": f"the toolkit process ended ({code}) before reporting; see {log_path}",
            })
        return result
