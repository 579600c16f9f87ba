"""One model behind a lock: the step logic of the server, free of HTTP so it can be tested on its own.

The model is not thread-safe (it keeps a history window and, for Case 4, a chunk buffer), so every call into
it holds ``PolicyRunner.lock``: requests are served one at a time per model, in arrival order as far as the
lock allows. Decoding images happens outside the lock, in parallel.

Strategies:

- ``receding_horizon``: infer on every call (``policy.act``) and execute only that action.
- ``chunk_reuse``: infer an action chunk (``policy.act_chunk``, Case 4), execute its first action, then answer
  the next calls from the stored chunk (``source="reused"``) until it runs out (or ``chunk_steps`` of it have
  been executed), then infer again. A new instruction, a ``receding_horizon`` call, a failure or ``reset()``
  discards the stored chunk.

Key-class policies (``action_space: keys``) expose ``key_classes`` (class names) and ``key_velocities``
(``(C, A)``, each class's command); every step then also names the class the model chose
(``StepResult.predicted_class``): the class whose velocity the model's raw command is (nearest, so exact for
a key head), read *before* the velocity limits clamp it. Policies without them (regression heads) get None,
as does a safe stop (the model chose nothing).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from mobile_vla.serving import safety
from mobile_vla.serving.protocol import STRATEGIES

logger = logging.getLogger(__name__)


class ServerBusy(RuntimeError):
    """The model lock was not free within the queue timeout (the server is overloaded)."""


@dataclass
class ChunkBuffer:
    """The stored action chunk and how much of it has been executed."""

    max_steps: int | None = None
    chunk: np.ndarray | None = None  # (K, A), already checked and clamped
    next_index: int = 0
    instruction: str | None = None
    clamped_rows: np.ndarray | None = None  # (K,) bool: which steps the velocity limits changed
    classes: list[str | None] | None = None  # (K,) the key class of each step (None: not a key policy)

    @property
    def usable_steps(self) -> int:
        if self.chunk is None:
            return 0
        k = len(self.chunk)
        return k if self.max_steps is None else min(k, self.max_steps)

    @property
    def remaining(self) -> int:
        return max(self.usable_steps - self.next_index, 0)

    def clear(self) -> None:
        self.chunk, self.next_index, self.instruction, self.clamped_rows = None, 0, None, None
        self.classes = None

    def store(
        self,
        chunk: np.ndarray,
        instruction: str,
        clamped_rows: np.ndarray,
        classes: list[str | None] | None = None,
    ) -> None:
        self.chunk, self.next_index, self.instruction, self.clamped_rows = chunk, 0, instruction, clamped_rows
        self.classes = classes

    def pop(self) -> tuple[np.ndarray, bool, str | None]:
        """The next action of the chunk, whether the limits changed it, and its key class (or None)."""
        assert self.chunk is not None and self.clamped_rows is not None and self.remaining > 0
        i = self.next_index
        self.next_index += 1
        return self.chunk[i], bool(self.clamped_rows[i]), self.classes[i] if self.classes else None

    def status(self) -> dict:
        return {
            "chunk_size": 0 if self.chunk is None else len(self.chunk),
            "executed": self.next_index,
            "remaining": self.remaining,
        }


@dataclass
class StepResult:
    action: np.ndarray  # (A,) float32, safe to send
    source: str  # "inferred" | "reused" | "safe_stop:<reason>"
    strategy: str
    clamped: bool
    buffer_status: dict
    queue_ms: float
    inference_ms: float
    predicted_class: str | None = None  # the key class the model chose (key policies), else None


@dataclass
class RunnerStats:
    requests: int = 0
    inferred: int = 0
    reused: int = 0
    safe_stops: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "inferred": self.inferred,
            "reused": self.reused,
            "safe_stops": dict(self.safe_stops),
        }


class PolicyRunner:
    """Drives a ``ControlPolicy`` safely: serialised, checked, clamped, with chunk reuse.

    Args:
        policy: has ``action_dims``, ``reset()``, ``act(image, instruction) -> (A,)`` and optionally
            ``act_chunk(image, instruction) -> (K, A)``.
        limits: velocity limits; every axis of ``policy.action_dims`` must have one.
        chunk_steps: execute at most this many actions of a chunk before inferring again (None: all of it).
        queue_timeout_s: how long a request may wait for the model before :class:`ServerBusy`.
    """

    def __init__(
        self,
        policy,
        limits: safety.VelocityLimits,
        chunk_steps: int | None = None,
        queue_timeout_s: float = 10.0,
    ) -> None:
        dims = getattr(policy, "action_dims", None)
        if not dims or not all(isinstance(d, str) for d in dims):
            raise TypeError(
                f"{type(policy).__name__} is not a ControlPolicy: action_dims must be a non-empty tuple of "
                f"axis names, got {dims!r}"
            )
        if not callable(getattr(policy, "act", None)) or not callable(getattr(policy, "reset", None)):
            raise TypeError(f"{type(policy).__name__} is not a ControlPolicy: it needs act() and reset()")
        if chunk_steps is not None and chunk_steps < 1:
            raise ValueError(f"chunk_steps must be >= 1 or None, got {chunk_steps!r}")
        if queue_timeout_s <= 0:
            raise ValueError(f"queue_timeout_s must be > 0, got {queue_timeout_s!r}")
        self.policy = policy
        self.action_dims: tuple[str, ...] = tuple(dims)
        self.limits = limits
        self.limit_vector = limits.vector(self.action_dims)  # raises at startup for an axis with no limit
        self.queue_timeout_s = queue_timeout_s
        self.supports_chunks = callable(getattr(policy, "act_chunk", None))
        names = getattr(policy, "key_classes", None)
        self.key_classes: tuple[str, ...] | None = tuple(names) if names else None
        self.key_velocities: np.ndarray | None = None
        if self.key_classes is not None:
            velocities = np.asarray(getattr(policy, "key_velocities", None), dtype=np.float64)
            if velocities.shape != (len(self.key_classes), len(self.action_dims)):
                raise TypeError(
                    f"{type(policy).__name__}.key_velocities must be ({len(self.key_classes)}, "
                    f"{len(self.action_dims)}), one command per key class, got {velocities.shape}"
                )
            self.key_velocities = velocities
        self.buffer = ChunkBuffer(max_steps=chunk_steps)
        self.stats = RunnerStats()
        self.lock = threading.Lock()

    def _acquire(self) -> float:
        start = time.perf_counter()
        if not self.lock.acquire(timeout=self.queue_timeout_s):
            raise ServerBusy(
                f"the model was busy for {self.queue_timeout_s:.1f} s (too many concurrent requests); retry"
            )
        return (time.perf_counter() - start) * 1000.0

    def step(self, image: np.ndarray, instruction: str, strategy: str) -> StepResult:
        """One control step. Never raises for a model failure: that becomes a safe stop."""
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if strategy == "chunk_reuse" and not self.supports_chunks:
            raise ValueError(
                f"strategy 'chunk_reuse' needs a model that predicts action chunks (Case 4); "
                f"{type(self.policy).__name__} does not, use 'receding_horizon'"
            )
        queue_ms = self._acquire()
        try:
            self.stats.requests += 1
            start = time.perf_counter()
            if strategy == "chunk_reuse":
                action, source, clamped, key = self._chunk_step(image, instruction)
            else:
                self.buffer.clear()  # a chunk made before this step is stale now
                action, source, clamped, key = self._single_step(image, instruction)
            inference_ms = (time.perf_counter() - start) * 1000.0
            if source.startswith("safe_stop:"):
                reason = source.split(":", 1)[1]
                self.stats.safe_stops[reason] = self.stats.safe_stops.get(reason, 0) + 1
            elif source == "reused":
                self.stats.reused += 1
            else:
                self.stats.inferred += 1
            return StepResult(
                action=action,
                source=source,
                strategy=strategy,
                clamped=clamped,
                buffer_status=self.buffer.status(),
                queue_ms=queue_ms,
                inference_ms=inference_ms,
                predicted_class=key,
            )
        finally:
            self.lock.release()

    def key_class_of(self, raw: np.ndarray) -> list[str | None]:
        """The key class of each row of raw commands ``(..., A)`` (nearest class velocity), or Nones."""
        rows = np.asarray(raw, dtype=np.float64).reshape(-1, len(self.action_dims))
        if self.key_classes is None or self.key_velocities is None:
            return [None] * len(rows)
        d = ((rows[:, None, :] - self.key_velocities[None]) ** 2).sum(-1)  # (R, C)
        return [self.key_classes[int(i)] for i in d.argmin(-1)]

    def _single_step(self, image: np.ndarray, instruction: str) -> tuple[np.ndarray, str, bool, str | None]:
        try:
            raw = self.policy.act(image, instruction)
        except Exception:
            logger.exception("model error in act(); answering with a safe stop (zero velocity)")
            return self._stop(safety.MODEL_ERROR)
        checked = safety.check_action(raw, self.limit_vector)
        if checked.stop_reason:
            logger.error(
                "model output unusable (%s: %r); answering with a safe stop", checked.stop_reason, raw
            )
            return self._stop(checked.stop_reason)
        if checked.clamped:
            logger.info("action %s clamped to the velocity limits", np.asarray(raw).tolist())
        return checked.action, "inferred", checked.clamped, self.key_class_of(raw)[0]

    def _chunk_step(self, image: np.ndarray, instruction: str) -> tuple[np.ndarray, str, bool, str | None]:
        if self.buffer.remaining > 0 and self.buffer.instruction == instruction:
            action, clamped, key = self.buffer.pop()
            return action, "reused", clamped, key
        self.buffer.clear()
        try:
            raw = self.policy.act_chunk(image, instruction)
        except Exception:
            logger.exception("model error in act_chunk(); answering with a safe stop (zero velocity)")
            return self._stop(safety.MODEL_ERROR)
        chunk, clamped_rows, reason = safety.check_chunk(raw, self.limit_vector)
        if reason:
            shape = getattr(raw, "shape", type(raw).__name__)
            logger.error("model chunk unusable (%s, shape %s); answering with a safe stop", reason, shape)
            return self._stop(reason)
        self.buffer.store(chunk, instruction, clamped_rows, self.key_class_of(raw))
        action, clamped, key = self.buffer.pop()
        return action, "inferred", clamped, key

    def _stop(self, reason: str) -> tuple[np.ndarray, str, bool, None]:
        self.buffer.clear()
        stop = safety.safe_stop(len(self.action_dims), reason)
        return stop.action, f"safe_stop:{reason}", False, None

    def reset(self) -> dict:
        """Start a new episode: clear the policy's history and the stored chunk."""
        self._acquire()
        try:
            self.buffer.clear()
            self.policy.reset()
            return self.buffer.status()
        finally:
            self.lock.release()
