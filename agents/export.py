"""Export a trained SB3 policy to ONNX: one graph from the raw observation to the env's targets.

The graph (input ``observation`` ``(B, obs_dim)`` float32, dynamic batch ``B``) computes, in order:

1. VecNormalize's observation normalization, in float64 like SB3:
   ``clip((obs - mean) / sqrt(var + epsilon), -clip, clip)``, then cast to float32;
2. the actor's deterministic action: PPO's Gaussian mean (clamped to the Box, as ``model.predict``
   clips it); SAC's ``tanh`` of its mean, rescaled from ``[-1, 1]`` to the Box bounds;
3. the action -> target-weights map of ``envs/actions.py`` in torch ops, in float64.

Outputs: ``action`` ``(B, action_dim)`` float32, ``target_weights`` ``(B, N+1)`` float64 (cash last)
and, when the env's action has more dimensions than the weights, ``extra_actions`` (clipped, for the
env to interpret). The torch 2.13 default (dynamo) exporter trips over SB3's distribution checks, so
the graph is built from the actor's modules directly and exported with the legacy exporter
(``dynamo=False``), with a dynamic batch axis; every export is checked against the torch module on
sample observations before it is written.

``manifest.json`` (see ``agents/onnx_policy.py``) goes next to ``policy.onnx``. Loading a model from an
MLflow training run and logging the export to MLflow live in ``agents/export_mlflow.py``.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import io
import json
import platform
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from defialloc.agents.onnx_policy import (
    ACTION_OUTPUT,
    EXTRA_OUTPUT,
    INPUT_NAME,
    MANIFEST_FILE,
    ONNX_FILE,
    PASSTHROUGH_TRANSFORM,
    WEIGHTS_OUTPUT,
    WEIGHTS_TRANSFORMS,
    ActionBlock,
    OnnxPolicy,
    PolicyManifest,
    sha256_file,
)
from defialloc.agents.sb3 import ObsNormalizer, algorithm_class
from defialloc.agents.sb3_io import LEGACY_STATS_FILE, STATS_FILE, load_model
from defialloc.envs.actions import ZERO_MASS
from defialloc.envs.config import SimulationConfig, load_config
from defialloc.envs.features import feature_names
from defialloc.envs.simulator import PortfolioSimulator

OPSET = 17


# ---------------------------------------------------------------------------- the graph
class _GaussianMeanActor(torch.nn.Module):
    """PPO (ActorCriticPolicy): features -> policy MLP -> action_net (the Gaussian mean)."""

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        shared = getattr(policy, "share_features_extractor", True)
        self.features = policy.features_extractor if shared else policy.pi_features_extractor
        self.latent = policy.mlp_extractor.policy_net
        self.head = policy.action_net

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.latent(self.features(obs)))


class _SquashedActor(torch.nn.Module):
    """SAC (Actor): features -> latent_pi -> mu; the deterministic action is ``tanh(mu)``."""

    def __init__(self, actor: torch.nn.Module) -> None:
        super().__init__()
        self.features = actor.features_extractor
        self.latent = actor.latent_pi
        self.head = actor.mu

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.latent(self.features(obs)))


class DeployedPolicy(torch.nn.Module):
    """Raw observation -> (action, target weights[, extra actions]); see the module docstring.

    Args:
        actor: returns the pre-squash mean ``(B, action_dim)`` for normalized float32 observations.
        squash: the action is ``tanh(mean)`` rescaled to ``[low, high]`` (SAC); else the mean is clamped.
        low, high: ``(action_dim,)`` Box bounds.
        normalizer: VecNormalize's frozen statistics (identity when disabled).
        n_weights: ``N + 1``, the leading action entries that map to target weights.
    """

    def __init__(
        self,
        actor: torch.nn.Module,
        squash: bool,
        low: np.ndarray,
        high: np.ndarray,
        normalizer: ObsNormalizer,
        n_weights: int,
        weights_output: bool = True,
    ) -> None:
        super().__init__()
        self.weights_output = weights_output
        self.actor = actor
        self.squash = squash
        self.normalize = normalizer.enabled
        self.clip_obs = float(normalizer.clip)
        self.n_weights = n_weights
        self.action_dim = int(len(low))
        self.register_buffer(
            "obs_mean", torch.as_tensor(np.asarray(normalizer.mean, dtype=np.float64))
        )
        # same expression as VecNormalize (sqrt of var + eps, then a division), so float64 results match
        std = np.sqrt(np.asarray(normalizer.var, dtype=np.float64) + normalizer.epsilon)
        self.register_buffer("obs_std", torch.as_tensor(std))
        self.register_buffer("low", torch.as_tensor(np.asarray(low, dtype=np.float32)))
        self.register_buffer("high", torch.as_tensor(np.asarray(high, dtype=np.float32)))
        cash_only = np.zeros(n_weights)
        cash_only[-1] = 1.0
        self.register_buffer("cash_only", torch.as_tensor(cash_only))

    def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, ...]:
        obs = observation
        if self.normalize:
            z = (observation.to(torch.float64) - self.obs_mean) / self.obs_std
            obs = torch.clamp(z, -self.clip_obs, self.clip_obs).to(torch.float32)
        mean = self.actor(obs)
        if self.squash:
            action = self.low + 0.5 * (torch.tanh(mean) + 1.0) * (self.high - self.low)
        else:
            action = torch.maximum(torch.minimum(mean, self.high), self.low)
        outputs = [action]
        if self.weights_output:
            w = _actions_to_weights(action[:, : self.n_weights].to(torch.float64), self.cash_only)
            outputs.append(w)
        if self.action_dim > self.n_weights:
            outputs.append(action[:, self.n_weights :])
        return tuple(outputs)


def _actions_to_weights(actions: torch.Tensor, cash_only: torch.Tensor) -> torch.Tensor:
    """``defialloc.envs.actions.actions_to_weights`` in torch ops (same operations, same order, float64)."""
    x = (torch.clamp(actions, -1.0, 1.0) + 1.0) * 0.5
    mass = x.sum(dim=-1, keepdim=True)
    empty = mass <= ZERO_MASS
    weights = x / torch.where(empty, torch.ones_like(mass), mass)
    return torch.where(empty, cash_only, weights)


def build_deployed_policy(
    model: BaseAlgorithm, normalizer: ObsNormalizer, n_weights: int, weights_output: bool = True
) -> DeployedPolicy:
    """Wrap a copy of ``model``'s actor (CPU, eval mode) with the normalization and the action map."""
    policy = model.policy
    space = model.action_space
    if space.shape is None or len(space.shape) != 1:
        raise ValueError(f"model action space must be a flat Box, got shape {space.shape}")
    if hasattr(policy, "actor") and hasattr(policy.actor, "mu"):
        actor: torch.nn.Module = _SquashedActor(policy.actor)
        squash = True
    elif hasattr(policy, "action_net") and hasattr(policy, "mlp_extractor"):
        actor = _GaussianMeanActor(policy)
        squash = bool(getattr(policy, "squash_output", False))
    else:
        raise ValueError(
            f"cannot export a {type(policy).__name__}: expected an SB3 PPO or SAC MlpPolicy"
        )
    # copy only the actor's modules: the full policy holds optimizer state that cannot be deep-copied
    actor = copy.deepcopy(actor).to("cpu").eval()
    return DeployedPolicy(
        actor, squash, space.low, space.high, normalizer, n_weights, weights_output
    ).eval()


