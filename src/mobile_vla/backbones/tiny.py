"""Tiny random-weight Kosmos-2 and CLIP models, built locally so tests and CI never need a hub.

Each is built from a small config with a fixed seed, written with ``save_pretrained`` into
``cache_dir()/models/<name>`` and then read back with ``from_pretrained`` by the very same code that loads the
real model, so the tiny profile exercises the real code path. Building takes well under a second.

Concurrency: a builder writes into a fresh temporary directory beside the target and renames it into place
(atomic on one filesystem); when two processes race, the loser throws its copy away and uses the winner's.
A ``mobile_vla_tiny.json`` marker, written last, says the directory is complete and holds random weights
(``pretrained=False`` whichever profile later loads it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import string
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mobile_vla.backbones.base import cache_dir, quiet_transformers

TINY_MARKER = "mobile_vla_tiny.json"
# Builders seed torch's *global* RNG (model init takes no generator), so threads of one process take turns.
_BUILD_LOCK = threading.RLock()
TINY_SEED = 0
# CLIP's image normalisation (Kosmos-2 uses the same), so the tiny models preprocess like the real ones.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Sizes of the tiny models. Vision and text widths differ on purpose: a head that mixes them up fails loudly.
TINY_KOSMOS2 = {
    "image_size": 56,
    "patch_size": 14,  # 4x4 = 16 patch tokens, Kosmos-2's patch size
    "vision_hidden": 32,
    "vision_layers": 2,
    "vision_heads": 4,
    "text_hidden": 48,
    "text_layers": 2,
    "text_heads": 4,
    "latent_query_num": 8,
    "max_positions": 256,
}
TINY_CLIP = {
    "image_size": 32,
    "patch_size": 8,
    "vision_hidden": 32,
    "vision_layers": 2,
    "vision_heads": 4,
    "text_hidden": 32,
    "text_layers": 1,
    "text_heads": 4,
    "projection_dim": 24,
}
# Bump when a builder changes, so old cached copies are not reused.
TINY_BUILD_VERSION = 1

# Words of the robot's instructions get whole-word pieces; everything else falls back to characters.
_WORDS = [
    "navigate",
    "around",
    "obstacles",
    "and",
    "reach",
    "the",
    "front",
    "of",
    "beverage",
    "bottle",
    "on",
    "left",
    "right",
    "go",
    "to",
    "move",
    "turn",
    "stop",
    "forward",
    "backward",
    "back",
    "box",
    "boxes",
    "avoid",
    "obstacle",
    "drive",
    "towards",
    "toward",
    "a",
    "an",
    "in",
    "at",
    "is",
    "it",
    "this",
    "that",
    "with",
    "near",
    "far",
    "close",
    "robot",
    "target",
    "goal",
    "side",
    "center",
    "middle",
    "then",
    "please",
]


def tiny_model_dir(name: str, root: str | Path | None = None) -> Path:
    return Path(root) if root is not None else cache_dir() / "models" / f"{name}-v{TINY_BUILD_VERSION}"


def ensure_built(target: Path, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Return ``target``, building it with ``build(tmp_dir)`` first unless a complete copy is there."""
    if (target / TINY_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not (target / TINY_MARKER).is_file():
        # Not ours (builders only ever rename complete directories into place): move it aside.
        with contextlib.suppress(OSError):
            os.replace(target, tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.stale."))
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.build."))
    try:
        with _BUILD_LOCK:
            if (target / TINY_MARKER).is_file():  # another thread finished while we waited
                return target
            info = build(tmp)
        (tmp / TINY_MARKER).write_text(
            json.dumps({"random_weights": True, "seed": TINY_SEED, **info}, indent=1)
        )
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process won the race (target now exists and is not empty): use theirs.
            if not (target / TINY_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for stale in target.parent.glob(f".{target.name}.stale.*"):
            shutil.rmtree(stale, ignore_errors=True)
    return target


def is_tiny_dir(path: str | Path) -> bool:
    return (Path(path) / TINY_MARKER).is_file()


def _unigram_vocab() -> list[tuple[str, float]]:
    """A deterministic Unigram vocabulary: specials, whole words (both cases), single characters."""
    pieces: list[tuple[str, float]] = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    seen = {p for p, _ in pieces}

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    for word in _WORDS:
        add("\u2581" + word, -3.0)
        add("\u2581" + word.capitalize(), -3.5)
    add("\u2581", -6.0)
    for char in string.ascii_letters + string.digits + string.punctuation:
        add("\u2581" + char, -8.0)
        add(char, -8.0)
    return pieces


def build_tiny_kosmos2(out_dir: Path) -> dict[str, Any]:
    """Write a tiny random Kosmos-2 (``Kosmos2Model``), its tokenizer and processor to ``out_dir``."""
    c = TINY_KOSMOS2
    with quiet_transformers():
        from transformers import (
            CLIPImageProcessor,
            Kosmos2Config,
            Kosmos2Model,
            Kosmos2Processor,
            XLMRobertaTokenizer,
        )

        tokenizer = XLMRobertaTokenizer(vocab=_unigram_vocab())
        image_processor = CLIPImageProcessor(
            do_resize=True,
            size={"height": c["image_size"], "width": c["image_size"]},
            do_center_crop=False,
            image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD),
        )
        # The processor adds Kosmos-2's tag and <patch_index_*> tokens, so the vocab size is read afterwards.
        processor = Kosmos2Processor(image_processor, tokenizer)
        config = Kosmos2Config(
            text_config={
                "vocab_size": len(processor.tokenizer),
                "embed_dim": c["text_hidden"],
                "layers": c["text_layers"],
                "ffn_dim": 2 * c["text_hidden"],
                "attention_heads": c["text_heads"],
                "max_position_embeddings": c["max_positions"],
            },
            vision_config={
                "hidden_size": c["vision_hidden"],
                "intermediate_size": 2 * c["vision_hidden"],
                "num_hidden_layers": c["vision_layers"],
                "num_attention_heads": c["vision_heads"],
                "image_size": c["image_size"],
                "patch_size": c["patch_size"],
            },
            latent_query_num=c["latent_query_num"],
        )
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
            torch.manual_seed(TINY_SEED)
            model = Kosmos2Model(config)
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
    return {"kind": "kosmos2-tiny", "sizes": c, "build_version": TINY_BUILD_VERSION}


def build_tiny_clip(out_dir: Path) -> dict[str, Any]:
    """Write a tiny random ``CLIPModel`` and its image processor to ``out_dir``."""
    c = TINY_CLIP
    with quiet_transformers():
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

        config = CLIPConfig(
            text_config={
                "vocab_size": 64,
                "hidden_size": c["text_hidden"],
                "intermediate_size": 2 * c["text_hidden"],
                "num_hidden_layers": c["text_layers"],
                "num_attention_heads": c["text_heads"],
                "max_position_embeddings": 16,
                "bos_token_id": 0,
                "eos_token_id": 1,
                "pad_token_id": 1,
            },
            vision_config={
                "hidden_size": c["vision_hidden"],
                "intermediate_size": 2 * c["vision_hidden"],
                "num_hidden_layers": c["vision_layers"],
                "num_attention_heads": c["vision_heads"],
                "image_size": c["image_size"],
                "patch_size": c["patch_size"],
            },
            projection_dim=c["projection_dim"],
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model = CLIPModel(config)
        model.save_pretrained(out_dir)
        # CLIP's own preprocessing: shortest edge to the input size, then a centre crop.
        CLIPImageProcessor(
            size={"shortest_edge": c["image_size"]},
            crop_size={"height": c["image_size"], "width": c["image_size"]},
            image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD),
        ).save_pretrained(out_dir)
    return {"kind": "clip-tiny", "sizes": c, "build_version": TINY_BUILD_VERSION}


def ensure_tiny_kosmos2(root: str | Path | None = None) -> Path:
    return ensure_built(tiny_model_dir("kosmos2-tiny", root), build_tiny_kosmos2)


def ensure_tiny_clip(root: str | Path | None = None) -> Path:
    return ensure_built(tiny_model_dir("clip-tiny", root), build_tiny_clip)
