"""The main job's wall time on this machine: `mobile-vla demo` with its default plan, from an empty cache.

    python benchmarks/demo_time.py                       # run the full demo (about 9-10 minutes on 2 idle cores)
    python benchmarks/demo_time.py --out DIR             # keep the demo's output (report, runs) in DIR
    python benchmarks/demo_time.py --summary OUT/demo_summary.json   # record a demo that already ran

The run uses a fresh feature cache (`MOBILE_VLA_CACHE` in a temporary directory, so the backbone encodes
every frame and the vision tower is exported to ONNX anew, as on a new machine) and a temporary output
directory (or `--out`). Writes benchmarks/results/demo.json: the total seconds, each stage's seconds, each case's training
seconds, epochs and closed-loop success with its n and Wilson interval, and the machine (its load average at
the start says how shared it was). The target is at most 15 minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from common import machine, write_result


def record(summary: dict[str, Any]) -> dict[str, Any]:
    cases = {
        name: {
            "train_seconds": case.get("train_seconds"),
            "epochs": case.get("epochs"),
            "closed_loop_success": case.get("closed_loop_success"),
            "closed_loop_ci95": case.get("closed_loop_interval"),
            "closed_loop_n": case.get("closed_loop_n"),
        }
        for name, case in summary["cases"].items()
    }
    return {
        "seconds": summary["seconds"],
        "minutes": round(summary["seconds"] / 60, 1),
        "stages_s": summary.get("stages", {}),
        "cases": cases,
        "expert_closed_loop_success": summary.get("expert_closed_loop_success"),
        "champion": (summary.get("champion") or {}).get("name"),
        "plan": {
            k: summary["plan"].get(k) for k in ("episodes", "closed_loop_episodes", "epochs", "workers")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--summary", type=Path, help="a finished demo's demo_summary.json instead of a new run"
    )
    parser.add_argument(
        "--out", type=Path, help="keep the demo's output here (default: a temporary directory)"
    )
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine()}
    if args.summary:
        summary = json.loads(args.summary.read_text())
        result["source"] = str(args.summary)
    else:
        with tempfile.TemporaryDirectory(prefix="mobile-vla-demo-") as tmp:
            os.environ["MOBILE_VLA_CACHE"] = str(Path(tmp) / "cache")
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            from mobile_vla.demo import run_demo

            summary = run_demo(args.out or Path(tmp) / "demo_out", progress=False)
        result["source"] = "run by this script (fresh cache)"
    result.update(record(summary))
    print(f"demo: {result['seconds']:.0f} s ({result['minutes']} min); stages {result['stages_s']}")
    for name, case in result["cases"].items():
        print(f"  {name}: trained {case['train_seconds']} s, {case['epochs']} epochs, closed loop "
              f"{case['closed_loop_success']} {case['closed_loop_ci95']} (n={case['closed_loop_n']})")  # fmt: skip
    write_result("demo.json", result)


if __name__ == "__main__":
    main()
