"""ONNX export of a trained run and its onnxruntime serving: parity with PyTorch, the same server contract."""

import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mobile_vla.cli import main
from mobile_vla.data.dataset import EpisodeDataset
from mobile_vla.data.synthetic import write_synthetic_dataset
from mobile_vla.features.dims import FeatureDims
from mobile_vla.policies import create_policy, load_policy
from mobile_vla.serving.app import ServerConfig, create_app
from mobile_vla.serving.loading import load_for_serving
from mobile_vla.serving.onnx_runtime import OnnxExportError, OnnxPolicy, is_onnx_export
from mobile_vla.training.config import resolve_train_config
from mobile_vla.training.trainer import Trainer

KEY = "test-key-123"
# Training a lite run and exporting it takes about a minute alone (several on shared cores): the tests that
# need the export run with `pytest -m slow`; the checks that need none run by default.
SLOW = pytest.mark.slow
LEFT = "Navigate around obstacles and reach the front of the beverage bottle on the left"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    write_synthetic_dataset(root / "episodes", episodes=8, seed=0, image_size=(48, 64))
    config = resolve_train_config(
        "case1",
        overrides={"epochs": 1, "batch_size": 4, "lr": 1e-3, "backbone": "lite", "device": "cpu"},
    )
    Trainer(config, root / "episodes", root / "run", progress=False).fit()
    argv = ["export", str(root / "run"), "--format", "onnx", "--out", str(root / "export")]
    assert main([*argv, "--verify-frames", "4", "--no-progress"]) == 0
    return root


@SLOW
def test_export_writes_three_graphs_with_dynamic_batch_and_a_sidecar(exported):
    export, run = exported / "export", exported / "run"
    sidecar = json.loads((export / "model.json").read_text())
    record = json.loads((run / "config.json").read_text())
    assert sidecar["format"] == "mobile-vla-onnx" and sidecar["opset"] >= 17
    for name, graph in sidecar["graphs"].items():
        model = onnx.load(str(export / graph["file"]))
        onnx.checker.check_model(model)
        assert {op.domain: op.version for op in model.opset_import}[""] >= 17, name
        for tensor in model.graph.input:
            assert tensor.type.tensor_type.shape.dim[0].dim_param, (
                f"{name}.{tensor.name}: batch is not dynamic"
            )
    assert [i.name for i in onnx.load(str(export / "head.onnx")).graph.input] == ["vision", "text"]
    assert sidecar["action_dims"] == record["action_dims"] == ["linear_x", "linear_y"]
    assert sidecar["velocity_limits"]["max_linear"] == 1.15
    assert sidecar["preprocessing"]["image"]["size"] == [224, 224]
    assert sidecar["fingerprints"]["backbone"] == record["backbone"]["fingerprint_hash"]
    assert sidecar["fingerprints"]["dataset"] == record["data"]["fingerprint"]
    head = sidecar["fingerprints"]["head_checkpoint"]
    assert head["file"] == "best.safetensors"
    assert head["sha256"] == hashlib.sha256((run / "best.safetensors").read_bytes()).hexdigest()
    assert sidecar["verification"]["n"] == 4 and sidecar["verification"]["max_abs_diff"] <= 1e-4
    assert (export / "tokenizer" / "tokenizer.json").is_file()


@SLOW
def test_onnx_actions_match_pytorch_on_200_held_out_frames(exported):
    # Held out: episodes the run never saw (another seed), at the robot's aspect ratio.
    write_synthetic_dataset(exported / "held_out", episodes=12, seed=123, image_size=(90, 160))
    dataset = EpisodeDataset(exported / "held_out")
    items = [dataset[i] for i in range(200)]
    images, texts = [it["image"] for it in items], [it["text"] for it in items]
    torch_policy = load_policy(exported / "run", device="cpu")
    onnx_policy = OnnxPolicy(exported / "export")
    ref = np.concatenate(
        [torch_policy.act_batch(images[i : i + 20], texts[i : i + 20]) for i in range(0, 200, 20)]
    )
    got = np.concatenate(
        [onnx_policy.act_batch(images[i : i + 20], texts[i : i + 20]) for i in range(0, 200, 20)]
    )
    assert ref.shape == got.shape == (200, 2)
    assert (
        np.ptp(ref, axis=0).min() > 1e-3
    )  # the frames give different actions: the comparison means something
    assert np.abs(ref - got).max() < 1e-4
    one = onnx_policy.act(np.asarray(images[7]), texts[7])  # one frame alone == the same frame in a batch
    assert np.abs(one - got[7]).max() < 1e-5


