"""The compiled step (envs/compiled) against the numpy reference (envs/simulator.py).

The numpy :class:`PortfolioSimulator` is the oracle: the same config, seeds and actions must give the
same step results, state and observations. Tolerance: 1e-12 relative to each quantity's scale (USD
amounts and cash to the account's initial value, other quantities to max(|x|, 1)): the kernels sum in
another order than numpy's pairwise sums, so the last bits of a fill can differ.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from defialloc.envs.compiled import (
    CompiledSimulator,
    compiled_unsupported,
    kernels_batch,
    make_simulator,
)
from defialloc.envs.config import OBSERVATION_BLOCKS, load_config
from defialloc.envs.simulator import PortfolioSimulator

RTOL = 1e-12
ALL_BLOCKS = list(OBSERVATION_BLOCKS)  # every block, the greeks block included
#: everything on at once (with configs/options.yaml: lending, perps, cascades and the options
#: venue): a kill-switch that fires (drawdown and health factor), delta actions, holds between
#: decisions, every observation block
EVERYTHING_CONFIG = "configs/options.yaml"
EVERYTHING = {
    "env.horizon": 60,
    "env.action.kind": "delta",
    "env.observation.blocks": ALL_BLOCKS,
    "env.kill_switch.enabled": True,
    "env.kill_switch.max_drawdown": 0.15,
    "env.kill_switch.min_health_factor": 1.1,
    "env.kill_switch.cooldown_steps": 3,
}
#: what must have happened in the random run (ruin's insurance and bad debt: their own test)
EXERCISED = (
    "liquidations", "kill_switch", "holds", "resets", "gas", "option contracts",
    "option settlements", "option margin calls",
)  # fmt: skip


def _flat(result) -> dict[str, np.ndarray]:
    out = {}
    for key, value in vars(result).items():
        if value is None:
            continue
        if key == "costs":
            out |= {f"costs.{k}": np.asarray(v) for k, v in vars(value).items()}
        else:
            out[key] = np.asarray(value)
    return out


def _assert_close(name: str, ref, got, scale: float = 1.0) -> None:
    ref, got = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    assert ref.shape == got.shape, f"{name}: shape {ref.shape} vs {got.shape}"
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=name)
    np.testing.assert_array_equal(got[~finite], ref[~finite], err_msg=name)
    err = np.abs(got[finite] - ref[finite]) / np.maximum(np.abs(ref[finite]), scale)
    assert err.size == 0 or err.max() <= RTOL, f"{name}: relative error {err.max():.3g}"


def _inverse(health_factor) -> np.ndarray:
    """``1 / HF`` (debt over liquidation-weighted collateral; 0 without debt). A nearly repaid debt
    is a small difference of large amounts, so HF itself amplifies its last bits: its inverse is
    what a risk check reads, and it is well conditioned."""
    hf = np.asarray(health_factor, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(np.isfinite(hf), 1.0 / hf, 0.0)


def _random_action(rng: np.random.Generator, dim: int) -> np.ndarray:
    """Uniform actions mixed with the Box's corners (one-hot, all -1, all +1, zero)."""
    u = rng.uniform()
    if u < 0.6:
        return rng.uniform(-1.0, 1.0, dim)
    if u < 0.8:
        a = -np.ones(dim)
        a[rng.integers(dim)] = 1.0
        return a
    return np.full(dim, rng.choice([-1.0, 0.0, 1.0]))


