"""The compiled step's parameters: every config number a kernel reads, packed into two flat arrays.

``fp`` (float64) and ``ip`` (int64) are built once per simulator from the validated config and the
loaded protocol snapshots (:func:`pack_params`); the kernels read them by the index constants
below (module-level ints, which numba compiles in as constants). Per-asset and per-tier vectors sit
at the tail of ``fp`` at offsets stored in ``ip`` (``IP_A_*``, ``IP_SIDE``, ``IP_INV_HF``), the
pools' subset table and the observation's market runs at the tail of ``ip``.
"""

from __future__ import annotations

from itertools import combinations
from typing import TYPE_CHECKING

import numpy as np

from defialloc.envs.compiled.layout import Layout
from defialloc.envs.compiled.scratch import work_columns
from defialloc.envs.protocols.borrowers import inverse_entry_hf, kept_by_liquidators
from defialloc.envs.protocols.gas import GAS_UNITS

if TYPE_CHECKING:
    from defialloc.envs.simulator import PortfolioSimulator

from defialloc.envs.compiled.scratch import MAX_TIERS  # noqa: E402  (1-4 fee tiers per pair: envs.config.AmmConfig)

# ------------------------------------------------------------------------------------- fp: floats
(
    F_BAND,
    F_OVERHEAD_UNITS,
    F_UNITS_PER_POOL,
    F_INITIAL_VALUE,
    F_FLOOR,
    F_REWARD_SCALE,
    F_DSR_ETA,
    F_DD_PENALTY,
    F_COST_WEIGHT,
    F_KS_MAX_DD,
    F_KS_MIN_HF,
    F_MAX_DEVIATION,
    F_MAX_TURNOVER,
    F_LEV_DEVIATION,
    F_MAX_LEV_CHANGE,
    F_HEDGE_DEVIATION,
    F_MAX_HEDGE_CHANGE,
    F_MAX_LEVERAGE,
    F_LTV_BUFFER,
    F_BORROW_GAS_UNITS,
    F_REPAY_GAS_UNITS,
    F_CF_THRESHOLD,
    F_CF_DEFAULT,
    F_FULL_CLOSE_BELOW,
    F_MARGIN_BUFFER,
    F_PERP_FEE,
    F_PERP_LIQ_FEE,
    F_PERP_GAS_UNITS,
    F_POP_REFRESH,
    F_POP_SELL,
    F_POP_SHARE,
    F_POP_LAG,
    F_POP_CF_THRESHOLD,
    F_POP_CF_DEFAULT,
    F_HF_CAP,
    F_RATE_SCALE,
    F_PER_YEAR,
    F_CLIP,
) = range(38)
F_FEE = 38  # fee per tier, MAX_TIERS slots
F_KEEP = F_FEE + MAX_TIERS  # 1 - fee
F_INV_KEEP = F_KEEP + MAX_TIERS  # 1 / (1 - fee)
F_FIXED = F_INV_KEEP + MAX_TIERS

# per-asset rows at ip[IP_ASSETS] + row * N
A_LTV, A_LT, A_BONUS, A_LB, A_PROTO_FEE, A_KEPT, A_IMF, A_MMF = range(8)
A_ROWS = 8

# ------------------------------------------------------------------------------------- ip: ints
(
    IP_N,
    IP_K,
    IP_KB,
    IP_SUBSETS,
    IP_KIND,
    IP_ANCHOR,
    IP_VOL_WINDOW,
    IP_WARMUP,
    IP_HORIZON,
    IP_LENGTH,
    IP_GAS_ON,
    IP_LENDING,
    IP_PERPS,
    IP_CASCADES,
    IP_PROTOCOLS,
    IP_CASH_EARNS,
    IP_KS_ENABLED,
    IP_KS_COOLDOWN,
    IP_KS_RESET_PEAK,
    IP_REWARD_KIND,
    IP_SEIZURE,
    IP_MAX_ROUNDS,
    IP_POP_ROUNDS,
    IP_ACTION_DIM,
    IP_OBS_DIM,
    IP_OBS_WEIGHTS,
    IP_OBS_DRAWDOWN,
    IP_OBS_PROTOCOL,
    IP_N_RUNS,
    IP_RUNS,
    IP_SUBSET_MASKS,
    IP_ASSETS,
    IP_SIDE,
    IP_INV_HF,
    IP_UNITS,
    IP_PERP,
    IP_RES,
    IP_POP,
    IP_M_SCAL,
    IP_M_PROT,
    IP_M_SUPPLY,
    IP_M_SUPPLY_GROWTH,
    IP_M_BASIS,
    IP_M_MARK,
    IP_M_FUNDING,
    IP_E_CURRENT,
    IP_E_TARGET,
    IP_E_MASK,
    IP_E_UNITS_DURING,
    IP_E_PERP_DURING,
    IP_E_LOW,
    IP_E_SALES,
    IP_WORK,
) = range(53)
IP_FIXED = 53

