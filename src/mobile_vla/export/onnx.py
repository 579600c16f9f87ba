"""``export_onnx``: a trained run -> ONNX graphs + a JSON sidecar that ``serving.onnx_runtime`` serves.

    info = export_onnx("runs/case1", "exports/case1-onnx")      # vision.onnx, text.onnx, head.onnx, model.json

The directory holds everything a runtime without torch needs: the three graphs (opset >= 17, dynamic batch),
the tokenizer files, and ``model.json`` with the preprocessing, the action axes, the velocity limits and the
fingerprints (backbone, head checkpoint, dataset, each graph file). Before the directory is put in place the
export checks itself: onnxruntime and PyTorch predict the same actions on a few frames, within ``tolerance``
(else it fails and leaves nothing behind).

Exported are runs on an exportable backbone (``lite``) whose head reads:

- backbone features of the current frame (``vision``, ``text``, ``image_tokens``: Case 1 and Case 3);
- Case 2's frozen ``clip_image`` when it is the pretrained reference embedding ``efficientnet-lite0`` (the
  offline fallback): the same EfficientNet-Lite0 tower as the backbone's vision graph (the export checks the
  weights digest and the preprocessing), so the runtime reads it off the vision graph's pooled output. A run
  whose CLIP is anything else (a real CLIP, ``clip-tiny``) is refused, naming it;
- a history window of per-frame features (``history_tokens``/``history_vision`` + ``history_mask``: Case 4),
  which the runtime keeps per episode (``model.json``'s ``history``) as the torch ``InferencePolicy`` does.

Key-class heads (``action_space: keys``) decode inside the head graph (the arg-max class's velocity), so the
runtime serves velocities either way. ``precision="int8"`` adds onnxruntime's dynamic int8 quantisation of the
head graph's matrix products (``INT8_OP_TYPES``; ``INT8_GRAPHS`` says why only the head) after the fp32
export; its differences from PyTorch are measured and recorded (``verification``), with a looser default
tolerance (``INT8_TOLERANCE``).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobile_vla.export.onnx_modules import HeadGraph, adapter_for
from mobile_vla.utils.files import sha256_file

logger = logging.getLogger(__name__)

FORMAT = "mobile-vla-onnx"
FORMAT_VERSION = 2  # 2: frame_features, history, action_space, precision (Case 2, Case 4, int8)
SIDECAR = "model.json"
MIN_OPSET = 17
DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4
EXPORTABLE_FEATURES = ("vision", "image_tokens", "text")
VISION_OUTPUTS = ("vision", "image_tokens")
# A history feature is the window of a per-frame feature (features.providers.HISTORY_FEATURES).
HISTORY_SOURCES = {"history_tokens": "image_tokens", "history_vision": "vision"}
HISTORY_MASK = "history_mask"
HEAD_OUTPUTS = ("action", "action_chunk", "action_logits")
PRECISIONS = ("fp32", "int8")
INT8_OP_TYPES = ("MatMul", "Gemm")
# Which graphs int8 quantises: the head only. Measured on this CPU (2-core EPYC, onnxruntime, 1 thread;
# benchmarks/onnx_runtime.py `vision_variants`): the vision graph has no MatMul/Gemm (EfficientNet is
# convolutions), and dynamic int8 Conv (ConvInteger) made it 3.6x slower (59 vs 16.5 ms) with pooled features
# off by up to 2.9. An int8 MiniLM text graph moved a one-epoch Case 2 head's actions by 0.23 (and it runs once
# per distinct instruction, so it gains nothing per step). The int8 head: actions within 0.013 of fp32.
INT8_GRAPHS = ("head",)
INT8_TOLERANCE = 0.1


@contextmanager
def _quiet_torch_onnx() -> Iterator[None]:
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class _Select(nn.Module):
    """A module as ``forward(*inputs)``, keeping some of its outputs (a graph computes only what the head
    reads)."""

    def __init__(self, module: nn.Module, keep: Sequence[int] | None) -> None:
        super().__init__()
        self.module = module
        self.keep = None if keep is None else tuple(keep)  # None: every output

    def forward(self, *inputs: torch.Tensor) -> Any:
        outputs = self.module(*inputs)
        return outputs if self.keep is None else tuple(outputs[i] for i in self.keep)


def export_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic: dict[str, dict[int, str]],
    opset: int,
) -> None:
    """One module (``forward(*inputs)``) -> one self-contained ``.onnx`` file, with the named axes dynamic."""
    dims: dict[str, Any] = {}
    shapes = []
    for name in input_names:
        axes = dynamic.get(name, {})
        shapes.append({axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in axes.items()})
    if not isinstance(module, _Select):
        module = _Select(module, None)  # the dynamic-shape spec below is for ``forward(*inputs)``
    with warnings.catch_warnings(), _quiet_torch_onnx():
        # torch.export's deprecation chatter and "torchvision is not installed" say nothing about this model.
        warnings.simplefilter("ignore")
        program = _onnx_export(module, args, input_names, output_names, shapes, opset)
    program.save(str(path))


def _onnx_export(module, args, input_names, output_names, shapes, opset):
    return torch.onnx.export(
        module.eval(),
        args,
        dynamo=True,
        opset_version=opset,
        input_names=list(input_names),
        output_names=list(output_names),
        dynamic_shapes=(tuple(shapes),),  # every graph module takes ``*inputs``
        verbose=False,
        report=False,
        external_data=False,
    )


def check_exportable(record: dict[str, Any], policy: nn.Module) -> list[str]:
    """The head's features, or ``ValueError`` saying why this run cannot be exported."""
    case = record.get("case")
    features = list(policy.required_features)
    history = int(getattr(policy, "history_length", 1))
    windowed = [f for f in features if f in HISTORY_SOURCES]
    if history != 1 and not windowed:
        raise ValueError(
            f"{case} reads a history of {history} frames but no per-frame history feature "
            f"({sorted(HISTORY_SOURCES)}); the ONNX export cannot assemble its window: serve this run with the "
            "torch runtime"
        )
    unsupported = []
    for name in features:
        if name == "clip_image":
            clip_source(record)  # raises naming the encoder when it is not the shared reference embedding
        elif name not in EXPORTABLE_FEATURES and name not in HISTORY_SOURCES and name != HISTORY_MASK:
            unsupported.append(name)
    if unsupported:
        raise ValueError(
            f"{case} needs features {unsupported} that the ONNX export does not produce (it exports "
            f"{list(EXPORTABLE_FEATURES)} from the backbone, their history windows and Case 2's reference "
            "clip_image); serve this run with the torch runtime"
        )
    return features


