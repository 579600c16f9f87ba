"""The standard metrics: agree with scikit-learn / scipy, match the spec on hand-made cases, fail loudly."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import mean_absolute_error, r2_score

from mobile_vla.evaluation.metrics import (
    bootstrap_ci,
    bootstrap_distribution,
    compute_metrics,
    metric_keys,
    metrics_with_intervals,
)

AXES = ("linear_x", "linear_y")
SRC = Path(__file__).resolve().parents[1] / "src"


def _random_pair(n=200, d=2, seed=0):
    rng = np.random.default_rng(seed)
    targets = rng.choice([-1.15, 0.0, 1.15], size=(n, d)) + rng.normal(0, 0.05, size=(n, d))
    predictions = targets + rng.normal(0, 0.3, size=(n, d))
    return predictions, targets


# --- keys and types ---------------------------------------------------------------------------------------


def test_keys_are_exactly_the_spec_keys_in_order():
    pred, targ = _random_pair()
    m = compute_metrics(pred, targ)
    assert list(m) == [
        "n",
        "mae",
        "accuracy_0.3",
        "accuracy_0.2",
        "accuracy_0.15",
        "linear_x_0.3",
        "linear_x_0.2",
        "linear_x_0.15",
        "linear_y_0.3",
        "linear_y_0.2",
        "linear_y_0.15",
        "linear_x_r2",
        "linear_y_r2",
        "linear_x_correlation",
        "linear_y_correlation",
        "tracking_accuracy",
        "direction_accuracy_linear_x",
        "direction_accuracy_linear_y",
        "direction_accuracy_deadzone_linear_x",
        "direction_accuracy_deadzone_linear_y",
        "magnitude_order_accuracy",
    ]
    assert list(m) == metric_keys(AXES)


def test_values_are_plain_python_numbers_and_json_serialisable():
    pred, targ = _random_pair()
    m = compute_metrics(pred.astype(np.float32), targ.astype(np.float32))
    assert type(m["n"]) is int and m["n"] == 200
    assert all(type(v) is float for k, v in m.items() if k != "n")
    assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_threshold_keys_are_written_as_python_prints_the_float():
    pred, targ = _random_pair()
    m = compute_metrics(pred, targ, thresholds=(1, 0.25))
    assert "accuracy_1.0" in m and "accuracy_0.25" in m and "linear_y_1.0" in m


def test_percentages_are_between_0_and_100():
    pred, targ = _random_pair()
    m = compute_metrics(pred, targ)
    for key, value in m.items():
        if key not in ("n", "mae") and not key.endswith(("_r2", "_correlation")):
            assert 0.0 <= value <= 100.0, key


# --- agreement with independent implementations -------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_sklearn_and_scipy_on_random_data(seed):
    rng = np.random.default_rng(seed)
    d = 3
    targ = rng.normal(size=(137, d))
    pred = 0.6 * targ + rng.normal(0, 0.5, size=(137, d))
    axes = ("linear_x", "linear_y", "angular_z")
    m = compute_metrics(pred, targ, axis_names=axes)
    assert m["mae"] == pytest.approx(mean_absolute_error(targ, pred), abs=1e-9)
    for j, axis in enumerate(axes):
        assert m[f"{axis}_r2"] == pytest.approx(r2_score(targ[:, j], pred[:, j]), abs=1e-9)
        assert m[f"{axis}_correlation"] == pytest.approx(pearsonr(pred[:, j], targ[:, j])[0], abs=1e-9)
        assert m[f"{axis}_correlation"] == pytest.approx(np.corrcoef(pred[:, j], targ[:, j])[0, 1], abs=1e-9)
        err = np.abs(pred[:, j] - targ[:, j])
        for t in (0.3, 0.2, 0.15):
            assert m[f"{axis}_{t}"] == pytest.approx(100.0 * np.mean(err < t), abs=1e-9)
        expected_dir = 100.0 * np.mean(np.sign(pred[:, j]) == np.sign(targ[:, j]))
        assert m[f"direction_accuracy_{axis}"] == pytest.approx(expected_dir, abs=1e-9)
    all_err = np.abs(pred - targ)
    for t in (0.3, 0.2, 0.15):
        assert m[f"accuracy_{t}"] == pytest.approx(100.0 * np.mean((all_err < t).all(axis=1)), abs=1e-9)
    assert m["tracking_accuracy"] == pytest.approx(100.0 * np.mean((all_err < 0.5).all(axis=1)), abs=1e-9)
    order = (pred[:, 0] > pred[:, 1]) == (targ[:, 0] > targ[:, 1])
    assert m["magnitude_order_accuracy"] == pytest.approx(100.0 * order.mean(), abs=1e-9)


def test_r2_agrees_with_sklearn_when_a_model_is_worse_than_the_mean():
    targ = np.array([[1.0, -1.0], [2.0, 0.0], [3.0, 1.0]])
    pred = targ[::-1].copy()
    m = compute_metrics(pred, targ)
    assert m["linear_x_r2"] == pytest.approx(r2_score(targ[:, 0], pred[:, 0]), abs=1e-12) == -3.0
    assert m["linear_x_correlation"] == pytest.approx(-1.0)


# --- hand-made cases ---------------------------------------------------------------------------------------


def test_perfect_predictions():
    _, targ = _random_pair()
    m = compute_metrics(targ, targ)
    assert m["mae"] == 0.0
    assert m["accuracy_0.15"] == m["tracking_accuracy"] == m["magnitude_order_accuracy"] == 100.0
    assert m["linear_x_r2"] == m["linear_y_r2"] == 1.0
    assert m["linear_x_correlation"] == pytest.approx(1.0)
    assert m["direction_accuracy_linear_x"] == 100.0


def test_constant_targets_r2_is_sklearns_force_finite_rule():
    # 1.15 is the teleop magnitude: a constant linear_x column is what a short "forward" set looks like.
    targ = np.column_stack([np.full(18, 1.15), np.linspace(-1, 1, 18)])
    imperfect = targ + np.array([0.1, 0.0])
    m = compute_metrics(imperfect, targ)
    assert (
        m["linear_x_r2"] == 0.0
    )  # sklearn documents 0.0 (its float mean of 18 x 1.15 gives ~ -2e27 instead)
    assert m["linear_x_correlation"] == 0.0  # Pearson undefined -> 0
    assert m["linear_y_r2"] == 1.0
    perfect = compute_metrics(targ.copy(), targ)
    assert perfect["linear_x_r2"] == 1.0
    # Where sklearn's float arithmetic sees the constant exactly, it agrees.
    zeros = np.zeros((5, 1))
    assert compute_metrics(zeros + 0.2, zeros, axis_names=("linear_x",))["linear_x_r2"] == r2_score(
        zeros, zeros + 0.2
    )
    assert compute_metrics(zeros, zeros, axis_names=("linear_x",))["linear_x_r2"] == r2_score(zeros, zeros)


def test_constant_predictions_have_zero_correlation_and_sklearn_r2():
    _, targ = _random_pair()
    pred = np.full_like(targ, 0.3)
    m = compute_metrics(pred, targ)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns that the input is constant
        assert np.isnan(pearsonr(pred[:, 0], targ[:, 0])[0])
    assert m["linear_x_correlation"] == 0.0
    assert m["linear_x_r2"] == pytest.approx(r2_score(targ[:, 0], pred[:, 0]), abs=1e-9)
    assert m["linear_x_r2"] < 0  # a constant that is not the mean is worse than the mean


def test_single_sample_uses_the_constant_target_rule():
    m = compute_metrics([[0.5, -0.5]], [[0.5, 0.0]])
    assert m["n"] == 1
    assert m["linear_x_r2"] == 1.0 and m["linear_y_r2"] == 0.0
    assert m["linear_x_correlation"] == 0.0


def test_zeros_in_direction_accuracy_need_an_exact_zero():
    targ = np.array([[0.0, 1.15], [0.0, -1.15], [1.15, 0.0], [-1.15, 0.0]])
    pred = np.array([[0.0, 0.9], [0.01, -0.2], [0.4, -0.0], [-0.3, 1e-6]])
    m = compute_metrics(pred, targ)
    # linear_x: 0==0 right, +0.01 for a stop wrong, + right, - right -> 3/4; -0.0 has sign 0.
    assert m["direction_accuracy_linear_x"] == 75.0
    # linear_y: + right, - right, -0.0 for a stop right, 1e-6 for a stop wrong -> 3/4
    assert m["direction_accuracy_linear_y"] == 75.0


def test_thresholds_are_strictly_less_than():
    targ = np.zeros((4, 2))
    # Exactly representable errors: 0.5 and 0.25 on the threshold, 0.125 below it.
    pred = np.array([[0.25, 0.0], [0.125, 0.0], [0.0, 0.5], [0.0, 0.125]])
    m = compute_metrics(pred, targ, thresholds=(0.25, 0.5))
    assert m["linear_x_0.25"] == 75.0  # the 0.25 error misses
    assert m["accuracy_0.25"] == 50.0  # rows 1 and 3
    assert m["linear_y_0.5"] == 75.0
    assert m["tracking_accuracy"] == 75.0  # 0.5 is not "within 0.5"


def test_magnitude_order_accuracy_on_hand_made_rows():
    targ = np.array([[1.15, 0.0], [0.0, 1.15], [0.0, 0.0], [1.15, 1.15]])
    pred = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.0], [1.0, 1.0]])
    # row 0: T>T right; row 1: pred says x>y, truth not, wrong; row 2: pred x>y, truth equal, wrong; row 3: right
    assert compute_metrics(pred, targ)["magnitude_order_accuracy"] == 50.0


def test_a_single_axis_accepts_1d_input_and_has_no_magnitude_order():
    rng = np.random.default_rng(3)
    targ = rng.normal(size=50)
    pred = targ + rng.normal(0, 0.2, size=50)
    m = compute_metrics(pred, targ, axis_names=("linear_x",))
    assert m == compute_metrics(pred[:, None], targ[:, None], axis_names=("linear_x",))
    assert "magnitude_order_accuracy" not in m
    assert m["linear_x_r2"] == pytest.approx(r2_score(targ, pred), abs=1e-9)


# --- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "targ", "kwargs", "match"),
    [
        (np.zeros((5, 2)), np.zeros((4, 2)), {}, r"shape mismatch: predictions \(5, 2\) vs targets \(4, 2\)"),
        (np.zeros((0, 2)), np.zeros((0, 2)), {}, "empty input"),
        (np.zeros((5, 3)), np.zeros((5, 3)), {}, "D=3 columns but 2 axis_names"),
        (np.zeros(5), np.zeros(5), {}, "1-D array is only accepted for a single axis"),
        (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), {}, r"predictions must have shape \[N, D\]"),
        (np.array([[0.0, np.nan]]), np.zeros((1, 2)), {}, "predictions contain 1 non-finite.*'linear_y'"),
        (np.zeros((2, 2)), np.array([[0.0, 0.0], [np.inf, 0.0]]), {}, "targets contain 1 non-finite.*row 1"),
        (
            np.zeros((2, 2)),
            np.zeros((2, 2)),
            {"thresholds": (0.3, -0.1)},
            "thresholds must be finite and > 0",
        ),
        (np.zeros((2, 2)), np.zeros((2, 2)), {"thresholds": (0.3, 0.3)}, "thresholds must be unique"),
        (np.zeros((2, 2)), np.zeros((2, 2)), {"axis_names": ("x", "x")}, "axis_names must be unique"),
        (np.zeros((2, 2)), np.zeros((2, 2)), {"axis_names": ("accuracy", "y")}, "collide"),
    ],
)
def test_bad_input_raises_value_error_saying_which(pred, targ, kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(pred, targ, **kwargs)


# --- bootstrap ---------------------------------------------------------------------------------------------


def test_bootstrap_interval_contains_the_point_estimate():
    pred, targ = _random_pair(n=300)
    m = compute_metrics(pred, targ)
    for key in ("mae", "accuracy_0.3", "linear_x_r2", "linear_y_correlation", "direction_accuracy_linear_x"):
        low, high = bootstrap_ci(pred, targ, key, n_boot=500)
        assert low < m[key] < high, key


def test_bootstrap_interval_narrows_with_more_samples():
    small = bootstrap_ci(*_random_pair(n=50, seed=4), "mae", n_boot=500)
    large = bootstrap_ci(*_random_pair(n=2000, seed=4), "mae", n_boot=500)
    assert (large[1] - large[0]) < 0.5 * (small[1] - small[0])


def test_bootstrap_is_seeded():
    pred, targ = _random_pair(n=40)
    assert bootstrap_ci(pred, targ, "linear_x_r2", n_boot=200, seed=7) == bootstrap_ci(
        pred, targ, "linear_x_r2", n_boot=200, seed=7
    )
    assert bootstrap_ci(pred, targ, "mae", n_boot=200, seed=7) != bootstrap_ci(
        pred, targ, "mae", n_boot=200, seed=8
    )


def _discrete_pair():
    # Few rows, two target values: many resamples have a constant column, and for these values the float
    # sum of squares of such a resample is not exactly 0 (an exact "constant" test is needed).
    targ = np.array([[0.52, 1.51], [1.04, 0.3]] * 3)
    pred = targ + np.array([0.1, -0.05]) * np.arange(1, 7)[:, None]
    return pred, targ


@pytest.mark.parametrize("data", [lambda: _random_pair(n=40), _discrete_pair], ids=["continuous", "discrete"])
def test_vectorised_bootstrap_equals_metrics_of_each_resample(data):
    pred, targ = data()
    n = len(pred)
    dist = bootstrap_distribution(pred, targ, n_boot=300, seed=5)
    # The resamples are rows drawn with default_rng(seed).integers(0, N, size=(n_boot, N)).
    idx = np.random.default_rng(5).integers(0, n, size=(300, n))
    for b in range(300):
        m = compute_metrics(pred[idx[b]], targ[idx[b]])
        for key in m.keys() - {"n"}:
            assert dist[key][b] == pytest.approx(m[key], abs=1e-9), (b, key)


def test_bootstrap_resamples_that_are_constant_use_the_constant_rule():
    # Two samples: a quarter of the resamples draw the first row twice, making every column constant.
    pred = np.array([[0.5, 0.2], [1.0, 0.9]])
    targ = np.array([[0.4, 0.2], [1.1, 1.0]])
    dist = bootstrap_distribution(pred, targ, n_boot=400, seed=0)
    assert np.all(np.isfinite(dist["linear_x_r2"]))
    corr = dist["linear_y_correlation"]
    assert np.all(np.isclose(corr, 0.0) | np.isclose(corr, 1.0))
    assert np.any(corr == 0.0) and np.any(np.isclose(corr, 1.0))
    # Row 0 twice: linear_y perfect and constant -> 1.0; row 1 twice: constant but off by 0.1 -> 0.0.
    assert 0.15 < np.mean(dist["linear_y_r2"] == 1.0) < 0.35
    assert 0.15 < np.mean(dist["linear_y_r2"] == 0.0) < 0.35


def test_metrics_with_intervals_shape_and_consistency():
    pred, targ = _random_pair(n=120)
    result = metrics_with_intervals(pred, targ, n_boot=200, seed=3)
    assert result["n"] == 120 == result["metrics"]["n"]
    assert result["metrics"] == compute_metrics(pred, targ)
    assert set(result["intervals"]) == set(result["metrics"]) - {"n"}
    assert result["intervals"]["linear_y_r2"] == list(
        bootstrap_ci(pred, targ, "linear_y_r2", n_boot=200, seed=3)
    )
    for low, high in result["intervals"].values():
        assert low <= high
    assert result["bootstrap"] == {
        "n_boot": 200,
        "seed": 3,
        "confidence": 0.95,
        "method": "percentile",
        "resample": "frame",
    }
    json.dumps(result, allow_nan=False)


def test_bootstrap_rejects_unknown_keys_and_bad_n_boot():
    pred, targ = _random_pair(n=10)
    with pytest.raises(ValueError, match="unknown metric_key 'n'"):
        bootstrap_ci(pred, targ, "n")
    with pytest.raises(ValueError, match="n_boot must be a positive integer"):
        bootstrap_ci(pred, targ, "mae", n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(pred, targ, "mae", alpha=1.5)


def test_bootstrap_of_a_few_thousand_samples_is_fast():
    import time

    pred, targ = _random_pair(n=3000)
    start = time.perf_counter()
    metrics_with_intervals(pred, targ, n_boot=1000)
    # Typically ~0.1 s; the bound leaves room for 2 shared cores under load.
    assert time.perf_counter() - start < 3.0


# --- CLI ---------------------------------------------------------------------------------------------------


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "mobile_vla.cli", "metrics", *args], capture_output=True, text=True, env=env
    )


def test_cli_json_end_to_end(tmp_path):
    pred, targ = _random_pair(n=80)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", targ)
    out = _cli("--predictions", str(tmp_path / "p.npy"), "--targets", str(tmp_path / "t.npy"), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["n"] == 80
    assert result["metrics"]["mae"] == pytest.approx(mean_absolute_error(targ, pred), abs=1e-12)
    assert result["intervals"] == metrics_with_intervals(pred, targ)["intervals"]


def test_cli_table_names_n_and_intervals(tmp_path):
    pred, targ = _random_pair(n=60, d=3)
    np.savez(tmp_path / "preds.npz", predictions=pred, targets=targ)
    npz = str(tmp_path / "preds.npz")
    out = _cli("--predictions", npz, "--targets", npz, "--axes", "vx,vy,wz", "--n-boot", "100")
    assert out.returncode == 0, out.stderr
    assert "n = 60 samples" in out.stdout and "95% interval" in out.stdout
    assert "direction_accuracy_wz" in out.stdout


def test_cli_errors_name_the_file_and_exit_2(tmp_path):
    np.save(tmp_path / "p.npy", np.zeros((5, 2)))
    np.save(tmp_path / "t.npy", np.zeros((4, 2)))
    missing = _cli("--predictions", str(tmp_path / "nope.npy"), "--targets", str(tmp_path / "t.npy"))
    assert missing.returncode == 2 and "nope.npy" in missing.stderr and "not found" in missing.stderr
    shape = _cli("--predictions", str(tmp_path / "p.npy"), "--targets", str(tmp_path / "t.npy"))
    assert shape.returncode == 2 and "t.npy" in shape.stderr and "(4, 2)" in shape.stderr
    (tmp_path / "junk.npy").write_text("not numpy")
    junk = _cli("--predictions", str(tmp_path / "junk.npy"), "--targets", str(tmp_path / "t.npy"))
    assert junk.returncode == 2 and "junk.npy" in junk.stderr
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 0.0]] * 4))
    nan = _cli("--predictions", str(tmp_path / "nan.npy"), "--targets", str(tmp_path / "t.npy"))
    assert nan.returncode == 2 and "non-finite" in nan.stderr and "nan.npy" in nan.stderr
