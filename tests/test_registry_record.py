"""What a run records: a run directory turned into MLflow tags/params/metrics and read back (no MLflow here)."""

import json

import numpy as np
import pytest
from registry_helpers import eval_result, sim_result, write_run_dir

from mobile_vla.registry.record import (
    MAX_PARAM_VALUE,
    StoredRun,
    closed_loop_metrics,
    evaluation_metrics,
    flatten,
    parse_param,
    read_jsonl,
    read_run_dir,
    safetensors_signature,
    unflatten_results,
)


def _stored(record, status="FINISHED") -> StoredRun:
    return StoredRun(
        run_id="r" * 32,
        name=record.name,
        status=status,
        start_time=0,
        end_time=None,
        tags=record.tags(),
        params=record.params(),
        metrics=record.final_metrics(),
    )


def test_nested_config_flattens_to_dotted_keys_and_params_restore_types(tmp_path):
    run_dir = write_run_dir(tmp_path, "r1")
    record = read_run_dir(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    params = record.params()
    assert params["train.lr"] == "5e-05" and parse_param(params["train.lr"]) == 5e-05
    assert parse_param(params["policy.use_vision_resampler"]) is False
    assert params["backbone.spec.profile"] == "lite"
    stored = _stored(record)
    for section in ("policy", "train", "backbone", "feature_dims"):
        assert stored.config_section(section) == config[section], section
    assert flatten({"a": {"b": {"c": 1}}, "d": []}) == {"a.b.c": 1, "d": []}


def test_episode_id_lists_are_not_params_but_counts_and_hashes_are_tags(tmp_path):
    record = read_run_dir(write_run_dir(tmp_path, "r1"))
    params, tags = record.params(), record.tags()
    assert not any(k in params for k in ("data.split.train", "data.split.val", "data.split.test"))
    assert params["data.split.seed"] == "0"
    assert tags["mobile_vla.split.train.count"] == "14"
    assert len(tags["mobile_vla.split.test.fingerprint"]) == 16
    assert record.split_artifact()["test"] == record.config["data"]["split"]["test"]


def test_overlong_config_values_point_to_the_artifact_instead_of_breaking_mlflow(tmp_path):
    run_dir = write_run_dir(tmp_path, "r1")
    config = json.loads((run_dir / "config.json").read_text())
    config["train"]["notes"] = "x" * (MAX_PARAM_VALUE + 10)
    (run_dir / "config.json").write_text(json.dumps(config))
    value = read_run_dir(run_dir).params()["train.notes"]
    assert len(value) <= MAX_PARAM_VALUE and "config.json artifact" in value


def test_tags_identify_case_backbone_dataset_and_code(tmp_path):
    tags = read_run_dir(write_run_dir(tmp_path, "r1", pretrained=False, provenance="synthetic")).tags()
    assert tags["mobile_vla.case"] == "case1"
    assert tags["mobile_vla.model_class"] == "Simplified2DActionModelV2"
    assert tags["mobile_vla.backbone.pretrained"] == "false"
    assert tags["mobile_vla.backbone.fingerprint"] == "0000000000000000"
    assert tags["mobile_vla.dataset.provenance"] == "synthetic"
    assert tags["mobile_vla.code.package_version"] == "0.1.0"
    assert tags["mlflow.source.git.commit"] == "1a2b3c4"
    assert tags["mobile_vla.action_dims"] == "linear_x,linear_y"


def test_evaluation_round_trips_through_metric_keys():
    result, _, _ = eval_result("test", n=40)
    back = unflatten_results(evaluation_metrics("test", result), "test")
    assert back["n"] == 40
    assert back["metrics"] == {
        **{k: v for k, v in result["metrics"].items() if k != "n"},
        "loss": result["loss"],
    }
    assert back["n_episodes"] == result["n_episodes"]
    assert back["intervals"] == result["intervals"]
    assert "accuracy_0.15" in back["metrics"]  # dotted metric names survive the "/" scheme


def test_closed_loop_round_trips_with_per_scenario_blocks_and_no_protocol_numbers(tmp_path):
    sim = sim_result(17, 20)
    metrics = closed_loop_metrics(sim)
    assert "closed_loop/seed" not in metrics
    record = read_run_dir(write_run_dir(tmp_path, "r1", closed_loop=sim))
    back = _stored(record).closed_loop()
    assert back["n"] == 20 and back["metrics"]["success_rate"] == pytest.approx(0.85)
    assert back["intervals"]["success_rate"] == pytest.approx(sim["success_rate_ci95"])
    assert back["per_scenario"]["1box_vert_left"]["intervals"]["success_rate"] == pytest.approx(
        sim["per_scenario"]["1box_vert_left"]["success_rate_ci95"]
    )
    assert back["per_scenario"]["1box_vert_left"]["n"] == 10
    assert record.tags()["mobile_vla.closed_loop.protocol"]


def test_per_epoch_rows_become_steps_with_nested_values_joined_by_slash(tmp_path):
    record = read_run_dir(write_run_dir(tmp_path, "r1", epochs=3))
    rows = record.epoch_metrics()
    assert [e for e, _ in rows] == [0, 1, 2]
    assert rows[1][1]["train_loss"] == 0.25
    assert rows[1][1]["val_metrics/mae"] == 0.3
    assert rows[1][1]["improved"] == 1.0 and "epoch" not in rows[1][1]


def test_checkpoint_signature_counts_parameters_from_the_header(tmp_path):
    record = read_run_dir(write_run_dir(tmp_path, "a", hidden_dim=64))
    assert record.checkpoint["trainable_params"] == 64 * 1280 + 64 + 2 * 64
    same = safetensors_signature(write_run_dir(tmp_path, "b", hidden_dim=64, seed=5) / "best.safetensors")
    other = safetensors_signature(write_run_dir(tmp_path, "c", hidden_dim=32) / "best.safetensors")
    assert same["architecture_hash"] == record.checkpoint["architecture_hash"]  # values differ, layout same
    assert other["architecture_hash"] != record.checkpoint["architecture_hash"]


def test_torn_last_jsonl_line_is_dropped_but_a_bad_middle_line_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epo')
    assert read_jsonl(path) == [{"epoch": 0}, {"epoch": 1}]
    path.write_text('{"epoch": 0}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        read_jsonl(path)


def test_a_directory_without_config_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        read_run_dir(tmp_path)


def test_failed_run_records_its_error(tmp_path):
    record = read_run_dir(write_run_dir(tmp_path, "r1", status="failed"))
    assert record.status == "failed"
    assert record.tags()["mobile_vla.error"] == "RuntimeError: boom"
    assert np.isfinite(record.final_metrics()["summary/wall_time_s"])