def clip_source(record: dict[str, Any]) -> dict[str, Any]:
    """Where the runtime gets Case 2's ``clip_image``: the vision graph's pooled output, when the run's frozen
    "CLIP" is the reference embedding on the very tower the backbone's vision graph holds. Else ``ValueError``
    naming the encoder."""
    from mobile_vla.backbones.reference import REFERENCE_IMAGE_NAME

    case = record.get("case")
    extra = (record.get("extra_features") or {}).get("clip_image")
    if not isinstance(extra, dict) or not isinstance(extra.get("fingerprint"), dict):
        raise ValueError(
            f"{case} reads clip_image, but config.json has no extra_features.clip_image.fingerprint (the frozen "
            "encoder that computed it): cannot export it; serve this run with the torch runtime"
        )
    clip = extra["fingerprint"]
    used = (record.get("policy") or {}).get("clip_used") or (extra.get("spec") or {}).get("name_or_path")
    if (
        clip.get("encoder") != "reference-image"
        or (clip.get("model") or {}).get("name") != REFERENCE_IMAGE_NAME
    ):
        raise ValueError(
            f"{case} fuses the image embedding of {used!r} ({clip.get('encoder')}); the ONNX export covers Case 2 "
            f"with the reference embedding {REFERENCE_IMAGE_NAME!r} only (the same tower as the lite backbone's "
            "vision graph): serve this run with the torch runtime"
        )
    backbone = (record.get("backbone") or {}).get("fingerprint") or {}
    tower = (backbone.get("model") or {}).get("vision") or {}
    same_weights = tower.get("weights_sha256") == (clip.get("model") or {}).get("weights_sha256")
    if not same_weights or backbone.get("preprocessing") != clip.get("preprocessing"):
        what = "weights" if not same_weights else "preprocessing"
        raise ValueError(
            f"{case}'s clip_image encoder {used!r} differs from the backbone's vision tower in its {what} "
            "(config.json extra_features.clip_image.fingerprint vs backbone.fingerprint); the export computes "
            "clip_image as the vision graph's pooled output only when they are the same: serve this run with "
            "the torch runtime"
        )
    return {
        "graph": "vision",
        "output": "vision",
        "encoder": {k: extra.get(k) for k in ("spec", "fingerprint_hash", "pretrained", "fallback")},
        "note": f"{REFERENCE_IMAGE_NAME} reference embedding = the pooled map of the backbone's own vision "
        "tower (same weights_sha256 and preprocessing), computed once per frame",
    }


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    import mobile_vla

    return {
        "mobile_vla": mobile_vla.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def verification_frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """Deterministic test frames (random blocks and gradients, at the robot's aspect ratio)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(9, 16, 3), dtype=np.uint8)
        frame = np.kron(coarse, np.ones((20, 20, 1), dtype=np.uint8))  # (180, 320, 3)
        noise = rng.integers(0, 24, size=frame.shape, dtype=np.uint8)
        frames.append(np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return frames


def compare_policies(
    torch_policy: Any,
    onnx_policy: Any,
    images: Sequence[Any],
    instructions: Sequence[str],
    batch_size: int = 16,
) -> dict[str, Any]:
    """Actions of both on the same frames: ``{"n", "max_abs_diff", "mean_abs_diff"}``."""
    diffs = []
    for start in range(0, len(images), batch_size):
        imgs, texts = list(images[start : start + batch_size]), list(instructions[start : start + batch_size])
        ref = np.asarray(torch_policy.act_batch(imgs, texts), dtype=np.float64)
        got = np.asarray(onnx_policy.act_batch(imgs, texts), dtype=np.float64)
        diffs.append(np.abs(ref - got))
    diff = np.concatenate(diffs) if diffs else np.zeros((0, 1))
    return {
        "n": int(len(diff)),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
    }


def compare_episodes(
    torch_policy: Any, onnx_policy: Any, episodes: Sequence[tuple[Sequence[Any], str]]
) -> dict[str, Any]:
    """Both stepped through the same episodes (``reset()`` at each start, ``act`` frame by frame), the path
    that history heads (Case 4) take on the robot: ``{"n", "max_abs_diff", "mean_abs_diff"}``."""
    diffs = []
    for frames, instruction in episodes:
        torch_policy.reset()
        onnx_policy.reset()
        for frame in frames:
            ref = np.asarray(torch_policy.act(frame, instruction), dtype=np.float64)
            got = np.asarray(onnx_policy.act(frame, instruction), dtype=np.float64)
            diffs.append(np.abs(ref - got))
    diff = np.stack(diffs) if diffs else np.zeros((0, 1))
    return {
        "n": int(len(diff)),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
    }


def quantize_int8(path: Path) -> dict[str, Any]:
    """``path`` rewritten in place with onnxruntime's dynamic int8 quantisation of ``INT8_OP_TYPES`` (weights
    int8 per tensor, activations quantised per call): returns what was done, for the sidecar."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = path.with_name(path.stem + ".fp32.onnx")
    model = onnx.load(str(path))
    # The exporter's intermediate shape annotations can contradict onnx's own shape inference (which the
    # quantiser runs); they are hints only, so drop them and let it infer.
    del model.graph.value_info[:]
    onnx.save(model, str(fp32))
    path.unlink()
    try:
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser logs "please consider pre-processing" on the root logger
        try:
            quantize_dynamic(
                str(fp32), str(path), op_types_to_quantize=list(INT8_OP_TYPES), weight_type=QuantType.QInt8
            )
        finally:
            root.setLevel(level)
    finally:
        fp32.unlink(missing_ok=True)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    return {"int8_matmuls": ops.count("MatMulInteger"), "nodes": len(ops)}


