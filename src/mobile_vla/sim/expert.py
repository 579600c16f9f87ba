"""Scripted policies for the simulator: the expert that demonstrates the task, and a random baseline.

The expert is privileged: it reads the robot's pose and the layout from the environment instead of the image
(the image and instruction arguments are there only to satisfy the `ControlPolicy` interface). Each step it
re-plans from where the robot actually is, so wheel slip never accumulates.

- `teleop` style, like the lab's operator: each command is one key, every axis -1.15, 0 or +1.15. It greedily
  presses the key that shortens the route to the goal the most (never one that would take the robot within
  `safety` of an obstacle), and stops (sends 0) once no key helps. The route length it minimises is taken
  around the boxes grown by just the safety margin, plus a cost for coming closer than `route_clearance`: a
  press moves 0.2 m, so the robot cannot always keep a wide berth and still turn in towards the bottle. For a `core` placement it uses only W/A/S/D
  and keeps pressing a key while it still helps nearly as much as the best one, which gives the guides' runs
  (`W W W A A W W D D`); for a `variant` it also uses the diagonal keys Q/E/Z/C, breaks near-ties at random
  and sometimes waits a press (the operator "changed timing or order").
- `continuous` style: a velocity along the shortest route, up to a full key press per axis, slowing down to
  stop exactly on the goal.
"""

from __future__ import annotations

import math

import numpy as np

from mobile_vla.sim.env import KEY_COMMAND, LabEnv
from mobile_vla.sim.layouts import Layout
from mobile_vla.sim.planner import RoutePlanner, clearance_at, plan_key_presses, side_block
from mobile_vla.sim.scene import ROOM

KEYS: dict[str, tuple[float, float]] = {
    "W": (1.0, 0.0),
    "S": (-1.0, 0.0),
    "A": (0.0, 1.0),
    "D": (0.0, -1.0),
    "Q": (1.0, 1.0),
    "E": (1.0, -1.0),
    "Z": (-1.0, 1.0),
    "C": (-1.0, -1.0),
}
"""The lab's teleoperation keys as (linear_x, linear_y) directions; each component is scaled by 1.15."""
STYLES = ("teleop", "continuous")


def key_for_action(action, tolerance: float = 0.05) -> str:
    """The key a command corresponds to (`W`, `Q`, ...), `stop` for zero, or `-` for anything else."""
    a = np.zeros(3)
    values = np.asarray(action, dtype=float).reshape(-1)[:3]
    a[: len(values)] = values
    if np.all(np.abs(a) < tolerance):
        return "stop"
    if abs(a[2]) < tolerance:
        for key, (kx, ky) in KEYS.items():
            if abs(a[0] - kx * KEY_COMMAND) < tolerance and abs(a[1] - ky * KEY_COMMAND) < tolerance:
                return key
    return "-"


