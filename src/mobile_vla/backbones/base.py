"""The frozen-encoder interface every backbone profile implements, and the profile registry.

A backbone turns camera frames and instructions into fixed feature vectors; the trainable heads in
``mobile_vla.policies`` only ever see those features (so they can be cached). Profiles are registered by name
in the timm style::

    @register_backbone("lite")
    def _lite(**kwargs) -> Backbone: ...

    backbone = create_backbone("lite", device="auto", dtype="fp32")

A ``Backbone`` is deliberately *not* an ``nn.Module``: a policy that keeps a reference to it must not pick up
its (frozen, possibly multi-GB) weights in ``state_dict()``, and ``policy.train()`` must not flip it out of
eval mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mobile_vla.utils.device import resolve_device as resolve_device_name
from mobile_vla.utils.files import atomic_write_text, sha256_file
from mobile_vla.utils.memo import BoundedMemo

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}

# Bump when the way features are computed from the model changes (pooling, token selection, text mean), so
# that every fingerprint changes and checkpoints trained on the old features are refused. The feature cache
# does not depend on it: its namespace (`mobile_vla.data.cache.feature_namespace`) hashes the feature code itself.
FEATURE_RECIPE_VERSION = 1
TEXT_MEMO_SIZE = 1024  # distinct instructions whose features a backbone keeps (oldest dropped first)


class BackboneUnavailableError(RuntimeError):
    """The weights of a backbone cannot be had here (offline, not cached, bad directory).

    The message always says what was looked for and how to pass a local copy instead.
    """


# --------------------------------------------------------------------------------------------------------------
# Small shared helpers
# --------------------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where mobile-vla keeps built tiny models and file hashes: ``$MOBILE_VLA_CACHE`` or ``~/.cache/mobile_vla``."""
    root = os.environ.get("MOBILE_VLA_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "mobile_vla"


def resolve_device(device: str | torch.device) -> torch.device:
    """``utils.device.resolve_device`` as a ``torch.device`` (what encoders move their modules to)."""
    return torch.device(resolve_device_name(device))


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {tuple(DTYPES)}")
    return DTYPES[dtype]


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def short_hash(obj: Any, length: int = 16) -> str:
    """A short, stable hash of a JSON-able object (sorted keys, fixed separators)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, cached by (real path, size, mtime) in memory and in ``cache_dir()``.

    Weight files are tens of MB to GB; hashing them on every backbone build would dominate start-up. A file in
    a Hugging Face cache is a symlink to ``blobs/<sha256>``, whose name already is the hash of its content.
    """
    path = Path(path)
    target = path.resolve()
    if (
        target.parent.name == "blobs"
        and len(target.name) == 64
        and all(c in "0123456789abcdef" for c in target.name)
    ):
        return target.name
    stat = target.stat()
    key = (str(target), stat.st_size, stat.st_mtime_ns)
    if key in _HASH_MEMO:
        return _HASH_MEMO[key]
    store = cache_dir() / "file_hashes.json"
    entries: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        entries = json.loads(store.read_text())
    entry = entries.get(key[0])
    if entry and entry.get("size") == key[1] and entry.get("mtime_ns") == key[2]:
        _HASH_MEMO[key] = entry["sha256"]
        return entry["sha256"]
    sha = sha256_file(target)
    _HASH_MEMO[key] = sha
    entries[key[0]] = {"size": key[1], "mtime_ns": key[2], "sha256": sha}
    # Best effort: a read-only home only costs a rehash next time.
    with contextlib.suppress(OSError):
        atomic_write_text(store, json.dumps(entries, indent=1, sort_keys=True))
    return sha


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, L, D) over the positions where ``mask`` (B, L) is 1: padding never counts."""
    mask = mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    total = (hidden * mask).sum(dim=1)  # (B, D)
    count = mask.sum(dim=1).clamp(min=1.0)  # (B, 1)
    return total / count


def as_pil_images(images: Sequence[Image.Image | np.ndarray]) -> list[Image.Image]:
    """Accept a list of PIL images or uint8 ``[H, W, 3]`` arrays; return RGB PIL images."""
    if isinstance(images, (Image.Image, np.ndarray)):
        raise TypeError("expected a list of images, got a single image; wrap it in a list: [image]")
    out = []
    for i, image in enumerate(images):
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise TypeError(
                    f"image {i}: expected a uint8 array of shape [H, W, 3], got {image.dtype} {image.shape}"
                )
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"image {i}: expected a PIL.Image or a uint8 numpy array, got {type(image).__name__}"
            )
        out.append(image if image.mode == "RGB" else image.convert("RGB"))
    return out


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode (dropout off, batch-norm running statistics) and no parameter asks for a gradient."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading chatter (progress bars, the torchvision fallback note, load reports).

    We check what was loaded ourselves and report problems with our own messages.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------------------------


class Backbone(ABC):
    """A frozen image + text encoder.

    Subclasses implement ``_encode_images_with_tokens`` and ``_encode_texts`` on already-validated inputs and
    fill the dimension attributes from their model's config; the public methods add the guarantees: inputs are
    checked, the forward runs under ``torch.no_grad()``, outputs are float32 on ``device`` whatever ``dtype``
    the model computes in. (``no_grad`` rather than ``inference_mode``: a trainable head must be able to save
    these features for its own backward pass.)

    Attributes:
        profile: registry name this backbone was created under (``kosmos2``, ``kosmos2-tiny``, ``lite``).
        vision_dim: size of the pooled image feature, ``encode_images`` -> (B, vision_dim).
        text_dim: size of the instruction feature, ``encode_texts`` -> (B, text_dim).
        token_dim: size of each image token, ``encode_image_tokens`` -> (B, num_image_tokens, token_dim).
        num_image_tokens: number of image tokens per frame (fixed by the model's input size).
        pretrained: False for random-weight models (tests, CI); everything trained on them is labelled so.
        device: where the model runs and where outputs are returned.
        dtype: ``fp32`` or ``bf16``, the compute dtype (part of the fingerprint: bf16 features differ).
    """

    profile: str = ""
    vision_dim: int
    text_dim: int
    token_dim: int
    num_image_tokens: int
    pretrained: bool

    def __init__(self, *, device: str | torch.device = "auto", dtype: str = "fp32") -> None:
        self.requested_device = str(device)
        self.device = resolve_device(device)
        self.torch_dtype = resolve_dtype(dtype)
        self.dtype = dtype
        self._text_memo: BoundedMemo[str, torch.Tensor] = BoundedMemo(TEXT_MEMO_SIZE)

    # ---- what subclasses provide ---------------------------------------------------------------------------
    @abstractmethod
    def _encode_images_with_tokens(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass: pooled (B, vision_dim) and tokens (B, num_image_tokens, token_dim)."""

    @abstractmethod
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """(B, text_dim): mean of the last hidden states over real (non-padding) tokens."""

    @abstractmethod
    def _fingerprint(self) -> dict[str, Any]:
        """model / config / preprocessing parts of the fingerprint (profile, dtype and recipe are added)."""

    @abstractmethod
    def _spec_kwargs(self) -> dict[str, Any]:
        """Profile-specific keyword arguments that ``create_backbone`` needs to rebuild this backbone."""

    @abstractmethod
    def modules(self) -> list[torch.nn.Module]:
        """The frozen modules (for parameter counts and freeze checks)."""

    # ---- public API ----------------------------------------------------------------------------------------
    def encode_images_with_tokens(
        self, images: Sequence[Image.Image | np.ndarray]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features (B, vision_dim) and image tokens (B, N, token_dim) from a single forward pass."""
        pil = as_pil_images(images)
        if not pil:
            return (
                torch.zeros(0, self.vision_dim, device=self.device),
                torch.zeros(0, self.num_image_tokens, self.token_dim, device=self.device),
            )
        with torch.no_grad():
            pooled, tokens = self._encode_images_with_tokens(pil)
        expected = (len(pil), self.num_image_tokens, self.token_dim)
        if pooled.shape != (len(pil), self.vision_dim) or tuple(tokens.shape) != expected:
            raise RuntimeError(
                f"{self.profile}: model returned pooled {tuple(pooled.shape)} and tokens {tuple(tokens.shape)}, "
                f"expected {(len(pil), self.vision_dim)} and {expected}; its config and weights disagree"
            )
        # contiguous: callers save these with safetensors, which refuses strided views
        return pooled.float().contiguous(), tokens.float().contiguous()

    def encode_images(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """(B, vision_dim) pooled image features, float32 on ``device``."""
        return self.encode_images_with_tokens(images)[0]

    def encode_image_tokens(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """(B, num_image_tokens, token_dim) image tokens, float32 on ``device``."""
        return self.encode_images_with_tokens(images)[1]

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, text_dim) instruction features (masked mean over real tokens), float32 on ``device``."""
        if isinstance(texts, str):
            raise TypeError("expected a list of strings, got a single string; wrap it in a list: [text]")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i}: expected str, got {type(text).__name__}")
        if not texts:
            return torch.zeros(0, self.text_dim, device=self.device)

        # A dataset has a handful of distinct instructions repeated over thousands of frames: each distinct
        # text is encoded once, alone (so its feature never depends on what else is in the batch), and kept.
        def encode_one(text: str) -> torch.Tensor:
            out = self._encode_texts([text])
            if out.shape != (1, self.text_dim):
                raise RuntimeError(
                    f"{self.profile}: text feature {tuple(out.shape)}, expected {(1, self.text_dim)}"
                )
            return out[0].float()

        with torch.no_grad():
            rows = self._text_memo.get_many(texts, encode_one)
        return torch.stack(rows)  # (B, Dt), a fresh tensor

    @cached_property
    def fingerprint(self) -> dict[str, Any]:
        """JSON-able identity of the features: same fingerprint <=> same features for the same inputs."""
        return {
            "profile": self.profile,
            "recipe_version": FEATURE_RECIPE_VERSION,
            "dtype": self.dtype,
            "pretrained": self.pretrained,
            "dims": {
                "vision": self.vision_dim,
                "text": self.text_dim,
                "token": self.token_dim,
                "num_image_tokens": self.num_image_tokens,
            },
            **self._fingerprint(),
        }

    @property
    def fingerprint_hash(self) -> str:
        """16 hex characters of the sha256 of the canonical fingerprint JSON."""
        return short_hash(self.fingerprint)

    def spec(self) -> dict[str, Any]:
        """What ``create_backbone(**spec)`` needs to rebuild this backbone."""
        return {
            "profile": self.profile,
            "device": self.requested_device,
            "dtype": self.dtype,
            **self._spec_kwargs(),
        }

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for m in self.modules() for p in m.parameters())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(profile={self.profile!r}, vision_dim={self.vision_dim}, text_dim={self.text_dim}, "
            f"tokens={self.num_image_tokens}x{self.token_dim}, pretrained={self.pretrained}, device={self.device}, "
            f"dtype={self.dtype}, fingerprint={self.fingerprint_hash})"
        )


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Register a constructor ``fn(*, device, dtype, **kwargs) -> Backbone`` under ``name``."""

    def decorator(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"backbone profile {name!r} is already registered by {_REGISTRY[name]!r}")
        _REGISTRY[name] = fn
        return fn

    return decorator


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(profile: str, *, device: str = "auto", dtype: str = "fp32", **kwargs: Any) -> Backbone:
    """Build the backbone registered as ``profile``; ``kwargs`` are profile-specific (e.g. ``path``)."""
    if profile not in _REGISTRY:
        raise ValueError(
            f"unknown backbone profile {profile!r}; available: {', '.join(available_backbones())}"
        )
    resolve_dtype(dtype)  # fail on a bad dtype before loading anything
    backbone = _REGISTRY[profile](device=device, dtype=dtype, **kwargs)
    backbone.profile = profile
    return backbone