def output_names(action_dim: int, n_weights: int, weights_output: bool = True) -> list[str]:
    names = [ACTION_OUTPUT, WEIGHTS_OUTPUT] if weights_output else [ACTION_OUTPUT]
    return [*names, EXTRA_OUTPUT] if action_dim > n_weights else names


def write_onnx(module: DeployedPolicy, obs_dim: int, path: Path) -> None:
    """Export with the legacy (TorchScript) exporter and a dynamic batch axis on every tensor."""
    names = output_names(module.action_dim, module.n_weights, module.weights_output)
    dummy = torch.zeros(2, obs_dim, dtype=torch.float32)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            module,
            (dummy,),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *names]},
            opset_version=OPSET,
            do_constant_folding=True,
        )
    import onnx

    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    path.write_bytes(buffer.getvalue())


# ---------------------------------------------------------------------------- layout and manifest
def action_layout(sim: PortfolioSimulator, numeraire: str) -> tuple[ActionBlock, ...]:
    """The action layout the env uses, read from the simulator (never assumed to be ``N + 1``).

    Spot weights over ``N`` assets + cash come first; with lending or perps enabled the simulator's
    ``protocols.layout`` (``envs/leverage.py``) adds a leverage target and per-asset hedge ratios,
    which the graph clips and passes through (the env maps them). Any other trailing dimensions are
    passed through as ``extra_<i>``.
    """
    n = sim.n_assets
    transform = WEIGHTS_TRANSFORMS[sim.config.env.action.kind]
    blocks = [ActionBlock("weights", 0, n + 1, transform, (*sim.asset_names, numeraire))]
    position = n + 1
    layout = getattr(getattr(sim, "protocols", None), "layout", None)
    if layout is not None:
        if getattr(layout, "lending", False):
            blocks.append(
                ActionBlock(
                    "leverage", position, position + 1, PASSTHROUGH_TRANSFORM, ("leverage_target",)
                )
            )
            position += 1
        if getattr(layout, "perps", False):
            labels = tuple(f"hedge_{a}" for a in sim.asset_names)
            blocks.append(
                ActionBlock("hedge", position, position + n, PASSTHROUGH_TRANSFORM, labels)
            )
            position += n
    if sim.action_dim > position:
        extra = tuple(f"extra_{i}" for i in range(sim.action_dim - position))
        blocks.append(ActionBlock("extra", position, sim.action_dim, PASSTHROUGH_TRANSFORM, extra))
    return tuple(blocks)


