"""The policy seam: what every case's head is, what it consumes, and how its config is described.

A policy is a trainable head over the features of a *frozen* backbone. It never sees images: the training
loop (and the inference wrapper) turn images and instructions into features through
``mobile_vla.features.FeatureProvider`` and hand the policy a dict of tensors. That is what lets the
features be cached on disk and lets Case 2/4 ask for more features without touching the trainer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mobile_vla.data.action_space import DEFAULT_KEY_SPEED, KeySpace
from mobile_vla.features.dims import FeatureDims, _int_or_none  # noqa: F401  (re-exported)

DEFAULT_ACTION_DIMS: tuple[str, ...] = ("linear_x", "linear_y")
ACTION_SPACES: tuple[str, ...] = ("continuous", "keys")


@dataclass
class PolicyConfig:
    """Fields every case shares. Case configs subclass this and add their own hyperparameters.

    Attributes:
        action_dims: names of the action axes the head predicts, in order (a subset of the episode's
            ``linear_x, linear_y, angular_z``). The seed hard-coded 2; here it is a choice.
        action_space: ``continuous`` (the seed: regress the velocities with the Huber loss) or ``keys``
            (classify the lab's key command, ``mobile_vla.data.action_space.KeySpace``: the head outputs one
            logit per key class that moves only along ``action_dims``, is trained with cross-entropy, and
            commands the arg-max class's velocity). Keys is what the lab moved to on its robot: teleop
            commands are 0 or +-1.15 per axis, and a regression head averages a left/right decision into a
            weak sideways drift.
        key_speed: the velocity of a pressed key on its axis, for ``action_space: keys`` (teleop: 1.15).
    """

    action_dims: tuple[str, ...] = DEFAULT_ACTION_DIMS
    action_space: str = "continuous"
    key_speed: float = DEFAULT_KEY_SPEED

    def __post_init__(self) -> None:
        if isinstance(self.action_dims, str):
            raise ValueError(
                f"action_dims must be a sequence of axis names, got the string {self.action_dims!r}"
            )
        self.action_dims = tuple(self.action_dims)
        if not self.action_dims:
            raise ValueError("action_dims must name at least one axis, got ()")
        if len(set(self.action_dims)) != len(self.action_dims):
            raise ValueError(f"action_dims has a repeated axis: {self.action_dims!r}")
        known = ("linear_x", "linear_y", "angular_z")
        bad = [a for a in self.action_dims if a not in known]
        if bad:
            raise ValueError(f"action_dims {bad!r} are not episode axes; choose from {known}")
        if self.action_space not in ACTION_SPACES:
            raise ValueError(
                f"{type(self).__name__}.action_space must be one of {ACTION_SPACES}, got {self.action_space!r}"
            )
        check_positive(type(self).__name__, key_speed=self.key_speed)

    @property
    def action_dim(self) -> int:
        return len(self.action_dims)

    def key_space(self) -> KeySpace | None:
        """The key classes of ``action_space: keys`` (None for continuous actions)."""
        return KeySpace(self.action_dims, self.key_speed) if self.action_space == "keys" else None

    @property
    def output_dim(self) -> int:
        """Size of the head's last layer: one value per action axis, or one logit per key class."""
        keys = self.key_space()
        return keys.num_classes if keys else self.action_dim

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; ``from_dict(to_dict())`` gives back an equal config."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; known keys: {sorted(names)}")
        return cls(**dict(data))

    def replace(self, **overrides: Any) -> PolicyConfig:
        """A copy with ``overrides`` applied (validated again); unknown keys are named in the error."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(overrides) - names
        if unknown:
            raise ValueError(
                f"unknown {type(self).__name__} fields {sorted(unknown)}; known fields: {sorted(names)}"
            )
        return dataclasses.replace(self, **overrides)


def check_positive(owner: str, **values: float) -> None:
    """Raise ``ValueError`` naming the first value that is not a positive finite number."""
    for name, value in values.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{owner}.{name} must be positive, got {value!r}")


def check_probability(owner: str, **values: float) -> None:
    """Raise ``ValueError`` naming the first value outside [0, 1)."""
    for name, value in values.items():
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{owner}.{name} must be in [0, 1), got {value!r}")


@dataclass(frozen=True)
class ExtraFeature:
    """A feature a case needs beyond the backbone's, with the frozen encoder that computes it (Case 2's
    ``clip_image``). Built by ``Policy.prepare_features``; the trainer and ``load_policy`` hand it to the
    ``FeatureProvider`` and record it in the run's config.

    Attributes:
        batch_key: the collated batch entry it is computed from (e.g. ``image``).
        dim: its size (goes into ``FeatureDims.extra[name]``).
        encode: ``encode(inputs) -> (len(inputs), dim)`` float tensor, no gradient.
        record: JSON-able description for config.json (spec, fingerprint, pretrained, fallback).
        num_parameters: frozen parameters of the encoder (for ``describe``).
    """

    batch_key: str
    dim: int
    encode: Callable[[list[Any]], torch.Tensor]
    record: dict[str, Any] = field(default_factory=dict)
    num_parameters: int = 0


class Policy(nn.Module):
    """Base class of every case's head.

    Subclasses set ``config_class`` and ``required_features`` and implement ``forward``, whose last layer has
    ``config.output_dim`` outputs. The default ``compute_loss`` is the standard recipe's Huber loss on
    ``outputs["action"]`` vs ``batch["action"]`` (cross-entropy over the key classes for
    ``action_space: keys``); cases with auxiliary losses override it, use ``action_loss_terms`` for the
    action part and add their terms to ``logs``.

    With ``action_space: keys`` a forward hook turns the head's outputs into commands: ``action`` (and
    ``action_chunk``) become the arg-max class's velocity and the raw outputs stay as ``action_logits``
    (``action_chunk_logits``), so everything downstream (metrics, the simulator, the server) sees velocities.
    """

    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig
    # Feature names (keys of the features dict) this case consumes; the FeatureProvider computes only these.
    required_features: ClassVar[tuple[str, ...]] = ("vision", "text")
    # Features only the loss needs (Case 4's future frames): computed for training, validation and offline
    # evaluation, never at inference.
    training_features: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: PolicyConfig, dims: FeatureDims | Mapping[str, Any] | Any) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self.dims = FeatureDims.coerce(dims)
        # Set by create_policy: the registered case name this instance was built as.
        self.case_name: str | None = None
        # The recipe's action loss; the trainer replaces it from TrainConfig.huber_delta (configure_training).
        self.action_criterion: nn.Module = nn.HuberLoss(delta=0.1)
        # Instruction-feature standardisation (a departure from the seed, which fed raw text features): the
        # lab's instructions differ in one word ("left"/"right"), and a sentence encoder puts them almost on
        # top of each other (all-MiniLM-L6-v2: cosine 0.995), so the one thing the text must tell the head is
        # a tiny offset on a large shared vector. The trainer sets these from the training split's
        # instructions (`set_text_stats`); they are buffers, so the checkpoint carries them. Identity until set.
        self.register_buffer("text_mean", torch.zeros(self.dims.text))
        self.register_buffer("text_std", torch.ones(self.dims.text))
        self.register_forward_pre_hook(_standardise_text)
        self.key_space = config.key_space()
        self.class_weights: torch.Tensor | None = None  # (C,), see set_class_weights
        if self.key_space is not None:
            self.register_buffer("key_velocities", torch.from_numpy(self.key_space.velocities))  # (C, A)
            self.register_forward_hook(_decode_keys)

    def set_text_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise the `text` feature as (text - mean) / std from now on (std floored at 1e-3)."""
        self.text_mean.copy_(mean.to(self.text_mean))
        self.text_std.copy_(std.to(self.text_std).clamp_min(1e-3))

    @property
    def action_dims(self) -> tuple[str, ...]:
        return self.config.action_dims

    @property
    def history_length(self) -> int:
        """Frames per sample: 1, or W for history-window cases. Such a case either asks for ``history_*``
        features (per-frame features of the last W frames, ``(B, W, ...)``, plus ``history_mask``; Case 4) or
        takes windows in ``batch["image"]`` (then its ``vision``/``image_tokens`` get the time axis)."""
        return 1

    def forward(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """features -> {"action": (B, A), ...}."""
        raise NotImplementedError

    def compute_loss(
        self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The standard recipe's loss: Huber(delta) between predicted and recorded actions (for
        ``action_space: keys``, cross-entropy against the frame's key class: the file's stored class when it
        has one, ``batch["key_class"]``, else the recorded command's)."""
        loss = self.action_loss_terms(outputs, "action", batch["action"], batch.get("key_class")).mean()
        return loss, {"action_loss": float(loss.detach())}

    def set_class_weights(self, weights: torch.Tensor | None) -> None:
        """Weight the key-class cross-entropy per target class (``(C,)`` over ``key_space.names``; None:
        unweighted). Set by the trainer from ``TrainConfig.class_weights``; not part of the checkpoint."""
        if weights is not None:
            if self.key_space is None:
                raise ValueError(
                    f"{type(self).__name__}: class weights need action_space: keys, got "
                    f"{self.config.action_space!r}"
                )
            weights = torch.as_tensor(weights, dtype=torch.float32)
            if weights.shape != (self.key_space.num_classes,):
                raise ValueError(
                    f"class weights must have shape ({self.key_space.num_classes},) over "
                    f"{list(self.key_space.names)}, got {tuple(weights.shape)}"
                )
        self.class_weights = weights

    def action_loss_terms(
        self,
        outputs: Mapping[str, torch.Tensor],
        key: str,
        target: torch.Tensor,
        stored_classes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sample action loss ``(...)`` of ``outputs[key]`` (``(..., A)``) against recorded commands
        ``target`` (``(..., A)``): the Huber loss averaged over the axes, or, for ``action_space: keys``, the
        cross-entropy of ``outputs[key + "_logits"]`` against the frames' key classes.

        The key class of a frame is the file's stored one where ``stored_classes`` (``(...)``, ``KEY_CLASSES``
        indices, -1 = none stored) has one, projected onto this head's classes (``KeySpace.project``: a
        stored ROTATE_LEFT is STOP for a head without ``angular_z``), else derived from ``target``
        (``KeySpace.classify``). With class weights (``set_class_weights``) each frame's term is multiplied
        by its target class's weight."""
        if self.key_space is None:
            pred = outputs[key]
            delta = float(getattr(self.action_criterion, "delta", 0.1))
            return F.huber_loss(pred, target.to(pred), reduction="none", delta=delta).mean(dim=-1)
        logits = outputs[key + "_logits"]  # (..., C)
        stored = None if stored_classes is None else torch.as_tensor(stored_classes).detach().cpu().numpy()
        classes = self.key_space.targets(target.detach().cpu().numpy(), stored)
        classes = torch.from_numpy(classes).to(logits.device)  # (...)
        weight = getattr(self, "class_weights", None)
        flat = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            classes.reshape(-1),
            weight=None if weight is None else weight.to(logits),
            reduction="none",
        )
        return flat.view(classes.shape)

    @classmethod
    def prepare_features(
        cls, config: PolicyConfig, device: str = "cpu"
    ) -> tuple[PolicyConfig, dict[str, ExtraFeature]]:
        """Build the frozen encoders this case needs beyond the backbone (none by default).

        Returns the config with whatever was resolved recorded in it (Case 2: which CLIP was used, whether
        it is pretrained) and ``{feature name: ExtraFeature}``. Called before the head is built, since the
        head's input sizes depend on the features' sizes.
        """
        return config, {}

    def feature_names(self, training: bool = False) -> tuple[str, ...]:
        """The features to compute: ``required_features``, plus ``training_features`` when a loss is needed."""
        extra = (
            tuple(n for n in self.training_features if n not in self.required_features) if training else ()
        )
        return tuple(self.required_features) + extra

    def dataset_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for the dataset this case trains on (none for single-frame cases).

        Cases that need more than one frame (Case 4: a history window, an action chunk, future frames, task
        labels) return them here (``{"history": 4, "chunk": 5, "horizon": 5}``); the trainer then builds a
        ``mobile_vla.data.windows.WindowDataset`` with them instead of an ``EpisodeDataset``.
        """
        return {}

    def configure_training(self, train_config: Any) -> None:
        """Take the loss settings of the training recipe (called by the trainer before the first step)."""
        self.action_criterion = nn.HuberLoss(delta=float(train_config.huber_delta))

    def predict(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Eval-mode, no-grad action prediction ``(B, A)``; restores the previous train/eval mode.

        Goes through ``__call__`` (not ``forward``), so the forward pre-hooks, the text standardisation among
        them, apply exactly as in training and in ``policy(features)``.
        """
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self(features)["action"]  # through __call__: the text pre-hook runs
        finally:
            self.train(was_training)

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


TEXT_CLIP = 10.0
"""Standardised text features are clipped to +-this: an instruction unlike any seen in training (a paraphrase)
would otherwise land far outside what the head was trained on."""


def _decode_keys(module: Policy, args: tuple[Any, ...], outputs: Any) -> Any:
    """Forward hook of ``action_space: keys``: logits -> the arg-max key class's command, logits kept."""
    if not isinstance(outputs, Mapping):
        return None
    decoded = dict(outputs)
    for key in ("action", "action_chunk"):
        if key in outputs and key + "_logits" not in outputs:
            logits = outputs[key]  # (..., C)
            decoded[key + "_logits"] = logits
            decoded[key] = module.key_velocities[logits.argmax(dim=-1)]  # (..., A)
    return decoded


def _standardise_text(module: Policy, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook: every case sees standardised instruction features, per sample."""
    if not args or not isinstance(args[0], Mapping) or "text" not in args[0]:
        return None
    features = dict(args[0])
    text = features["text"]
    features["text"] = ((text - module.text_mean.to(text)) / module.text_std.to(text)).clamp(
        -TEXT_CLIP, TEXT_CLIP
    )
    return (features, *args[1:])