def export_onnx(
    run: str | Path,
    out_dir: str | Path,
    *,
    checkpoint: str = "best",
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    verify_frames: int = 16,
    tolerance: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Export ``run`` (a run directory or ``models:/NAME@ALIAS``) into ``out_dir``; returns the sidecar.

    ``precision``: ``fp32`` (default) or ``int8`` (dynamic int8 matrix products, see ``quantize_int8``).
    ``tolerance``: the largest |action difference| from PyTorch the self-check accepts (default 1e-4 for
    fp32, ``INT8_TOLERANCE`` for int8).

    Raises ``FileNotFoundError`` for a missing run or checkpoint, ``ValueError`` for a run that cannot be
    exported or an ``out_dir`` that is in the way, ``RuntimeError`` when the exported graphs disagree with
    PyTorch by more than ``tolerance``.
    """
    from mobile_vla.policies.inference import InferencePolicy, load_run
    from mobile_vla.runs.uris import resolve_run_dir
    from mobile_vla.serving.safety import DEFAULT_MAX_ANGULAR, DEFAULT_MAX_LINEAR

    def say(message: str) -> None:
        if progress:
            print(f"[export] {message}", file=sys.stderr, flush=True)

    if opset < MIN_OPSET:
        raise ValueError(f"--opset must be >= {MIN_OPSET}, got {opset}")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE if precision == "fp32" else INT8_TOLERANCE
    run_dir = resolve_run_dir(run)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run {run} not found: {run_dir} is not a directory written by `mobile-vla train`"
        )
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: config.json is missing")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"--out {out_dir} exists and is not empty; choose another directory or --overwrite")
    started = time.perf_counter()
    say(f"loading {run_dir} ({checkpoint} checkpoint)")
    policy, provider, record = load_run(run_dir, device="cpu", checkpoint=checkpoint)
    features = check_exportable(record, policy)
    backbone = provider.backbone
    profile = str(record["backbone"].get("profile") or backbone.profile)
    adapter = adapter_for(profile)
    if getattr(backbone, "dtype", "fp32") != "fp32":
        raise ValueError(
            f"{run_dir} was trained on {backbone.dtype} backbone features; the ONNX export is fp32 only (its "
            "parity check is against fp32): train with --backbone-dtype fp32 to export"
        )
    head_path = run_dir / f"{checkpoint}.safetensors"
    if not head_path.is_file():
        head_path = run_dir / "last.safetensors"

    # Per-frame features and where each comes from: the vision graph's outputs for the current frame, the
    # per-frame sources of the history windows, Case 2's reference clip_image (the pooled output).
    frame_features: dict[str, dict[str, Any]] = {}
    for name in features:
        if name in VISION_OUTPUTS:
            frame_features[name] = {"graph": "vision", "output": name}
        elif name in HISTORY_SOURCES:
            source = HISTORY_SOURCES[name]
            frame_features[source] = {"graph": "vision", "output": source}
        elif name == "clip_image":
            frame_features["clip_image"] = clip_source(record)
    window = int(getattr(policy, "history_length", 1))
    history = None
    if any(name in HISTORY_SOURCES for name in features):
        history = {
            "length": window,
            "features": {name: HISTORY_SOURCES[name] for name in features if name in HISTORY_SOURCES},
            "mask": HISTORY_MASK if HISTORY_MASK in features else None,
            "padding": "the episode's last `length` frames, oldest first, front-padded with the oldest frame; "
            "mask false on padding (data.windows.pad_history); reset() starts an episode",
        }

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        graphs: dict[str, dict[str, Any]] = {}
        vision_outputs = [
            name for name in VISION_OUTPUTS if any(f["output"] == name for f in frame_features.values())
        ]
        if vision_outputs:
            t0 = time.perf_counter()
            say(f"vision graph ({profile}: {', '.join(vision_outputs)}) -> vision.onnx")
            spec = adapter.vision_input(backbone)
            module = _Select(adapter.vision(backbone), [VISION_OUTPUTS.index(n) for n in vision_outputs])
            export_graph(
                module,
                (adapter.example_pixels(backbone, 2),),
                partial / "vision.onnx",
                input_names=[spec["name"]],
                output_names=vision_outputs,
                dynamic={spec["name"]: {0: "batch"}},
                opset=opset,
            )
            graphs["vision"] = {"file": "vision.onnx", "inputs": [spec], "outputs": vision_outputs}
            say(f"  done in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        say("text graph (masked mean of the text encoder) -> text.onnx")
        text_module, text_inputs = adapter.text(backbone)
        text_pre = adapter.save_text_assets(backbone, partial / "tokenizer")
        text_pre["dir"] = "tokenizer"
        text_pre["inputs"] = list(text_inputs)
        example = backbone.tokenizer(
            ["Navigate around obstacles and reach the front of the beverage bottle on the left"] * 2,
            return_tensors="pt",
        )
        export_graph(
            text_module,
            tuple(example[name] for name in text_inputs),
            partial / "text.onnx",
            input_names=text_inputs,
            output_names=["text"],
            dynamic={name: {0: "batch", 1: "tokens"} for name in text_inputs},
            opset=opset,
        )
        graphs["text"] = {
            "file": "text.onnx",
            "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "tokens"]} for n in text_inputs],
            "outputs": ["text"],
        }
        say(f"  done in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        dims: dict[str, tuple[int, ...]] = {"vision": (backbone.vision_dim,), "text": (backbone.text_dim,)}
        dims["image_tokens"] = (backbone.num_image_tokens, backbone.token_dim)
        dims["clip_image"] = (
            int((record.get("feature_dims") or {}).get("extra", {}).get("clip_image") or 0),
        )
        for name, source in HISTORY_SOURCES.items():
            dims[name] = (window, *dims[source])
        dims[HISTORY_MASK] = (window,)
        dtypes = {name: ("bool" if name == HISTORY_MASK else "float32") for name in features}
        head_args = tuple(
            torch.ones(2, *dims[n], dtype=torch.bool) if dtypes[n] == "bool" else torch.zeros(2, *dims[n])
            for n in features
        )
        with torch.no_grad():
            produced = policy(dict(zip(features, head_args, strict=True)))
        head_outputs = [name for name in HEAD_OUTPUTS if name in produced]
        say(f"head graph ({record['case']}: {', '.join(features)} -> {', '.join(head_outputs)}) -> head.onnx")
        export_graph(
            HeadGraph(policy, features, head_outputs),
            head_args,
            partial / "head.onnx",
            input_names=features,
            output_names=head_outputs,
            dynamic={name: {0: "batch"} for name in features},
            opset=opset,
        )
        graphs["head"] = {
            "file": "head.onnx",
            "inputs": [{"name": n, "dtype": dtypes[n], "shape": ["batch", *dims[n]]} for n in features],
            "outputs": head_outputs,
        }
        say(f"  done in {time.perf_counter() - t0:.1f} s")
        quantization = None
        if precision == "int8":
            say(f"int8: dynamic quantisation of {', '.join(INT8_OP_TYPES)} in {', '.join(INT8_GRAPHS)}.onnx")
            quantization = {
                "method": "onnxruntime.quantization.quantize_dynamic",
                "op_types": list(INT8_OP_TYPES),
                "weight_type": "QInt8",
                "activations": "uint8, quantised per call (dynamic)",
                "graphs": {name: quantize_int8(partial / graphs[name]["file"]) for name in INT8_GRAPHS},
                "fp32": "the other graphs: int8 Conv (ConvInteger) ran 3.6x slower than fp32 on a CPU, and an "
                "int8 text encoder moved the actions by ~0.2 (it runs once per instruction, so gains nothing)",
            }
        for graph in graphs.values():
            graph["sha256"] = sha256_file(partial / graph["file"])

        action_dims = list(record["action_dims"])
        data = record.get("data") or {}
        sidecar: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "case": record["case"],
            "model_class": record.get("model_class"),
            "architecture": record.get("architecture"),
            "trainable_parameters": record.get("trainable_parameters"),
            "action_dims": action_dims,
            "action_space": _action_space_record(record),
            "precision": precision,
            "quantization": quantization,
            "velocity_limits": {
                "max_linear": DEFAULT_MAX_LINEAR,
                "max_angular": DEFAULT_MAX_ANGULAR,
                "note": "defaults of `mobile-vla serve`; its --max-linear/--max-angular/--limit override them",
            },
            "required_features": features,
            "frame_features": frame_features,
            "history": history,
            "chunk_length": int(produced["action_chunk"].shape[1]) if "action_chunk" in produced else None,
            "feature_dims": record.get("feature_dims"),
            "graphs": graphs,
            "opset": opset,
            "dynamic_axes": {"batch": "axis 0 of every input and output", "tokens": "axis 1 of text inputs"},
            "preprocessing": {"image": adapter.image_preprocessing(backbone), "text": text_pre},
            "backbone": {
                "profile": profile,
                "pretrained": bool(record["backbone"].get("pretrained")),
                "fingerprint_hash": backbone.fingerprint_hash,
                "fingerprint": backbone.fingerprint,
            },
            "fingerprints": {
                "backbone": backbone.fingerprint_hash,
                "head_checkpoint": {"file": head_path.name, "sha256": sha256_file(head_path)},
                "dataset": data.get("fingerprint"),
                "provenance": data.get("provenance"),
                "run_config_sha256": sha256_file(run_dir / "config.json"),
                "graphs": {name: g["sha256"] for name, g in graphs.items()},
                **(
                    {"clip_image": frame_features["clip_image"]["encoder"]["fingerprint_hash"]}
                    if "clip_image" in frame_features
                    else {}
                ),
            },
            "source_run": {
                "run_dir": str(run_dir.resolve()),
                "target": str(run),
                "checkpoint": checkpoint,
                "registry_run_id": record.get("registry_run_id"),
                "code_version": record.get("code_version"),
            },
            "export": {
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "versions": _versions(),
            },
        }
        (partial / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")

        if verify_frames > 0:
            from mobile_vla.data.episodes import instruction_for_side
            from mobile_vla.serving.onnx_runtime import OnnxPolicy

            say(f"verifying onnxruntime against PyTorch on {verify_frames} frames")
            torch_policy = InferencePolicy(policy, provider, record, "cpu")
            onnx_policy = OnnxPolicy(partial)
            frames = verification_frames(verify_frames)
            texts = [instruction_for_side("left" if i % 2 else "right") for i in range(len(frames))]
            check = compare_policies(torch_policy, onnx_policy, frames, texts)
            if history is not None:  # the window path too: one episode stepped through the same frames
                stepped = compare_episodes(torch_policy, onnx_policy, [(frames, texts[0])])
                check["episode"] = stepped
                check["max_abs_diff"] = max(check["max_abs_diff"], stepped["max_abs_diff"])
            check["tolerance"] = tolerance
            check["precision"] = precision
            sidecar["verification"] = check
            if not check["max_abs_diff"] <= tolerance:
                raise RuntimeError(
                    f"the ONNX graphs disagree with PyTorch: max |action difference| {check['max_abs_diff']:.3g} "
                    f"over {check['n']} frames, above the tolerance {tolerance:g}; nothing was written to {out_dir}"
                )
            say(f"  max |action difference| {check['max_abs_diff']:.2e} (tolerance {tolerance:g})")
            (partial / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    say(f"wrote {out_dir} in {time.perf_counter() - started:.1f} s")
    return sidecar


def _action_space_record(record: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's ``action_space``: ``{"kind": "continuous"}`` or, for a key-class head (whose head graph
    outputs the arg-max class's velocity), its class names and their commands, so the ONNX runtime names the
    ``predicted_class`` as the torch runtime does."""
    from mobile_vla.data.action_space import DEFAULT_KEY_SPEED, KeySpace

    policy = record.get("policy") or {}
    if policy.get("action_space", "continuous") != "keys":
        return {"kind": "continuous"}
    keys = KeySpace(tuple(record["action_dims"]), float(policy.get("key_speed", DEFAULT_KEY_SPEED)))
    return {
        "kind": "keys",
        "classes": list(keys.names),
        "velocities": keys.velocities.tolist(),
        "decoding": "in head.onnx: action = velocities[argmax(action_logits)]",
    }
