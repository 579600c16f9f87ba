"""The lab's task in MuJoCo: scenes, the scripted expert, demonstrations and closed-loop evaluation.

    from mobile_vla.sim import LabEnv, SimConfig, ExpertPolicy, collect_episodes, evaluate_closed_loop
    env = LabEnv(SimConfig(image_size=(224, 224)))
    frame = env.reset("2box_vert_left_core_medium", seed=0)    # uint8 [224, 224, 3]
    env.step([1.15, 0.0], ("linear_x", "linear_y"))            # one W press: 0.4 s at 0.5 m/s
    evaluate_closed_loop("expert", episodes=48, seed=0)         # {"success_rate": ..., "per_scenario": ...}

Modules: `layouts` (scenario -> where things stand), `scene` (the MuJoCo model and renderer), `env` (motion,
collisions, success), `planner` (routes and key-press plans), `expert` (scripted and random policies),
`collect` (HDF5 demonstrations), `evaluate` (closed loop), `video` (annotated GIFs).
"""

from mobile_vla.sim.collect import CollectionReport, collect_episodes
from mobile_vla.sim.env import KEY_COMMAND, LabEnv, SimConfig, StepResult
from mobile_vla.sim.evaluate import evaluate_closed_loop, run_episode, summarize
from mobile_vla.sim.expert import KEYS, ExpertPolicy, RandomPolicy, key_for_action
from mobile_vla.sim.layouts import Layout, all_scenarios, resolve_scenarios, sample_layout
from mobile_vla.sim.seeds import episode_seed

__all__ = [
    "KEYS",
    "KEY_COMMAND",
    "CollectionReport",
    "ExpertPolicy",
    "LabEnv",
    "Layout",
    "RandomPolicy",
    "SimConfig",
    "StepResult",
    "all_scenarios",
    "collect_episodes",
    "episode_seed",
    "evaluate_closed_loop",
    "key_for_action",
    "resolve_scenarios",
    "run_episode",
    "sample_layout",
    "summarize",
]
