"""Scenarios: what an episode asks the robot to do, read from a name (a file name or a `scenario` attribute).

The lab's collectors named their scenarios differently over time, so parsing is a table of rules, tried in
order (`SCENARIO_RULES`); `register_scenario_rule` adds one (first=True to take precedence):

- the box scenarios of the source document (v3): `{1box,2box}_{vert,hori}_{left,right}` then optional
  `_{core,variant}` and `_{close,medium,far}`, optionally with a `basket_` task prefix (the goal is then the
  brown pot, not the bottle): `Scenario`;
- the v5/v6 names such as `target_left_straight_path` or `free_center`: `NamedScenario` (side read from the
  name when it says one).

A name no rule knows is an *unknown* scenario (`NamedScenario(known=False)`): a warning, and the instruction
then comes from the file or its attributes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

GENERIC_INSTRUCTION = "Navigate around obstacles and reach the front of the beverage bottle"
BASKET_INSTRUCTION = "Navigate to the brown pot"


def instruction_for_side(side: str, task: str = "bottle") -> str:
    """The lab's instruction for a goal side (`left`/`right`); `task="basket"` is the brown-pot task."""
    if side not in ("left", "right"):
        raise ValueError(f"goal side must be 'left' or 'right', got {side!r}")
    if task == "basket":
        return f"{BASKET_INSTRUCTION} on the {side}"
    return f"{GENERIC_INSTRUCTION} on the {side}"


@dataclass(frozen=True)
class Scenario:
    """The lab's box scenario, encoded in the episode file name: `{1box,2box}_{vert,hori}_{left,right}` then
    optional `_{core,variant}` and `_{close,medium,far}`; `task` is `bottle` or `basket` (a `basket_` prefix)."""

    num_boxes: int
    layout: str
    side: str
    pattern: str | None = None
    distance: str | None = None
    task: str = "bottle"

    known = True

    @property
    def name(self) -> str:
        """The task-level name (what the model is asked to do): e.g. `2box_vert_left`."""
        prefix = "basket_" if self.task == "basket" else ""
        return f"{prefix}{self.num_boxes}box_{self.layout}_{self.side}"

    @property
    def full_name(self) -> str:
        parts = [self.name, self.pattern, self.distance]
        return "_".join(p for p in parts if p)

    @property
    def instruction(self) -> str:
        return instruction_for_side(self.side, self.task)


@dataclass(frozen=True)
class NamedScenario:
    """A scenario known by its name only (the v5/v6 collectors' `target_left_straight_path`, `free_center`),
    or an unknown one (`known=False`). `instruction` is the rule's default (None: none; the file's wins)."""

    name: str
    side: str | None = None
    pattern: str | None = None
    distance: str | None = None
    position: str | None = None
    known: bool = True
    default_instruction: str | None = None
    num_boxes = None
    layout = None

    @property
    def full_name(self) -> str:
        parts = [self.name, self.pattern, self.distance, self.position]
        return "_".join(p for p in parts if p)

    @property
    def instruction(self) -> str | None:
        return self.default_instruction


AnyScenario = Scenario | NamedScenario


@dataclass(frozen=True)
class ScenarioRule:
    """`regex` is searched in the name; `build(match)` makes the scenario."""

    name: str
    regex: re.Pattern[str]
    build: Callable[[re.Match[str]], AnyScenario]


def _box(match: re.Match[str]) -> Scenario:
    return Scenario(
        num_boxes=int(match["boxes"]),
        layout=match["layout"],
        side=match["side"],
        pattern=match["pattern"],
        distance=match["distance"],
        task="basket" if match["basket"] else "bottle",
    )


def _sided(match: re.Match[str]) -> NamedScenario:
    side = match["side"]
    return NamedScenario(
        name=match[0], side=side, default_instruction=instruction_for_side(side) if side else None
    )


