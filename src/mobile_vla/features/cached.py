"""A `FeatureProvider` whose frozen-encoder features go through the on-disk `FeatureCache`.

The trainer uses it whenever the backbone is frozen (always, in this toolkit), so every frame costs one
backbone pass per backbone, ever: the first epoch of the first run computes and stores it; later epochs,
runs, seeds and cases read it back.

Which features are cached, and under which namespace (`mobile_vla.data.cache.feature_namespace`: the
encoder's fingerprint + dtype, device type, library versions and the source of the code that computes it):
    vision, image_tokens   the backbone's namespace, keyed by episode content hash + frame index (also
                           history and future frames: any feature computed by the backbone's own encoders)
    text                   the backbone's namespace, keyed by the string (each distinct string once)
    any other feature      only when its encoder's fingerprint is known: `source_fingerprints`, or the
                           `record["fingerprint_hash"]` of an `ExtraFeature` (Case 2's `clip_image` is
                           cached under the namespace of the CLIP encoder)
A frame is recognised by its `FrameRef` (datasets built with `lazy_images=True` hand those over instead of
decoded images, so a cached frame is never even read from disk). Plain images (inference, a user's PIL
list) have no identity and are computed as `FeatureProvider` would, with instruction features still cached.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mobile_vla.data.cache import (
    IMAGE_KINDS,
    CachedBackbone,
    FeatureCache,
    FrameRef,
    feature_namespace,
    text_key,
)
from mobile_vla.features.providers import FEATURE_SOURCES, FeatureProvider, FeatureSource, to_pil

# The backbone's own encoders, by the cache kind their features are stored under.
_BACKBONE_KINDS = {FEATURE_SOURCES[kind].encode: kind for kind in ("vision", "image_tokens", "text")}


class CachedFeatureProvider(FeatureProvider):
    """`FeatureProvider` + `FeatureCache`: same features, each computed at most once per cache.

    Args:
        backbone: the frozen backbone.
        cache: the feature cache (default: a `FeatureCache` at `$MOBILE_VLA_CACHE/features` or
            `~/.cache/mobile_vla/features`).
        extra_sources: as for `FeatureProvider`.
        source_fingerprints: `{feature name: fingerprint hash of its encoder}` for features that do not come
            from `backbone` (a feature with no fingerprint here is never cached: nothing would tell a changed
            encoder's entries from the old ones).
        keep_tokens: keep both the pooled features and the image tokens of every backbone pass, so a frame
            costs one pass whichever cases ask for it (see `CachedBackbone`).
        **kwargs: passed to `FeatureProvider`.

    `cache.stats` counts hits, misses and encoder calls; `timings` as in `FeatureProvider`.
    """

    lazy_images = True  # datasets may hand over FrameRefs instead of decoded frames

    def __init__(
        self,
        backbone: Any,
        cache: FeatureCache | None = None,
        *,
        extra_sources: Mapping[str, FeatureSource] | None = None,
        source_fingerprints: Mapping[str, str] | None = None,
        keep_tokens: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, extra_sources=extra_sources, **kwargs)
        self.cached = CachedBackbone(backbone, cache, keep_tokens=keep_tokens)
        self.cache = self.cached.cache
        self.source_fingerprints = dict(source_fingerprints or {})
        self._encoders: dict[str, Any] = {}  # feature name -> the object that computes it (for its namespace)
        self._namespaces: dict[str, str] = {}

    # -- which features go through the cache ---------------------------------------------------------------
    def _backbone_kind(self, source: FeatureSource) -> str | None:
        """`vision`, `image_tokens` or `text` when `source` is one of the backbone's own encoders, whatever
        batch entry it reads (Case 4's history and future frames share the current frame's entries)."""
        return _BACKBONE_KINDS.get(source.encode)

    def _namespace(self, name: str, source: FeatureSource) -> str | None:
        """The cache namespace of feature `name`, or None when it must not be cached."""
        if self._backbone_kind(source) is not None:
            return self.cached.namespace
        fingerprint = self.source_fingerprints.get(name)
        if fingerprint is None:
            return None
        if name not in self._namespaces:
            encoder = self._encoders.get(name)
            if encoder is None:  # only a hash is known: the source's own code stands for the encoder
                encoder = _Fingerprinted(fingerprint, self.device)
                code: tuple[Any, ...] = (source.encode,)
            else:
                code = ()
            self._namespaces[name] = feature_namespace(encoder, code=code)[0]
        return self._namespaces[name]

    def add_extra_features(self, extra: Mapping[str, Any]) -> None:
        """As `FeatureProvider`, and cache each extra feature whose encoder records a fingerprint hash."""
        super().add_extra_features(extra)  # type: ignore[misc]  (FeatureProvider of the cases branch)
        for name, feature in extra.items():
            fingerprint = (getattr(feature, "record", None) or {}).get("fingerprint_hash")
            if fingerprint:
                self.source_fingerprints[name] = str(fingerprint)
                # Case 2's encode is the CLIP encoder's bound `encode_images`: its object has the fingerprint.
                encoder = getattr(feature.encode, "__self__", None)
                if encoder is not None and hasattr(encoder, "fingerprint_hash"):
                    self._encoders[name] = encoder
                self._namespaces.pop(name, None)

    # -- FeatureProvider overrides ----------------------------------------------------------------------------
    def __call__(self, batch: Mapping[str, Any], names: Sequence[str]) -> dict[str, torch.Tensor]:
        # When a batch needs both pooled features and tokens (Case 2, Case 4: current frame, history, future
        # frames), fetch both kinds for every frame of the batch together first: a missing frame then costs
        # one backbone pass for both, and a frame in several windows of the batch is computed once.
        kinds: set[str] = set()
        refs: list[FrameRef] = []
        for name in names:
            source = self.source(name)
            kind = self._backbone_kind(source)
            found = _frame_refs(batch.get(source.batch_key))[0] if kind in IMAGE_KINDS else None
            if found:
                kinds.add(kind)
                refs += found
        if len(kinds) > 1:
            start = time.perf_counter()
            self.cached.image_features(refs, sorted(kinds))
            self._tick("vision+image_tokens", start)
        return super().__call__(batch, names)

    def compute_pair(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        refs, shape = _frame_refs(batch.get("image"))
        if refs is None:
            return super().compute_pair(_resolved(batch, "image"))
        start = time.perf_counter()
        out = self.cached.image_features(refs, IMAGE_KINDS)
        vision = out["vision"].reshape(*shape, *out["vision"].shape[1:])  # (B, Dv) or (B, W, Dv)
        tokens = out["image_tokens"].reshape(*shape, *out["image_tokens"].shape[1:])  # (B, [W,] N, Dtok)
        self._tick("vision+image_tokens", start)
        return vision, tokens

    def _compute(self, source: FeatureSource, name: str, batch: Mapping[str, Any]) -> torch.Tensor:
        namespace = self._namespace(name, source)
        if namespace is None or source.batch_key not in batch or source.kind not in ("image", "text"):
            return super()._compute(source, name, _resolved(batch, source.batch_key))
        start = time.perf_counter()
        kind = self._backbone_kind(source)
        if source.kind == "text":
            out = self._cached_texts(namespace, name, source, list(batch[source.batch_key]))
        else:
            refs, shape = _frame_refs(batch[source.batch_key])
            if refs is None:  # decoded images of unknown origin: compute, as the plain provider would
                return super()._compute(source, name, _resolved(batch, source.batch_key))
            if kind is not None:
                flat = self.cached.image_features(refs, (kind,))[kind]
            else:
                flat = self._cached_images(namespace, name, source, refs)
            out = flat.reshape(*shape, *flat.shape[1:])  # (B, ...) or (B, W, ...)
        self._tick(name, start)
        return out

    # -- helpers --------------------------------------------------------------------------------------------
    def _cached_texts(
        self, namespace: str, name: str, source: FeatureSource, texts: list[str]
    ) -> torch.Tensor:
        if self._backbone_kind(source) == "text":
            return self.cached.text_features(texts)
        by_key = {text_key(t): t for t in texts}

        def compute(missing: list[str], kinds: tuple[str, ...]) -> dict[str, torch.Tensor]:
            # Encoded one string at a time, like FeatureProvider: a feature never depends on the batch.
            return {name: torch.stack([source.encode(self, [by_key[k]])[0] for k in missing])}

        keys = [text_key(t) for t in texts]
        return self.cache.get_or_compute(namespace, (name,), keys, compute, device=self.device)[name]

    def _cached_images(
        self, namespace: str, name: str, source: FeatureSource, refs: list[FrameRef]
    ) -> torch.Tensor:
        by_key = {r.key: r for r in refs}

        def compute(missing: list[str], kinds: tuple[str, ...]) -> dict[str, torch.Tensor]:
            return {name: source.encode(self, [by_key[k].load_image() for k in missing])}

        described = {"profile": name, "backbone_fingerprint_hash": self.source_fingerprints.get(name)}
        self.cache.describe_backbone(namespace, described)
        keys = [r.key for r in refs]
        return self.cache.get_or_compute(namespace, (name,), keys, compute, device=self.device)[name]

    def _tick(self, name: str, start: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


class _Fingerprinted:
    """An encoder known only by its fingerprint hash (``source_fingerprints``), for `feature_namespace`."""

    def __init__(self, fingerprint_hash: str, device: Any) -> None:
        self.fingerprint_hash, self.device = fingerprint_hash, device


def _frame_refs(entries: Any) -> tuple[list[FrameRef] | None, tuple[int, ...]]:
    """The flat FrameRefs of a batch entry (a list, or a list of equal-length windows) and its leading shape.

    `(None, ())` when any entry is not a FrameRef: such images have no identity to key a cache entry by.
    """
    if entries is None:
        return None, ()
    entries = list(entries)
    windowed = bool(entries) and isinstance(entries[0], (list, tuple))
    flat = [x for window in entries for x in window] if windowed else entries
    if not flat or not all(isinstance(x, FrameRef) for x in flat):
        return None, ()
    if windowed:
        lengths = {len(w) for w in entries}
        if len(lengths) != 1:
            raise ValueError(f"windows in one batch must have one length, got {sorted(lengths)}")
        return flat, (len(entries), lengths.pop())
    return flat, (len(entries),)


def _resolved(batch: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """`batch` with any FrameRefs under `key` replaced by their decoded images (for uncached features)."""
    entries = batch.get(key)
    if entries is None:
        return batch

    def load(x: Any) -> Any:
        return to_pil(x.load_image()) if isinstance(x, FrameRef) else x

    entries = list(entries)
    if not any(isinstance(x, (FrameRef, list, tuple)) for x in entries):
        return batch
    resolved = [[load(x) for x in e] if isinstance(e, (list, tuple)) else load(e) for e in entries]
    return {**batch, key: resolved}


def feature_provider_for(
    backbone: Any, *, cache: FeatureCache | None = None, **kwargs: Any
) -> FeatureProvider:
    """The provider the trainer uses: `CachedFeatureProvider` (the backbone is always frozen), unless the
    environment says `MOBILE_VLA_FEATURE_CACHE=0` (then the plain `FeatureProvider`, which runs the backbone in
    every step, as the seed did)."""
    if os.environ.get("MOBILE_VLA_FEATURE_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return FeatureProvider(backbone, **kwargs)
    return CachedFeatureProvider(backbone, cache, **kwargs)


__all__ = ["CachedFeatureProvider", "feature_provider_for"]
