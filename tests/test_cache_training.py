"""Training through the feature cache: zero backbone calls after the first pass, same result as uncached."""

import pytest
import torch
from safetensors.torch import load_file

from mobile_vla.backbones import create_backbone
from mobile_vla.data.cache import FeatureCache, FrameRef
from mobile_vla.data.synthetic import write_synthetic_dataset
from mobile_vla.training.cached_features import CachedFeatureProvider, feature_provider_for
from mobile_vla.training.config import TrainConfig
from mobile_vla.training.features import FeatureProvider
from mobile_vla.training.trainer import Callback, Trainer


class BackbonePasses(Callback):
    """Counts the frames and strings a backbone is asked to encode, cumulatively at each epoch's end."""

    def __init__(self, backbone):
        self.images = self.texts = 0
        self.per_epoch: list[tuple[int, int]] = []
        images, texts = backbone.encode_images_with_tokens, backbone.encode_texts

        def count_images(batch):
            self.images += len(batch)
            return images(batch)

        def count_texts(batch):
            self.texts += len(batch)
            return texts(batch)

        backbone.encode_images_with_tokens, backbone.encode_texts = count_images, count_texts

    def on_epoch_end(self, trainer, record):
        self.per_epoch.append((self.images, self.texts))


def _config(**overrides) -> TrainConfig:
    base = {
        "case": "case1",
        "backbone": "kosmos2-tiny",
        "epochs": 2,
        "device": "cpu",
        "early_stopping_patience": 0,
        "frame_selection": "all",
    }
    return TrainConfig(**{**base, **overrides})


def _train(config, episodes, out, backbone, provider=None) -> tuple[Trainer, BackbonePasses]:
    counter = BackbonePasses(backbone)
    trainer = Trainer(
        config,
        episodes,
        out,
        backbone=backbone,
        feature_provider=provider,
        callbacks=[counter],
        progress=False,
    )
    trainer.fit()
    return trainer, counter


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    write_synthetic_dataset(root, episodes=5, seed=2, image_size=(32, 40))  # split 3 / 1 / 1
    return root


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("kosmos2-tiny", device="cpu")


@pytest.fixture(scope="module")
def cached_run(episodes, backbone, tmp_path_factory):
    """Two epochs of Case 1 with the trainer's default provider and a fresh cache."""
    root = tmp_path_factory.mktemp("cached_run")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MOBILE_VLA_CACHE", str(root / "cache"))
        trainer, counter = _train(_config(), episodes, root / "run", backbone)
    return trainer, counter, root


def test_trainer_uses_the_cache_by_default_and_reads_no_cached_frame(cached_run):
    trainer, _, root = cached_run
    assert isinstance(trainer.provider, CachedFeatureProvider)
    assert trainer.provider.cache.root == root / "cache" / "features"
    assert isinstance(trainer.datasets["train"][0]["image"], FrameRef)  # read only if not cached
    assert trainer.provider.cache.info()["entries"] > 0


def test_second_epoch_makes_zero_backbone_calls(cached_run):
    trainer, counter, _ = cached_run
    (images_1, texts_1), (images_2, texts_2) = counter.per_epoch
    used = [e for part in ("train", "val") for e in trainer.datasets[part].episodes]
    assert images_1 == sum(e.num_frames for e in used)  # every train and validation frame, once
    assert texts_1 == len({e.instruction for e in used})  # every distinct instruction, once
    assert (images_2, texts_2) == (images_1, texts_1)
    assert trainer.provider.cache.stats.misses == images_1 + texts_1


def test_a_later_run_of_another_seed_reuses_the_cache(cached_run, episodes, backbone):
    _, _, root = cached_run
    fresh = FeatureCache(root / "cache" / "features")  # as a new process: entries come from disk
    config = _config(epochs=1, seed=7, frame_selection="random")
    _, counter = _train(config, episodes, root / "seed7", backbone, CachedFeatureProvider(backbone, fresh))
    assert counter.per_epoch == [(0, 0)]
    assert fresh.stats.disk_hits > 0 and fresh.stats.misses == 0


def test_cached_and_uncached_training_give_the_same_result(episodes, backbone, tmp_path):
    config = _config(frame_selection="random")
    cached = CachedFeatureProvider(backbone, FeatureCache(tmp_path / "cache", durable=False))
    _train(config, episodes, tmp_path / "cached", backbone, cached)
    _train(config, episodes, tmp_path / "plain", backbone, FeatureProvider(backbone))
    a = load_file(tmp_path / "cached" / "last.safetensors")
    b = load_file(tmp_path / "plain" / "last.safetensors")
    assert a.keys() == b.keys()
    # Same seed, same batches. The one difference: which frames shared a backbone batch, which moves float32
    # features by ~1e-7; after the run the head's weights agree to 1e-5.
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)


def test_the_cache_can_be_turned_off_from_the_environment(backbone, monkeypatch):
    assert isinstance(feature_provider_for(backbone), CachedFeatureProvider)
    monkeypatch.setenv("MOBILE_VLA_FEATURE_CACHE", "0")
    provider = feature_provider_for(backbone)
    assert type(provider) is FeatureProvider


@pytest.mark.parametrize(
    ("case", "kinds"),
    [
        ("case2", {"vision", "image_tokens", "clip_image", "text"}),
        ("case4", {"vision", "image_tokens", "text"}),
    ],
)
def test_tokens_clip_features_and_history_windows_are_cached_too(case, kinds, episodes, backbone, tmp_path):
    """Case 2 adds image tokens and a CLIP feature; Case 4 history windows and future frames."""
    cache = FeatureCache(tmp_path / "cache", durable=False)
    provider = CachedFeatureProvider(backbone, cache)
    # One window per episode keeps Case 4's (large) head quick; its windows still span several frames.
    config = _config(case=case, frame_selection="first", eval_frame_selection="first")
    _, counter = _train(config, episodes, tmp_path / "run", backbone, provider)
    (images_1, _), (images_2, _) = counter.per_epoch
    assert 0 < images_1 <= 4 * 18 and images_2 == images_1  # each frame once, pooled and tokens in one pass
    assert {kind for record in cache.info()["backbones"] for kind in record["kinds"]} == kinds
    if case == "case2":  # the CLIP embedding is cached under the CLIP encoder's own fingerprint
        assert "clip_image" in provider.source_fingerprints
