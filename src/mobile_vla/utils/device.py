"""``resolve_device``: the one place a device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``) is checked.

It returns the resolved name as a string (what configs and run records store); wrap it in ``torch.device``
where a device object is needed.
"""

from __future__ import annotations

from typing import Any

DEVICES = ("auto", "cpu", "cuda")


class DeviceUnavailableError(ValueError, RuntimeError):
    """CUDA was asked for but torch sees none (a ``ValueError`` and, for older callers, a ``RuntimeError``)."""


def resolve_device(device: Any) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda``/``cuda:N`` without CUDA is an error."""
    import torch

    name = str(device)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.split(":")[0] not in DEVICES:
        raise ValueError(f"device={device!r} is not one of {DEVICES} (optionally 'cuda:N')")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device={device!r} was asked for but torch.cuda.is_available() is False; use --device cpu or auto"
        )
    return name
