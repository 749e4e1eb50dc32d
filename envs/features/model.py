"""A trader's model of the market: the market config's calibrated parameters, for the model blocks.

The ``garch_vol`` and ``regime`` observation blocks run a GARCH(1,1) forecast and a regime filter
along each path. Their parameters are the ones the synthetic market is calibrated with
(``market.synthetic``, fitted on pre-2023 data): the model a trader would have fitted. They are the
same whatever the scenario source (synthetic, replay, bootstrap, a paper feed): the features of a
replayed day never use the replayed data beyond that day.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular

from defialloc.envs.config import MODEL_BLOCKS, SimulationConfig, observation_model_missing
from defialloc.envs.market.config import DAYS_PER_YEAR, MarketConfig
from defialloc.envs.market.synthetic_model import (
    GarchConstants,
    drift_terms,
    garch_constants,
    step_transition,
)

#: The trader's GARCH(1,1) per asset: the generator's constants (:class:`GarchConstants`) in float64.
GarchModel = GarchConstants


@dataclass(frozen=True)
class RegimeModel:
    """The regime filter's parameters (regimes calm, bull, crash), float64.

    Attributes:
        transition: ``(3, 3)`` per-step transition matrix (rows: today, columns: tomorrow).
        initial: ``(3,)`` its stationary law (the filter's prior at a path's first point).
        vol_multiplier: ``(3,)`` per-regime multiplier of the GARCH vol.
        chol: ``(3, N, N)`` Cholesky factors ``L_k`` of the per-regime shock correlations;
            chol_inv: their inverses.
        drift_const, drift_vol_coef, drift_var_coef: the drift convention: a step of regime ``k``
            with diffusive vol ``s = vm[k] sqrt(h)`` has mean log return
            ``drift_const[k] + drift_vol_coef s - drift_var_coef s^2`` (``drift_const`` ``(3, N)``;
            :class:`defialloc.envs.market.synthetic_model.DriftTerms`).
        nu: Student-t degrees of freedom. emission: ``student_t`` or ``gaussian``.
    """

    transition: np.ndarray
    initial: np.ndarray
    vol_multiplier: np.ndarray
    chol: np.ndarray
    chol_inv: np.ndarray
    drift_const: np.ndarray
    drift_vol_coef: float
    drift_var_coef: float
    nu: float
    emission: str = "student_t"


@dataclass(frozen=True)
class TraderModel:
    """The GARCH forecast of every asset and (when the regime block needs it) the regime filter.

    ``step_days``: days per step (the GARCH vol is annualized over ``365 / step_days`` steps).
    """

    assets: tuple[str, ...]
    step_days: float
    garch: GarchModel
    regime: RegimeModel | None = None

    @classmethod
    def from_market(
        cls, market: MarketConfig, emission: str = "student_t", with_regime: bool = True
    ) -> TraderModel:
        """The model of ``market.synthetic`` for ``market.assets`` (ValueError naming missing tables).

        ``with_regime``: also build the regime filter (it needs the correlation and jump tables).
        """
        if emission not in ("student_t", "gaussian"):
            raise ValueError(f"emission={emission!r} must be 'student_t' or 'gaussian'")
        blocks = ["garch_vol", "regime"] if with_regime else ["garch_vol"]
        missing = observation_model_missing(market, blocks)
        if missing:
            raise ValueError(f"the market model lacks: {', '.join(missing)}")
        p, dt, assets = market.synthetic, market.step_days, list(market.assets)
        garch = garch_constants(
            [p.garch[a] for a in assets], dt, p.max_variance_multiple, np.float64
        )
        regime = None
        if with_regime:
            n = len(assets)
            corr = p.correlation.matrices(assets) + 1e-12 * np.eye(n)
            drift = drift_terms(market, n)
            chol = np.linalg.cholesky(corr)
            eye = np.broadcast_to(np.eye(n), chol.shape)
            regime = RegimeModel(
                transition=step_transition(p.transition_array(), dt),
                initial=p.stationary_distribution(),
                vol_multiplier=p.vol_multiplier.array().astype(np.float64),
                chol=chol,
                chol_inv=np.stack(
                    [solve_triangular(c, i, lower=True) for c, i in zip(chol, eye, strict=True)]
                ),
                drift_const=np.asarray(drift.const, dtype=np.float64),
                drift_vol_coef=float(drift.vol_coef),
                drift_var_coef=float(drift.var_coef),
                nu=float(p.nu),
                emission=emission,
            )
        return cls(tuple(assets), float(dt), garch, regime)

    @property
    def periods_per_year(self) -> float:
        return DAYS_PER_YEAR / self.step_days


def trader_model_for(config: SimulationConfig) -> TraderModel | None:
    """The :class:`TraderModel` the observation of ``config`` needs (None without a model block)."""
    obs = config.env.observation
    if not any(b in MODEL_BLOCKS for b in obs.blocks):
        return None
    return TraderModel.from_market(
        config.market, obs.regime_emission, with_regime="regime" in obs.blocks
    )
