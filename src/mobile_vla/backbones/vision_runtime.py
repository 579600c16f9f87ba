"""Run a frozen image module with PyTorch or with onnxruntime: same function, a faster executor on CPU.

Why: the ``lite`` vision tower (EfficientNet-Lite0) costs ~34 ms per 224x224 frame in eager PyTorch on this
project's 2-core reference CPU (its depthwise convolutions and explicit ``ZeroPad2d`` copies are slow there)
and ~6 ms through onnxruntime's CPU provider, which fuses them (``benchmarks/sim_steps.py`` measures it side by
side). Every closed-loop step runs that tower once, so the executor sets the simulator's speed.

Which executor (``runtime``):
- ``torch``: the module itself, always available.
- ``onnxruntime``: the module exported once to ONNX (opset 17, dynamic batch), kept in
  ``cache_dir()/onnx/`` under a name that hashes the module's identity (weights digest), the torch and
  onnx versions and the opset, written atomically; then run by an ``onnxruntime.InferenceSession`` on CPU.
  Only for fp32 on a CPU device. Before its first use the session is checked against the module on a fixed
  input (relative max difference <= ``PARITY_TOLERANCE``); a failed export or check falls back to ``torch``
  with a warning that says why (``fallback_reason``), never silently.
- ``auto`` (default; or ``$MOBILE_VLA_VISION_RUNTIME``): ``onnxruntime`` where it applies, else ``torch``.

The two agree to ~2e-5 on feature maps of magnitude 6 (float32 rounding of a different summation order), so
a backbone's *fingerprint* (what its features mean) does not depend on the executor and a policy trained
with one runs with the other; the feature cache's namespace does record it (``runtime``), so cached values
are never mixed across executors.

Threads: the session uses ``torch.get_num_threads()`` intra-op threads at the time of each call (one session
per thread count), with spinning off so that idle executor threads do not steal the cores from the head.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobile_vla.backbones.base import cache_dir, short_hash

RUNTIMES = ("auto", "torch", "onnxruntime")
RUNTIME_ENV = "MOBILE_VLA_VISION_RUNTIME"
ONNX_OPSET = 17
PARITY_TOLERANCE = 1e-4  # max |onnx - torch| / (1 + max |torch|) on the check input


def requested_runtime(runtime: str | None) -> str:
    """``runtime``, else ``$MOBILE_VLA_VISION_RUNTIME``, else ``auto``; checked against `RUNTIMES`."""
    value = runtime or os.environ.get(RUNTIME_ENV) or "auto"
    if value not in RUNTIMES:
        source = "runtime" if runtime else RUNTIME_ENV
        raise ValueError(f"{source}={value!r} is not one of {RUNTIMES}")
    return value


def onnxruntime_unusable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why onnxruntime cannot run this module here, or None when it can."""
    if device.type != "cpu":
        return f"onnxruntime is used on CPU only (device is {device})"
    if dtype != torch.float32:
        return f"onnxruntime is used for fp32 only (dtype is {dtype})"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed"
    return None


class FrozenImageModule:
    """``pixels (B, 3, S, S) -> output (B, ...)`` of a frozen ``module``, executed by torch or onnxruntime.

    Args:
        module: the frozen module (eval mode, no gradients), taking one pixel tensor.
        name: a file-name-safe name for the exported graph (e.g. ``efficientnet-lite0-features``).
        identity: what identifies the module's function (e.g. its weights' sha256); part of the graph's file name.
        image_size: S, for the export and the parity check.
        device, dtype: where and in which dtype the module runs.
        runtime: ``auto`` | ``torch`` | ``onnxruntime`` (see the module docstring).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        name: str,
        identity: dict[str, Any],
        image_size: int,
        device: torch.device,
        dtype: torch.dtype,
        runtime: str | None = None,
    ) -> None:
        self.module = module
        self.name = name
        self.image_size = image_size
        self.device = device
        self.dtype = dtype
        self.requested = requested_runtime(runtime)
        self.fallback_reason: str | None = None
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._identity = {
            **identity,
            "torch": torch.__version__,
            "opset": ONNX_OPSET,
            "image_size": image_size,
        }
        self.runtime = "torch"
        if self.requested != "torch":
            why = onnxruntime_unusable(device, dtype)
            if why is not None:
                if self.requested == "onnxruntime":
                    raise ValueError(f"{name}: runtime='onnxruntime' requested but {why}")
            else:
                try:
                    self._session(torch.get_num_threads(), check=True)
                    self.runtime = "onnxruntime"
                except Exception as exc:  # noqa: BLE001 - any export/session failure falls back, loudly
                    self.fallback_reason = f"{type(exc).__name__}: {exc}"
                    if self.requested == "onnxruntime":
                        raise RuntimeError(
                            f"{name}: onnxruntime unavailable: {self.fallback_reason}"
                        ) from exc
                    warnings.warn(
                        f"{name}: running with torch instead of onnxruntime ({self.fallback_reason})",
                        RuntimeWarning,
                        stacklevel=2,
                    )

    # ---- execution -------------------------------------------------------------------------------------
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.runtime == "torch":
            with torch.no_grad():
                return self.module(pixels)
        session = self._session(torch.get_num_threads())
        array = np.ascontiguousarray(pixels.detach().to("cpu", torch.float32).numpy())
        (out,) = session.run(None, {"pixels": array})
        return torch.from_numpy(out)

    # ---- the ONNX graph and its sessions -------------------------------------------------------------
    @property
    def graph_path(self) -> Path:
        return cache_dir() / "onnx" / f"{self.name}-{short_hash(self._identity)}.onnx"

    def _export(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        example = torch.zeros(1, 3, self.image_size, self.image_size, dtype=torch.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Forward(self.module).eval(),
                (example,),
                str(tmp),
                input_names=["pixels"],
                output_names=["output"],
                dynamic_axes={"pixels": {0: "batch"}, "output": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one

    def _session(self, threads: int, *, check: bool = False) -> Any:
        threads = max(1, int(threads))
        with self._lock:
            if threads in self._sessions:
                return self._sessions[threads]
            import onnxruntime as ort

            path = self.graph_path
            if not path.is_file():
                self._export(path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.log_severity_level = 3
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            if check:
                self._check(session)
            self._sessions[threads] = session
            return session

    def _check(self, session: Any) -> None:
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randn(2, 3, self.image_size, self.image_size, generator=generator)
        with torch.no_grad():
            expected = self.module(pixels.to(self.device, self.dtype)).float().cpu().numpy()
        (got,) = session.run(None, {"pixels": pixels.numpy()})
        if got.shape != expected.shape:
            raise RuntimeError(f"ONNX graph {self.graph_path} returns {got.shape}, torch {expected.shape}")
        error = float(np.abs(got - expected).max() / (1.0 + np.abs(expected).max()))
        if not error <= PARITY_TOLERANCE:
            raise RuntimeError(
                f"ONNX graph {self.graph_path} differs from torch by {error:.2e} (relative) > {PARITY_TOLERANCE}"
            )


class _Forward(torch.nn.Module):
    """The export wrapper: ``forward(pixels)`` of the wrapped callable module."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.inner = module

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.inner(pixels)
