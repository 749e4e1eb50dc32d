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
    from defialloc.envs.config import EnvConfig
    from defialloc.envs.option_book import OptionBook
    from defialloc.envs.protocols.options import VarianceForecast
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
    F_OPT_RATE,
    F_OPT_FLOOR,
    F_OPT_CAP,
    F_OPT_TICK,
    F_OPT_FEE,
    F_OPT_FEE_CAP,
    F_OPT_SETTLE_FEE,
    F_OPT_SETTLE_CAP,
    F_OPT_MAINT,
    F_OPT_LIQ_FEE,
    F_OPT_STEPS_PER_YEAR,
    F_OPT_DEVIATION,
    F_OPT_MAX_CHANGE,
    F_OPT_DAYS_SCALE,
) = range(52)
F_FEE = 52  # fee per tier, MAX_TIERS slots
F_KEEP = F_FEE + MAX_TIERS  # 1 - fee
F_INV_KEEP = F_KEEP + MAX_TIERS  # 1 / (1 - fee)
F_FIXED = F_INV_KEEP + MAX_TIERS

# the options venue's vectors at ip[IP_OPT_VEC]: per-regime premium, skew, smile and half-spread
# (3 each), then the listed moneyness (S), tenors in steps (T) and the listed mask (N)
O_PREMIUM, O_SKEW, O_SMILE, O_HALF = 0, 3, 6, 9
O_MONEYNESS = 12
# a forecast table at ip[IP_OPT_TABLE]: h_bar (N), then level and decay (3, max_steps + 1, N)
N_REGIMES = 3

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
    IP_OPTIONS,
    IP_OPT_S,
    IP_OPT_T,
    IP_OPT_MAX_STEPS,
    IP_OPT_VEC,
    IP_OPT_TABLE,
    IP_OPT_MODEL,
    IP_OPT_FILTER,
    IP_OPT_OBS_TENOR,
    IP_OPT_STATE,
    IP_OPT_EXPIRY,
    IP_M_OPT_H,
    IP_M_REGIME,
    IP_OPT_ACTIONS,
    IP_E_OPT_MOVE,
    IP_OBS_GREEKS,
) = range(69)
IP_FIXED = 69

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
    book = None if engine is None else engine.options
    opt_vec, filter_table, model_table = np.zeros(0), np.zeros(0), np.zeros(0)
    if book is not None:
        opt_vec, filter_table, model_table = _pack_options(fp, book, env)
    tails = [assets.reshape(-1), side.reshape(-1), inv_hf, opt_vec, filter_table, model_table]
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
    ip[IP_OBS_GREEKS] = -1 if obs.greeks is None else obs.greeks.start
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
    if book is not None:
        ip[IP_OPTIONS] = 1
        ip[IP_OPT_S], ip[IP_OPT_T] = book.moneyness.size, book.tenor_steps.size
        ip[IP_OPT_MAX_STEPS] = book.surface.max_steps
        ip[IP_OPT_VEC], ip[IP_OPT_FILTER] = offsets[3], offsets[4]
        ip[IP_OPT_MODEL] = offsets[5] if model_table.size else offsets[4]
        ip[IP_OPT_TABLE] = ip[IP_OPT_FILTER]
        ip[IP_OPT_OBS_TENOR] = observation_tenor(book)
        ip[IP_OPT_STATE], ip[IP_OPT_EXPIRY] = layout.opt_units, layout.i_expiry
        ip[IP_M_OPT_H], ip[IP_M_REGIME] = layout.m_opt_h, layout.m_regime
        ip[IP_OPT_ACTIONS] = sim.action_map.layout.options_start
        ip[IP_E_OPT_MOVE] = layout.e_opt_move
    ip = np.concatenate([ip, np.asarray(runs, dtype=np.int64), np.asarray(masks, dtype=np.int64)])
    fp.setflags(write=False)
    ip.setflags(write=False)
    return fp, ip


def observation_tenor(book: OptionBook) -> int:
    """Steps of the listed tenor nearest 30 days (the observation's implied vol,
    :func:`defialloc.envs.option_views.option_observation`)."""
    days = book.tenor_steps * book.surface.step_days
    return int(book.tenor_steps[int(np.argmin(np.abs(days - 30.0)))])


def _pack_options(
    fp: np.ndarray, book: OptionBook, env: EnvConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write the venue's scalars into ``fp``; return its vectors and forecast tables (filter, model;
    the model table is empty where the venue has none)."""
    p, surface = book.params, book.surface
    fp[F_OPT_RATE] = p.rate
    fp[F_OPT_FLOOR], fp[F_OPT_CAP] = p.smile_floor_ratio, p.smile_cap_ratio
    fp[F_OPT_TICK] = p.min_half_spread_of_underlying
    fp[F_OPT_FEE], fp[F_OPT_FEE_CAP] = p.trading_fee_of_underlying, p.trading_fee_cap_of_price
    fp[F_OPT_SETTLE_FEE] = p.settlement_fee_of_underlying
    fp[F_OPT_SETTLE_CAP] = p.settlement_fee_cap_of_value
    fp[F_OPT_MAINT] = p.short_maintenance_of_underlying
    fp[F_OPT_LIQ_FEE] = p.liquidation_fee_of_underlying
    fp[F_OPT_STEPS_PER_YEAR] = surface.steps_per_year
    fp[F_OPT_DEVIATION] = env.action.option_deviation
    fp[F_OPT_MAX_CHANGE] = env.action.max_option_change
    fp[F_OPT_DAYS_SCALE] = surface.step_days / 30.0
    vec = np.concatenate(
        [
            surface.premium, surface.skew, surface.smile, surface.half_spread,
            book.moneyness, book.tenor_steps.astype(np.float64), book.listed.astype(np.float64),
        ]
    )  # fmt: skip

    def table(t: VarianceForecast | None) -> np.ndarray:
        if t is None:
            return np.zeros(0)
        if t.level.shape[0] != N_REGIMES or abs(t.steps_per_year - surface.steps_per_year) > 0:
            raise ValueError("the options venue's forecast table must have 3 regimes")
        return np.concatenate([t.h_bar, t.level.reshape(-1), t.decay.reshape(-1)])

    return vec, table(surface.filter_table), table(surface.model_table)
