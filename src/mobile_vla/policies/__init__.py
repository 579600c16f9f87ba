"""Policies: trainable heads over frozen-backbone features, one module per case, plus the case registry.

from mobile_vla.policies import create_policy, available_cases
policy = create_policy("case1", backbone)        # or FeatureDims(vision=1024, text=2048)
out = policy({"vision": v, "text": t})           # {"action": (B, A)}
"""

from mobile_vla.policies.base import DEFAULT_ACTION_DIMS, ExtraFeature, FeatureDims, Policy, PolicyConfig
from mobile_vla.policies.protocol import ControlPolicy
from mobile_vla.policies.registry import (
    CaseSpec,
    available_cases,
    build_policy,
    create_policy,
    get_case,
    policy_from_config,
    register_case,
    resolve_case_name,
)

__all__ = [
    "DEFAULT_ACTION_DIMS",
    "CaseSpec",
    "ControlPolicy",
    "ExtraFeature",
    "FeatureDims",
    "Policy",
    "PolicyConfig",
    "available_cases",
    "build_policy",
    "create_policy",
    "get_case",
    "load_policy",
    "policy_from_config",
    "register_case",
    "resolve_case_name",
]


def load_policy(run_dir, device: str = "auto", **kwargs):
    """Load a trained run directory as a step-by-step ``ControlPolicy`` (see ``policies.inference``)."""
    from mobile_vla.policies.inference import load_policy as _load

    return _load(run_dir, device=device, **kwargs)
