"""Case 1, ``Simplified2DActionModelV2``: project vision and language, concatenate, four-layer MLP."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mobile_vla.policies.base import FeatureDims, Policy, PolicyConfig, check_positive, check_probability
from mobile_vla.policies.heads import ACTIVATIONS, MLPHead
from mobile_vla.policies.registry import CaseSpec, register_case


@dataclass
class Simplified2DConfig(PolicyConfig):
    """Case 1's head (the seed's ``Simplified2DActionModelV2``).

    Input sizes are *not* fields: they are read from the backbone (``FeatureDims``), so the seed's
    ``mat1 and mat2 shapes cannot be multiplied (2x2048 and 1024x256)`` cannot happen.

    Departure from the seed: its head ended in ``LayerNorm(2)``. Normalising a 2-d output to zero mean and
    unit variance leaves only two possible predictions, ``(+1, -1)`` and ``(-1, +1)`` (times the affine
    weights), so no teleop command such as ``(1.15, 0)`` could be predicted. There is no output normalisation
    here; the last layer is a bare ``Linear``.

    Attributes:
        action_dims: predicted axes (default ``("linear_x", "linear_y")``).
        hidden_dim: h; vision and language are each projected to h, then the MLP is 2h -> 2h -> h -> h/2 -> A.
            The seed: 256 (down from 512).
        dropout: dropout after every hidden layer of the MLP. The seed: 0.4 (up from 0.2).
        activation: activation between the MLP layers (``relu``, ``gelu``, ``silu``, ``tanh``).
    """

    hidden_dim: int = 256
    dropout: float = 0.4
    activation: str = "relu"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(type(self).__name__, hidden_dim=self.hidden_dim)
        if not isinstance(self.hidden_dim, int) or self.hidden_dim < 2:
            raise ValueError(f"{type(self).__name__}.hidden_dim must be an int >= 2, got {self.hidden_dim!r}")
        check_probability(type(self).__name__, dropout=self.dropout)
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"{type(self).__name__}.activation {self.activation!r} unknown; choose from {sorted(ACTIVATIONS)}"
            )


class Simplified2DActionModelV2(Policy):
    """vision (B, Dv) and text (B, Dt) -> action (B, A); every sample is processed independently."""

    config_class: ClassVar[type[PolicyConfig]] = Simplified2DConfig
    required_features: ClassVar[tuple[str, ...]] = ("vision", "text")

    def __init__(self, config: Simplified2DConfig, dims: FeatureDims) -> None:
        super().__init__(config, dims)
        h = config.hidden_dim
        self.vision_proj = nn.Linear(self.dims.vision, h)
        self.text_proj = nn.Linear(self.dims.text, h)
        self.head = MLPHead([2 * h, 2 * h, h, h // 2, config.output_dim], config.activation, config.dropout)

    def forward(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        vision = self.vision_proj(features["vision"])  # (B, h)
        text = self.text_proj(features["text"])  # (B, h)
        fused = torch.cat([vision, text], dim=-1)  # (B, 2h)
        return {"action": self.head(fused)}  # (B, A)


# The seed's training settings for Case 1 (the standard recipe; TrainConfig defaults already match them,
# they are spelled out so the preset documents itself and survives a change of defaults).
CASE1_TRAIN = {
    "epochs": 50,
    "batch_size": 2,
    "lr": 5e-5,
    "weight_decay": 1e-3,
    "scheduler_t_max": 100,
    "scheduler_eta_min": 1e-6,
    "huber_delta": 0.1,
    "grad_clip_norm": 1.0,
    "early_stopping_patience": 3,
    "frame_selection": "random",
}


@register_case("case1", aliases=("Simplified2DActionModelV2",))
def case1() -> CaseSpec:
    return CaseSpec(
        policy_class=Simplified2DActionModelV2,
        config=Simplified2DConfig(hidden_dim=256, dropout=0.4),
        train=CASE1_TRAIN,
        description="pooled vision + instruction features, each projected, concatenated, four-layer MLP head",
    )
