"""Shortest routes around the boxes, on the scenario's side, for the scripted expert and for SPL.

The boxes are merged into one rectangle that also blocks the other side all the way to the wall, so the only
way to the bottle is around the boxes on the scenario's side (`left`: the robot keeps the boxes on its
right). Grown by the robot's radius plus a clearance, the rectangle's two corners on the open side are the
only places a shortest route can bend, so a route is one of four short polylines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mobile_vla.sim.layouts import ROBOT_RADIUS, Layout

_FAR = 10.0  # beyond the room's walls
_VISIBILITY_SLACK = 0.02  # a segment grazing the grown rectangle's edge (or ending on its corner) is free


@dataclass(frozen=True)
class Rect:
    x0: float
    x1: float
    y0: float
    y1: float

    def grown(self, margin: float) -> Rect:
        return Rect(self.x0 - margin, self.x1 + margin, self.y0 - margin, self.y1 + margin)

    def contains(self, p: np.ndarray) -> bool:
        return self.x0 < p[0] < self.x1 and self.y0 < p[1] < self.y1

    def depth(self, p: np.ndarray) -> float:
        """How far inside the rectangle a point is (0 outside)."""
        return max(0.0, min(p[0] - self.x0, self.x1 - p[0], p[1] - self.y0, self.y1 - p[1]))

    def blocks(self, p: np.ndarray, q: np.ndarray) -> bool:
        """Whether the open segment p-q passes through the rectangle's interior (Liang-Barsky clipping)."""
        d = q - p
        t0, t1 = 0.0, 1.0
        for delta, low, high, start in ((d[0], self.x0, self.x1, p[0]), (d[1], self.y0, self.y1, p[1])):
            if abs(delta) < 1e-12:
                if not low < start < high:
                    return False
                continue
            ta, tb = (low - start) / delta, (high - start) / delta
            t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
            if t0 >= t1:
                return False
        return True


def _polyline_length(points: list[np.ndarray]) -> float:
    return float(sum(np.linalg.norm(b - a) for a, b in zip(points[:-1], points[1:], strict=True)))


def side_block(layout: Layout) -> Rect:
    """The boxes' bounding rectangle extended to beyond the wall on the side the robot must not take."""
    xmin, xmax, ymin, ymax = layout.obstacle_bounds()
    return Rect(xmin, xmax, -_FAR, ymax) if layout.side_sign > 0 else Rect(xmin, xmax, ymin, _FAR)


class RoutePlanner:
    """Shortest routes from any floor point to the layout's goal, around the boxes on the scenario's side.

    `clearance` is the gap kept between the robot's edge and the boxes' bounding rectangle: the expert keeps
    some (0.1 m); the reference path for SPL keeps none.
    """

    def __init__(self, layout: Layout, clearance: float = 0.1, robot_radius: float = ROBOT_RADIUS):
        self.side = layout.side_sign
        self.obstacle = side_block(layout).grown(robot_radius + clearance)
        self._visibility = self.obstacle.grown(-_VISIBILITY_SLACK)
        lane = self.obstacle.y1 if self.side > 0 else self.obstacle.y0
        self.lane_y = lane
        self.corners = (np.array([self.obstacle.x0, lane]), np.array([self.obstacle.x1, lane]))
        self.goal = np.asarray(layout.goal, dtype=float)

    def _free(self, p: np.ndarray, q: np.ndarray) -> bool:
        return not self._visibility.blocks(p, q)

    def route(self, position) -> list[np.ndarray]:
        """The waypoints after `position` up to and including the goal, shortest first.

        From a point inside the grown rectangle (too close to the boxes) the route first leaves it sideways
        towards the open side.
        """
        p = np.asarray(position, dtype=float)[:2]
        prefix: list[np.ndarray] = []
        if self._visibility.contains(p):
            x = min(max(p[0], self.obstacle.x0), self.obstacle.x1)
            exit_point = np.array([x, self.lane_y])
            prefix, p = [exit_point], exit_point
        near, far = self.corners
        best: list[np.ndarray] | None = None
        best_length = math.inf
        for via in ([], [far], [near], [near, far]):
            points = [p, *via, self.goal]
            if all(self._free(a, b) for a, b in zip(points[:-1], points[1:], strict=True)):
                length = _polyline_length(points)
                if length < best_length:
                    best, best_length = points[1:], length
        if best is None:  # only from odd spots (e.g. past the goal, beside the boxes): go via both corners
            best = [near, far, self.goal]
        return prefix + best

    def cost_to_go(self, position) -> float:
        """Length of the shortest route to the goal; a point too close to the boxes pays its way out twice,
        so that the expert never prefers cutting into the clearance."""
        p = np.asarray(position, dtype=float)[:2]
        waypoints = self.route(p)
        length = _polyline_length([p, *waypoints])
        if self._visibility.contains(p):
            length += abs(waypoints[0][1] - p[1])
        return length

    def point_along(self, position, distance: float) -> np.ndarray:
        """The point `distance` along the shortest route from `position` (the goal if the route is shorter)."""
        p = np.asarray(position, dtype=float)[:2]
        for waypoint in self.route(p):
            leg = float(np.linalg.norm(waypoint - p))
            if leg >= distance:
                return p + (waypoint - p) * (distance / max(leg, 1e-12))
            distance -= leg
            p = waypoint
        return p


