"""A trained policy exported to ONNX, run with onnxruntime only (no torch, no SB3, no pickle).

An export folder (written by ``agents/export.py``) holds two files:

- ``policy.onnx``: raw observation ``(B, obs_dim)`` float32 -> ``action`` ``(B, action_dim)`` float32
  (the deterministic action, clipped to the Box), ``target_weights`` ``(B, N+1)`` float64 (the same
  action mapped by ``defialloc.envs.actions.actions_to_weights``, cash last) and, when the action has more
  dimensions than the weights, ``extra_actions`` ``(B, action_dim - N - 1)`` (clipped, passed to the
  env as they are). The observation normalization of training (``VecNormalize``) is inside the graph.
- ``manifest.json``: everything needed to use the graph safely (see :class:`PolicyManifest`): the asset
  order, the observation layout (``defialloc.envs.features.feature_names``), the action layout, the resolved
  simulation config and its hashes, the step length, the versions that produced it and the SHA-256 of
  ``policy.onnx``, checked on every load so a truncated or swapped file fails loudly.

This module imports neither torch nor stable-baselines3: the paper trader depends on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defialloc.agents.policy import MarketView, Policy

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "policy.onnx"
MANIFEST_FORMAT = "defialloc.onnx_policy"
FORMAT_VERSION = 1
INPUT_NAME = "observation"
ACTION_OUTPUT = "action"
WEIGHTS_OUTPUT = "target_weights"
EXTRA_OUTPUT = "extra_actions"
#: transform names of action blocks (see ActionBlock)
WEIGHTS_TRANSFORM = "clipped_linear_simplex"
#: weights blocks of the other action kinds (envs/action_kinds.py): the target depends on the
#: portfolio's state, so the graph outputs no ``target_weights``; the env's ActionMap maps them
ANCHORED_TRANSFORM = "anchored_deviation"
DELTA_TRANSFORM = "delta_turnover"
WEIGHTS_TRANSFORMS = {
    "target": WEIGHTS_TRANSFORM,
    "anchored": ANCHORED_TRANSFORM,
    "delta": DELTA_TRANSFORM,
}
PASSTHROUGH_TRANSFORM = "clip"


@dataclass(frozen=True)
class ActionBlock:
    """A contiguous slice ``[start, stop)`` of the action vector and how the env reads it.

    ``transform``: ``"clipped_linear_simplex"`` (``defialloc.envs.actions.actions_to_weights``: target weights,
    cash last) or ``"clip"`` (clipped to the Box and handed to the env unchanged, e.g. a leverage
    target or hedge ratios). ``labels`` names each entry.
    """

    name: str
    start: int
    stop: int
    transform: str
    labels: tuple[str, ...]

    @property
    def size(self) -> int:
        return self.stop - self.start


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class PolicyManifest:
    """Contents of ``manifest.json``.

    Attributes:
        algo: ``"ppo"`` or ``"sac"``.
        asset_names: the ``N`` risky assets in the order of the observation, action and weights.
        numeraire: the cash asset (last weight).
        observation_names: ``obs_dim`` names, in the order of ``env.observation.blocks`` (envs/features).
        action_dim: length of the action vector; ``action_low``/``action_high``: its Box bounds.
        action_layout: the blocks that tile ``[0, action_dim)``.
        step_days: length of one decision step in days (a feed must match it).
        simulation_config: the resolved simulation config (market + env) the policy was trained on,
            as plain JSON; paper trading rebuilds the env's execution model from it.
        config_hash / env_config_hash / market_config_hash: SHA-256 prefixes of the resolved config,
            of its env section and of its market section.
        onnx_sha256: SHA-256 of ``policy.onnx``.
        normalization: ``{"enabled", "clip", "epsilon"}`` of the baked-in observation normalization.
        versions: package versions and the ONNX opset that produced the export.
        source: where the model came from (``run_id``, ``model_path``, registered model/version).
        created_utc: ISO time of the export (informative; not part of :attr:`policy_id`).
    """

    algo: str
    asset_names: tuple[str, ...]
    numeraire: str
    observation_names: tuple[str, ...]
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    action_layout: tuple[ActionBlock, ...]
    step_days: float
    simulation_config: dict[str, Any]
    config_hash: str
    env_config_hash: str
    market_config_hash: str
    onnx_sha256: str
    normalization: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    created_utc: str = ""
    format: str = MANIFEST_FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def obs_dim(self) -> int:
        return len(self.observation_names)

    @property
    def n_assets(self) -> int:
        return len(self.asset_names)

    @property
    def weights_block(self) -> ActionBlock:
        return next(b for b in self.action_layout if b.transform in WEIGHTS_TRANSFORMS.values())

    @property
    def has_weights_output(self) -> bool:
        """The graph outputs ``target_weights`` (only the ``target`` action kind maps actions to
        weights without the portfolio's state)."""
        return self.weights_block.transform == WEIGHTS_TRANSFORM

    @property
    def decision_every(self) -> int:
        """Market steps per decision the policy was trained with (``env.decision_every``)."""
        return int(self.simulation_config.get("env", {}).get("decision_every", 1))

    @property
    def policy_id(self) -> str:
        """Identity of the policy: the graph's hash plus everything that changes how it trades."""
        core = {
            "onnx_sha256": self.onnx_sha256,
            "asset_names": list(self.asset_names),
            "observation_names": list(self.observation_names),
            "action_layout": [asdict(b) for b in self.action_layout],
            "simulation_config": self.simulation_config,
            "step_days": self.step_days,
        }
        blob = json.dumps(core, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["policy_id"] = self.policy_id
        return data

    def write(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = MANIFEST_FILE) -> PolicyManifest:
        """Parse and validate; raises ValueError naming the field, the bad value and what is allowed."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: must hold a JSON object, got {type(data).__name__}")
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(
                f"{source}: format={data.get('format')!r}; expected {MANIFEST_FORMAT!r}"
            )
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{source}: format_version={data.get('format_version')!r}; this reader supports {FORMAT_VERSION}"
            )
        required = [
            f
            for f in cls.__dataclass_fields__
            if f not in ("normalization", "versions", "source", "created_utc")
        ]
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"{source}: missing fields {missing}")
        try:
            layout = tuple(
                ActionBlock(
                    name=str(b["name"]),
                    start=int(b["start"]),
                    stop=int(b["stop"]),
                    transform=str(b["transform"]),
                    labels=tuple(str(x) for x in b["labels"]),
                )
                for b in data["action_layout"]
            )
            manifest = cls(
                algo=str(data["algo"]),
                asset_names=tuple(str(a) for a in data["asset_names"]),
                numeraire=str(data["numeraire"]),
                observation_names=tuple(str(x) for x in data["observation_names"]),
                action_dim=int(data["action_dim"]),
                action_low=tuple(float(x) for x in data["action_low"]),
                action_high=tuple(float(x) for x in data["action_high"]),
                action_layout=layout,
                step_days=float(data["step_days"]),
                simulation_config=dict(data["simulation_config"]),
                config_hash=str(data["config_hash"]),
                env_config_hash=str(data["env_config_hash"]),
                market_config_hash=str(data["market_config_hash"]),
                onnx_sha256=str(data["onnx_sha256"]),
                normalization=dict(data.get("normalization", {})),
                versions=dict(data.get("versions", {})),
                source=dict(data.get("source", {})),
                created_utc=str(data.get("created_utc", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: malformed field ({type(exc).__name__}: {exc})") from None
        manifest.validate(source)
        stated = data.get("policy_id")
        if stated is not None and stated != manifest.policy_id:
            raise ValueError(
                f"{source}: policy_id={stated!r} does not match its contents ({manifest.policy_id!r}); "
                "the manifest was edited after export"
            )
        return manifest

    def validate(self, source: str = MANIFEST_FILE) -> None:
        """Check internal consistency (layout tiles the action, sizes agree, bounds ordered)."""
        n = self.n_assets
        if n < 1:
            raise ValueError(f"{source}: asset_names is empty; need at least one risky asset")
        if self.action_dim < n + 1:
            raise ValueError(
                f"{source}: action_dim={self.action_dim} must be >= n_assets + 1 = {n + 1}"
            )
        if len(self.action_low) != self.action_dim or len(self.action_high) != self.action_dim:
            raise ValueError(
                f"{source}: action_low/action_high must have action_dim={self.action_dim} entries"
            )
        if any(lo >= hi for lo, hi in zip(self.action_low, self.action_high, strict=True)):
            raise ValueError(f"{source}: action_low must be < action_high in every dimension")
        position = 0
        for block in self.action_layout:
            if (
                block.start != position
                or block.stop <= block.start
                or len(block.labels) != block.size
            ):
                raise ValueError(
                    f"{source}: action_layout block {block.name!r} [{block.start}, {block.stop}) with "
                    f"{len(block.labels)} labels does not continue the layout at {position}"
                )
            allowed = (*WEIGHTS_TRANSFORMS.values(), PASSTHROUGH_TRANSFORM)
            if block.transform not in allowed:
                raise ValueError(
                    f"{source}: action_layout block {block.name!r} has transform={block.transform!r}; "
                    f"allowed: {', '.join(repr(a) for a in allowed)}"
                )
            position = block.stop
        if position != self.action_dim:
            raise ValueError(
                f"{source}: action_layout covers [0, {position}) but action_dim={self.action_dim}"
            )
        weights = [b for b in self.action_layout if b.transform in WEIGHTS_TRANSFORMS.values()]
        if len(weights) != 1 or weights[0].start != 0 or weights[0].size != n + 1:
            raise ValueError(
                f"{source}: action_layout needs one weights block [0, {n + 1}) (assets + cash)"
            )
        if not self.step_days > 0:
            raise ValueError(f"{source}: step_days={self.step_days} must be > 0")

    def check_market(
        self, asset_names: tuple[str, ...] | list[str], step_days: float, what: str = "feed"
    ) -> None:
        """Raise ValueError unless a market (a feed) has exactly this policy's assets, order and step."""
        names = tuple(asset_names)
        if names != self.asset_names:
            raise ValueError(
                f"{what} assets {list(names)} do not match the policy's assets {list(self.asset_names)} "
                "(same symbols in the same order are required)"
            )
        if not np.isclose(float(step_days), self.step_days, rtol=0.0, atol=1e-9):
            raise ValueError(
                f"{what} step_days={step_days} does not match the policy's step_days={self.step_days}"
            )


def load_manifest(directory: str | Path) -> PolicyManifest:
    """Read ``manifest.json`` of an export folder (ValueError with the reason when it is unusable)."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ValueError(f"policy folder {directory}: {MANIFEST_FILE} not found")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return PolicyManifest.from_dict(data, str(path))


class OnnxPolicy(Policy):
    """A policy served from an export folder by onnxruntime (CPU), behind the shared Policy interface.

    ``act(observation (B, obs_dim), view) -> actions (B, action_dim)`` float64 in the Box: exactly the
    actions the SB3 model would take deterministically on the same raw observations. The env maps them
    to target weights with ``defialloc.envs.actions.actions_to_weights`` (the graph's ``target_weights`` output
    is that same map, for consumers outside the env).
    """

    lookback = 1

    def __init__(self, directory: str | Path, *, threads: int = 1) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        onnx_path = self.directory / ONNX_FILE
        if not onnx_path.is_file():
            raise ValueError(f"policy folder {directory}: {ONNX_FILE} not found")
        actual = sha256_file(onnx_path)
        if actual != self.manifest.onnx_sha256:
            raise ValueError(
                f"{onnx_path}: SHA-256 {actual[:16]}... does not match the manifest's {self.manifest.onnx_sha256[:16]}...; "
                "the ONNX file is corrupt or belongs to another export"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(onnx_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for malformed graphs
            raise ValueError(
                f"{onnx_path}: onnxruntime cannot load the graph ({type(exc).__name__}: {exc})"
            ) from None
        self._check_signature()
        self.obs_dim = self.manifest.obs_dim
        self.action_dim = self.manifest.action_dim
        self.name = f"onnx-{self.manifest.algo}"
        self.decision_every = self.manifest.decision_every
        self.action_kind = None  # the manifest config's kind: the one it was trained in

    # an InferenceSession cannot be copied or pickled: copies (backtest tasks, worker processes)
    # reload the same checked export folder instead
    def __getstate__(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "threads": self.session.get_session_options().intra_op_num_threads,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"], threads=state["threads"])  # type: ignore[misc]

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxPolicy:
        return OnnxPolicy(
            self.directory, threads=self.session.get_session_options().intra_op_num_threads
        )

    def _check_signature(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        where = self.directory / ONNX_FILE
        if INPUT_NAME not in inputs or len(inputs) != 1:
            raise ValueError(
                f"{where}: graph inputs {sorted(inputs)}; expected exactly [{INPUT_NAME!r}]"
            )
        obs_shape = inputs[INPUT_NAME].shape
        if (
            len(obs_shape) != 2
            or obs_shape[1] != self.manifest.obs_dim
            or isinstance(obs_shape[0], int)
        ):
            raise ValueError(
                f"{where}: input shape {obs_shape}; expected [batch, {self.manifest.obs_dim}] with a dynamic batch"
            )
        expected = {ACTION_OUTPUT: self.manifest.action_dim}
        if self.manifest.has_weights_output:
            expected[WEIGHTS_OUTPUT] = self.manifest.n_assets + 1
        if self.manifest.action_dim > self.manifest.n_assets + 1:
            expected[EXTRA_OUTPUT] = self.manifest.action_dim - self.manifest.n_assets - 1
        for name, width in expected.items():
            if name not in outputs or outputs[name].shape[-1] != width:
                shape = outputs[name].shape if name in outputs else None
                raise ValueError(
                    f"{where}: output {name!r} has shape {shape}; expected [batch, {width}]"
                )

    def _observations(self, observation: np.ndarray) -> np.ndarray:
        obs = np.asarray(observation, dtype=np.float32)
        if obs.ndim == 1:
            obs = obs[None, :]
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(
                f"observation has shape {np.shape(observation)}; expected (B, {self.obs_dim})"
            )
        if not np.all(np.isfinite(obs)):
            raise ValueError("observation contains NaN or inf; the policy needs finite features")
        return np.ascontiguousarray(obs)

    def predict(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        """Every graph output for raw observations ``(B, obs_dim)``: ``action``, ``target_weights``, ..."""
        obs = self._observations(observation)
        names = [o.name for o in self.session.get_outputs()]
        values = self.session.run(names, {INPUT_NAME: obs})
        return dict(zip(names, values, strict=True))

    def act(self, observation: np.ndarray, view: MarketView | None = None) -> np.ndarray:
        obs = self._observations(observation)
        (action,) = self.session.run([ACTION_OUTPUT], {INPUT_NAME: obs})
        return np.asarray(action, dtype=np.float64)
