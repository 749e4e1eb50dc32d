"""Scenario seed spaces, disjoint by construction.

A market path is a deterministic function of its scenario seed. Environments used for training draw
each episode's path seed from ``[TRAIN_SEED_BASE, 2**63)``; evaluation scenario sets (validation,
test) are fixed integers below ``TRAIN_SEED_BASE``. No training episode can therefore replay a
validation or test path.
"""

from __future__ import annotations

import numpy as np

TRAIN_SEED_BASE = 2**62
VALIDATION_SEED_BASE = 1_000_000
TEST_SEED_BASE = 2_000_000
SEEDS_PER_SET = 1_000_000


def draw_training_path_seed(rng: np.random.Generator) -> int:
    """A path seed for a training episode (upper half of the seed space)."""
    return int(TRAIN_SEED_BASE + rng.integers(0, 2**62, dtype=np.int64))


def scenario_seeds(kind: str, n: int) -> np.ndarray:
    """The first ``n`` seeds of an evaluation set: ``"validation"`` (model selection during training)
    or ``"test"`` (final held-out comparisons only)."""
    bases = {"validation": VALIDATION_SEED_BASE, "test": TEST_SEED_BASE}
    if kind not in bases:
        raise ValueError(f"scenario set {kind!r} must be one of {sorted(bases)}")
    if not 1 <= n <= SEEDS_PER_SET:
        raise ValueError(f"number of {kind} seeds n={n} must be in [1, {SEEDS_PER_SET}]")
    return np.arange(bases[kind], bases[kind] + n, dtype=np.int64)


def check_evaluation_seeds(seeds: np.ndarray) -> np.ndarray:
    """Refuse evaluation seeds in the training range."""
    seeds = np.asarray(seeds, dtype=np.int64)
    if np.any(seeds < 0) or np.any(seeds >= TRAIN_SEED_BASE):
        raise ValueError(
            f"evaluation seeds must be in [0, 2**62) to stay disjoint from training; got {seeds}"
        )
    return seeds
