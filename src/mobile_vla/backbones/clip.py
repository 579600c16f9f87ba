"""The frozen CLIP image encoder that Case 2's "CLIP normalisation" aligns to.

``openai/clip-vit-base-patch32`` through transformers' ``CLIPModel`` (the weights open_clip calls
ViT-B-32/openai), or any local directory, or ``clip-tiny``: a tiny random ``CLIPModel`` built locally for tests.

``encode_images`` returns ``CLIPModel.get_image_features`` *as is* (the projected image embedding, 512-d for
ViT-B/32), **not** L2-normalised: Case 2 normalises per sample itself, and a cache of raw features serves any
later choice. ``resolve_clip_encoder`` tries the requested CLIP and, when it cannot be had (offline), falls back
to ``clip-tiny`` with a warning and a ``fallback`` record that the run config stores, so the registry can label
the run as not using pretrained CLIP.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mobile_vla.backbones.base import (
    BackboneUnavailableError,
    as_pil_images,
    file_sha256,
    freeze,
    quiet_transformers,
    resolve_device,
    resolve_dtype,
    short_hash,
)
from mobile_vla.backbones.hub import load_pretrained, snapshot_commit
from mobile_vla.backbones.kosmos2 import image_preprocessing_summary, resolved_model_dir, weight_files
from mobile_vla.backbones.reference import REFERENCE_IMAGE_NAME, ReferenceImageEncoder
from mobile_vla.backbones.tiny import ensure_tiny_clip, is_tiny_dir

logger = logging.getLogger(__name__)

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
TINY_CLIP_NAME = "clip-tiny"


class CLIPImageEncoder:
    """Frozen CLIP image tower + projection: ``encode_images(list[PIL]) -> (B, dim)`` float32 on ``device``.

    Not an ``nn.Module``, for the same reason as ``Backbone``. ``fallback`` is None, or a dict saying which
    CLIP was asked for and why this one is used instead.
    """

    def __init__(
        self,
        name_or_path: str = DEFAULT_CLIP,
        *,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "fp32",
        tiny_path: str | None = None,
    ) -> None:
        self.name_or_path = name_or_path
        self.revision = revision
        self.requested_device = str(device)
        self.device = resolve_device(device)
        self.torch_dtype = resolve_dtype(dtype)
        self.dtype = dtype
        self.tiny_path = tiny_path
        self.fallback: dict[str, str] | None = None

        ref = str(ensure_tiny_clip(tiny_path)) if name_or_path == TINY_CLIP_NAME else name_or_path

        def loader(ref: str, local_only: bool) -> tuple[Any, Any, Any]:
            from transformers import AutoImageProcessor, CLIPModel

            kwargs: dict[str, Any] = {"local_files_only": local_only}
            if revision is not None:
                kwargs["revision"] = revision
            with quiet_transformers():
                processor = AutoImageProcessor.from_pretrained(ref, **kwargs)
                model, info = CLIPModel.from_pretrained(
                    ref, output_loading_info=True, dtype=self.torch_dtype, **kwargs
                )
            return model, processor, info

        (model, processor, info), self.is_local = load_pretrained(
            ref,
            loader,
            what="CLIP weights",
            cli_hint="`--clip-path DIR`",
            python_hint="create_clip_encoder('DIR')",
            required_files=("config.json", "preprocessor_config.json"),
            alternatives=f"Without them, name '{TINY_CLIP_NAME}' gives a tiny random CLIP (tests only).",
        )
        missing = sorted(
            k for k in info.get("missing_keys", ()) if k.startswith(("vision_model.", "visual_projection"))
        )
        if missing:
            raise ValueError(
                f"{ref}: {len(missing)} CLIP image-tower weights are missing (e.g. {missing[:3]})"
            )
        self.model = freeze(model).to(self.device)
        self.processor = processor
        self.model_dir = resolved_model_dir(ref, self.is_local, revision)
        self.pretrained = not is_tiny_dir(self.model_dir)
        self.dim = int(model.config.projection_dim)

    def encode_images(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """(B, dim) projected CLIP image embeddings (not normalised), float32 on ``device``."""
        pil = as_pil_images(images)
        if not pil:
            return torch.zeros(0, self.dim, device=self.device)
        pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = self.model.get_image_features(pixel_values=pixels.to(self.device, self.torch_dtype))
        # transformers 5 returns a model output whose pooler_output is the projected embedding.
        features = out if torch.is_tensor(out) else out.pooler_output  # (B, dim)
        return features.float()

    @cached_property
    def fingerprint(self) -> dict[str, Any]:
        vc = self.model.config.vision_config
        model: dict[str, Any] = {
            "class": type(self.model).__name__,
            "name": TINY_CLIP_NAME
            if not self.pretrained
            else (Path(self.name_or_path).name if self.is_local else self.name_or_path),
            "source": "local" if self.is_local else "hub",
            "weights_sha256": {f.name: file_sha256(f) for f in weight_files(self.model_dir)},
        }
        if not self.is_local:
            model["revision"] = self.revision or "main"
            model["commit"] = snapshot_commit(self.model_dir)
        return {
            "encoder": "clip-image",
            "dtype": self.dtype,
            "pretrained": self.pretrained,
            "dim": self.dim,
            "model": model,
            "config": {
                "hidden_size": vc.hidden_size,
                "layers": vc.num_hidden_layers,
                "image_size": vc.image_size,
                "patch_size": vc.patch_size,
                "projection_dim": self.dim,
            },
            "features": "CLIPModel.get_image_features (projected, not L2-normalised)",
            "preprocessing": image_preprocessing_summary(self.processor),
        }

    @property
    def fingerprint_hash(self) -> str:
        return short_hash(self.fingerprint)

    def spec(self) -> dict[str, Any]:
        """Keyword arguments for ``create_clip_encoder`` that rebuild this encoder (the fallback, if one was used)."""
        spec: dict[str, Any] = {
            "name_or_path": self.name_or_path,
            "device": self.requested_device,
            "dtype": self.dtype,
        }
        if self.revision:
            spec["revision"] = self.revision
        if self.tiny_path:
            spec["tiny_path"] = self.tiny_path
        return spec

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def __repr__(self) -> str:
        return (
            f"CLIPImageEncoder(name={self.name_or_path!r}, dim={self.dim}, pretrained={self.pretrained}, "
            f"device={self.device}, dtype={self.dtype}, fallback={self.fallback is not None})"
        )


def create_clip_encoder(
    name_or_path: str = DEFAULT_CLIP,
    *,
    device: str = "auto",
    dtype: str = "fp32",
    revision: str | None = None,
    tiny_path: str | None = None,
) -> CLIPImageEncoder | ReferenceImageEncoder:
    """Load a frozen image encoder for Case 2: a CLIP (hub id or directory; fails fast when offline),
    ``'clip-tiny'`` (the tiny random CLIP, for tests) or ``'efficientnet-lite0'`` (the pretrained reference
    embedding, see ``mobile_vla.backbones.reference``)."""
    if name_or_path == REFERENCE_IMAGE_NAME:
        return ReferenceImageEncoder(name_or_path, device=device, dtype=dtype)
    return CLIPImageEncoder(name_or_path, revision=revision, device=device, dtype=dtype, tiny_path=tiny_path)


def resolve_clip_encoder(
    name_or_path: str = DEFAULT_CLIP,
    *,
    device: str = "auto",
    dtype: str = "fp32",
    revision: str | None = None,
    allow_fallback: bool = True,
    fallback: str = REFERENCE_IMAGE_NAME,
    tiny_path: str | None = None,
) -> CLIPImageEncoder | ReferenceImageEncoder:
    """The requested encoder, or ``fallback`` when it cannot be had and ``allow_fallback`` (logged, recorded).

    The fallback is the pretrained reference embedding (``efficientnet-lite0``) unless another is named; the
    tiny *random* CLIP is used only when named explicitly (as ``name_or_path`` or ``fallback``). The returned
    encoder's ``fallback`` is ``None`` when the requested one loaded, else
    ``{"requested": name_or_path, "used": <fallback>, "reason": <error message>}``: store it in the run config.
    """
    try:
        return create_clip_encoder(
            name_or_path, device=device, dtype=dtype, revision=revision, tiny_path=tiny_path
        )
    except BackboneUnavailableError as err:
        if not allow_fallback or name_or_path in (TINY_CLIP_NAME, REFERENCE_IMAGE_NAME):
            raise
        if fallback == TINY_CLIP_NAME:
            logger.warning(
                "CLIP %r is not available (%s). Falling back to %r: RANDOM weights, so Case 2's CLIP alignment "
                "is not meaningful in this run; the run config records it and the registry does not rank it.",
                name_or_path,
                err,
                fallback,
            )
        else:
            logger.warning(
                "CLIP %r is not available (%s). Using the pretrained reference image embedding %r instead (a "
                "documented departure, not a CLIP); the run config records it.",
                name_or_path,
                err,
                fallback,
            )
        encoder = create_clip_encoder(fallback, device=device, dtype=dtype, tiny_path=tiny_path)
        encoder.fallback = {"requested": name_or_path, "used": fallback, "reason": str(err)}
        return encoder
