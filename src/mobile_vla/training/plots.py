"""The loss curve of a run (``loss_curve.png``): train and validation loss per epoch, best epoch marked.

Drawing only; the trainer calls it when a run ends and never lets a plotting error hide the run's outcome.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def plot_loss_curve(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Train and validation loss per epoch, best epoch marked."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    # The action loss (Huber on the predicted action: what "best" follows) when the rows have it; a case with
    # auxiliary terms (Case 4) has its whole training loss beside it, dashed.
    action = all(r.get("train_action_loss") is not None for r in history)
    train_key, val_key = ("train_action_loss", "val_action_loss") if action else ("train_loss", "val_loss")
    ax.plot(epochs, [r[train_key] for r in history], marker="o", label=f"train ({train_key})")
    val = [(r["epoch"], r[val_key]) for r in history if r.get(val_key) is not None]
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label=f"validation ({val_key})")
    if action and any(abs(r["train_loss"] - r["train_action_loss"]) > 1e-9 for r in history):
        ax.plot(epochs, [r["train_loss"] for r in history], "--", label="train (whole training loss)")
    best = history[-1].get("best_epoch", -1)
    if best is not None and best >= 0:
        ax.axvline(best, color="grey", linestyle="--", label=f"best (epoch {best})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("action loss (Huber)" if action else "loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