def assert_same_step(ref, com, r_ref, r_com, where: str, seen: dict[str, float]) -> None:
    """The step results and the state after a step of both simulators agree (module docstring);
    adds what happened to ``seen``."""
    scale = ref.config.env.initial_value_usd
    f_ref, f_com = _flat(r_ref), _flat(r_com)
    assert f_ref.keys() == f_com.keys()
    for key, value in f_ref.items():
        usd = key.startswith("costs.") or key.endswith("_usd")
        if key == "health_factor":  # compared as debt / weighted collateral (_inverse)
            value, f_com[key] = _inverse(value), _inverse(f_com[key])
        _assert_close(f"{key} at {where}", value, f_com[key], scale if usd else 1.0)
    for name in ("units", "value", "peak"):
        _assert_close(f"{name} at {where}", getattr(ref, name), getattr(com, name))
    _assert_close(f"cash at {where}", ref.cash, com.cash, scale)
    _assert_close(f"reserves at {where}", ref.pools.reserves, com.pools.reserves)
    engine = ref.protocols
    if engine is None:
        return
    _assert_close(f"debt at {where}", engine.debt, com.protocols.debt, scale)
    # positions sized from a nearly spent cash balance (a margin-scaled perp book, option buys that
    # fit the budget) inherit its rounding: compared in USD at the index
    price = ref.prices_now()[0]
    perp_usd = (engine.perp_size * price, com.protocols.perp_size * price)
    _assert_close(f"perps at {where}", *perp_usd, scale)
    hf = (_inverse(engine.hf_now), _inverse(com.protocols.hf_now))
    _assert_close(f"hf at {where}", *hf)
    seen["liquidations"] = seen.get("liquidations", 0.0) + float(np.sum(r_ref.liquidations))
    book = engine.options
    if book is None:
        return
    other = com.protocols.options
    usd = (book.units * price[..., None], other.units * price[..., None])
    _assert_close(f"option units at {where}", *usd, scale)
    for name in ("strike", "expiry", "mark", "unit_greeks"):
        _assert_close(f"option {name} at {where}", getattr(book, name), getattr(other, name))
    move, move_com = ref._move.options, com._move.options
    for name in ("liquidation_usd", "insurance_usd"):
        _assert_close(
            f"option {name} at {where}", getattr(move, name), getattr(move_com, name), scale
        )
    for name in ("units_during_move", "mark_before", "mark_after"):
        _assert_close(f"option {name} at {where}", getattr(move, name), getattr(move_com, name))
    for key, happened in (
        ("option contracts", book.units != 0.0),
        ("option settlements", r_ref.option_settlement_usd != 0.0),
        ("option margin calls", move.liquidation_usd > 0.0),
        ("option insurance", move.insurance_usd > 0.0),
        ("bad debt", r_ref.bad_debt_usd > 0.0),
    ):
        seen[key] = seen.get(key, 0.0) + float(np.sum(happened))


def assert_same_info(ref, com, r_ref, r_com, index: int, where: str) -> None:
    """Env ``index``'s ``info`` agrees (numbers to the tolerance, USD at the account's scale)."""
    info_ref, info_com = ref.info(index, r_ref), com.info(index, r_com)
    assert info_ref.keys() == info_com.keys()
    scale = ref.config.env.initial_value_usd
    price = np.asarray(info_ref["prices"])  # (N + 1,) USD, numeraire last
    in_usd = {  # positions (units) compared by their USD value, like the state (assert_same_step)
        "holdings": price,
        "holdings_during_move": price,
        "perp_size_during_move": price[:-1],
        "option_units": price[:-1, None],
        "option_units_during_move": price[:-1, None],
    }
    for key, value in info_ref.items():
        if key in in_usd:
            value, info_com[key] = value * in_usd[key], info_com[key] * in_usd[key]
        pairs = [(key, value, info_com[key])]
        if isinstance(value, dict):
            pairs = [(f"{key}.{k}", v, info_com[key][k]) for k, v in value.items()]
        for name, a, b in pairs:
            if isinstance(a, str) or a is None:
                assert a == b, f"info {name} at {where}"
                continue
            if name == "health_factor":
                a, b = _inverse(a), _inverse(b)
            usd = name.endswith("_usd") or name.startswith("costs.") or "value" in name
            usd = usd or name in in_usd
            _assert_close(f"info {name} at {where}", a, b, scale if usd else 1.0)


def run_against_reference(config, n_envs: int, steps: int, seed: int = 0) -> dict[str, float]:
    """Step the compiled and the numpy simulators side by side; assert every step agrees.

    Returns totals of what happened (so a test can check the mechanisms were exercised)."""
    ref, com = PortfolioSimulator(config, n_envs), CompiledSimulator(config, n_envs)
    rng = np.random.default_rng(seed)
    envs = np.arange(n_envs)
    next_seed = 10_000
    ref.reset_envs(envs, envs + next_seed)
    com.reset_envs(envs, envs + next_seed)
    next_seed += n_envs
    seen = {"liquidations": 0.0, "kill_switch": 0.0, "holds": 0.0, "resets": 0.0, "gas": 0.0}
    for step in range(steps):
        _assert_close(f"obs at {step}", ref.observe(), com.observe())
        hold = rng.uniform() < 0.15
        actions = np.stack([_random_action(rng, ref.action_dim) for _ in envs])
        if rng.uniform() < 0.1:  # a spot-only action (the baselines' width): no debt, no perps
            actions = actions[:, : ref.n_assets + 1]
        override = rng.uniform(size=n_envs) < 0.05 if rng.uniform() < 0.2 else None
        kind = "target" if rng.uniform() < 0.1 else None  # a baseline's targets
        kw = {"override": override, "hold": hold, "action_kind": kind}
        r_ref = ref.step(None if hold else actions, **kw)
        r_com = com.step(None if hold else actions, **kw)
        assert_same_step(ref, com, r_ref, r_com, f"step {step}", seen)
        assert_same_info(ref, com, r_ref, r_com, step % n_envs, f"step {step}")
        seen["kill_switch"] += float(np.sum(r_ref.kill_switch))
        seen["holds"] += hold
        seen["gas"] += float(np.sum(r_ref.costs.gas_usd))
        done = np.flatnonzero(r_ref.terminated | r_ref.truncated)
        if done.size:
            seeds = np.arange(next_seed, next_seed + done.size)
            next_seed += done.size
            ref.reset_envs(done, seeds)
            com.reset_envs(done, seeds)
            seen["resets"] += done.size
    return seen


