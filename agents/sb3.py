"""stable-baselines3 agents: the PPO/SAC factory and the :class:`SB3Policy` adapter.

``make_agent`` turns a plain mapping of hyperparameters (the ``policy`` block plus the algorithm's
own keys, as ``defialloc.training.config.TrainConfig.agent_kwargs()`` produces it) into an SB3 model on a
VecEnv. ``SB3Policy`` wraps a trained model and a frozen copy of its observation-normalization
statistics so that it acts on the env's *raw* observations, deterministically, behind the shared
:class:`~defialloc.agents.policy.Policy` interface (backtests, validation, paper trading).

Observation normalization (SB3's ``VecNormalize``) is ``clip((obs - mean) / sqrt(var + eps), -c, c)``
per feature; the model only ever saw normalized observations, so the same map must be applied
before every prediction outside training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from defialloc.agents.policy import MarketView, Policy
from defialloc.agents.sb3_io import NormalizationStats

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "sac": SAC}
ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "tanh": torch.nn.Tanh,
    "relu": torch.nn.ReLU,
    "elu": torch.nn.ELU,
    "leaky_relu": torch.nn.LeakyReLU,
}
#: keys of the ``policy`` block that are not passed to SB3 as they are
_POLICY_BLOCK_KEYS = ("net_arch", "critic_arch", "activation")


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a CUDA device is visible, else ``"cpu"``; other values pass through."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device={device!r} must be 'auto', 'cpu', 'cuda' or 'cuda:<index>'")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def algorithm_class(algo: str) -> type[BaseAlgorithm]:
    """The SB3 class of ``algo`` (``"ppo"`` or ``"sac"``)."""
    if algo not in ALGORITHMS:
        raise ValueError(f"algo={algo!r} must be one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[algo]


def policy_kwargs(algo: str, policy: Mapping[str, Any]) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` from the config's ``policy`` block.

    ``net_arch`` (hidden sizes of the actor) and ``critic_arch`` (of the value net for PPO, of each
    Q-net for SAC; defaults to ``net_arch``) become SB3's ``dict(pi=..., vf|qf=...)``;
    ``activation`` names a torch activation; other keys (``log_std_init``, ``ortho_init``, ...) pass
    through unchanged, except ``log_std_init`` for SAC without gSDE (SB3 would silently ignore it:
    SAC's exploration noise is set by its entropy coefficient).
    """
    algorithm_class(algo)
    actor = list(policy.get("net_arch", [64, 64]))
    critic = list(policy.get("critic_arch") or actor)
    activation = policy.get("activation", "tanh" if algo == "ppo" else "relu")
    if activation not in ACTIVATIONS:
        raise ValueError(f"policy.activation={activation!r} must be one of {sorted(ACTIVATIONS)}")
    critic_key = "vf" if algo == "ppo" else "qf"
    kwargs: dict[str, Any] = {
        "net_arch": {"pi": actor, critic_key: critic},
        "activation_fn": ACTIVATIONS[activation],
    }
    kwargs.update(
        {k: v for k, v in policy.items() if k not in _POLICY_BLOCK_KEYS and v is not None}
    )
    if algo == "sac" and not policy.get("use_sde", False):
        kwargs.pop("log_std_init", None)
    return kwargs


def make_agent(
    algo: str,
    venv: VecEnv,
    cfg: Mapping[str, Any],
    device: str = "auto",
    *,
    seed: int | None = None,
    verbose: int = 0,
) -> BaseAlgorithm:
    """Build an untrained SB3 PPO or SAC model on ``venv`` (usually a ``VecNormalize``).

    Args:
        algo: ``"ppo"`` or ``"sac"``.
        venv: the (normalized) batched env; its observation/action spaces size the networks.
        cfg: ``{"policy": {...}, **hyperparameters}``: the ``policy`` block (see
            :func:`policy_kwargs`) and the algorithm's constructor arguments (``learning_rate``,
            ``n_steps``, ``batch_size``, ``train_freq``, ``gradient_steps``, ...), passed as they are.
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"``.
        seed: seeds torch, numpy and the action-space sampler.
        verbose: SB3 verbosity (0: silent; metrics go through the logger instead).
    """
    cls = algorithm_class(algo)
    hyper = {k: v for k, v in cfg.items() if k != "policy"}
    return cls(
        "MlpPolicy",
        venv,
        policy_kwargs=policy_kwargs(algo, cfg.get("policy", {})),
        device=resolve_device(device),
        seed=seed,
        verbose=verbose,
        **hyper,
    )


def load_model(
    algo: str,
    path: str | Path,
    venv: VecEnv | None = None,
    device: str = "auto",
    hyperparameters: Mapping[str, Any] | None = None,
) -> BaseAlgorithm:
    """Load a saved model zip without unpickling anything (:func:`defialloc.agents.sb3_io.load_model`).

    ``venv`` and the config's ``hyperparameters`` (``TrainConfig.agent_kwargs()``) are needed only to
    continue training; without them the model is for inference (its learning rate is 0).
    """
    from defialloc.agents.sb3_io import load_model as safe_load

    algorithm_class(algo)
    return safe_load(
        algo, path, env=venv, device=resolve_device(device), hyperparameters=hyperparameters
    )


