"""The frozen-feature cache: one backbone pass per frame ever, safe on disk, invalidated by content."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobile_vla.data import EpisodeDataset, collate_batch, read_episode, write_episode
from mobile_vla.data.cache import (
    CachedBackbone,
    FeatureCache,
    FrameRef,
    build_cache,
    decode_entry,
    default_cache_root,
    frame_key,
    text_key,
)
from mobile_vla.data.synthetic import write_synthetic_dataset

SRC = str(Path(__file__).resolve().parents[1] / "src")


class CountingBackbone:
    """A stand-in backbone: each row depends on its own input only, and every encoder call is counted."""

    vision_dim, text_dim, token_dim, num_image_tokens = 8, 6, 4, 3

    def __init__(self, fingerprint_hash: str = "fakebb01", seed: int = 0):
        self.fingerprint_hash = fingerprint_hash
        self.fingerprint = {"profile": "fake", "seed": seed}
        self.device = torch.device("cpu")
        generator = torch.Generator().manual_seed(seed)
        self._w_image = torch.randn(3 * 16, self.vision_dim, generator=generator)
        self._w_tokens = torch.randn(3 * 16, self.num_image_tokens * self.token_dim, generator=generator)
        self._w_text = torch.randn(256, self.text_dim, generator=generator)
        self.calls: dict[str, int] = {}
        self.items: dict[str, int] = {}

    def _count(self, name: str, n: int) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        self.items[name] = self.items.get(name, 0) + n

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def image_items(self) -> int:
        """Frames through the image encoder, whichever method (each is one pass)."""
        return sum(n for name, n in self.items.items() if name != "encode_texts")

    def _pixels(self, images) -> torch.Tensor:
        small = [
            np.asarray(Image.fromarray(np.asarray(im)).resize((4, 4)), np.float32) / 255 for im in images
        ]
        return torch.from_numpy(np.stack(small)).reshape(len(images), -1)  # (B, 48)

    def encode_images(self, images) -> torch.Tensor:
        self._count("encode_images", len(images))
        return self._pixels(images) @ self._w_image  # (B, Dv)

    def encode_image_tokens(self, images) -> torch.Tensor:
        self._count("encode_image_tokens", len(images))
        out = self._pixels(images) @ self._w_tokens
        return out.reshape(len(images), self.num_image_tokens, self.token_dim)  # (B, N, Dtok)

    def encode_images_with_tokens(self, images):
        self._count("encode_images_with_tokens", len(images))
        pixels = self._pixels(images)
        tokens = (pixels @ self._w_tokens).reshape(len(images), self.num_image_tokens, self.token_dim)
        return pixels @ self._w_image, tokens

    def encode_texts(self, texts) -> torch.Tensor:
        self._count("encode_texts", len(texts))
        counts = torch.zeros(len(texts), 256)
        for i, text in enumerate(texts):
            for byte in text.encode():
                counts[i, byte] += 1
        return counts @ self._w_text  # (B, Dt)


class StubEpisode:
    """An episode with a given content hash whose frames are flat grey (or that refuses to be read)."""

    def __init__(self, content_hash: str, value: int | None = 100):
        self.content_hash = content_hash
        self.value = value

    def image(self, index: int) -> np.ndarray:
        if self.value is None:
            raise AssertionError(f"frame {index} was read although its features are cached")
        return np.full((8, 8, 3), self.value + index, np.uint8)


@pytest.fixture
def episodes_dir(tmp_path):
    write_synthetic_dataset(tmp_path / "episodes", episodes=3, seed=5, image_size=(16, 20))
    return tmp_path / "episodes"


@pytest.fixture
def cache(tmp_path):
    return FeatureCache(tmp_path / "features", durable=False)


def _epoch(cached: CachedBackbone, dataset: EpisodeDataset, batch_size: int = 4):
    """One pass over the dataset the way a training loop would: images from the collated batch."""
    by_id = {e.episode_id: e for e in dataset.episodes}
    outputs = []
    for start in range(0, len(dataset), batch_size):
        batch = collate_batch([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        refs = [
            FrameRef(by_id[eid], int(f))
            for eid, f in zip(batch["episode_id"], batch["frame_index"], strict=True)
        ]
        features = cached.image_features(refs, ("vision",), images=batch["image"])
        outputs.append((features["vision"], cached.text_features(batch["text"])))
    return outputs


def test_second_epoch_makes_zero_backbone_calls(episodes_dir, cache):
    backbone = CountingBackbone()
    cached = CachedBackbone(backbone, cache)
    dataset = EpisodeDataset(episodes_dir)
    first = _epoch(cached, dataset)
    assert backbone.image_items == len(dataset) == 3 * 18
    assert backbone.items["encode_texts"] == len({e.instruction for e in dataset.episodes})
    calls_after_first = backbone.total_calls
    assert cache.stats.misses == len(dataset) + backbone.items["encode_texts"]

    second = _epoch(cached, dataset)
    assert backbone.total_calls == calls_after_first
    for (v1, t1), (v2, t2) in zip(first, second, strict=True):
        assert torch.equal(v1, v2) and torch.equal(t1, t2)


def test_cached_features_equal_the_backbones_own(episodes_dir, cache):
    backbone = CountingBackbone()
    dataset = EpisodeDataset(episodes_dir)
    (vision, text), *_ = _epoch(CachedBackbone(backbone, cache), dataset)
    items = [dataset[i] for i in range(4)]
    torch.testing.assert_close(vision, backbone.encode_images([it["image"] for it in items]))
    torch.testing.assert_close(text, backbone.encode_texts([it["text"] for it in items]))


def test_entries_are_reused_by_a_new_process_from_disk(episodes_dir, tmp_path):
    dataset = EpisodeDataset(episodes_dir, frame_selection="first")
    _epoch(CachedBackbone(CountingBackbone(), FeatureCache(tmp_path / "f", durable=False)), dataset)

    fresh_backbone = CountingBackbone()
    fresh = FeatureCache(tmp_path / "f", memory_bytes=0)  # nothing in memory: every hit is a file read
    _epoch(CachedBackbone(fresh_backbone, fresh), dataset)
    assert fresh_backbone.total_calls == 0
    texts = {e.instruction for e in dataset.episodes}
    assert fresh.stats.disk_hits == len(dataset) + len(texts) and fresh.stats.misses == 0


def test_only_missing_frames_are_encoded_and_repeats_once(episodes_dir, cache):
    backbone = CountingBackbone()
    cached = CachedBackbone(backbone, cache)
    episode = read_episode(sorted(episodes_dir.glob("*.h5"))[0])
    cached.image_features([FrameRef(episode, 2)])
    refs = [FrameRef(episode, f) for f in (2, 3, 3, 4, 2)]
    out = cached.image_features(refs)["vision"]
    assert backbone.image_items == 1 + 2  # frame 2 earlier, then 3 and 4 once each
    assert out.shape == (5, backbone.vision_dim)
    assert torch.equal(out[1], out[2]) and torch.equal(out[0], out[4])


def test_a_frame_costs_one_pass_whichever_kinds_are_asked_for_later(episodes_dir, cache):
    backbone = CountingBackbone()
    cached = CachedBackbone(backbone, cache)
    episode = read_episode(sorted(episodes_dir.glob("*.h5"))[0])
    cached.image_features([FrameRef(episode, 0)], ("vision",))  # a Case 1 run: its pass keeps the tokens
    cached.image_features([FrameRef(episode, 1)], ("image_tokens",))  # a Case 2 run: keeps the pooled one
    out = cached.image_features([FrameRef(episode, f) for f in range(3)], ("vision", "image_tokens"))
    assert backbone.items == {"encode_images_with_tokens": 3}  # frames 0, 1, 2: one pass each
    assert out["image_tokens"].shape == (3, backbone.num_image_tokens, backbone.token_dim)
    images = [Image.fromarray(episode.image(f)) for f in range(3)]
    torch.testing.assert_close(out["image_tokens"], backbone.encode_image_tokens(images))
    torch.testing.assert_close(out["vision"], backbone.encode_images(images))


def test_without_keep_tokens_only_what_is_asked_for_is_stored(episodes_dir, cache):
    backbone = CountingBackbone()
    cached = CachedBackbone(backbone, cache, keep_tokens=False)
    episode = read_episode(sorted(episodes_dir.glob("*.h5"))[0])
    cached.image_features([FrameRef(episode, 0)], ("vision",))
    cached.image_features([FrameRef(episode, f) for f in range(3)], ("vision", "image_tokens"))
    # frame 0 lacks only its tokens; frames 1 and 2 lack both and share one pass
    assert backbone.items == {"encode_images": 1, "encode_image_tokens": 1, "encode_images_with_tokens": 2}


def test_instructions_are_cached_per_distinct_string_and_encoded_alone(cache):
    backbone = CountingBackbone()
    cached = CachedBackbone(backbone, cache)
    out = cached.text_features(["go left", "go right", "go left"])
    assert backbone.calls["encode_texts"] == 2 and backbone.items["encode_texts"] == 2
    torch.testing.assert_close(out[0], out[2])
    torch.testing.assert_close(out[1], backbone.encode_texts(["go right"])[0])
    cached.text_features(["go right"])
    assert backbone.calls["encode_texts"] == 3  # only the direct call above


def test_a_changed_episode_file_invalidates_only_its_entries(episodes_dir, cache):
    backbone = CountingBackbone()
    cached = CachedBackbone(backbone, cache)
    _epoch(cached, EpisodeDataset(episodes_dir))
    before = backbone.image_items

    path = sorted(episodes_dir.glob("*.h5"))[1]
    old = read_episode(path)
    images = np.stack([old.image(i) for i in range(old.num_frames)])
    images[5] = 255 - images[5]  # one frame re-recorded
    write_episode(path, images, old.actions, old.event_types, attrs=old.attrs)

    _epoch(cached, EpisodeDataset(episodes_dir))
    assert backbone.image_items - before == old.num_frames  # the changed file's frames only


def test_a_changed_backbone_invalidates_its_entries(episodes_dir, cache):
    dataset = EpisodeDataset(episodes_dir, frame_selection="first")
    first = CountingBackbone("aaaa1111", seed=0)
    _epoch(CachedBackbone(first, cache), dataset)
    other = CountingBackbone("bbbb2222", seed=1)  # e.g. new weights or preprocessing
    (vision, _), *_ = _epoch(CachedBackbone(other, cache), dataset)
    assert other.image_items == len(dataset)
    images = [dataset[i]["image"] for i in range(len(dataset))]
    torch.testing.assert_close(vision, other.encode_images(images[: len(vision)]))
    assert sorted(r["backbone_fingerprint_hash"] for r in cache.backbones()) == ["aaaa1111", "bbbb2222"]


@pytest.mark.parametrize("damage", ["truncate", "flip_payload_byte", "entry_of_another_key", "empty"])
def test_a_corrupt_entry_is_detected_and_recomputed(damage, cache, tmp_path):
    backbone = CountingBackbone()
    cached = CachedBackbone(backbone, cache)
    episode_hash = "ab" * 32
    refs = [FrameRef(StubEpisode(episode_hash), f) for f in (0, 1)]
    good = cached.image_features(refs)["vision"]
    path = cache.entry_path(cached.namespace, "vision", frame_key(episode_hash, 0))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:-7])
    elif damage == "flip_payload_byte":
        path.write_bytes(data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:])
    elif damage == "entry_of_another_key":
        other = cache.entry_path(cached.namespace, "vision", frame_key(episode_hash, 1))
        path.write_bytes(other.read_bytes())
    else:
        path.write_bytes(b"")

    reader = FeatureCache(cache.root, memory_bytes=0)
    calls = backbone.total_calls
    again = CachedBackbone(backbone, reader).image_features(refs[:1])["vision"]
    assert reader.stats.corrupt == 1 and backbone.total_calls == calls + 1
    torch.testing.assert_close(again[0], good[0])
    decode_entry(path.read_bytes(), backbone=cached.namespace, kind="vision", key=refs[0].key)


def test_a_batch_cut_short_while_storing_is_computed_again_whole(cache, monkeypatch):
    """Entries of a batch whose writer died before the last of them are not served: the whole batch is computed
    again in one call, so its features are those of the same batch composition, bit for bit."""
    backbone = CountingBackbone()
    refs = [FrameRef(StubEpisode("ef" * 32), f) for f in range(4)]
    writer = CachedBackbone(backbone, cache, keep_tokens=False)
    original, stored = FeatureCache.store, []

    def dies_after_two(self, *args, **kwargs):
        if len(stored) == 2:
            raise KeyboardInterrupt("killed while storing the batch")
        stored.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FeatureCache, "store", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        writer.image_features(refs)
    monkeypatch.undo()
    assert len(stored) == 2  # two entries of the batch are on disk

    reader = FeatureCache(cache.root, memory_bytes=0)
    calls, items = backbone.total_calls, backbone.image_items
    again = CachedBackbone(backbone, reader, keep_tokens=False).image_features(refs)["vision"]
    assert reader.stats.uncommitted == 2 and reader.stats.disk_hits == 0
    assert backbone.total_calls == calls + 1 and backbone.image_items == items + 4  # one call, whole batch
    torch.testing.assert_close(again, backbone.encode_images([r.load_image() for r in refs]), rtol=0, atol=0)
    later = FeatureCache(cache.root, memory_bytes=0)  # now committed: served from disk
    CachedBackbone(backbone, later, keep_tokens=False).image_features(refs)
    assert later.stats.disk_hits == 4 and later.stats.uncommitted == 0


def _run(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, **kwargs)


def test_a_write_killed_before_its_rename_leaves_no_entry(cache):
    key = frame_key("cd" * 32, 7)
    proc = _run(
        """
        import os, signal, sys, torch
        from mobile_vla.data.cache import FeatureCache
        os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # die between the write and the rename
        FeatureCache(sys.argv[1]).store("fakebb01", "vision", sys.argv[2], torch.ones(1000))
        """,
        str(cache.root),
        key,
    )
    assert proc.wait(timeout=120) == -signal.SIGKILL
    assert not cache.entry_path("fakebb01", "vision", key).exists()
    assert cache.load("fakebb01", "vision", key) is None and cache.stats.corrupt == 0
    assert cache.info()["tmp_files"] == 1  # the half-finished temporary file, ignored by readers
    cache.clear()
    assert not cache.root.exists() or not any(cache.root.rglob("*.tmp"))


def test_a_writer_killed_at_any_moment_never_leaves_a_corrupt_entry(cache):
    proc = _run(
        """
        import sys, torch
        from mobile_vla.data.cache import FeatureCache, frame_key
        cache = FeatureCache(sys.argv[1])
        print("ready", flush=True)
        i = 0
        while True:  # rewrite the same 20 large entries until killed
            cache.store("fakebb01", "image_tokens", frame_key("ef" * 32, i % 20), torch.full((256, 1024), float(i)))
            i += 1
        """,
        str(cache.root),
        stdout=subprocess.PIPE,
    )
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    entries = list((cache.root / "fakebb01").rglob("*.safetensors"))
    assert entries, "the writer wrote nothing before it was killed"
    for path in entries:
        key = f"{path.parent.name}/{path.name.removesuffix('.safetensors')}"
        feature = decode_entry(path.read_bytes(), backbone="fakebb01", kind="image_tokens", key=key)
        assert feature.shape == (256, 1024) and torch.all(feature == feature[0, 0])


def test_concurrent_writers_of_the_same_entries_both_succeed(cache):
    code = """
        import sys, torch
        from mobile_vla.data.cache import FeatureCache, frame_key
        cache = FeatureCache(sys.argv[1])
        for round in range(30):
            for f in range(10):
                cache.store("fakebb01", "vision", frame_key("aa" * 32, f), torch.arange(4096.0) + f)
        """
    procs = [_run(code, str(cache.root)) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    for f in range(10):
        assert torch.equal(
            cache.load("fakebb01", "vision", frame_key("aa" * 32, f)), torch.arange(4096.0) + f
        )
    assert cache.info()["tmp_files"] == 0 and cache.stats.corrupt == 0


def test_build_precomputes_every_frame_and_text_once(episodes_dir, cache):
    backbone = CountingBackbone()
    episodes = EpisodeDataset(episodes_dir).episodes
    stats = build_cache(backbone, episodes, cache=cache, kinds=("vision", "image_tokens"), batch_size=5)
    n_frames = sum(e.num_frames for e in episodes)
    assert backbone.items["encode_images_with_tokens"] == n_frames
    assert backbone.calls["encode_images_with_tokens"] == -(-n_frames // 5)  # batches of 5
    assert stats.misses == 2 * n_frames + len({e.instruction for e in episodes})

    again = build_cache(backbone, episodes, cache=FeatureCache(cache.root), kinds=("vision",), progress=False)
    assert again.backbone_calls == 0 and backbone.items["encode_images_with_tokens"] == n_frames
    info = cache.info()
    (record,) = info["backbones"]
    assert record["profile"] == "fake"
    assert record["kinds"]["vision"]["entries"] == n_frames and record["kinds"]["vision"]["episodes"] == 3
    assert record["kinds"]["text"]["texts"] == len({e.instruction for e in episodes})


def test_training_never_reads_images_of_cached_frames(episodes_dir, cache):
    backbone = CountingBackbone()
    episodes = EpisodeDataset(episodes_dir).episodes
    build_cache(backbone, episodes, cache=cache, progress=False)

    refs = [FrameRef(StubEpisode(e.content_hash, None), f) for e in episodes for f in range(e.num_frames)]
    assert CachedBackbone(backbone, cache).image_features(refs)["vision"].shape == (len(refs), 8)


def test_clear_by_profile_or_hash_prefix(cache):
    for digest in ("1111aaaa", "2222bbbb"):
        backbone = CountingBackbone(digest)
        CachedBackbone(backbone, cache).text_features(["go"])
    namespaces = {r["backbone_fingerprint_hash"]: r["fingerprint_hash"] for r in cache.backbones()}
    assert cache.clear("2222") == [namespaces["2222bbbb"]]  # by the backbone's fingerprint hash
    assert [r["backbone_fingerprint_hash"] for r in cache.backbones()] == ["1111aaaa"]
    assert cache.clear(namespaces["1111aaaa"][:6]) == [namespaces["1111aaaa"]]  # by the namespace
    CachedBackbone(CountingBackbone("1111aaaa"), cache).text_features(["go"])
    assert cache.clear("fake") == [namespaces["1111aaaa"]] and cache.backbones() == []


def test_memory_copy_is_bounded(cache, tmp_path):
    small = FeatureCache(tmp_path / "small", memory_bytes=3 * 4096, durable=False)
    for f in range(5):
        small.store("fakebb01", "vision", frame_key("aa" * 32, f), torch.zeros(1024))
    assert len(small._memory) == 3
    assert small.load("fakebb01", "vision", frame_key("aa" * 32, 0)) is not None
    assert small.stats.disk_hits == 1  # evicted from memory, still on disk


def test_default_root_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MOBILE_VLA_CACHE", str(tmp_path))
    assert default_cache_root() == tmp_path / "features"
    monkeypatch.delenv("MOBILE_VLA_CACHE")
    assert default_cache_root() == Path.home() / ".cache" / "mobile_vla" / "features"


def test_keys_cannot_escape_the_cache_directory(cache):
    with pytest.raises(ValueError, match="content hash"):
        frame_key("../../etc", 0)
    with pytest.raises(ValueError, match="backbone hash"):
        cache.entry_path("..", "vision", text_key("x"))


def test_cache_cli_builds_reports_and_clears(episodes_dir, tmp_path, monkeypatch, capsys):
    from mobile_vla.cli import main

    monkeypatch.setenv("MOBILE_VLA_CACHE", str(tmp_path / "home"))

    def cli(*args: str) -> tuple[int, str]:
        code = main(["cache", *args])
        return code, capsys.readouterr().out

    code, out = cli("build", str(episodes_dir), "--backbone", "kosmos2-tiny", "--device", "cpu")
    assert code == 0 and "3 episodes, 54 frames" in out and "computed 56 features" in out  # 54 + 2 texts
    code, out = cli("build", str(episodes_dir), "--backbone", "kosmos2-tiny", "--device", "cpu", "--tokens")
    assert code == 0 and "computed 54 features" in out  # only the tokens were missing

    (record,) = json.loads(cli("info", "--json")[1])["backbones"]
    assert record["profile"] == "kosmos2-tiny"
    assert {k: v["entries"] for k, v in record["kinds"].items()} == {
        "image_tokens": 54,
        "text": 2,
        "vision": 54,
    }
    assert "kosmos2-tiny" in cli("info")[1]

    assert cli("clear", "--backbone", "lite")[0] == 1  # no entries of that backbone
    assert cli("clear", "--backbone", "kosmos2-tiny")[0] == 0
    assert json.loads(cli("info", "--json")[1])["entries"] == 0


def test_build_precomputes_the_mirrored_views_for_mirror_training(episodes_dir, cache):
    from mobile_vla.data.cache import text_key
    from mobile_vla.data.mirror import mirror_instruction

    backbone = CountingBackbone()
    episodes = [e for e in EpisodeDataset(episodes_dir).episodes if e.instruction.endswith("left")]
    n_frames = sum(e.num_frames for e in episodes)
    build_cache(
        backbone, episodes, cache=cache, kinds=("vision", "image_tokens"), mirrored=True, progress=False
    )
    assert backbone.items["encode_images_with_tokens"] == 2 * n_frames  # each frame and its mirror image

    cached = CachedBackbone(backbone, cache)
    episode = episodes[0]
    mirrored = [FrameRef(episode, f, mirrored=True) for f in range(episode.num_frames)]
    features = cached.image_features(mirrored)["vision"]
    assert backbone.items["encode_images_with_tokens"] == 2 * n_frames  # served from the cache
    expected = backbone.encode_images([np.asarray(ref.load_image()) for ref in mirrored])
    assert torch.allclose(features, expected)  # the flipped image's features, not the original's
    texts = {mirror_instruction(e.instruction) for e in episodes} - {e.instruction for e in episodes}
    assert texts, "only the left-side episodes: their mirrored instructions name the right"
    assert all(cached.cache.contains(cached.namespace, "text", text_key(t)) for t in texts)
