"""Honest ranking rules: like with like, no dummies among real runs, overlapping intervals are ties."""

from mobile_vla.registry.ranking import assign_ranks, rank_runs
from mobile_vla.registry.record import StoredRun, closed_loop_metrics, evaluation_metrics, ids_fingerprint


def run(
    name,
    mae,
    ci,
    *,
    case="case1",
    dataset="aaaa",
    provenance="real",
    pretrained=True,
    status="FINISHED",
    test_ids=("e1", "e2"),
    closed=None,
    protocol="p1",
    n=50,
):
    """A stored run with a test MAE (and optionally a closed-loop success rate), encoded as the store keeps it."""
    low, high = ci
    metrics = evaluation_metrics("test", {"n": n, "metrics": {"mae": mae}, "intervals": {"mae": [low, high]}})
    tags = {
        "mobile_vla.case": case,
        "mobile_vla.dataset.fingerprint": dataset,
        "mobile_vla.dataset.provenance": provenance,
        "mobile_vla.backbone.pretrained": "true" if pretrained else "false",
        "mobile_vla.split.test.fingerprint": ids_fingerprint(test_ids),
    }
    if closed is not None:
        rate, (c_low, c_high), episodes = closed
        metrics.update(
            closed_loop_metrics(
                {"success_rate": rate, "n": episodes, "intervals": {"success_rate": [c_low, c_high]}}
            )
        )
        tags["mobile_vla.closed_loop.protocol"] = protocol
    return StoredRun(name, name, status, 0, None, tags, {}, metrics)


def ranks(group):
    return {s.run.name: s.rank for s in group.scores}


def test_runs_on_different_datasets_are_never_ranked_together():
    ranking = rank_runs(
        [run("a1", 0.2, (0.1, 0.3)), run("b1", 0.9, (0.8, 1.0), dataset="bbbb"), run("a2", 0.5, (0.45, 0.55))]
    )
    assert len(ranking.groups) == 2
    by_dataset = {g.dataset: ranks(g) for g in ranking.groups}
    assert by_dataset == {"aaaa": {"a1": 1, "a2": 2}, "bbbb": {"b1": 1}}


def test_same_dataset_but_different_test_episodes_is_a_different_group():
    ranking = rank_runs([run("a1", 0.2, (0.1, 0.3)), run("a2", 0.5, (0.45, 0.55), test_ids=("e3",))])
    assert len(ranking.groups) == 2


def test_synthetic_and_random_weight_runs_are_separated_never_ranked():
    runs = [
        run("real", 0.5, (0.45, 0.55)),
        run("dummy", 0.01, (0.0, 0.02), provenance="synthetic"),
        run("random", 0.02, (0.0, 0.03), pretrained=False),
        run("mixed", 0.02, (0.0, 0.03), provenance="mixed"),
    ]
    ranking = rank_runs(runs)
    ranked = [s.run.name for g in ranking.groups for s in g.scores]
    assert ranked == ["real"]
    reasons = {r.name: why for r, why in ranking.separate}
    assert reasons["dummy"] == "synthetic data"
    assert reasons["random"] == "random-weight backbone"
    assert "mixed" in reasons["mixed"]


def test_overlapping_intervals_are_tied_not_ordered():
    ranking = rank_runs(
        [run("a", 0.20, (0.15, 0.26)), run("b", 0.24, (0.19, 0.30)), run("c", 0.60, (0.55, 0.65))]
    )
    group = ranking.groups[0]
    assert ranks(group) == {"a": 1, "b": 1, "c": 3}
    tied = {s.run.name: s.tied_with for s in group.scores}
    assert tied == {"a": ["b"], "b": ["a"], "c": []}


def test_a_chain_of_overlaps_is_one_tie_group_so_no_overlapping_pair_is_ordered():
    # a overlaps b, b overlaps c, a does not overlap c: still no pair that overlaps gets different ranks.
    scores = rank_runs(
        [run("a", 0.20, (0.18, 0.25)), run("b", 0.26, (0.24, 0.31)), run("c", 0.32, (0.30, 0.36))]
    ).groups[0]
    assert set(ranks(scores).values()) == {1}