KIND_CODES = {"target": 0, "anchored": 1, "delta": 2}
ANCHOR_CODES = {"equal_weight": 0, "inverse_vol": 1, "cash": 2}
REWARD_CODES = {"log_growth": 0, "differential_sharpe": 1, "drawdown_penalized": 2}
SEIZURE_CODES = {"largest_first": 0, "pro_rata": 1}
# close factor of the borrower population's liquidation calls: envs.protocols.borrowers.
# liquidate_hit_buckets' defaults (the population step passes none)
POPULATION_CLOSE_FACTOR = (0.95, 0.5)


def subset_masks(n_pools: int) -> list[int]:
    """Bitmasks of every non-empty subset of ``n_pools`` pools in the router's order: by size,
    then lexicographically (``defialloc.envs.execution.router._subset_table``: ties go to the first)."""
    return [
        sum(1 << k for k in members)
        for size in range(1, n_pools + 1)
        for members in combinations(range(n_pools), size)
    ]


def pack_params(sim: PortfolioSimulator, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """``(fp, ip)`` of simulator ``sim`` (its config, snapshots and observation layout)."""
    env = sim.config.env
    n, k, kb = layout.n, layout.k, layout.kb
    engine = sim.protocols
    setup = None if engine is None else engine.setup
    fp = np.zeros(F_FIXED)
    fp[F_BAND] = env.action.no_trade_band
    fp[F_OVERHEAD_UNITS] = sim.gas.overhead_units
    fp[F_UNITS_PER_POOL] = sim.gas.units_per_pool
    fp[F_INITIAL_VALUE] = sim.initial_value
    fp[F_FLOOR] = sim.rewards.floor_usd
    reward = env.reward
    fp[F_REWARD_SCALE] = reward.scale
    fp[F_DSR_ETA] = reward.dsr_eta
    fp[F_DD_PENALTY] = reward.drawdown_penalty
    fp[F_COST_WEIGHT] = reward.cost_weight
    ks = sim.kill_switch.cfg
    fp[F_KS_MAX_DD] = ks.max_drawdown
    fp[F_KS_MIN_HF] = ks.min_health_factor
    act = env.action
    fp[F_MAX_DEVIATION] = act.max_deviation
    fp[F_MAX_TURNOVER] = act.max_turnover
    fp[F_LEV_DEVIATION] = act.leverage_deviation
    fp[F_MAX_LEV_CHANGE] = act.max_leverage_change
    fp[F_HEDGE_DEVIATION] = act.hedge_deviation
    fp[F_MAX_HEDGE_CHANGE] = act.max_hedge_change
    fp[F_MAX_LEVERAGE] = sim.action_map.max_leverage
    fp[F_LTV_BUFFER] = env.lending.ltv_buffer
    fp[F_BORROW_GAS_UNITS] = GAS_UNITS["aave_borrow"]
    fp[F_REPAY_GAS_UNITS] = GAS_UNITS["aave_repay"]
    fp[F_MARGIN_BUFFER] = env.perps.margin_buffer
    fp[F_PERP_GAS_UNITS] = env.perps.gas_units_per_order
    fp[F_POP_CF_THRESHOLD], fp[F_POP_CF_DEFAULT] = POPULATION_CLOSE_FACTOR
    from defialloc.envs.leverage import HF_CAP, RATE_SCALE

    fp[F_HF_CAP] = HF_CAP
    fp[F_RATE_SCALE] = RATE_SCALE
    fp[F_PER_YEAR] = 365.0 / sim.config.market.step_days
    fp[F_CLIP] = env.observation.clip
    fees = sim.pools.fees
    for tier in range(k):
        fp[F_FEE + tier] = fees[tier]
        fp[F_KEEP + tier] = 1.0 - fees[tier]
        fp[F_INV_KEEP + tier] = 1.0 / (1.0 - fees[tier])

    assets = np.zeros((A_ROWS, n))
    inv_hf = np.zeros(kb)
    if setup is not None and setup.lending is not None and setup.reserves is not None:
        r = setup.reserves
        assets[A_LTV], assets[A_LT] = r.ltv, r.liq_threshold
        assets[A_BONUS], assets[A_LB] = r.liq_bonus, 1.0 + r.liq_bonus
        assets[A_PROTO_FEE] = r.liq_protocol_fee
        assets[A_KEPT] = kept_by_liquidators(r.liq_bonus, r.liq_protocol_fee)
        rules = setup.lending.close_factor
        fp[F_CF_THRESHOLD], fp[F_CF_DEFAULT] = rules.hf_threshold, rules.default
        fp[F_FULL_CLOSE_BELOW] = rules.full_close_below_usd
        pop = setup.lending.population
        fp[F_POP_REFRESH] = pop.refresh_rate_per_step
        fp[F_POP_SELL] = pop.sell_fraction
        fp[F_POP_SHARE] = pop.pool_share_of_sales
        fp[F_POP_LAG] = pop.execution_lag
        if kb:
            inv_hf = inverse_entry_hf(engine.cascades.entry_hf)  # type: ignore[union-attr]
    if setup is not None and setup.perps is not None:
        assets[A_IMF], assets[A_MMF] = setup.imf, setup.mmf
        fp[F_PERP_FEE] = setup.perps.trading_fee
        fp[F_PERP_LIQ_FEE] = setup.perps.liquidation_fee
    side = (0.5 * sim.pools.depth_usd[None, :]) * sim.pools.depth_shares[:, None]  # (K, N) USD
    tails = [assets.reshape(-1), side.reshape(-1), inv_hf]
    offsets = np.cumsum([F_FIXED] + [t.size for t in tails])
    fp = np.concatenate([fp, *tails])

    masks = subset_masks(k)
    obs = sim.obs_layout
    runs = [v for run in obs.market_runs for v in run]
    ip = np.zeros(IP_FIXED, dtype=np.int64)
    ip[IP_N], ip[IP_K], ip[IP_KB], ip[IP_SUBSETS] = n, k, kb, len(masks)
    ip[IP_KIND] = KIND_CODES[act.kind]
    ip[IP_ANCHOR] = ANCHOR_CODES[act.anchor]
    ip[IP_VOL_WINDOW] = min(env.observation.vol_window, sim.warmup)
    ip[IP_WARMUP], ip[IP_HORIZON], ip[IP_LENGTH] = sim.warmup, sim.horizon, sim.path_length
    ip[IP_GAS_ON] = int(sim.gas.enabled)
    ip[IP_LENDING] = int(engine is not None and engine.lending_on)
    ip[IP_PERPS] = int(engine is not None and engine.perps_on)
    ip[IP_CASCADES] = int(kb > 0)
    ip[IP_PROTOCOLS] = int(engine is not None)
    ip[IP_CASH_EARNS] = int(env.lending.cash_earns_supply_rate)
    ip[IP_KS_ENABLED] = int(ks.enabled)
    ip[IP_KS_COOLDOWN] = ks.cooldown_steps
    ip[IP_KS_RESET_PEAK] = int(ks.reset_peak_after_cooldown)
    ip[IP_REWARD_KIND] = REWARD_CODES[reward.kind]
    if setup is not None and setup.lending is not None:
        ip[IP_SEIZURE] = SEIZURE_CODES[setup.lending.liquidation.seizure_order]
        ip[IP_MAX_ROUNDS] = setup.lending.liquidation.max_rounds_per_step
        ip[IP_POP_ROUNDS] = setup.lending.population.max_rounds_per_step
    ip[IP_ACTION_DIM] = sim.action_dim
    ip[IP_OBS_DIM] = obs.size
    ip[IP_OBS_WEIGHTS] = -1 if obs.weights is None else obs.weights.start
    ip[IP_OBS_DRAWDOWN] = -1 if obs.drawdown is None else obs.drawdown
    ip[IP_OBS_PROTOCOL] = -1 if obs.protocol is None else obs.protocol.start
    ip[IP_N_RUNS] = len(obs.market_runs)
    ip[IP_RUNS] = IP_FIXED
    ip[IP_SUBSET_MASKS] = IP_FIXED + len(runs)
    ip[IP_ASSETS], ip[IP_SIDE], ip[IP_INV_HF] = offsets[0], offsets[1], offsets[2]
    ip[IP_UNITS], ip[IP_PERP], ip[IP_RES], ip[IP_POP] = (
        layout.units,
        layout.perp,
        layout.reserves,
        layout.population,
    )
    ip[IP_M_SCAL], ip[IP_M_PROT] = layout.m_scalars, layout.m_protocol
    ip[IP_M_SUPPLY], ip[IP_M_SUPPLY_GROWTH] = layout.m_supply_rate, layout.m_supply_growth
    ip[IP_M_BASIS], ip[IP_M_MARK], ip[IP_M_FUNDING] = (
        layout.m_basis,
        layout.m_mark,
        layout.m_funding,
    )
    ip[IP_E_CURRENT], ip[IP_E_TARGET], ip[IP_E_MASK] = (
        layout.e_current,
        layout.e_target,
        layout.e_mask,
    )
    ip[IP_E_UNITS_DURING], ip[IP_E_PERP_DURING] = layout.e_units_during, layout.e_perp_during
    ip[IP_E_LOW], ip[IP_E_SALES] = layout.e_low_eff, layout.e_sales
    ip[IP_WORK] = work_columns(n, k)
    ip = np.concatenate([ip, np.asarray(runs, dtype=np.int64), np.asarray(masks, dtype=np.int64)])
    fp.setflags(write=False)
    ip.setflags(write=False)
    return fp, ip