def _png_b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@SLOW
def test_serve_runs_an_export_on_onnxruntime_with_the_same_protocol_auth_and_safe_stop(exported):
    export = exported / "export"
    assert is_onnx_export(export) and not is_onnx_export(exported / "run")
    policy, metadata = load_for_serving(str(export))  # runtime auto: an export goes to onnxruntime
    assert isinstance(policy, OnnxPolicy)
    client = TestClient(create_app(policy, metadata, ServerConfig(api_key=KEY)))
    assert client.get("/health").json()["status"] == "healthy"
    frame = np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    request = {"image": _png_b64(frame), "instruction": LEFT}
    assert client.post("/predict", json=request).status_code == 403
    assert client.get("/model/info").status_code == 403
    headers = {"X-API-Key": KEY}
    info = client.get("/model/info", headers=headers).json()
    assert info["runtime"] == "onnxruntime" and info["case"] == "case1"
    assert info["backbone"]["fingerprint_hash"] == metadata["backbone"]["fingerprint_hash"]
    answer = client.post("/predict", json=request, headers=headers).json()
    assert answer["source"] == "inferred"
    expected = load_policy(exported / "run", device="cpu").act(frame, LEFT)
    assert np.abs(np.array(answer["action"]) - expected).max() < 1e-4

    class Failing:
        def __init__(self, result=None):
            self.result = result

        def run(self, *args, **kwargs):
            if self.result is None:
                raise RuntimeError("onnxruntime failed")
            return [self.result]

    head = policy.sessions["head"]
    policy.sessions["head"] = Failing()
    answer = client.post("/predict", json=request, headers=headers).json()
    assert answer["source"] == "safe_stop:model_error" and answer["action"] == [0.0, 0.0]
    policy.sessions["head"] = Failing(np.array([[np.nan, 0.5]], dtype=np.float32))
    answer = client.post("/predict", json=request, headers=headers).json()
    assert answer["source"] == "safe_stop:non_finite_output" and answer["action"] == [0.0, 0.0]
    policy.sessions["head"] = Failing(np.array([[9.0, -9.0]], dtype=np.float32))
    answer = client.post("/predict", json=request, headers=headers).json()
    assert answer["clamped"] and answer["action"] == pytest.approx([1.15, -1.15], abs=1e-6)
    policy.sessions["head"] = head
    assert client.post("/predict", json=request, headers=headers).json()["source"] == "inferred"