def test_everything_on_matches_numpy_reference_over_10000_random_steps():
    """32 envs x 313 steps (10,016 env-steps): lending, perps, cascades, the options venue (opens,
    resizes, settlements, margin calls), kill-switch, delta actions, holds, resets."""
    config = load_config(EVERYTHING_CONFIG, EVERYTHING)
    seen = run_against_reference(config, n_envs=32, steps=313, seed=3)
    assert all(seen[key] > 0 for key in EXERCISED), seen


def test_options_ruin_with_insurance_and_bad_debt_matches_reference():
    """Levered ETH with calls written on all of it; on the calls' expiry a wick liquidates the
    collateral and ETH closes at 10x the strike: the payoff takes the cash and every unit left, the
    venue absorbs the rest (insurance) and the account's negative equity is written off (bad debt,
    every contract closed out)."""
    from defialloc.envs.leverage_actions import OptionOrder
    from tests.test_leverage_env import make_paths

    warmup, horizon = 6, 9
    config = load_config(
        EVERYTHING_CONFIG,
        {
            "market.assets": ["BTC", "ETH"],
            "env.warmup": warmup,
            "env.horizon": horizon,
            "env.observation.return_window": 2,
            "env.observation.vol_window": 2,
            "env.observation.corr_window": 5,
            "env.observation.blocks": ALL_BLOCKS,
            "env.perps.enabled": False,
            "env.cascades.enabled": False,
        },
    )
    close = np.tile([100.0, 2000.0], (warmup + horizon + 1, 1))
    low, high = close.copy(), close.copy()
    expiry = warmup + 7  # the 7-day tenor, opened at the first decision
    close[expiry:, 1] = high[expiry:, 1] = 20_000.0
    low[expiry:, 1] = 20_000.0
    low[expiry, 1] = 1_000.0
    paths = make_paths(close, low=low, high=high, warmup=warmup)
    ref, com = PortfolioSimulator(config, 1), CompiledSimulator(config, 1)
    for sim in (ref, com):
        sim.reset_envs(np.zeros(1, dtype=np.int64), np.array([3]), paths=paths)
    order = OptionOrder(call_share=1.0, call_strike=2, tenor=0)
    layout = ref.protocols.layout
    action = layout.compose(np.array([[-1.0, 1.0, -1.0]]), 2.0, 0.0, 2.0, order)
    seen: dict[str, float] = {}
    for step in range(horizon):
        _assert_close(f"obs at {step}", ref.observe(), com.observe())
        hold = step > 0
        r_ref = ref.step(None if hold else action, hold=hold)
        r_com = com.step(None if hold else action, hold=hold)
        assert_same_step(ref, com, r_ref, r_com, f"step {step}", seen)
        assert_same_info(ref, com, r_ref, r_com, 0, f"step {step}")
    assert seen["option insurance"] > 0 and seen["bad debt"] > 0, seen
    assert seen["option settlements"] > 0 and seen["liquidations"] > 0, seen
    assert not com.protocols.options.units.any() and com.value[0] == 0.0


