"""Case 4's window dataset: history windows padded at the episode start, action chunks and future frames
masked at its end, task labels from the scenario."""

import numpy as np
import pytest
import torch

from mobile_vla.data import EpisodeDataset, collate_batch, write_episode
from mobile_vla.data.episodes import Scenario
from mobile_vla.data.synthetic import write_synthetic_episode
from mobile_vla.data.windows import IGNORE_TASK, TASK_NAMES, WindowDataset, pad_history, task_label
from mobile_vla.policies.case4 import IGNORE_TASK as POLICY_IGNORE_TASK
from mobile_vla.policies.case4 import NUM_SCENARIOS


@pytest.fixture(scope="module")
def episode_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    write_synthetic_episode(
        root, Scenario(2, "hori", "right", "core", "far"), seed=1, num_frames=8, image_size=(24, 32)
    )
    write_synthetic_episode(root, Scenario(1, "vert", "left", "variant", "close"), seed=2, num_frames=6, image_size=(24, 32))  # fmt: skip
    return root


def item_at(dataset: WindowDataset, episode_id_part: str, frame: int) -> dict:
    for i, (e, f) in enumerate(dataset.frame_refs):
        if episode_id_part in dataset.episodes[e].episode_id and f == frame:
            return dataset[i]
    raise KeyError((episode_id_part, frame))


def pixels(image) -> np.ndarray:
    return np.asarray(image)


def test_task_labels_are_the_eight_scenarios():
    assert len(TASK_NAMES) == len(set(TASK_NAMES)) == NUM_SCENARIOS == 8
    assert task_label("2box_hori_right") == TASK_NAMES.index("2box_hori_right")
    assert task_label("unknown") == task_label(None) == IGNORE_TASK == POLICY_IGNORE_TASK


def test_pad_history_repeats_the_oldest_frame_and_masks_the_padding():
    window, mask = pad_history(["a", "b"], 4)
    assert window == ["a", "a", "a", "b"]
    assert mask.tolist() == [False, False, True, True]
    window, mask = pad_history(list("abcdef"), 3)
    assert window == ["d", "e", "f"] and mask.all()
    with pytest.raises(ValueError, match="history must be >= 1"):
        pad_history(["a"], 0)


def test_window_at_the_episode_start_is_padded_with_the_first_frame(episode_dir):
    dataset = WindowDataset(episode_dir, history=4, chunk=3, horizon=2)
    item = item_at(dataset, "2box_hori_right", 1)
    episode = next(e for e in dataset.episodes if "2box" in e.episode_id)
    assert item["history_mask"].tolist() == [False, False, True, True]
    expected = [episode.image(0)] * 3 + [episode.image(1)]
    for image, frame in zip(item["history_images"], expected, strict=True):
        assert np.array_equal(pixels(image), frame)
    assert np.array_equal(pixels(item["history_images"][-1]), pixels(item["image"]))


def test_action_chunk_is_the_next_recorded_actions_and_masked_past_the_end(episode_dir):
    dataset = WindowDataset(episode_dir, history=2, chunk=4, horizon=3)
    episode = next(e for e in dataset.episodes if "2box" in e.episode_id)  # 8 frames
    middle = item_at(dataset, "2box", 2)
    assert torch.allclose(middle["action_chunk"], torch.from_numpy(episode.actions[2:6, :2]))
    assert middle["action_chunk_mask"].all()
    assert torch.equal(middle["action"], middle["action_chunk"][0])
    end = item_at(dataset, "2box", 6)
    assert end["action_chunk_mask"].tolist() == [True, True, False, False]
    assert torch.allclose(end["action_chunk"][:2], torch.from_numpy(episode.actions[6:8, :2]))
    assert (end["action_chunk"][2:] == 0).all()
    actions, mask = dataset.chunk_target(dataset.frame_refs.index((dataset.episodes.index(episode), 6)))
    assert np.array_equal(actions, end["action_chunk"].numpy()) and mask.tolist() == [
        True,
        True,
        False,
        False,
    ]


def test_future_frames_are_the_real_next_frames_masked_past_the_end(episode_dir):
    dataset = WindowDataset(episode_dir, history=2, chunk=2, horizon=3)
    episode = next(e for e in dataset.episodes if "2box" in e.episode_id)
    item = item_at(dataset, "2box", 5)  # frames 6, 7 exist; 8 does not
    assert item["future_mask"].tolist() == [True, True, False]
    for image, frame in zip(item["future_images"], [6, 7, 7], strict=True):
        assert np.array_equal(pixels(image), episode.image(frame))


def test_items_carry_the_scenario_task_label_and_the_episode_instruction(episode_dir):
    dataset = WindowDataset(episode_dir, history=2, chunk=2, horizon=1)
    item = item_at(dataset, "1box_vert_left", 0)
    assert int(item["task"]) == TASK_NAMES.index("1box_vert_left")
    assert item["text"].endswith("on the left")


