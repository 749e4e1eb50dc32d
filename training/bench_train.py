"""Training throughput (``defialloc bench train``): env steps/s of PPO and SAC and where the time goes.

The raw batched env is wrapped in :class:`StepTimer` (under VecNormalize), which adds up the wall
time spent inside ``reset`` and ``step_wait``; everything else (policy forward passes, VecNormalize,
buffers, gradient updates) is the learner's. Nothing is logged to MLflow. SAC's ``learning_starts``
is cut to one batch so the figure is the steady state with updates, not the random warm-up.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from defialloc.agents.sb3 import make_agent, resolve_device
from defialloc.training.config import TrainConfig, load_train_config
from defialloc.training.train import build_env, configure_torch


class StepTimer(VecEnvWrapper):
    """Accumulate the wall time (s) and env steps (summed over envs) of the wrapped VecEnv."""

    def __init__(self, venv: VecEnv) -> None:
        super().__init__(venv)
        self.seconds = 0.0
        self.env_steps = 0

    def reset(self):  # noqa: ANN201 - VecEnvObs
        start = time.perf_counter()
        obs = self.venv.reset()
        self.seconds += time.perf_counter() - start
        return obs

    def step_wait(self):  # noqa: ANN201 - VecEnvStepReturn
        start = time.perf_counter()
        out = self.venv.step_wait()
        self.seconds += time.perf_counter() - start
        self.env_steps += self.num_envs
        return out


def bench_algorithm(cfg: TrainConfig, steps: int) -> dict[str, Any]:
    """Train ``cfg``'s agent for ``steps`` env steps (no MLflow, no callbacks) and time it.

    Returns ``env_steps_per_s`` (all envs), ``env_share`` (fraction of wall time in the env),
    ``env_only_steps_per_s`` and the settings that drive the figure.
    """
    configure_torch(cfg.seed, cfg.torch_threads)
    timers: list[StepTimer] = []

    def timed(venv: VecEnv) -> VecEnv:
        timers.append(StepTimer(venv))
        return timers[-1]

    venv = build_env(cfg, cfg.seed, wrap=timed)
    timer = timers[0]
    kwargs = cfg.agent_kwargs()
    if cfg.algo == "sac":
        kwargs["learning_starts"] = min(kwargs["learning_starts"], kwargs["batch_size"])
    model = make_agent(cfg.algo, venv, kwargs, cfg.device, seed=cfg.seed)
    model.set_logger(Logger(folder=None, output_formats=[]))
    start = time.perf_counter()
    model.learn(steps, progress_bar=False)
    wall = time.perf_counter() - start
    done = int(model.num_timesteps)
    result: dict[str, Any] = {
        "algo": cfg.algo,
        "env_steps": done,
        "wall_s": round(wall, 3),
        "env_steps_per_s": round(done / wall, 1),
        "env_share": round(timer.seconds / wall, 4),
        "env_only_steps_per_s": round(timer.env_steps / timer.seconds, 1)
        if timer.seconds > 0
        else None,
        "n_envs": cfg.n_envs,
        "net_arch": cfg.policy.net_arch,
        "torch_threads": torch.get_num_threads(),
        "device": resolve_device(cfg.device),
        "horizon": cfg.simulation.env.horizon,
    }
    if cfg.algo == "ppo":
        result |= {
            "n_steps": cfg.ppo.n_steps,
            "batch_size": cfg.ppo.batch_size,
            "n_epochs": cfg.ppo.n_epochs,
        }
    else:
        result |= {
            "batch_size": cfg.sac.batch_size,
            "train_freq": cfg.sac.train_freq,
            "gradient_steps": cfg.sac.gradient_steps,
            "updates_per_env_step": round(
                cfg.sac.gradient_steps / (cfg.sac.train_freq * cfg.n_envs), 4
            ),
        }
    venv.close()
    return result


def bench_train(
    configs: dict[str, str],
    steps: dict[str, int],
    overrides: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Benchmark each ``{algo: config path}`` for ``steps[algo]`` env steps (overrides apply to all)."""
    return {
        algo: bench_algorithm(load_train_config(path, overrides), steps[algo])
        for algo, path in configs.items()
    }
