"""The vision tower's executor (`backbones.vision_runtime`): onnxruntime gives torch's features, falls back loudly,
and the `lite` tower is shared (and memoised by frame) between the backbone and Case 2's reference embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobile_vla.backbones import create_backbone
from mobile_vla.backbones.reference import ReferenceImageEncoder
from mobile_vla.backbones.vision_runtime import RUNTIME_ENV, FrozenImageModule
from mobile_vla.data.cache import feature_namespace


def _conv() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 2, stride=2), torch.nn.ReLU6(), torch.nn.AdaptiveAvgPool2d(2)
    )
    return net.eval().requires_grad_(False)


def _module(net: torch.nn.Module, runtime: str = "auto", identity: str = "a") -> FrozenImageModule:
    return FrozenImageModule(
        net,
        name="test-conv",
        identity={"weights": identity},
        image_size=16,
        device=torch.device("cpu"),
        dtype=torch.float32,
        runtime=runtime,
    )


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILE_VLA_CACHE", str(tmp_path))
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    return tmp_path


def test_onnxruntime_matches_torch_and_keeps_its_graph(cache_home, monkeypatch):
    net = _conv()
    fast = _module(net)
    assert fast.runtime == "onnxruntime" and fast.fallback_reason is None
    assert fast.graph_path.is_file() and fast.graph_path.parent == cache_home / "onnx"
    pixels = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        expected = net(pixels)
    got = fast(pixels)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)

    # A second executor of the same module reuses the graph file: no export.
    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    again = _module(net)
    assert again.runtime == "onnxruntime"
    assert torch.allclose(again(pixels), expected, atol=1e-5)


def test_failed_export_falls_back_to_torch_with_a_warning(cache_home, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.warns(RuntimeWarning, match="exporter broke"):
        slow = _module(_conv())
    assert slow.runtime == "torch" and "exporter broke" in slow.fallback_reason
    with pytest.raises(RuntimeError, match="exporter broke"):
        _module(_conv(), runtime="onnxruntime")  # asked for by name: an error, not a fallback


def test_a_graph_that_disagrees_with_the_module_is_refused(cache_home):
    _module(_conv(), identity="same")  # writes the graph of this module under identity "same"
    other = _conv()
    other[0].weight.data += 1.0  # another function under the same identity: a stale or foreign graph
    with pytest.warns(RuntimeWarning, match="differs from torch"):
        checked = _module(other, identity="same")
    assert checked.runtime == "torch"
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(checked(pixels), other(pixels))


def test_runtime_names_are_checked(cache_home, monkeypatch):
    with pytest.raises(ValueError, match="runtime='tensorrt'"):
        _module(_conv(), runtime="tensorrt")
    monkeypatch.setenv(RUNTIME_ENV, "gpu")
    with pytest.raises(ValueError, match=RUNTIME_ENV):
        _module(_conv(), runtime=None)
    monkeypatch.setenv(RUNTIME_ENV, "torch")
    assert _module(_conv(), runtime=None).runtime == "torch"
    with pytest.raises(ValueError, match="fp32 only"):
        FrozenImageModule(
            _conv().to(torch.bfloat16),
            name="test-conv",
            identity={},
            image_size=16,
            device=torch.device("cpu"),
            dtype=torch.bfloat16,
            runtime="onnxruntime",
        )


def _frames(count: int, seed: int = 0) -> list[np.ndarray]:
    from mobile_vla.sim.env import LabEnv, SimConfig

    env = LabEnv(SimConfig(image_size=(224, 224)))
    scenarios = ["1box_vert_left_core_medium", "2box_hori_right_variant_far", "1box_hori_left_core_close"]
    frames = [env.reset(scenarios[i % 3], seed=seed + i) for i in range(count)]
    env.close()
    return frames


def test_lite_features_agree_across_runtimes_and_are_cached_apart():
    frames = _frames(3)
    fast = create_backbone("lite", device="cpu", runtime="onnxruntime")
    slow = create_backbone("lite", device="cpu", runtime="torch")
    assert (fast.vision_runtime, slow.vision_runtime) == ("onnxruntime", "torch")
    assert fast.fingerprint_hash == slow.fingerprint_hash  # the same function: checkpoints carry over
    pooled, tokens = fast.encode_images_with_tokens(frames)
    pooled_ref, tokens_ref = slow.encode_images_with_tokens(frames)
    assert (pooled - pooled_ref).abs().max().item() < 1e-4
    assert (tokens - tokens_ref).abs().max().item() < 1e-4
    assert feature_namespace(fast)[0] != feature_namespace(slow)[0]  # but never mixed in the feature cache


def test_the_reference_embedding_reuses_the_backbones_pass(monkeypatch):
    backbone = create_backbone("lite", device="cpu")
    reference = ReferenceImageEncoder(device="cpu")
    assert reference.tower is backbone.tower
    calls: list[int] = []
    executor = backbone.tower.executor
    original = executor.__call__

    class Counting:
        def __call__(self, pixels):
            calls.append(len(pixels))
            return original(pixels)

    monkeypatch.setattr(backbone.tower, "executor", Counting())
    frames = _frames(2, seed=100)
    frames.append(frames[0].copy())  # a repeat inside one batch is computed once too
    pooled = backbone.encode_images(frames)
    embedded = reference.encode_images(frames)
    assert calls == [2]  # one pass for two distinct frames; the reference read them from the memo
    assert torch.equal(pooled, embedded)
    assert torch.equal(pooled[0], pooled[2])
