"""The standard trainer: any registered case, the seed's recipe, exact resume, one run directory.

    trainer = Trainer(resolve_train_config("case1"), data="episodes/", out_dir="runs/case1")
    summary = trainer.fit()                       # or Trainer.resume("runs/case1").fit()

The loop is case-agnostic: it asks the ``FeatureProvider`` for ``policy.required_features``, calls
``policy(features)`` and ``policy.compute_loss(outputs, batch)``. Nothing here knows what a case is.

Run directory (see docs/CONTRACTS.md): ``config.json``, ``best.safetensors``, ``last.safetensors``,
``resume/``, ``metrics.jsonl``, ``loss_curve.png``, ``summary.json`` -- written through ``mobile_vla.runs``.
This module owns the ``Trainer`` and its ``Callback`` interface; the set-up (seeds, backbone, loader) is in
``training.loaders``, the loss plot in ``training.plots``, validation predictions in ``policies.predict``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from mobile_vla.features.providers import FeatureProvider
from mobile_vla.metrics import compute_metrics
from mobile_vla.policies import FeatureDims, Policy, build_policy, get_case
from mobile_vla.policies.predict import predict_dataset, progress_bar, to_device
from mobile_vla.runs.checkpoints import (
    has_resume_state,
    load_resume_state,
    save_head,
    save_resume_state,
)
from mobile_vla.runs.directory import (  # noqa: F401  (read_run_config, STATUSES: re-exported, old path)
    METRICS,
    STATUSES,
    append_metrics,
    read_metrics,
    read_run_config,
    write_metrics,
    write_run_config,
    write_summary,
)
from mobile_vla.training.averaging import WeightAverage
from mobile_vla.training.class_weights import class_weight_record
from mobile_vla.training.config import TrainConfig
from mobile_vla.training.distributed import DistributedContext, scratch_run_dir
from mobile_vla.training.loaders import (  # noqa: F401  (re-exported)
    backbone_record,
    build_backbone,
    make_loader,
    seed_everything,
)
from mobile_vla.training.plots import plot_loss_curve  # noqa: F401  (re-exported)
from mobile_vla.training.sampling import (
    SamplingSettings,
    epoch_weights,
    sampling_record,
)
from mobile_vla.utils.device import resolve_device  # noqa: F401  (re-exported, old path)
from mobile_vla.utils.version import code_version_string

logger = logging.getLogger(__name__)


class Callback:
    """Hook points around the loop (override what you need; MLflow logging plugs in here).

    ``on_epoch_end`` receives the same record that is appended to ``metrics.jsonl``; ``on_run_end`` the
    final ``summary.json`` content (also called when the run fails or is killed).
    """

    def on_run_start(self, trainer: Trainer) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, record: Mapping[str, Any]) -> None:
        pass

    def on_run_end(self, trainer: Trainer, summary: Mapping[str, Any]) -> None:
        pass


class Trainer:
    """Trains one case's head on episodes with the standard recipe and writes a run directory.

    Args:
        config: the resolved recipe (``resolve_train_config``).
        data: episode directory (recursive ``*.h5``) or a list of episode files.
        out_dir: the run directory; must not already hold a run unless ``resume``-ing.
        backbone: an already-built backbone to use (else built from ``config``); when resuming it must have
            the fingerprint recorded in ``config.json``.
        feature_provider: computes features (default: ``CachedFeatureProvider``, the backbone's features through
            the on-disk feature cache; ``MOBILE_VLA_FEATURE_CACHE=0`` gives the plain ``FeatureProvider``).
        callbacks: ``Callback`` objects called at run start, each epoch end and run end.
        progress: show tqdm progress bars.
    """

    def __init__(
        self,
        config: TrainConfig,
        data: str | Path | Sequence[str | Path],
        out_dir: str | Path,
        *,
        backbone: Any | None = None,
        feature_provider: FeatureProvider | None = None,
        callbacks: Sequence[Callback] = (),
        progress: bool = True,
    ) -> None:
        self.config = config
        self.data = data
        self.out_dir = Path(out_dir)
        self.callbacks = list(callbacks)
        # Under torchrun / accelerate launch (WORLD_SIZE > 1): one data-parallel rank of several.
        self.dist = DistributedContext.from_env(config.device)
        self.progress = progress and self.dist.is_main
        self.device = self.dist.device(resolve_device(config.device))
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self._resuming = False
        self._run_record: dict[str, Any] | None = None
        self.case = get_case(config.case)
        if feature_provider is not None:
            backbone = feature_provider.backbone
        self.backbone = backbone if backbone is not None else build_backbone(config, self.device)
        if feature_provider is None:
            from mobile_vla.features.cached import feature_provider_for

            # The backbone is frozen, so its features go through the on-disk feature cache.
            feature_provider = feature_provider_for(self.backbone)
        self.provider = feature_provider
        self.policy: Policy | None = None
        self.datasets: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []

    # --- construction for resume -----------------------------------------------------------------------
    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        *,
        data: str | Path | Sequence[str | Path] | None = None,
        backbone: Any | None = None,
        feature_provider: FeatureProvider | None = None,
        callbacks: Sequence[Callback] = (),
        progress: bool = True,
        device: str | None = None,
    ) -> Trainer:
        """A trainer that continues the interrupted run in ``run_dir`` with the config it recorded."""
        run_dir = Path(run_dir)
        record = read_run_config(run_dir)
        config = TrainConfig.from_dict(record["train"])
        if device is not None:
            config.device = device
        trainer = cls(
            config,
            data if data is not None else record["data"]["path"],
            run_dir,
            backbone=backbone,
            feature_provider=feature_provider,
            callbacks=callbacks,
            progress=progress,
        )
        trainer._resuming = True
        trainer._run_record = record
        return trainer

    # --- data ---------------------------------------------------------------------------------------------
    def _datasets(self, action_dims: Sequence[str], extra: Mapping[str, Any]) -> tuple[dict[str, Any], dict]:
        from mobile_vla.data.dataset import (
            EpisodeDataset,
            dataset_fingerprint,
            dataset_provenance,
            load_episodes,
            split_episodes,
        )
        from mobile_vla.data.windows import WindowDataset

        cfg = self.config
        listed = isinstance(self.data, (list, tuple))
        source = [str(p) for p in self.data] if listed else str(self.data)
        episodes, skipped = load_episodes(source)  # opened once, shared by the split datasets
        if not episodes:
            raise ValueError(f"no readable episodes in {self.data} (skipped: {skipped})")
        fingerprint = dataset_fingerprint(episodes)
        if self._run_record is not None:
            recorded = self._run_record["data"]
            if recorded["fingerprint"] != fingerprint:
                raise ValueError(
                    f"{self.data}: these episodes (fingerprint {fingerprint}) are not the ones the run in "
                    f"{self.out_dir} was started on (fingerprint {recorded['fingerprint']}); resume with the same data"
                )
            split = {k: list(recorded["split"][k]) for k in ("train", "val", "test")}
        else:
            split = split_episodes(
                [e.episode_id for e in episodes], seed=cfg.split_seed, ratios=cfg.split_ratios
            )
        if not split["train"]:
            raise ValueError(f"the split left no training episodes ({len(episodes)} episodes in {self.data})")
        by_id = {e.episode_id: e for e in episodes}

        # Cases that see more than one frame (Case 4) train on windows: history, action chunk, future frames.
        dataset_class = WindowDataset if extra else EpisodeDataset

        def make(part: str, frame_selection: str) -> Any:
            if not split[part]:
                return None
            return dataset_class(
                [by_id[i] for i in split[part]],
                frame_selection=frame_selection,
                action_dims=tuple(action_dims),
                drop_start_frame=cfg.drop_start_frame,
                seed=cfg.seed,
                lazy_images=getattr(self.provider, "lazy_images", False),
                # Mirror augmentation on the training split only (validation measures the recorded frames).
                **({"mirror": cfg.mirror} if part == "train" and cfg.mirror > 0 else {}),
                **extra,
            )

        datasets = {"train": make("train", cfg.frame_selection), "val": make("val", cfg.eval_frame_selection)}
        data_record = {
            "path": [str(Path(p).resolve()) for p in source] if listed else str(Path(source).resolve()),
            "fingerprint": fingerprint,
            "provenance": dataset_provenance(episodes),
            "num_episodes": len(episodes),
            "skipped": [[str(p), str(r)] for p, r in skipped],
            "split": {"seed": cfg.split_seed, "ratios": list(cfg.split_ratios), **split},
        }
        return datasets, data_record

    # --- the run ------------------------------------------------------------------------------------------
    def _set_text_stats(self, policy: Policy, train_set: Any) -> None:
        """Standardise instruction features with the training split's statistics (weighted by episode).

        With a single distinct instruction the text carries no information and stays as it is."""
        texts = [episode.instruction for episode in train_set.episodes]
        unique = sorted(set(texts))
        if len(unique) < 2:
            return
        with torch.no_grad():
            features = self.provider({"text": unique}, ["text"])["text"].float().cpu()  # (U, Dt)
        weights = torch.tensor([texts.count(t) for t in unique], dtype=torch.float32)
        weights = (weights / weights.sum())[:, None]  # (U, 1)
        mean = (weights * features).sum(0)  # (Dt,)
        std = ((weights * (features - mean) ** 2).sum(0)).sqrt()  # (Dt,)
        policy.set_text_stats(mean, std)
        logger.info("instruction features standardised over %d distinct instructions", len(unique))

    def fit(self) -> dict[str, Any]:
        """Train until ``epochs`` or early stopping; returns the summary (also in ``summary.json``)."""
        cfg = self.config
        self.dist.init()
        if not self.dist.is_main:
            # Rank 0 alone writes the run directory; the other ranks write the same files into a scratch copy.
            self.out_dir = scratch_run_dir(self.out_dir, self.dist.rank, resuming=self._resuming)
            self.callbacks = []
        run_dir = self.out_dir
        if not self._resuming and (run_dir / "config.json").exists():
            raise FileExistsError(
                f"{run_dir} already holds a run (config.json); pass --resume to continue it or choose another --out"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed)

        dims = FeatureDims.from_backbone(self.backbone)
        # A resumed run rebuilds the head from its recorded config (e.g. the CLIP Case 2 actually used).
        policy_config = self._run_record["policy"] if self._run_record is not None else cfg.policy
        policy, extra_features = build_policy(cfg.case, dims, device=self.device, **policy_config)
        policy = policy.to(self.device)
        self.provider.add_extra_features(extra_features)
        policy.configure_training(cfg)
        self.policy = policy
        self._train_model = self.dist.wrap(policy)  # DistributedDataParallel when distributed
        if (
            self._run_record is not None
            and self._run_record["backbone"]["fingerprint_hash"] != self.backbone.fingerprint_hash
        ):
            raise ValueError(
                f"{run_dir}: the run was started with backbone fingerprint "
                f"{self._run_record['backbone']['fingerprint_hash']}, but this backbone's is "
                f"{self.backbone.fingerprint_hash}; resume with the backbone recorded in config.json"
            )
        datasets, data_record = self._datasets(policy.action_dims, policy.dataset_kwargs())
        self.datasets = datasets
        # A run killed before its first resume state was written starts again from the beginning, as the
        # same run (its config.json is kept): from the same seed it does exactly what it would have done.
        restart = self._resuming and not has_resume_state(run_dir / "resume")
        if not self._resuming or restart:
            self._set_text_stats(policy, datasets["train"])
        # Key-class weights against imbalance: a function of the training split, recomputed on resume.
        class_weights, class_weight_info = class_weight_record(
            cfg.class_weights,
            datasets["train"].episodes,
            policy.key_space,
            cfg.class_weight_cap,
            cfg.drop_start_frame,
        )
        policy.set_class_weights(None if class_weights is None else torch.from_numpy(class_weights))

        trainable = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=cfg.scheduler_t_max, eta_min=cfg.scheduler_eta_min
        )
        self.average = None
        if cfg.ema_decay > 0:  # built before a resume state is loaded into it
            self.average = WeightAverage(trainable, cfg.ema_decay)
            self.average.attach(optimizer)
        counters = {
            "best_val_loss": math.inf,
            "best_epoch": -1,
            "epochs_without_improvement": 0,
            "wall_time_s": 0.0,
        }
        start_epoch = 0
        if self._resuming and not restart:
            state = load_resume_state(
                run_dir / "resume",
                model=policy,
                optimizer=optimizer,
                scheduler=scheduler,
                averaged=self.average.averaged if self.average is not None else None,
            )
            start_epoch = state["epoch"] + 1
            counters.update(state["counters"])
            self.history = read_metrics(run_dir / METRICS, upto_epoch=state["epoch"])
            write_metrics(run_dir / METRICS, self.history)
            logger.info("resuming %s after epoch %d", run_dir, state["epoch"])
        elif restart:
            logger.info("resuming %s: it stopped before finishing an epoch, starting it again", run_dir)
            write_metrics(run_dir / METRICS, [])
        else:
            self._run_record = {
                "case": self.case.name,
                "model_class": self.case.model_class,
                "architecture": self.case.architecture,
                "trainable_parameters": policy.num_parameters(trainable_only=True),
                "policy": policy.config.to_dict(),
                "train": cfg.to_dict(),
                "backbone": backbone_record(self.backbone),
                "feature_dims": policy.dims.to_dict(),
                "required_features": list(policy.required_features),
                "extra_features": {name: f.record for name, f in extra_features.items()},
                "data": data_record,
                "sampling": sampling_record(datasets["train"], SamplingSettings.from_config(cfg)),
                "class_weights": class_weight_info,
                "action_dims": list(policy.action_dims),
                "code_version": code_version_string(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            # metrics.jsonl first: a config.json (written whole or not at all) is what makes this a run.
            write_metrics(run_dir / METRICS, [])
            write_run_config(run_dir, self._run_record)

        self.optimizer, self.scheduler = optimizer, scheduler
        summary = self._summary("running", counters, start_epoch - 1)
        self._write_summary(summary)

        status, error = "running", None
        last_epoch = start_epoch - 1
        try:
            for cb in self.callbacks:
                cb.on_run_start(self)
            last_epoch = self._loop(policy, optimizer, scheduler, counters, start_epoch)
            status = "finished"
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM under the CLI's process_hooks
            status, error = "killed", f"{type(exc).__name__}: {exc}"
            raise
        except BaseException as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            last_epoch = self.history[-1]["epoch"] if self.history else last_epoch
            summary = self._summary(status, counters, last_epoch, error)
            self._write_summary(summary)
            try:
                plot_loss_curve(self.history, run_dir / "loss_curve.png")
            except Exception as exc:  # a plot must never hide the real outcome
                logger.warning("could not draw the loss curve: %s", exc)
            for cb in self.callbacks:
                try:
                    cb.on_run_end(self, summary)
                except Exception:  # a logging hook must not turn a finished run into a crash, nor hide one
                    logger.exception("callback %s failed in on_run_end", type(cb).__name__)
        return summary

    @property
    def run_record(self) -> dict[str, Any] | None:
        """The content of ``config.json`` (None before ``fit`` starts a new run)."""
        return self._run_record

    def _loop(self, policy: Policy, optimizer, scheduler, counters: dict[str, Any], start_epoch: int) -> int:
        cfg, run_dir = self.config, self.out_dir
        fingerprint = self.backbone.fingerprint_hash
        epoch = start_epoch - 1
        if start_epoch >= cfg.epochs or (
            cfg.early_stopping_patience
            and counters["epochs_without_improvement"] >= cfg.early_stopping_patience
        ):
            return epoch
        epochs = progress_bar(
            range(start_epoch, cfg.epochs), self.progress, "epochs", initial=start_epoch, total=cfg.epochs
        )
        for epoch in epochs:
            started = time.perf_counter()
            train_loss, train_logs, n_train = self._train_epoch(policy, optimizer, epoch)
            # With weight averaging, the average is what is validated and saved (best and last).
            averaged = self.average.swapped() if self.average is not None else contextlib.nullcontext()
            with averaged:
                val = None
                if self.datasets["val"] is not None:
                    val = predict_dataset(
                        policy,
                        self.provider,
                        self.datasets["val"],
                        batch_size=cfg.batch_size,
                        device=self.device,
                        progress=self.progress,
                        desc=f"val {epoch}",
                    )
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                # Early stopping and "best" follow the validation *action* loss (Huber on the predicted action; a
                # case's auxiliary terms, e.g. Case 4's task and state losses, are left out); without a validation
                # split, the training action loss.
                monitored = (
                    val["action_loss"] if val is not None else train_logs.get("action_loss", train_loss)
                )
                improved = monitored < counters["best_val_loss"] - cfg.early_stopping_min_delta
                if improved:
                    counters.update(best_val_loss=monitored, best_epoch=epoch, epochs_without_improvement=0)
                    save_head(
                        run_dir / "best.safetensors",
                        policy,
                        fingerprint_hash=fingerprint,
                        action_dims=policy.action_dims,
                        case=self.case.name,
                        epoch=epoch,
                        extra={"val_loss": monitored},
                    )
                else:
                    counters["epochs_without_improvement"] += 1
                save_head(
                    run_dir / "last.safetensors",
                    policy,
                    fingerprint_hash=fingerprint,
                    action_dims=policy.action_dims,
                    case=self.case.name,
                    epoch=epoch,
                )
            epoch_time = time.perf_counter() - started
            counters["wall_time_s"] = float(counters["wall_time_s"]) + epoch_time
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "n_train": n_train,
                **{f"train_{k}": v for k, v in train_logs.items()},
                "val_loss": val["loss"] if val is not None else None,
                "val_action_loss": val["action_loss"] if val is not None else None,
                "n_val": val["n"] if val is not None else 0,
                "val_metrics": _val_metrics(val, policy.action_dims) if val is not None else None,
                "lr": lr,
                "best_epoch": counters["best_epoch"],
                "improved": bool(improved),
                "epoch_time_s": epoch_time,
            }
            self.history.append(record)
            append_metrics(run_dir / METRICS, record)
            stop = bool(cfg.early_stopping_patience) and (
                counters["epochs_without_improvement"] >= cfg.early_stopping_patience
            )
            counters["early_stopped"] = stop
            # The resume state is written last: once it names epoch k, everything of epoch k is on disk.
            save_resume_state(
                run_dir / "resume",
                model=policy,
                optimizer=optimizer,
                scheduler=scheduler,
                epoch=epoch,
                counters=counters,
                averaged=self.average.averaged if self.average is not None else None,
            )
            self._write_summary(self._summary("running", counters, epoch))
            for cb in self.callbacks:
                cb.on_epoch_end(self, record)
            if self.progress and hasattr(epochs, "set_postfix"):
                epochs.set_postfix(train=f"{train_loss:.4f}", val=f"{monitored:.4f}")
            if stop:
                logger.info("early stopping after epoch %d (best epoch %d)", epoch, counters["best_epoch"])
                break
        return epoch

    def _train_epoch(self, policy: Policy, optimizer, epoch: int) -> tuple[float, dict[str, float], int]:
        cfg = self.config
        dataset = self.datasets["train"]
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loader = make_loader(
            dataset,
            cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
            epoch=epoch,
            num_workers=cfg.num_workers,
            context=self.dist,
            weights=epoch_weights(dataset, SamplingSettings.from_config(cfg)),
        )
        policy.train()
        loss_sum, n = 0.0, 0
        logs_sum: dict[str, float] = {}
        for batch in progress_bar(loader, self.progress, f"train {epoch}"):
            features = to_device(self.provider(batch, policy.feature_names(training=True)), self.device)
            outputs = self._train_model(features)
            loss, logs = policy.compute_loss(outputs, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"epoch {epoch}: loss is {float(loss)}; lower --lr or check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm=cfg.grad_clip_norm)
            optimizer.step()
            b = len(batch["action"])
            loss_sum += float(loss.detach()) * b
            n += b
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v) * b
        # Every rank reports the epoch's loss over all ranks' samples.
        totals = self.dist.all_reduce_sums(
            {"loss": loss_sum, "n": n, **{f"log/{k}": v for k, v in logs_sum.items()}}
        )
        loss_sum, n = totals["loss"], int(totals["n"])
        logs_sum = {k: totals[f"log/{k}"] for k in logs_sum}
        return loss_sum / max(n, 1), {k: v / max(n, 1) for k, v in logs_sum.items()}, n

    # --- bookkeeping ----------------------------------------------------------------------------------------
    def _summary(
        self, status: str, counters: Mapping[str, Any], last_epoch: int, error: str | None = None
    ) -> dict:
        best = counters.get("best_val_loss", math.inf)
        return {
            "status": status,
            "case": self.case.name,
            "epochs_completed": last_epoch + 1,
            "max_epochs": self.config.epochs,
            "best_epoch": counters.get("best_epoch", -1),
            # The best value of the monitored loss (named by "monitored"; the key keeps its old name).
            "best_val_loss": best if math.isfinite(best) else None,
            "best_val_action_loss": best if math.isfinite(best) else None,
            "monitored": "val_action_loss" if self.datasets.get("val") is not None else "train_action_loss",
            "early_stopped": bool(counters.get("early_stopped", False)),
            "wall_time_s": float(counters.get("wall_time_s", 0.0)),
            "error": error,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def _write_summary(self, summary: Mapping[str, Any]) -> None:
        write_summary(self.out_dir, summary)


def _val_metrics(val: Mapping[str, Any], action_dims: Sequence[str]) -> dict[str, Any]:
    if val["n"] == 0:
        return {}
    return compute_metrics(val["predictions"], val["targets"], axis_names=tuple(action_dims))
