"""The control loop's feature cache: one backbone pass per step, even for history-window policies."""

import numpy as np
import torch
from test_cache import CountingBackbone

from mobile_vla.data.cache import FeatureCache, FrameRef
from mobile_vla.policies.inference import InferencePolicy
from mobile_vla.training.cached_features import inference_feature_provider
from mobile_vla.training.features import FeatureProvider


class WindowHead(torch.nn.Module):
    """A history-window head (W=3): the action reads the window's vision features in order."""

    history_length = 3
    required_features = ("vision", "text")
    action_dims = ("linear_x", "linear_y")

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 + 6, 2)

    def forward(self, features):
        window = features["vision"].flatten(1)  # (B, W, Dv) -> (B, W * Dv)
        return {"action": self.fc(torch.cat([window, features["text"]], dim=1))}


def _policy(provider):
    torch.manual_seed(0)
    record = {"action_dims": ["linear_x", "linear_y"], "case": "window"}
    return InferencePolicy(WindowHead(), provider, record, "cpu")


def test_a_history_window_policy_encodes_each_frame_once():
    frames = [np.full((16, 20, 3), 30 * i, np.uint8) for i in range(6)]
    cached_backbone, plain_backbone = CountingBackbone(), CountingBackbone()
    cached = _policy(inference_feature_provider(cached_backbone))
    plain = _policy(FeatureProvider(plain_backbone))
    for step, frame in enumerate(frames):
        if step == 4:  # a new episode: the window starts over
            cached.reset()
            plain.reset()
        np.testing.assert_allclose(cached.act(frame, "go left"), plain.act(frame, "go left"), rtol=1e-6)
    assert cached_backbone.items["encode_images"] == len(frames)  # one pass per step
    assert plain_backbone.items["encode_images"] == 3 * len(frames)  # the whole window, every step
    assert cached_backbone.items["encode_texts"] == 1


def test_the_control_loop_cache_writes_nothing_to_disk(tmp_path):
    cache = FeatureCache(tmp_path / "features", persist=False)
    frame = FrameRef.live(np.zeros((4, 4, 3), np.uint8))
    cache.store("bb01", "vision", frame.key, torch.ones(3))
    assert cache.load("bb01", "vision", frame.key) is not None
    assert not (tmp_path / "features").exists()
    assert FrameRef.live(np.zeros((4, 4, 3), np.uint8)).key != frame.key  # every live frame is its own
