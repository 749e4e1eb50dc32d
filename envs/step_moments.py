"""Ex-ante moments of one step for every instrument the env trades, from the TRUE synthetic state.

Used by the true ceiling (``agents/baselines/ceiling.py``) and the ex-ante growth of every policy
(``evaluation/ex_ante.py``). Everything is per unit of EQUITY ``E`` right after trading at ``t``:

* ``x`` ``(N,)`` >= 0: risky exposures, ``units_i P_i / E``;
* ``d`` (with lending): debt / equity, ``debt num / E``;
* ``y`` ``(N,)`` (with perps): signed perp notionals at the index price, ``size_i P_i / E``;
* cash ``c = 1 + d - sum(x)`` (the balance sheet: assets minus debt is equity).

Over the step the equity's simple return is (``envs/leverage_move.py``: rates and funding are the ones
quoted at ``t``; supplied units grow by ``1 + r dt``, debt by ``exp(r dt)``, cash by ``1 + r_c dt``)::

    R_p = sum_i x_i ((1 + a_i) X_i - 1) + c a_c - d a_d + sum_i y_i q_i
        = a_c + sum_i x_i (u_i - a_c) + d (a_c - a_d) + sum_i y_i q_i

with ``X = P_{t+1} / P_t`` (:mod:`defialloc.envs.market.conditional_moments`), supply carry ``a_i = r_i dt``
(0 without lending), cash carry ``a_c = r_c dt`` (with lending and ``env.lending.cash_earns_supply_rate``,
else 0), debt carry ``a_d = exp(r_b dt) - 1``, ``u_i = (1 + a_i) X_i - 1`` and the perp's return per
unit of notional ``q_i = (mark_{t+1} - mark_t) / P_t - f_i = X_i (1 + b'_i) - (1 + b_i) - f_i``
(``b`` the basis quoted at ``t``, ``f`` the funding over the step, ``b'`` the next basis: the AR(1)
``b' = phi b + (1 - phi) m_j + sqrt(1 - phi^2) s_j eps`` of the next regime ``j``, independent of the
price shock given ``j``; its clip to ``[lower, upper]``, tens of standard deviations away, is ignored).

So ``R_p = const + v' r`` for ``v = (x, d, y)`` and the ex-ante expected log growth to second order is

    g(v) = const + v' mean - v' cov v / 2

(``mean``, ``cov`` the moments of ``r``; ``d`` is riskless: its row and column of ``cov`` are 0).
Left out, and documented as such: the numeraire's own USD move (peg noise and depegs: cash and debt
are riskless in numeraire terms), liquidations, cascades, and every trading cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from defialloc.envs.config import SimulationConfig
from defialloc.envs.leverage_paths import ProtocolSetup
from defialloc.envs.market.conditional_moments import next_step_moments
from defialloc.envs.market.config import DAYS_PER_YEAR, REGIME_NAMES, MarketConfig
from defialloc.envs.market.paths import MarketPaths

#: protocol series quoted at the decision time that the moments read (``ProtocolPaths`` attributes)
QUOTE_SERIES = ("borrow_rate", "cash_supply_rate", "supply_rate", "basis", "funding")


@dataclass(frozen=True)
class InstrumentSpec:
    """What the env lets a portfolio hold, and the parameters of its carries and constraints.

    Attributes:
        market: the synthetic market config (its generating parameters).
        n_assets: ``N``.
        lending, perps: whether debt ``d`` and perp notionals ``y`` are decision variables.
        cash_earns: idle cash earns the numeraire's supply rate (lending on and
            ``env.lending.cash_earns_supply_rate``).
        dt_years: step length in years.
        max_leverage, ltv_buffer: ``d <= max_leverage`` and ``d <= ltv_buffer * sum_i LTV_i x_i``.
        ltv: ``(N,)`` loan-to-value of each risky asset (None without lending).
        margin_buffer, imf: ``margin_buffer * sum_i IMF_i |y_i| <= c`` (imf None without perps).
        basis_mean, basis_std: ``(3, N)`` the basis AR(1)'s level and stationary std per regime.
        basis_persistence: ``(N,)`` its AR(1) coefficient per step.
    """

    market: MarketConfig
    n_assets: int
    lending: bool
    perps: bool
    cash_earns: bool
    dt_years: float
    max_leverage: float = 0.0
    ltv_buffer: float = 0.0
    ltv: np.ndarray | None = None
    margin_buffer: float = 0.0
    imf: np.ndarray | None = None
    basis_mean: np.ndarray | None = None
    basis_std: np.ndarray | None = None
    basis_persistence: np.ndarray | None = None

    @classmethod
    def from_config(cls, config: SimulationConfig) -> InstrumentSpec:
        """The spec of ``config``'s env on its (synthetic) market.

        Raises:
            ValueError: ``config.market.source`` is not ``synthetic`` (no true parameters).
        """
        market = config.market
        if market.source != "synthetic":
            raise ValueError(
                f"market.source={market.source!r}: true moments need the synthetic market's parameters"
            )
        env = config.env
        assets = tuple(market.assets)
        n = len(assets)
        lending, perps = env.lending.enabled, env.perps.enabled
        setup = ProtocolSetup.load(
            assets,
            env.lending.params_path if lending else None,
            env.perps.params_path if perps else None,
        )
        kwargs: dict = {}
        if lending:
            assert setup.reserves is not None
            kwargs |= {
                "max_leverage": env.lending.max_leverage,
                "ltv_buffer": env.lending.ltv_buffer,
                "ltv": setup.reserves.ltv.copy(),
            }
        if perps:
            assert setup.perps is not None and setup.imf is not None
            process = setup.perps.basis_by_regime.process(REGIME_NAMES, n)
            kwargs |= {
                "margin_buffer": env.perps.margin_buffer,
                "imf": setup.imf.copy(),
                "basis_mean": process.mean,
                "basis_std": process.std,
                "basis_persistence": np.broadcast_to(
                    np.asarray(process.persistence, dtype=float), (n,)
                ).copy(),
            }
        return cls(
            market=market,
            n_assets=n,
            lending=lending,
            perps=perps,
            cash_earns=lending and env.lending.cash_earns_supply_rate,
            dt_years=market.step_days / DAYS_PER_YEAR,
            **kwargs,
        )

    @property
    def n_vars(self) -> int:
        """``V``: length of the decision vector ``v = (x, d, y)``."""
        return self.n_assets * (1 + int(self.perps)) + int(self.lending)

    @property
    def debt_index(self) -> int | None:
        """Index of ``d`` in ``v`` (None without lending)."""
        return self.n_assets if self.lending else None

    @property
    def perp_slice(self) -> slice | None:
        """Where ``y`` sits in ``v`` (None without perps)."""
        start = self.n_assets + int(self.lending)
        return slice(start, start + self.n_assets) if self.perps else None


@dataclass(frozen=True)
class StepMoments:
    """``g(v) = const + v' mean - v' cov v / 2`` per state; ``...`` the batch shape of the states.

    Attributes: ``const`` ``(...)`` (the cash carry ``a_c``), ``mean`` ``(..., V)``, ``cov``
    ``(..., V, V)`` per step, in the layout of :class:`InstrumentSpec` (``x``, then ``d``, then ``y``).
    """

    const: np.ndarray
    mean: np.ndarray
    cov: np.ndarray


def true_state(
    paths: MarketPaths, series: Mapping[str, np.ndarray] | None, tau: np.ndarray
) -> dict[str, np.ndarray]:
    """The true state at decision times ``tau``: what the upper references are told.

    Args:
        paths: synthetic market paths ``(B, L, ...)`` (``cond_var`` required).
        series: the env's protocol series ``(B, L, ...)`` (``ProtocolPaths`` attributes or
            ``ProtocolPaths.generate``'s dict), or None in spot mode; only :data:`QUOTE_SERIES` are read.
        tau: ``(B,)`` or ``(B, T)`` decision-time indices into the paths' time axis (``< L - 1``).

    Returns:
        ``{"regime": (B[, T]) int64 k_t, "cond_var": (B[, T], N) float64 h_{t+1}}`` plus the quotes at
        ``t`` that exist: ``borrow_rate``, ``cash_supply_rate`` (annual, ``(B[, T])``),
        ``supply_rate`` (annual), ``basis`` and ``funding`` (per step), ``(B[, T], N)``.

    Raises:
        ValueError: paths without ``cond_var`` (replay/bootstrap) or ``tau`` out of range.
    """
    if paths.cond_var is None:
        raise ValueError(
            "paths have no cond_var (replayed or bootstrapped): the true state exists for synthetic paths only"
        )
    t = np.asarray(tau, dtype=np.int64)
    if t.shape[:1] != (paths.n_paths,) or t.ndim > 2:
        raise ValueError(
            f"tau has shape {t.shape}; expected ({paths.n_paths},) or ({paths.n_paths}, T)"
        )
    if t.size and (t.min() < 0 or t.max() >= paths.length - 1):
        raise ValueError(f"tau must lie in [0, {paths.length - 2}] (the next step must exist)")
    rows = np.arange(paths.n_paths).reshape((-1,) + (1,) * (t.ndim - 1))
    state = {
        "regime": paths.regime[rows, t].astype(np.int64),
        "cond_var": paths.cond_var[rows, t + 1].astype(np.float64),
    }
    for name in QUOTE_SERIES:
        if series is not None and name in series:
            state[name] = np.asarray(series[name])[rows, t]
    return state


def _joint_by_regime(
    spec: InstrumentSpec, mean_x: np.ndarray, cov_x: np.ndarray, basis: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per next regime ``j``: mean ``(..., 3, 2N)`` and covariance ``(..., 3, 2N, 2N)`` of ``(X, Q)``
    with ``Q = X * Y``, ``Y = 1 + b'`` independent of ``X`` given ``j``:
    ``E[Q] = m n``, ``Cov(X_a, Q_i) = n_i C[a, i]``, ``Cov(Q_i, Q_k) = n_i n_k C[i, k]`` for ``i != k``
    and ``n_i^2 C[i, i] + v_i (C[i, i] + m_i^2)`` on the diagonal (``n = E[Y]``, ``v = Var(Y)``)."""
    assert spec.basis_mean is not None and spec.basis_std is not None
    phi = spec.basis_persistence
    n_y = 1.0 + phi * basis[..., None, :] + (1.0 - phi) * spec.basis_mean  # (..., 3, N)
    v_y = (1.0 - phi * phi) * spec.basis_std**2  # (3, N)
    n = spec.n_assets
    mean = np.concatenate([mean_x, mean_x * n_y], axis=-1)
    cov = np.empty((*cov_x.shape[:-2], 2 * n, 2 * n))
    cov[..., :n, :n] = cov_x
    cov[..., :n, n:] = cov_x * n_y[..., None, :]
    cov[..., n:, :n] = np.swapaxes(cov[..., :n, n:], -1, -2)
    qq = cov_x * n_y[..., :, None] * n_y[..., None, :]
    diag = np.arange(n)
    qq[..., diag, diag] += v_y * (cov_x[..., diag, diag] + mean_x**2)
    cov[..., n:, n:] = qq
    return mean, cov


