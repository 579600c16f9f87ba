"""An ONNX export (``mobile-vla export RUN --format onnx``) as a ``ControlPolicy`` on onnxruntime, no torch.

    policy = OnnxPolicy("exports/case1-onnx")          # model.json + vision/text/head.onnx + tokenizer/
    action = policy.act(frame_uint8_hwc, "Navigate around obstacles ... on the left")    # (A,)

This is what ``mobile-vla serve DIR`` runs when DIR is an export (or with ``--runtime onnx``): the same
server, protocol, API key, velocity limits and safe stop as the PyTorch runtime, since the server only sees a
``ControlPolicy``. The preprocessing is the sidecar's recipe: the frame is resized with PIL exactly as the
torch backbone does it, the instruction tokenised with the exported tokenizer (``tokenizers``), each distinct
instruction once. History heads (Case 4: ``model.json``'s ``history``) keep each episode's last W frames'
features (one window per ``act_slots`` slot, the ``act`` episode in slot None), front-padded with a mask as
the torch ``InferencePolicy`` does; ``reset()`` starts an episode. Nothing here imports torch, so a robot
computer needs only numpy, pillow, tokenizers and onnxruntime (or onnxruntime-gpu, whose CUDA/TensorRT
providers ``providers=`` selects).
"""

from __future__ import annotations

import json
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mobile_vla.utils.files import sha256_file
from mobile_vla.utils.images import decode_image

FORMAT = "mobile-vla-onnx"
SIDECAR = "model.json"
SUPPORTED_FORMAT_VERSIONS = (1, 2)
REQUIRED_KEYS = (
    "format",
    "format_version",
    "case",
    "action_dims",
    "graphs",
    "preprocessing",
    "required_features",
)
RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


class OnnxExportError(ValueError):
    """An export directory that cannot be served (names the file and the key)."""


