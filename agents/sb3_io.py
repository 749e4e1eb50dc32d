"""SB3 models, normalization statistics and replay buffers read and written without running file code.

An SB3 model zip holds ``data`` (JSON; every entry JSON cannot hold is *cloudpickled* and base64'd)
and ``*.pth`` tensors (SB3 reads them with ``torch.load(weights_only=True)``: data only). Unpickling
the cloudpickled entries runs whatever code the file names, so :func:`load_model` never does: it
overrides EVERY serialized entry through SB3's ``custom_objects`` with a value rebuilt from the
entry's plain JSON fields (a whitelist: the algorithm's policy and buffer classes, Box spaces from
their shape and bounds, a small set of activations) or from the training config; an entry it does
not know is refused, never unpickled.

VecNormalize's statistics are written as plain arrays (``vecnormalize.npz``, read with
``np.load(allow_pickle=False)``) and the SAC replay buffer as ``replay_buffer.npz``. Files of older
runs (``vecnormalize.pkl``, ``replay_buffer.pkl``, written by SB3's pickle) are read by
:class:`_RestrictedUnpickler`, which builds numpy arrays and inert records only: a global outside
its whitelist (``os.system``, ``builtins.exec``, any class with a ``__reduce__`` of its own) is
refused before anything runs (the "Restricting Globals" recipe of the ``pickle`` documentation).
"""

from __future__ import annotations

import io
import json
import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

try:  # numpy >= 2 moved the array internals to numpy._core (numpy.core warns)
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar

#: file names inside a model / checkpoint folder
STATS_FILE = "vecnormalize.npz"
LEGACY_STATS_FILE = "vecnormalize.pkl"
REPLAY_FILE = "replay_buffer.npz"
LEGACY_REPLAY_FILE = "replay_buffer.pkl"

#: ``str(cls)`` of the activations a policy may use -> the class (what ``policy_kwargs`` may name)
SAFE_ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    str(cls): cls
    for cls in (
        torch.nn.Tanh,
        torch.nn.ReLU,
        torch.nn.ELU,
        torch.nn.LeakyReLU,
        torch.nn.GELU,
        torch.nn.SiLU,
        torch.nn.Sigmoid,
    )
}
#: policy modules SB3 records for each algorithm (``policy_class.__module__``)
POLICY_MODULES = {
    "ppo": "stable_baselines3.common.policies",
    "sac": "stable_baselines3.sac.policies",
}
#: entries SB3 stores only to resume an interrupted ``learn`` call: a load starts them afresh
TRANSIENT_ENTRIES = (
    "_last_obs",
    "_last_episode_starts",
    "_last_original_obs",
    "ep_info_buffer",
    "ep_success_buffer",
)
#: training schedules: taken from the training config when one is given (resume), else inert
SCHEDULE_ENTRIES = ("learning_rate", "lr_schedule", "clip_range", "clip_range_vf")
_NUMBER = re.compile(r"[-+]?(?:inf|nan|\d+\.?\d*(?:e[-+]?\d+)?|\.\d+(?:e[-+]?\d+)?)", re.IGNORECASE)


# ---------------------------------------------------------------------------- model zips
def read_model_data(path: str | Path) -> dict[str, Any]:
    """The ``data`` JSON of an SB3 model zip, as plain JSON (nothing deserialized)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("data"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not an SB3 model zip ({type(exc).__name__}: {exc})") from None


def serialized_entries(data: Mapping[str, Any]) -> list[str]:
    """Keys of ``data`` whose value SB3 cloudpickled (``{":serialized:": ...}``)."""
    return [k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v]


def _parse_numbers(text: Any, size: int, what: str) -> np.ndarray:
    """The numbers of numpy's printed array ``text`` (e.g. ``"[-10. -10.]"``); exactly ``size`` of them."""
    if not isinstance(text, str) or "..." in text:
        raise ValueError(f"{what}: bounds {str(text)[:40]!r} are not a complete printed array")
    values = np.array([float(x) for x in _NUMBER.findall(text)], dtype=np.float64)
    if values.size != size:
        raise ValueError(f"{what}: {values.size} bounds for {size} entries")
    return values


