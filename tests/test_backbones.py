"""Frozen backbones: dims come from the model, features are per-sample, `lite` is really pretrained,
Kosmos-2 fails fast offline, the tiny models are deterministic, and nothing here ever trains."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from mobile_vla.backbones import (
    Backbone,
    BackboneUnavailableError,
    available_backbones,
    create_backbone,
    create_clip_encoder,
    hub,
    resolve_clip_encoder,
)
from mobile_vla.backbones import base as backbone_base
from mobile_vla.backbones.tiny import TINY_MARKER, ensure_built, ensure_tiny_kosmos2, is_tiny_dir

INSTRUCTION_LEFT = "Navigate around obstacles and reach the front of the beverage bottle on the left"


# ---- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return ensure_tiny_kosmos2(tmp_path_factory.mktemp("models") / "kosmos2-tiny")


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> Backbone:
    return create_backbone("kosmos2-tiny", device="cpu", path=str(tiny_dir))


@pytest.fixture(scope="module")
def lite() -> Backbone:
    return create_backbone("lite", device="cpu")


@pytest.fixture(params=["kosmos2-tiny", "lite"])
def backbone(request, tiny, lite) -> Backbone:
    return {"kosmos2-tiny": tiny, "lite": lite}[request.param]


def scene(seed: int, size=(160, 120)) -> Image.Image:
    """A synthetic frame: a coloured floor, a wall and a 'bottle' whose place depends on the seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = rng.integers(60, 200, 3)
    img[h // 2 :] = rng.integers(20, 120, 3)
    x = int(rng.integers(10, w - 30))
    img[h // 3 : h // 3 + 40, x : x + 14] = rng.integers(0, 255, 3)
    return Image.fromarray(img)


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    """Two real photographs shipped with scikit-learn (a dahlia, a Chinese temple)."""
    datasets = pytest.importorskip("sklearn.datasets")
    return {name: Image.fromarray(datasets.load_sample_image(f"{name}.jpg")) for name in ("flower", "china")}


# ---- registry ------------------------------------------------------------------------------------------------


def test_registry_lists_the_three_profiles():
    assert {"kosmos2", "kosmos2-tiny", "lite"} <= set(available_backbones())


def test_unknown_profile_and_bad_dtype_name_the_bad_value():
    with pytest.raises(ValueError, match="'kosmos3'.*available: .*lite"):
        create_backbone("kosmos3")
    with pytest.raises(ValueError, match="'fp16'"):
        create_backbone("lite", dtype="fp16")


# ---- dims and per-sample features ----------------------------------------------------------------------------


def test_dims_are_read_from_the_model(tiny, lite):
    vc, tc = tiny.model.config.vision_config, tiny.model.config.text_config
    assert (tiny.vision_dim, tiny.token_dim, tiny.text_dim) == (vc.hidden_size, vc.hidden_size, tc.embed_dim)
    assert tiny.num_image_tokens == (vc.image_size // vc.patch_size) ** 2
    assert tiny.vision_dim != tiny.text_dim  # the tiny model keeps them apart, so a mix-up fails loudly
    assert lite.vision_dim == lite.vision._fc.in_features  # what the ImageNet classifier reads
    assert lite.text_dim == lite.text.config.hidden_size
    assert lite.num_image_tokens == 49


def test_dims_follow_the_backbone(backbone):
    images = [scene(0), scene(1), scene(2)]
    pooled, tokens = backbone.encode_images_with_tokens(images)
    assert pooled.shape == (3, backbone.vision_dim)
    assert tokens.shape == (3, backbone.num_image_tokens, backbone.token_dim)
    assert backbone.encode_images(images).shape == (3, backbone.vision_dim)
    assert backbone.encode_image_tokens(images).shape == (3, backbone.num_image_tokens, backbone.token_dim)
    texts = backbone.encode_texts(["go left", INSTRUCTION_LEFT])
    assert texts.shape == (2, backbone.text_dim)
    for out in (pooled, tokens, texts):
        assert out.dtype == torch.float32 and out.device == backbone.device and torch.isfinite(out).all()
        assert out.is_contiguous()  # safetensors refuses strided views
    fp = backbone.fingerprint["dims"]
    assert fp == {
        "vision": pooled.shape[1],
        "text": texts.shape[1],
        "token": tokens.shape[2],
        "num_image_tokens": tokens.shape[1],
    }


def test_one_pass_gives_the_same_pooled_and_tokens_as_separate_calls(backbone):
    images = [scene(3), scene(4)]
    pooled, tokens = backbone.encode_images_with_tokens(images)
    torch.testing.assert_close(pooled, backbone.encode_images(images))
    torch.testing.assert_close(tokens, backbone.encode_image_tokens(images))


def test_masked_mean_ignores_padding(backbone):
    short = "go left"
    long = INSTRUCTION_LEFT + " and then stop in front of it, slowly, without touching the two boxes"
    with torch.no_grad():
        alone = backbone._encode_texts([short])
        padded = backbone._encode_texts([long, short, "turn"])  # `short` is padded to the length of `long`
    torch.testing.assert_close(padded[1:2], alone, atol=1e-5, rtol=1e-4)


def test_text_features_are_per_text_and_remembered(tiny):
    texts = ["go right", INSTRUCTION_LEFT, "go right"]
    batch = tiny.encode_texts(texts)
    assert torch.equal(batch[0], batch[2])
    assert torch.equal(tiny.encode_texts([INSTRUCTION_LEFT])[0], batch[1])  # exactly, whatever the batch
    batch.zero_()  # a caller that writes into its features must not corrupt the remembered ones
    assert tiny.encode_texts(["go right"]).abs().sum() > 0


def test_masked_mean_helper_counts_only_real_tokens():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2), last position is padding
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(backbone_base.masked_mean(hidden, mask), torch.tensor([[2.0, 3.0]]))


def test_image_features_do_not_depend_on_the_batch(backbone):
    target = scene(7)
    alone_pooled, alone_tokens = backbone.encode_images_with_tokens([target])
    pooled, tokens = backbone.encode_images_with_tokens([scene(8), target, scene(9), scene(10)])
    torch.testing.assert_close(pooled[1:2], alone_pooled, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tokens[1:2], alone_tokens, atol=1e-5, rtol=1e-4)


def test_numpy_frames_give_the_same_features_as_pil(tiny):
    frame = np.asarray(scene(11))
    torch.testing.assert_close(tiny.encode_images([frame]), tiny.encode_images([Image.fromarray(frame)]))


def test_bad_inputs_say_what_to_do(tiny):
    with pytest.raises(TypeError, match="wrap it in a list"):
        tiny.encode_images(scene(0))
    with pytest.raises(TypeError, match="wrap it in a list"):
        tiny.encode_texts("go left")
    with pytest.raises(TypeError, match=r"image 1: expected a uint8 array"):
        tiny.encode_images([scene(0), np.zeros((8, 8, 3), np.float32)])
    assert tiny.encode_images([]).shape == (0, tiny.vision_dim)
    assert tiny.encode_texts([]).shape == (0, tiny.text_dim)


# ---- frozen ------------------------------------------------------------------------------------------------


def test_backbone_is_frozen_but_its_features_can_train_a_head(backbone):
    modules = backbone.modules()
    assert modules and all(not m.training for m in modules)
    assert all(not p.requires_grad for m in modules for p in m.parameters())
    assert backbone.num_parameters > 0
    assert not isinstance(backbone, torch.nn.Module)  # never part of a policy's state_dict

    pooled = backbone.encode_images([scene(0), scene(1)])
    text = backbone.encode_texts(["go left", "go right"])
    assert not pooled.requires_grad and not text.requires_grad
    # The features are ordinary tensors (no_grad, not inference_mode): a head can save them for backward.
    head = torch.nn.Linear(backbone.vision_dim + backbone.text_dim, 2)
    head(torch.cat([pooled, text], dim=-1)).sum().backward()
    assert head.weight.grad is not None
    assert all(p.grad is None for m in modules for p in m.parameters())


# ---- dtype --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["kosmos2-tiny", "lite"])
def test_bf16_runs_returns_float32_and_has_its_own_fingerprint(profile, tiny_dir, tiny, lite, photos):
    fp32 = {"kosmos2-tiny": tiny, "lite": lite}[profile]
    kwargs = {"path": str(tiny_dir)} if profile == "kosmos2-tiny" else {}
    bf16 = create_backbone(profile, device="cpu", dtype="bf16", **kwargs)
    images = list(photos.values())
    pooled, tokens = bf16.encode_images_with_tokens(images)
    text = bf16.encode_texts(["go left", INSTRUCTION_LEFT])
    assert pooled.dtype == tokens.dtype == text.dtype == torch.float32
    assert F.cosine_similarity(pooled, fp32.encode_images(images)).min() > 0.95
    assert F.cosine_similarity(text, fp32.encode_texts(["go left", INSTRUCTION_LEFT])).min() > 0.95
    assert bf16.fingerprint["dtype"] == "bf16" and bf16.fingerprint_hash != fp32.fingerprint_hash


# ---- identity -----------------------------------------------------------------------------------------------


def test_tiny_fingerprint_is_stable_across_builds(tmp_path, tiny):
    first = create_backbone("kosmos2-tiny", device="cpu", path=str(tmp_path / "a"))
    second = create_backbone("kosmos2-tiny", device="cpu", path=str(tmp_path / "b"))
    assert first.fingerprint_hash == second.fingerprint_hash == tiny.fingerprint_hash
    assert json.loads(json.dumps(first.fingerprint)) == first.fingerprint  # JSON-able as is
    assert str(tmp_path) not in json.dumps(first.fingerprint)  # a location is not an identity
    assert first.pretrained is False and first.fingerprint["pretrained"] is False
    torch.testing.assert_close(first.encode_images([scene(5)]), second.encode_images([scene(5)]))


def test_spec_rebuilds_the_same_backbone(tiny, lite):
    for backbone in (tiny, lite):
        rebuilt = create_backbone(**backbone.spec())
        assert rebuilt.fingerprint_hash == backbone.fingerprint_hash
    assert lite.spec() == {"profile": "lite", "device": "cpu", "dtype": "fp32"}


def test_default_tiny_spec_has_no_machine_specific_path(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILE_VLA_CACHE", str(tmp_path))
    backbone = create_backbone("kosmos2-tiny", device="cpu")
    assert backbone.spec() == {"profile": "kosmos2-tiny", "device": "cpu", "dtype": "fp32"}
    assert is_tiny_dir(next((tmp_path / "models").iterdir()))


def test_fingerprint_changes_with_the_weights(tmp_path, tiny_dir, tiny):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in tiny_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    from safetensors.torch import load_file, save_file

    weights = load_file(copy / "model.safetensors")
    name = next(k for k in weights if k.startswith("vision_model"))
    weights[name] = weights[name] + 0.01
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    changed = create_backbone("kosmos2", device="cpu", path=str(copy))
    assert changed.fingerprint["model"]["weights_sha256"] != tiny.fingerprint["model"]["weights_sha256"]


def test_build_race_keeps_the_winner_and_leaves_no_debris(tmp_path):
    target = tmp_path / "model"

    def write(out: Path, text: str) -> dict:
        (out / "weights").write_text(text)
        return {}

    def build(out: Path) -> dict:
        # While we build, another process finishes first and renames its copy into place.
        ensure_built(target, lambda other: write(other, "winner"))
        return write(out, "loser")

    assert ensure_built(target, build) == target
    assert (target / "weights").read_text() == "winner" and (target / TINY_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_file_hash_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILE_VLA_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    first = backbone_base.file_sha256(f)
    assert first == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    stored = json.loads((tmp_path / "cache" / "file_hashes.json").read_text())
    assert stored[str(f.resolve())]["sha256"] == first
    f.write_bytes(b"abcd")
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert backbone_base.file_sha256(f) != first


# ---- Kosmos-2 loading ---------------------------------------------------------------------------------------


def test_kosmos2_offline_fails_at_once_and_says_how_to_pass_a_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(BackboneUnavailableError) as err:
        create_backbone("kosmos2", device="cpu")
    assert time.monotonic() - start < 2.0
    message = str(err.value)
    assert "microsoft/kosmos-2-patch14-224" in message
    assert "--backbone kosmos2 --backbone-path DIR" in message and "path='DIR'" in message
    assert "--backbone lite" in message


def test_kosmos2_unreachable_hub_fails_at_once_without_offline_mode(monkeypatch):
    from huggingface_hub import constants

    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.monotonic()
    with pytest.raises(BackboneUnavailableError, match="unreachable.*--backbone-path DIR"):
        create_backbone("kosmos2", device="cpu", path="some-org/some-kosmos")
    assert time.monotonic() - start < 5.0
    assert not hub.hub_reachable()


def test_kosmos2_missing_directory_is_named(tmp_path):
    with pytest.raises(BackboneUnavailableError, match=r"does not exist.*--backbone-path DIR"):
        create_backbone("kosmos2", device="cpu", path=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneUnavailableError, match=r"empty has no config.json"):
        create_backbone("kosmos2", device="cpu", path=str(tmp_path / "empty"))


def test_kosmos2_profile_reads_a_local_directory_like_the_tiny_profile(tiny_dir, tiny):
    same = create_backbone("kosmos2", device="cpu", path=str(tiny_dir))
    assert same.pretrained is False  # the directory's marker says random weights, whatever profile loads it
    torch.testing.assert_close(same.encode_images([scene(1)]), tiny.encode_images([scene(1)]))
    torch.testing.assert_close(same.encode_texts(["go left"]), tiny.encode_texts(["go left"]))
    assert same.spec()["path"] == str(tiny_dir)


def test_kosmos2_checkpoint_without_encoder_weights_is_refused(tmp_path, tiny_dir):
    from safetensors.torch import load_file, save_file

    for f in tiny_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = load_file(tmp_path / "model.safetensors")
    kept = {k: v for k, v in weights.items() if not k.startswith("vision_model.model.encoder.layers.1.")}
    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"encoder weights are missing.*vision_model.model.encoder.layers.1"):
        create_backbone("kosmos2", device="cpu", path=str(tmp_path))


def test_kosmos2_generation_checkpoint_loads_every_encoder_weight(tmp_path, tiny_dir, tiny):
    """The hub checkpoint is a Kosmos2ForConditionalGeneration; its encoders must load, not be re-initialised."""
    from transformers import AutoProcessor, Kosmos2ForConditionalGeneration

    torch.manual_seed(123)
    generator = Kosmos2ForConditionalGeneration(tiny.model.config).eval()
    generator.save_pretrained(tmp_path)
    AutoProcessor.from_pretrained(tiny_dir).save_pretrained(tmp_path)
    loaded = create_backbone("kosmos2", device="cpu", path=str(tmp_path))
    assert loaded.pretrained is True  # no tiny marker: we cannot know, so we trust the user's directory
    pixels = tiny.processor.image_processor(images=[scene(2)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = generator.vision_model(pixel_values=pixels).pooler_output
    torch.testing.assert_close(loaded.encode_images([scene(2)]), expected)


# ---- lite is really pretrained --------------------------------------------------------------------------------


def test_lite_tells_images_apart_and_ignores_a_mirror(lite, photos):
    flower, temple = photos["flower"], photos["china"]
    feats = lite.encode_images([flower, ImageOps.mirror(flower), temple, ImageOps.mirror(temple)])
    cos = F.cosine_similarity(feats[:, None], feats[None], dim=-1)
    assert cos[0, 1] > 0.9 and cos[2, 3] > 0.9  # a mirrored photo is the same scene
    assert cos[0, 2] < 0.5  # a flower is not a temple (a random-weight EfficientNet gives ~0.97 here)


def test_lite_weights_classify_an_imagenet_photo(lite, photos):
    """The ImageNet head (unused for features) proves the weights are the trained ones: a dahlia is a daisy."""
    pixels = lite.preprocess([photos["flower"]])
    with torch.no_grad():
        top5 = lite.vision(pixels).topk(5).indices[0].tolist()
    assert 985 in top5  # ImageNet class 985: daisy (there is no dahlia class)


def test_minilm_puts_paraphrases_closer_than_unrelated_sentences(lite):
    feats = lite.encode_texts(
        [
            INSTRUCTION_LEFT,
            "Go around the obstacles and get to the front of the drink bottle on the left side",
            "The stock market fell sharply on Tuesday",
        ]
    )
    cos = F.cosine_similarity(feats[:, None], feats[None], dim=-1)
    assert cos[0, 1] > 0.6 and cos[0, 2] < 0.2


def test_lite_fingerprint_names_weights_and_preprocessing(lite):
    fp = lite.fingerprint
    assert fp["pretrained"] is True
    assert len(fp["model"]["vision"]["weights_sha256"]) == 64
    assert fp["preprocessing"]["resize"].startswith("whole frame")
    assert fp["preprocessing"]["image_size"] == [224, 224]


# ---- CLIP (Case 2) --------------------------------------------------------------------------------------------


def test_clip_tiny_encoder(tmp_path):
    clip = create_clip_encoder("clip-tiny", device="cpu", tiny_path=str(tmp_path / "clip"))
    images = [scene(0), scene(1), scene(2)]
    feats = clip.encode_images(images)
    assert feats.shape == (3, clip.dim) and clip.dim == clip.model.config.projection_dim
    assert feats.dtype == torch.float32 and not feats.requires_grad
    assert clip.pretrained is False and clip.fingerprint["pretrained"] is False
    torch.testing.assert_close(clip.encode_images([images[1]]), feats[1:2], atol=1e-5, rtol=1e-4)
    again = create_clip_encoder(**clip.spec())
    assert again.fingerprint_hash == clip.fingerprint_hash
    assert all(not p.requires_grad for p in clip.model.parameters()) and not clip.model.training


def test_clip_offline_fails_fast_or_falls_back_to_the_pretrained_reference(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(BackboneUnavailableError, match="openai/clip-vit-base-patch32"):
        create_clip_encoder(device="cpu")
    assert time.monotonic() - start < 2.0
    reference = resolve_clip_encoder(device="cpu")
    assert reference.pretrained is True and reference.fingerprint["encoder"] == "reference-image"
    assert reference.fallback["requested"] == "openai/clip-vit-base-patch32"
    assert reference.fallback["used"] == "efficientnet-lite0" and "RANDOM" not in caplog.text
    # The random CLIP only when named, and then the log says so.
    tiny = resolve_clip_encoder(device="cpu", fallback="clip-tiny", tiny_path=str(tmp_path / "clip"))
    assert tiny.pretrained is False and tiny.fallback["used"] == "clip-tiny"
    assert "RANDOM weights" in caplog.text
    with pytest.raises(BackboneUnavailableError):
        resolve_clip_encoder(device="cpu", allow_fallback=False)


def test_the_reference_embedding_is_the_lite_image_towers_pooled_feature():
    reference = create_clip_encoder("efficientnet-lite0", device="cpu")
    lite = create_backbone("lite", device="cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (60, 80, 3), dtype=np.uint8) for _ in range(2)]
    feats = reference.encode_images(images)
    assert feats.shape == (2, reference.dim) == (2, lite.vision_dim)
    torch.testing.assert_close(feats, lite.encode_images(images), atol=1e-5, rtol=1e-5)
    assert create_clip_encoder(**reference.spec()).fingerprint_hash == reference.fingerprint_hash
    assert reference.fingerprint_hash != lite.fingerprint_hash  # its own name and fingerprint


# ---- CLI ------------------------------------------------------------------------------------------------------


def test_cli_lists_profiles_and_explains_a_missing_kosmos2(capsys, monkeypatch):
    from mobile_vla.cli import main

    assert main(["backbones"]) == 0
    assert "lite  (default)" in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["backbones", "show", "kosmos2", "--device", "cpu"]) == 2
    assert "--backbone-path DIR" in capsys.readouterr().err


def test_cli_show_prints_dims_and_fingerprint(capsys, tiny_dir, tiny):
    from mobile_vla.cli import main

    assert (
        main(
            [
                "backbones",
                "show",
                "kosmos2-tiny",
                "--backbone-path",
                str(tiny_dir),
                "--device",
                "cpu",
                "--json",
            ]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["vision_dim"] == tiny.vision_dim and info["text_dim"] == tiny.text_dim
    assert info["fingerprint_hash"] == tiny.fingerprint_hash and info["pretrained"] is False
