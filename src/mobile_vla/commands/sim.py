"""`mobile-vla sim ...`: the lab's task in MuJoCo: expert demonstrations, closed-loop evaluation, previews."""

from __future__ import annotations

import argparse
import json
import os
import sys

_SCENARIO_HELP = (
    "scenarios: 'all' (default), task names like 1box_vert_left (all patterns and distances) or full names "
    "like 2box_hori_right_variant_far"
)


def _image_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"image size must look like 224 or 720x1280 (HxW), got {text!r}")
    return parts[0], parts[1]


def _add_sim_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--image-size", type=_image_size, default=(224, 224), help="camera frames, N or HxW (default 224)"
    )
    p.add_argument(
        "--motion-noise",
        type=float,
        default=None,
        help="relative speed error per command (wheel slip; default 0.03, 0 = exact motion)",
    )
    p.add_argument("--shadows", action="store_true", help="render shadows (about 2x slower on CPU)")


def _config(args: argparse.Namespace):
    from mobile_vla.sim.env import SimConfig

    kwargs = {"image_size": args.image_size, "shadows": args.shadows}
    if args.motion_noise is not None:
        kwargs["motion_noise"] = args.motion_noise
    return SimConfig(**kwargs)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sim",
        help="simulate the lab's task (MuJoCo): collect expert episodes, evaluate policies in closed loop",
        description="The lab's navigation task in MuJoCo: one or two cardboard boxes, a beverage bottle beyond "
        "them, a holonomic base with a forward camera. A key press (1.15) drives 0.5 m/s for 0.4 s (0.2 m).",
    )
    sub = parser.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    collect = sub.add_parser(
        "collect",
        help="write expert demonstrations in the robot's HDF5 format",
        description="Write expert episodes (episode_<date>_<time>_<scenario>.h5, provenance=sim) balanced over "
        "the requested scenarios. Deterministic for a seed.",
    )
    collect.add_argument("--out", required=True, help="output directory")
    collect.add_argument("--episodes", type=int, default=48, help="number of episodes (default 48)")
    collect.add_argument("--seed", type=int, default=0)
    collect.add_argument("--scenarios", nargs="+", default=None, metavar="NAME", help=_SCENARIO_HELP)
    collect.add_argument(
        "--style",
        choices=("teleop", "continuous"),
        default="teleop",
        help="teleop: one key per step, each axis -1.15/0/+1.15, like the lab's operator (default); "
        "continuous: smooth velocities",
    )
    collect.add_argument(
        "--frames", type=int, default=18, help="frames per episode incl. episode_start (default 18)"
    )
    collect.add_argument(
        "--mix",
        default=None,
        metavar="KEY=W,...",
        help="draw scenarios in proportion to weights per factor value instead of evenly, e.g. "
        "'left=3,right=1,core=4,variant=1' (keys: left/right, core/variant, close/medium/far, vert/hori, "
        "1box/2box; a scenario's weight is the product): a deliberately imbalanced dataset",
    )
    _add_sim_options(collect)
    collect.set_defaults(func=_collect)

    evaluate = sub.add_parser(
        "evaluate",
        help="run a policy in closed loop: success rate, collision rate, SPL",
        description="Drive a policy from the camera frame and the instruction, each action held 0.4 s as on "
        "the robot, and report success rate, collision rate, SPL and mean steps with n and 95%% intervals, "
        "overall and per scenario. Episodes are drawn from a stream separate from `collect`'s.",
    )
    evaluate.add_argument(
        "--policy",
        required=True,
        help="'expert', 'random', a training run directory, an ONNX export (`mobile-vla export`, run on "
        "onnxruntime), or a server URL (http://HOST:PORT; API key from $VLA_API_KEY)",
    )
    evaluate.add_argument("--episodes", type=int, default=48, help="number of episodes (default 48)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--scenarios", nargs="+", default=None, metavar="NAME", help=_SCENARIO_HELP)
    evaluate.add_argument(
        "--max-steps", type=int, default=18, help="step budget per episode (default 18, the lab's node)"
    )
    evaluate.add_argument("--expert-style", choices=("teleop", "continuous"), default="teleop")
    evaluate.add_argument("--device", default="auto", help="for a run directory: cpu, cuda or auto")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("--out", metavar="FILE", help="also write the full result (with episodes) as JSON")
    evaluate.add_argument("--video", metavar="DIR", help="write an annotated GIF per episode to DIR")
    _add_sim_options(evaluate)
    from mobile_vla.registry import add_tracking_arguments

    add_tracking_arguments(evaluate)
    evaluate.set_defaults(func=_evaluate)

    preview = sub.add_parser("preview", help="save the robot's first view (and an overview) of a scenario")
    preview.add_argument("--scenario", default="2box_vert_left_core_medium")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--out", required=True, help="PNG file")
    _add_sim_options(preview)
    preview.set_defaults(func=_preview)


