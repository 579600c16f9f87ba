"""The case registry, timm style: a decorator registers a named preset, one function builds any of them.

Adding a case is one new module with one ``@register_case`` function; nothing else dispatches on case names,
and no list of modules is edited: cases are discovered (``discover_cases``) from

- the modules named ``case*.py`` in this package (``mobile_vla/policies/case5.py`` is picked up as it is), and
- the ``mobile_vla.cases`` entry-point group, so a user's own package adds a case without touching this one::

      # the user's pyproject.toml
      [project.entry-points."mobile_vla.cases"]
      my_case = "my_package.my_case"        # a module whose import runs @register_case

A case module that fails to import is an error naming the module, never a silently missing case.

    @register_case("case1", aliases=("Simplified2DActionModelV2",))
    def case1() -> CaseSpec:
        return CaseSpec(policy_class=Simplified2DActionModelV2, config=Simplified2DConfig(), train={...})

    policy = create_policy("case1", backbone, dropout=0.2)
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from mobile_vla.policies.base import ExtraFeature, FeatureDims, Policy, PolicyConfig

CASE_PACKAGE = "mobile_vla.policies"
CASE_MODULE_PREFIX = "case"
ENTRY_POINT_GROUP = "mobile_vla.cases"


class CaseDiscoveryError(ImportError):
    """A case module (of this package or an entry point) could not be imported."""


@dataclass(frozen=True)
class CaseSpec:
    """A registered case: the head class, its preset config and the preset's training settings.

    Attributes:
        policy_class: the ``Policy`` subclass that builds the head (two cases may share one class, e.g.
            Case 3 runs Case 1's architecture under its own preset).
        config: the preset ``PolicyConfig`` (the seed's hyperparameters for this case).
        train: the preset's training settings, as ``TrainConfig`` field overrides (e.g. ``{"epochs": 5}``).
        description: one line for ``describe`` and the registry.
        name: filled in by ``register_case``.
        aliases: filled in by ``register_case`` (the seed's class names).
    """

    policy_class: type[Policy]
    config: PolicyConfig
    train: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    name: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def architecture(self) -> str:
        """The head's architecture: two cases with the same architecture show the same value (a class that
        only renames another, like Case 3's, says whose architecture it runs in an ``architecture`` attribute)."""
        return str(getattr(self.policy_class, "architecture", self.policy_class.__name__))

    @property
    def model_class(self) -> str:
        """The seed's class name for this case (its first alias), else the head's class name."""
        return self.aliases[0] if self.aliases else self.architecture


_CASES: dict[str, CaseSpec] = {}
_ALIASES: dict[str, str] = {}
_loaded = False


def register_case(name: str, aliases: tuple[str, ...] = ()) -> Callable[[Callable[[], CaseSpec]], Callable]:
    """Register the ``CaseSpec`` returned by the decorated function under ``name`` (and ``aliases``)."""

    def decorator(fn: Callable[[], CaseSpec]) -> Callable[[], CaseSpec]:
        spec = fn()
        if not isinstance(spec, CaseSpec):
            raise TypeError(
                f"@register_case({name!r}): {fn.__name__} must return a CaseSpec, got {type(spec)}"
            )
        if not isinstance(spec.config, spec.policy_class.config_class):
            raise TypeError(
                f"@register_case({name!r}): config is {type(spec.config).__name__}, "
                f"{spec.policy_class.__name__} needs {spec.policy_class.config_class.__name__}"
            )
        for key in (name, *aliases):
            if key in _CASES or key in _ALIASES:
                raise ValueError(f"case name {key!r} is already registered")
        spec = CaseSpec(
            policy_class=spec.policy_class,
            config=spec.config,
            train=dict(spec.train),
            description=spec.description,
            name=name,
            aliases=tuple(aliases),
        )
        _CASES[name] = spec
        for alias in aliases:
            _ALIASES[alias] = name
        return fn

    return decorator


def unregister_case(name: str) -> None:
    """Remove a case and its aliases (for tests and plugins that register temporary cases)."""
    spec = _CASES.pop(resolve_case_name(name))
    for alias in spec.aliases:
        _ALIASES.pop(alias, None)


def case_modules() -> list[str]:
    """The modules that register cases: ``mobile_vla.policies.case*`` (sorted), then the entry points'."""
    here = Path(__file__).parent
    builtin = sorted(
        f"{CASE_PACKAGE}.{info.name}"
        for info in pkgutil.iter_modules([str(here)])
        if info.name.startswith(CASE_MODULE_PREFIX) and not info.ispkg
    )
    plugged = [ep.value.split(":", 1)[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return builtin + [m for m in plugged if m not in builtin]


def discover_cases() -> list[str]:
    """Import every case module (``case_modules()``) once; returns the modules imported."""
    global _loaded
    if _loaded:
        return []
    _loaded = True
    modules = case_modules()
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            _loaded = False
            source = (
                f"entry point group {ENTRY_POINT_GROUP!r}"
                if not module.startswith(CASE_PACKAGE)
                else "this package"
            )
            raise CaseDiscoveryError(
                f"case module {module!r} (from {source}) failed to import: {exc}"
            ) from exc
    return modules


def available_cases() -> list[str]:
    """Registered case names (without aliases), sorted."""
    discover_cases()
    return sorted(_CASES)


def resolve_case_name(name: str) -> str:
    """Canonical case name for a name or alias (``"Simplified2DActionModelV2"`` -> ``"case1"``)."""
    discover_cases()
    if name in _CASES:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    known = sorted(_CASES) + sorted(_ALIASES)
    raise KeyError(f"unknown case {name!r}; registered cases and aliases: {', '.join(known)}")


def get_case(name: str) -> CaseSpec:
    """The ``CaseSpec`` registered under ``name`` or one of its aliases."""
    return _CASES[resolve_case_name(name)]


def create_policy(name: str, dims: FeatureDims | Mapping[str, Any] | Any, **overrides: Any) -> Policy:
    """Build case ``name``'s head for features of size ``dims`` (a FeatureDims, its dict, or a backbone).

    ``overrides`` replace fields of the case's preset config (validated; unknown fields are named).
    """
    spec = get_case(name)
    config = spec.config.replace(**overrides) if overrides else spec.config
    policy = spec.policy_class(config, FeatureDims.coerce(dims))
    policy.case_name = spec.name
    return policy


def build_policy(
    name: str, dims: FeatureDims | Mapping[str, Any] | Any, *, device: str = "cpu", **overrides: Any
) -> tuple[Policy, dict[str, ExtraFeature]]:
    """``create_policy`` plus the frozen encoders the case needs beyond the backbone (Case 2's CLIP).

    Returns the head, whose ``config`` records what the encoders resolved to, and ``{name: ExtraFeature}``
    for the feature provider; ``dims`` is extended with the extra features' sizes.
    """
    spec = get_case(name)
    config = spec.config.replace(**overrides) if overrides else spec.config
    config, extra = spec.policy_class.prepare_features(config, device)
    dims = FeatureDims.coerce(dims)
    if extra:
        dims = dataclasses.replace(dims, extra={**dims.extra, **{k: int(f.dim) for k, f in extra.items()}})
    policy = spec.policy_class(config, dims)
    policy.case_name = spec.name
    return policy, extra


def policy_from_config(case: str, config: Mapping[str, Any], dims: FeatureDims | Mapping[str, Any]) -> Policy:
    """Rebuild a head from a saved ``config.to_dict()`` (what a run directory stores)."""
    spec = get_case(case)
    policy = spec.policy_class(spec.policy_class.config_class.from_dict(config), FeatureDims.coerce(dims))
    policy.case_name = spec.name
    return policy
