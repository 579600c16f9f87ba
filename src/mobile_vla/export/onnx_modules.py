"""The torch modules that become ONNX graphs: one frozen vision graph, one text graph, one head graph.

Each backbone profile that can be exported registers an ``OnnxBackboneAdapter``: which modules compute its
features from tensors (the graphs), and what the runtime must do before them (the preprocessing, recorded in
the sidecar so a runtime without torch can reproduce it). Only the steps that need a model go into a graph;
resizing a camera frame and tokenising an instruction stay outside, done exactly as the torch backbone does
them (PIL bicubic resize; the same tokenizer files).

    vision graph  pixels uint8 (B, 224, 224, 3)                          -> vision (B, Dv), image_tokens (B, N, Dtok)
    text graph    input_ids, attention_mask[, token_type_ids] int64 (B, L) -> text (B, Dt)  (masked mean)
    head graph    one input per required feature                          -> action (B, A)[, action_chunk (B, K, A)]

Case 2's frozen "CLIP" embedding, offline the reference embedding ``efficientnet-lite0``, is the pooled map of
the same EfficientNet-Lite0 tower as the ``lite`` backbone's (same weights file, same preprocessing), so it is
the vision graph's ``vision`` output: the runtime computes the tower once per frame, as the torch backbones
share it. Case 4's history window is assembled by the runtime from per-frame features (the vision graph's
outputs for each frame as it arrives), front-padded with a mask exactly as ``data.windows.pad_history``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


class LiteVision(nn.Module):
    """EfficientNet-Lite0 from resized uint8 RGB frames: the normalisation is inside the graph."""

    def __init__(self, backbone: Any) -> None:
        super().__init__()
        self.net = backbone.vision
        from mobile_vla.backbones.lite import LITE_MEAN, LITE_STD

        # (x/255 - mean)/std == (x - 255 mean)/(255 std): one subtraction and one division on the raw bytes.
        self.register_buffer("mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(LITE_STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = pixels.permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        x = (x - self.mean) / self.std
        fmap = self.net.extract_features(x)  # (B, C, 7, 7)
        pooled = fmap.mean(dim=(2, 3))  # (B, C)
        tokens = fmap.flatten(2).transpose(1, 2)  # (B, 49, C), row-major as LiteBackbone
        return pooled, tokens


class MaskedMeanText(nn.Module):
    """A transformers text encoder + the masked mean over real tokens (``backbones.base.masked_mean``)."""

    def __init__(self, text_model: nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.text_model = text_model
        self.input_names = tuple(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        kwargs = dict(zip(self.input_names, inputs, strict=True))
        hidden = self.text_model(**kwargs).last_hidden_state.float()  # (B, L, Dt)
        mask = kwargs["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B, Dt)


class Kosmos2Vision(nn.Module):
    """Kosmos-2's vision tower (``Kosmos2Model.vision_model``) on processor output: pooled CLS and the
    post-LayerNorm patch tokens, as ``Kosmos2Backbone`` computes them."""

    def __init__(self, vision_model: nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.vision_model(pixel_values=pixel_values)
        tokens = self.vision_model.model.post_layernorm(out.last_hidden_state[:, 1:, :])  # (B, N, D)
        return out.pooler_output, tokens


class HeadGraph(nn.Module):
    """A trained head with positional inputs (one per feature, in ``feature_names`` order) -> its outputs.

    ``output_names`` are keys of the head's output dict, in order (default just ``action``; Case 4 adds
    ``action_chunk``, key-class heads ``action_logits``). The head's forward hooks run inside the graph, so a
    key-class head's ``action`` is already the arg-max class's velocity."""

    def __init__(
        self, policy: nn.Module, feature_names: Sequence[str], output_names: Sequence[str] = ("action",)
    ) -> None:
        super().__init__()
        self.policy = policy
        self.feature_names = tuple(feature_names)
        self.output_names = tuple(output_names)

    def forward(self, *features: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = self.policy(dict(zip(self.feature_names, features, strict=True)))
        if len(self.output_names) == 1:
            return outputs[self.output_names[0]]  # (B, A)
        return tuple(outputs[name] for name in self.output_names)


@dataclass
class OnnxBackboneAdapter:
    """How one backbone profile is exported.

    Attributes:
        vision: ``vision(backbone) -> nn.Module`` mapping the preprocessed image tensor to (vision, tokens).
        vision_input: the vision graph's input: ``name``, ``dtype`` (numpy name), ``shape`` (``"batch"`` first).
        image_preprocessing: ``image_preprocessing(backbone) -> dict`` for the sidecar; ``kind`` names the
            recipe ``serving.onnx_runtime`` applies (``resize_uint8_nhwc`` or ``hf_image_processor``).
        text: ``text(backbone) -> (nn.Module, input_names)``.
        save_text_assets: ``save_text_assets(backbone, directory) -> dict`` writes what the runtime tokenises
            with (tokenizer/processor files) and returns the sidecar's text preprocessing.
        example_pixels: ``example_pixels(backbone, batch) -> Tensor``, a dummy vision input for tracing.
    """

    vision: Callable[[Any], nn.Module]
    vision_input: Callable[[Any], dict[str, Any]]
    image_preprocessing: Callable[[Any], dict[str, Any]]
    text: Callable[[Any], tuple[nn.Module, tuple[str, ...]]]
    save_text_assets: Callable[[Any, Path], dict[str, Any]]
    example_pixels: Callable[[Any, int], torch.Tensor]
    notes: list[str] = field(default_factory=list)


# ---- lite -------------------------------------------------------------------------------------------------


def _lite_image_preprocessing(backbone: Any) -> dict[str, Any]:
    from mobile_vla.backbones.lite import LITE_MEAN, LITE_STD

    return {
        "kind": "resize_uint8_nhwc",
        "size": [backbone.image_size, backbone.image_size],  # (width, height)
        "resample": "bicubic",
        "library": "PIL.Image.resize",
        "color": "RGB",
        "crop": None,
        "normalisation": "in the vision graph: (pixel/255 - mean) / std",
        "mean": list(LITE_MEAN),
        "std": list(LITE_STD),
    }


def _lite_text(backbone: Any) -> tuple[nn.Module, tuple[str, ...]]:
    names = ("input_ids", "attention_mask", "token_type_ids")
    return MaskedMeanText(backbone.text, names), names


def _save_tokenizer(backbone: Any, directory: Path) -> dict[str, Any]:
    backbone.tokenizer.save_pretrained(directory)
    return {
        "kind": "tokenizer",
        "max_length": int(backbone.max_text_tokens),
        "truncation": True,
        "padding": "none: each instruction is encoded alone, as the torch backbone does",
    }


def _lite_example(backbone: Any, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, backbone.image_size, backbone.image_size, 3), generator=g).to(
        torch.uint8
    )


LITE = OnnxBackboneAdapter(
    vision=LiteVision,
    vision_input=lambda bb: {
        "name": "pixels",
        "dtype": "uint8",
        "shape": ["batch", bb.image_size, bb.image_size, 3],
    },
    image_preprocessing=_lite_image_preprocessing,
    text=_lite_text,
    save_text_assets=_save_tokenizer,
    example_pixels=_lite_example,
)


ADAPTERS: dict[str, OnnxBackboneAdapter] = {"lite": LITE}


def adapter_for(profile: str) -> OnnxBackboneAdapter:
    if profile not in ADAPTERS:
        raise ValueError(
            f"exporting a run on backbone {profile!r} to ONNX is not supported yet (supported: "
            f"{', '.join(sorted(ADAPTERS))}); serve it with the torch runtime instead"
        )
    return ADAPTERS[profile]
