"""The lab's scenarios as physical layouts: where the boxes and the bottle stand, and where the robot must stop.

Frame: the robot starts at the origin facing +x (forward); +y is the robot's left. Units are metres.

A scenario `{1box,2box}_{vert,hori}_{left,right}_{core,variant}_{close,medium,far}` becomes a `Layout`:

- `close`/`medium`/`far`: how far the near face of the (first) box is from the robot's centre (0.5/0.75/1.0 m).
- `vert`: one box longer along the direction of travel, or two boxes one behind the other (20 cm apart);
  `hori`: one box wider across it, or two boxes side by side (too close together to drive between).
- The bottle stands behind the boxes, roughly on the robot's start line; `left`/`right` is the side on which
  the robot goes around the boxes, which only the instruction tells (as in the lab's data).
- The goal is the point `standoff` (0.45 m) in front of the bottle, on the robot's side of it.
- `core` placements are nominal with a little jitter (a lab re-places boxes by hand); `variant` ones jitter
  positions, sizes, box angle, colours, the drink and the lighting in full.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mobile_vla.data.episodes import Scenario, parse_scenario

ROBOT_RADIUS = 0.15
"""Radius of the robot's round base (m): a small 3-wheel omni base about 30 cm across."""

LAYOUTS = ("vert", "hori")
SIDES = ("left", "right")
PATTERNS = ("core", "variant")
DISTANCES = {"close": 0.5, "medium": 0.75, "far": 1.0}
"""Robot centre to the near face of the first box (m)."""
JITTER = {"core": 0.2, "variant": 1.0}
"""Fraction of the full random variation each placement pattern gets."""
STANDOFF = 0.45
"""Where the robot should stop: its centre this far in front of the bottle's centre (m)."""
TIME_PERIODS = ("morning", "afternoon", "evening")

# The drinks the bottle may hold: (liquid rgba, label rgb, cap rgb). The first one is the core bottle.
_DRINKS = (
    ((0.25, 0.12, 0.06, 0.92), (0.85, 0.08, 0.10), (0.85, 0.08, 0.10)),  # cola
    ((0.95, 0.60, 0.10, 0.85), (0.10, 0.45, 0.20), (0.95, 0.55, 0.05)),  # orange juice
    ((0.72, 0.85, 0.92, 0.45), (0.10, 0.35, 0.80), (0.10, 0.35, 0.80)),  # water
    ((0.55, 0.70, 0.25, 0.80), (0.10, 0.55, 0.25), (0.05, 0.45, 0.15)),  # green tea
    ((0.80, 0.80, 0.30, 0.70), (0.90, 0.85, 0.10), (0.15, 0.15, 0.15)),  # lemon soda
)
_CARDBOARD = np.array([0.78, 0.60, 0.40])


@dataclass(frozen=True)
class BoxSpec:
    """A cardboard box standing on the floor."""

    x: float
    y: float
    half_size: tuple[float, float, float]  # (along x, along y, half height) before `yaw`
    yaw: float
    rgba: tuple[float, float, float, float]

    def footprint(self) -> tuple[float, float, float, float]:
        """Axis-aligned bounds (xmin, xmax, ymin, ymax) of the (possibly turned) box on the floor."""
        hx, hy, _ = self.half_size
        c, s = abs(math.cos(self.yaw)), abs(math.sin(self.yaw))
        ex, ey = hx * c + hy * s, hx * s + hy * c
        return self.x - ex, self.x + ex, self.y - ey, self.y + ey

    def distance_to(self, px: float, py: float) -> float:
        """Distance from a floor point to the box's footprint (0 inside)."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        dx, dy = px - self.x, py - self.y
        lx, ly = c * dx + s * dy, -s * dx + c * dy  # the point in the box's own frame
        ox = max(abs(lx) - self.half_size[0], 0.0)
        oy = max(abs(ly) - self.half_size[1], 0.0)
        return math.hypot(ox, oy)


@dataclass(frozen=True)
class BottleSpec:
    """A PET bottle of some drink standing on the floor."""

    x: float
    y: float
    radius: float
    height: float
    liquid_rgba: tuple[float, float, float, float]
    label_rgb: tuple[float, float, float]
    cap_rgb: tuple[float, float, float]


@dataclass(frozen=True)
class Lighting:
    direction: tuple[float, float, float]  # of the main (sun-like) light, pointing down into the room
    diffuse: float
    ambient: float
    warmth: float  # 0 = white light, 1 = warm evening light


@dataclass(frozen=True)
class Layout:
    """Everything the scene needs for one episode, sampled once from (scenario, seed)."""

    scenario: Scenario
    seed: int
    boxes: tuple[BoxSpec, ...]
    bottle: BottleSpec
    goal: tuple[float, float]  # where the robot's centre should stop
    lighting: Lighting
    floor_tint: tuple[float, float, float]
    time_period: str

    @property
    def side_sign(self) -> float:
        """+1 when the robot goes around on its left (+y), -1 on its right."""
        return 1.0 if self.scenario.side == "left" else -1.0

    def obstacle_bounds(self) -> tuple[float, float, float, float]:
        """Axis-aligned bounds (xmin, xmax, ymin, ymax) of all boxes together."""
        prints = np.array([b.footprint() for b in self.boxes])
        return prints[:, 0].min(), prints[:, 1].max(), prints[:, 2].min(), prints[:, 3].max()


def all_scenarios() -> list[Scenario]:
    """The 48 full scenarios: 8 tasks x {core, variant} x {close, medium, far}.

    Ordered in 6 blocks of the 8 tasks, with each task's pattern and distance rotating from block to block,
    so that any prefix (the first 8, 16, ... episodes of a collection) mixes patterns and distances."""
    tasks = [(boxes, layout, side) for boxes in (1, 2) for layout in LAYOUTS for side in SIDES]
    distances = list(DISTANCES)
    ordered = []
    for block in range(6):
        for t, (boxes, layout, side) in enumerate(tasks):
            pattern = PATTERNS[(block // 3 + t // 2) % 2]
            distance = distances[(block + t) % 3]
            ordered.append(Scenario(boxes, layout, side, pattern, distance))
    return ordered


def resolve_scenarios(names: Sequence[str] | str | None = None) -> list[Scenario]:
    """Full scenarios for names like `1box_vert_left` (expanded over pattern and distance),
    `2box_hori_right_variant_far` (exactly that) or `all` (the default), without repeats, in order."""
    if names is None or isinstance(names, str):
        names = ["all"] if names is None else [names]
    resolved: list[Scenario] = []
    for name in names:
        if name == "all":
            matches = all_scenarios()
        else:
            wanted = parse_scenario(name)
            if wanted is None or wanted.full_name != name:
                raise ValueError(
                    f"unknown scenario {name!r}: expected 'all' or a name like '1box_vert_left' or "
                    f"'2box_hori_right_variant_far' ({{1box,2box}}_{{vert,hori}}_{{left,right}}"
                    f"[_{{core,variant}}][_{{close,medium,far}}])"
                )
            matches = [
                s
                for s in all_scenarios()
                if s.name == wanted.name
                and wanted.pattern in (None, s.pattern)
                and wanted.distance in (None, s.distance)
            ]
        resolved.extend(s for s in matches if s not in resolved)
    return resolved


def _full(scenario: Scenario) -> Scenario:
    """Fill a task-level scenario's missing pattern/distance with `core`/`medium`."""
    return Scenario(
        scenario.num_boxes,
        scenario.layout,
        scenario.side,
        scenario.pattern or "core",
        scenario.distance or "medium",
    )


