"""The on-disk cache of baseline backtests: hits equal fresh runs, every key part misses, bad entries
are recomputed with a warning, agents are never cached, and reading an entry executes no code."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from defialloc.agents.baselines.policies import DEFAULT_PARAMS_PATH
from defialloc.agents.policy import FixedWeightsPolicy
from defialloc.envs.config import load_config
from defialloc.envs.market.sources import sample_paths
from defialloc.envs.seeds import scenario_seeds
from defialloc.evaluation.backtest import resolve_period, run_backtest, run_period_backtest
from defialloc.evaluation.backtest_cache import (
    BacktestCache,
    CacheWarning,
    code_version,
    default_cache_dir,
)
from defialloc.evaluation.rollout import EpisodeRecord

NAMED = ["equal_weight", "min_variance"]


@pytest.fixture(autouse=True)
def _quiet_fallbacks():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("error", CacheWarning)  # a test that expects one says so
        yield


@pytest.fixture(scope="module")
def cfg():
    return load_config({"market": {}, "env": {"horizon": 15}})


def run(cfg, cache, policies=NAMED, seeds=None, **kwargs):  # noqa: ANN001
    seeds = scenario_seeds("test", 3) if seeds is None else seeds
    return run_backtest(cfg, policies, seeds, progress=False, cache=cache, **kwargs)


def assert_records_equal(a: EpisodeRecord, b: EpisodeRecord) -> None:
    for f in dataclasses.fields(EpisodeRecord):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, dict):
            assert list(x) == list(y), f.name
            for key in x:
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{f.name}/{key}")
                assert x[key].dtype == y[key].dtype
        elif isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
            assert x.dtype == y.dtype, f.name
        else:
            assert x == y, f.name


def entries(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.json"))


def test_a_hit_returns_the_records_of_a_fresh_run(cfg, tmp_path):
    cache = BacktestCache(tmp_path, code="v1")
    first = run(cfg, cache)
    assert (cache.hits, cache.misses) == (0, 2) and len(entries(tmp_path)) == 2
    second = run(cfg, cache)
    assert (cache.hits, cache.misses) == (2, 2)
    fresh = run(cfg, False)
    for name in NAMED:
        assert_records_equal(second.records[name], fresh.records[name])
        assert_records_equal(second.records[name], first.records[name])
        assert second.diagnostics[name] == fresh.diagnostics[name]
        assert second.elapsed_s[name] == pytest.approx(first.elapsed_s[name])
    assert second.policy_params == fresh.policy_params
    table = second.metrics_table().drop(columns=["policy"])
    assert table.equals(fresh.metrics_table().drop(columns=["policy"]))


def test_every_part_of_the_key_misses(cfg, tmp_path):
    cache = BacktestCache(tmp_path, code="v1")
    run(cfg, cache)
    base = cache.misses
    # a changed baseline parameter (through the evaluation YAML) misses only that baseline
    params = yaml.safe_load(Path(DEFAULT_PARAMS_PATH).read_text())
    params["policies"]["min_variance"]["rebalance_every"] = 3
    changed = tmp_path / "eval.yaml"
    changed.write_text(yaml.safe_dump(params))
    run(cfg, cache, params_path=changed)
    assert cache.misses == base + 1
    # a changed config value, other seeds, another code version: everything misses
    run(load_config(cfg, {"env.action.no_trade_band": 0.03}), cache)
    assert cache.misses == base + 3
    run(cfg, cache, seeds=scenario_seeds("test", 4)[1:])
    assert cache.misses == base + 5
    run(cfg, BacktestCache(tmp_path, code="v2"))
    assert len(entries(tmp_path)) == 2 + 1 + 2 + 2 + 2
    # and the original run still hits
    hits = cache.hits
    run(cfg, cache)
    assert cache.hits == hits + 2


def test_seed_chunks_are_cached_per_chunk(cfg, tmp_path):
    cache = BacktestCache(tmp_path, code="v1")
    whole = run(cfg, cache, policies=["equal_weight"])
    chunked = run(cfg, cache, policies=["equal_weight"], chunk_size=2)
    assert cache.hits == 0 and len(entries(tmp_path)) == 3  # one whole + two chunks
    assert_records_equal(whole.records["equal_weight"], chunked.records["equal_weight"])
    again = run(cfg, cache, policies=["equal_weight"], chunk_size=2)
    assert cache.hits == 2
    assert_records_equal(again.records["equal_weight"], whole.records["equal_weight"])


def test_policy_objects_are_never_cached(cfg, tmp_path):
    cache = BacktestCache(tmp_path, code="v1")
    agent = FixedWeightsPolicy(np.full(6, 1.0 / 6), name="agent")
    run(cfg, cache, policies=[agent, "equal_weight"])
    assert len(entries(tmp_path)) == 1
    second = run(cfg, cache, policies=[agent, "equal_weight"])
    assert cache.hits == 1 and second.records["agent"].turnover.shape == (3, 15)


@pytest.mark.parametrize("damage", ["truncate_npz", "garbage_json", "wrong_key", "pickled_array"])
def test_a_bad_entry_is_ignored_with_a_warning_and_recomputed(cfg, tmp_path, damage):
    cache = BacktestCache(tmp_path, code="v1")
    fresh = run(cfg, cache, policies=["equal_weight"])
    (meta,) = entries(tmp_path)
    npz = meta.with_suffix(".npz")
    if damage == "truncate_npz":
        npz.write_bytes(npz.read_bytes()[:100])
    elif damage == "garbage_json":
        meta.write_text("{not json")
    elif damage == "wrong_key":
        doc = json.loads(meta.read_text())
        doc["key"] = "0" * 64
        meta.write_text(json.dumps(doc))
    else:  # an object array needs pickle to load: refused, so loading cannot run code
        with np.load(npz) as data:
            arrays = {name: data[name] for name in data.files}
        arrays["seeds"] = np.array([object()] * 3, dtype=object)
        np.savez(npz, **arrays)
    with pytest.warns(CacheWarning, match="ignoring unreadable entry"):
        again = run(cfg, cache, policies=["equal_weight"])
    assert_records_equal(again.records["equal_weight"], fresh.records["equal_weight"])
    third = run(cfg, cache, policies=["equal_weight"])  # rewritten: a hit again
    assert cache.hits == 1
    assert_records_equal(third.records["equal_weight"], fresh.records["equal_weight"])


def test_a_replayed_period_is_cached(cfg, tmp_path):
    spec = resolve_period("ftx_2022")
    cache = BacktestCache(tmp_path, code="v1")
    kwargs = {"name": "ftx_2022", "progress": False, "cache": cache}
    first = run_period_backtest(cfg, ["equal_weight"], spec.start, spec.end, **kwargs)
    second = run_period_backtest(cfg, ["equal_weight"], spec.start, spec.end, **kwargs)
    assert cache.hits == 1
    assert_records_equal(first.records["equal_weight"], second.records["equal_weight"])
    assert second.period == {"name": "ftx_2022", "start": "2022-10-15", "end": "2022-12-31"}


def test_defaults_code_version_and_directory(monkeypatch, tmp_path):
    version = code_version()
    assert len(version) == 16 and version == code_version()
    monkeypatch.setenv("DEFIALLOC_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert BacktestCache().directory == tmp_path / "c"
    monkeypatch.delenv("DEFIALLOC_CACHE_DIR")
    assert default_cache_dir() == Path("~/.cache/defialloc/backtests").expanduser()


def test_run_options_and_the_period_are_part_of_the_key(cfg, tmp_path):
    cache = BacktestCache(tmp_path, code="v1")
    seeds = scenario_seeds("test", 2)
    warmup = cfg.env.warmup
    paths = sample_paths(cfg.market, seeds, warmup + cfg.env.horizon + 1, warmup)
    base, document = cache.key(cfg, "equal_weight", {"rebalance_every": 30}, seeds, paths)
    assert document["config_hash"] == cfg.config_hash() and document["code"] == "v1"
    assert base == cache.key(cfg, "equal_weight", {"rebalance_every": 30}, seeds, paths)[0]
    assert base == cache.key(cfg, "equal_weight", {"rebalance_every": 30}, seeds, paths, run_options={})[0]  # fmt: skip
    others = [
        cache.key(cfg, "equal_weight", {"rebalance_every": 30}, seeds, paths,
                  run_options={"kill_switch": {"max_drawdown": 0.3}})[0],
        cache.key(cfg, "equal_weight", {"rebalance_every": 30}, seeds, paths,
                  period={"name": "p", "start": "2022-01-01", "end": "2022-02-01"})[0],
        cache.key(cfg, "equal_weight", {"rebalance_every": 7}, seeds, paths)[0],
        cache.key(cfg, "buy_and_hold", {"rebalance_every": 30}, seeds, paths)[0],
        cache.key(cfg, "equal_weight", {"rebalance_every": 30}, seeds[::-1], paths)[0],
        cache.key(cfg, "equal_weight", {"rebalance_every": 30}, seeds, paths.take(np.array([1, 0])))[0],
    ]  # fmt: skip
    assert len({base, *others}) == 1 + len(others)