def box_from_entry(entry: Mapping[str, Any], what: str) -> gym.spaces.Box:
    """A Box space rebuilt from the plain fields SB3 writes beside a pickled Box (shape, dtype, bounds)."""
    if "gymnasium.spaces.box.Box" not in str(entry.get(":type:")):
        raise ValueError(f"{what} is a {entry.get(':type:')}; only Box spaces can be rebuilt")
    shape = entry.get("_shape")
    if isinstance(shape, str):  # older SB3 versions print the tuple
        shape = [int(x) for x in re.findall(r"\d+", shape)]
    if not isinstance(shape, list) or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"{what}: shape {shape!r} is not a list of positive sizes")
    dtype = np.dtype(str(entry.get("dtype", "float32")))
    if dtype.kind != "f":
        raise ValueError(f"{what}: dtype {dtype} is not a float type")
    size = math.prod(shape)
    low = _parse_numbers(entry.get("low"), size, what).reshape(shape).astype(dtype)
    high = _parse_numbers(entry.get("high"), size, what).reshape(shape).astype(dtype)
    return gym.spaces.Box(low, high, shape=tuple(shape), dtype=dtype)


def _policy_kwargs(entry: Mapping[str, Any]) -> dict[str, Any]:
    """``policy_kwargs`` rebuilt from its plain fields; only whitelisted classes may be named."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key.startswith(":"):
            continue
        if key == "activation_fn":
            if value not in SAFE_ACTIVATIONS:
                raise ValueError(
                    f"policy_kwargs.activation_fn={value!r} is not one of the activations this "
                    f"loader rebuilds: {sorted(SAFE_ACTIVATIONS)}"
                )
            out[key] = SAFE_ACTIVATIONS[value]
        elif isinstance(value, str) and value.startswith(("<class ", "<function ", "<bound ")):
            raise ValueError(
                f"policy_kwargs.{key}={value!r} names code; this loader rebuilds only "
                "activation_fn and plain values"
            )
        else:
            out[key] = value
    return out


def safe_custom_objects(
    algo: str,
    data: Mapping[str, Any],
    *,
    env: Any | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """SB3 ``custom_objects`` replacing every serialized entry of ``data`` (refuses unknown ones).

    Args:
        algo: ``"ppo"`` or ``"sac"``.
        data: the zip's ``data`` JSON (:func:`read_model_data`).
        env: the env training continues on (resume): its spaces are used, and checked against the
            file's; None (inference) rebuilds the spaces from the file's plain fields.
        hyperparameters: the training config's algorithm keys (``learning_rate``, ``clip_range``,
            ``train_freq``, ...) for a load that continues training; None gives inert schedules
            (learning rate 0: such a model is for inference only).
    """
    from stable_baselines3.common.buffers import ReplayBuffer, RolloutBuffer
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.sac.policies import SACPolicy

    if algo not in POLICY_MODULES:
        raise ValueError(f"algo={algo!r} must be one of {sorted(POLICY_MODULES)}")
    hyper = dict(hyperparameters or {})
    out: dict[str, Any] = {}
    for key in serialized_entries(data):
        entry = data[key]
        if key == "policy_class":
            module = entry.get("__module__")
            if module != POLICY_MODULES[algo]:
                raise ValueError(
                    f"the model's policy class comes from {module!r}; a {algo.upper()} MlpPolicy "
                    f"comes from {POLICY_MODULES[algo]!r} (wrong --algo, or not an SB3 model)"
                )
            out[key] = ActorCriticPolicy if algo == "ppo" else SACPolicy
        elif key in ("observation_space", "action_space"):
            saved = box_from_entry(entry, key)
            if env is not None:
                live = getattr(env, key)
                if live.shape != saved.shape:
                    raise ValueError(
                        f"the model's {key} has shape {saved.shape}, the env's {live.shape}: "
                        "the config is not the one the model was trained on"
                    )
                saved = live
            out[key] = saved
        elif key == "rollout_buffer_class":
            out[key] = RolloutBuffer
        elif key == "replay_buffer_class":
            out[key] = ReplayBuffer
        elif key == "policy_kwargs":
            out[key] = _policy_kwargs(entry)
        elif key in TRANSIENT_ENTRIES:
            out[key] = None
        elif key in SCHEDULE_ENTRIES:
            if key == "lr_schedule":
                out[key] = None  # rebuilt from learning_rate by SB3's _setup_model
            elif key in hyper:
                out[key] = hyper[key]
            elif env is not None:
                raise ValueError(f"{key}: pass the training config's value to continue training")
            else:
                out[key] = 0.0
        elif key == "train_freq":
            out[key] = int(hyper.get("train_freq", 1))  # SB3 turns an int into TrainFreq(n, step)
        else:
            raise ValueError(
                f"the model zip has a serialized entry {key!r} ({entry.get(':type:')}) that this "
                "loader does not know; it is refused rather than unpickled"
            )
    return out


def load_model(
    algo: str,
    path: str | Path,
    *,
    env: Any | None = None,
    device: str = "cpu",
    hyperparameters: Mapping[str, Any] | None = None,
) -> Any:
    """Load an SB3 PPO/SAC zip with every serialized entry overridden (see the module docstring)."""
    from stable_baselines3 import PPO, SAC

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: model file not found")
    data = read_model_data(path)
    custom = safe_custom_objects(algo, data, env=env, hyperparameters=hyperparameters)
    cls = PPO if algo == "ppo" else SAC
    return cls.load(str(path), env=env, device=device, custom_objects=custom)


# ---------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class NormalizationStats:
    """VecNormalize's state as plain numbers: running mean/var/count of observations and returns."""

    obs_mean: np.ndarray
    obs_var: np.ndarray
    obs_count: float
    ret_mean: float
    ret_var: float
    ret_count: float
    clip_obs: float
    clip_reward: float
    gamma: float
    epsilon: float
    norm_obs: bool
    norm_reward: bool

    @classmethod
    def of(cls, venv: Any) -> NormalizationStats:
        """Copy of a live ``VecNormalize``'s statistics."""
        return cls(
            np.array(venv.obs_rms.mean, dtype=np.float64),
            np.array(venv.obs_rms.var, dtype=np.float64),
            float(venv.obs_rms.count),
            float(np.asarray(venv.ret_rms.mean)),
            float(np.asarray(venv.ret_rms.var)),
            float(venv.ret_rms.count),
            float(venv.clip_obs),
            float(venv.clip_reward),
            float(venv.gamma),
            float(venv.epsilon),
            bool(venv.norm_obs),
            bool(venv.norm_reward),
        )

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (``.npz``: one plain array per field)."""
        path = Path(path)
        with open(path, "wb") as handle:  # an open handle: np.savez adds no suffix
            np.savez(handle, **{k: np.asarray(v) for k, v in self.__dict__.items()})
        return path

    @classmethod
    def load(cls, path: str | Path) -> NormalizationStats:
        """Read an ``.npz`` written by :meth:`save`, or a legacy ``VecNormalize.save`` pickle."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: normalization statistics not found")
        if path.suffix == ".pkl":
            return _stats_from_legacy_pickle(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                fields = {k: data[k] for k in cls.__dataclass_fields__}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ValueError(
                f"{path}: not normalization statistics written by defialloc ({type(exc).__name__}: "
                f"{exc}); expected an .npz with {sorted(cls.__dataclass_fields__)}"
            ) from None
        mean, var = fields["obs_mean"].astype(np.float64), fields["obs_var"].astype(np.float64)
        if mean.ndim != 1 or mean.shape != var.shape:
            raise ValueError(f"{path}: obs_mean {mean.shape} and obs_var {var.shape} must be (n,)")
        return cls(
            mean,
            var,
            float(fields["obs_count"]),
            float(fields["ret_mean"]),
            float(fields["ret_var"]),
            float(fields["ret_count"]),
            float(fields["clip_obs"]),
            float(fields["clip_reward"]),
            float(fields["gamma"]),
            float(fields["epsilon"]),
            bool(fields["norm_obs"]),
            bool(fields["norm_reward"]),
        )

    def restore(self, venv: Any, training: bool = True) -> Any:
        """A ``VecNormalize`` around ``venv`` continuing from these statistics."""
        from stable_baselines3.common.vec_env import VecNormalize

        if venv.observation_space.shape != self.obs_mean.shape:
            raise ValueError(
                f"statistics for {self.obs_mean.shape[0]} features; the env has "
                f"{venv.observation_space.shape}"
            )
        env = VecNormalize(
            venv,
            training=training,
            norm_obs=self.norm_obs,
            norm_reward=self.norm_reward,
            clip_obs=self.clip_obs,
            clip_reward=self.clip_reward,
            gamma=self.gamma,
            epsilon=self.epsilon,
        )
        env.obs_rms.mean, env.obs_rms.var = self.obs_mean.copy(), self.obs_var.copy()
        env.obs_rms.count = self.obs_count
        env.ret_rms.mean, env.ret_rms.var = np.float64(self.ret_mean), np.float64(self.ret_var)
        env.ret_rms.count = self.ret_count
        return env


def save_statistics(venv: Any, folder: str | Path) -> Path:
    """``<folder>/vecnormalize.npz`` of a live VecNormalize."""
    return NormalizationStats.of(venv).save(Path(folder) / STATS_FILE)


def find_statistics(folder: str | Path) -> Path | None:
    """The statistics file of a model folder (``.npz``, else a legacy ``.pkl``), or None."""
    for name in (STATS_FILE, LEGACY_STATS_FILE):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


# ---------------------------------------------------------------------------- replay buffers
REPLAY_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def save_replay_buffer(model: Any, path: str | Path) -> Path:
    """The SAC replay buffer's arrays, position and fill flag as an ``.npz`` (no pickle)."""
    buffer = model.replay_buffer
    arrays = {k: getattr(buffer, k) for k in REPLAY_ARRAYS if getattr(buffer, k, None) is not None}
    path = Path(path)
    with open(path, "wb") as handle:
        np.savez(handle, pos=np.int64(buffer.pos), full=np.bool_(buffer.full), **arrays)
    return path


def load_replay_buffer(model: Any, path: str | Path) -> None:
    """Fill ``model.replay_buffer`` from :func:`save_replay_buffer`'s file or a legacy pickle."""
    path = Path(path)
    buffer = model.replay_buffer
    if path.suffix == ".pkl":
        saved = _legacy_record(path, "replay buffer")
        fields = {k: getattr(saved, k, None) for k in (*REPLAY_ARRAYS, "pos", "full")}
    else:
        with np.load(path, allow_pickle=False) as data:
            fields = {k: data[k] if k in data else None for k in (*REPLAY_ARRAYS, "pos", "full")}
    for key in REPLAY_ARRAYS:
        target, value = getattr(buffer, key, None), fields[key]
        if target is None or value is None:
            continue
        value = np.asarray(value)
        if value.shape != target.shape:
            raise ValueError(
                f"{path}: {key} has shape {value.shape}; this run's buffer has {target.shape}"
            )
        target[...] = value
    buffer.pos, buffer.full = int(fields["pos"]), bool(fields["full"])


# ---------------------------------------------------------------------------- legacy pickles
class _Record(dict):
    """Inert stand-in for a whitelisted class in a legacy pickle: it only stores its state (a dict
    subclass, because numpy's generator pickles pass one such record as keyword arguments)."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple):  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


def _inert(*args: Any, **kwargs: Any) -> _Record:
    return _Record()


#: (module, name) -> what the restricted unpickler hands back (never the named object itself,
#: except numpy's own array reconstruction, which builds plain arrays)
_ALLOWED: dict[tuple[str, str], Any] = {
    ("stable_baselines3.common.vec_env.vec_normalize", "VecNormalize"): _Record,
    ("stable_baselines3.common.running_mean_std", "RunningMeanStd"): _Record,
    ("stable_baselines3.common.buffers", "ReplayBuffer"): _Record,
    ("gymnasium.spaces.box", "Box"): _Record,
    ("torch", "device"): _inert,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` allows only :data:`_ALLOWED` (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "numpy.random" or module.startswith("numpy.random."):
            return _inert  # a space's random generator: replaced by an inert record, never built
        found = _ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"refused {module}.{name}: legacy statistics may only hold numpy arrays and "
                "SB3 normalization records"
            )
        return found


def _legacy_record(path: Path, what: str) -> Any:
    try:
        with open(path, "rb") as handle:
            return _RestrictedUnpickler(io.BytesIO(handle.read())).load()
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"{path}: not a {what} written by stable-baselines3 ({exc}); it is not loaded"
        ) from None


def _stats_from_legacy_pickle(path: Path) -> NormalizationStats:
    saved = _legacy_record(path, "VecNormalize file")
    obs, ret = getattr(saved, "obs_rms", None), getattr(saved, "ret_rms", None)
    if not isinstance(saved, _Record) or not isinstance(obs, _Record) or ret is None:
        raise ValueError(f"{path}: not a VecNormalize file written by stable-baselines3")
    try:
        return NormalizationStats(
            np.asarray(obs.mean, dtype=np.float64),
            np.asarray(obs.var, dtype=np.float64),
            float(obs.count),
            float(np.asarray(ret.mean)),
            float(np.asarray(ret.var)),
            float(ret.count),
            float(saved.clip_obs),
            float(saved.clip_reward),
            float(saved.gamma),
            float(saved.epsilon),
            bool(saved.norm_obs),
            bool(saved.norm_reward),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: incomplete VecNormalize file ({exc})") from None
