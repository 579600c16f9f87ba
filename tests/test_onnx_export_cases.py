"""ONNX export of Case 2 (its frozen reference "CLIP") and Case 4 (a frame history, key-class actions), and the
int8 variant: parity with PyTorch on held-out frames, episodes stepped through the history, the server."""

import base64
import io
import json

import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from mobile_vla.cli import main
from mobile_vla.data.dataset import EpisodeDataset
from mobile_vla.data.synthetic import write_synthetic_dataset
from mobile_vla.export.onnx import check_exportable, export_graph
from mobile_vla.export.onnx_modules import HeadGraph
from mobile_vla.features.dims import FeatureDims
from mobile_vla.policies import create_policy, load_policy
from mobile_vla.serving.app import ServerConfig, create_app
from mobile_vla.serving.loading import load_for_serving
from mobile_vla.serving.onnx_runtime import OnnxPolicy
from mobile_vla.training.config import resolve_train_config
from mobile_vla.training.trainer import Trainer

SLOW = pytest.mark.slow  # each run trains on the lite backbone and exports (a minute or more on shared cores)
KEY = "test-key-123"
# A small Case 4 (the preset is 512 wide with 64 latents): the export covers the same modules at any size.
SMALL_CASE4 = {"hidden_dim": 64, "num_latents": 8, "resampler_depth": 1, "state_dim": 16, "num_heads": 4}


def _train(root, case, policy=None):
    overrides = {"epochs": 1, "batch_size": 4, "lr": 1e-3, "backbone": "lite", "device": "cpu"}
    if policy:
        overrides["policy"] = policy
    Trainer(
        resolve_train_config(case, overrides=overrides), root / "episodes", root / case, progress=False
    ).fit()
    return root / case


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-cases")
    write_synthetic_dataset(root / "episodes", episodes=8, seed=0, image_size=(48, 64))
    _train(root, "case2")
    _train(root, "case4", {**SMALL_CASE4, "action_space": "keys"})
    for case in ("case2", "case4"):
        argv = ["export", str(root / case), "--out", str(root / f"{case}-onnx"), "--verify-frames", "4"]
        assert main([*argv, "--no-progress"]) == 0
    # Held out: episodes the runs never saw (another seed), at the robot's aspect ratio.
    write_synthetic_dataset(root / "held_out", episodes=12, seed=123, image_size=(90, 160))
    return root


def _held_out(root, n=200):
    dataset = EpisodeDataset(root / "held_out")
    items = [dataset[i] for i in range(n)]
    return [it["image"] for it in items], [it["text"] for it in items], [it["episode_id"] for it in items]


def _batched(policy, images, texts, size=20):
    return np.concatenate(
        [policy.act_batch(images[i : i + size], texts[i : i + size]) for i in range(0, len(images), size)]
    )


@SLOW
def test_case2_exports_its_reference_clip_as_the_vision_graphs_pooled_output(runs):
    export, record = runs / "case2-onnx", json.loads((runs / "case2" / "config.json").read_text())
    sidecar = json.loads((export / "model.json").read_text())
    assert record["policy"]["clip_used"] == "efficientnet-lite0"  # the offline reference embedding
    assert sorted(sidecar["graphs"]) == ["head", "text", "vision"]  # the tower runs once per frame
    clip = sidecar["frame_features"]["clip_image"]
    assert (clip["graph"], clip["output"]) == ("vision", "vision")
    assert clip["encoder"]["fingerprint_hash"] == record["extra_features"]["clip_image"]["fingerprint_hash"]
    assert sidecar["fingerprints"]["clip_image"] == clip["encoder"]["fingerprint_hash"]
    head = onnx.load(str(export / "head.onnx"))
    assert [i.name for i in head.graph.input] == ["image_tokens", "clip_image", "text"]
    assert [o.name for o in onnx.load(str(export / "vision.onnx")).graph.output] == ["vision", "image_tokens"]
    assert sidecar["verification"]["max_abs_diff"] <= 1e-4 and sidecar["history"] is None


