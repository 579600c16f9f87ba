"""Perceiver-style vision resampler: a fixed number of learned latents read a variable set of image tokens.

    resampler = VisionResampler(ResamplerConfig(num_latents=16, num_heads=4), token_dim=1024, num_tokens=257)
    pooled = resampler(tokens)                    # tokens (B, N, Dtok) -> (B, dim)
    pooled, latents = resampler(tokens, return_latents=True)   # latents (B, L, dim)

Each block: the latents cross-attend to the tokens, then self-attend, then pass an FFN; every sub-layer is
pre-LayerNorm with a residual connection (Flamingo's Perceiver resampler, Jaegle et al.'s Perceiver). The
output is the mean of the final (normalised) latents.

Everything here is strictly per sample: attention runs within one sample's tokens and latents, and the only
normalisation is LayerNorm over the feature axis. Nothing mixes the batch axis (no BatchNorm, no statistics
over dim 0), so a sample's output does not depend on what else is in its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ResamplerConfig:
    """Sizes of a ``VisionResampler``.

    Attributes:
        num_latents: L, the number of learned latent queries (Case 2: 16, Case 4: 64).
        dim: width of the latents and of the pooled output.
        depth: number of (cross-attention, self-attention, FFN) blocks.
        num_heads: attention heads; must divide ``dim`` (Case 2: 4, Case 4: 8).
        ffn_mult: the FFN's hidden width is ``ffn_mult * dim``.
        dropout: dropout on attention weights and after the FFN's hidden layer.
        token_pos_embedding: add a learned position embedding to the image tokens. ViT tokens already carry
            positions, but a CNN's 7x7 map (EfficientNet-Lite0) barely does, and left vs right is the task.
            Needs the number of tokens at construction; skipped (with no error) when it is unknown.
    """

    num_latents: int = 16
    dim: int = 256
    depth: int = 1
    num_heads: int = 4
    ffn_mult: int = 4
    dropout: float = 0.0
    token_pos_embedding: bool = True

    def __post_init__(self) -> None:
        for name in ("num_latents", "dim", "depth", "num_heads", "ffn_mult"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ResamplerConfig.{name} must be an int >= 1, got {value!r}")
        if self.dim % self.num_heads:
            raise ValueError(
                f"ResamplerConfig.num_heads={self.num_heads} must divide dim={self.dim} "
                f"(each head gets dim / num_heads features)"
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ResamplerConfig.dropout must be in [0, 1), got {self.dropout!r}")


class Attention(nn.Module):
    """Multi-head attention of ``queries`` over ``context`` (self-attention when they are the same).

    ``key_mask`` (B, M), True = attend, hides padded context entries (e.g. padded history frames). Written
    on ``scaled_dot_product_attention`` instead of ``nn.MultiheadAttention`` so that eval mode takes the same
    code path as training (the latter switches to a fused "fast path" in eval).
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: num_heads={num_heads} must divide dim={dim}")
        context_dim = context_dim or dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, queries: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, n, d = queries.shape
        h = self.num_heads
        q = self.to_q(queries).view(b, n, h, d // h).transpose(1, 2)  # (B, h, n, d/h)
        k, v = self.to_kv(context).chunk(2, dim=-1)  # (B, M, d) each
        k = k.view(b, -1, h, d // h).transpose(1, 2)  # (B, h, M, d/h)
        v = v.view(b, -1, h, d // h).transpose(1, 2)  # (B, h, M, d/h)
        mask = None if key_mask is None else key_mask.bool()[:, None, None, :]  # (B, 1, 1, M)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, h, n, d/h)
        return self.out(attended.transpose(1, 2).reshape(b, n, d))  # (B, n, d)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, mult * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mult * dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResamplerBlock(nn.Module):
    """Latents <- cross-attention to tokens, then self-attention among latents, then an FFN (all pre-LN)."""

    def __init__(self, dim: int, num_heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.norm_latents = nn.LayerNorm(dim)
        self.norm_tokens = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, num_heads, dropout=dropout)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, dropout=dropout)
        self.ffn = FeedForward(dim, ffn_mult, dropout)

    def forward(
        self, latents: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # The latents also see themselves in the cross-attention (Flamingo's trick): a latent can keep its own
        # content instead of being forced to copy some token.
        queries = self.norm_latents(latents)  # (B, L, D)
        context = torch.cat([self.norm_tokens(tokens), queries], dim=1)  # (B, N + L, D)
        mask = None
        if token_mask is not None:  # (B, N), True = a real token; the latents are always visible
            mask = torch.cat([token_mask.bool(), token_mask.new_ones(latents.shape[:2], dtype=torch.bool)], 1)
        latents = latents + self.cross_attn(queries, context, key_mask=mask)  # (B, L, D)
        normed = self.norm_self(latents)
        latents = latents + self.self_attn(normed, normed)  # (B, L, D)
        return latents + self.ffn(latents)  # (B, L, D)


class VisionResampler(nn.Module):
    """(B, N, Dtok) image tokens -> (B, dim): L learned latents read the tokens, then are mean-pooled.

    Args:
        config: sizes (``ResamplerConfig``).
        token_dim: Dtok, the size of one backbone image token (read from the backbone, never typed in).
        num_tokens: N, when known, for the token position embedding; a different N at run time is an error
            then, since the embedding would not line up with the tokens.
    """

    def __init__(self, config: ResamplerConfig, token_dim: int, num_tokens: int | None = None):
        super().__init__()
        if not isinstance(token_dim, int) or token_dim < 1:
            raise ValueError(f"VisionResampler: token_dim must be a positive int, got {token_dim!r}")
        self.config = config
        self.num_tokens = num_tokens
        d = config.dim
        self.token_proj = nn.Linear(token_dim, d)
        self.token_pos = (
            nn.Parameter(torch.zeros(1, num_tokens, d)) if config.token_pos_embedding and num_tokens else None
        )
        # Latents start as small random vectors (std 0.02, as ViT/GPT-2 initialise embeddings) so they differ
        # from one another; identical latents would attend identically and pool to one vector.
        self.latents = nn.Parameter(torch.randn(config.num_latents, d) * 0.02)
        self.blocks = nn.ModuleList(
            ResamplerBlock(d, config.num_heads, config.ffn_mult, config.dropout) for _ in range(config.depth)
        )
        self.norm_out = nn.LayerNorm(d)
        if self.token_pos is not None:
            nn.init.normal_(self.token_pos, std=0.02)

    @property
    def out_dim(self) -> int:
        return self.config.dim

    def forward(
        self, tokens: torch.Tensor, return_latents: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if tokens.dim() != 3:
            raise ValueError(
                f"VisionResampler expects image tokens (B, N, Dtok), got shape {tuple(tokens.shape)}; "
                "a pooled (B, D) vector has no tokens to resample (use the backbone's encode_image_tokens)"
            )
        x = self.token_proj(tokens)  # (B, N, D)
        if self.token_pos is not None:
            if x.shape[1] != self.token_pos.shape[1]:
                raise ValueError(
                    f"VisionResampler was built for {self.token_pos.shape[1]} image tokens, got {x.shape[1]}; "
                    "the backbone's num_image_tokens changed (rebuild the head for this backbone)"
                )
            x = x + self.token_pos
        latents = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, L, D)
        for block in self.blocks:
            latents = block(latents, x)  # (B, L, D)
        latents = self.norm_out(latents)  # (B, L, D)
        pooled = latents.mean(dim=1)  # (B, D)
        return (pooled, latents) if return_latents else pooled


def scaled_l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """L2-normalise each vector over its last axis, then scale by sqrt(dim) so entries are O(1).

    Unit vectors in 512 dimensions have entries around 0.04, which would make the next linear layer start
    ~20x quieter than for the other inputs; the fixed sqrt(dim) keeps the direction (all that is compared)
    and restores unit-variance entries. Per sample: the norm is over one vector's own features.
    """
    return F.normalize(x, dim=-1, eps=eps) * math.sqrt(x.shape[-1])
