"""A tiny deterministic stand-in for a frozen backbone, following the ``Backbone`` interface of CONTRACTS.md.

Features are fixed random projections of a 8x8 thumbnail (vision, tokens) and of character counts (text),
so different images and instructions give different features and a head can learn from them in seconds.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from PIL import Image


class FakeBackbone:
    profile = "fake"
    pretrained = False

    def __init__(self, vision_dim: int = 48, text_dim: int = 40, token_dim: int = 24, num_image_tokens: int = 4,
                 seed: int = 0, device: str = "cpu", dtype: str = "fp32") -> None:  # fmt: skip
        self.vision_dim, self.text_dim = vision_dim, text_dim
        self.token_dim, self.num_image_tokens = token_dim, num_image_tokens
        self.seed, self.device, self.dtype = seed, device, dtype
        g = torch.Generator().manual_seed(seed)
        self._w_vision = torch.randn(8 * 8 * 3, vision_dim, generator=g) / 2.0
        self._w_tokens = torch.randn(2 * 2 * 3, token_dim, generator=g)
        self._w_text = torch.randn(64, text_dim, generator=g) / 4.0
        self.calls = {"images": 0, "texts": 0, "tokens": 0}

    @property
    def fingerprint(self) -> dict:
        return {"name": "fake", "seed": self.seed, "config": {"vision_dim": self.vision_dim,
                "text_dim": self.text_dim, "token_dim": self.token_dim}, "preprocessing": "thumb8"}  # fmt: skip

    @property
    def fingerprint_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True).encode()).hexdigest()[:16]

    def spec(self) -> dict:
        return {
            "profile": "fake",
            "vision_dim": self.vision_dim,
            "text_dim": self.text_dim,
            "seed": self.seed,
        }

    @staticmethod
    def _thumb(image: Image.Image, size: int) -> torch.Tensor:
        array = (
            np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
        )
        return torch.from_numpy(array).reshape(-1) - 0.5

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        self.calls["images"] += 1
        x = torch.stack([self._thumb(im, 8) for im in images])  # (B, 192)
        return torch.tanh(x @ self._w_vision)  # (B, Dv)

    @torch.no_grad()
    def encode_image_tokens(self, images: list[Image.Image]) -> torch.Tensor:
        self.calls["tokens"] += 1
        x = torch.stack([self._thumb(im, 2 * self.num_image_tokens) for im in images])
        x = x.reshape(len(images), self.num_image_tokens, -1)[..., :12]  # (B, N, 12)
        return torch.tanh(x @ self._w_tokens)  # (B, N, Dtok)

    @torch.no_grad()
    def encode_images_with_tokens(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls["pair"] = self.calls.get("pair", 0) + 1
        return self.encode_images(images), self.encode_image_tokens(images)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        self.calls["texts"] += 1
        counts = torch.zeros(len(texts), 64)
        for i, text in enumerate(texts):
            for ch in text.lower():
                counts[i, ord(ch) % 64] += 1.0
        counts = counts / counts.sum(dim=1, keepdim=True).clamp(min=1.0)
        return torch.tanh(counts @ self._w_text * 8.0)  # (B, Dt)


def write_tiny_dataset(directory, episodes: int = 8, image_size: tuple[int, int] = (24, 32), seed: int = 0):
    """Robot-format synthetic episodes (18 frames each), small images so tests stay fast."""
    from mobile_vla.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(directory, episodes=episodes, seed=seed, image_size=image_size)