@SLOW
def test_case2_onnx_actions_match_pytorch_on_200_held_out_frames(runs):
    images, texts, _ = _held_out(runs)
    ref = _batched(load_policy(runs / "case2", device="cpu"), images, texts)
    got = _batched(OnnxPolicy(runs / "case2-onnx"), images, texts)
    assert ref.shape == got.shape == (200, 2)
    assert (
        np.ptp(ref, axis=0).min() > 1e-3
    )  # the frames give different actions: the comparison means something
    assert np.abs(ref - got).max() < 1e-4


def _logits_hook(policy, captured):
    """Record the head's key-class logits (the decoding hook has put them beside the decoded action)."""
    return policy.register_forward_hook(
        lambda module, args, out: captured.append(out["action_logits"].clone())
    )


@SLOW
def test_case4_onnx_steps_200_held_out_frames_through_the_history_like_pytorch(runs):
    """Episode by episode (reset at each start), frame by frame: the runtime's window (front-padded at the
    episode start, then sliding) gives the torch runtime's actions, chunks and key-class logits."""
    images, texts, episodes = _held_out(runs)
    torch_policy = load_policy(runs / "case4", device="cpu")
    onnx_policy = OnnxPolicy(runs / "case4-onnx")
    sidecar = onnx_policy.sidecar
    assert sidecar["history"]["length"] == 4 and sidecar["history"]["features"] == {
        "history_tokens": "image_tokens"
    }
    assert sidecar["action_space"]["kind"] == "keys" and sidecar["chunk_length"] == 5
    captured: list[torch.Tensor] = []
    hook = _logits_hook(torch_policy.policy, captured)
    actions, chunks, logits, got_logits = [], [], [], []
    try:
        for i, (image, text) in enumerate(zip(images, texts, strict=True)):
            if i == 0 or episodes[i] != episodes[i - 1]:
                torch_policy.reset()
                onnx_policy.reset()
            ref = torch_policy.act_chunk(image, text)  # (K, A)
            out = onnx_policy._step([image], [text], [None])
            actions.append((ref[0], onnx_policy_action := out["action"][0]))
            chunks.append((ref, out["action_chunk"][0]))
            logits.append(captured[-1][0].numpy())
            got_logits.append(out["action_logits"][0])
            assert np.array_equal(onnx_policy_action, out["action_chunk"][0][0])
    finally:
        hook.remove()
    ref_a, got_a = (np.stack(x) for x in zip(*actions, strict=True))
    assert ref_a.shape == (200, 2)
    assert np.abs(np.stack(logits) - np.stack(got_logits)).max() < 1e-4
    assert np.ptp(np.stack(logits), axis=0).min() > 1e-3  # the logits vary with the frames and the history
    assert np.abs(ref_a - got_a).max() < 1e-4
    for ref_c, got_c in chunks:
        assert np.abs(ref_c - got_c).max() < 1e-4
    # key-class decoding: every command is the velocity of one class, the arg-max of its logits
    velocities = np.asarray(sidecar["action_space"]["velocities"], dtype=np.float32)
    np.testing.assert_array_equal(got_a, velocities[np.stack(got_logits).argmax(axis=-1)])
    # the history matters: the same frame as an episode's first (act_batch) gives other logits than mid-episode
    captured.clear()
    alone = onnx_policy._step(images[10:11], texts[10:11], None)["action_logits"][0]
    assert np.abs(alone - got_logits[10]).max() > 1e-4


@SLOW
def test_case4_episodes_side_by_side_give_the_same_actions_as_one_at_a_time(runs):
    images, texts, episodes = _held_out(runs, 36)  # two episodes of 18 frames
    first = [i for i in range(36) if episodes[i] == episodes[0]]
    second = [i for i in range(36) if episodes[i] != episodes[0]]
    policy = OnnxPolicy(runs / "case4-onnx")
    alone = {}
    for idx in (first, second):
        policy.reset()
        alone[idx[0]] = np.stack([policy.act(images[i], texts[i]) for i in idx])
    policy.reset_slots([0, 1])
    together = []
    for a, b in zip(first, second, strict=True):
        together.append(policy.act_slots([images[a], images[b]], [texts[a], texts[b]], [0, 1]))
    together = np.stack(together)  # (18, 2, A)
    np.testing.assert_array_equal(together[:, 0], alone[first[0]])
    np.testing.assert_array_equal(together[:, 1], alone[second[0]])