def observation_names(sim: PortfolioSimulator, config: SimulationConfig) -> list[str]:
    """Names of the ``obs_dim`` observation entries, in the order of ``env.observation.blocks``:
    ``defialloc.envs.features.feature_names`` with the protocol block's names from
    ``LeverageEngine.observation_names`` when lending/perps are on (``obs_<i>`` for any remainder)."""
    engine = getattr(sim, "protocols", None)
    assets = tuple(sim.asset_names)
    protocol = engine.observation_names(assets) if engine is not None else []
    names = feature_names(assets, config.env.observation, protocol)
    names += [f"obs_{i}" for i in range(len(names), sim.obs_dim)]
    return names[: sim.obs_dim]


def section_hash(section: Any) -> str:
    """12-hex SHA-256 prefix of a pydantic section's JSON dump (same recipe as ``config_hash``)."""
    blob = json.dumps(section.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "onnx_opset": str(OPSET)}
    for package in (
        "defialloc",
        "torch",
        "stable-baselines3",
        "onnx",
        "onnxruntime",
        "numpy",
        "gymnasium",
    ):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out


@dataclass
class ExportSource:
    """A trained model and everything its export needs."""

    model: BaseAlgorithm
    normalizer: ObsNormalizer
    config: SimulationConfig
    algo: str
    source: dict[str, Any] = field(default_factory=dict)


