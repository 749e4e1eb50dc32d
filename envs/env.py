"""``defialloc/DeFiMarket-v0``: the single Gymnasium environment (the batched simulator with one env)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from defialloc.envs.compiled import make_simulator
from defialloc.envs.config import SimulationConfig, load_config
from defialloc.envs.seeds import draw_training_path_seed
from defialloc.envs.simulator import PortfolioSimulator
from defialloc.envs.step_records import combine_steps


class DeFiMarketEnv(gym.Env):
    """Allocate a portfolio across DeFi spot assets and cash, trading through AMM pools.

    Action: ``Box(-1, 1, (N+1,))`` (more with lending/perps) mapped to targets by the config's action
    kind (``envs/action_kinds.py``). One ``step`` is one decision: ``env.decision_every`` market
    steps, trading at the first and holding through the rest; the reward sums the interval and
    ``info`` reports its summed flows and the final state. Observation: ``Box(-clip, clip, (obs_dim,))`` float32 (layout in
    ``envs/features.py``). Each ``reset`` draws a fresh market path from the env's seeded generator,
    in the training seed range (see ``envs/seeds.py``); ``reset(options={"paths": MarketPaths})`` runs
    a given evaluation path instead.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        config: SimulationConfig | dict | str | Path | None = None,
        *,
        simulator: type[PortfolioSimulator] | None = None,
        **overrides: Any,
    ) -> None:
        """``overrides``: dotted config keys (``**{"env.horizon": 100}``). ``simulator``: None for the
        runtime simulator (compiled where it covers the config); ``PortfolioSimulator`` for the
        numpy reference (equivalence checks, the bench's reference figures)."""
        super().__init__()
        self.config = load_config(config, overrides or None)
        self.config.env.check_decision_interval()
        sim_class = simulator or make_simulator
        self.sim = sim_class(self.config, n_envs=1)
        clip = self.config.env.observation.clip
        self.action_space = gym.spaces.Box(
            -1.0, 1.0, shape=(self.sim.action_dim,), dtype=np.float32
        )
        self.observation_space = gym.spaces.Box(
            -clip, clip, shape=(self.sim.obs_dim,), dtype=np.float32
        )
        self._index = np.zeros(1, dtype=np.int64)
        self._needs_reset = True

    @property
    def asset_names(self) -> tuple[str, ...]:
        """Names aligned with ``info['holdings']``, ``info['weights']`` and ``info['prices']`` (cash last)."""
        return (*self.sim.asset_names, self.config.market.numeraire)

    def reset(
        self, *, seed: int | None = None, options: dict | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        path_seed = np.array([draw_training_path_seed(self.np_random)], dtype=np.int64)
        paths = (options or {}).get("paths")
        self.sim.reset_envs(self._index, path_seed, paths=paths)
        self._needs_reset = False
        return self.sim.observe()[0], self.sim.info(0)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step() (and after an episode ends)")
        actions = np.asarray(action)[None, :] if np.ndim(action) == 1 else action
        result, obs = self.sim.step_observe(actions)
        steps, every = [result], self.config.env.decision_every
        # the steps until the next decision: the market, carry and liquidations move, no order
        while len(steps) < every and not (result.terminated[0] or result.truncated[0]):
            result, obs = self.sim.step_observe(None, hold=True)
            steps.append(result)
        result = combine_steps(steps)
        terminated, truncated = bool(result.terminated[0]), bool(result.truncated[0])
        self._needs_reset = terminated or truncated
        return (
            obs[0],
            float(result.reward[0]),
            terminated,
            truncated,
            self.sim.info(0, result),
        )
