"""`mobile-vla serve`: refuses unsafe access settings before loading anything, wires limits and the model into
the app, and resolves run directories and registry addresses."""

import json
import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient

import mobile_vla.registry
from mobile_vla.cli import main
from mobile_vla.serving import loading, server
from mobile_vla.serving.protocol import encode_image
from mobile_vla.serving.testing import ConstantPolicy, ImageStatsPolicy

KEY = "cli-key-0a9b8c7d6e5f4a3b"


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    monkeypatch.delenv("VLA_API_KEY", raising=False)


def test_serve_refuses_to_start_without_a_key(tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 2
    assert "VLA_API_KEY" in capsys.readouterr().err


def test_insecure_no_auth_refuses_a_public_address(tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--insecure-no-auth", "--host", "0.0.0.0"]) == 2
    assert "loopback" in capsys.readouterr().err


def test_serve_names_a_missing_run_directory_without_leaking_the_key(tmp_path, capsys, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    assert main(["serve", str(tmp_path / "nope"), "--api-key-file", str(key_file)]) == 1
    out = capsys.readouterr()
    assert "nope" in out.err and "not a directory" in out.err
    assert KEY not in out.err + out.out + caplog.text


def _fake_run_dir(tmp_path):
    run_dir = tmp_path / "case1_run"
    run_dir.mkdir()
    record = {
        "case": "case1",
        "model_class": "Simplified2DActionModelV2",
        "action_dims": ["linear_x", "linear_y", "angular_z"],
        "backbone": {"spec": {"profile": "lite"}, "fingerprint_hash": "fp123", "pretrained": False},
        "data": {"fingerprint": "data456", "provenance": "synthetic"},
    }
    (run_dir / "config.json").write_text(json.dumps(record))
    (run_dir / "summary.json").write_text(json.dumps({"registry_run_id": "run-7"}))
    return run_dir


def test_serve_wires_the_model_limits_and_key_into_the_app(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    run_dir = _fake_run_dir(tmp_path)
    policy = ConstantPolicy([2.0, 0.1, -3.0], action_dims=("linear_x", "linear_y", "angular_z"))
    served = {}
    monkeypatch.setenv("VLA_API_KEY", KEY)
    monkeypatch.setattr("mobile_vla.policies.load_policy", lambda path, device="auto": policy, raising=False)
    monkeypatch.setattr(
        server, "run_server", lambda app, host, port, log_level: served.update(app=app, port=port)
    )
    code = main(["serve", str(run_dir), "--port", "8123", "--max-linear", "0.5", "--limit", "angular_z=0.25"])
    assert code == 0 and served["port"] == 8123
    client = TestClient(served["app"])
    info = client.get("/model/info", headers={"X-API-Key": KEY}).json()
    assert info["model_name"] == "case1_run" and info["case"] == "case1"
    assert info["backbone"]["fingerprint_hash"] == "fp123" and info["registry_run_id"] == "run-7"
    assert info["velocity_limits"] == {"linear_x": 0.5, "linear_y": 0.5, "angular_z": 0.25}
    image = encode_image(np.zeros((8, 8, 3), np.uint8))
    answer = client.post("/predict", headers={"X-API-Key": KEY}, json={"image": image, "instruction": "go"})
    assert answer.json()["action"] == pytest.approx([0.5, 0.1, -0.25])
    assert client.get("/model/info").status_code == 403
    assert KEY not in caplog.text


def test_models_uri_is_resolved_through_the_registry(tmp_path, monkeypatch):
    run_dir = _fake_run_dir(tmp_path)
    seen = []
    monkeypatch.setattr(
        mobile_vla.registry, "resolve_model_uri", lambda uri: seen.append(uri) or run_dir, raising=False
    )
    assert loading.resolve_target("models:/case1@production") == (
        run_dir,
        "case1@production",
        "models:/case1@production",
    )
    assert seen == ["models:/case1@production"]
    with pytest.raises(ValueError, match="NAME@ALIAS"):
        loading.resolve_target("models:/")


def test_a_directory_without_config_json_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        loading.resolve_target(str(tmp_path))


def test_model_metadata_prefers_the_policy_info(tmp_path):
    run_dir = _fake_run_dir(tmp_path)
    policy = ImageStatsPolicy()
    policy.info = lambda: {"case": "case1", "trainable_parameters": 98_765, "device": "cuda:0"}
    metadata = loading.model_metadata(run_dir, policy, "case1@prod", "models:/case1@prod")
    assert metadata["trainable_parameters"] == 98_765 and metadata["device"] == "cuda:0"
    assert metadata["model_class"] == "Simplified2DActionModelV2"
    assert metadata["backbone"]["profile"] == "lite" and metadata["registry_uri"] == "models:/case1@prod"
    assert metadata["data"] == {"fingerprint": "data456", "provenance": "synthetic"}