def test_an_episode_without_a_scenario_gets_the_ignored_task_label(tmp_path):
    images = np.zeros((3, 8, 8, 3), np.uint8)
    write_episode(tmp_path / "episode_unnamed.h5", images, np.zeros((3, 3), np.float32), instruction="go")
    item = WindowDataset(tmp_path, history=2, chunk=2, horizon=1)[0]
    assert int(item["task"]) == IGNORE_TASK


def test_windows_select_the_same_frames_as_the_episode_dataset(episode_dir):
    for selection in ("first", "all", "random"):
        frames = EpisodeDataset(episode_dir, frame_selection=selection, seed=3)
        windows = WindowDataset(episode_dir, frame_selection=selection, seed=3, history=2, chunk=2, horizon=1)
        frames.set_epoch(2)
        windows.set_epoch(2)
        assert windows.frame_refs == frames.frame_refs
        assert len(windows) == len(frames)


def test_drop_start_frame_keeps_the_start_frame_out_of_windows(episode_dir):
    dataset = WindowDataset(episode_dir, drop_start_frame=True, history=3, chunk=2, horizon=1)
    episode = next(e for e in dataset.episodes if "2box" in e.episode_id)
    item = item_at(dataset, "2box", 1)
    assert item["history_mask"].tolist() == [False, False, True]
    assert all(np.array_equal(pixels(im), episode.image(1)) for im in item["history_images"])


def test_collated_windows_have_a_time_axis(episode_dir):
    dataset = WindowDataset(episode_dir, history=3, chunk=4, horizon=2)
    batch = collate_batch([dataset[i] for i in range(3)])
    assert batch["action"].shape == (3, 2)
    assert batch["action_chunk"].shape == (3, 4, 2) and batch["action_chunk_mask"].shape == (3, 4)
    assert batch["history_mask"].shape == (3, 3) and batch["future_mask"].shape == (3, 2)
    assert batch["task"].shape == (3,) and batch["task"].dtype == torch.long
    assert len(batch["history_images"]) == 3 and all(len(w) == 3 for w in batch["history_images"])
    assert all(len(w) == 2 for w in batch["future_images"])


@pytest.mark.parametrize(("key", "value"), [("history", 0), ("chunk", 0), ("horizon", -1)])
def test_window_sizes_are_validated(episode_dir, key, value):
    with pytest.raises(ValueError, match=f"{key} must be an int"):
        WindowDataset(episode_dir, **{key: value})


# --- chunk metrics (Case 4's evaluation) -----------------------------------------------------------------------


def test_chunk_metrics_leave_out_steps_past_the_episode_end():
    from mobile_vla.evaluation.chunks import chunk_metrics

    targets = np.zeros((2, 3, 2))
    predictions = np.array([[[0.1, 0.1], [0.5, 0.5], [9.0, 9.0]], [[0.0, 0.0], [0.0, 0.2], [0.0, 0.0]]])
    mask = np.array([[True, True, False], [True, True, True]])
    m = chunk_metrics(predictions, targets, mask, thresholds=(0.3,))
    assert m["n_windows"] == 2 and m["n_steps"] == 5 and m["step_n"] == [2, 2, 1]
    assert np.isclose(m["chunk_mae"], (0.1 + 0.5 + 0.0 + 0.1 + 0.0) / 5)
    assert np.allclose(m["step_mae"], [0.05, 0.3, 0.0])
    assert np.isclose(m["step_accuracy_0.3"], 100 * 4 / 5)  # only (0, 1) misses
    assert m["window_accuracy_0.3"] == 50.0  # window 0 misses at step 1; its masked step 2 does not count
    low, high = m["step_accuracy_0.3_ci"]
    assert 0 <= low < 80 < high <= 100


def test_chunk_metrics_refuse_mismatched_shapes():
    from mobile_vla.evaluation.chunks import chunk_metrics

    with pytest.raises(ValueError, match=r"\(N, K, A\)"):
        chunk_metrics(np.zeros((2, 3, 2)), np.zeros((2, 3)))


def test_lazy_windows_reference_the_same_frames_without_reading_them(episode_dir):
    cache = pytest.importorskip("mobile_vla.data.cache")
    dataset = WindowDataset(episode_dir, lazy_images=True, history=3, chunk=2, horizon=2)
    eager = WindowDataset(episode_dir, history=3, chunk=2, horizon=2)
    item, expected = item_at(dataset, "2box", 1), item_at(eager, "2box", 1)
    assert all(isinstance(ref, cache.FrameRef) for ref in item["history_images"] + item["future_images"])
    assert [ref.frame for ref in item["history_images"]] == [0, 0, 1]
    assert [ref.frame for ref in item["future_images"]] == [2, 3]
    for ref, image in zip(item["history_images"], expected["history_images"], strict=True):
        assert np.array_equal(pixels(ref.load_image()), pixels(image))
