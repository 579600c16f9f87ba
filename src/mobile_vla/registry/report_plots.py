"""The report's plots, PNGs beside the document: metric bars with interval whiskers per ranked group, loss
curves per case, predicted vs target per axis. Drawing only (matplotlib, Agg); the numbers come from the store.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobile_vla.registry.ranking import (
    RankedGroup,
    Ranking,
)
from mobile_vla.registry.record import StoredRun
from mobile_vla.registry.report_format import _axes


# --- plots -------------------------------------------------------------------------------------------------
def _histories(registry: Any, run: StoredRun) -> dict[str, list[tuple[int, float]]]:
    return {
        key: registry.metric_history(run.run_id, key)
        for key in ("train_loss", "val_loss")
        if key in run.metrics
    }


def _plots(
    registry: Any,
    runs: Sequence[StoredRun],
    ranking: Ranking,
    reps: dict[str, tuple[StoredRun, str]],
    histories: dict[str, dict[str, list[tuple[int, float]]]],
    folder: Path,
    split: str,
) -> dict[str, list[Path]]:
    import matplotlib

    matplotlib.use("Agg")
    images: dict[str, list[Path]] = {"metrics": [], "loss": [], "pred": [], "confusion": []}
    for i, group in enumerate(ranking.groups, 1):
        images["metrics"].append(_metric_bars(group, folder / f"metrics_group{i}.png", split))
    rep_runs = [r for r, _ in reps.values()]
    if any(histories.values()):
        images["loss"].append(_loss_curves(rep_runs, histories, folder / "loss_curves.png"))
    with tempfile.TemporaryDirectory() as tmp:
        for run in rep_runs:
            npz = registry.download_artifact(run.run_id, f"eval/predictions_{split}.npz", tmp)
            if npz is not None and npz.is_file():
                images["pred"].append(
                    _pred_vs_target(run, npz, folder / f"pred_vs_target_{run.case}_{run.name}.png")
                )
        # A confusion matrix for every run evaluated with key-class metrics (either action space).
        keyed = [r for r in runs if f"{split}/keys/accuracy" in r.metrics]
        for run in sorted(keyed, key=lambda r: (r.case, r.name)):
            npz = registry.download_artifact(run.run_id, f"eval/predictions_{split}.npz", tmp)
            if npz is not None and npz.is_file():
                confusion = _confusion(run, npz, folder / f"confusion_{run.case}_{run.name}.png")
                if confusion is not None:
                    images["confusion"].append(confusion)
    return images


def _metric_bars(group: RankedGroup, path: Path, split: str) -> Path:
    import matplotlib.pyplot as plt

    panels = [(f"{split} MAE", "mae", False), (f"{split} accuracy (0.3), %", "accuracy_0.3", False)]
    if any(s.run.closed_loop() for s in group.scores):
        panels.append(("closed-loop success, %", "success_rate", True))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    labels = [f"{s.run.case}\n{s.run.name}" for s in group.scores]
    for ax, (title, key, closed) in zip(axes[0], panels, strict=True):
        values, lows, highs = [], [], []
        for s in group.scores:
            result = s.run.closed_loop() if closed else s.run.evaluation(split)
            scale = 100.0 if closed else 1.0
            value = (result or {}).get("metrics", {}).get(key, np.nan) * scale
            low, high = (result or {}).get("intervals", {}).get(key, [np.nan, np.nan])
            values.append(value)
            lows.append(value - low * scale)
            highs.append(high * scale - value)
        x = np.arange(len(values))
        ax.bar(x, values, color="#4c72b0")
        ax.errorbar(
            x,
            values,
            yerr=[np.clip(lows, 0, None), np.clip(highs, 0, None)],
            fmt="none",
            ecolor="black",
            capsize=4,
        )
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{group.label} (whiskers: 95% intervals)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _loss_curves(runs: Sequence[StoredRun], histories: dict[str, dict], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for run in runs:
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            points = histories.get(run.run_id, {}).get(key)
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, style, marker=".", label=f"{run.case} {run.name} {key}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _pred_vs_target(run: StoredRun, npz: Path, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with np.load(npz) as data:
        pred, target = data["predictions"], data["targets"]
    axes_names = _axes(run)
    fig, axes = plt.subplots(1, pred.shape[1], figsize=(3.6 * pred.shape[1], 3.4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.scatter(target[:, i], pred[:, i], s=8, alpha=0.5)
        lim = float(max(np.abs(target[:, i]).max(), np.abs(pred[:, i]).max(), 1e-3)) * 1.1
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
        ax.set_xlabel(f"target {axes_names[i] if i < len(axes_names) else i}")
        ax.set_ylabel("predicted")
    fig.suptitle(f"{run.case} {run.name}: predicted vs target (n={len(pred)})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def confusion_from_predictions(npz: Path) -> tuple[list[str], np.ndarray] | None:
    """``(class names, C x C counts)`` from an evaluation's predictions file (rows: recorded class, columns:
    predicted), or None for a file written before key classes were recorded."""
    with np.load(npz) as data:
        if "key_classes" not in data.files:
            return None
        names = [str(n) for n in data["key_classes"]]
        predicted, target = data["predicted_classes"], data["target_classes"]
    c = len(names)
    counts = np.bincount(target.astype(np.int64) * c + predicted.astype(np.int64), minlength=c * c)
    return names, counts.reshape(c, c)


def _confusion(run: StoredRun, npz: Path, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    found = confusion_from_predictions(npz)
    if found is None:
        return None
    names, matrix = found
    keep = [i for i in range(len(names)) if matrix[i].sum() or matrix[:, i].sum()]  # classes that occur
    matrix = matrix[np.ix_(keep, keep)]
    labels = [names[i] for i in keep]
    rows = matrix.sum(1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    size = 1.2 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.6 else "black")  # fmt: skip
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(
        range(len(labels)), [f"{n} (n={int(r)})" for n, r in zip(labels, rows[:, 0], strict=True)], fontsize=7
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("recorded class")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the recorded class")
    space = run.config_section("policy").get("action_space", "continuous")
    fig.suptitle(
        f"{run.case} {run.name} ({space} head): key classes, n={int(matrix.sum())} frames", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
