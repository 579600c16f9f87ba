"""``FeatureDims``: the sizes of the features a backbone produces and a head is built for.

It lives in the features layer (below the policies) because the provider reports it and the heads consume it;
``mobile_vla.policies.FeatureDims`` re-exports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FeatureDims:
    """Sizes of the features a backbone produces. Heads size their input layers from this, never by hand.

    Attributes:
        vision: size of the pooled image feature ``features["vision"]`` (Kosmos-2: 1024).
        text: size of the masked-mean instruction feature ``features["text"]`` (Kosmos-2: 2048).
        token_dim: size of one image token in ``features["image_tokens"]`` (None if the backbone has none).
        num_image_tokens: number of image tokens N in ``features["image_tokens"]`` (None if unknown).
        extra: sizes of further named features a case may need (e.g. ``{"clip_image": 512}``).
    """

    vision: int
    text: int
    token_dim: int | None = None
    num_image_tokens: int | None = None
    extra: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("vision", "text"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"FeatureDims.{name} must be a positive int, got {value!r}")
        for name in ("token_dim", "num_image_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"FeatureDims.{name} must be a positive int or None, got {value!r}")
        object.__setattr__(self, "extra", dict(self.extra))

    @classmethod
    def from_backbone(cls, backbone: Any) -> FeatureDims:
        """Read the sizes off a ``Backbone`` (anything with ``vision_dim``/``text_dim`` attributes)."""
        return cls(
            vision=int(backbone.vision_dim),
            text=int(backbone.text_dim),
            token_dim=_int_or_none(getattr(backbone, "token_dim", None)),
            num_image_tokens=_int_or_none(getattr(backbone, "num_image_tokens", None)),
            extra=dict(getattr(backbone, "extra_dims", {}) or {}),
        )

    @classmethod
    def coerce(cls, dims: FeatureDims | Mapping[str, Any] | Any) -> FeatureDims:
        """Accept a ``FeatureDims``, its ``to_dict()`` form, or a backbone."""
        if isinstance(dims, FeatureDims):
            return dims
        if isinstance(dims, Mapping):
            return cls.from_dict(dims)
        if hasattr(dims, "vision_dim") and hasattr(dims, "text_dim"):
            return cls.from_backbone(dims)
        raise TypeError(
            f"expected FeatureDims, a dict or a backbone with vision_dim/text_dim, got {type(dims).__name__}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "vision": self.vision,
            "text": self.text,
            "token_dim": self.token_dim,
            "num_image_tokens": self.num_image_tokens,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureDims:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown FeatureDims keys {sorted(unknown)}")
        return cls(**dict(data))


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)