@dataclass(frozen=True)
class ObsNormalizer:
    """A frozen copy of ``VecNormalize``'s observation statistics.

    Attributes:
        mean: ``(obs_dim,)`` running mean of the raw observations.
        var: ``(obs_dim,)`` running variance.
        clip: normalized observations are clipped to ``[-clip, clip]``.
        epsilon: added to the variance before the square root.
        enabled: False when the model was trained on raw observations (then this is the identity).
    """

    mean: np.ndarray
    var: np.ndarray
    clip: float
    epsilon: float
    enabled: bool = True

    @classmethod
    def identity(cls, obs_dim: int) -> ObsNormalizer:
        return cls(np.zeros(obs_dim), np.ones(obs_dim), np.inf, 0.0, enabled=False)

    @classmethod
    def from_vec_normalize(cls, venv: VecNormalize) -> ObsNormalizer:
        """Snapshot (copy) the current statistics; later updates of ``venv`` do not leak in."""
        rms = venv.obs_rms
        return cls(
            np.array(rms.mean, dtype=np.float64),
            np.array(rms.var, dtype=np.float64),
            float(venv.clip_obs),
            float(venv.epsilon),
            enabled=bool(venv.norm_obs),
        )

    @classmethod
    def from_stats(cls, stats: NormalizationStats) -> ObsNormalizer:
        """The observation part of saved statistics (:class:`defialloc.agents.sb3_io.NormalizationStats`)."""
        return cls(
            stats.obs_mean.copy(),
            stats.obs_var.copy(),
            stats.clip_obs,
            stats.epsilon,
            stats.norm_obs,
        )

    @classmethod
    def load(cls, path: str | Path) -> ObsNormalizer:
        """Read the statistics from ``vecnormalize.npz`` (or a legacy ``vecnormalize.pkl``, through
        the restricted unpickler of :mod:`defialloc.agents.sb3_io`: nothing in the file is run)."""
        return cls.from_stats(NormalizationStats.load(path))

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        """Normalize ``(B, obs_dim)`` raw observations (float32 out, like VecNormalize)."""
        if not self.enabled:
            return np.asarray(observation, dtype=np.float32)
        z = (np.asarray(observation, dtype=np.float64) - self.mean) / np.sqrt(
            self.var + self.epsilon
        )
        return np.clip(z, -self.clip, self.clip).astype(np.float32)


class SB3Policy(Policy):
    """A trained SB3 model acting deterministically on raw env observations.

    ``act(observation (B, obs_dim), view) -> actions (B, action_dim)`` in the env's Box ``[-1, 1]``:
    the observation is normalized with the frozen :class:`ObsNormalizer`, then the model's
    deterministic action is taken (PPO: the Gaussian mean clipped to the Box; SAC: the squashed mean).
    ``decision_every``: the market steps per decision it was trained with (``env.decision_every``);
    backtests hold its portfolio in between (``defialloc.evaluation.rollout.run_policy``).
    """

    def __init__(
        self,
        model: BaseAlgorithm,
        normalizer: ObsNormalizer | None = None,
        name: str | None = None,
        decision_every: int = 1,
    ):
        obs_shape = model.observation_space.shape
        if obs_shape is None or len(obs_shape) != 1:
            raise ValueError(f"SB3Policy needs a flat Box observation space, got shape {obs_shape}")
        self.model = model
        self.obs_dim = int(obs_shape[0])
        self.action_dim = int(model.action_space.shape[0])
        self.normalizer = normalizer or ObsNormalizer.identity(self.obs_dim)
        if self.normalizer.mean.shape != (self.obs_dim,):
            raise ValueError(
                f"normalizer has {self.normalizer.mean.shape[0]} features, the model expects {self.obs_dim}"
            )
        self.name = name or type(model).__name__.lower()
        self.action_kind = None  # the env config's kind: the one it was trained in
        if decision_every < 1:
            raise ValueError(f"decision_every={decision_every} must be >= 1 (market steps)")
        self.decision_every = int(decision_every)

    @classmethod
    def load(
        cls,
        algo: str,
        model_path: str | Path,
        vecnormalize_path: str | Path | None = None,
        name: str | None = None,
        device: str = "cpu",
        decision_every: int = 1,
    ) -> SB3Policy:
        """Load a saved model zip and (optionally) its ``VecNormalize`` statistics file."""
        model = load_model(algo, model_path, device=device)
        normalizer = (
            ObsNormalizer.load(vecnormalize_path) if vecnormalize_path is not None else None
        )
        return cls(model, normalizer, name=name or algo, decision_every=decision_every)

    def act(self, observation: np.ndarray, view: MarketView | None = None) -> np.ndarray:
        obs = np.asarray(observation)
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"observation has shape {obs.shape}; expected (B, {self.obs_dim})")
        actions, _ = self.model.predict(self.normalizer(obs), deterministic=True)
        return np.asarray(actions, dtype=np.float64).reshape(obs.shape[0], self.action_dim)
