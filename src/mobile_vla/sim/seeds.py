"""Seeds for simulated episodes: one integer per (run seed, episode index, purpose, attempt).

Collection and evaluation draw from different streams, so `collect --seed 0` and `evaluate --seed 0` never
share a layout: an evaluation is on unseen episodes unless asked otherwise.
"""

from __future__ import annotations

import numpy as np

PURPOSES = {"collect": 0, "evaluate": 1}


def episode_seed(seed: int, index: int, purpose: str = "evaluate", attempt: int = 0) -> int:
    """The layout seed of episode `index` in a run seeded `seed` (a 31-bit integer, stored with the episode)."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {sorted(PURPOSES)}, got {purpose!r}")
    if seed < 0 or index < 0 or attempt < 0:
        raise ValueError(f"seed, index and attempt must be >= 0, got {seed}, {index}, {attempt}")
    state = np.random.SeedSequence([seed, index, PURPOSES[purpose], attempt]).generate_state(1)[0]
    return int(state) & 0x7FFFFFFF
