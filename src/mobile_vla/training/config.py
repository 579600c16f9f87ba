"""The training recipe as data: one dataclass, JSON/YAML round-trip, preset < file < command-line layering."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FRAME_SELECTIONS = ("first", "random", "all")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """Everything a training run needs besides the episodes themselves. Defaults are the seed's standard
    recipe; a case's preset (``CaseSpec.train``) overrides them, a ``--config`` YAML overrides the preset,
    and command-line flags override the file.

    Attributes:
        case: registered case name or alias (``case1``, ``Simplified2DActionModelV2``, ...).
        backbone: backbone profile (``lite``, ``kosmos2``, ``kosmos2-tiny``).
        backbone_path: local weights directory (or hub id) for profiles that take one; None = profile default.
        backbone_dtype: ``fp32`` or ``bf16`` for the frozen backbone (the head always trains in fp32).
        policy: overrides of the case's preset head config, e.g. ``{"dropout": 0.2}``.
        epochs: maximum number of epochs (seed: 50; Case 3: 5).
        batch_size: samples per optimiser step (seed: 2).
        lr: AdamW learning rate (seed: 5e-5).
        weight_decay: AdamW weight decay (seed: 1e-3).
        scheduler_t_max: CosineAnnealingLR ``T_max`` in epochs (seed: 100; the scheduler steps once per epoch,
            so with 50 epochs the learning rate goes half way down the cosine, as in the seed).
        scheduler_eta_min: CosineAnnealingLR floor (seed: 1e-6).
        huber_delta: HuberLoss ``delta`` of the action loss (seed: 0.1).
        grad_clip_norm: gradient-norm clipping threshold (seed: 1.0); 0 disables clipping.
        early_stopping_patience: stop after this many epochs without a validation-loss improvement
            (seed: 3; Case 4: 5); 0 disables early stopping.
        early_stopping_min_delta: an improvement must lower the validation loss by more than this.
        seed: seeds torch, numpy and Python's ``random`` (weights init, dropout, shuffling, frame draws).
        frame_selection: training frames per episode per epoch: ``first``, ``random`` (a fresh seeded frame
            each epoch; the seed's choice) or ``all``.
        eval_frame_selection: frames used for validation (and by ``evaluate``): ``all`` by default so the
            validation loss does not jitter with the frame draw.
        drop_start_frame: leave out frame 0 (``episode_start``, action 0) of every episode.
        split_seed: seed of the by-episode train/val/test split.
        split_ratios: train/val/test fractions (seed: 70/15/15).
        device: ``auto`` (cuda if available), ``cpu`` or ``cuda``.
        num_workers: DataLoader worker processes (0 = load in the main process).
        torch_threads: CPU threads for torch (0 = torch's default). On a shared or small CPU box, 1 can be
            10x faster than oversubscribed threads (measured: EfficientNet-Lite0 forward, 2 busy cores).
        sampling: which training items an epoch draws (``training.sampling``): ``uniform`` (every item once,
            shuffled; the seed's loop) or ``balanced`` (``len(train)`` draws with replacement, balanced over
            scenario groups = task x side x distance, with ``variant_ratio`` of them from ``variant``
            episodes). Seeded by (``seed``, epoch): resume and DDP ranks redraw the same samples.
        variant_ratio: with ``balanced``, the fraction of draws from ``variant`` episodes (e.g. 0.3); None = the
            share of ``variant`` episodes in the data.
        class_balance: with ``balanced`` and ``frame_selection: all``, also weight frames within each episode by
            the capped inverse frequency of their action (key) class, so rare keys (A, D, ...) are drawn more.
        class_weight_cap: the largest class weight ``class_balance`` and ``class_weights`` give (inverse
            frequency relative to a uniform mix of the classes present, e.g. 5.0).
        class_weights: weights of the key-class cross-entropy against imbalance (``action_space: keys``
            only): ``none`` (unweighted) or ``inverse_frequency`` (``training.class_weights``: each target
            class weighted by the capped inverse of its share of the training split's frames; recorded in
            config.json under ``class_weights``). Unlike ``class_balance`` it changes the loss, not the draw.
            The validation loss (early stopping, best checkpoint) uses the same weights; ``evaluate`` reports
            the unweighted loss.
        mirror: probability (0..1) that a training item is replaced by its left/right mirror image
            (``mobile_vla.data.mirror``): the image flipped left-right, "left"/"right" swapped in the
            instruction, ``linear_y`` and ``angular_z`` negated, the key class mirrored. Drawn per (seed,
            epoch, episode, frame), so resume redraws it exactly; validation and test are never mirrored.
            With the feature cache, a mirrored frame's features are cached under their own key (the flipped
            view), never mixed with the original frame's. 0 (default) is off.
        ema_decay: exponential moving average of the head's weights after every optimiser step
            (``training.averaging``); the average is what is validated, early-stopped on and saved, training
            goes on from the raw weights. 0 (default, the seed's) is off; 0.999 averages over ~1,000 steps.
    """

    case: str = "case1"
    backbone: str = "lite"
    backbone_path: str | None = None
    backbone_dtype: str = "fp32"
    policy: dict[str, Any] = field(default_factory=dict)
    epochs: int = 50
    batch_size: int = 2
    lr: float = 5e-5
    weight_decay: float = 1e-3
    scheduler_t_max: int = 100
    scheduler_eta_min: float = 1e-6
    huber_delta: float = 0.1
    grad_clip_norm: float = 1.0
    early_stopping_patience: int = 3
    early_stopping_min_delta: float = 0.0
    seed: int = 0
    frame_selection: str = "random"
    eval_frame_selection: str = "all"
    drop_start_frame: bool = False
    split_seed: int = 0
    split_ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    device: str = "auto"
    num_workers: int = 0
    torch_threads: int = 0
    sampling: str = "uniform"
    variant_ratio: float | None = None
    class_balance: bool = False
    class_weight_cap: float = 5.0
    class_weights: str = "none"
    mirror: float = 0.0
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        self.split_ratios = tuple(_as_float(r) for r in self.split_ratios)
        self.policy = dict(self.policy or {})
        # YAML 1.1 reads "1e-3" (no dot) as a string and "1" as an int: accept both for float fields.
        for f in dataclasses.fields(self):
            if f.type == "float":
                setattr(self, f.name, _as_float(getattr(self, f.name)))
        for name, low in (
            ("epochs", 1),
            ("batch_size", 1),
            ("scheduler_t_max", 1),
            ("early_stopping_patience", 0),
            ("num_workers", 0),
            ("torch_threads", 0),
            ("seed", 0),
            ("split_seed", 0),
        ):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= low,
                name,
                value,
                f"an int >= {low}",
            )
        for name in ("lr", "huber_delta"):
            value = getattr(self, name)
            _check(_finite(value) and value > 0, name, value, "a positive number")
        for name in ("weight_decay", "scheduler_eta_min", "grad_clip_norm", "early_stopping_min_delta"):
            value = getattr(self, name)
            _check(_finite(value) and value >= 0, name, value, "a number >= 0")
        for name in ("frame_selection", "eval_frame_selection"):
            value = getattr(self, name)
            _check(value in FRAME_SELECTIONS, name, value, f"one of {FRAME_SELECTIONS}")
        _check(self.backbone_dtype in DTYPES, "backbone_dtype", self.backbone_dtype, f"one of {DTYPES}")
        device_ok = self.device in DEVICES or str(self.device).startswith("cuda:")
        _check(device_ok, "device", self.device, f"one of {DEVICES} or cuda:N")
        self._check_sampling()
        ratios = self.split_ratios
        ratios_ok = len(ratios) == 3 and all(r >= 0 for r in ratios) and abs(sum(ratios) - 1.0) < 1e-6
        _check(
            ratios_ok and ratios[0] > 0,
            "split_ratios",
            ratios,
            "three fractions >= 0 summing to 1, train > 0",
        )

    def _check_sampling(self) -> None:
        from mobile_vla.training.sampling import SAMPLING_STRATEGIES

        _check(
            self.sampling in SAMPLING_STRATEGIES, "sampling", self.sampling, f"one of {SAMPLING_STRATEGIES}"
        )
        ratio = self.variant_ratio
        if isinstance(ratio, str) and ratio.strip().lower() in ("none", "null", "data", ""):
            ratio = self.variant_ratio = None  # `--variant-ratio none`: as in the data
        if ratio is not None:
            ratio = self.variant_ratio = _as_float(ratio)
            _check(_finite(ratio) and 0 <= ratio <= 1, "variant_ratio", ratio, "a fraction 0..1 or None")
        _check(isinstance(self.class_balance, bool), "class_balance", self.class_balance, "true or false")
        cap = self.class_weight_cap
        _check(_finite(cap) and cap >= 1, "class_weight_cap", cap, "a number >= 1")
        from mobile_vla.training.class_weights import CLASS_WEIGHTS

        _check(
            self.class_weights in CLASS_WEIGHTS,
            "class_weights",
            self.class_weights,
            f"one of {CLASS_WEIGHTS}",
        )
        _check(_finite(self.mirror) and 0 <= self.mirror <= 1, "mirror", self.mirror, "a probability 0..1")
        _check(
            _finite(self.ema_decay) and 0 <= self.ema_decay < 1,
            "ema_decay",
            self.ema_decay,
            "0 (off) or in (0, 1)",
        )
        if self.sampling == "uniform":
            _check(
                ratio is None, "variant_ratio", ratio, "None with sampling: uniform (use sampling: balanced)"
            )
            _check(not self.class_balance, "class_balance", True, "false with sampling: uniform")
        if self.class_balance:
            _check(
                self.frame_selection == "all",
                "class_balance",
                True,
                f"used with frame_selection: all (frames are balanced within episodes; got {self.frame_selection!r})",
            )

    # --- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["split_ratios"] = list(self.split_ratios)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        names = field_names()
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {sorted(unknown)}; known keys: {sorted(names)}")
        return cls(**dict(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @classmethod
    def from_yaml(cls, text: str) -> TrainConfig:
        return cls.from_dict(_load_yaml_mapping(text, "<string>"))

    def save(self, path: str | Path) -> Path:
        """Write as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json()
        path.write_text(text)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_config_file(path))


def field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON mapping of TrainConfig fields; errors name the file and the bad keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = _load_yaml_mapping(path.read_text(), str(path))
    unknown = set(data) - field_names()
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known keys: {sorted(field_names())}")
    return data


def resolve_train_config(
    case: str | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """TrainConfig defaults < the case preset's training settings < ``config_file`` < ``overrides``.

    ``overrides`` values of None are ignored (an argparse flag the user did not give). The ``policy``
    mapping is merged key by key rather than replaced.
    """
    from mobile_vla.policies import get_case

    layers: list[Mapping[str, Any]] = []
    file_data = read_config_file(config_file) if config_file else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    case_name = overrides.get("case") or file_data.get("case") or case or TrainConfig.case
    spec = get_case(case_name)
    layers += [dict(spec.train), file_data, overrides]
    merged: dict[str, Any] = {"case": spec.name}
    policy: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "policy":
                policy.update(value or {})
            else:
                merged[key] = value
    merged["case"] = spec.name
    merged["policy"] = policy
    return TrainConfig.from_dict(merged)


def _load_yaml_mapping(text: str, where: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of TrainConfig fields, got {type(data).__name__}")
    return data


def _as_float(value: Any) -> Any:
    """int or numeric string -> float; anything else unchanged (and rejected by validation)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"TrainConfig.{name} must be {expected}, got {value!r}")