def shortest_path_length(layout: Layout, start=(0.0, 0.0)) -> float:
    """Reference length for SPL: the shortest collision-free route from `start` to the goal on the scenario's
    side (the boxes' bounding rectangle grown by the robot's radius, no extra clearance)."""
    planner = RoutePlanner(layout, clearance=0.0)
    return planner.cost_to_go(start)


def clearance_at(
    layout: Layout,
    points: np.ndarray,
    room: tuple[float, float, float, float],
    blocked: Rect | None = None,
) -> np.ndarray:
    """Free space (m) between the robot's edge and the nearest box, bottle or wall, for robot centres
    `points` (..., 2); negative where the robot would overlap something. `blocked` is a region that counts
    as an obstacle too (e.g. the `side_block` that keeps a route on the scenario's side)."""
    points = np.asarray(points, dtype=float)
    x, y = points[..., 0], points[..., 1]
    gaps = []
    if blocked is not None:
        ox = np.maximum(np.maximum(blocked.x0 - x, x - blocked.x1), 0.0)
        oy = np.maximum(np.maximum(blocked.y0 - y, y - blocked.y1), 0.0)
        gaps.append(np.hypot(ox, oy))
    for box in layout.boxes:
        c, s = math.cos(box.yaw), math.sin(box.yaw)
        dx, dy = x - box.x, y - box.y
        lx, ly = c * dx + s * dy, -s * dx + c * dy  # in the box's own frame
        ox = np.maximum(np.abs(lx) - box.half_size[0], 0.0)
        oy = np.maximum(np.abs(ly) - box.half_size[1], 0.0)
        gaps.append(np.hypot(ox, oy))
    gaps.append(np.hypot(x - layout.bottle.x, y - layout.bottle.y) - layout.bottle.radius)
    x0, x1, y0, y1 = room
    gaps.extend([x - x0, x1 - x, y - y0, y1 - y])
    return np.min(np.stack(gaps), axis=0) - ROBOT_RADIUS


@dataclass(frozen=True)
class PressPlan:
    """The best key sequence found from the current pose, and where it ends."""

    keys: tuple[str, ...]
    end: np.ndarray  # (x, y) after the presses
    cost: float


