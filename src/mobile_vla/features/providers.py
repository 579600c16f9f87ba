"""The one place features are computed: a collated batch (or one frame) -> the feature dict a case asks for.

Policies consume features, never images (see ``mobile_vla.policies.base``). Everything that turns pixels and
strings into tensors goes through ``FeatureProvider``, so a disk cache of frozen-backbone features can sit
behind it without the trainer, the evaluator or the inference wrapper noticing.

Features are named. A ``FeatureSource`` says which batch key feeds a feature and which encoder computes it:

    "vision"       <- batch["image"]  via backbone.encode_images        (B, Dv)
    "text"         <- batch["text"]   via backbone.encode_texts         (B, Dt)   cached per distinct string
    "image_tokens" <- batch["image"]  via backbone.encode_image_tokens  (B, N, Dtok)
    "history_tokens" / "history_vision" <- batch["history_images"]       (B, W, N, Dtok) / (B, W, Dv)
    "history_mask" <- batch["history_mask"] as is                       (B, W)
    "future_vision" <- batch["future_images"] via encode_images         (B, H, Dv)

Cases that need more (Case 2's CLIP embedding, Case 4's future frames) register a source with
``register_feature_source`` (or pass ``extra_sources`` to one provider). A batch entry that is a list of
lists (a history window per sample) gives features with a time axis, ``(B, W, ...)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from mobile_vla.features.dims import FeatureDims
from mobile_vla.utils.memo import BoundedMemo

# encoder(provider, flat_inputs) -> tensor with the inputs on axis 0
Encoder = Callable[["FeatureProvider", list[Any]], torch.Tensor]


@dataclass(frozen=True)
class FeatureSource:
    """How to compute one named feature.

    Attributes:
        batch_key: the collated batch entry the feature is computed from (``image``, ``text``, ...).
        encode: ``encode(provider, inputs) -> Tensor`` with ``len(inputs)`` rows.
        kind: ``image``, ``text`` (cached per distinct string) or ``tensor`` (a batch tensor passed through,
            e.g. a history mask).
    """

    batch_key: str
    encode: Encoder
    kind: str = "image"


def _encode_vision(provider: FeatureProvider, images: list[Any]) -> torch.Tensor:
    return provider.backbone.encode_images(images)


def _encode_tokens(provider: FeatureProvider, images: list[Any]) -> torch.Tensor:
    return provider.backbone.encode_image_tokens(images)


def _encode_text(provider: FeatureProvider, texts: list[Any]) -> torch.Tensor:
    return provider.backbone.encode_texts(texts)


def _stack_tensors(provider: FeatureProvider, values: list[Any]) -> torch.Tensor:
    return torch.stack([torch.as_tensor(v) for v in values]).to(provider.device)


FEATURE_SOURCES: dict[str, FeatureSource] = {
    "vision": FeatureSource("image", _encode_vision, "image"),
    "text": FeatureSource("text", _encode_text, "text"),
    "image_tokens": FeatureSource("image", _encode_tokens, "image"),
    # History windows and future frames (mobile_vla.data.windows.WindowDataset): (B, W, ...) / (B, H, ...).
    "history_vision": FeatureSource("history_images", _encode_vision, "image"),
    "history_tokens": FeatureSource("history_images", _encode_tokens, "image"),
    "history_mask": FeatureSource("history_mask", _stack_tensors, "tensor"),
    "future_vision": FeatureSource("future_images", _encode_vision, "image"),
}


# A history-window feature is the window of a per-frame feature: inference encodes each frame once and
# assembles the window from stored per-frame features (``policies.inference.FrameHistory``).
HISTORY_FEATURES: dict[str, str] = {"history_tokens": "image_tokens", "history_vision": "vision"}


def register_feature_source(name: str, source: FeatureSource, *, overwrite: bool = False) -> None:
    """Make feature ``name`` available to every provider (e.g. ``clip_image`` from a CLIP encoder)."""
    if name in FEATURE_SOURCES and not overwrite:
        raise ValueError(f"feature source {name!r} is already registered")
    FEATURE_SOURCES[name] = source


def to_pil(image: Any) -> Image.Image:
    """A PIL RGB image from a PIL image or a uint8 ``[H, W, 3]`` array."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB image, got dtype {array.dtype} shape {array.shape}")
    return Image.fromarray(array)  # uint8 [H, W, 3] is RGB


