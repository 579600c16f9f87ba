"""Case 3, ``SimpleCase3Model``: Case 1's architecture under its own preset (5 epochs).

The seed's "medium-term" case kept Case 1's stable structure and trained it for 5 epochs as a test run. It
is a separate registered case so its runs are recorded and ranked as Case 3, but its head *is* Case 1's:
same layers, same parameter names, same weights format (a Case 1 checkpoint loads into it and back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mobile_vla.policies.base import PolicyConfig
from mobile_vla.policies.case1 import CASE1_TRAIN, Simplified2DActionModelV2, Simplified2DConfig
from mobile_vla.policies.registry import CaseSpec, register_case


@dataclass
class SimpleCase3Config(Simplified2DConfig):
    """Case 3's head: Case 1's fields and defaults (hidden 256, dropout 0.4), recorded with the architecture
    it shares.

    Attributes:
        hidden_dim, dropout, activation, action_dims: as in Case 1.
        architecture: the head architecture this case runs, ``Simplified2DActionModelV2`` (Case 1's). It is a
            record for the registry and ``describe``, not a switch: any other value is an error.
    """

    architecture: str = Simplified2DActionModelV2.__name__

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.architecture != Simplified2DActionModelV2.__name__:
            raise ValueError(
                f"{type(self).__name__}.architecture must be {Simplified2DActionModelV2.__name__!r} "
                f"(Case 3 runs Case 1's head), got {self.architecture!r}"
            )


class SimpleCase3Model(Simplified2DActionModelV2):
    """Case 1's head (``Simplified2DActionModelV2``) under Case 3's name and preset; nothing is overridden."""

    config_class: ClassVar[type[PolicyConfig]] = SimpleCase3Config
    # What the registry shows as this case's architecture: the class whose layers it runs.
    architecture: ClassVar[str] = Simplified2DActionModelV2.__name__


# The seed's Case 3 settings: Case 1's recipe, 5 epochs ("for testing").
CASE3_TRAIN = {**CASE1_TRAIN, "epochs": 5}


@register_case("case3", aliases=("SimpleCase3Model",))
def case3() -> CaseSpec:
    return CaseSpec(
        policy_class=SimpleCase3Model,
        config=SimpleCase3Config(hidden_dim=256, dropout=0.4),
        train=CASE3_TRAIN,
        description="Case 1's architecture (Simplified2DActionModelV2) under its own 5-epoch preset (seed Case 3)",
    )
