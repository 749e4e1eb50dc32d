"""The simulator's JSON state (ledgers, resumes) and the single env's ``info`` dict.

Functions of a :class:`defialloc.envs.simulator.PortfolioSimulator` (its ``snapshot`` / ``restore`` / ``info``
methods call them), kept apart so that the simulator module holds the dynamics only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from defialloc.envs.features.blocks import GREEK_NAMES
from defialloc.envs.greeks import greek_totals
from defialloc.envs.leverage_info import protocol_info
from defialloc.envs.simulator_views import greeks_now

if TYPE_CHECKING:
    from defialloc.envs.simulator import PortfolioSimulator
    from defialloc.envs.step_records import StepResult

STATE_FIELDS = ("t", "units", "cash", "peak", "value")


def _cash_only(n_assets: int) -> np.ndarray:
    w = np.zeros(n_assets + 1)
    w[-1] = 1.0
    return w


class _CashOnly(dict):
    def __missing__(self, n: int) -> np.ndarray:
        self[n] = _cash_only(n)
        return self[n]


CASH_ONLY = _CashOnly()


def snapshot_env(sim: PortfolioSimulator, index: int) -> dict:
    """JSON-serializable state of env ``index`` (positions, pools, risk state), for ledgers and resumes."""
    state = {name: np.asarray(getattr(sim, name)[index]).tolist() for name in STATE_FIELDS}
    state["reserve_asset"] = sim.pools.reserve_asset[index].tolist()
    state["reserve_num"] = sim.pools.reserve_num[index].tolist()
    state["kill_switch_remaining"] = int(sim.kill_switch.remaining[index])
    state["reward_ema"] = [
        float(sim.rewards.ema_mean[index]),
        float(sim.rewards.ema_sq[index]),
    ]
    if sim.protocols is not None:
        state["protocols"] = sim.protocols.snapshot(index)
    return state


def restore_env(sim: PortfolioSimulator, index: int, state: dict) -> None:
    """Inverse of :meth:`snapshot` (the market path must already be loaded)."""
    for name in STATE_FIELDS:
        getattr(sim, name)[index] = np.asarray(state[name])
    sim.sync_time_index()
    sim.pools.reserve_asset[index] = np.asarray(state["reserve_asset"])
    sim.pools.reserve_num[index] = np.asarray(state["reserve_num"])
    sim.kill_switch.remaining[index] = int(state["kill_switch_remaining"])
    sim.rewards.ema_mean[index], sim.rewards.ema_sq[index] = state["reward_ema"]
    if sim.protocols is not None:
        sim.protocols.restore(index, state["protocols"])
        price, num = sim.prices_now()
        sim.protocols.refresh_health(sim.units, price, num)
        if sim.protocols.options is not None:
            sim.protocols.options.refresh(sim._now, price)


def env_info(sim: PortfolioSimulator, index: int, result: StepResult | None = None) -> dict:
    """The documented ``info`` dict of env ``index`` (after a step, or after a reset when ``result`` is None)."""
    value = sim.value[index]
    tau = int(sim._tau()[index])
    costs = (
        result.costs.as_dict(index)
        if result is not None
        else {"fees": 0.0, "slippage": 0.0, "gas": 0.0}
    )
    for kind in ("interest", "funding", "liquidation"):
        costs.setdefault(kind, 0.0)
    n = sim.n_assets
    holdings, prices = np.empty(n + 1), np.empty(n + 1)
    holdings[:n], holdings[n] = sim.units[index], sim.cash[index]
    prices[:n], prices[n] = sim.close[index, tau], sim.numeraire[index, tau]
    info = {
        "portfolio_value": float(value),
        "holdings": holdings,
        "weights": holdings * prices / value if value > 0.0 else CASH_ONLY[n].copy(),
        "prices": prices,
        "costs": costs,
        "turnover": float(result.turnover[index]) if result is not None else 0.0,
        "regime": sim.regime_names[int(sim.regime[index, tau])] if sim.regime_names else "",
        "drawdown": float(1.0 - value / sim.peak[index]),
        "step": int(sim.t[index]),
        "kill_switch": bool(result.kill_switch[index]) if result is not None else False,
    }
    if sim.dates is not None:
        info["date"] = str(sim.dates[index, tau])
    info["greeks"] = _greeks_info(sim, index)
    if sim.protocols is not None:
        move = sim._move if result is not None else None
        info.update(
            protocol_info(
                sim.protocols, move, result, index, tau, holdings, prices, sim.low[index, tau]
            )
        )
    return info


def _greeks_info(sim: PortfolioSimulator, index: int) -> dict:
    """Env ``index``'s portfolio Greeks now (envs/greeks.py): per asset ``delta`` (USD per USD of
    the index), ``gamma`` (USD per USD^2), ``vega`` (USD per vol point), ``theta`` (USD per day),
    and the totals ``delta_usd``, ``gamma_usd``, ``vega_usd``, ``theta_usd``."""
    row = slice(index, index + 1)
    price = sim.close[row, int(sim._tau()[index])]
    greeks = greeks_now(sim, price, row)
    out: dict = {name: greeks[0, :, k].copy() for k, name in enumerate(GREEK_NAMES)}
    out.update({k: float(v[0]) for k, v in greek_totals(greeks, price).items()})
    return out
