"""Per-step latency of the PyTorch runtime vs onnxruntime on this CPU, for an exported run and a vision tower.

    python benchmarks/onnx_runtime.py [--repeats 20] [--kosmos2-repeats 5] [--threads 1 2] [--skip-kosmos2]
    python benchmarks/onnx_runtime.py --precision-only --runs /work/demo_final/runs [--cases case1 case2 case4]

- `precision` (with `--runs DIR`, trained runs DIR/case1.. read-only): each run exported twice, fp32 and
  `--precision int8` (dynamic int8 head); parity = max |int8 - fp32 action| on the same held-out frames (200
  frames of the run's own test episodes; Case 4 stepped episode by episode through its history); per-step
  latency of both on onnxruntime (1 thread; the head graph alone too); closed-loop success of both on the same
  simulator seeds (`--episodes`, for `--closed-loop-cases`). `--precision-only` updates just this entry of
  the JSON.
- `vision_variants`: why int8 leaves the vision graph fp32 and no fp16 variant is offered: the lite vision graph
  in fp16 and with dynamic int8 convolutions vs fp32 on onnxruntime's CPU provider (latency, max |difference|);
  `--vision-variants-only` updates just this entry.

- `lite`: a Case 1 run on the `lite` backbone (trained for one epoch on synthetic episodes: timing, not
  accuracy), exported with `export_onnx`. One control step is `act(frame, instruction)` on a 720x1280 uint8
  frame with the lab's instruction (its text feature cached after the first step), through
  `InferencePolicy` (torch) and `OnnxPolicy` (onnxruntime, CPUExecutionProvider); also the vision graph alone
  vs the torch vision forward on the same resized pixels. Each runtime is timed in its own blocks (two
  rounds), not step by step: see `blocks`.
- `kosmos2-vision`: the full-size Kosmos-2 vision tower (ViT-L/14 at 224 px, 303 M parameters, RANDOM
  weights built locally from `Kosmos2Config()`: timing only), torch forward vs the same module exported to
  ONNX, on one preprocessed 224x224 frame.

Both runtimes get the same number of threads, for each of `--threads` (default 1 and 2): on a shared 2-core
machine torch's 2-thread steps suffer far more from other processes than onnxruntime's, so both are kept. Writes benchmarks/results/onnx_runtime.json:
per entry the median and 2.5-97.5 percentile range of each runtime (ms, with n), the ratio torch/onnx of the
medians, and the max |difference| of the outputs.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import RESULTS, machine, summary, write_result


def blocks(torch_fn, onnx_fn, repeats: int, rounds: int = 2, warmup: int = 2) -> dict[str, Any]:
    """Each runtime in its own blocks (torch, onnx, torch, onnx, ...), warmed up at the start of every block.

    Not step-by-step alternation: onnxruntime's worker threads spin for a while after each run (its
    default), which on a 2-core machine would slow the torch step that follows and inflate the ratio."""
    times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    per_block = max(1, repeats // rounds)
    for _ in range(rounds):
        for name, fn in (("torch", torch_fn), ("onnxruntime", onnx_fn)):
            for _ in range(warmup):
                fn()
            for _ in range(per_block):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    t, o = summary(times["torch"]), summary(times["onnxruntime"])
    return {
        "torch": t,
        "onnxruntime": o,
        "ratio_torch_over_onnx": round(t["median_ms"] / o["median_ms"], 3),
        "method": f"{rounds} rounds of {per_block} timed steps per runtime, {warmup} warm-up steps per block",
    }


def bench_lite(repeats: int, threads: list[int], work: Path) -> dict[str, Any]:
    from mobile_vla.data.episodes import instruction_for_side
    from mobile_vla.data.synthetic import write_synthetic_dataset
    from mobile_vla.export.onnx import export_onnx
    from mobile_vla.policies import load_policy
    from mobile_vla.serving.onnx_runtime import OnnxPolicy, resize_frame
    from mobile_vla.training.config import resolve_train_config
    from mobile_vla.training.trainer import Trainer

    write_synthetic_dataset(work / "episodes", episodes=8, seed=0, image_size=(48, 64))
    config = resolve_train_config(
        "case1", overrides={"epochs": 1, "batch_size": 4, "backbone": "lite", "device": "cpu"}
    )
    Trainer(config, work / "episodes", work / "run", progress=False).fit()
    t0 = time.perf_counter()
    sidecar = export_onnx(work / "run", work / "export", verify_frames=8, progress=False)
    export_s = time.perf_counter() - t0
    torch_policy = load_policy(work / "run", device="cpu")
    frame = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    text = instruction_for_side("left")
    from mobile_vla.export.onnx_modules import LiteVision

    vision = LiteVision(torch_policy.provider.backbone).eval()
    pixels = resize_frame(frame, sidecar["preprocessing"]["image"])[None].copy()  # (1, 224, 224, 3)
    x = torch.from_numpy(pixels)
    by_threads = {}
    for n in threads:
        torch.set_num_threads(n)
        onnx_policy = OnnxPolicy(work / "export", threads=n)
        session = onnx_policy.sessions["vision"]

        def torch_vision() -> None:
            with torch.no_grad():
                vision(x)

        by_threads[str(n)] = {
            "step": blocks(
                lambda: torch_policy.act(frame, text), lambda p=onnx_policy: p.act(frame, text), repeats
            ),
            "vision_graph_only": blocks(
                torch_vision, lambda s=session: s.run(None, {"pixels": pixels}), repeats
            ),
            "max_abs_action_diff": float(
                np.abs(torch_policy.act(frame, text) - onnx_policy.act(frame, text)).max()
            ),
        }
        print(f"lite, {n} thread(s):", by_threads[str(n)]["step"])
        del onnx_policy, session
        gc.collect()
    return {
        "what": "act(720x1280 frame, instruction): resize + vision + cached text + Case 1 head",
        "threads": by_threads,
        "export_s": round(export_s, 1),
        "export_verification": sidecar.get("verification"),
        "graph_mb": {
            name: round((work / "export" / g["file"]).stat().st_size / 2**20, 1)
            for name, g in sidecar["graphs"].items()
        },
    }


def bench_kosmos2_vision(repeats: int, threads: list[int], work: Path) -> dict[str, Any]:
    import onnxruntime as ort
    from transformers import Kosmos2Config
    from transformers.models.kosmos2.modeling_kosmos2 import Kosmos2VisionModel

    from mobile_vla.export.onnx import export_graph
    from mobile_vla.export.onnx_modules import Kosmos2Vision

    torch.manual_seed(0)
    tower = Kosmos2VisionModel(Kosmos2Config().vision_config).eval()
    module = Kosmos2Vision(tower).eval()
    params = sum(p.numel() for p in tower.parameters())
    x = torch.randn(1, 3, 224, 224)
    t0 = time.perf_counter()
    export_graph(
        module,
        (torch.randn(2, 3, 224, 224),),
        work / "kosmos2_vision.onnx",
        input_names=["pixel_values"],
        output_names=["vision", "image_tokens"],
        dynamic={"pixel_values": {0: "batch"}},
        opset=18,
    )
    export_s = time.perf_counter() - t0
    by_threads = {}
    for n in threads:
        torch.set_num_threads(n)
        options = ort.SessionOptions()
        options.intra_op_num_threads = n
        session = ort.InferenceSession(
            str(work / "kosmos2_vision.onnx"), options, providers=["CPUExecutionProvider"]
        )

        def torch_fn() -> None:
            with torch.no_grad():
                module(x)

        by_threads[str(n)] = blocks(
            torch_fn, lambda s=session: s.run(None, {"pixel_values": x.numpy()}), repeats, rounds=1, warmup=1
        )
        print(f"kosmos2-vision, {n} thread(s):", by_threads[str(n)])
    with torch.no_grad():
        ref = module(x)
    got = session.run(None, {"pixel_values": x.numpy()})
    return {
        "what": "full-size Kosmos-2 vision tower (ViT-L/14, 224 px), RANDOM weights, 1 frame",
        "parameters": params,
        "threads": by_threads,
        "max_abs_diff": {
            "vision": float(np.abs(ref[0].numpy() - got[0]).max()),
            "image_tokens": float(np.abs(ref[1].numpy() - got[1]).max()),
        },
        "export_s": round(export_s, 1),
        "graph_mb": round((work / "kosmos2_vision.onnx").stat().st_size / 2**20, 1),
    }


def _test_frames(run: Path, limit: int) -> list[tuple[list[np.ndarray], str]]:
    """The run's own test episodes (never trained on), as (frames, instruction), up to ``limit`` frames."""
    import json

    from mobile_vla.data.dataset import load_episodes

    record = json.loads((run / "config.json").read_text())
    test = set(record["data"]["split"]["test"])
    episodes, _ = load_episodes(record["data"]["path"])
    out, total = [], 0
    for episode in sorted((e for e in episodes if e.episode_id in test), key=lambda e: e.episode_id):
        frames = [episode.image(i) for i in range(episode.num_frames)][: limit - total]
        out.append((frames, episode.instruction))
        total += len(frames)
        if total >= limit:
            break
    return out


