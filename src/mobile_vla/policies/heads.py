"""Building blocks shared by the cases' heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLPHead(nn.Module):
    """Linear layers through ``sizes`` with activation + dropout between them and a *bare* last layer.

    ``MLPHead([512, 512, 256, 128, 2])`` is the seed's four-layer action head. Nothing follows the last
    linear layer on purpose: the seed ended in ``LayerNorm(2)``, which maps every 2-d output to one of two
    points (+-1 per axis, summing to 0) so the head could not express ``(1.15, 0)`` at all.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"MLPHead needs at least input and output sizes, got {list(sizes)}")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(sizes) - 2:
                layers += [make_activation(activation), nn.Dropout(dropout)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (..., sizes[-1])