def _collect(args: argparse.Namespace) -> int:
    from mobile_vla.sim.collect import collect_episodes

    try:
        report = collect_episodes(
            args.out,
            args.episodes,
            seed=args.seed,
            scenarios=args.scenarios,
            style=args.style,
            frames=args.frames,
            config=_config(args),
            mix=args.mix,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {len(report.paths)} episodes to {args.out} in {report.seconds:.1f} s "
        f"({report.episodes_per_second:.2f} episodes/s); expert retried {report.retried} layouts, "
        f"skipped {len(report.skipped)}"
    )
    return 0 if report.paths else 1


def load_control_policy(spec: str, device: str = "auto"):
    """A `ControlPolicy` for `--policy`: a server URL or a run directory (`expert`/`random` are built in)."""
    if spec.startswith(("http://", "https://")):
        from mobile_vla.serving.client import VLAClient  # the serving package's HTTP ControlPolicy

        return VLAClient(spec, api_key=os.environ.get("VLA_API_KEY"))
    if spec.startswith("models:/"):
        from mobile_vla.policies.inference import resolve_run_dir

        spec = str(resolve_run_dir(spec))
    if not os.path.isdir(spec):
        raise ValueError(f"--policy {spec!r}: not 'expert', 'random', a run directory or an http(s):// URL")
    from mobile_vla.serving.onnx_runtime import OnnxPolicy, is_onnx_export

    if is_onnx_export(spec):  # `mobile-vla export` output: the onnxruntime policy the robot would run
        return OnnxPolicy(spec)
    try:
        from mobile_vla.policies import load_policy
    except ImportError as exc:
        raise ValueError(
            f"--policy {spec!r}: loading a run directory needs mobile_vla.policies.load_policy ({exc})"
        ) from exc
    return load_policy(spec, device=device)


def _format(result: dict) -> str:
    def line(name: str, m: dict) -> str:
        s, c = m["success_rate_ci95"], m["collision_rate_ci95"]
        return (
            f"{name:<22} n={m['n']:<4} success {m['success_rate']:6.1%} [{s[0]:.1%}, {s[1]:.1%}]  "
            f"collision {m['collision_rate']:6.1%} [{c[0]:.1%}, {c[1]:.1%}]  SPL {m['spl']:.3f}  "
            f"steps {m['mean_steps']:.1f}"
        )

    rows = [
        f"policy {result['policy']}, seed {result['seed']}, max {result['max_steps']} steps",
        line("overall", result),
    ]
    rows += [line(k, v) for k, v in result["per_scenario"].items()]
    rows += [line(f"distance {k}", v) for k, v in result["per_distance"].items()]
    t = result["timing"]
    rows.append(
        f"{t['steps']} steps in {t['wall_s']:.1f} s ({t['steps_per_s']:.1f} steps/s; policy "
        f"{t['policy_ms_per_step']:.1f} ms/step, render {t['render_ms_per_frame']:.1f} ms/frame)"
    )
    return "\n".join(rows)


def _evaluate(args: argparse.Namespace) -> int:
    from mobile_vla.registry import RegistryUnavailableError, registry_from_args
    from mobile_vla.sim.evaluate import BUILTIN_POLICIES, evaluate_closed_loop

    run_dir = None
    if args.policy not in BUILTIN_POLICIES and not args.policy.startswith(("http://", "https://")):
        try:
            registry = registry_from_args(args)
        except RegistryUnavailableError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.policy.startswith("models:/"):
            from mobile_vla.policies.inference import resolve_run_dir

            args.policy = str(resolve_run_dir(args.policy))
        from mobile_vla.serving.onnx_runtime import is_onnx_export

        run_dir = None if is_onnx_export(args.policy) else args.policy  # an export is not a registry run
    try:
        policy = (
            args.policy if args.policy in BUILTIN_POLICIES else load_control_policy(args.policy, args.device)
        )
        result = evaluate_closed_loop(
            policy,
            episodes=args.episodes,
            seed=args.seed,
            scenarios=args.scenarios,
            max_steps=args.max_steps,
            config=_config(args),
            video_dir=args.video,
            expert_style=args.expert_style,
            policy_name=args.policy,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if run_dir is not None:  # a trained run: its closed-loop result goes to the registry with it
        registry.log_closed_loop(run_dir, result)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    if args.json:
        summary = {k: v for k, v in result.items() if k not in ("records", "config", "scenarios")}
        print(json.dumps(summary, indent=2))
    else:
        print(_format(result))
        if args.video:
            print(f"videos: {args.video}")
    return 0


def _preview(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from mobile_vla.sim.env import LabEnv

    env = LabEnv(_config(args))
    try:
        ego = env.reset(args.scenario, args.seed)
        overview = env.render((ego.shape[0], round(ego.shape[0] * 4 / 3)), camera="overview")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        env.close()
    Image.fromarray(np.concatenate([ego, overview], axis=1)).save(args.out)
    print(f"{args.out}: {env.scenario.full_name}, seed {args.seed}: {env.instruction!r}")
    return 0