class ExpertPolicy:
    """The scripted expert (a `ControlPolicy` that reads the state of `env`)."""

    action_dims = ("linear_x", "linear_y", "angular_z")
    default_budget = 17  # presses planned ahead when the environment sets no step budget

    def __init__(
        self,
        env: LabEnv,
        style: str = "teleop",
        keys: str | None = None,
        route_clearance: float = 0.1,
        safety: float = 0.03,
        pause_probability: float | None = None,
        seed: int = 0,
    ):
        if style not in STYLES:
            raise ValueError(f"expert style must be one of {STYLES}, got {style!r}")
        if keys is not None and (not keys or set(keys) - set(KEYS)):
            raise ValueError(f"keys must be letters from {''.join(KEYS)}, got {keys!r}")
        self.env = env
        self.style = style
        self.keys = keys
        self.route_clearance = route_clearance
        self.safety = safety
        self.pause_probability = pause_probability
        self.seed = seed
        self._layout: Layout | None = None
        self._planner: RoutePlanner | None = None
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        self._layout = None

    def _plan(self) -> tuple[Layout, RoutePlanner]:
        layout = self.env._require_layout()
        if layout is not self._layout:
            self._layout = layout
            self._planner = RoutePlanner(layout, clearance=self.route_clearance)
            self._rng = np.random.default_rng([self.seed, layout.seed])
        return layout, self._planner

    def _safe(self, layout: Layout, p: np.ndarray, q: np.ndarray) -> bool:
        """Whether moving straight from p to q keeps at least `safety` from every obstacle."""
        samples = np.linspace(0.0, 1.0, max(2, int(np.linalg.norm(q - p) / 0.02) + 1))
        return bool(clearance_at(layout, p + samples[:, None] * (q - p), ROOM).min() >= self.safety)

    def act(self, image: np.ndarray | None = None, instruction: str | None = None) -> np.ndarray:
        """The next command `[linear_x, linear_y, angular_z]` for the robot's current pose."""
        layout, planner = self._plan()
        if self.style == "teleop":
            return self._act_teleop(layout, planner)
        return self._act_continuous(layout, planner)

    # --- teleop ------------------------------------------------------------------------------------

    def _act_teleop(self, layout: Layout, planner: RoutePlanner) -> np.ndarray:
        env = self.env
        variant = layout.scenario.pattern == "variant"
        keys = self.keys or ("WASDQEZC" if variant else "WASD")
        yaw = float(env.pose[2])
        cos, sin = math.cos(yaw), math.sin(yaw)
        step = env.config.press_distance
        moves = {
            k: step * np.array([cos * KEYS[k][0] - sin * KEYS[k][1], sin * KEYS[k][0] + cos * KEYS[k][1]])
            for k in keys
        }
        budget = env.steps_left if env.steps_left is not None else self.default_budget
        plan = plan_key_presses(
            layout,
            env.pose[:2].copy(),
            moves,
            budget=max(0, min(budget, self.default_budget)),
            room=ROOM,
            safety=self.safety,
            comfort=self.route_clearance,
            change_penalty=0.0 if variant else 0.3,
            blocked=side_block(layout),
            noise=0.3 if variant else 0.0,
            rng=self._rng,
        )
        if not plan.keys:
            return np.zeros(3)
        pause = self.pause_probability
        if pause is None:
            pause = 0.1 if variant else 0.0
        if pause > 0 and budget - len(plan.keys) >= 1 and self._rng.random() < pause:
            return np.zeros(3)  # the operator waits a beat
        kx, ky = KEYS[plan.keys[0]]
        return np.array([kx * KEY_COMMAND, ky * KEY_COMMAND, 0.0])

    # --- continuous --------------------------------------------------------------------------------

    def _act_continuous(self, layout: Layout, planner: RoutePlanner) -> np.ndarray:
        env = self.env
        c = env.config
        p, yaw = env.pose[:2].copy(), float(env.pose[2])
        if env.distance_to_goal() < 0.02 and abs(yaw) < 0.02:
            return np.zeros(3)
        # the farthest one command moves the robot along an axis
        per_axis = c.max_command * c.speed_per_unit * c.control_period
        target = planner.point_along(p, per_axis * math.sqrt(2))
        if not self._safe(layout, p, target):  # cutting a corner too tightly: go to the corner itself
            target = planner.point_along(p, float(np.linalg.norm(planner.route(p)[0] - p)))
            if not self._safe(layout, p, target):
                target = p + (target - p) * 0.5
        displacement = target - p
        largest = np.abs(displacement).max()
        if largest > per_axis:
            displacement *= per_axis / largest
        world = displacement / (c.speed_per_unit * c.control_period)
        cos, sin = math.cos(yaw), math.sin(yaw)
        body = np.array([cos * world[0] + sin * world[1], -sin * world[0] + cos * world[1]])
        turn = -math.atan2(math.sin(yaw), math.cos(yaw)) / (c.angular_speed_per_unit * c.control_period)
        return np.array([*body, np.clip(turn, -c.max_command, c.max_command)])


class RandomPolicy:
    """A baseline: a uniformly random teleoperation key (one of the eight) every step."""

    action_dims = ("linear_x", "linear_y")

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def act(self, image: np.ndarray | None = None, instruction: str | None = None) -> np.ndarray:
        kx, ky = KEYS["WSADQEZC"[int(self._rng.integers(8))]]
        return np.array([kx * KEY_COMMAND, ky * KEY_COMMAND])