SCENARIO_RULES: list[ScenarioRule] = [
    ScenarioRule(
        "box",
        re.compile(
            r"(?<![a-z0-9])(?P<basket>basket_(?:episode_\d{8}_\d{6}_)?)?(?P<boxes>[12])box_(?P<layout>vert|hori)"
            r"_(?P<side>left|right)(?:_(?P<pattern>core|variant))?(?:_(?P<distance>close|medium|far))?"
            r"(?![a-z0-9])"
        ),
        _box,
    ),
    # v5: target_left_straight_path, target_right_curve, ...
    ScenarioRule("target", re.compile(r"^target_(?P<side>left|right)(?:_[a-z0-9]+)*$"), _sided),
    # v5: free_center, free_left, free_right
    ScenarioRule(
        "free",
        re.compile(r"^free_(?:(?P<side>left|right)|center)$"),
        _sided,
    ),
]


def register_scenario_rule(rule: ScenarioRule, first: bool = False) -> None:
    """Add a parsing rule (a lab's new scenario names). `first` puts it before the built-in rules."""
    SCENARIO_RULES[:] = [r for r in SCENARIO_RULES if r.name != rule.name]
    if first:
        SCENARIO_RULES.insert(0, rule)
    else:
        SCENARIO_RULES.append(rule)


def match_scenario(name: str) -> AnyScenario | None:
    """The first rule's scenario for `name` (a scenario name or a file name), or None."""
    text = Path(str(name)).name.lower()
    if text.endswith(".h5"):
        text = text[:-3]
    for rule in SCENARIO_RULES:
        match = rule.regex.search(text)
        if match is not None:
            return rule.build(match)
    return None


def parse_scenario(file_name: str | Path) -> Scenario | None:
    """The box scenario in a file name such as `episode_20250815_122923_2box_vert_left_core_medium.h5`
    (also with a `basket_` prefix), or None. (`match_scenario` tries every rule.)"""
    found = match_scenario(str(file_name))
    return found if isinstance(found, Scenario) else None


_V5_NAME = re.compile(r"^episode_\d{6}_\d{6}_(?P<rest>.+)$")
_V6_NAME = re.compile(r"^episode_\d{8}_\d{6}_(?P<position>[a-z0-9]+)_(?P<path>[a-z0-9_]+)$")


def parse_v5_name(stem: str) -> dict[str, str | None] | None:
    """`episode_{yymmdd_HHMMSS}_{scenario}{__tag}__{pattern}__{distance}_{pos}` -> its parts, or None."""
    match = _V5_NAME.match(stem.lower())
    if match is None:
        return None
    parts = match["rest"].split("__")
    if len(parts) not in (3, 4):
        return None
    scenario, *tag, pattern, last = parts
    distance, _, pos = last.rpartition("_")
    if not distance:
        distance, pos = last, ""
    return {
        "scenario": scenario,
        "tag": tag[0] if tag else None,
        "pattern": pattern or None,
        "distance": distance or None,
        "end_pos": pos or None,
    }


def parse_v6_name(stem: str) -> dict[str, str] | None:
    """`episode_{YYYYmmdd_HHMMSS}_{cx_position}_{cx_path}` -> its parts, or None."""
    match = _V6_NAME.match(stem.lower())
    return None if match is None else {"cx_position": match["position"], "cx_path": match["path"]}


def named_scenario(
    name: str,
    *,
    pattern: str | None = None,
    distance: str | None = None,
    position: str | None = None,
    side: str | None = None,
) -> AnyScenario:
    """The scenario for a v5/v6 scenario name with the file's other fields; unknown names give
    `NamedScenario(known=False)`."""
    found = match_scenario(name)
    if isinstance(found, Scenario):
        return Scenario(
            found.num_boxes,
            found.layout,
            found.side,
            found.pattern or pattern,
            found.distance or distance,
            found.task,
        )
    if found is None:
        side = side if side in ("left", "right") else None
        return NamedScenario(
            name=name,
            side=side,
            pattern=pattern,
            distance=distance,
            position=position,
            known=False,
        )
    side = found.side or (side if side in ("left", "right") else None)
    return NamedScenario(
        name=found.name,
        side=side,
        pattern=pattern,
        distance=distance,
        position=position,
        known=True,
        default_instruction=found.default_instruction or (instruction_for_side(side) if side else None),
    )
