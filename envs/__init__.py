"""defialloc environments: a multi-protocol DeFi market simulator behind the Gymnasium API.

``import envs`` registers ``DeFiMarket-v0``. Entry points: :func:`make_env` (one Gymnasium env) and
:func:`make_vec_env` (a stable-baselines3 VecEnv stepping many envs in one vectorized computation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym

from envs.config import ConfigError, SimulationConfig, load_config

ENV_ID = "DeFiMarket-v0"

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="envs.env:DeFiMarketEnv")


def make_env(
    config: SimulationConfig | dict | str | Path | None = None,
    *,
    seed: int | None = None,
    **overrides: Any,
):
    """Build one :class:`~envs.env.DeFiMarketEnv`.

    Args:
        config: YAML path, dict of sections, or config model (None: ``configs/default.yaml``).
        seed: if given, the env is reset once with it so later ``reset()`` calls are reproducible.
        overrides: dotted keys, e.g. ``make_env(**{"env.horizon": 50})`` or ``env__horizon=50``.
    """
    from envs.env import DeFiMarketEnv

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
    """Build a :class:`~envs.vec_env.DeFiMarketVecEnv` of ``n_envs`` envs (env ``i`` seeded ``seed + i``)."""
    from envs.vec_env import DeFiMarketVecEnv

    return DeFiMarketVecEnv(load_config(config, overrides or None), n_envs=n_envs, seed=seed)


__all__ = ["ENV_ID", "ConfigError", "SimulationConfig", "load_config", "make_env", "make_vec_env"]
