"""Independent, reproducible random streams keyed by names.

Every random choice of the synthetic world draws from a stream derived from the world
seed and a tuple of keys (``("subject", "M003")``, ``("performance", "M003", "happy", 3,
"001")``, ...), never from a global generator. So an item is the same whatever else is
generated, in whatever order, and a resumed run reproduces exactly the items it skips.
"""

from __future__ import annotations

import hashlib

import numpy as np


def stable_key(key: object) -> int:
    """A 64-bit integer of ``str(key)`` that is the same on every run and platform."""
    return int.from_bytes(hashlib.sha256(str(key).encode("utf-8")).digest()[:8], "little")


def derive_rng(seed: int, *keys: object) -> np.random.Generator:
    """A numpy generator for ``(seed, *keys)``; different keys give independent streams."""
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    entropy = [int(seed)] + [stable_key(key) for key in keys]
    return np.random.default_rng(np.random.SeedSequence(entropy))
