"""Shared pieces of the benchmarks: machine description, matmul FLOP/s, FLOP counts, timing, JSON output.

Benchmarks are scripts, not tests: each prints its figures and writes one JSON file to `benchmarks/results/`.
Every rate is reported with its n and an interval (the 2.5th-97.5th percentile of the repeated timings, or a
bootstrap interval of the mean where noted).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(SRC))

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def machine() -> dict[str, Any]:
    """What the figures were measured on (they mean little without it)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_1m_at_start": round(load[0], 2) if load else None,
    }


def timed(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `repeats` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict[str, Any]:
    """Median, mean and the 2.5-97.5 percentile range of repeated timings, in milliseconds, with n."""
    ms = np.asarray(times) * 1000.0
    return {
        "n": len(ms),
        "median_ms": round(float(np.median(ms)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "p2.5_ms": round(float(np.percentile(ms, 2.5)), 3),
        "p97.5_ms": round(float(np.percentile(ms, 97.5)), 3),
    }


def matmul_gflops_per_s(dtype: str = "fp32", size: int = 2048, repeats: int = 10) -> dict[str, Any]:
    """The machine's measured dense matmul rate (square `size` matrices): the practical hardware limit."""
    a = torch.randn(size, size, dtype=DTYPES[dtype])
    b = torch.randn(size, size, dtype=DTYPES[dtype])
    times = timed(lambda: torch.mm(a, b), repeats=repeats, warmup=2)
    flops = 2.0 * size**3
    rates = [flops / t / 1e9 for t in times]
    return {
        "gflops_per_s": round(statistics.median(rates), 1),
        "p2.5": round(float(np.percentile(rates, 2.5)), 1),
        "p97.5": round(float(np.percentile(rates, 97.5)), 1),
        "n": repeats,
        "size": size,
        "dtype": dtype,
    }


def count_gflops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of `fn` (matmuls, convolutions, attention) counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def random_kosmos2(dtype: str = "fp32", seed: int = 0) -> Any:
    """The full-size Kosmos-2 architecture (`Kosmos2Config()` defaults = microsoft/kosmos-2-patch14-224:
    24-layer ViT-L/14 vision tower at 224 px, 24-layer 2048-d text decoder) with RANDOM weights, built in
    memory (no hub), behind the toolkit's own `Kosmos2Backbone` encoding code.

    Timing only: random weights cost exactly what trained ones do. The tokenizer is the toolkit's tiny
    offline unigram vocabulary (whole words for the robot's instructions), so an instruction is ~16 tokens;
    the real XLM-R sentencepiece gives a similar count for these sentences.
    """
    from transformers import (
        CLIPImageProcessor,
        Kosmos2Config,
        Kosmos2Model,
        Kosmos2Processor,
        XLMRobertaTokenizer,
    )

    from mobile_vla.backbones.base import Backbone, freeze, quiet_transformers
    from mobile_vla.backbones.kosmos2 import Kosmos2Backbone
    from mobile_vla.backbones.tiny import CLIP_MEAN, CLIP_STD, _unigram_vocab

    class RandomKosmos2(Kosmos2Backbone):
        def __init__(self) -> None:
            Backbone.__init__(self, device="cpu", dtype=dtype)
            self.profile = "kosmos2"
            self.path, self.revision, self.is_local = "random-full-size", None, True
            self.pretrained = False
            with quiet_transformers():
                processor = Kosmos2Processor(
                    CLIPImageProcessor(
                        do_resize=True,
                        size={"height": 224, "width": 224},
                        resample=3,  # bicubic, as the released processor
                        do_center_crop=False,
                        image_mean=list(CLIP_MEAN),
                        image_std=list(CLIP_STD),
                    ),
                    XLMRobertaTokenizer(vocab=_unigram_vocab()),
                )
                config = Kosmos2Config()
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    model = Kosmos2Model(config)
            self.model = freeze(model).to(self.torch_dtype)
            self.processor = processor
            vc, tc = config.vision_config, config.text_config
            self.vision_dim = self.token_dim = int(vc.hidden_size)
            self.text_dim = int(tc.embed_dim)
            self.image_size, self.patch_size = int(vc.image_size), int(vc.patch_size)
            self.num_image_tokens = (self.image_size // self.patch_size) ** 2
            self.max_text_tokens = int(tc.max_position_embeddings)

        def _fingerprint(self) -> dict[str, Any]:
            return {"model": {"name": "kosmos2-full-size-random", "seed": seed}}

        def _spec_kwargs(self) -> dict[str, Any]:
            return {}

    return RandomKosmos2()