def plan_key_presses(
    layout: Layout,
    start: np.ndarray,
    moves: dict[str, np.ndarray],
    budget: int,
    room: tuple[float, float, float, float],
    safety: float = 0.03,
    comfort: float = 0.1,
    comfort_weight: float = 3.0,
    change_penalty: float = 0.0,
    goal_weight: float = 50.0,
    blocked: Rect | None = None,
    noise: float = 0.0,
    rng: np.random.Generator | None = None,
) -> PressPlan:
    """The cheapest sequence of at most `budget` key presses from `start` (dynamic programming on the lattice
    the presses span).

    Cost = presses + `comfort_weight` x metres of clearance below `comfort` along each press + `change_penalty`
    per change of key + `goal_weight` x the final distance to the goal (so a press is worth it when it brings
    the robot 1/goal_weight m closer). A press may never bring the robot within `safety` of an obstacle or of
    the `blocked` region.
    `moves` maps each key to its world-frame displacement; they must be integer combinations of the first two
    keys' displacements (true of the lab's keys). `noise` > 0 adds a random cost in [0, noise) to every press
    (drawn from `rng`), which varies the order among near-equal plans.
    """
    names = list(moves)
    e1, e2 = moves[names[0]], moves[names[1]]
    basis = np.linalg.inv(np.stack([e1, e2], axis=1))
    shifts = [np.rint(basis @ moves[k]).astype(int) for k in names]
    reach = budget * max(int(np.abs(s).max()) for s in shifts)
    n = 2 * reach + 1
    ii, jj = np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1), indexing="ij")
    nodes = start + ii[..., None] * e1 + jj[..., None] * e2  # (n, n, 2) lattice points

    goal = np.asarray(layout.goal)
    finish = goal_weight * np.linalg.norm(nodes - goal, axis=-1)  # (n, n)
    samples = np.linspace(0.0, 1.0, 11)[1:]
    press_cost = np.full((len(names), n, n), np.inf)
    for a, key in enumerate(names):
        path = nodes[None] + samples[:, None, None, None] * moves[key]  # (S, n, n, 2)
        worst = clearance_at(layout, path, room, blocked).min(
            axis=0
        )  # (n, n): tightest clearance along the press
        cost = 1.0 + comfort_weight * np.maximum(comfort - worst, 0.0)
        if noise > 0:
            cost = cost + noise * (rng or np.random.default_rng()).random((n, n))
        press_cost[a] = np.where(worst >= safety, cost, np.inf)

    # best[k][a, i, j]: cheapest way to stand at node (i, j) after k presses, the last one being key a
    # (index len(names): no press yet)
    inf = np.full((len(names) + 1, n, n), np.inf)
    best = inf.copy()
    best[-1, reach, reach] = 0.0
    parents: list[np.ndarray] = []
    layers = [best]
    for _ in range(budget):
        new = inf.copy()
        parent = np.full((len(names), n, n), -1, dtype=np.int64)
        for a, (di, dj) in enumerate(shifts):
            change = np.full(len(names) + 1, change_penalty)
            change[a] = 0.0
            change[-1] = 0.0
            before = best + change[:, None, None]  # (keys + 1, n, n)
            came = before.argmin(axis=0)
            cost = before.min(axis=0) + press_cost[a]  # pressing `a` from each node
            # the press lands on the node shifted by (di, dj)
            src_i = slice(max(0, -di), n - max(0, di))
            src_j = slice(max(0, -dj), n - max(0, dj))
            dst_i = slice(max(0, di), n - max(0, -di))
            dst_j = slice(max(0, dj), n - max(0, -dj))
            new[a, dst_i, dst_j] = cost[src_i, src_j]
            parent[a, dst_i, dst_j] = came[src_i, src_j]
        parents.append(parent)
        layers.append(new)
        best = new

    totals = [layer.min(axis=0) + finish for layer in layers]  # (n, n) per number of presses
    k = int(np.argmin([t.min() for t in totals]))
    i, j = np.unravel_index(int(np.argmin(totals[k])), (n, n))
    total = float(totals[k][i, j])
    a = int(layers[k][:, i, j].argmin())
    keys: list[str] = []
    end = nodes[i, j].copy()
    for layer in range(k, 0, -1):
        keys.append(names[a])
        previous = int(parents[layer - 1][a, i, j])
        i, j = i - shifts[a][0], j - shifts[a][1]
        a = previous
    return PressPlan(tuple(reversed(keys)), end, total)