def test_lower_mae_ranks_first_when_intervals_are_apart():
    group = rank_runs([run("worse", 0.6, (0.55, 0.65)), run("better", 0.2, (0.15, 0.25))]).groups[0]
    assert [s.run.name for s in group.scores] == ["better", "worse"]
    assert group.key == "test/mae" and not group.higher_is_better


def test_closed_loop_success_is_the_key_when_every_run_has_it():
    runs = [
        # offline MAE says "a" is better; the robot task says "b" is
        run("a", 0.2, (0.15, 0.25), closed=(0.30, (0.15, 0.50), 20)),
        run("b", 0.6, (0.55, 0.65), closed=(0.95, (0.76, 0.99), 20)),
    ]
    group = rank_runs(runs).groups[0]
    assert group.key == "closed_loop/success_rate" and group.higher_is_better
    assert [(s.run.name, s.rank) for s in group.scores] == [("b", 1), ("a", 2)]
    assert group.scores[0].n == 20


def test_mae_is_the_key_when_closed_loop_is_missing_or_measured_differently():
    partial = [run("a", 0.2, (0.15, 0.25), closed=(0.3, (0.1, 0.5), 20)), run("b", 0.6, (0.55, 0.65))]
    group = rank_runs(partial).groups[0]
    assert group.key == "test/mae" and "not every run" in group.note
    different = [
        run("a", 0.2, (0.15, 0.25), closed=(0.3, (0.1, 0.5), 20), protocol="p1"),
        run("b", 0.6, (0.55, 0.65), closed=(0.9, (0.7, 0.97), 20), protocol="p2"),
    ]
    group = rank_runs(different).groups[0]
    assert group.key == "test/mae" and "different protocols" in group.note


def test_unfinished_and_unevaluated_runs_are_excluded_with_a_reason():
    failed = run("failed", 0.1, (0.05, 0.15), status="FAILED")
    bare = StoredRun("bare", "bare", "FINISHED", 0, None, dict(run("x", 0.1, (0, 1)).tags), {}, {})
    ranking = rank_runs([failed, bare, run("ok", 0.3, (0.2, 0.4))])
    reasons = {r.name: why for r, why in ranking.excluded}
    assert reasons["failed"] == "run failed"
    assert "not evaluated on test" in reasons["bare"]


def test_a_value_without_an_interval_is_listed_but_not_placed():
    no_ci = run("no_ci", 0.1, (0.05, 0.15))
    no_ci.metrics = {k: v for k, v in no_ci.metrics.items() if "/ci_" not in k}
    group = rank_runs([no_ci, run("ok", 0.3, (0.2, 0.4))]).groups[0]
    assert ranks(group) == {"ok": 1}
    assert [(r.name, why) for r, why in group.unranked] == [("no_ci", "no interval for test/mae")]


def test_dataset_filter_keeps_only_matching_fingerprints():
    ranking = rank_runs([run("a", 0.2, (0.1, 0.3)), run("b", 0.2, (0.1, 0.3), dataset="bbbb")], dataset="bb")
    assert [g.dataset for g in ranking.groups] == ["bbbb"]


def test_competition_ranks_after_a_tie():
    group = rank_runs(
        [run("a", 0.1, (0.09, 0.11)), run("b", 0.105, (0.1, 0.12)), run("c", 0.5, (0.4, 0.6))]
    ).groups[0]
    assert [s.rank for s in group.scores] == [1, 1, 3]
    assert assign_ranks([], higher_is_better=False) == []


def test_between_equal_estimates_the_smaller_model_comes_first():
    runs = [
        run("big", 0.2, (0.15, 0.25), closed=(0.92, (0.84, 0.96), 96)),
        run("small", 0.3, (0.25, 0.35), closed=(0.92, (0.84, 0.96), 96)),
        run("unknown", 0.3, (0.25, 0.35), closed=(0.92, (0.84, 0.96), 96)),
    ]
    runs[0].metrics["model/trainable_params"] = 15_000_000.0
    runs[1].metrics["model/trainable_params"] = 850_000.0
    group = rank_runs(runs).groups[0]
    assert [(s.run.name, s.rank) for s in group.scores] == [("small", 1), ("big", 1), ("unknown", 1)]
