"""A trained run directory as a step-by-step controller: image + instruction -> one velocity command.

    policy = load_policy("runs/case1")              # best checkpoint, backbone rebuilt from config.json
    action = policy.act(frame_uint8_hwc, "Navigate around obstacles ... on the left")   # (A,)
    policy.timings                                   # {"decode_ms", "preprocess_ms", "backbone_ms", "head_ms", ...}

It reads the run directory through ``mobile_vla.runs`` and computes features with ``mobile_vla.features``
(the same ``FeatureProvider`` the trainer uses), so that training, offline evaluation and serving compute
features exactly the same way. It knows nothing of training, evaluation or the registry.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mobile_vla.data.windows import pad_history
from mobile_vla.features.providers import HISTORY_FEATURES, FeatureProvider, to_pil
from mobile_vla.policies.base import FeatureDims, Policy
from mobile_vla.policies.registry import policy_from_config
from mobile_vla.runs.checkpoints import load_head
from mobile_vla.runs.directory import read_run_config
from mobile_vla.runs.uris import URI_RESOLVERS, resolve_run_dir  # noqa: F401  (re-exported, old path)
from mobile_vla.utils.device import resolve_device
from mobile_vla.utils.images import decode_image

CHECKPOINTS = ("best", "last")


def load_run(
    run_dir: str | Path,
    *,
    device: str = "auto",
    checkpoint: str = "best",
    backbone: Any | None = None,
    feature_provider: Any | None = None,
) -> tuple[Policy, Any, dict[str, Any]]:
    """Rebuild a run's head and its feature provider: ``(policy in eval mode, provider, config.json)``.

    The backbone is rebuilt from the spec in ``config.json`` unless one is passed; either way a checkpoint
    whose backbone fingerprint or action dims differ is refused (``CheckpointMismatchError``).
    """

    run_dir = resolve_run_dir(run_dir)
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    record = read_run_config(run_dir)
    device = resolve_device(device)
    if feature_provider is not None:
        backbone = feature_provider.backbone
    if backbone is None:
        from mobile_vla.backbones import create_backbone

        spec = dict(record["backbone"]["spec"])
        spec.update(device=device)
        backbone = create_backbone(**spec)
    provider = feature_provider or FeatureProvider(backbone)
    dims = FeatureDims.from_dict(record["feature_dims"])
    policy = policy_from_config(record["case"], record["policy"], dims)
    # Frozen encoders beyond the backbone (Case 2's CLIP), rebuilt exactly as recorded (no fallback then).
    _, extra_features = type(policy).prepare_features(policy.config, device)
    if extra_features:
        provider.add_extra_features(extra_features)
    path = run_dir / f"{checkpoint}.safetensors"
    if not path.is_file() and checkpoint == "best" and (run_dir / "last.safetensors").is_file():
        path = run_dir / "last.safetensors"
    load_head(
        path,
        policy,
        fingerprint_hash=str(backbone.fingerprint_hash),
        action_dims=tuple(record["action_dims"]),
    )
    policy.to(device).eval()
    return policy, provider, record


class FrameHistory:
    """The current episode's last ``length`` frames and their per-frame features, each frame encoded once.

    A frame pushed without features (``InferencePolicy.observe``) is encoded when a window first needs it.
    """

    def __init__(self, length: int) -> None:
        self.length = length
        self.frames: list[Image.Image] = []
        self.features: list[dict[str, torch.Tensor] | None] = []

    def clear(self) -> None:
        self.frames, self.features = [], []

    def push(self, frame: Image.Image, features: dict[str, torch.Tensor] | None = None) -> None:
        self.frames = [*self.frames, frame][-self.length :]
        self.features = [*self.features, features][-self.length :]

    def window(self, provider: Any, names: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``({name: (W, ...)}, mask (W,))``: the last W frames' features, front-padded like the dataset."""

        missing = [i for i, f in enumerate(self.features) if f is None or any(n not in f for n in names)]
        if missing:
            out = provider({"image": [self.frames[i] for i in missing]}, list(names))
            for j, i in enumerate(missing):
                self.features[i] = {n: out[n][j] for n in names}
        window, mask = pad_history(self.features, self.length)
        return {n: torch.stack([f[n] for f in window]) for n in names}, mask


