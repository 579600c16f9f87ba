"""A pretrained frozen *reference* image embedding for Case 2 when no pretrained CLIP can be had.

Case 2 aligns its resampled image tokens to a frozen image embedding of the same frame (the seed's "CLIP
normalisation"). The seed's CLIP (``openai/clip-vit-base-patch32``) comes from the Hugging Face hub, so an
offline machine cannot load it. Aligning to a *random* CLIP (``clip-tiny``) feeds noise into half of Case 2's
vision input, and that is what made Case 2 fail in closed loop (0%, with ``linear_y`` predicted as 0 on every
frame). Instead, offline, Case 2 falls back to this encoder: the ImageNet-pretrained EfficientNet-Lite0 image
tower (it installs from PyPI), its final 1280-channel map averaged over space — the vector the ImageNet
classifier reads.

This is a documented departure from the seed, not a CLIP: the embedding is not language-aligned, and its
fingerprint names it (``encoder: reference-image``, ``name: efficientnet-lite0``) so the registry and the report
show which reference a run used. It has the same interface as ``CLIPImageEncoder`` (``encode_images``,
``fingerprint``, ``spec``, ``dim``, ``pretrained``, ``fallback``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch
from PIL import Image

from mobile_vla.backbones.base import as_pil_images, file_sha256, resolve_device, short_hash
from mobile_vla.backbones.lite import (
    EFFICIENTNET_NAME,
    LITE_MEAN,
    LITE_STD,
    efficientnet_weights_path,
    shared_lite_vision,
)

REFERENCE_IMAGE_NAME = EFFICIENTNET_NAME


class ReferenceImageEncoder:
    """Frozen EfficientNet-Lite0 (ImageNet): ``encode_images(list[PIL]) -> (B, 1280)`` float32 on ``device``."""

    pretrained = True

    def __init__(
        self, name_or_path: str = REFERENCE_IMAGE_NAME, *, device: str = "auto", dtype: str = "fp32"
    ):
        if name_or_path != REFERENCE_IMAGE_NAME:
            raise ValueError(
                f"unknown reference image encoder {name_or_path!r}; expected {REFERENCE_IMAGE_NAME!r}"
            )
        if dtype != "fp32":
            raise ValueError(f"the reference image encoder runs in fp32 only, got dtype={dtype!r}")
        self.name_or_path = name_or_path
        self.requested_device = str(device)
        self.device = resolve_device(device)
        self.dtype = dtype
        self.fallback: dict[str, str] | None = None
        # The same tower as the `lite` backbone's, shared in the process: a frame both encode is run once.
        self.tower = shared_lite_vision(self.device, torch.float32)
        self.model = self.tower.net
        self.vision_runtime = self.tower.runtime
        self.image_size = self.tower.image_size
        self.dim = self.tower.channels

    def encode_images(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """(B, 1280) spatially averaged final feature map, float32 on ``device``."""
        pil = as_pil_images(images)
        if not pil:
            return torch.zeros(0, self.dim, device=self.device)
        fmap = self.tower.feature_maps(pil)  # (B, 1280, 7, 7)
        return fmap.mean(dim=(2, 3))  # (B, 1280)

    @cached_property
    def fingerprint(self) -> dict[str, Any]:
        return {
            "encoder": "reference-image",
            "dtype": self.dtype,
            "pretrained": True,
            "dim": self.dim,
            "model": {"name": EFFICIENTNET_NAME, "weights_sha256": file_sha256(efficientnet_weights_path())},
            "features": "global average of EfficientNet-Lite0 extract_features() (ImageNet), not L2-normalised",
            "preprocessing": {
                "image_size": [self.image_size, self.image_size],
                "resize": "whole frame, bicubic, no crop",
                "mean": list(LITE_MEAN),
                "std": list(LITE_STD),
            },
        }

    @property
    def fingerprint_hash(self) -> str:
        return short_hash(self.fingerprint)

    def spec(self) -> dict[str, Any]:
        """Keyword arguments for ``create_clip_encoder`` that rebuild this encoder."""
        return {"name_or_path": self.name_or_path, "device": self.requested_device, "dtype": self.dtype}

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def __repr__(self) -> str:
        return f"ReferenceImageEncoder(name={self.name_or_path!r}, dim={self.dim}, device={self.device})"