def _png_b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@SLOW
def test_serve_runs_a_case4_export_with_chunk_reuse_and_reset(runs):
    policy, metadata = load_for_serving(str(runs / "case4-onnx"))
    assert isinstance(policy, OnnxPolicy) and metadata["onnx"]["history_length"] == 4
    client = TestClient(create_app(policy, metadata, ServerConfig(api_key=KEY)))
    headers = {"X-API-Key": KEY}
    frames = [np.random.default_rng(i).integers(0, 256, (90, 160, 3), dtype=np.uint8) for i in range(3)]
    text = "Navigate around obstacles and reach the front of the beverage bottle on the left"
    torch_policy = load_policy(runs / "case4", device="cpu")
    for frame in frames:  # receding horizon: one inference per frame, the history grows on both sides
        answer = client.post(
            "/predict", json={"image": _png_b64(frame), "instruction": text}, headers=headers
        )
        assert answer.json()["source"] == "inferred"
        assert np.abs(np.array(answer.json()["action"]) - torch_policy.act(frame, text)).max() < 1e-4
    assert client.post("/reset", headers=headers).status_code == 200
    torch_policy.reset()
    sources = []
    for frame in frames:
        body = {"image": _png_b64(frame), "instruction": text, "strategy": "chunk_reuse"}
        sources.append(client.post("/predict", json=body, headers=headers).json()["source"])
    assert sources == ["inferred", "reused", "reused"]


@SLOW
@pytest.mark.parametrize("case", ["case2", "case4"])
def test_the_export_drives_the_simulator_exactly_as_the_run(runs, case):
    from mobile_vla.sim.evaluate import evaluate_closed_loop

    kwargs = {"episodes": 3, "seed": 0, "max_steps": 6, "progress": False}
    theirs = evaluate_closed_loop(load_policy(runs / case, device="cpu"), **kwargs)
    ours = evaluate_closed_loop(OnnxPolicy(runs / f"{case}-onnx"), **kwargs)
    for a, b in zip(ours["records"], theirs["records"], strict=True):
        assert (a["scenario"], a["success"], a["collided"], a["steps"]) == (
            b["scenario"],
            b["success"],
            b["collided"],
            b["steps"],
        )
        ours_a, theirs_a = np.asarray(a["actions"]), np.asarray(b["actions"])
        # The first frame is the same for both, so the first actions agree as in the offline parity test. After
        # it, a ~1e-6 difference moves the robot by as much, the next rendered frame differs in a few pixels and
        # the difference grows step by step (Case 2's attention over tokens amplifies it most: 2e-4 by step 6).
        np.testing.assert_allclose(ours_a[0], theirs_a[0], atol=1e-4)
        np.testing.assert_allclose(ours_a, theirs_a, atol=1e-3)
        assert a["distance_to_goal"] == pytest.approx(b["distance_to_goal"], abs=1e-3)


