"""Throughput benchmark of the single and the batched env (``defialloc bench env``).

Actions are drawn uniformly from the Box in advance so the figure measures the env, not the sampler.
Episodes reset as they end, so resets (market path generation and features) are included.
"""

from __future__ import annotations

import time

import numpy as np

from defialloc.envs.config import SimulationConfig


def bench_single(config: SimulationConfig, steps: int = 20_000, seed: int = 0) -> float:
    """Env steps per second of one :class:`DeFiMarketEnv` under uniform random actions."""
    from defialloc.envs.env import DeFiMarketEnv

    env = DeFiMarketEnv(config)
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1.0, 1.0, size=(steps, env.action_space.shape[0])).astype(np.float32)
    env.reset(seed=seed)
    start = time.perf_counter()
    for i in range(steps):
        _, _, terminated, truncated, _ = env.step(actions[i])
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def bench_batched(config: SimulationConfig, n_envs: int, steps: int, seed: int = 0) -> float:
    """Env steps per second (summed over envs) of the batched VecEnv with ``n_envs`` envs."""
    from defialloc.envs.vec_env import DeFiMarketVecEnv

    venv = DeFiMarketVecEnv(config, n_envs=n_envs, seed=seed)
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1.0, 1.0, size=(steps, n_envs, venv.action_space.shape[0])).astype(
        np.float32
    )
    venv.reset()
    start = time.perf_counter()
    for i in range(steps):
        venv.step(actions[i])
    return n_envs * steps / (time.perf_counter() - start)


def bench_env(config: SimulationConfig, quick: bool = False) -> dict:
    """Run the env benchmark; returns ``{"single_steps_per_s": x, "batched_env_steps_per_s": {...}}``."""
    scale = 0.2 if quick else 1.0
    single = bench_single(config, steps=int(20_000 * scale))
    batched = {}
    for n_envs, steps in ((1, 10_000), (64, 2_000), (256, 1_000)):
        batched[str(n_envs)] = bench_batched(config, n_envs, max(int(steps * scale), 50))
    return {
        "single_steps_per_s": round(single, 1),
        "batched_env_steps_per_s": {k: round(v, 1) for k, v in batched.items()},
        "horizon": config.env.horizon,
        "n_assets": len(config.market.assets),
        "market_source": config.market.source,
    }
