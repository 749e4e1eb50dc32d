"""A stable-baselines3 ``VecEnv`` that steps all envs in one vectorized computation.

Env ``i`` is seeded with ``seed + i`` (SB3's convention) and draws each episode's market path from its
own generator, exactly as a single :class:`~defialloc.envs.env.DeFiMarketEnv` reset with ``seed + i`` would, so
the two agree step for step. Finished envs are reset automatically (SB3 semantics: the returned
observation is the new episode's first one; the final one is in ``infos[i]["terminal_observation"]``).

For speed, per-env ``infos`` carry only what SB3 needs (``terminal_observation``, ``TimeLimit.truncated``
and an ``episode`` summary at episode end); the full per-step info of every env is available as batched
arrays in :attr:`last_step` (a :class:`~defialloc.envs.step_records.StepResult`) and through :meth:`env_info`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from defialloc.envs.compiled import make_simulator
from defialloc.envs.config import SimulationConfig
from defialloc.envs.episode_prefetch import EpisodePrefetch
from defialloc.envs.seeds import draw_training_path_seed
from defialloc.envs.simulator import PortfolioSimulator
from defialloc.envs.step_records import StepResult, combine_steps


class DeFiMarketVecEnv(VecEnv):
    """``n_envs`` DeFi market envs sharing one :class:`PortfolioSimulator`."""

    def __init__(
        self,
        config: SimulationConfig,
        n_envs: int,
        seed: int | None = None,
        *,
        simulator: type[PortfolioSimulator] | None = None,
    ) -> None:
        """``simulator``: None for the runtime simulator (compiled where it covers the config,
        :func:`defialloc.envs.compiled.make_simulator`); ``PortfolioSimulator`` runs the numpy
        reference instead (equivalence checks, the bench's reference figures)."""
        self.config = config
        self.render_mode = None
        config.env.check_decision_interval()
        self.sim = (
            make_simulator(config, n_envs) if simulator is None else simulator(config, n_envs)
        )
        clip = config.env.observation.clip
        action_space = gym.spaces.Box(-1.0, 1.0, shape=(self.sim.action_dim,), dtype=np.float32)
        obs_space = gym.spaces.Box(-clip, clip, shape=(self.sim.obs_dim,), dtype=np.float32)
        super().__init__(n_envs, obs_space, action_space)
        self._rngs = [seeding.np_random(None)[0] for _ in range(n_envs)]
        self._upcoming = EpisodePrefetch(self.sim, self._draw_path_seeds)
        self._actions: np.ndarray | None = None
        self._episode_return = np.zeros(n_envs)
        self._episode_length = np.zeros(n_envs, dtype=np.int64)
        self.last_step: StepResult | None = None
        if seed is not None:
            self.seed(seed)

    @property
    def asset_names(self) -> tuple[str, ...]:
        return (*self.sim.asset_names, self.config.market.numeraire)

    # SB3 VecEnv API ---------------------------------------------------------
    def seed(self, seed: int | None = None) -> Sequence[None | int]:
        self._rngs = [
            seeding.np_random(None if seed is None else seed + i)[0] for i in range(self.num_envs)
        ]
        self._upcoming.clear()
        return [None if seed is None else seed + i for i in range(self.num_envs)]

    def _draw_path_seeds(self, index: np.ndarray) -> np.ndarray:
        return np.array([draw_training_path_seed(self._rngs[i]) for i in index], dtype=np.int64)

    def _reset_envs(self, index: np.ndarray) -> None:
        """Start the next episode of envs ``index`` (drawn ahead in batches: envs/episode_prefetch.py)."""
        for group in self._upcoming.pop(index):
            self.sim.reset_envs(group.envs, group.seeds, drawn=group.drawn)

    def reset(self) -> np.ndarray:
        self._reset_envs(np.arange(self.num_envs))
        self._episode_return[:] = 0.0
        self._episode_length[:] = 0
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return self.sim.observe()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        result, obs = self.sim.step_observe(self._actions)
        steps = [result]
        ended = result.terminated | result.truncated
        final_obs: np.ndarray | None = None
        # env.decision_every > 1: hold through the interval; an env whose episode ends inside it
        # keeps the observation of that moment (its later steps are discarded by combine_steps)
        for _ in range(self.config.env.decision_every - 1):
            if ended.all():
                break
            if ended.any():
                final_obs = obs if final_obs is None else final_obs
            result, obs = self.sim.step_observe(None, hold=True)
            steps.append(result)
            now_ended = (result.terminated | result.truncated) & ~ended
            if now_ended.any():
                final_obs = obs.copy() if final_obs is None else final_obs
                final_obs[now_ended] = obs[now_ended]
            ended |= now_ended
        result = combine_steps(steps)
        self.last_step = result
        self._episode_return += result.reward
        self._episode_length += 1
        if final_obs is not None:  # the ended envs' observations at the moment they ended
            early = result.terminated | result.truncated
            obs[early] = final_obs[early]
        done = result.terminated | result.truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if done.any():
            index = np.flatnonzero(done)
            for i in index:
                infos[i] = {
                    "terminal_observation": obs[i].copy(),
                    "TimeLimit.truncated": bool(result.truncated[i]),
                    "episode": {
                        "r": float(self._episode_return[i]),
                        "l": int(self._episode_length[i]),
                    },
                    "portfolio_value": float(result.value_usd[i]),
                }
            self._reset_envs(index)
            self._episode_return[index] = 0.0
            self._episode_length[index] = 0
            obs[index] = self.sim.observe()[index]
        return obs, result.reward.astype(np.float32), done, infos

    def env_info(self, index: int) -> dict:
        """The single env's documented ``info`` dict for env ``index`` after the last step."""
        return self.sim.info(index, self.last_step)

    def close(self) -> None:
        return None

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self, attr_name, value)

    def env_method(
        self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs
    ) -> list[Any]:
        method = getattr(self, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        return [False for _ in self._get_indices(indices)]