def is_onnx_export(path: str | Path) -> bool:
    """True when ``path`` is a directory whose ``model.json`` says ``"format": "mobile-vla-onnx"``."""
    sidecar = Path(path) / SIDECAR
    if not sidecar.is_file():
        return False
    try:
        return json.loads(sidecar.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_sidecar(directory: str | Path) -> dict[str, Any]:
    """``model.json`` of an export, checked: raises ``FileNotFoundError``/``OnnxExportError`` naming what."""
    directory = Path(directory)
    path = directory / SIDECAR
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} is not a directory (an ONNX export written by `mobile-vla export`)"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not an ONNX export: {SIDECAR} is missing (write one with "
            "`mobile-vla export RUN --format onnx --out DIR`)"
        )
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise OnnxExportError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(sidecar, dict):
        raise OnnxExportError(f"{path}: expected a JSON object, got {type(sidecar).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in sidecar]
    if missing:
        raise OnnxExportError(f"{path}: missing key(s) {missing}")
    if sidecar["format"] != FORMAT:
        raise OnnxExportError(f"{path}: format is {sidecar['format']!r}, expected {FORMAT!r}")
    if sidecar["format_version"] not in SUPPORTED_FORMAT_VERSIONS:
        raise OnnxExportError(
            f"{path}: format_version {sidecar['format_version']!r} is not supported by this mobile-vla "
            f"(supported: {list(SUPPORTED_FORMAT_VERSIONS)}); upgrade it"
        )
    for name in ("text", "head"):
        if name not in sidecar["graphs"]:
            raise OnnxExportError(f"{path}: graphs.{name} is missing")
    return sidecar


def resize_frame(image: Any, spec: dict[str, Any]) -> np.ndarray:
    """A frame (uint8 ``[H, W, 3]`` RGB array or PIL image) -> uint8 ``[h, w, 3]`` as the spec says."""
    if spec.get("kind") != "resize_uint8_nhwc":
        raise OnnxExportError(
            f"preprocessing.image.kind {spec.get('kind')!r} is not supported by this runtime"
        )
    if isinstance(image, Image.Image):
        pil = image if image.mode == "RGB" else image.convert("RGB")
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(
                f"expected a uint8 [H, W, 3] RGB image, got dtype {array.dtype} shape {array.shape}"
            )
        pil = Image.fromarray(array)
    width, height = (int(v) for v in spec["size"])
    resample = RESAMPLE[spec.get("resample", "bicubic")]
    return np.asarray(pil.resize((width, height), resample), dtype=np.uint8)


def pad_window(frames: Sequence[dict[str, np.ndarray]], length: int) -> tuple[list[dict], np.ndarray]:
    """The last ``length`` per-frame feature dicts (oldest first), front-padded with the oldest, and the mask
    (``(length,)`` bool, False on padding): ``data.windows.pad_history`` without torch."""
    if not frames:
        raise ValueError("a history window needs at least the current frame")
    window = list(frames[-length:])
    missing = length - len(window)
    return [window[0]] * missing + window, np.array([False] * missing + [True] * len(window))


class OnnxPolicy:
    """A ``ControlPolicy`` (and ``BatchControlPolicy``) over an ONNX export.

    Args:
        directory: the export (``model.json`` and the files it names).
        providers: onnxruntime execution providers (default ``["CPUExecutionProvider"]``; e.g.
            ``["TensorrtExecutionProvider", "CUDAExecutionProvider"]`` with onnxruntime-gpu on a Jetson).
        threads: intra-op threads per session (default: onnxruntime's choice).
        verify_files: check every graph file against the sha256 in ``model.json`` before loading it.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        verify_files: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        self.sidecar = read_sidecar(self.directory)
        self.action_dims: tuple[str, ...] = tuple(self.sidecar["action_dims"])
        # A key-class head's classes (model.json "action_space"; an export without it is continuous): the
        # server names the chosen class as predicted_class.
        space = self.sidecar.get("action_space") or {}
        self.key_classes: tuple[str, ...] | None = (
            tuple(space["classes"]) if space.get("kind") == "keys" else None
        )
        self.key_velocities = np.asarray(space["velocities"], np.float32) if self.key_classes else None
        self.required_features: tuple[str, ...] = tuple(self.sidecar["required_features"])
        self.providers = list(providers or ["CPUExecutionProvider"])
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.sessions: dict[str, Any] = {}
        self.outputs: dict[str, list[str]] = {}
        for name, graph in self.sidecar["graphs"].items():
            path = self.directory / str(graph.get("file", ""))
            if not path.is_file():
                raise FileNotFoundError(
                    f"{self.directory / SIDECAR}: graphs.{name}.file {path.name!r} is missing"
                )
            if verify_files and graph.get("sha256") and sha256_file(path) != graph["sha256"]:
                raise OnnxExportError(
                    f"{path} does not match graphs.{name}.sha256 in {SIDECAR}: the file was changed or truncated"
                )
            self.sessions[name] = ort.InferenceSession(str(path), options, providers=self.providers)
            self.outputs[name] = [o.name for o in self.sessions[name].get_outputs()]
        self.image_spec = dict(self.sidecar["preprocessing"]["image"])
        self.text_spec = dict(self.sidecar["preprocessing"]["text"])
        self.text_inputs = [i.name for i in self.sessions["text"].get_inputs()]
        self.head_inputs = {i["name"]: i for i in self.sidecar["graphs"]["head"].get("inputs", [])}
        # Per-frame features -> (graph, output); format 1 exports name each vision output after its feature.
        self.frame_features: dict[str, dict[str, Any]] = dict(self.sidecar.get("frame_features") or {}) or {
            name: {"graph": "vision", "output": name} for name in self.outputs.get("vision", [])
        }
        for name, source in self.frame_features.items():
            if (
                source.get("graph") not in self.sessions
                or source.get("output") not in self.outputs[source["graph"]]
            ):
                raise OnnxExportError(
                    f"{self.directory / SIDECAR}: frame_features.{name} names {source.get('graph')}."
                    f"{source.get('output')}, which no graph outputs"
                )
        history = self.sidecar.get("history") or None
        self.history_length = int(history["length"]) if history else 1
        self.history_features: dict[str, str] = dict(history["features"]) if history else {}
        self.history_mask: str | None = history.get("mask") if history else None
        missing = [n for n in self.required_features if not self._can_compute(n)]
        if missing:
            raise OnnxExportError(
                f"{self.directory / SIDECAR}: required_features {missing} are computed by no graph "
                "(frame_features/history)"
            )
        self.tokenizer = self._load_tokenizer()
        self._text_memo: dict[str, np.ndarray] = {}
        self._histories: dict[Hashable, list[dict[str, np.ndarray]]] = {None: []}
        self.timings: dict[str, float] = {}
        self.device = f"onnxruntime:{self.sessions['head'].get_providers()[0]}"

    def _can_compute(self, name: str) -> bool:
        if name == "text" or name in self.frame_features:
            return True
        if name in self.history_features:
            return self.history_features[name] in self.frame_features
        return name == self.history_mask and self.history_mask is not None

    def _load_tokenizer(self):
        from tokenizers import Tokenizer

        path = self.directory / str(self.text_spec.get("dir", "tokenizer")) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.directory / SIDECAR}: preprocessing.text names {path}, which is missing"
            )
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_padding()
        if self.text_spec.get("truncation", True):
            tokenizer.enable_truncation(int(self.text_spec["max_length"]))
        return tokenizer

    # ---- ControlPolicy ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new episode: forget the frame history (nothing to forget for single-frame heads)."""
        self.reset_slots([None])

    def observe(self, image: Any) -> None:
        """Add a frame to the episode's history without predicting (as ``InferencePolicy.observe``)."""
        if self.history_length > 1:
            pixels = np.stack([resize_frame(image, self.image_spec)])
            frame = self._frame_features(pixels)
            self._push(self._histories[None], {n: v[0] for n, v in frame.items()})

    def act(self, image: Any, instruction: str) -> np.ndarray:
        """One velocity command ``(A,)`` (float32) for the next frame of the current episode."""
        return self._step([image], [instruction], [None])["action"][0]

    def act_chunk(self, image: Any, instruction: str) -> np.ndarray:
        """The next ``K`` commands ``(K, A)`` for chunking heads (Case 4's ``action_chunk``)."""
        outputs = self._step([image], [instruction], [None])
        if "action_chunk" not in outputs:
            raise NotImplementedError(
                f"{self.sidecar['case']} predicts one action per step, not a chunk; use act()"
            )
        return outputs["action_chunk"][0]

    def reset_slots(self, slots: Sequence[Hashable]) -> None:
        """``BatchControlPolicy``: start new episodes in ``slots`` (their histories are forgotten)."""
        for slot in slots:
            self._histories[slot] = []

    def act_slots(
        self, images: Sequence[Any], instructions: Sequence[str], slots: Sequence[Hashable]
    ) -> np.ndarray:
        """``BatchControlPolicy``: ``(B, A)`` for the next frame of the episodes in ``slots``; each row reads
        its own episode's frames only (one frame, or that episode's window)."""
        if not len(images) == len(instructions) == len(slots):
            raise ValueError(
                f"got {len(images)} images, {len(instructions)} instructions, {len(slots)} slots"
            )
        unknown = [s for s in slots if s not in self._histories]
        if unknown and self.history_features:  # single-frame heads keep nothing per slot
            raise KeyError(f"slots {unknown} were never started; call reset_slots first")
        return self._step(images, instructions, list(slots))["action"]

    def act_encoded(self, image_bytes: bytes, instruction: str) -> np.ndarray:
        image, decode_ms = decode_image(image_bytes)
        action = self.act(image, instruction)
        self.timings["decode_ms"] = decode_ms
        self.timings["total_ms"] += decode_ms
        return action

    def text_feature(self, instruction: str) -> np.ndarray:
        """(Dt,) float32, computed once per distinct instruction (each alone, as the torch backbone does)."""
        if instruction not in self._text_memo:
            enc = self.tokenizer.encode(instruction)
            columns = {
                "input_ids": enc.ids,
                "attention_mask": enc.attention_mask,
                "token_type_ids": enc.type_ids,
            }
            feeds = {name: np.asarray([columns[name]], dtype=np.int64) for name in self.text_inputs}
            (feature,) = self.sessions["text"].run(["text"], feeds)
            if len(self._text_memo) >= 64:
                self._text_memo.pop(next(iter(self._text_memo)))
            self._text_memo[instruction] = feature[0].astype(np.float32)
        return self._text_memo[instruction]

    def act_batch(self, images: Sequence[Any], instructions: Sequence[str]) -> np.ndarray:
        """``(B, A)`` commands for independent frames; a history head sees each frame as its episode's first
        (the window is that frame, padded), as the torch runtime's ``act_batch``."""
        return self._step(images, instructions, None)["action"]

    def _frame_features(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Every per-frame feature of a batch of resized frames: ``{name: (B, ...)}``, each graph run once."""
        results: dict[str, dict[str, np.ndarray]] = {}
        for graph in dict.fromkeys(src["graph"] for src in self.frame_features.values()):
            (spec,) = self.sidecar["graphs"][graph]["inputs"]
            outputs = self.sessions[graph].run(self.outputs[graph], {spec["name"]: pixels})
            results[graph] = dict(zip(self.outputs[graph], outputs, strict=True))
        return {name: results[src["graph"]][src["output"]] for name, src in self.frame_features.items()}

    def _push(self, history: list[dict[str, np.ndarray]], frame: dict[str, np.ndarray]) -> None:
        history.append(frame)
        del history[: -self.history_length]

    def _step(
        self, images: Sequence[Any], instructions: Sequence[str], slots: list[Hashable] | None
    ) -> dict[str, np.ndarray]:
        """The head on a batch: with ``slots`` each row's frame joins its episode's history first; without
        (``act_batch``) each frame is alone."""
        if len(images) != len(instructions):
            raise ValueError(f"got {len(images)} images but {len(instructions)} instructions")
        for i, text in enumerate(instructions):
            if not isinstance(text, str):
                raise TypeError(f"instruction {i}: expected str, got {type(text).__name__}")
        t0 = time.perf_counter()
        pixels = np.stack([resize_frame(im, self.image_spec) for im in images])  # (B, h, w, 3) uint8
        t1 = time.perf_counter()
        frame = self._frame_features(pixels) if self.frame_features else {}
        features: dict[str, np.ndarray] = {n: frame[n] for n in self.required_features if n in frame}
        if "text" in self.required_features:
            features["text"] = np.stack([self.text_feature(t) for t in instructions])  # (B, Dt)
        if self.history_features:
            windows, masks = [], []
            for i in range(len(images)):
                own = {n: v[i] for n, v in frame.items()}
                if slots is None:
                    window, mask = pad_window([own], self.history_length)
                else:
                    history = self._histories[slots[i]]
                    self._push(history, own)
                    window, mask = pad_window(history, self.history_length)
                windows.append(window)
                masks.append(mask)
            for name, source in self.history_features.items():
                features[name] = np.stack([np.stack([f[source] for f in w]) for w in windows])  # (B, W, ...)
            if self.history_mask:
                features[self.history_mask] = np.stack(masks)  # (B, W) bool
        t2 = time.perf_counter()
        feeds = {}
        for name in self.required_features:
            dtype = np.bool_ if self.head_inputs.get(name, {}).get("dtype") == "bool" else np.float32
            feeds[name] = np.ascontiguousarray(features[name], dtype=dtype)
        outputs = self.sessions["head"].run(self.outputs["head"], feeds)
        t3 = time.perf_counter()
        self.timings = {
            "decode_ms": 0.0,
            "preprocess_ms": (t1 - t0) * 1e3,
            "backbone_ms": (t2 - t1) * 1e3,
            "head_ms": (t3 - t2) * 1e3,
            "total_ms": (t3 - t0) * 1e3,
        }
        return {
            n: np.asarray(v, dtype=np.float32) for n, v in zip(self.outputs["head"], outputs, strict=True)
        }

    def info(self) -> dict[str, Any]:
        """What the server's ``/model/info`` reports."""
        s = self.sidecar
        backbone = s.get("backbone") or {}
        return {
            "case": s["case"],
            "model_class": s.get("model_class"),
            "architecture": s.get("architecture"),
            "trainable_parameters": s.get("trainable_parameters"),
            "action_dims": list(self.action_dims),
            "action_space": "keys" if self.key_classes else "continuous",
            "backbone": {k: backbone.get(k) for k in ("profile", "fingerprint_hash", "pretrained")},
            "data": {
                "fingerprint": (s.get("fingerprints") or {}).get("dataset"),
                "provenance": (s.get("fingerprints") or {}).get("provenance"),
            },
            "runtime": "onnxruntime",
            "providers": self.sessions["head"].get_providers(),
            "onnx": {
                "export_dir": str(self.directory),
                "opset": s.get("opset"),
                "precision": s.get("precision", "fp32"),
                "action_space": (s.get("action_space") or {}).get("kind", "continuous"),
                "history_length": self.history_length,
                "fingerprints": s.get("fingerprints"),
                "verification": s.get("verification"),
            },
            "device": self.device,
        }


def load_onnx_for_serving(
    directory: str | Path, *, providers: Sequence[str] | None = None
) -> tuple[OnnxPolicy, dict[str, Any]]:
    """What ``mobile-vla serve DIR --runtime onnx`` serves: (policy, ``/model/info`` metadata)."""
    policy = OnnxPolicy(directory, providers=providers)
    s = policy.sidecar
    source = s.get("source_run") or {}
    metadata = {
        "model_name": Path(directory).resolve().name,
        "registry_run_id": source.get("registry_run_id"),
        "run_dir": source.get("run_dir"),
        "code_version": source.get("code_version"),
        **policy.info(),
    }
    metadata["backbone"]["fingerprint"] = (s.get("backbone") or {}).get("fingerprint")
    return policy, metadata
