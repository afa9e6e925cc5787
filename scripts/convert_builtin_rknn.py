"""Pre-convert the built-in heads for the RK3588 NPU, to ship in the package (issue 14).

Every head of models/builtin/manifest.json at the runtime's batch (rknn/cache.py's DEFAULT_BATCH)
is built, exported and run in rknn-toolkit2's x86 simulator in one toolkit process (the simulator
cannot run an exported file), then compared with onnxruntime on the reference clips, seeded
random windows and the zero window. Only if every head is within 2e-2 and fires on the same clips
are the files written to models/builtin/rknn/ (the converter's cache format) and pinned in the
manifest's "rknn" section with the toolkit, the source model's sha256 and the check figures.
It also records the shipped build's simulator scores for the runtime tests' fake RKNNLite
(tests/fixtures/rknn/simulator_scores.npz). Rerun when a built-in model, the toolkit or the
converter's recipe changes (tests/test_rknn_builtin.py says when). Exits 1 if a head fails its
check, 2 without a toolkit.

Run from the repository root: `python scripts/convert_builtin_rknn.py [--toolkit-python PATH]`
(default: as `python -m wyoming_oww_rk3588.rknn convert`, e.g. the checkout's .venv-rknn).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wyoming_oww_rk3588.models.registry import ModelRegistry, load_manifest  # noqa: E402
from wyoming_oww_rk3588.rknn import builtin, cache  # noqa: E402
from wyoming_oww_rk3588.rknn.check import (  # noqa: E402
    check_rows, clip_features, compare, default_clips_dir, record_fixture, reference_backend)
from wyoming_oww_rk3588.rknn.convert import Converter  # noqa: E402
from wyoming_oww_rk3588.rknn.toolkit import Toolkit, ToolkitError  # noqa: E402

MANIFEST = ROOT / "wyoming_oww_rk3588" / "models" / "builtin" / "manifest.json"
#: The runtime tests' fake RKNNLite answers with these scores: those of the shipped build.
FIXTURE = ROOT / "tests" / "fixtures" / "rknn" / "simulator_scores.npz"


def dump_manifest(manifest: dict) -> str:
    """The manifest's own layout: one line per model, so a diff shows which model changed."""
    out = ["{"]
    sections = list(manifest.items())
    for i, (key, value) in enumerate(sections):
        comma = "," if i < len(sections) - 1 else ""
        if not isinstance(value, dict):
            out.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
            continue
        out.append(f"  {json.dumps(key)}: {{")
        items = list(value.items())
        for j, (name, entry) in enumerate(items):
            out.append(f"    {json.dumps(name)}: {json.dumps(entry)}{',' if j < len(items) - 1 else ''}")
        out.append(f"  }}{comma}")
    out.append("}")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toolkit-python", type=Path, default=None, help="python of rknn-toolkit2's venv")
    args = parser.parse_args()
    try:
        toolkit = Toolkit(args.toolkit_python)
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    models = [m for m in ModelRegistry().models.values() if m.builtin]
    clips = clip_features(default_clips_dir())
    rows = {m.name: check_rows(m, clips) for m in models}
    with tempfile.TemporaryDirectory(prefix="rknn-builtin-") as tmp:
        converter = Converter(Path(tmp), toolkit, batch=cache.DEFAULT_BATCH)
        results = converter.convert(models, {name: r.all for name, r in rows.items()}, force=True)
        pins, failed, checked = {}, [], []
        print(f"{'head':<12} {'size':>9}  {'clips':>7} {'random':>7} {'zero':>7}  fires on (cpu = npu)")
        for res in results:
            model = res.model
            if res.action != "converted" or res.scores is None:
                failed.append(f"{model.name}: {res.entry.get('reason') or res.check_error}")
                continue
            cpu = reference_backend(model).score(model, rows[model.name].all)
            head = compare(model, rows[model.name], res.scores, cpu)
            if not head.ok:
                failed.append(f"{model.name}: off by more than 2e-2 or fires on other clips ({head})")
                continue
            entry = res.entry
            checked.append((model, res.scores))
            pins[model.name] = {
                "file": f"rknn/{entry['rknn_file']}", "sha256": entry["rknn_sha256"], "toolkit": entry["toolkit"],
                "platform": entry["platform"], "batch": entry["batch"], "recipe": entry["recipe"],
                "source_sha256": entry["source_sha256"],
                "check": {"clips": float(f"{head.max_error_real:.2g}"), "random": float(f"{head.max_error_random:.2g}"),
                          "zero": float(f"{head.zero_error:.2g}"), "fires_on": list(head.npu_detections)},
            }
            size = (Path(tmp) / entry["rknn_file"]).stat().st_size
            print(f"{model.name:<12} {size:>9}  {head.max_error_real:>7.1e} {head.max_error_random:>7.1e} "
                  f"{head.zero_error:>7.1e}  {','.join(head.npu_detections) or '-'}")
        if failed:
            print("error: nothing written; " + "; ".join(failed), file=sys.stderr)
            return 1
        shutil.rmtree(builtin.BUILTIN_RKNN_DIR, ignore_errors=True)  # files of an older toolkit or recipe go
        builtin.BUILTIN_RKNN_DIR.mkdir()
        for res in results:
            for suffix in (".rknn", ".json"):
                name = Path(res.entry["rknn_file"]).with_suffix(suffix).name
                shutil.copy(Path(tmp) / name, builtin.BUILTIN_RKNN_DIR / name)
    manifest = load_manifest()
    manifest["rknn"] = {name: pins[name] for name in manifest["heads"]}
    MANIFEST.write_text(dump_manifest(manifest))
    record_fixture(FIXTURE, clips, checked,
                   {"toolkit": results[0].entry["toolkit"], "platform": cache.PLATFORM, "batch": cache.DEFAULT_BATCH})
    print(f"recorded the shipped build's simulator scores in {FIXTURE.relative_to(ROOT)}")
    total = sum(p.stat().st_size for p in builtin.BUILTIN_RKNN_DIR.glob("*.rknn"))
    print(f"wrote {len(pins)} heads to {builtin.BUILTIN_RKNN_DIR.relative_to(ROOT)} ({total / 1e6:.1f} MB) "
          f"and pinned them in {MANIFEST.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
