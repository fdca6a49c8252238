"""The method's random choices, each seeded so that a rerun makes the same ones: the seed of
every draw, and which questions get a full-length sample (UPFT's fraction p)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from upft.errors import UserError


def request_seed(base_seed: int, *parts: object) -> int:
    """A per-draw seed derived from (base seed, question id, sample index): reruns draw alike."""
    blob = ":".join(map(str, (base_seed, *parts))).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")


def choose_full(ids: Sequence[str], p: float, seed: int) -> set[str]:
    """The round(p*N) question ids that get a full-length draw (seeded, order-independent)."""
    if not 0.0 <= p <= 1.0:
        raise UserError(f"p must be in [0, 1], got {p}")
    k = round(p * len(ids))
    return set(random.Random(seed).sample(sorted(ids), k))
