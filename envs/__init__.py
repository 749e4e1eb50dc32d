"""defialloc environments: a multi-protocol DeFi market simulator behind the Gymnasium API.

``import defialloc.envs`` registers ``defialloc/DeFiMarket-v0`` (and the older ``DeFiMarket-v0``). Entry points: :func:`make_env` (one Gymnasium env) and
:func:`make_vec_env` (a stable-baselines3 VecEnv stepping many envs in one vectorized computation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym

from defialloc.envs.config import ConfigError, SimulationConfig, load_config

#: Gymnasium id, in the ``namespace/Name-vN`` convention.
ENV_ID = "defialloc/DeFiMarket-v0"
#: The id before the namespace (kept as an alias for one release; prefer :data:`ENV_ID`).
LEGACY_ENV_ID = "DeFiMarket-v0"

for _id in (ENV_ID, LEGACY_ENV_ID):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point="defialloc.envs.env:DeFiMarketEnv")


def make_env(
    config: SimulationConfig | dict | str | Path | None = None,
    *,
    seed: int | None = None,
    **overrides: Any,
):
    """Build one :class:`~defialloc.envs.env.DeFiMarketEnv`.

    Args:
        config: YAML path, dict of sections, or config model (None: ``configs/default.yaml``).
        seed: if given, the env is reset once with it so later ``reset()`` calls are reproducible.
        overrides: dotted keys, e.g. ``make_env(**{"env.horizon": 50})`` or ``env__horizon=50``.
    """
    from defialloc.envs.env import DeFiMarketEnv

    env = DeFiMarketEnv(load_config(config, overrides or None))
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def make_vec_env(
    config: SimulationConfig | dict | str | Path | None = None,
    n_envs: int = 8,
    seed: int | None = None,
    **overrides: Any,
):
    """Build a :class:`~defialloc.envs.vec_env.DeFiMarketVecEnv` of ``n_envs`` envs (env ``i`` seeded ``seed + i``)."""
    from defialloc.envs.vec_env import DeFiMarketVecEnv

    return DeFiMarketVecEnv(load_config(config, overrides or None), n_envs=n_envs, seed=seed)


__all__ = ["ENV_ID", "ConfigError", "SimulationConfig", "load_config", "make_env", "make_vec_env"]
