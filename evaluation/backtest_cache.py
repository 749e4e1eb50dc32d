"""On-disk cache of baseline backtests: each named baseline runs once per scenario set.

Every trained agent is backtested against the same baselines on the same test seeds and the same
held-out period, so without a cache ``make demo`` and ``defialloc experiment`` re-simulate identical
baseline episodes for every agent. :func:`defialloc.evaluation.backtest.run_backtest` (``cache=True``) looks
each (baseline, seed chunk) task up here first and stores what it computed.

Key (SHA-256 of a JSON document): the format version, the simulation config hash
(``SimulationConfig.config_hash()``), the chunk's scenario seeds, a digest of the market paths it
runs on (which pins a replayed period's data too), the replayed period, the policy name and its
resolved parameters, run-level options that change the records (``run_options``, e.g. kill-switch
parameters), and the code version: a hash of the source files of ``envs/``, ``agents/baselines/``,
``agents/policy.py``, the kill-switch wrapper and ``evaluation/rollout.py`` (:data:`CODE_PATHS`), so
any change there misses.
Only named baselines are cached: a Policy object (a trained agent) has no such key.

Storage: ``<dir>/<key[:2]>/<key>.npz`` (the record's arrays) and ``<key>.json`` (scalars, names,
diagnostics, the key document), written atomically, JSON last. Loading uses
``np.load(allow_pickle=False)`` and ``json``: reading an entry never executes code. An entry that
cannot be read or does not match its key is ignored with a warning and recomputed. The directory is
``$DEFIALLOC_CACHE_DIR`` or ``~/.cache/defialloc/backtests``; delete it to clear the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defialloc.envs.config import REPO_ROOT, SimulationConfig
from defialloc.envs.market.paths import MarketPaths
from defialloc.evaluation.rollout import EpisodeRecord

#: bump when the stored layout changes
FORMAT_VERSION = 1
CACHE_DIR_ENV = "DEFIALLOC_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/defialloc/backtests")
#: source that decides what a baseline backtest computes (relative to the repository root; a path
#: that does not exist, such as the kill-switch wrapper on a branch without it, adds nothing)
CODE_PATHS = (
    "envs",
    "agents/baselines",
    "agents/policy.py",
    "agents/kill_switch_policy.py",
    "evaluation/rollout.py",
)


class CacheWarning(UserWarning):
    """A cache entry could not be read or written; the backtest is (re)computed instead."""


def default_cache_dir() -> Path:
    """``$DEFIALLOC_CACHE_DIR``, else ``~/.cache/defialloc/backtests``."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """SHA-256 (hex, 16 characters) of the ``.py`` files under :data:`CODE_PATHS`, by path."""
    digest = hashlib.sha256()
    for entry in CODE_PATHS:
        root = REPO_ROOT / entry
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for file in files:
            digest.update(file.relative_to(REPO_ROOT).as_posix().encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _digest_arrays(arrays: Sequence[tuple[str, Any]]) -> str:
    digest = hashlib.sha256()
    for name, value in arrays:
        arr = np.ascontiguousarray(value)
        digest.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()[:16]


def paths_digest(paths: MarketPaths) -> str:
    """Digest of every array and scalar of a :class:`MarketPaths` (what the backtest runs on)."""
    items = []
    for f in dataclasses.fields(paths):
        value = getattr(paths, f.name)
        if value is None:
            continue
        items.append((f.name, np.asarray(value if not isinstance(value, tuple) else list(value))))
    return _digest_arrays(items)


# ------------------------------------------------------------------------------------ records
def _split(record: EpisodeRecord) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays for the .npz, JSON metadata)``: arrays by field (dict fields as ``field/key``),
    scalars and name tuples in the metadata."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"fields": {}}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, np.ndarray):
            arrays[f.name] = value
            meta["fields"][f.name] = "array"
        elif isinstance(value, dict):
            for key, series in value.items():
                arrays[f"{f.name}/{key}"] = np.asarray(series)
            meta["fields"][f.name] = {"dict": list(value)}
        elif isinstance(value, tuple):
            meta["fields"][f.name] = {"tuple": [str(v) for v in value]}
        elif value is None or isinstance(value, str | int | float | bool):
            meta["fields"][f.name] = {"value": value}
        else:
            raise TypeError(f"EpisodeRecord.{f.name}: cannot cache a {type(value).__name__}")
    return arrays, meta


def _join(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> EpisodeRecord:
    """Rebuild the record; raise ValueError when the entry does not describe a valid record."""
    kwargs: dict[str, Any] = {}
    fields = meta["fields"]
    for f in dataclasses.fields(EpisodeRecord):
        kind = fields.get(f.name)
        if kind is None:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"missing field {f.name!r}")
            continue
        if kind == "array":
            kwargs[f.name] = np.asarray(arrays[f.name])
        elif "dict" in kind:
            kwargs[f.name] = {k: np.asarray(arrays[f"{f.name}/{k}"]) for k in kind["dict"]}
        elif "tuple" in kind:
            kwargs[f.name] = tuple(kind["tuple"])
        else:
            kwargs[f.name] = kind["value"]
    record = EpisodeRecord(**kwargs)
    k, t = record.turnover.shape
    if record.value_usd.shape != (k, t + 1) or record.weights.shape[:2] != (k, t):
        raise ValueError(
            f"inconsistent shapes: value_usd {record.value_usd.shape}, turnover {(k, t)}"
        )
    for name, series in (*record.costs_usd.items(), *record.extras.items()):
        if series.shape != (k, t):
            raise ValueError(f"series {name!r} has shape {series.shape}, expected {(k, t)}")
    return record


# ------------------------------------------------------------------------------------ cache
class BacktestCache:
    """A directory of cached baseline backtests (see the module docstring for the key and files).

    Args:
        directory: where entries live (default :func:`default_cache_dir`).
        code: the code version in the keys (default :func:`code_version`); tests pass their own.
    """

    def __init__(self, directory: str | Path | None = None, code: str | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory else default_cache_dir()
        self.code = code if code is not None else code_version()
        self.hits = 0
        self.misses = 0

    def key(
        self,
        config: SimulationConfig,
        policy: str,
        params: Mapping[str, Any],
        seeds: np.ndarray,
        paths: MarketPaths,
        *,
        period: Mapping[str, str] | None = None,
        run_options: Mapping[str, Any] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """``(hex key, key document)`` of baseline ``policy`` with resolved ``params`` on
        ``seeds``/``paths`` (the document is stored with the entry, to explain a miss)."""
        document = self._document(config, policy, params, seeds, paths, period, run_options)
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest(), document

    def _document(
        self, config: SimulationConfig, policy: str, params: Mapping[str, Any],
        seeds: np.ndarray, paths: MarketPaths, period: Mapping[str, str] | None,
        run_options: Mapping[str, Any] | None,
    ) -> dict[str, Any]:  # fmt: skip
        return {
            "format": FORMAT_VERSION,
            "config_hash": config.config_hash(),
            "seeds": [int(s) for s in np.asarray(seeds).reshape(-1)],
            "paths": paths_digest(paths),
            "period": dict(period) if period else None,
            "policy": policy,
            "params": json.loads(json.dumps(dict(params), sort_keys=True, default=str)),
            "run_options": json.loads(json.dumps(dict(run_options or {}), default=str)),
            "code": self.code,
        }

    def _files(self, key: str) -> tuple[Path, Path]:
        folder = self.directory / key[:2]
        return folder / f"{key}.npz", folder / f"{key}.json"

    def load(self, key: str) -> tuple[EpisodeRecord, dict[str, int], float] | None:
        """``(record, diagnostics, elapsed seconds of the original run)``, or None on a miss.

        An unreadable or mismatched entry warns (:class:`CacheWarning`) and counts as a miss.
        """
        npz, meta_file = self._files(key)
        if not meta_file.is_file():
            self.misses += 1
            return None
        try:
            meta = json.loads(meta_file.read_text())
            if meta.get("key") != key:
                raise ValueError("the entry was written for another key")
            with np.load(npz, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            record = _join(arrays, meta)
            diagnostics = {str(k): int(v) for k, v in meta.get("diagnostics", {}).items()}
            elapsed = float(meta.get("elapsed_s", 0.0))
        except Exception as exc:  # noqa: BLE001 (any unreadable entry is recomputed, never fatal)
            warnings.warn(
                f"backtest cache: ignoring unreadable entry {meta_file.with_suffix('')} "
                f"({type(exc).__name__}: {exc}); recomputing it",
                CacheWarning,
                stacklevel=2,
            )
            self.misses += 1
            return None
        self.hits += 1
        return record, diagnostics, elapsed

    def save(
        self,
        key: str,
        record: EpisodeRecord,
        diagnostics: Mapping[str, int],
        elapsed_s: float,
        document: Mapping[str, Any] | None = None,
    ) -> None:
        """Store an entry atomically (arrays first, the JSON that makes it visible last); a write
        that fails warns and leaves no partial entry."""
        npz, meta_file = self._files(key)
        try:
            arrays, meta = _split(record)
            meta |= {
                "key": key,
                "document": dict(document or {}),
                "diagnostics": {k: int(v) for k, v in diagnostics.items()},
                "elapsed_s": float(elapsed_s),
            }
            npz.parent.mkdir(parents=True, exist_ok=True)
            for target, write in (
                (npz, lambda f: np.savez(f, **arrays)),
                (meta_file, lambda f: f.write(json.dumps(meta, sort_keys=True).encode())),
            ):
                with tempfile.NamedTemporaryFile(dir=npz.parent, delete=False) as tmp:
                    write(tmp)
                os.replace(tmp.name, target)
        except Exception as exc:  # noqa: BLE001 (a cache that cannot be written is only slower)
            warnings.warn(
                f"backtest cache: could not write {meta_file.with_suffix('')} "
                f"({type(exc).__name__}: {exc})",
                CacheWarning,
                stacklevel=2,
            )


def open_cache(cache: bool | BacktestCache | None) -> BacktestCache | None:
    """The cache a ``cache=`` argument asks for: None (off), a new default cache, or the given one."""
    if isinstance(cache, BacktestCache):
        return cache
    return BacktestCache() if cache else None


#: what a backtest task returns: (record, diagnostics, elapsed seconds)
TaskOutput = tuple[EpisodeRecord, dict[str, int], float]


def lookup_tasks(
    cache: BacktestCache,
    config: SimulationConfig,
    tasks: Sequence[tuple[int, int]],
    policies: Sequence[Any],
    params: Sequence[Mapping[str, Any]],
    chunks: Sequence[tuple[np.ndarray, MarketPaths]],
    *,
    period: Mapping[str, str] | None = None,
    run_options: Mapping[str, Any] | None = None,
) -> tuple[dict[tuple[int, int], TaskOutput], dict[tuple[int, int], tuple[str, dict[str, Any]]]]:
    """For :func:`defialloc.evaluation.backtest.run_backtest`'s (policy, chunk) tasks: the cached outputs of
    named baselines, and the keys of every named-baseline task (to store the ones computed)."""
    hits: dict[tuple[int, int], TaskOutput] = {}
    keys: dict[tuple[int, int], tuple[str, dict[str, Any]]] = {}
    for p, c in tasks:
        if not isinstance(policies[p], str):
            continue  # a Policy object (a trained agent) is never cached
        seeds, paths = chunks[c]
        keys[(p, c)] = cache.key(
            config, policies[p], params[p], seeds, paths, period=period, run_options=run_options
        )
        found = cache.load(keys[(p, c)][0])
        if found is not None:
            hits[(p, c)] = found
    return hits, keys


def store_tasks(
    cache: BacktestCache,
    keys: Mapping[tuple[int, int], tuple[str, dict[str, Any]]],
    outputs: Mapping[tuple[int, int], TaskOutput],
    computed: Sequence[tuple[int, int]],
) -> None:
    """Store the computed outputs of the tasks that have a key."""
    for task in computed:
        if task in keys:
            record, diagnostics, elapsed = outputs[task]
            key, document = keys[task]
            cache.save(key, record, diagnostics, elapsed, document)