def step_moments(spec: InstrumentSpec, state: Mapping[str, np.ndarray]) -> StepMoments:
    """:class:`StepMoments` of the states ``state`` (:func:`true_state`'s dict, any batch shape).

    Raises:
        ValueError: a quote the spec needs is missing from ``state`` (named), or bad regime/cond_var.
    """
    need = ["regime", "cond_var"]
    if spec.lending:
        need += ["borrow_rate", "supply_rate"] + (["cash_supply_rate"] if spec.cash_earns else [])
    if spec.perps:
        need += ["basis", "funding"]
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"state lacks {missing} (needed for this env's instruments)")
    law = next_step_moments(spec.market, state["regime"], state["cond_var"])
    batch = law.mu.shape[:-1]
    n, dt = spec.n_assets, spec.dt_years
    supply = np.asarray(state["supply_rate"]) * dt if spec.lending else np.zeros((*batch, n))
    cash = np.asarray(state["cash_supply_rate"]) * dt if spec.cash_earns else np.zeros(batch)
    gross = 1.0 + supply  # (..., N)
    if spec.perps:
        basis = np.asarray(state["basis"], dtype=np.float64)
        mean_j, cov_j = _joint_by_regime(spec, law.mean_by_regime, law.cov_by_regime, basis)
        scale = np.concatenate([gross, np.ones((*batch, n))], axis=-1)
        offset = np.concatenate([np.zeros((*batch, n)), 1.0 + basis + state["funding"]], axis=-1)
    else:
        mean_j, cov_j = law.mean_by_regime, law.cov_by_regime
        scale, offset = gross, np.zeros((*batch, n))
    # mixture over the next regime: within-regime covariance plus the spread of the regime means
    mean_z = np.einsum("...j,...ja->...a", law.prob, mean_j)
    spread = mean_j - mean_z[..., None, :]
    cov_z = np.einsum("...j,...jab->...ab", law.prob, cov_j) + np.einsum(
        "...j,...ja,...jb->...ab", law.prob, spread, spread
    )
    # spot: u = (1 + a) X - 1, in excess of the cash carry; perps: q = Q - (1 + b) - f
    inst_mean = scale * mean_z - offset
    inst_mean[..., :n] -= 1.0 + cash[..., None]
    inst_cov = cov_z * scale[..., :, None] * scale[..., None, :]
    v = spec.n_vars
    mean = np.zeros((*batch, v))
    cov = np.zeros((*batch, v, v))
    risky = (
        np.r_[np.arange(n), np.arange(n) + n + int(spec.lending)] if spec.perps else np.arange(n)
    )
    mean[..., risky] = inst_mean
    cov[..., risky[:, None], risky[None, :]] = inst_cov
    if spec.lending:
        debt_carry = np.expm1(np.asarray(state["borrow_rate"]) * dt)
        mean[..., n] = cash - debt_carry
    return StepMoments(cash, mean, cov)


