"""A trained run directory as a step-by-step controller: image + instruction -> one velocity command.

    policy = load_policy("runs/case1")              # best checkpoint, backbone rebuilt from config.json
    action = policy.act(frame_uint8_hwc, "Navigate around obstacles ... on the left")   # (A,)
    policy.timings                                   # {"decode_ms", "preprocess_ms", "backbone_ms", "head_ms", ...}

It reads the run directory through ``mobile_vla.runs`` and computes features with ``mobile_vla.features``
(the same ``FeatureProvider`` the trainer uses), so that training, offline evaluation and serving compute
features exactly the same way. It knows nothing of training, evaluation or the registry.
"""

from __future__ import annotations

import io
import time
from collections import deque
from collections.abc import Mapping, Sequence
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
        self._history: deque[Image.Image] = deque(maxlen=max(self.history_length, 1))
        # Heads that ask for ``history_*`` features (Case 4) get them from per-frame features, each frame
        # encoded once when it arrives, and a padding mask, as the window dataset gives them in training.

        self._per_frame_history = self.history_length > 1 and any(
            name in HISTORY_FEATURES for name in self.policy.required_features
        )
        self._frames = FrameHistory(self.history_length)
        self._slot_histories: dict[int, FrameHistory] = {}  # act_slots: one history per episode slot

    @property
    def case(self) -> str:
        return str(self.record["case"])

    def info(self) -> dict[str, Any]:
        """What the server's ``/model/info`` reports."""
        backbone = self.record["backbone"]
        return {
            "case": self.case,
            "model_class": self.record.get("model_class"),
            "architecture": self.record.get("architecture"),
            "action_dims": list(self.action_dims),
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
        self._history.clear()
        self._frames.clear()

    def observe(self, image: np.ndarray | Image.Image) -> None:
        """Add a frame to the episode's history without predicting (e.g. a step answered from a stored
        chunk), so the window stays the consecutive frames the policy was trained on."""
        if self.history_length == 1:
            return

        frame = to_pil(image)
        if self._per_frame_history:
            self._frames.push(frame)
        else:
            self._history.append(frame)

    def act(self, image: np.ndarray | Image.Image, instruction: str) -> np.ndarray:
        """One velocity command ``(A,)`` (float32) for the next frame of the current episode."""
        return self._step(image, instruction)["action"][0]

    def act_chunk(self, image: np.ndarray | Image.Image, instruction: str) -> np.ndarray:
        """The next ``K`` commands ``(K, A)`` for chunking cases (``outputs["action_chunk"]``)."""
        outputs = self._step(image, instruction)
        if "action_chunk" not in outputs:
            raise NotImplementedError(f"{self.case} predicts one action per step, not a chunk; use act()")
        return outputs["action_chunk"][0]

    def act_encoded(self, image_bytes: bytes, instruction: str) -> np.ndarray:
        """``act`` on encoded image bytes (PNG/JPEG), timing the decode too."""
        start = time.perf_counter()
        with Image.open(io.BytesIO(image_bytes)) as im:
            image = im.convert("RGB")
        decode_ms = (time.perf_counter() - start) * 1e3
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

    def reset_slots(self, slots: Sequence[int]) -> None:
        """Start new episodes in ``slots`` for ``act_slots`` (their frame histories are forgotten)."""
        for slot in slots:
            self._slot_histories[slot] = FrameHistory(max(self.history_length, 1))

    def act_slots(
        self, images: Sequence[np.ndarray | Image.Image], instructions: Sequence[str], slots: Sequence[int]
    ) -> np.ndarray:
        """``(B, A)`` commands for the next frame of the episodes in ``slots``, in one batch.

        Row i depends only on episode ``slots[i]``'s own frames: single-frame cases see one frame, history
        cases the last W frames of that episode (front-padded at its start, exactly as ``act`` does), so
        stepping episodes side by side gives the same commands as stepping them one at a time."""
        if not len(images) == len(instructions) == len(slots):
            raise ValueError(
                f"got {len(images)} images, {len(instructions)} instructions, {len(slots)} slots"
            )

        t0 = time.perf_counter()
        frames = [to_pil(im) for im in images]
        if self.history_length == 1:
            return self._forward(frames, list(instructions), t0)["action"]
        histories = self._slot_histories
        unknown = [s for s in slots if s not in histories]
        if unknown:
            raise KeyError(f"slots {unknown} were never started; call reset_slots first")
        if not self._per_frame_history:
            windows = []
            for frame, slot in zip(frames, slots, strict=True):
                history = histories[slot]
                history.push(frame)
                windows.append(
                    [history.frames[0]] * (self.history_length - len(history.frames)) + history.frames
                )
            return self._forward(windows, list(instructions), t0)["action"]
        t1 = time.perf_counter()
        names = tuple(self.policy.required_features)
        windowed = [n for n in names if n in HISTORY_FEATURES]
        per_frame = sorted({HISTORY_FEATURES[n] for n in windowed})
        current = [n for n in names if n not in HISTORY_FEATURES and n != "history_mask"]
        computed = self.provider(
            {"image": frames, "text": list(instructions)}, list(dict.fromkeys(current + per_frame))
        )
        stacked: dict[str, list[torch.Tensor]] = {n: [] for n in per_frame}
        masks = []
        for i, slot in enumerate(slots):
            histories[slot].push(frames[i], {n: computed[n][i] for n in per_frame})
            window, mask = histories[slot].window(self.provider, per_frame)
            for n in per_frame:
                stacked[n].append(window[n])
            masks.append(mask)
        features = {n: computed[n] for n in current}
        features.update({n: torch.stack(stacked[HISTORY_FEATURES[n]]) for n in windowed})  # (B, W, ...)
        if "history_mask" in names:
            features["history_mask"] = torch.stack(masks)  # (B, W)
        return self._run_head(features, t0, t1)["action"]

    def _step(self, image: np.ndarray | Image.Image, instruction: str) -> dict[str, np.ndarray]:

        t0 = time.perf_counter()
        frame = to_pil(image)
        if self.history_length == 1:
            return self._forward([frame], [instruction], t0)
        if self._per_frame_history:
            return self._step_per_frame(frame, instruction, t0)
        self._history.append(frame)
        window, _ = pad_history(list(self._history), self.history_length)  # pad the episode start
        return self._forward([window], [instruction], t0)

    def _step_per_frame(self, frame: Image.Image, instruction: str, t0: float) -> dict[str, np.ndarray]:
        """One step of a case that asks for ``history_*`` features: the new frame's features are computed
        once, the window is assembled from the stored ones (front-padded, with its mask)."""

        t1 = time.perf_counter()
        names = tuple(self.policy.required_features)
        windowed = [n for n in names if n in HISTORY_FEATURES]
        per_frame = sorted({HISTORY_FEATURES[n] for n in windowed})
        current = [n for n in names if n not in HISTORY_FEATURES and n != "history_mask"]
        computed = self.provider(
            {"image": [frame], "text": [instruction]}, list(dict.fromkeys(current + per_frame))
        )
        self._frames.push(frame, {n: computed[n][0] for n in per_frame})
        window, mask = self._frames.window(self.provider, per_frame)
        features = {n: computed[n] for n in current}
        features.update({n: window[HISTORY_FEATURES[n]][None] for n in windowed})  # (1, W, ...)
        if "history_mask" in names:
            features["history_mask"] = mask[None]  # (1, W)
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
