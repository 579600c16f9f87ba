"""Feature-cache storage layout: one file per entry (what `FeatureCache` does) vs one packed file per episode.

Writes and reads `--episodes` x 18 pooled features (1024 float32 each, Kosmos-2's size) both ways:
- per-entry: `FeatureCache.store` / `FeatureCache.load` (atomic write + fsync, checksum on read);
- packed, bulk: one safetensors file per episode with all its frames, written once (what a batch build could
  do);
- packed, lazy: the same file rewritten as each frame arrives (what lazy filling during training would do).

    python benchmarks/cache_layout.py [--episodes 200]

Writes benchmarks/results/cache_layout.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import machine, write_result
from safetensors.torch import load, save

from mobile_vla.data.cache import FeatureCache, atomic_write_bytes, frame_key

FRAMES = 18


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--dim", type=int, default=1024)
    args = parser.parse_args()
    n = args.episodes * FRAMES
    hashes = [f"{e:064x}" for e in range(args.episodes)]
    feature = torch.randn(args.dim)
    root = Path(tempfile.mkdtemp(prefix="cache_layout."))
    results = {}
    try:
        cache = FeatureCache(root / "entries", memory_bytes=0)
        start = time.perf_counter()
        for h in hashes:
            for f in range(FRAMES):
                cache.store("bench", "vision", frame_key(h, f), feature)
        results["per_entry_write_s"] = time.perf_counter() - start
        reader = FeatureCache(root / "entries", memory_bytes=0)
        start = time.perf_counter()
        for h in hashes:
            for f in range(FRAMES):
                assert reader.load("bench", "vision", frame_key(h, f)) is not None
        results["per_entry_read_s"] = time.perf_counter() - start

        packed = root / "packed"
        packed.mkdir()
        start = time.perf_counter()
        for h in hashes:
            atomic_write_bytes(
                packed / f"{h}.safetensors", save({str(f): feature.clone() for f in range(FRAMES)})
            )
        results["packed_bulk_write_s"] = time.perf_counter() - start
        start = time.perf_counter()
        for h in hashes:
            tensors = load((packed / f"{h}.safetensors").read_bytes())
            assert len(tensors) == FRAMES
        results["packed_read_s"] = time.perf_counter() - start

        lazy = root / "lazy"
        lazy.mkdir()
        start = time.perf_counter()
        for h in hashes:
            path = lazy / f"{h}.safetensors"
            for f in range(FRAMES):  # read-modify-write as each frame is computed
                current = load(path.read_bytes()) if path.exists() else {}
                current[str(f)] = feature.clone()
                atomic_write_bytes(path, save(current))
        results["packed_lazy_write_s"] = time.perf_counter() - start
    finally:
        shutil.rmtree(root, ignore_errors=True)

    per_entry_us = {k.removesuffix("_s") + "_us_per_feature": v / n * 1e6 for k, v in results.items()}
    payload = {
        "machine": machine(),
        "n_features": n,
        "feature_bytes": args.dim * 4,
        **{k: round(v, 3) for k, v in results.items()},
        **{k: round(v, 1) for k, v in per_entry_us.items()},
        "note": "single run per figure; page cache warm for reads (entries were just written)",
    }
    for key, value in per_entry_us.items():
        print(f"{key:<40} {value:8.1f}")
    write_result("cache_layout.json", payload)


if __name__ == "__main__":
    main()
