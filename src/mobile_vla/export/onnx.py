"""``export_onnx``: a trained run -> ONNX graphs + a JSON sidecar that ``serving.onnx_runtime`` serves.

    info = export_onnx("runs/case1", "exports/case1-onnx")      # vision.onnx, text.onnx, head.onnx, model.json

The directory holds everything a runtime without torch needs: the three graphs (opset >= 17, dynamic batch),
the tokenizer files, and ``model.json`` with the preprocessing, the action axes, the velocity limits and the
fingerprints (backbone, head checkpoint, dataset, each graph file). Before the directory is put in place the
export checks itself: onnxruntime and PyTorch predict the same actions on a few frames, within ``tolerance``
(else it fails and leaves nothing behind).

Exported are runs whose head reads only backbone features of the current frame (``vision``, ``text``,
``image_tokens``: Case 1 and Case 3) on an exportable backbone (``lite``). Case 2 also needs a frozen CLIP
encoder and Case 4 a frame history: both are refused with a message that says so.
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
FORMAT_VERSION = 1
SIDECAR = "model.json"
MIN_OPSET = 17
DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4
EXPORTABLE_FEATURES = ("vision", "image_tokens", "text")
VISION_OUTPUTS = ("vision", "image_tokens")


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
    if int(getattr(policy, "history_length", 1)) != 1:
        raise ValueError(
            f"{case} reads a history of {policy.history_length} frames; the ONNX export covers single-frame "
            "heads (case1, case3): serve this run with the torch runtime"
        )
    features = list(policy.required_features)
    unsupported = [f for f in features if f not in EXPORTABLE_FEATURES]
    if unsupported:
        raise ValueError(
            f"{case} needs features {unsupported} (e.g. Case 2's frozen CLIP) that the ONNX export does not "
            f"produce (it exports {list(EXPORTABLE_FEATURES)} from the backbone); serve this run with the torch "
            "runtime"
        )
    return features


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


def export_onnx(
    run: str | Path,
    out_dir: str | Path,
    *,
    checkpoint: str = "best",
    opset: int = DEFAULT_OPSET,
    verify_frames: int = 16,
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Export ``run`` (a run directory or ``models:/NAME@ALIAS``) into ``out_dir``; returns the sidecar.

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

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        graphs: dict[str, dict[str, Any]] = {}
        vision_outputs = [name for name in VISION_OUTPUTS if name in features]
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
        say(f"head graph ({record['case']}: {', '.join(features)} -> action) -> head.onnx")
        dims = {"vision": (backbone.vision_dim,), "text": (backbone.text_dim,)}
        dims["image_tokens"] = (backbone.num_image_tokens, backbone.token_dim)
        head_args = tuple(torch.zeros(2, *dims[name]) for name in features)
        export_graph(
            HeadGraph(policy, features),
            head_args,
            partial / "head.onnx",
            input_names=features,
            output_names=["action"],
            dynamic={name: {0: "batch"} for name in features},
            opset=opset,
        )
        graphs["head"] = {
            "file": "head.onnx",
            "inputs": [{"name": n, "dtype": "float32", "shape": ["batch", *dims[n]]} for n in features],
            "outputs": ["action"],
        }
        say(f"  done in {time.perf_counter() - t0:.1f} s")
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
            "velocity_limits": {
                "max_linear": DEFAULT_MAX_LINEAR,
                "max_angular": DEFAULT_MAX_ANGULAR,
                "note": "defaults of `mobile-vla serve`; its --max-linear/--max-angular/--limit override them",
            },
            "required_features": features,
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
            check["tolerance"] = tolerance
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
    """The sidecar's ``action_space``: ``{"space": "continuous"}`` or, for a key-class head (whose head graph
    outputs the arg-max class's velocity), its class names and their commands, so the ONNX runtime names the
    ``predicted_class`` as the torch runtime does."""
    from mobile_vla.data.action_space import DEFAULT_KEY_SPEED, KeySpace

    policy = record.get("policy") or {}
    if policy.get("action_space", "continuous") != "keys":
        return {"space": "continuous"}
    keys = KeySpace(tuple(record["action_dims"]), float(policy.get("key_speed", DEFAULT_KEY_SPEED)))
    return {"space": "keys", "key_classes": list(keys.names), "key_velocities": keys.velocities.tolist()}