def sample_layout(scenario: Scenario | str, seed: int) -> Layout:
    """The layout of one episode: deterministic for (scenario, seed)."""
    if isinstance(scenario, str):
        parsed = parse_scenario(scenario)
        if parsed is None:
            raise ValueError(f"unknown scenario {scenario!r}: expected a name like '1box_vert_left_core_far'")
        scenario = parsed
    scenario = _full(scenario)
    rng = np.random.default_rng(seed)
    j = JITTER[scenario.pattern]

    def jitter(amplitude: float) -> float:
        return float(j * rng.uniform(-amplitude, amplitude))

    def box_colour() -> tuple[float, float, float, float]:
        rgb = np.clip(_CARDBOARD * (1 + jitter(0.12)) + [jitter(0.04) for _ in range(3)], 0, 1)
        return (*map(float, rgb), 1.0)

    def box_half(hx: float, hy: float) -> tuple[float, float, float]:
        return hx * (1 + jitter(0.15)), hy * (1 + jitter(0.15)), 0.15 * (1 + jitter(0.2))

    near = DISTANCES[scenario.distance] + jitter(0.08)
    boxes: list[BoxSpec] = []
    if scenario.num_boxes == 1:
        half = box_half(0.25, 0.15) if scenario.layout == "vert" else box_half(0.15, 0.25)
        boxes.append(BoxSpec(near + half[0], jitter(0.05), half, jitter(math.radians(8)), box_colour()))
    elif scenario.layout == "vert":
        first = box_half(0.15, 0.15)
        second = box_half(0.15, 0.15)
        x1 = near + first[0]
        x2 = x1 + first[0] + 0.2 + jitter(0.05) + second[0]
        for x, half in ((x1, first), (x2, second)):
            boxes.append(BoxSpec(x, jitter(0.05), half, jitter(math.radians(8)), box_colour()))
    else:
        first = box_half(0.15, 0.15)
        second = box_half(0.15, 0.15)
        centre = jitter(0.05)
        gap = 0.04 + abs(jitter(0.04))  # far narrower than the robot: it has to go around both
        for sign, half in ((1.0, first), (-1.0, second)):
            y = centre + sign * (half[1] + gap / 2)
            boxes.append(
                BoxSpec(near + half[0] + jitter(0.04), y, half, jitter(math.radians(8)), box_colour())
            )

    xmax = max(b.footprint()[1] for b in boxes)
    drink = _DRINKS[0] if scenario.pattern == "core" else _DRINKS[int(rng.integers(len(_DRINKS)))]
    volume = 0 if scenario.pattern == "core" else int(rng.integers(2))  # 500 mL or 1.5 L
    radius, height = ((0.033, 0.21), (0.045, 0.31))[volume]
    bottle = BottleSpec(
        x=float(xmax + 0.75 + j * rng.uniform(0.0, 0.1)),
        y=jitter(0.08),
        radius=radius,
        height=height,
        liquid_rgba=drink[0],
        label_rgb=drink[1],
        cap_rgb=drink[2],
    )
    goal = (bottle.x - STANDOFF, bottle.y)

    period = "afternoon" if scenario.pattern == "core" else TIME_PERIODS[int(rng.integers(3))]
    brightness = {"morning": 0.9, "afternoon": 1.0, "evening": 0.65}[period]
    direction = np.array([-0.3 + jitter(0.5), 0.25 + jitter(0.5), -1.0])
    lighting = Lighting(
        direction=tuple(float(v) for v in direction / np.linalg.norm(direction)),
        diffuse=brightness * (0.55 + jitter(0.15)),
        ambient=brightness * (0.35 + jitter(0.08)),
        warmth=0.7 if period == "evening" else 0.15 if period == "morning" else 0.0,
    )
    floor_tint = tuple(float(1.0 + jitter(0.12)) for _ in range(3))
    return Layout(scenario, seed, tuple(boxes), bottle, goal, lighting, floor_tint, period)