@pytest.mark.parametrize(
    "config, overrides",
    [
        ("configs/default.yaml", {"env.horizon": 40}),
        (
            "configs/default.yaml",
            {
                "env.horizon": 40,
                "env.initial_weights": "equal",
                "env.gas.enabled": False,
                "env.reward.kind": "drawdown_penalized",
            },
        ),
        (
            "configs/leverage.yaml",
            {
                "env.horizon": 40,
                "env.action.kind": "anchored",
                "env.action.anchor": "inverse_vol",
                "env.reward.kind": "differential_sharpe",
            },
        ),
        ("configs/leverage.yaml", {"env.horizon": 40, "env.perps.enabled": False}),
        ("configs/leverage.yaml", {"env.horizon": 40, "env.lending.enabled": False}),
        (
            "configs/leverage.yaml",
            {"env.horizon": 40, "env.decision_every": 5, "market": "configs/market/bootstrap.yaml"},
        ),
    ],
    ids=["spot", "spot-equal-nogas-dd", "levered-anchored", "lending", "perps", "bootstrap"],
)
def test_configurations_match_numpy_reference(config, overrides):
    run_against_reference(load_config(config, overrides), n_envs=3, steps=300)


def test_batched_equals_single_and_parallel_equals_serial():
    """Env ``i`` of a batch steps exactly like a lone env with the same seed and actions, and the
    threaded kernels (from PARALLEL_MIN_ENVS envs) give the serial ones' numbers bit for bit."""
    config = load_config(EVERYTHING_CONFIG, EVERYTHING)
    n = 16  # the prange forms run from PARALLEL_MIN_ENVS envs; forced here on a small batch
    assert CompiledSimulator(config, kernels_batch.PARALLEL_MIN_ENVS)._parallel
    batch, serial = CompiledSimulator(config, n), CompiledSimulator(config, n)
    batch._parallel, serial._parallel = True, False
    singles = [CompiledSimulator(config, 1) for _ in range(3)]
    seeds = np.arange(n) + 500
    batch.reset_envs(np.arange(n), seeds)
    serial.reset_envs(np.arange(n), seeds)
    for i, single in enumerate(singles):
        single.reset_envs(np.zeros(1, dtype=np.int64), seeds[i : i + 1])
    rng = np.random.default_rng(0)
    for _ in range(50):
        actions = rng.uniform(-1.0, 1.0, (n, batch.action_dim))
        (res, obs), (res_s, obs_s) = batch.step_observe(actions), serial.step_observe(actions)
        np.testing.assert_array_equal(obs, obs_s)
        for key, value in _flat(res).items():
            np.testing.assert_array_equal(value, _flat(res_s)[key], err_msg=key)
        for i, single in enumerate(singles):
            one = _flat(single.step(actions[i : i + 1]))
            for key, value in one.items():
                np.testing.assert_array_equal(value, _flat(res)[key][i : i + 1], err_msg=key)
            np.testing.assert_array_equal(single.observe()[0], obs[i])


@pytest.mark.parametrize(
    "config", ["configs/default.yaml", "configs/leverage.yaml", "configs/options.yaml"]
)
def test_runtime_path_is_compiled_for_every_protocol(config):
    from defialloc.envs.env import DeFiMarketEnv
    from defialloc.envs.vec_env import DeFiMarketVecEnv

    assert compiled_unsupported(load_config(config)) is None
    assert type(make_simulator(load_config(config), 2)) is CompiledSimulator
    assert isinstance(DeFiMarketEnv(config).sim, CompiledSimulator)
    assert isinstance(DeFiMarketVecEnv(load_config(config), n_envs=2).sim, CompiledSimulator)
    reference = DeFiMarketEnv(config, simulator=PortfolioSimulator).sim
    assert type(reference) is PortfolioSimulator


def test_bad_actions_and_ended_paths_raise_clear_errors():
    sim = CompiledSimulator(load_config("configs/leverage.yaml", {"env.horizon": 2}), 2)
    sim.reset_envs(np.arange(2), np.arange(2) + 7)
    bad = np.zeros((2, sim.action_dim))
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        sim.step(bad)
    with pytest.raises(ValueError, match="shape|action"):
        sim.step(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="action_kind"):
        sim.step(np.zeros((2, sim.action_dim)), action_kind="momentum")
    sim.step(np.zeros((2, sim.action_dim)))
    sim.step(np.zeros((2, sim.action_dim)))
    with pytest.raises(RuntimeError, match="end of their path"):
        sim.step(np.zeros((2, sim.action_dim)))


