"""A stand-in for torchvision in the throwaway LeRobot environment of tests/test_lerobot_real.py.

Why: LeRobot imports torchvision at module level, and PyPI has no CPU build of torchvision for this torch
(2.13.0+cpu): its Linux wheel links libtorch_cuda.so and fails to import. What LeRobot's dataset code *uses*
from it is ``transforms.ToTensor`` (PIL uint8 HWC -> float32 CHW in [0, 1]), reproduced here with
torchvision's definition, plus class names imported at module level (``v2.Transform``, ``v2.functional``),
which the dataset path never calls. Everything else (lerobot, datasets, pyarrow) is the real package.

``install(site_packages)`` writes the package ``torchvision`` there.
"""

from __future__ import annotations

from pathlib import Path

FILES = {
    "torchvision/__init__.py": '''"""Stand-in (tests/lerobot_env/torchvision_standin.py): ToTensor and the names LeRobot imports."""
from . import transforms  # noqa: F401
__version__ = "0.0.0+standin"
''',
    "torchvision/transforms/__init__.py": '''import numpy as np
import torch

from . import v2  # noqa: F401


class ToTensor:
    """PIL image (H, W, C) uint8 -> torch float32 (C, H, W) in [0, 1], as torchvision.transforms.ToTensor."""

    def __call__(self, pic):
        array = np.array(pic, dtype=np.uint8, copy=True)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
''',
    "torchvision/transforms/v2/__init__.py": '''import torch

from . import functional  # noqa: F401


class Transform(torch.nn.Module):
    """Only the base class LeRobot subclasses at import time; no transform is implemented."""
''',
    "torchvision/transforms/v2/functional.py": '"""Empty: LeRobot imports the module; the dataset path never calls it."""\n',
    "torchvision/io/__init__.py": '"""Empty: video decoding is not part of the image-feature dataset path."""\n',
}


def install(site_packages: Path) -> Path:
    for relative, text in FILES.items():
        path = Path(site_packages) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Path(site_packages) / "torchvision"