class InferencePolicy:
    """A ``ControlPolicy`` over a trained head and its frozen backbone.

    ``act`` accepts a uint8 ``[H, W, 3]`` RGB array or a PIL image; ``act_encoded`` accepts image file bytes
    (PNG/JPEG, what the server receives). The instruction's text feature is computed once per distinct
    string. ``timings`` holds the last call's split in milliseconds: ``decode_ms`` (bytes -> image),
    ``preprocess_ms`` (to an RGB PIL image), ``backbone_ms`` (frozen encoders, incl. their processor),
    ``head_ms`` and ``total_ms``.

    History-window cases (a policy with ``history_length`` W > 1, Case 4) get the last W frames of the
    episode, the first frame repeated until W have been seen; ``reset()`` starts a new episode.
    """

    def __init__(self, policy: Policy, provider: Any, record: Mapping[str, Any], device: str) -> None:
        self.policy = policy.eval()
        self.provider = provider
        self.record = dict(record)
        self.device = device
        self.action_dims: tuple[str, ...] = tuple(record["action_dims"])
        self.timings: dict[str, float] = {}
        # Heads that ask for ``history_*`` features (Case 4) get them from per-frame features, each frame
        # encoded once when it arrives, and a padding mask, as the window dataset gives them in training.
        # (W = 1 included: such a head still reads ``(B, 1, ...)`` windows and a mask.)
        self._per_frame_history = any(name in HISTORY_FEATURES for name in self.policy.required_features)
        # One frame history per episode: `act` drives the episode in slot None, `act_slots` any others.
        self._histories: dict[Hashable, FrameHistory] = {None: FrameHistory(self.history_length)}

    @property
    def case(self) -> str:
        return str(self.record["case"])

    @property
    def key_classes(self) -> tuple[str, ...] | None:
        """The key classes of an ``action_space: keys`` head (None for a regression head); the server names
        the chosen one as ``predicted_class``."""
        space = self.policy.key_space
        return tuple(space.names) if space is not None else None

    @property
    def key_velocities(self) -> np.ndarray | None:
        """``(C, A)`` each key class's command (None for a regression head)."""
        space = self.policy.key_space
        return space.velocities if space is not None else None

    def info(self) -> dict[str, Any]:
        """What the server's ``/model/info`` reports."""
        backbone = self.record["backbone"]
        return {
            "case": self.case,
            "model_class": self.record.get("model_class"),
            "architecture": self.record.get("architecture"),
            "action_dims": list(self.action_dims),
            "action_space": self.policy.config.action_space,
            "backbone": {
                k: backbone[k] for k in ("profile", "fingerprint_hash", "pretrained") if k in backbone
            },
            "data": {k: self.record["data"].get(k) for k in ("fingerprint", "provenance")},
            "trainable_parameters": self.policy.num_parameters(),
            "device": self.device,
        }

    @property
    def history_length(self) -> int:
        """Frames per prediction: 1 for single-frame cases, W for history-window cases (Case 4)."""
        return int(getattr(self.policy, "history_length", 1))

    def reset(self) -> None:
        """Start a new episode: forget the frame history (a no-op for single-frame cases)."""
        self.reset_slots([None])

    def observe(self, image: np.ndarray | Image.Image) -> None:
        """Add a frame to the episode's history without predicting (e.g. a step answered from a stored
        chunk), so the window stays the consecutive frames the policy was trained on."""
        if self.history_length == 1:
            return

        self._histories[None].push(to_pil(image))  # its features are computed when a window needs them

    def act(self, image: np.ndarray | Image.Image, instruction: str) -> np.ndarray:
        """One velocity command ``(A,)`` (float32) for the next frame of the current episode."""
        return self._step_one(image, instruction)["action"][0]

    def act_chunk(self, image: np.ndarray | Image.Image, instruction: str) -> np.ndarray:
        """The next ``K`` commands ``(K, A)`` for chunking cases (``outputs["action_chunk"]``)."""
        outputs = self._step_one(image, instruction)
        if "action_chunk" not in outputs:
            raise NotImplementedError(f"{self.case} predicts one action per step, not a chunk; use act()")
        return outputs["action_chunk"][0]

    def act_encoded(self, image_bytes: bytes, instruction: str) -> np.ndarray:
        """``act`` on encoded image bytes (PNG/JPEG), timing the decode too."""
        image, decode_ms = decode_image(image_bytes)
        action = self.act(image, instruction)
        self.timings["decode_ms"] = decode_ms
        self.timings["total_ms"] += decode_ms
        return action

    def act_batch(
        self, images: Sequence[np.ndarray | Image.Image], instructions: Sequence[str]
    ) -> np.ndarray:
        """``(B, A)`` commands for independent frames (no history); each row depends only on its own inputs."""
        if len(images) != len(instructions):
            raise ValueError(f"got {len(images)} images but {len(instructions)} instructions")

        t0 = time.perf_counter()
        pil = [to_pil(im) for im in images]
        inputs: list[Any] = pil if self.history_length == 1 else [[im] * self.history_length for im in pil]
        return self._forward(inputs, list(instructions), t0)["action"]

    def _step_one(self, image: np.ndarray | Image.Image, instruction: str) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        return self._step([to_pil(image)], [instruction], [None], t0)

    def reset_slots(self, slots: Sequence[Hashable]) -> None:
        """Start new episodes in ``slots`` for ``act_slots`` (their frame histories are forgotten)."""
        for slot in slots:
            self._histories[slot] = FrameHistory(self.history_length)

    def act_slots(
        self,
        images: Sequence[np.ndarray | Image.Image],
        instructions: Sequence[str],
        slots: Sequence[Hashable],
    ) -> np.ndarray:
        """``(B, A)`` commands for the next frame of the episodes in ``slots``, in one batch.

        Row i depends only on episode ``slots[i]``'s own frames: single-frame cases see one frame, history
        cases the last W frames of that episode (front-padded at its start), exactly as ``act`` steps one
        episode; stepping episodes side by side gives the same commands as stepping them one at a time."""
        if not len(images) == len(instructions) == len(slots):
            raise ValueError(
                f"got {len(images)} images, {len(instructions)} instructions, {len(slots)} slots"
            )
        unknown = [s for s in slots if s not in self._histories]
        if unknown:
            raise KeyError(f"slots {unknown} were never started; call reset_slots first")
        t0 = time.perf_counter()
        frames = [to_pil(im) for im in images]
        return self._step(frames, list(instructions), list(slots), t0)["action"]

    def _step(
        self, frames: list[Image.Image], instructions: list[str], slots: list[Hashable], t0: float
    ) -> dict[str, np.ndarray]:
        """One step of the episodes in ``slots``: push each new frame into its episode's history, run the
        head on the batch of windows."""
        if self.history_length == 1 and not self._per_frame_history:
            return self._forward(frames, instructions, t0)
        histories = [self._histories[slot] for slot in slots]
        if not self._per_frame_history:  # the window's images go through the provider
            windows = []
            for frame, history in zip(frames, histories, strict=True):
                history.push(frame)
                windows.append(pad_history(history.frames, self.history_length)[0])
            return self._forward(windows, instructions, t0)
        # Cases that ask for `history_*` features: each new frame's features are computed once (in one batch),
        # the windows are assembled from the stored ones (front-padded, with their masks).
        t1 = time.perf_counter()
        names = tuple(self.policy.required_features)
        windowed = [n for n in names if n in HISTORY_FEATURES]
        per_frame = sorted({HISTORY_FEATURES[n] for n in windowed})
        current = [n for n in names if n not in HISTORY_FEATURES and n != "history_mask"]
        computed = self.provider(
            {"image": frames, "text": instructions}, list(dict.fromkeys(current + per_frame))
        )
        windows, masks = [], []
        for i, history in enumerate(histories):
            history.push(frames[i], {n: computed[n][i] for n in per_frame})
            window, mask = history.window(self.provider, per_frame)
            windows.append(window)
            masks.append(mask)
        features = {n: computed[n] for n in current}
        features.update(
            {n: torch.stack([w[HISTORY_FEATURES[n]] for w in windows]) for n in windowed}
        )  # (B, W, ...)
        if "history_mask" in names:
            features["history_mask"] = torch.stack(masks)  # (B, W)
        return self._run_head(features, t0, t1)

    def _forward(self, images: list[Any], instructions: list[str], t0: float) -> dict[str, np.ndarray]:
        t1 = time.perf_counter()
        batch: dict[str, Any] = {"image": images, "text": instructions}
        if self._per_frame_history:  # act_batch: each frame alone, as an episode's first
            windows = [w if isinstance(w, list) else [w] for w in images]
            batch["image"] = [w[-1] for w in windows]
            batch["history_images"] = windows
            batch["history_mask"] = torch.tensor([[False] * (len(w) - 1) + [True] for w in windows])
        features = self.provider(batch, self.policy.required_features)
        return self._run_head(features, t0, t1)

    def _run_head(self, features: Mapping[str, torch.Tensor], t0: float, t1: float) -> dict[str, np.ndarray]:
        features = {k: v.to(device=self.device, dtype=torch.float32) for k, v in features.items()}
        t2 = time.perf_counter()
        with torch.no_grad():
            outputs = self.policy(features)
        result = {k: v.float().cpu().numpy() for k, v in outputs.items() if k in ("action", "action_chunk")}
        t3 = time.perf_counter()
        self.timings = {
            "decode_ms": 0.0,
            "preprocess_ms": (t1 - t0) * 1e3,
            "backbone_ms": (t2 - t1) * 1e3,
            "head_ms": (t3 - t2) * 1e3,
            "total_ms": (t3 - t0) * 1e3,
        }
        return result


def load_policy(
    run_dir_or_uri: str | Path,
    device: str = "auto",
    *,
    checkpoint: str = "best",
    backbone: Any | None = None,
    feature_provider: Any | None = None,
) -> InferencePolicy:
    """Load a run directory (or a URI a registered resolver understands) as an ``InferencePolicy``."""

    device = resolve_device(device)
    policy, provider, record = load_run(
        run_dir_or_uri,
        device=device,
        checkpoint=checkpoint,
        backbone=backbone,
        feature_provider=feature_provider,
    )
    return InferencePolicy(policy, provider, record, device)
