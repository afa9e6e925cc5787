"""Pre-convert the built-in heads for the RK3588 NPU, one set per rknn-toolkit2 release, to ship in
the package (issues 14 and 20).

A librknnrt release rejects model files of a newer toolkit ("Invalid RKNN model version"), and the
runtime users can get (airockchip/rknn-toolkit2's published librknnrt.so) stops at 2.3.2: so the
package carries a set per runtime release, each made by that release's toolkit. Every head of
models/builtin/manifest.json at the runtime's batch (rknn/cache.py's DEFAULT_BATCH) is built,
exported and run in the toolkit's x86 simulator in one toolkit process (the simulator cannot run an
exported file), then compared with onnxruntime on the reference clips, seeded random windows and the
zero window. Only if every head is within 2e-2 and fires on the same clips are the files written to
models/builtin/rknn/<release>/ (the converter's cache format), with verify.npz (a few recorded
inputs per head and this build's simulator scores for them: the backend's check on load), and
pinned in the manifest's "rknn" section under the release. It also records the build's simulator
scores on every check row for the runtime tests' fake RKNNLite
(tests/fixtures/rknn/<release>/simulator_scores.npz). Rerun when a built-in model, the toolkit or
the converter's recipe changes (tests/test_rknn_builtin.py says when). Exits 1 if a head fails its
check, 2 without a toolkit.

Run from the repository root, once per toolkit venv (`.ci/install-rknn.sh [RELEASE]` makes them):
  python scripts/convert_builtin_rknn.py --toolkit-python .venv-rknn/bin/python        # 2.5.0
  python scripts/convert_builtin_rknn.py --toolkit-python .venv-rknn-2.3.2/bin/python  # 2.3.2
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
from wyoming_oww_rk3588.models.registry import sha256_of  # noqa: E402
from wyoming_oww_rk3588.rknn.check import (  # noqa: E402
    check_rows, clip_features, compare, default_clips_dir, record_fixture, reference_backend)
from wyoming_oww_rk3588.rknn.convert import Converter, convert_merged  # noqa: E402
from wyoming_oww_rk3588.rknn.toolkit import Toolkit, ToolkitError  # noqa: E402

MANIFEST = ROOT / "wyoming_oww_rk3588" / "models" / "builtin" / "manifest.json"
#: The runtime tests' fake RKNNLite answers with these scores: those of the shipped build.
FIXTURES = ROOT / "tests" / "fixtures" / "rknn"
#: Recorded rows per head in verify.npz: with the zero row, one NPU call at the batch of 32.
VERIFY_ROWS = cache.DEFAULT_BATCH - 1


def fixture_path(version: str) -> Path:
    return FIXTURES / version / "simulator_scores.npz"


def dump_manifest(manifest: dict) -> str:
    """The manifest's own layout: one line per model (per release and model in "rknn"), so a diff
    shows which model changed."""

    def dump(value, indent: int, depth: int) -> str:
        if not isinstance(value, dict) or depth == 0:
            return json.dumps(value)
        pad = "  " * (indent + 1)
        items = [f"{pad}{json.dumps(k)}: {dump(v, indent + 1, depth - 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"

    return "{\n" + ",\n".join(
        f"  {json.dumps(key)}: {dump(value, 1, 2 if key == 'rknn' else 1)}" for key, value in manifest.items()
    ) + "\n}\n"


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
        version = toolkit.version(Path(tmp))
        out_dir = builtin.BUILTIN_RKNN_DIR / version
        print(f"rknn-toolkit2 {version} ({toolkit.python}) -> {out_dir.relative_to(ROOT)}")
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
                "file": f"rknn/{version}/{entry['rknn_file']}", "sha256": entry["rknn_sha256"], "toolkit": entry["toolkit"],
                "platform": entry["platform"], "batch": entry["batch"], "recipe": entry["recipe"],
                "source_sha256": entry["source_sha256"],
                "check": {"clips": float(f"{head.max_error_real:.2g}"), "random": float(f"{head.max_error_random:.2g}"),
                          "zero": float(f"{head.zero_error:.2g}"), "fires_on": list(head.npu_detections)},
            }
            size = (Path(tmp) / entry["rknn_file"]).stat().st_size
            print(f"{model.name:<12} {size:>9}  {head.max_error_real:>7.1e} {head.max_error_random:>7.1e} "
                  f"{head.zero_error:>7.1e}  {','.join(head.npu_detections) or '-'}")
        # The same heads in one file: one NPU call per tick for all of them (backends/rknn.py).
        merged_entry, merged_scores = convert_merged(toolkit, Path(tmp) / "merged", models,
                                                     {m.name: rows[m.name].all for m in models})
        merged_checked, merged_worst = [], {}
        if merged_scores is None:
            failed.append(f"merged heads: {merged_entry['reason']}")
        else:
            for model in models:
                cpu = reference_backend(model).score(model, rows[model.name].all)
                head = compare(model, rows[model.name], merged_scores[model.name], cpu)
                if not head.ok:
                    failed.append(f"{model.name} in the merged file: off by more than 2e-2 or fires on other clips")
                merged_worst[model.name] = float(f"{max(head.max_error_real, head.max_error_random, head.zero_error):.2g}")
                merged_checked.append((model, merged_scores[model.name]))
            print(f"merged file ({merged_entry['rknn_file']}, "
                  f"{(Path(tmp) / 'merged' / merged_entry['rknn_file']).stat().st_size} bytes): largest difference "
                  + ", ".join(f"{name} {worst:.1e}" for name, worst in merged_worst.items()))
        if failed:
            print("error: nothing written; " + "; ".join(failed), file=sys.stderr)
            return 1
        shutil.rmtree(out_dir, ignore_errors=True)  # files of an older build or recipe of this release go
        out_dir.mkdir(parents=True)
        for res in results:
            for suffix in (".rknn", ".json"):
                name = Path(res.entry["rknn_file"]).with_suffix(suffix).name
                shutil.copy(Path(tmp) / name, out_dir / name)
        for suffix in (".rknn", ".json"):
            name = Path(merged_entry["rknn_file"]).with_suffix(suffix).name
            shutil.copy(Path(tmp) / "merged" / name, out_dir / name)
    meta = {"toolkit": version, "platform": cache.PLATFORM, "batch": cache.DEFAULT_BATCH}
    verify = out_dir / builtin.VERIFY_FILE
    record_fixture(verify, clips, checked, meta, rows=VERIFY_ROWS)
    verify_merged = out_dir / builtin.VERIFY_MERGED_FILE
    record_fixture(verify_merged, clips, merged_checked, meta, rows=VERIFY_ROWS)
    merged_pin = {
        "file": f"rknn/{version}/{merged_entry['rknn_file']}", "sha256": merged_entry["rknn_sha256"],
        "heads": merged_entry["heads"], "toolkit": version, "platform": cache.PLATFORM, "batch": cache.DEFAULT_BATCH,
        "recipe": merged_entry["recipe"], "source_sha256": merged_entry["source_sha256"], "check": merged_worst,
        "verify": {"file": f"rknn/{version}/{builtin.VERIFY_MERGED_FILE}", "sha256": sha256_of(verify_merged)},
    }
    manifest = load_manifest()
    sets = {v: p for v, p in manifest.get("rknn", {}).items() if builtin.release(v)}  # older layouts go
    sets[version] = {"verify": {"file": f"rknn/{version}/{builtin.VERIFY_FILE}", "sha256": sha256_of(verify)},
                     **{name: pins[name] for name in manifest["heads"]}, "merged": merged_pin}
    manifest["rknn"] = {v: sets[v] for v in sorted(sets, key=builtin.release)}
    MANIFEST.write_text(dump_manifest(manifest))
    record_fixture(fixture_path(version), clips, checked, meta)
    record_fixture(fixture_path(version).with_name("merged_scores.npz"), clips, merged_checked, meta)
    print(f"recorded the build's simulator scores in {fixture_path(version).relative_to(ROOT)}")
    total = sum(p.stat().st_size for p in out_dir.glob("*.rknn"))
    print(f"wrote {len(pins)} heads and {verify.name} ({verify.stat().st_size} bytes) to "
          f"{out_dir.relative_to(ROOT)} ({total / 1e6:.1f} MB) and pinned them in {MANIFEST.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
