"""Stand-in policies for exercising the server without a trained model (tests, the load benchmark, trying the
robot path end to end). Each is a ``ControlPolicy``; none of them knows how to drive.

- :class:`ImageStatsPolicy`: deterministic, reads the image (mean brightness, left/right balance) and the
  instruction's side, so a test can tell whether an answer came from its own request.
- :class:`NaNPolicy`, :class:`RaisingPolicy`: the two failures the server must turn into a stop.
- :class:`FlakyPolicy`: like ``ImageStatsPolicy`` but raises on every N-th call (the soak benchmark).
- :class:`SlowPolicy`: sleeps, and records whether two calls ever overlapped (they must not).
- :class:`ChunkPolicy`: Case 4-like, ``act_chunk`` returns ``(K, A)`` and counts its calls.
"""

from __future__ import annotations

import threading
import time

import numpy as np


class ImageStatsPolicy:
    """``linear_x`` = mean brightness in [0, 1] scaled by ``gain``; ``linear_y`` = (left half - right half)
    brightness, plus +-0.1 for an instruction that says left/right. Pure function of its inputs.
    ``stride`` > 1 reads every stride-th pixel only (nearly free on a 720x1280 frame: the load benchmark)."""

    def __init__(
        self, action_dims: tuple[str, ...] = ("linear_x", "linear_y"), gain: float = 1.0, stride: int = 1
    ) -> None:
        self.action_dims = tuple(action_dims)
        self.gain = gain
        self.stride = stride
        self.calls = 0
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        self.calls += 1
        pixels = np.asarray(image)[:: self.stride, :: self.stride].astype(np.float64) / 255.0  # (H, W, 3)
        half = pixels.shape[1] // 2
        side = 0.1 if "left" in instruction else -0.1 if "right" in instruction else 0.0
        values = [
            self.gain * pixels.mean(),
            self.gain * (pixels[:, :half].mean() - pixels[:, half:].mean()) + side,
        ]
        values += [0.0] * (len(self.action_dims) - 2)
        return np.array(values[: len(self.action_dims)], dtype=np.float32)


class ConstantPolicy:
    """Always the same action (e.g. one beyond the velocity limits, to test clamping)."""

    def __init__(self, action, action_dims: tuple[str, ...] = ("linear_x", "linear_y")) -> None:
        self.action_dims = tuple(action_dims)
        self.value = np.asarray(action, dtype=np.float32)

    def reset(self) -> None:
        pass

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        return self.value.copy()


class NaNPolicy(ConstantPolicy):
    def __init__(self, action_dims: tuple[str, ...] = ("linear_x", "linear_y")) -> None:
        super().__init__([np.nan] + [0.5] * (len(action_dims) - 1), action_dims)


class RaisingPolicy:
    action_dims = ("linear_x", "linear_y")

    def reset(self) -> None:
        pass

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")


class FlakyPolicy(ImageStatsPolicy):
    """``ImageStatsPolicy`` that raises on every ``every``-th call (1-based), as a model failing now and then."""

    def __init__(self, every: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.attempts = 0
        self.failures = 0
        self._counter_lock = threading.Lock()

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        with self._counter_lock:
            self.attempts += 1
            fail = self.attempts % self.every == 0
            self.failures += fail
        if fail:
            raise RuntimeError(f"simulated model failure (call {self.attempts}, every {self.every}th fails)")
        return super().act(image, instruction)


class SlowPolicy(ImageStatsPolicy):
    """Sleeps ``delay_s`` per call; ``max_concurrent`` records how many calls were ever inside at once."""

    def __init__(self, delay_s: float = 0.05, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay_s = delay_s
        self._inside = 0
        self.max_concurrent = 0
        self._counter_lock = threading.Lock()

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        with self._counter_lock:
            self._inside += 1
            self.max_concurrent = max(self.max_concurrent, self._inside)
        try:
            time.sleep(self.delay_s)
            return super().act(image, instruction)
        finally:
            with self._counter_lock:
                self._inside -= 1


class ChunkPolicy(ImageStatsPolicy):
    """``act_chunk`` -> ``(K, A)`` whose row k is ``act(...) + k * step`` (so rows are distinguishable)."""

    def __init__(self, chunk_size: int = 4, step: float = 0.01, **kwargs) -> None:
        super().__init__(**kwargs)
        self.chunk_size = chunk_size
        self.step = step
        self.chunk_calls = 0

    def act_chunk(self, image: np.ndarray, instruction: str) -> np.ndarray:
        self.chunk_calls += 1
        first = super().act(image, instruction)  # (A,)
        offsets = np.arange(self.chunk_size, dtype=np.float32)[:, None] * self.step  # (K, 1)
        return first[None, :] + offsets  # (K, A)


class CPUWorkPolicy(ImageStatsPolicy):
    """Does a fixed amount of real CPU work per call (resize to 224x224 and a small matrix product), as a
    rough stand-in for a lite model's cost in the load benchmark."""

    def __init__(self, work: int = 64, **kwargs) -> None:
        super().__init__(**kwargs)
        rng = np.random.default_rng(0)
        self._weights = rng.standard_normal((224 * 3, work)).astype(np.float32)

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        from PIL import Image

        small = np.asarray(Image.fromarray(np.asarray(image)).resize((224, 224)), dtype=np.float32) / 255.0
        features = small.reshape(224, 224 * 3) @ self._weights  # (224, work)
        action = super().act(small.astype(np.float32) * 255.0, instruction)
        return action + 0.0 * float(features.mean())