@pytest.mark.parametrize(
    "config", ["configs/default.yaml", "configs/leverage.yaml", "configs/options.yaml"]
)
def test_all_in_from_cash_on_a_fresh_simulator_matches_reference(config):
    """The first trade of a fresh simulator (untouched scratch memory): all cash into one asset,
    which overdraws the cash by its costs, so the buy is scaled down and re-quoted while the other
    assets place no order (a path where a kernel once read pools it had not loaded: NaN)."""
    cfg = load_config(config, {"env.horizon": 5})
    n = len(cfg.market.assets)
    for asset in range(n):
        ref, com = PortfolioSimulator(cfg, 1), CompiledSimulator(cfg, 1)
        for sim in (ref, com):
            sim.reset_envs(np.zeros(1, dtype=np.int64), np.array([11]))
        actions = -np.ones((1, n + 1))
        actions[0, asset] = 1.0
        f_ref, f_com = _flat(ref.step(actions)), _flat(com.step(actions))
        assert np.isfinite(f_com["costs.slippage_usd"]).all()
        for key, value in f_ref.items():
            _assert_close(key, value, f_com[key], cfg.env.initial_value_usd)


def test_bench_reports_both_simulators_and_the_grid_configs_load(capsys):
    """`defialloc bench env`'s rows (a smoke run, no speed asserted) and its 15-asset configs."""
    from defialloc.envs.bench import bench_config, grid_config

    config = load_config("configs/leverage.yaml", {"env.horizon": 20})
    rows = bench_config(config, n_envs=(4,), quick=True)
    assert [(r["simulator"], r["env"]) for r in rows] == [
        ("compiled", "single"),
        ("compiled", "batched"),
        ("compiled", "step only"),
        ("numpy", "single"),
        ("numpy", "batched"),
        ("numpy", "step only"),
    ]
    assert all(r["env_steps_per_s"] > 0 for r in rows)
    assert all(r["mib_per_env"] > 0 for r in rows if r["env"] == "batched")
    from defialloc.envs.bench import compile_probe

    compile_probe("configs/options.yaml", 3)  # `defialloc bench compile`'s probe (in-process here)
    times = json.loads(capsys.readouterr().out)
    assert set(times) == {"import_s", "first_single_step_s", "first_parallel_step_s"}
    assert all(t >= 0.0 for t in times.values())
    big = grid_config("all_protocols", 15)
    assert len(big.market.assets) == 15 and big.env.lending.enabled and big.env.cascades_enabled
    assert big.env.options.enabled and big.env.perps.enabled  # every protocol
    with pytest.raises(ValueError, match="n_assets"):
        grid_config("spot", 16)


def test_accounting_identity_of_the_compiled_step_with_every_protocol_over_10000_steps():
    """V(t+1) = V(t) - costs + insurance + bad debt + market PnL, to 1e-9, on the compiled step with
    lending, perps, cascades, the options venue and the kill-switch on."""
    from defialloc.envs import make_env
    from tests.test_leverage_env import identity_error

    env = make_env(EVERYTHING_CONFIG, seed=7, **EVERYTHING)
    assert isinstance(env.unwrapped.sim, CompiledSimulator)
    rng = np.random.default_rng(1)
    _, info = env.reset(seed=7)
    worst, liquidations, kills = 0.0, 0, 0
    for _ in range(10_000):
        action = _random_action(rng, env.action_space.shape[0]).astype(np.float32)
        _, _, terminated, truncated, new = env.step(action)
        worst = max(worst, identity_error(info, new))
        liquidations += new["liquidations"]
        kills += new["kill_switch"]
        info = new
        if terminated or truncated:
            _, info = env.reset()
    assert worst < 1e-9
    assert liquidations > 0 and kills > 0


def test_kernel_cache_is_keyed_by_the_sources_and_prunes_stale_versions(tmp_path, monkeypatch):
    """Kernels of other sources never share a cache folder (a process running older sources cannot
    save kernels a newer one loads); folders of other sources untouched for a day are removed."""
    import os

    import numba

    from defialloc.envs.compiled import cache

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    before = numba.config.CACHE_DIR
    with cache.kernel_cache() as folder:
        assert numba.config.CACHE_DIR == str(folder)
        assert folder.parent == tmp_path and cache.sources_hash()[:16] in folder.name
    assert numba.config.CACHE_DIR == before  # other libraries' kernels cache where they did
    monkeypatch.setattr(cache, "sources_hash", lambda: "f" * 40)  # an edited kernel
    with cache.kernel_cache() as edited:
        assert edited != folder and edited.is_dir() and folder.is_dir()  # the old one is fresh
    (folder / "k.nbi").write_text("old")
    day_ago = os.path.getmtime(folder) - 2 * cache.STALE_AFTER_S
    for path in (folder / "k.nbi", folder):
        os.utime(path, (day_ago, day_ago))
    assert cache.prune_stale(tmp_path, keep=edited) == [folder] and not folder.exists()
    assert edited.is_dir()