def bench_precision(
    runs: Path, cases: list[str], closed_loop_cases: list[str], episodes: int, repeats: int, work: Path
) -> dict[str, Any]:
    from mobile_vla.export.onnx import INT8_GRAPHS

    torch.set_num_threads(1)
    out: dict[str, Any] = {
        "what": "fp32 vs --precision int8 (onnxruntime dynamic int8 of the head graph's MatMul/Gemm; "
        f"graphs quantised: {list(INT8_GRAPHS)}), trained runs from {runs}",
        "cases": {},
    }
    for case in cases:
        out["cases"][case] = _bench_precision_case(runs / case, closed_loop_cases, episodes, repeats, work)
        gc.collect()
    return out


def _bench_precision_case(
    run: Path, closed_loop_cases: list[str], episodes: int, repeats: int, work: Path
) -> dict[str, Any]:
    from mobile_vla.export.onnx import compare_episodes, export_onnx
    from mobile_vla.serving.onnx_runtime import OnnxPolicy
    from mobile_vla.sim.evaluate import evaluate_closed_loop

    case = run.name
    entry: dict[str, Any] = {}
    for precision in ("fp32", "int8"):
        t0 = time.perf_counter()
        sidecar = export_onnx(
            run, work / f"{case}-{precision}", precision=precision, verify_frames=8, progress=False
        )
        entry[f"export_{precision}_s"] = round(time.perf_counter() - t0, 1)
        entry[f"verification_{precision}_vs_torch"] = sidecar["verification"]
    fp32 = OnnxPolicy(work / f"{case}-fp32", threads=1)
    int8 = OnnxPolicy(work / f"{case}-int8", threads=1)
    held_out = _test_frames(run, 200)
    parity = compare_episodes(fp32, int8, held_out)  # act frame by frame, reset per episode
    if fp32.history_length == 1:
        images = [f for frames, _ in held_out for f in frames]
        texts = [t for frames, t in held_out for _ in frames]
        a, b = fp32.act_batch(images, texts), int8.act_batch(images, texts)
        parity["act_batch_max_abs_diff"] = float(np.abs(a - b).max())
    entry["parity_int8_vs_fp32"] = parity
    frame = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    text = held_out[0][1]
    entry["step"] = {
        "what": "act(720x1280 frame, instruction) on onnxruntime, 1 thread",
        **_pair(lambda: fp32.act(frame, text), lambda: int8.act(frame, text), repeats),
    }
    feeds = _head_feeds(fp32, frame, text)
    entry["head_only"] = _pair(
        lambda: fp32.sessions["head"].run(None, feeds),
        lambda: int8.sessions["head"].run(None, feeds),
        repeats,
    )
    entry["head_mb"] = {
        p: round((work / f"{case}-{p}" / "head.onnx").stat().st_size / 2**20, 2) for p in ("fp32", "int8")
    }
    if case in closed_loop_cases:
        kwargs = {"episodes": episodes, "seed": 10000, "progress": False}
        loops = {p: evaluate_closed_loop(pol, **kwargs) for p, pol in (("fp32", fp32), ("int8", int8))}
        same = sum(
            (a["success"], a["collided"]) == (b["success"], b["collided"])
            for a, b in zip(loops["fp32"]["records"], loops["int8"]["records"], strict=True)
        )
        entry["closed_loop"] = {
            "episodes": episodes,
            "seed": 10000,
            **{
                p: {k: r[k] for k in ("n", "success_rate", "success_rate_ci95", "collision_rate", "spl")}
                for p, r in loops.items()
            },
            "episodes_with_the_same_outcome": same,
        }
    print(case, json.dumps({k: v for k, v in entry.items() if not k.startswith("verification")}, default=str))
    return entry


