"""The demo's jobs and the pool that runs them: trainings and evaluations in worker processes.

Each job is a top-level function (a spawned worker imports it by name) called as
`function(backbone_profile, *args)` that returns a picklable dict; `JobPool` runs named jobs in
`workers` processes with one thread each, or inline when `workers` is 1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_WORKER: dict[str, Any] = {}


def _timed(function: Any, *args: Any) -> tuple[dict[str, Any], float]:
    """`function(*args)` and the seconds it ran (measured where it ran, not counting time in the queue)."""
    started = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - started


def _worker_init(threads: int) -> None:
    import os

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    torch.set_num_threads(threads)


def _worker_backbone(profile: str) -> Any:
    """One backbone per worker process, built on its first job."""
    if profile not in _WORKER:
        from mobile_vla.backbones import create_backbone

        _WORKER[profile] = create_backbone(profile, device="auto")
    return _WORKER[profile]


def train_job(profile: str, config: Any, data_dir: Path, run_dir: Path) -> dict[str, Any]:
    import torch

    from mobile_vla.training.trainer import Trainer

    threads = torch.get_num_threads()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    try:
        result = Trainer(config, data_dir, run_dir, backbone=_worker_backbone(profile), progress=False).fit()
    finally:
        torch.set_num_threads(threads)
    sampling = None
    record = run_dir / "config.json"
    if record.is_file():
        sampling = json.loads(record.read_text()).get("sampling") or None
    return {**dict(result), "run_dir": str(run_dir), "sampling": sampling}


def _closed_loop(profile: str, run_dir: Path, episodes: int, plan: Any, name: str) -> dict[str, Any]:
    from mobile_vla.policies import load_policy
    from mobile_vla.sim.env import SimConfig
    from mobile_vla.sim.evaluate import evaluate_closed_loop

    policy = load_policy(run_dir, backbone=_worker_backbone(profile))
    return evaluate_closed_loop(
        policy,
        episodes=episodes,
        seed=plan.eval_seed,
        config=SimConfig(image_size=(plan.image_size, plan.image_size)),
        progress=False,
        policy_name=name,
        lockstep=plan.eval_lockstep,
    )


def evaluate_job(
    profile: str, run_dir: Path, data_dir: Path, episodes: int, plan: Any, name: str
) -> dict[str, Any]:
    from mobile_vla.evaluation.evaluate import evaluate_run

    offline = evaluate_run(run_dir, data_dir, "test", backbone=_worker_backbone(profile), progress=False)
    return {"offline": offline, "closed": _closed_loop(profile, run_dir, episodes, plan, name)}


def closed_loop_job(profile: str, run_dir: Path, episodes: int, plan: Any, name: str) -> dict[str, Any]:
    return {"closed": _closed_loop(profile, run_dir, episodes, plan, name)}


def expert_job(profile: str, episodes: int, plan: Any) -> dict[str, Any]:
    from mobile_vla.sim.env import SimConfig
    from mobile_vla.sim.evaluate import evaluate_closed_loop

    config = SimConfig(image_size=(plan.image_size, plan.image_size))
    return {
        "closed": evaluate_closed_loop(
            "expert", episodes=episodes, seed=plan.eval_seed, config=config, progress=False
        )
    }


def collect_data(
    data_dir: Path, episodes: int, seed: int, image_size: int, mix: str | None, progress: bool
) -> dict[str, Any]:
    from mobile_vla.data.validation import find_episode_files
    from mobile_vla.sim.collect import collect_episodes
    from mobile_vla.sim.env import SimConfig

    started = time.perf_counter()
    existing = find_episode_files(data_dir) if data_dir.exists() else []
    if len(existing) >= episodes:
        print(f"   reusing {len(existing)} episodes already in {data_dir}")
        return {"episodes": len(existing), "reused": True}
    config = SimConfig(image_size=(image_size, image_size))
    collect_episodes(data_dir, episodes, seed=seed, config=config, progress=progress, mix=mix)
    return {"episodes": episodes, "seconds": round(time.perf_counter() - started, 1), "mix": mix}


def cache_features(backbone: Any, data_dir: Path, progress: bool, mirrored: bool = False) -> Any:
    from mobile_vla.data import EpisodeDataset
    from mobile_vla.data.cache import build_cache

    episodes = EpisodeDataset(data_dir).episodes
    return build_cache(
        backbone, episodes, kinds=("vision", "image_tokens"), progress=progress, mirrored=mirrored
    )


def collect_and_cache_job(
    profile: str, data_dir: Path, episodes: int, seed: int, image_size: int, mix: str, mirrored: bool = False
) -> dict[str, Any]:
    collected = collect_data(data_dir, episodes, seed, image_size, mix, progress=False)
    cache_features(_worker_backbone(profile), data_dir, progress=False, mirrored=mirrored)
    return {**collected, "data_dir": str(data_dir), "status": "finished"}


class JobPool:
    """Run named jobs in `workers` spawned processes (one thread each), or inline when `workers` is 1.

    A job is `(function, args)`; the function is called as `function(backbone_profile, *args)` and returns a
    picklable dict. `run` prints each job's start and end (the pool's progress) and returns every result by
    name; a job that raises re-raises here with its name. A job's follow-ups (`then`) are queued the moment it
    finishes, so that, say, a case's evaluation runs while a longer training still occupies the other worker.
    """

    def __init__(self, workers: int, profile: str, threads: int = 1) -> None:
        self.workers = max(1, int(workers))
        self.profile = profile
        self.threads = threads
        self._executor: Any = None
        if self.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._executor = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(threads,),
            )

    def describe(self) -> str:
        if self.workers == 1:
            return "one job at a time in this process"
        return f"{self.workers} worker processes, {self.threads} thread each"

    def run(
        self,
        jobs: dict[str, tuple[Any, tuple[Any, ...]]],
        order: list[str] | None = None,
        then: Callable[[str, dict[str, Any]], dict[str, tuple[Any, tuple[Any, ...]]] | None] | None = None,
    ) -> dict[str, Any]:
        """Every job's result by name, follow-ups included: `then(name, result)` may return more jobs, queued
        as soon as `name` finishes (after the jobs already queued)."""
        jobs = dict(jobs)
        names = [n for n in (order or []) if n in jobs] + [n for n in jobs if n not in (order or [])]
        queue = [(name, jobs[name]) for name in names]
        results: dict[str, Any] = {}

        def finished(name: str, value: dict[str, Any], seconds: float) -> list[tuple[str, Any]]:
            results[name] = self._finish(name, value, seconds)
            more = (then(name, results[name]) if then else None) or {}
            clash = sorted(set(more) & (set(results) | set(jobs)))
            if clash:
                raise ValueError(f"follow-up jobs of {name!r} reuse job names: {clash}")
            jobs.update(more)
            return list(more.items())

        if self._executor is None:
            while queue:
                name, (function, args) = queue.pop(0)
                print(f"   - {name}: started", flush=True)
                try:
                    value, seconds = _timed(function, self.profile, *args)
                except Exception as exc:
                    raise RuntimeError(f"demo job {name!r} failed: {type(exc).__name__}: {exc}") from exc
                queue.extend(finished(name, value, seconds))
            return results
        from concurrent.futures import FIRST_COMPLETED, wait

        pending: dict[Any, str] = {}

        def submit(batch: list[tuple[str, Any]]) -> None:
            for name, (function, args) in batch:
                pending[self._executor.submit(_timed, function, self.profile, *args)] = name
            if batch:
                print(f"   - queued on {self.workers} workers: {', '.join(n for n, _ in batch)}", flush=True)

        submit(queue)
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                name = pending.pop(future)
                try:
                    value, seconds = future.result()
                except Exception as exc:
                    raise RuntimeError(f"demo job {name!r} failed: {type(exc).__name__}: {exc}") from exc
                submit(finished(name, value, seconds))
        return results

    @staticmethod
    def _finish(name: str, value: dict[str, Any], seconds: float) -> dict[str, Any]:
        seconds = round(seconds, 1)
        detail = ""
        if "epochs_completed" in value:
            detail = f", {value['epochs_completed']} epochs ({value.get('status')})"
        print(f"   - {name}: done, {seconds:.0f} s{detail}", flush=True)
        return {**value, "job_seconds": seconds}

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def fmt_rate(result: dict[str, Any]) -> str:
    interval = result.get("success_rate_ci95")
    text = f"{100 * result['success_rate']:.0f}%"
    if interval:
        text += f" [{100 * interval[0]:.0f}%, {100 * interval[1]:.0f}%]"
    return text + f" (n={result['n']} episodes)"
