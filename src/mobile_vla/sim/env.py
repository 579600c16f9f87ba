"""The lab's task as an environment: reset to a scenario, see the camera frame, send a velocity command.

Motion model (the lab's, as its collector and inference node use the robot): a command is a body-frame
velocity `[linear_x, linear_y, angular_z]` in the robot's units (a key press is 1.15 on an axis); it is held for
`control_period` (0.4 s) and then the robot stops. `speed_per_unit` converts units to m/s: by default a key
press (1.15) drives at 0.5 m/s, so one press moves 0.2 m and an episode's 17 presses cover up to 3.4 m; the
boxes and the bottle are placed so that the way around them takes 8 to 16 presses. The base is kinematic:
the pose advances in `substeps` small moves and MuJoCo checks each for overlap; on a collision the robot stays
at its last free pose and the episode counts as failed.

Departure from the robot, on purpose: the lab's inference node ticks every 0.3 s and holds each action 0.4 s
(the holds overlap by 0.1 s); here every action is held 0.4 s with no overlap, exactly like the collector's key
presses, so demonstrations and closed-loop rollouts share one motion model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from mobile_vla.data.episodes import ACTION_AXES, Scenario
from mobile_vla.sim.layouts import Layout, sample_layout
from mobile_vla.sim.planner import shortest_path_length
from mobile_vla.sim.scene import MAX_IMAGE_SIDE, Scene

KEY_COMMAND = 1.15
"""A teleoperation key press: each axis is -1.15, 0 or +1.15 (not calibrated m/s)."""


@dataclass
class SimConfig:
    """How the simulated robot moves, sees and is judged.

    Attributes:
        image_size: (height, width) of the camera frames; the robot's camera is 720x1280, models see 224x224.
            Any size up to 1280 on each side shows the same 16:9 field of view, stretched to the shape.
        control_period: seconds each command is held before the robot stops (the lab's 0.4 s).
        speed_per_unit: m/s per command unit on linear_x/linear_y (0.5/1.15: a key press drives at 0.5 m/s).
        angular_speed_per_unit: rad/s per command unit on angular_z (0.5/1.15: a press turns at 0.5 rad/s).
        max_command: commands are clipped to +-this per axis (the keyboard's 1.15).
        substeps: collision checks per control period (10: every 2 cm at full speed).
        motion_noise: relative standard deviation of the speed actually achieved per command and axis (wheel
            slip); 0 makes motion exact.
        goal_tolerance: success needs the robot's centre within this distance (m) of the goal point in front
            of the bottle.
        heading_tolerance_deg: success needs the bottle within this angle of the robot's heading.
        stop_on_collision: end the episode at the first collision (it has failed anyway).
        hfov_deg: the camera's horizontal field of view; camera_height (m) and camera_tilt_deg (downwards).
        shadows: render shadows (about 2x slower on a CPU renderer).
    """

    image_size: tuple[int, int] = (224, 224)
    control_period: float = 0.4
    speed_per_unit: float = 0.5 / KEY_COMMAND
    angular_speed_per_unit: float = 0.5 / KEY_COMMAND
    max_command: float = KEY_COMMAND
    substeps: int = 10
    motion_noise: float = 0.03
    goal_tolerance: float = 0.2
    heading_tolerance_deg: float = 30.0
    stop_on_collision: bool = True
    hfov_deg: float = 80.0
    camera_height: float = 0.30
    camera_tilt_deg: float = 20.0
    shadows: bool = False

    def __post_init__(self):
        self.image_size = tuple(int(v) for v in self.image_size)
        if len(self.image_size) != 2 or not all(0 < v <= MAX_IMAGE_SIDE for v in self.image_size):
            raise ValueError(
                f"SimConfig.image_size must be (height, width) with each in 1..{MAX_IMAGE_SIDE}, "
                f"got {self.image_size}"
            )
        for name in ("control_period", "speed_per_unit", "max_command", "goal_tolerance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SimConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.substeps < 1:
            raise ValueError(f"SimConfig.substeps must be >= 1, got {self.substeps}")
        if not 0 <= self.motion_noise < 0.5:
            raise ValueError(f"SimConfig.motion_noise must be in [0, 0.5), got {self.motion_noise}")
        if not 0 < self.heading_tolerance_deg <= 180:
            raise ValueError(
                f"SimConfig.heading_tolerance_deg must be in (0, 180], got {self.heading_tolerance_deg}"
            )
        if not 10 <= self.hfov_deg <= 170:
            raise ValueError(f"SimConfig.hfov_deg must be in [10, 170], got {self.hfov_deg}")

    @property
    def press_distance(self) -> float:
        """How far one key press (1.15 on one axis) moves the robot (m)."""
        return KEY_COMMAND * self.speed_per_unit * self.control_period

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepResult:
    """What one held command did."""

    collided: bool
    moved: float  # distance travelled (m)
    contacts: list[str] = field(default_factory=list)


def full_action(action: Sequence[float] | np.ndarray, action_dims: Sequence[str] = ACTION_AXES) -> np.ndarray:
    """A command over `action_dims` (e.g. `linear_x, linear_y`) as the full `[linear_x, linear_y, angular_z]`."""
    values = np.asarray(action, dtype=np.float64).reshape(-1)
    if len(values) != len(action_dims):
        raise ValueError(
            f"action has {len(values)} values but action_dims {tuple(action_dims)} name {len(action_dims)}"
        )
    unknown = [d for d in action_dims if d not in ACTION_AXES]
    if unknown:
        raise ValueError(f"unknown action dims {unknown}; expected names from {ACTION_AXES}")
    full = np.zeros(3)
    for name, value in zip(action_dims, values, strict=True):
        full[ACTION_AXES.index(name)] = value
    if not np.all(np.isfinite(full)):
        raise ValueError(f"action must be finite, got {values.tolist()}")
    return full


class LabEnv:
    """The lab's navigation task in MuJoCo. Compile once, then `reset` per episode.

    >>> env = LabEnv(SimConfig(image_size=(64, 64)))
    >>> frame = env.reset("1box_vert_left_core_medium", seed=0)   # uint8 [64, 64, 3]
    >>> result = env.step([1.15, 0.0])                           # one W press, held 0.4 s
    >>> env.outcome()["success"]
    """

    def __init__(self, config: SimConfig | None = None):
        self.config = config or SimConfig()
        c = self.config
        self.scene = Scene(c.camera_height, c.camera_tilt_deg, c.hfov_deg, shadows=c.shadows)
        self.layout: Layout | None = None
        self._rng = np.random.default_rng(0)
        self.pose = np.zeros(3)  # x, y, yaw
        self.collided = False
        self.contacts: list[str] = []
        self.path_length = 0.0
        self.steps = 0
        self.max_steps: int | None = None
        self.trajectory: list[np.ndarray] = []

    # --- episode -----------------------------------------------------------------------------------

    def reset(
        self, scenario: Scenario | str | Layout, seed: int = 0, max_steps: int | None = None
    ) -> np.ndarray:
        """Start an episode; returns the first camera frame. Same (scenario, seed) -> same episode.

        `max_steps` is the episode's step budget if there is one (a policy may ask `steps_left`)."""
        self.layout = scenario if isinstance(scenario, Layout) else sample_layout(scenario, seed)
        # the motion noise has its own stream so that the layout does not depend on how long episodes run
        self._rng = np.random.default_rng([self.layout.seed, 0x6D6F7665])
        self.scene.apply_layout(self.layout)
        self.pose = np.zeros(3)
        self.scene.set_pose(*self.pose)
        self.collided = False
        self.contacts = []
        self.path_length = 0.0
        self.steps = 0
        self.max_steps = max_steps
        self.trajectory = [self.pose.copy()]
        self._reference_length = shortest_path_length(self.layout)
        return self.render()

    @property
    def steps_left(self) -> int | None:
        return None if self.max_steps is None else self.max_steps - self.steps

    @property
    def scenario(self) -> Scenario:
        return self._require_layout().scenario

    @property
    def instruction(self) -> str:
        return self.scenario.instruction

    def _require_layout(self) -> Layout:
        if self.layout is None:
            raise RuntimeError("call LabEnv.reset(scenario, seed) before using the environment")
        return self.layout

    def render(self, size: tuple[int, int] | None = None, camera: str = "ego") -> np.ndarray:
        """The robot's camera frame (uint8 [H, W, 3]) at the current pose."""
        height, width = size or self.config.image_size
        return self.scene.render(height, width, camera)

    # --- motion ------------------------------------------------------------------------------------

    def step(
        self, action: Sequence[float] | np.ndarray, action_dims: Sequence[str] = ACTION_AXES
    ) -> StepResult:
        """Hold a body-frame command for one control period, then stop.

        `action` is over `action_dims` (e.g. `("linear_x", "linear_y")`); missing axes are 0. Commands are
        clipped to +-`max_command`. After a collision the robot no longer moves.
        """
        self._require_layout()
        c = self.config
        command = np.clip(full_action(action, action_dims), -c.max_command, c.max_command)
        self.steps += 1
        if self.collided and c.stop_on_collision:
            return StepResult(collided=True, moved=0.0, contacts=self.contacts)
        velocity = command * np.array([c.speed_per_unit, c.speed_per_unit, c.angular_speed_per_unit])
        if c.motion_noise > 0 and np.any(command != 0):
            velocity = velocity * (1.0 + c.motion_noise * self._rng.standard_normal(3))
        dt = c.control_period / c.substeps
        moved = 0.0
        x, y, yaw = self.pose
        for _ in range(c.substeps):
            new_yaw = yaw + velocity[2] * dt
            mid = (yaw + new_yaw) / 2  # integrate the body-frame velocity at the substep's mean heading
            cos, sin = math.cos(mid), math.sin(mid)
            dx = (cos * velocity[0] - sin * velocity[1]) * dt
            dy = (sin * velocity[0] + cos * velocity[1]) * dt
            self.scene.set_pose(x + dx, y + dy, new_yaw)
            contacts = self.scene.contacts()
            if contacts:
                self.scene.set_pose(x, y, yaw)  # stay at the last free pose
                self.collided = True
                self.contacts = sorted(set(contacts))
                break
            x, y, yaw = x + dx, y + dy, new_yaw
            moved += math.hypot(dx, dy)
        self.pose = np.array([x, y, yaw])
        self.path_length += moved
        self.trajectory.append(self.pose.copy())
        return StepResult(collided=self.collided, moved=moved, contacts=list(self.contacts))

    # --- judging -----------------------------------------------------------------------------------

    def distance_to_goal(self) -> float:
        goal = self._require_layout().goal
        return float(math.hypot(self.pose[0] - goal[0], self.pose[1] - goal[1]))

    def heading_error_deg(self) -> float:
        """Angle between the robot's heading and the direction to the bottle (degrees)."""
        bottle = self._require_layout().bottle
        bearing = math.atan2(bottle.y - self.pose[1], bottle.x - self.pose[0])
        error = (bearing - self.pose[2] + math.pi) % (2 * math.pi) - math.pi
        return abs(math.degrees(error))

    def at_goal(self) -> bool:
        c = self.config
        return (
            self.distance_to_goal() <= c.goal_tolerance
            and self.heading_error_deg() <= c.heading_tolerance_deg
        )

    def outcome(self) -> dict:
        """How the episode stands now: success = at the goal, facing the bottle, never collided."""
        success = self.at_goal() and not self.collided
        reference = self._reference_length
        spl = reference / max(self.path_length, reference) if success else 0.0
        return {
            "success": bool(success),
            "collided": bool(self.collided),
            "contacts": list(self.contacts),
            "distance_to_goal": self.distance_to_goal(),
            "heading_error_deg": self.heading_error_deg(),
            "path_length": float(self.path_length),
            "shortest_path_length": float(reference),
            "spl": float(spl),
            "steps": self.steps,
        }

    def close(self) -> None:
        self.scene.close()
