"""The synthetic generator's constants for one market config, derived once and cached.

A single-env reset would otherwise spend ~15 % of its time re-deriving them from the pydantic model
(:mod:`envs.market.synthetic` is the generator; its docstring has the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from envs.market.config import DAYS_PER_YEAR, MarketConfig

F32 = np.float32  # random blocks and shocks; prices are accumulated in float64


def step_transition(transition_daily: np.ndarray, step_days: float) -> np.ndarray:
    """``(3, 3)`` per-step transition matrix for a step of ``step_days`` days.

    Integer steps use the exact matrix power; a fractional remainder ``f`` uses ``I + f (P - I)`` (a valid
    stochastic matrix with the same stationary law, exact to first order in ``f``).
    """
    whole = int(np.floor(step_days + 1e-12))
    frac = step_days - whole
    out = np.linalg.matrix_power(transition_daily, whole)
    if frac > 1e-12:
        eye = np.eye(len(transition_daily))
        out = out @ (eye + frac * (transition_daily - eye))
    return out / out.sum(axis=1, keepdims=True)


def jump_probability(intensity_per_year: np.ndarray, step_days: float) -> np.ndarray:
    """``(3,)`` float32 probability of at least one Poisson event in a step."""
    return (-np.expm1(-intensity_per_year * step_days / DAYS_PER_YEAR)).astype(F32)


def mean_step_return(cfg: MarketConfig, n_columns: int) -> np.ndarray:
    """``(3, M)`` expected log return per step and regime, net of the jump compensator.

    Column ``a < N``: ``drift_k dt / 365 - P_k(jump) mean_log[a]`` (at most one jump per asset and step,
    ``P = p_common + (1 - p_common) p_idio``); an ETH fallback column gets the drift only.
    """
    p = cfg.synthetic
    drift = p.drift_log_per_year.array() * cfg.step_days / DAYS_PER_YEAR
    p_common = jump_probability(p.jumps.common_intensity_per_year.array(), cfg.step_days)
    p_idio = jump_probability(p.jumps.idio_intensity_per_year.array(), cfg.step_days)
    p_jump = p_common.astype(np.float64) + (1 - p_common) * p_idio
    mean = np.zeros(n_columns)
    mean[: len(cfg.assets)] = [p.jumps.mean_log[a] for a in cfg.assets]
    return (drift[:, None] - p_jump[:, None] * mean[None, :]).astype(F32)


class GarchConstants(NamedTuple):
    """Per-column GARCH constants, ``(M,)`` float32: ``omega dt``, alpha, beta, ``h_bar``, the cap."""

    omega: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    h_bar: np.ndarray
    h_cap: np.ndarray


@dataclass(frozen=True)
class SyntheticModel:
    """The generator's constants for one :class:`MarketConfig` (``N`` assets, ``M`` shock columns).

    Built once per config (:func:`model_of`) instead of at every reset: a single-env reset would
    otherwise spend ~15 % of its time re-deriving them from the pydantic model.
    """

    assets: tuple[str, ...]
    n_shocks: int  # M = N, + 1 for the ETH fallback's own shock when ETH is not an asset
    eth_column: int  # column of ETH among the M price columns
    transition: np.ndarray  # (3, 3) per-step transition matrix
    initial: np.ndarray  # (3,) stationary law of the first regime
    vol_multiplier: np.ndarray  # (3,) float32
    chol: np.ndarray  # (3, N, N) float32 Cholesky factors of the regime correlations
    garch: GarchConstants
    mean_step: np.ndarray  # (3, M) float32, see mean_step_return
    jump_mean: np.ndarray  # (N,) float32
    jump_std: np.ndarray  # (N,) float32
    p_common: np.ndarray  # (3,) float32 probability of a common jump event per step
    p_idio: np.ndarray  # (3,) float32 probability of an asset's own jump per step
    size_correlation: float
    log_p0: np.ndarray  # (M,) float64 log initial prices

    @classmethod
    def build(cls, cfg: MarketConfig) -> SyntheticModel:
        p, dt = cfg.synthetic, cfg.step_days
        assets = list(cfg.assets)
        n = len(assets)
        has_eth = "ETH" in assets
        m = n if has_eth else n + 1
        garch = [p.garch[a] for a in assets] + ([] if has_eth else [p.eth_fallback.garch])
        omega = (np.array([g.omega_daily for g in garch]) * dt).astype(F32)
        alpha = np.array([g.alpha for g in garch], dtype=F32)
        beta = np.array([g.beta for g in garch], dtype=F32)
        h_bar = omega / (1 - alpha - beta)
        h_cap = (p.max_variance_multiple * h_bar).astype(F32)
        p0 = [p.initial_price_usd[a] for a in assets]
        p0 += [] if has_eth else [p.eth_fallback.initial_price_usd]
        jp = p.jumps
        corr = p.correlation.matrices(assets) + 1e-12 * np.eye(n)
        return cls(
            assets=tuple(assets),
            n_shocks=m,
            eth_column=assets.index("ETH") if has_eth else n,
            transition=step_transition(p.transition_array(), dt),
            initial=p.stationary_distribution(),
            vol_multiplier=p.vol_multiplier.array().astype(F32),
            chol=np.linalg.cholesky(corr).astype(F32),
            garch=GarchConstants(omega, alpha, beta, h_bar, h_cap),
            mean_step=mean_step_return(cfg, m),
            jump_mean=np.array([jp.mean_log[a] for a in assets], dtype=F32),
            jump_std=np.array([jp.std_log[a] for a in assets], dtype=F32),
            p_common=jump_probability(jp.common_intensity_per_year.array(), dt),
            p_idio=jump_probability(jp.idio_intensity_per_year.array(), dt),
            size_correlation=jp.size_correlation,
            log_p0=np.log(p0),
        )


_MODELS: dict[int, tuple[MarketConfig, SyntheticModel]] = {}
_MAX_MODELS = 8


def model_of(cfg: MarketConfig) -> SyntheticModel:
    """The cached :class:`SyntheticModel` of ``cfg``.

    Configs are mutable, so a hit needs ``cfg`` to equal a deep snapshot taken when the model was
    built (~12 us, vs ~80 us to rebuild); a changed or different config with a reused ``id`` rebuilds.
    """
    key = id(cfg)
    hit = _MODELS.get(key)
    if hit is not None and hit[0] == cfg:
        return hit[1]
    model = SyntheticModel.build(cfg)
    if len(_MODELS) >= _MAX_MODELS and key not in _MODELS:
        _MODELS.pop(next(iter(_MODELS)))
    _MODELS[key] = (cfg.model_copy(deep=True), model)
    return model
