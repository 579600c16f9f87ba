"""Offline evaluation of a run directory on a split of episodes: the standard metrics with n and intervals.

result = evaluate_run("runs/case1", split="test")   # writes eval_test.json + predictions_test.npz
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

SPLITS = ("test", "val", "train", "all")


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    split: str = "test",
    *,
    device: str = "auto",
    checkpoint: str = "best",
    batch_size: int | None = None,
    frame_selection: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    backbone: Any | None = None,
    feature_provider: Any | None = None,
    progress: bool = True,
    save: bool = True,
) -> dict[str, Any]:
    """Predict every frame of ``split``'s episodes and compute the metrics with bootstrap intervals.

    Args:
        run_dir: a training run directory.
        data: the episodes (default: the path recorded at training time). For ``test``/``val``/``train`` the
            recorded episode ids are used, so a different directory must contain them.
        split: ``test``, ``val``, ``train`` (the recorded split) or ``all`` (every episode in ``data``).
        frame_selection: frames per episode (default: the run's ``eval_frame_selection``, normally ``all``).
        n_boot, seed: bootstrap resamples and seed of the intervals.
        save: write ``eval_{split}.json`` and ``predictions_{split}.npz`` into the run directory.

    Returns ``{"n", "metrics", "intervals", "bootstrap", "loss", "split", "checkpoint", "data", "key_metrics",
    ...}``; ``key_metrics`` (``key_space_result``) scores the frames as key classes, for a key-class head and
    a regression head alike (its command read as the nearest key), next to ``metrics`` on the velocities.
    """
    from mobile_vla.data.dataset import EpisodeDataset, dataset_fingerprint, dataset_provenance, load_episodes
    from mobile_vla.data.windows import WindowDataset
    from mobile_vla.evaluation.chunks import chunk_metrics
    from mobile_vla.metrics import metrics_with_intervals
    from mobile_vla.policies.inference import load_run
    from mobile_vla.policies.predict import predict_dataset
    from mobile_vla.runs.uris import resolve_run_dir
    from mobile_vla.utils.device import resolve_device

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    run_dir = resolve_run_dir(run_dir)
    device = resolve_device(device)
    policy, provider, record = load_run(
        run_dir, device=device, checkpoint=checkpoint, backbone=backbone, feature_provider=feature_provider
    )
    train_cfg = record["train"]
    data = data if data is not None else record["data"]["path"]
    source = [str(p) for p in data] if isinstance(data, (list, tuple)) else str(data)
    episodes, skipped = load_episodes(source)
    if split == "all":
        ids = sorted(e.episode_id for e in episodes)
    else:
        ids = list(record["data"]["split"][split])
        missing = sorted(set(ids) - {e.episode_id for e in episodes})
        if missing:
            raise ValueError(
                f"{data}: {len(missing)} of the {len(ids)} {split} episodes recorded in {run_dir}/config.json are "
                f"missing (e.g. {missing[:3]}); pass the data the run was trained on, or --split all"
            )
        if not ids:
            raise ValueError(f"{run_dir}: the recorded {split} split is empty; use another --split")
    chosen = [e for e in episodes if e.episode_id in set(ids)]
    # History-window cases (Case 4) are evaluated on windows; their first predicted step is the "action".
    dataset_class = WindowDataset if policy.dataset_kwargs() else EpisodeDataset
    dataset = dataset_class(
        chosen,
        frame_selection=frame_selection or train_cfg.get("eval_frame_selection", "all"),
        action_dims=tuple(record["action_dims"]),
        drop_start_frame=bool(train_cfg.get("drop_start_frame", False)),
        seed=int(train_cfg.get("seed", 0)),
        **policy.dataset_kwargs(),
    )
    out = predict_dataset(
        policy,
        provider,
        dataset,
        batch_size=batch_size or int(train_cfg.get("batch_size", 2)) * 8,
        device=device,
        progress=progress,
        desc=f"evaluate {split}",
    )
    # Frames of one episode are correlated: intervals resample whole episodes (cluster bootstrap).
    stats = metrics_with_intervals(
        out["predictions"],
        out["targets"],
        axis_names=tuple(record["action_dims"]),
        n_boot=n_boot,
        seed=seed,
        groups=out["episode_ids"],
    )
    keys = key_space_result(policy, out, tuple(record["action_dims"]))
    fingerprint = dataset_fingerprint(chosen)
    result = {
        "run_dir": str(run_dir),
        "case": record["case"],
        "split": split,
        "checkpoint": checkpoint,
        "n": stats["n"],
        "n_frames": stats["n_frames"],
        "n_episodes": stats["n_episodes"],
        "metrics": stats["metrics"],
        "intervals": stats["intervals"],
        "bootstrap": stats.get("bootstrap"),
        "loss": out["loss"],
        "loss_name": "training loss (the case's compute_loss: action Huber plus any auxiliary terms)",
        "action_loss": out["action_loss"],
        "action_dims": list(record["action_dims"]),
        "key_metrics": keys["metrics"],
        "data": {
            "path": str(data),
            "fingerprint": fingerprint,
            "provenance": dataset_provenance(chosen),
            "training_fingerprint": record["data"]["fingerprint"],
            "skipped": [[str(p), str(r)] for p, r in skipped],
        },
        "backbone": {k: record["backbone"].get(k) for k in ("profile", "fingerprint_hash", "pretrained")},
        "evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    chunk_arrays = {k: out[k] for k in ("chunk_predictions", "chunk_targets", "chunk_mask") if k in out}
    if chunk_arrays:
        result["chunk_metrics"] = chunk_metrics(
            chunk_arrays["chunk_predictions"], chunk_arrays["chunk_targets"], chunk_arrays["chunk_mask"]
        )
    if save:
        (run_dir / f"eval_{split}.json").write_text(json.dumps(result, indent=2))
        np.savez(
            run_dir / f"predictions_{split}.npz",
            predictions=out["predictions"],
            targets=out["targets"],
            episode_ids=np.asarray(out["episode_ids"], dtype=str),
            frame_indices=np.asarray(out["frame_indices"], dtype=np.int64),
            action_dims=np.asarray(record["action_dims"], dtype=str),
            predicted_classes=keys["predicted"],
            target_classes=keys["target"],
            key_classes=np.asarray(keys["metrics"]["classes"], dtype=str),
            **chunk_arrays,
        )
    return result


def key_space_result(policy: Any, out: dict[str, Any], action_dims: tuple[str, ...]) -> dict[str, Any]:
    """Key-class metrics of ``predict_dataset``'s output, for either action space, on the same frames.

    The recorded class of a frame is the file's stored ``action_classes`` entry where it has one, else the
    recorded command's class (``KeySpace.targets``). The predicted class is, for a key-class head, the
    arg-max of its logits; for a regression head, the key class whose velocity is nearest (Euclidean) to the
    regressed command (``KeySpace.nearest``, the lab's key speed 1.15), so both action spaces are compared on
    the same classes. Returns ``{"metrics", "predicted", "target"}`` (class indices into the names).
    """
    from mobile_vla.data.action_space import KeySpace
    from mobile_vla.metrics import key_class_metrics

    space = policy.key_space if policy.key_space is not None else KeySpace(action_dims)
    if "predicted_classes" in out:
        predicted = np.asarray(out["predicted_classes"], np.int64)
        mapping = "arg-max of the key-class head's logits"
    else:
        predicted = space.nearest(out["predictions"]) if len(out["predictions"]) else np.zeros(0, np.int64)
        mapping = (
            f"the regressed command's nearest key velocity (Euclidean; keys at +-{space.speed:g} on "
            f"{', '.join(space.action_dims)})"
        )
    stored = out.get("stored_classes")
    target = space.targets(out["targets"], stored) if len(out["targets"]) else np.zeros(0, np.int64)
    metrics = key_class_metrics(predicted, target, space.names)
    metrics["action_space"] = "keys" if policy.key_space is not None else "continuous"
    metrics["predicted_class_from"] = mapping
    metrics["recorded_class_from"] = (
        "the file's stored action_classes where present, else the recorded command's key class"
    )
    return {"metrics": metrics, "predicted": predicted, "target": target}


def format_key_metrics(keys: dict[str, Any]) -> str:
    """Per-class accuracy with n, accuracy, macro-F1 and the confusion matrix, as text."""
    names = keys["classes"]
    lines = [
        f"key classes ({keys['action_space']} head; predicted class: {keys['predicted_class_from']}):",
        f"{'key accuracy':<32}{keys['accuracy']:>12.2f}",
        f"{'key balanced accuracy':<32}{keys['balanced_accuracy']:>12.2f}",
        f"{'key macro-F1':<32}{keys['macro_f1']:>12.4f}",
    ]
    for name in names:
        row = keys["per_class"][name]
        if row["n"] or row["predicted"]:
            acc = "n/a" if row["accuracy"] is None else f"{row['accuracy']:.2f}"
            label = f"  {name} (n={row['n']})"
            lines.append(f"{label:<32}{acc:>12}  F1 {row['f1']:.3f}")
    present = [
        i for i, n in enumerate(names) if keys["per_class"][n]["n"] or keys["per_class"][n]["predicted"]
    ]
    width = max(len(names[i]) for i in present) if present else 4
    lines.append("confusion matrix (rows: recorded, columns: predicted):")
    lines.append(" " * (width + 2) + "".join(f"{names[i][:9]:>10}" for i in present))
    matrix = keys["confusion_matrix"]
    for i in present:
        lines.append(f"  {names[i]:<{width}}" + "".join(f"{matrix[i][j]:>10}" for j in present))
    return "\n".join(lines)


def format_result(result: dict[str, Any]) -> str:
    """A readable table: every metric key with its value and 95% interval, headed by n."""
    lines = [
        f"{result['case']} on {result['split']}: n={result['n']} frames from {result['n_episodes']} episodes "
        f"(data {result['data']['provenance']}, fingerprint {result['data']['fingerprint']})",
        f"{'metric':<32}{'value':>12}  95% interval (bootstrap, {result.get('bootstrap', {}).get('n_boot', '?')}"
        f" resamples of whole {result.get('bootstrap', {}).get('resample', 'frame')}s)",
    ]
    for key, value in result["metrics"].items():
        if key == "n":
            continue
        low, high = result["intervals"].get(key, (float("nan"), float("nan")))
        lines.append(f"{key:<32}{value:>12.4f}  [{low:.4f}, {high:.4f}]")
    if result.get("action_loss") is not None:
        keys_head = (result.get("key_metrics") or {}).get("action_space") == "keys"
        name = "action loss (cross-entropy)" if keys_head else "action loss (Huber)"
        lines.append(f"{name:<32}{result['action_loss']:>12.4f}")
    lines.append(f"{'training loss (all terms)':<32}{result['loss']:>12.4f}")
    if result.get("key_metrics"):
        lines.append(format_key_metrics(result["key_metrics"]))
    chunk = result.get("chunk_metrics")
    if chunk:
        lines.append(
            f"action chunks: n={chunk['n_windows']} windows, {chunk['n_steps']} recorded steps of "
            f"{chunk['chunk_length']} (steps past an episode's end left out)"
        )
        lines.append(f"{'chunk_mae':<32}{chunk['chunk_mae']:>12.4f}")
        for j, (mae, n) in enumerate(zip(chunk["step_mae"], chunk["step_n"], strict=True)):
            lines.append(f"{f'step_{j}_mae (n={n})':<32}{mae:>12.4f}")
        for key, value in chunk.items():
            if key.startswith(("step_accuracy_", "window_accuracy_")) and not key.endswith("_ci"):
                low, high = chunk[f"{key}_ci"]
                lines.append(f"{key:<32}{value:>12.2f}  [{low:.2f}, {high:.2f}] (Wilson)")
    return "\n".join(lines)
