"""The robot's path end to end: a trained run served over HTTP drives the simulator exactly as in process."""

import numpy as np
import pytest

from mobile_vla.serving.app import ServerConfig, create_app
from mobile_vla.serving.client import VLAClient
from mobile_vla.serving.loading import load_for_serving
from mobile_vla.serving.server import BackgroundServer
from mobile_vla.sim.env import SimConfig
from mobile_vla.sim.evaluate import evaluate_closed_loop


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory):
    from mobile_vla.sim.collect import collect_episodes
    from mobile_vla.training.config import resolve_train_config
    from mobile_vla.training.trainer import Trainer

    root = tmp_path_factory.mktemp("robot_path")
    config = SimConfig(image_size=(64, 64))
    collect_episodes(root / "episodes", 8, seed=3, config=config, progress=False)
    train = resolve_train_config(
        "case1", overrides={"backbone": "kosmos2-tiny", "epochs": 2, "frame_selection": "all"}
    )
    Trainer(train, root / "episodes", root / "run", progress=False).fit()
    return root / "run", config


def test_the_simulator_reaches_the_same_result_through_the_server_as_in_process(sim_run):
    run_dir, config = sim_run
    policy, metadata = load_for_serving(str(run_dir), device="cpu")
    # One episode at a time, like the client: a batched backbone pass differs from a single one in the ulps.
    in_process = evaluate_closed_loop(policy, episodes=4, seed=7, config=config, progress=False, lockstep=1)
    app = create_app(policy, metadata, ServerConfig(api_key="test-key"))
    with BackgroundServer(app) as server:
        client = VLAClient(server.url, api_key="test-key", timeout=30.0)
        served = evaluate_closed_loop(client, episodes=4, seed=7, config=config, progress=False)
        assert client.stats.stops == {} and client.stats.requests > 0  # every action came from the model
    assert served["n"] == in_process["n"] == 4
    assert served["success_rate"] == in_process["success_rate"]
    assert served["collision_rate"] == in_process["collision_rate"]
    for a, b in zip(in_process["records"], served["records"], strict=True):
        assert (a["steps"], a["success"], a["collided"]) == (b["steps"], b["success"], b["collided"])
        np.testing.assert_allclose(a["actions"], b["actions"], atol=1e-5)
        assert abs(a["distance_to_goal"] - b["distance_to_goal"]) < 1e-4