def expected_log_growth(moments: StepMoments, v: np.ndarray) -> np.ndarray:
    """``g(v) = const + v' mean - v' cov v / 2`` ``(...)`` for decision vectors ``v`` ``(..., V)``
    (NaN rows of ``v``, e.g. ruined accounts, give NaN)."""
    v = np.asarray(v, dtype=np.float64)
    if v.shape[-1] != moments.mean.shape[-1]:
        raise ValueError(
            f"v has {v.shape[-1]} entries per state, expected {moments.mean.shape[-1]}"
        )
    quad = np.einsum("...a,...ab,...b->...", v, moments.cov, v)
    return moments.const + np.einsum("...a,...a->...", v, moments.mean) - 0.5 * quad


def decision_vector(
    spec: InstrumentSpec,
    weights: np.ndarray,
    debt_to_equity: np.ndarray | None = None,
    perp_to_equity: np.ndarray | None = None,
) -> np.ndarray:
    """``v = (x, d, y)`` ``(..., V)`` from recorded post-trade weights over GROSS assets ``(..., N+1)``
    (cash last), debt / equity ``(...)`` and perp notional / equity ``(..., N)``.

    Gross assets are ``E (1 + d)``, so ``x = w[:N] (1 + d)``. Missing protocol series read as 0.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = spec.n_assets
    if w.shape[-1] != n + 1:
        raise ValueError(f"weights have {w.shape[-1]} entries, expected N + 1 = {n + 1}")
    batch = w.shape[:-1]
    d = np.zeros(batch) if debt_to_equity is None else np.asarray(debt_to_equity, dtype=float)
    v = np.zeros((*batch, spec.n_vars))
    v[..., :n] = w[..., :n] * (1.0 + d)[..., None]
    if spec.lending:
        v[..., n] = d
    if spec.perps and perp_to_equity is not None:
        v[..., spec.perp_slice] = perp_to_equity
    return v