@SLOW
def test_the_export_drives_the_simulator_exactly_as_the_run(exported, capsys):
    """Closed loop: the same seeds give the same episodes, step for step, from PyTorch and onnxruntime."""
    from mobile_vla.sim.evaluate import evaluate_closed_loop

    kwargs = {"episodes": 4, "seed": 0, "max_steps": 6, "progress": False}
    torch_result = evaluate_closed_loop(load_policy(exported / "run", device="cpu"), **kwargs)
    onnx_result = evaluate_closed_loop(OnnxPolicy(exported / "export"), **kwargs)
    assert [r["scenario"] for r in onnx_result["records"]] == [r["scenario"] for r in torch_result["records"]]
    for ours, theirs in zip(onnx_result["records"], torch_result["records"], strict=True):
        assert (ours["success"], ours["collided"], ours["steps"]) == (
            theirs["success"],
            theirs["collided"],
            theirs["steps"],
        )
        np.testing.assert_allclose(np.asarray(ours["actions"]), np.asarray(theirs["actions"]), atol=1e-4)
        # actions agree to ~1e-6, so the robot ends within micrometres of the same place
        assert ours["distance_to_goal"] == pytest.approx(theirs["distance_to_goal"], abs=1e-4)
    assert onnx_result["success_rate"] == torch_result["success_rate"]
    argv = ["sim", "evaluate", "--policy", str(exported / "export"), "--episodes", "1", "--max-steps", "2"]
    assert main([*argv, "--json", "--no-track"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 1


@SLOW
def test_the_onnx_runtime_does_not_import_torch(exported):
    code = (
        "import sys, numpy as np\n"
        "from mobile_vla.serving.onnx_runtime import OnnxPolicy\n"
        f"p = OnnxPolicy({str(exported / 'export')!r})\n"
        "a = p.act(np.zeros((48, 64, 3), np.uint8), 'go left')\n"
        "assert a.shape == (2,) and np.isfinite(a).all()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@SLOW
def test_serve_onnx_refuses_a_run_directory_and_a_tampered_export(exported, tmp_path):
    with pytest.raises(ValueError, match="export it first"):
        load_for_serving(str(exported / "run"), runtime="onnx")
    copy = tmp_path / "copy"
    shutil.copytree(exported / "export", copy)
    data = bytearray((copy / "head.onnx").read_bytes())
    data[-1] ^= 0xFF
    (copy / "head.onnx").write_bytes(bytes(data))
    with pytest.raises(OnnxExportError, match="head.onnx"):
        OnnxPolicy(copy)
    (copy / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match="model.json"):
        OnnxPolicy(copy)


def test_export_names_a_missing_run_and_a_non_empty_out(tmp_path, capsys):
    assert main(["export", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "no-such-run" in capsys.readouterr().err
    (tmp_path / "not-a-run").mkdir()
    assert main(["export", str(tmp_path / "not-a-run"), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    run, out = tmp_path / "run", tmp_path / "busy"
    run.mkdir()
    (run / "config.json").write_text("{}")
    out.mkdir()
    (out / "f").write_text("x")
    assert main(["export", str(run), "--out", str(out), "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "f").read_text() == "x"


def test_export_and_serve_have_help(capsys):
    for argv in (["export", "--help"], ["serve", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--format" in out and "--runtime" in out


@pytest.mark.parametrize("action_space", ["continuous", "keys"])
def test_the_head_graph_reproduces_the_head_with_its_hooks(action_space, tmp_path):
    """The head graph carries what the module's hooks do: instruction standardisation and, for key-class
    heads, the arg-max command (so the robot gets velocities from either runtime)."""
    import onnxruntime as ort
    import torch

    from mobile_vla.export.onnx import export_graph
    from mobile_vla.export.onnx_modules import HeadGraph

    dims = FeatureDims(vision=48, text=40)
    torch.manual_seed(0)
    policy = create_policy("case1", dims, action_space=action_space, hidden_dim=16).eval()
    policy.set_text_stats(torch.randn(40), torch.rand(40) + 0.5)
    export_graph(
        HeadGraph(policy, ["vision", "text"]),
        (torch.zeros(2, 48), torch.zeros(2, 40)),
        tmp_path / "head.onnx",
        input_names=["vision", "text"],
        output_names=["action"],
        dynamic={"vision": {0: "batch"}, "text": {0: "batch"}},
        opset=18,
    )
    session = ort.InferenceSession(str(tmp_path / "head.onnx"), providers=["CPUExecutionProvider"])
    vision, text = torch.randn(7, 48), torch.randn(7, 40) * 3  # another batch size than the traced one
    with torch.no_grad():
        expected = policy({"vision": vision, "text": text})["action"].numpy()
    (got,) = session.run(["action"], {"vision": vision.numpy(), "text": text.numpy()})
    assert got.shape == (7, 2)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    if action_space == "keys":
        assert np.all(np.isclose(np.abs(got), 0.0) | np.isclose(np.abs(got), 1.15))
