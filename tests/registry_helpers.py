"""Run directories as `mobile-vla train` / `evaluate` / `sim evaluate` write them, and cheap fresh MLflow stores.

The registry is built against the run-directory contract (docs/CONTRACTS.md), so its tests write realistic
run directories themselves: config.json in the trainer's layout, metrics.jsonl, summary.json,
eval_{split}.json in `metrics_with_intervals`' shape, predictions_{split}.npz, best.safetensors.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

AXES = ("linear_x", "linear_y")


@functools.lru_cache(maxsize=1)
def _template_db() -> Path:
    """A migrated, empty MLflow SQLite database, made once per test process (creating one takes seconds)."""
    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
    db = folder / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments(max_results=1)
    return db


def fresh_store(directory: Path) -> str:
    """A tracking URI of a new, empty store in ``directory/mlruns`` (a copy of the template database)."""
    target = Path(directory) / "mlruns" / "mlflow.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(_template_db(), target)
    return f"sqlite:///{target}"


def eval_result(
    split: str, n: int = 60, noise: float = 0.3, seed: int = 0, half_width: float | None = None
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """An `evaluate` result (``metrics_with_intervals`` + evaluate's extras) with its predictions and targets.

    ``half_width`` replaces the MAE's bootstrap interval by ``mae +- half_width`` (to force ties or gaps).
    """
    from mobile_vla.evaluation.metrics import metrics_with_intervals

    rng = np.random.default_rng(seed)
    target = rng.choice([-1.15, 0.0, 1.15], size=(n, 2)).astype(np.float32)
    pred = (target + rng.normal(0, noise, size=(n, 2))).astype(np.float32)
    stats = metrics_with_intervals(pred, target, axis_names=AXES, n_boot=200, seed=seed)
    if half_width is not None:
        mae = stats["metrics"]["mae"]
        stats["intervals"]["mae"] = [max(mae - half_width, 0.0), mae + half_width]
    result = {
        "case": None,
        "split": split,
        **stats,
        "n_episodes": n // 17 + 1,
        "loss": float(noise / 10),
        "action_dims": list(AXES),
        "data": {"fingerprint": None, "provenance": None},
    }
    return result, pred, target


def write_run_dir(
    root: Path,
    name: str,
    *,
    case: str = "case1",
    dataset: str = "d5a1f00d5a1f00d5",
    provenance: str = "sim",
    pretrained: bool = True,
    epochs: int = 4,
    status: str = "finished",
    noise: float = 0.3,
    mae_half_width: float | None = None,
    hidden_dim: int = 256,
    created: str = "2026-11-20T10:00:00+00:00",
    split_seed: int = 0,
    evaluate: tuple[str, ...] = ("val", "test"),
    closed_loop: dict[str, Any] | None = None,
    checkpoint: bool = True,
    seed: int = 0,
) -> Path:
    """A run directory exactly as the trainer (+ evaluate, + sim evaluate) leaves it."""
    run_dir = Path(root) / name
    run_dir.mkdir(parents=True)
    episodes = [
        f"episode_2025081{i % 10}_12{i:04d}_{'1box' if i % 2 else '2box'}_vert_left" for i in range(20)
    ]
    rng = np.random.default_rng(split_seed)
    order = [episodes[i] for i in rng.permutation(len(episodes))]
    split = {"train": sorted(order[:14]), "val": sorted(order[14:17]), "test": sorted(order[17:])}
    seed_names = {
        "case1": "Simplified2DActionModelV2",
        "case2": "CLIPNormalized2DActionModelV2",
        "case3": "SimpleCase3Model",
        "case4": "RoboVLMsCompleteModel",
    }
    config = {
        "case": case,
        "model_class": seed_names[case],
        "architecture": "Simplified2DActionModelV2" if case in ("case1", "case3") else seed_names[case],
        "trainable_parameters": hidden_dim * 1280 + hidden_dim + 2 * hidden_dim,
        "policy": {
            "hidden_dim": hidden_dim,
            "dropout": 0.4,
            "action_dims": list(AXES),
            "use_vision_resampler": case in ("case2", "case4"),
        },
        "train": {
            "optimizer": "AdamW",
            "lr": 5e-05,
            "weight_decay": 0.001,
            "scheduler": "CosineAnnealingLR",
            "t_max": 100,
            "eta_min": 1e-06,
            "huber_delta": 0.1,
            "grad_clip_norm": 1.0,
            "batch_size": 2,
            "epochs": 50 if case != "case3" else 5,
            "early_stopping_patience": 3,
            "frame_selection": "random",
            "split_ratios": [0.7, 0.15, 0.15],
            "seed": seed,
        },
        "backbone": {
            "profile": "lite" if pretrained else "kosmos2-tiny",
            "spec": {"profile": "lite" if pretrained else "kosmos2-tiny", "dtype": "fp32"},
            "fingerprint": {"name": "efficientnet-lite0+minilm", "weights": "sha256:abc", "image_size": 224},
            "fingerprint_hash": "bb11" * 4 if pretrained else "0000" * 4,
            "pretrained": pretrained,
        },
        "feature_dims": {"vision": 1280, "text": 384},
        "required_features": ["vision", "text"],
        "data": {
            "path": f"/data/{dataset}",
            "fingerprint": dataset,
            "provenance": provenance,
            "num_episodes": len(episodes),
            "skipped": [],
            "split": {"seed": split_seed, "ratios": [0.7, 0.15, 0.15], **split},
        },
        "action_dims": list(AXES),
        "code_version": "0.1.0+1a2b3c4",
        "created": created,
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    rows = []
    for epoch in range(epochs):
        train_loss = 0.5 / (epoch + 1)
        rows.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "n_train": 238,
                "val_loss": train_loss * 1.3,
                "n_val": 51,
                "val_metrics": {"n": 51, "mae": 0.6 / (epoch + 1), "accuracy_0.3": 20.0 + 10 * epoch},
                "lr": 5e-05,
                "best_epoch": epoch,
                "improved": True,
                "epoch_time_s": 1.5,
            }
        )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "status": status,
        "case": case,
        "epochs_completed": epochs,
        "max_epochs": config["train"]["epochs"],
        "best_epoch": epochs - 1,
        "best_val_loss": rows[-1]["val_loss"] if rows else None,
        "monitored": "val_loss",
        "early_stopped": False,
        "wall_time_s": 1.5 * epochs,
        "error": None if status == "finished" else "RuntimeError: boom",
        "updated": (datetime.fromisoformat(created) + timedelta(seconds=1.5 * epochs + 60)).isoformat(),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if checkpoint:
        weights = {
            "fuse.weight": np.zeros((hidden_dim, 1280), np.float32),
            "fuse.bias": np.zeros(hidden_dim, np.float32),
            "out.weight": np.full((2, hidden_dim), seed, np.float32),
        }
        save_file(weights, str(run_dir / "best.safetensors"), metadata={"case": case})
        save_file(weights, str(run_dir / "last.safetensors"))
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 255, 255)).save(buffer, format="PNG")
    (run_dir / "loss_curve.png").write_bytes(buffer.getvalue())
    if status == "finished":
        for i, split_name in enumerate(evaluate):
            result, pred, target = eval_result(
                split_name, noise=noise, seed=seed * 10 + i, half_width=mae_half_width
            )
            result["case"] = case
            # what evaluate records: the content hash of the episodes it evaluated (here: a stand-in)
            ids = ",".join(split[split_name])
            result["data"] = {
                "fingerprint": f"{abs(hash((dataset, ids))) % 10**16:016d}",
                "provenance": provenance,
            }
            (run_dir / f"eval_{split_name}.json").write_text(json.dumps(result, indent=2))
            np.savez(run_dir / f"predictions_{split_name}.npz", predictions=pred, targets=target)
        if closed_loop is not None:
            (run_dir / "closed_loop.json").write_text(json.dumps(closed_loop, indent=2))
    return run_dir


def episode_records(successes: int, n: int) -> list[dict[str, Any]]:
    """Per-episode records in the shape `sim.evaluate.run_episode` returns them (the fields `summarize` reads)."""
    return [
        {"success": i < successes, "collided": i == n - 1, "spl": 0.8 if i < successes else 0.0,
         "steps": 14 + i % 3, "distance_to_goal": 0.05 if i < successes else 0.6}
        for i in range(n)
    ]  # fmt: skip


def sim_result(successes: int, n: int) -> dict[str, Any]:
    """A `sim evaluate --json` result as `evaluate_closed_loop` builds it: the simulator's own `summarize`
    overall and per scenario (`*_ci95` Wilson intervals), never a hand-made shape."""
    from mobile_vla.sim.evaluate import summarize

    records = episode_records(successes, n)
    half = n // 2
    # Alternate episodes between the two scenarios, as the evaluator cycles scenarios.
    groups = {"1box_vert_left": records[0::2], "2box_hori_right": records[1::2]}
    assert sum(len(g) for g in groups.values()) == n and len(groups["1box_vert_left"]) >= half
    return {
        "policy": "RUN_DIR",
        "episodes": n,
        "seed": 1000,
        "max_steps": 18,
        "scenarios": sorted(groups),
        **summarize(records),
        "per_scenario": {k: summarize(v) for k, v in sorted(groups.items())},
    }
