"""The feature cache's namespace covers everything that changes a feature: a change to preprocessing parameters,
feature code, library versions, dtype or device is a miss, never a stale hit; the same setup is a hit."""

import importlib.util
import sys
import textwrap

import numpy as np
import pytest
import torch

from mobile_vla.data import cache as cache_module
from mobile_vla.data.cache import CachedBackbone, FeatureCache, FrameRef, feature_namespace, source_digest


class StubEpisode:
    def __init__(self, content_hash: str, seed: int = 0):
        self.content_hash = content_hash
        self.rng = np.random.default_rng(seed)
        self.frames = [self.rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(4)]

    def image(self, i: int) -> np.ndarray:
        return self.frames[i]


@pytest.fixture
def refs():
    episode = StubEpisode("cd" * 32)
    return [FrameRef(episode, f) for f in range(4)]


BACKBONE_SOURCE = """
import hashlib, json
import numpy as np
import torch
from PIL import Image

SIZE = {size}

def thumbnail(image):
    small = Image.fromarray(np.asarray(image)).resize((SIZE, SIZE), Image.{resample})
    return torch.from_numpy(np.asarray(small, np.float32).reshape(-1) / 255.0)

class Encoder:
    # The fingerprint does not change between versions of this file: only the code does.
    fingerprint = {{"profile": "file-backbone", "weights": "w1"}}
    fingerprint_hash = hashlib.sha256(json.dumps(fingerprint).encode()).hexdigest()[:16]
    device = torch.device("cpu")
    dtype = "fp32"

    def encode_images(self, images):
        x = torch.stack([thumbnail(im) for im in images])
        return x[:, :8] * 2.0

    def encode_texts(self, texts):
        return torch.zeros(len(texts), 4)
"""


def _load_backbone(tmp_path, name: str, size: int = 4, resample: str = "BILINEAR"):
    """A backbone class defined in its own file, as a backbone module is (imported, so its source is known)."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(BACKBONE_SOURCE.format(size=size, resample=resample)))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.Encoder()


def test_the_same_backbone_and_code_hit_the_cache_even_from_another_module(tmp_path, refs):
    """A new process, and the same code under another module name (a refactor that moves files): hits."""
    cache = FeatureCache(tmp_path / "cache", durable=False)
    first = _load_backbone(tmp_path, "backbone_same_a")
    CachedBackbone(first, cache).image_features(refs)
    again = FeatureCache(cache.root)  # a new process: entries come from disk
    CachedBackbone(_load_backbone(tmp_path, "backbone_same_b"), again).image_features(refs)
    assert again.stats.misses == 0 and again.stats.disk_hits == len(refs)


@pytest.mark.parametrize(
    "change", [{"resample": "NEAREST"}, {"size": 5}], ids=["resize-function-code", "module-constant"]
)
def test_an_edit_to_the_feature_code_is_a_miss_without_any_version_bump(tmp_path, refs, change):
    cache = FeatureCache(tmp_path / "cache", durable=False)
    old = CachedBackbone(_load_backbone(tmp_path, "backbone_v1"), cache)
    stale = old.image_features(refs)["vision"]
    new_backbone = _load_backbone(tmp_path, f"backbone_v2_{'_'.join(change)}", **change)
    assert new_backbone.fingerprint_hash == old.backbone.fingerprint_hash  # nobody bumped anything
    new = CachedBackbone(new_backbone, cache)
    assert new.namespace != old.namespace
    before = cache.stats.misses
    fresh = new.image_features(refs)["vision"]
    assert cache.stats.misses - before == len(refs)  # recomputed, not served from the old entries
    assert not torch.equal(fresh, stale)  # and the old entries would indeed have been stale
    torch.testing.assert_close(fresh, new_backbone.encode_images([r.load_image() for r in refs]))


def test_library_versions_dtype_and_device_type_are_part_of_the_namespace(tmp_path, monkeypatch):
    backbone = _load_backbone(tmp_path, "backbone_env")
    base, record = feature_namespace(backbone)
    assert record["versions"]["torch"] == torch.__version__
    assert record["device_type"] == "cpu" and record["dtype"] == "fp32"

    backbone.dtype = "bf16"
    assert feature_namespace(backbone)[0] != base
    backbone.dtype = "fp32"
    backbone.device = torch.device("cuda")  # type only: a device need not exist to be named
    assert feature_namespace(backbone)[0] != base
    backbone.device = torch.device("cpu")
    assert feature_namespace(backbone)[0] == base

    for library in ("torch", "transformers", "Pillow"):
        versions = {**record["versions"], library: "0.0.1-other"}
        monkeypatch.setattr(cache_module, "library_versions", lambda v=versions: v)
        assert feature_namespace(backbone)[0] != base, library
    monkeypatch.undo()
    assert feature_namespace(backbone)[0] == base


def test_the_source_digest_follows_helpers_and_constants_but_not_other_code(tmp_path):
    backbone = _load_backbone(tmp_path, "backbone_digest")
    module = sys.modules["backbone_digest"]
    digest = source_digest(type(backbone))
    module.SIZE = 7  # a constant the encoder reads: part of the digest
    assert source_digest(type(backbone)) != digest
    module.SIZE = 4
    module.UNUSED = 99  # nothing reads it
    assert source_digest(type(backbone)) == digest


def test_a_changed_preprocessing_parameter_of_a_real_backbone_is_a_miss(tmp_path, refs):
    """kosmos2-tiny with its image processor's normalisation changed: a new namespace, so a miss."""
    from mobile_vla.backbones import create_backbone

    cache = FeatureCache(tmp_path / "cache", durable=False)
    default = create_backbone("kosmos2-tiny", device="cpu")
    old = CachedBackbone(default, cache)
    stale = old.image_features(refs[:2])["vision"]

    changed = create_backbone("kosmos2-tiny", device="cpu")
    changed.processor.image_processor.image_mean = [0.2, 0.2, 0.2]
    new = CachedBackbone(changed, cache)
    assert new.namespace != old.namespace
    before = cache.stats.misses
    fresh = new.image_features(refs[:2])["vision"]
    assert cache.stats.misses - before == 2
    assert not torch.allclose(fresh, stale)
    info = {r["fingerprint_hash"]: r for r in cache.backbones()}
    assert set(info) == {old.namespace, new.namespace}
    assert {r["profile"] for r in info.values()} == {"kosmos2-tiny"}