def bench_vision_variants(repeats: int, work: Path) -> dict[str, Any]:
    """Why the export keeps the vision graph fp32: the lite vision graph converted to fp16 (onnxruntime's
    ``convert_float_to_float16``, fp32 inputs/outputs kept) and with dynamic int8 convolutions
    (``quantize_dynamic`` on Conv, uint8 per-channel weights) vs fp32, on onnxruntime's CPU provider, 1 thread."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from mobile_vla.backbones import create_backbone
    from mobile_vla.export.onnx import export_graph
    from mobile_vla.export.onnx_modules import LITE

    backbone = create_backbone("lite", device="cpu")
    path = work / "vision-fp32.onnx"
    export_graph(
        LITE.vision(backbone),
        (LITE.example_pixels(backbone, 2),),
        path,
        input_names=["pixels"],
        output_names=["vision", "image_tokens"],
        dynamic={"pixels": {0: "batch"}},
        opset=18,
    )
    model = onnx.load(str(path))
    del model.graph.value_info[:]
    onnx.save(model, str(path))
    onnx.save(convert_float_to_float16(model, keep_io_types=True), str(work / "vision-fp16.onnx"))
    quantize_dynamic(
        str(path), str(work / "vision-int8_conv.onnx"), op_types_to_quantize=["Conv"],
        weight_type=QuantType.QUInt8, per_channel=True,
    )  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    x = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    fp32 = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ref = fp32.run(None, {"pixels": x})
    out: dict[str, Any] = {
        "what": "lite vision graph (EfficientNet-Lite0, 1x224x224) on onnxruntime CPU, 1 thread: fp32 vs variants"
    }
    for variant in ("fp16", "int8_conv"):
        session = ort.InferenceSession(
            str(work / f"vision-{variant}.onnx"), options, providers=["CPUExecutionProvider"]
        )
        got = session.run(None, {"pixels": x})
        result = blocks(
            lambda: fp32.run(None, {"pixels": x}), lambda s=session: s.run(None, {"pixels": x}), repeats
        )
        out[variant] = {
            "fp32": result["torch"],
            variant: result["onnxruntime"],
            "ratio_fp32_over_variant": result["ratio_torch_over_onnx"],
            "max_abs_diff": {
                "vision": float(np.abs(ref[0] - got[0].astype(np.float32)).max()),
                "image_tokens": float(np.abs(ref[1] - got[1].astype(np.float32)).max()),
            },
        }
        print(variant, out[variant])
    return out


def _pair(fp32_fn, int8_fn, repeats: int) -> dict[str, Any]:
    result = blocks(fp32_fn, int8_fn, repeats)
    return {
        "fp32": result["torch"],  # `blocks` names its two slots torch/onnxruntime: here fp32/int8
        "int8": result["onnxruntime"],
        "ratio_fp32_over_int8": result["ratio_torch_over_onnx"],
        "method": result["method"],
    }


def _head_feeds(policy: Any, frame: np.ndarray, text: str) -> dict[str, np.ndarray]:
    """The head's inputs for one frame, captured from the policy's own last call."""
    captured: dict[str, np.ndarray] = {}
    session = policy.sessions["head"]

    class Capture:
        def run(self, names, feeds):
            captured.update(feeds)
            return session.run(names, feeds)

        def __getattr__(self, name):
            return getattr(session, name)

    policy.sessions["head"] = Capture()
    try:
        policy.act(frame, text)
    finally:
        policy.sessions["head"] = session
    return captured


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeats", type=int, default=20, help="timed steps per runtime for lite (default 20)"
    )
    parser.add_argument(
        "--kosmos2-repeats", type=int, default=5, help="timed steps per runtime for Kosmos-2 (default 5)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="thread counts, the same for both runtimes (default 1 2)",
    )
    parser.add_argument("--skip-kosmos2", action="store_true", help="lite only")
    parser.add_argument("--runs", type=Path, help="trained runs DIR/case1.. for the fp32 vs int8 comparison")
    parser.add_argument("--cases", nargs="+", default=["case1", "case2", "case4"], help="runs to compare")
    parser.add_argument(
        "--closed-loop-cases", nargs="+", default=["case1", "case2"], help="cases also run in closed loop"
    )
    parser.add_argument("--episodes", type=int, default=24, help="closed-loop episodes per precision")
    parser.add_argument(
        "--precision-only",
        action="store_true",
        help="only the fp32/int8 entry (needs --runs; keeps the rest)",
    )
    parser.add_argument(
        "--vision-variants-only",
        action="store_true",
        help="only the fp16/int8 vision-graph check (keeps the rest)",
    )
    args = parser.parse_args()
    previous = RESULTS / "onnx_runtime.json"
    if args.precision_only or args.vision_variants_only:
        if args.precision_only and not args.runs:
            parser.error("--precision-only needs --runs DIR")
        payload = json.loads(previous.read_text()) if previous.is_file() else {"results": {}}
    else:
        payload = {"machine": machine(), "threads": args.threads, "results": {}}
    with tempfile.TemporaryDirectory(prefix="onnx-bench-") as tmp:
        work = Path(tmp)
        if not (args.precision_only or args.vision_variants_only):
            payload["results"]["lite"] = bench_lite(args.repeats, args.threads, work)
            gc.collect()
            if not args.skip_kosmos2:
                payload["results"]["kosmos2-vision"] = bench_kosmos2_vision(
                    args.kosmos2_repeats, args.threads, work
                )
        if not args.precision_only:
            payload["results"].pop("fp16_vision", None)
            payload["results"]["vision_variants"] = {
                "machine": machine(),
                **bench_vision_variants(args.repeats, work),
            }
        if args.runs and not args.vision_variants_only:
            payload["results"]["precision"] = {
                "machine": machine(),
                **bench_precision(
                    args.runs, args.cases, args.closed_loop_cases, args.episodes, args.repeats, work
                ),
            }
    payload["not_measured"] = {
        "fp16": "no fp16 variant is offered: on this CPU the fp16 vision graph is slower (vision_variants)",
        "tensorrt": "TensorRT (trtexec on a Jetson) was not run: no Jetson or NVIDIA GPU here",
    }
    write_result("onnx_runtime.json", payload)


if __name__ == "__main__":
    main()
