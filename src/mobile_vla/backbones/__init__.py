"""Frozen encoders behind one small interface (see ``base.Backbone``), chosen by profile name.

Profiles: ``kosmos2`` (real Kosmos-2, hub or local directory), ``kosmos2-tiny`` (tiny random Kosmos-2, same
code path, for tests), ``lite`` (EfficientNet-Lite0 + all-MiniLM-L6-v2, pretrained, offline; the default).
Case 2's CLIP image encoder lives in ``clip``. Importing this package does not import transformers.
"""

from mobile_vla.backbones import kosmos2, lite  # noqa: F401  (registers the profiles)
from mobile_vla.backbones.base import (
    Backbone,
    BackboneUnavailableError,
    available_backbones,
    cache_dir,
    create_backbone,
    register_backbone,
)
from mobile_vla.backbones.clip import CLIPImageEncoder, create_clip_encoder, resolve_clip_encoder

DEFAULT_BACKBONE = "lite"

__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "BackboneUnavailableError",
    "CLIPImageEncoder",
    "available_backbones",
    "cache_dir",
    "create_backbone",
    "create_clip_encoder",
    "register_backbone",
    "resolve_clip_encoder",
]