@SLOW
def test_int8_export_quantises_the_head_and_reports_its_difference(runs, capsys):
    out = runs / "case2-int8"
    argv = ["export", str(runs / "case2"), "--out", str(out), "--precision", "int8", "--verify-frames", "4"]
    assert main([*argv, "--no-progress"]) == 0
    assert "int8" in capsys.readouterr().out
    sidecar = json.loads((out / "model.json").read_text())
    assert sidecar["precision"] == "int8" and sidecar["verification"]["tolerance"] == 0.1
    assert sidecar["quantization"]["graphs"]["head"]["int8_matmuls"] > 0
    ops = {node.op_type for node in onnx.load(str(out / "head.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    fp32_vision = (runs / "case2-onnx" / "vision.onnx").read_bytes()
    assert (out / "vision.onnx").read_bytes() == fp32_vision  # the tower stays fp32 (see INT8_GRAPHS)
    images, texts, _ = _held_out(runs, 60)
    fp32 = _batched(OnnxPolicy(runs / "case2-onnx"), images, texts)
    int8 = _batched(OnnxPolicy(out), images, texts)
    diff = np.abs(fp32 - int8).max()
    assert 0 < diff < 0.1  # quantised (not the same graph), and close


# ---- what needs no training ---------------------------------------------------------------------------------


@pytest.mark.parametrize("action_space", ["continuous", "keys"])
def test_the_case4_head_graph_reproduces_the_head_with_a_padded_window(action_space, tmp_path):
    import onnxruntime as ort

    dims = FeatureDims(vision=24, text=20, token_dim=12, num_image_tokens=4)
    torch.manual_seed(0)
    policy = create_policy("case4", dims, action_space=action_space, **{**SMALL_CASE4, "hidden_dim": 16})
    policy.eval()
    names = list(policy.required_features)
    assert names == ["history_tokens", "history_mask", "text", "vision"]
    shapes = {"history_tokens": (4, 4, 12), "history_mask": (4,), "text": (20,), "vision": (24,)}
    args = tuple(
        torch.ones(2, *shapes[n], dtype=torch.bool) if n == "history_mask" else torch.zeros(2, *shapes[n])
        for n in names
    )
    outputs = ["action", "action_chunk"] + (["action_logits"] if action_space == "keys" else [])
    export_graph(
        HeadGraph(policy, names, outputs),
        args,
        tmp_path / "head.onnx",
        input_names=names,
        output_names=outputs,
        dynamic={n: {0: "batch"} for n in names},
        opset=18,
    )
    session = ort.InferenceSession(str(tmp_path / "head.onnx"), providers=["CPUExecutionProvider"])
    feats = {n: torch.randn(5, *shapes[n]) for n in names if n != "history_mask"}
    feats["history_mask"] = torch.tensor([[False] * k + [True] * (4 - k) for k in (3, 2, 1, 0, 0)])
    with torch.no_grad():
        expected = policy(feats)
    got = dict(zip(outputs, session.run(outputs, {n: feats[n].numpy() for n in names}), strict=True))
    for name in outputs:
        np.testing.assert_allclose(got[name], expected[name].numpy(), atol=1e-5)
    assert got["action_chunk"].shape == (5, 5, 2)


def _case2_record(**clip):
    tower = {"weights_sha256": "abc"}
    prep = {"image_size": [224, 224], "mean": [0.5] * 3}
    fingerprint = {
        "encoder": "reference-image",
        "model": {"name": "efficientnet-lite0", **tower},
        "preprocessing": prep,
    }
    fingerprint.update(clip)
    return {
        "case": "case2",
        "policy": {"clip_used": clip.get("used", "efficientnet-lite0")},
        "backbone": {"fingerprint": {"model": {"vision": tower}, "preprocessing": prep}},
        "extra_features": {"clip_image": {"fingerprint": fingerprint, "fingerprint_hash": "h"}},
    }


def test_case2_is_exported_only_with_the_reference_embedding_on_the_same_tower():
    dims = FeatureDims(vision=48, text=40, token_dim=24, num_image_tokens=4, extra={"clip_image": 16})
    policy = create_policy("case2", dims)
    assert check_exportable(_case2_record(), policy) == ["image_tokens", "clip_image", "text"]
    with pytest.raises(ValueError, match="clip-tiny.*torch runtime"):
        check_exportable(_case2_record(encoder="clip", used="clip-tiny"), policy)
    with pytest.raises(ValueError, match="weights"):
        check_exportable(
            _case2_record(model={"name": "efficientnet-lite0", "weights_sha256": "other"}), policy
        )
    with pytest.raises(ValueError, match="preprocessing"):
        check_exportable(_case2_record(preprocessing={"image_size": [256, 256]}), policy)
    with pytest.raises(ValueError, match="extra_features.clip_image"):
        check_exportable({"case": "case2"}, policy)


def test_case4_is_exportable_and_reads_a_window_of_per_frame_features():
    dims = FeatureDims(vision=48, text=40, token_dim=24, num_image_tokens=4)
    policy = create_policy("case4", dims, **SMALL_CASE4)
    assert check_exportable({"case": "case4"}, policy) == ["history_tokens", "history_mask", "text", "vision"]