class FeatureProvider:
    """Computes the named features of a batch with a frozen backbone.

    Args:
        backbone: a ``mobile_vla.backbones.Backbone`` (frozen, eval mode).
        extra_sources: feature sources for this provider only, on top of ``FEATURE_SOURCES``.
        cache_text: keep each distinct instruction's text feature in memory (the lab's data has two).
            Each string is encoded alone, so its feature does not depend on what else was in the batch.
        max_cached_texts: bound on the text cache (``utils.memo.BoundedMemo``: the oldest string dropped first).

    ``timings`` accumulates seconds spent per feature name (for profiling and the inference report).
    """

    def __init__(
        self,
        backbone: Any,
        *,
        extra_sources: Mapping[str, FeatureSource] | None = None,
        cache_text: bool = True,
        max_cached_texts: int = 4096,
    ) -> None:
        self.backbone = backbone
        self.extra_sources = dict(extra_sources or {})
        self.cache_text = cache_text
        self.max_cached_texts = max_cached_texts
        self._text_cache: BoundedMemo[tuple[str, str], torch.Tensor] = BoundedMemo(max_cached_texts)
        self.timings: dict[str, float] = {}

    @property
    def dims(self) -> FeatureDims:
        return FeatureDims.from_backbone(self.backbone)

    @property
    def fingerprint_hash(self) -> str:
        return str(self.backbone.fingerprint_hash)

    @property
    def device(self) -> torch.device:
        return torch.device(self.backbone.device)

    def source(self, name: str) -> FeatureSource:
        if name in self.extra_sources:
            return self.extra_sources[name]
        if name in FEATURE_SOURCES:
            return FEATURE_SOURCES[name]
        known = sorted(set(FEATURE_SOURCES) | set(self.extra_sources))
        raise KeyError(f"no feature source for {name!r}; known features: {known}")

    def __call__(self, batch: Mapping[str, Any], names: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` for each of ``names``, computed from the collated ``batch``."""
        out: dict[str, torch.Tensor] = {}
        if {"vision", "image_tokens"} <= set(names) and self._joint_image_features():
            # One forward pass gives both the pooled feature and the tokens (Case 2, Case 4).
            out["vision"], out["image_tokens"] = self.compute_pair(batch)
        for name in names:
            if name not in out:
                out[name] = self.compute(name, batch)
        return out

    def _joint_image_features(self) -> bool:
        return (
            hasattr(self.backbone, "encode_images_with_tokens")
            and self.source("vision") is FEATURE_SOURCES["vision"]
            and self.source("image_tokens") is FEATURE_SOURCES["image_tokens"]
        )

    def compute_pair(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(vision, image_tokens)`` from one ``backbone.encode_images_with_tokens`` call."""
        pair: dict[str, torch.Tensor] = {}

        def encode(provider: FeatureProvider, images: list[Any]) -> torch.Tensor:
            pooled, tokens = provider.backbone.encode_images_with_tokens(images)
            pair["tokens"] = tokens
            return pooled

        vision = self._compute(FeatureSource("image", encode, "image"), "vision+image_tokens", batch)
        tokens = pair["tokens"]
        if vision.dim() == 3:  # windowed: (B, W, Dv) -> tokens (B, W, N, Dtok)
            tokens = tokens.reshape(*vision.shape[:2], *tokens.shape[1:])
        return vision, tokens

    def compute(self, name: str, batch: Mapping[str, Any]) -> torch.Tensor:
        """One named feature of the collated ``batch``."""
        return self._compute(self.source(name), name, batch)

    def _compute(self, source: FeatureSource, name: str, batch: Mapping[str, Any]) -> torch.Tensor:
        if source.batch_key not in batch:
            raise KeyError(f"feature {name!r} needs batch[{source.batch_key!r}]; batch has {sorted(batch)}")
        inputs = list(batch[source.batch_key])
        start = time.perf_counter()
        windowed = bool(inputs) and isinstance(inputs[0], (list, tuple))
        flat = [x for window in inputs for x in window] if windowed else inputs
        if source.kind == "image":
            flat = [to_pil(x) for x in flat]
        out = self._encode_texts(name, source, flat) if source.kind == "text" and self.cache_text else None
        if out is None:
            out = source.encode(self, flat)
        if windowed:
            lengths = {len(w) for w in inputs}
            if len(lengths) != 1:
                raise ValueError(
                    f"feature {name!r}: windows in one batch must have one length, got {lengths}"
                )
            out = out.reshape(len(inputs), lengths.pop(), *out.shape[1:])  # (B, W, ...)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        return out

    def _encode_texts(self, name: str, source: FeatureSource, texts: list[str]) -> torch.Tensor:
        rows = self._text_cache.get_many(
            [(name, text) for text in texts],
            lambda key: source.encode(self, [key[1]])[0],  # (Dt,), alone
        )
        return torch.stack(rows)  # (B, Dt)

    def add_extra_features(self, extra: Mapping[str, Any]) -> None:
        """Compute the named ``ExtraFeature``s of a case (e.g. Case 2's ``clip_image``) with their encoders."""
        for name, feature in extra.items():
            self.extra_sources[name] = FeatureSource(
                feature.batch_key, lambda provider, inputs, f=feature: f.encode(inputs), "image"
            )

    def clear_cache(self) -> None:
        self._text_cache.clear()
