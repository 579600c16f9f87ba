"""``BoundedMemo``: values computed once per distinct key, each key on its own, at most ``size`` kept (the
oldest dropped first). The one in-memory cache of instruction features: the backbone and the
``FeatureProvider`` both keep theirs in one (the on-disk cache is ``data.cache``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedMemo(Generic[K, V]):
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"BoundedMemo size must be >= 1, got {size}")
        self.size = size
        self._values: dict[K, V] = {}

    def get_many(self, keys: Iterable[K], compute_one: Callable[[K], V]) -> list[V]:
        """The value of every key, in order; a key not held is computed once (alone) with ``compute_one``."""
        keys = list(keys)
        found: dict[K, V] = {}
        for key in dict.fromkeys(keys):
            if key in self._values:
                found[key] = self._values[key]
                continue
            found[key] = self.put(key, compute_one(key))
        return [found[key] for key in keys]

    def get(self, key: K) -> V | None:
        return self._values.get(key)

    def put(self, key: K, value: V) -> V:
        """Keep ``value`` under ``key`` (dropping the oldest when full); returns ``value``."""
        if key not in self._values and len(self._values) >= self.size:
            self._values.pop(next(iter(self._values)))
        self._values[key] = value
        return value

    def clear(self) -> None:
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values