def export_policy(
    src: ExportSource, out_dir: str | Path, *, check_batch: int = 256
) -> PolicyManifest:
    """Write ``policy.onnx`` and ``manifest.json`` to ``out_dir`` and return the manifest.

    The exported graph is checked with onnxruntime against the torch module on ``check_batch``
    observations drawn around the normalizer's statistics (ValueError above 1e-5).
    """
    out = Path(out_dir)
    config = src.config
    sim = PortfolioSimulator(config, n_envs=1)
    obs_space, act_space = src.model.observation_space, src.model.action_space
    if obs_space.shape != (sim.obs_dim,):
        raise ValueError(
            f"model observation shape {obs_space.shape} does not match the config's ({sim.obs_dim},): "
            "the config is not the one the model was trained on"
        )
    if act_space.shape != (sim.action_dim,):
        raise ValueError(
            f"model action shape {act_space.shape} does not match the env's ({sim.action_dim},)"
        )
    if src.normalizer.mean.shape != (sim.obs_dim,):
        raise ValueError(
            f"normalizer has {src.normalizer.mean.shape[0]} features; the model has {sim.obs_dim}"
        )
    layout = action_layout(sim, config.market.numeraire)
    module = build_deployed_policy(
        src.model, src.normalizer, sim.n_assets + 1, config.env.action.kind == "target"
    )
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        staged = Path(tmp) / ONNX_FILE
        write_onnx(module, sim.obs_dim, staged)
        manifest = PolicyManifest(
            algo=src.algo,
            asset_names=tuple(sim.asset_names),
            numeraire=config.market.numeraire,
            observation_names=tuple(observation_names(sim, config)),
            action_dim=sim.action_dim,
            action_low=tuple(float(x) for x in act_space.low),
            action_high=tuple(float(x) for x in act_space.high),
            action_layout=layout,
            step_days=float(config.market.step_days),
            simulation_config=config.model_dump(mode="json"),
            config_hash=config.config_hash(),
            env_config_hash=section_hash(config.env),
            market_config_hash=section_hash(config.market),
            onnx_sha256=sha256_file(staged),
            normalization={
                "enabled": src.normalizer.enabled,
                "clip": src.normalizer.clip if np.isfinite(src.normalizer.clip) else None,
                "epsilon": src.normalizer.epsilon,
            },
            versions=package_versions(),
            source=src.source,
            created_utc=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        manifest.validate()
        manifest.write(Path(tmp))
        _self_check(module, Path(tmp), src.normalizer, sim.obs_dim, check_batch)
        # replace both files only once the new pair has passed the check
        (Path(tmp) / ONNX_FILE).replace(out / ONNX_FILE)
        (Path(tmp) / MANIFEST_FILE).replace(out / MANIFEST_FILE)
    return manifest


def _self_check(
    module: DeployedPolicy, folder: Path, normalizer: ObsNormalizer, obs_dim: int, n: int
) -> None:
    rng = np.random.default_rng(0)
    scale = np.sqrt(normalizer.var) if normalizer.enabled else np.ones(obs_dim)
    obs = (normalizer.mean + 2.0 * scale * rng.standard_normal((n, obs_dim))).astype(np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in module(torch.as_tensor(obs))]
    got = OnnxPolicy(folder).predict(obs)
    names = output_names(module.action_dim, module.n_weights, module.weights_output)
    for name, ref in zip(names, expected, strict=True):
        err = float(np.max(np.abs(got[name].astype(np.float64) - ref)))
        if err > 1e-5:
            raise ValueError(
                f"exported graph differs from the torch policy on output {name!r} by {err:.3g}"
            )


# ---------------------------------------------------------------------------- sources
def detect_algo(model_path: str | Path) -> str:
    """``"ppo"`` or ``"sac"`` from the policy class recorded in an SB3 model zip."""
    try:
        with zipfile.ZipFile(model_path) as archive:
            data = json.loads(archive.read("data"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ValueError(
            f"--model {model_path}: not an SB3 model zip ({type(exc).__name__}: {exc})"
        ) from None
    module = str(data.get("policy_class", {}).get("__module__", ""))
    if ".sac." in module:
        return "sac"
    if ".common.policies" in module or ".ppo." in module:
        return "ppo"
    raise ValueError(
        f"--model {model_path}: cannot tell the algorithm from policy module {module!r}; pass --algo"
    )


def load_config_file(path: str | Path) -> tuple[SimulationConfig, str | None]:
    """A training config (``simulation:`` + ``algo``) or a simulation config; returns (simulation, algo).

    Read without ``defialloc.training.config`` (agents sit below training): a run's saved config holds its
    simulation inline, or as a path relative to the file.
    """
    import yaml

    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    if not (isinstance(data, dict) and "simulation" in data):
        return load_config(path), None
    simulation = data["simulation"]
    if (
        isinstance(simulation, str)
        and not Path(simulation).is_absolute()
        and (path.parent / simulation).is_file()
    ):
        simulation = path.parent / simulation
    algo = data.get("algo")
    return load_config(simulation), str(algo) if algo is not None else None


def _find_next_to(model_path: Path, names: tuple[str, ...]) -> Path | None:
    for folder in (model_path.parent, model_path.parent.parent):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def find_config_next_to(model_path: Path) -> Path:
    """``config.yaml`` (or ``train_config.yaml``) next to a model zip or one folder up."""
    found = _find_next_to(Path(model_path), ("config.yaml", "train_config.yaml"))
    if found is None:
        raise ValueError(
            f"--config is required: no config.yaml next to {model_path}; the manifest records the "
            "simulation config the policy was trained on"
        )
    return found


def source_from_files(
    model_path: str | Path,
    vecnormalize_path: str | Path | None = None,
    config_path: str | Path | None = None,
    algo: str | None = None,
) -> ExportSource:
    """Load a model zip, its VecNormalize statistics and its config.

    Defaults: ``vecnormalize.npz`` (or a legacy ``vecnormalize.pkl``) next to the model; ``config.yaml`` next to it or one folder up
    (the layout of ``runs/<run_id>/{best,final}/``). Without statistics the graph does no normalization.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ValueError(f"--model {model_path}: file not found")
    vec = (
        Path(vecnormalize_path)
        if vecnormalize_path
        else _find_next_to(model_path, (STATS_FILE, LEGACY_STATS_FILE))
    )
    cfg_path = Path(config_path) if config_path else find_config_next_to(model_path)
    config, cfg_algo = load_config_file(cfg_path)
    algo = algo or cfg_algo or detect_algo(model_path)
    algorithm_class(algo)
    model = load_model(algo, model_path, device="cpu")  # no entry of the zip is unpickled
    obs_dim = int(model.observation_space.shape[0])
    normalizer = ObsNormalizer.load(vec) if vec is not None else ObsNormalizer.identity(obs_dim)
    source = {
        "model_path": str(model_path.resolve()),
        "vecnormalize_path": str(vec) if vec else None,
    }
    return ExportSource(model, normalizer, config, algo, source)
