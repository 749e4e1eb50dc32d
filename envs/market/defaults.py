"""Default (prior) parameter tables of the synthetic market for the default assets.

One job: build the reference-level priors that ``SyntheticParams`` in ``envs/market/config.py`` uses as
``default_factory`` for its per-asset tables (GARCH, shock correlations, jumps); the fitted values live in
``configs/market/default.yaml`` and the priors are documented in ``docs/market.md``. The models are
imported inside each function because ``config.py`` imports this module while it is being defined.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from defialloc.envs.market.config import GarchParams, JumpParams, RegimeCorrelations


def default_garch() -> dict[str, GarchParams]:
    """GARCH(1,1) priors of the default assets (``SyntheticParams.garch``)."""
    from defialloc.envs.market.config import GarchParams

    # Reference-level priors (docs/market.md); configs/market/default.yaml holds the fitted values.
    table = {
        "BTC": (1.5e-4, 0.11, 0.80),
        "ETH": (2.5e-4, 0.125, 0.78),
        "SOL": (8.0e-4, 0.12, 0.75),
        "LINK": (6.0e-4, 0.10, 0.78),
        "AVAX": (8.0e-4, 0.12, 0.75),
    }
    return {a: GarchParams(omega_daily=w, alpha=al, beta=be) for a, (w, al, be) in table.items()}


def default_correlations() -> RegimeCorrelations:
    """Constant-correlation matrices of the default assets per regime (``SyntheticParams.correlation``)."""
    from defialloc.envs.market.config import DEFAULT_ASSETS, RegimeCorrelations

    n = len(DEFAULT_ASSETS)

    def const(rho: float) -> list[list[float]]:
        return (np.full((n, n), rho) + (1 - rho) * np.eye(n)).tolist()

    return RegimeCorrelations(
        assets=list(DEFAULT_ASSETS), calm=const(0.6), bull=const(0.45), crash=const(0.88)
    )


def default_jumps() -> JumpParams:
    """Jump intensities and sizes of the default assets (``SyntheticParams.jumps``)."""
    from defialloc.envs.market.config import JumpParams, RateRegimeValues

    return JumpParams(
        common_intensity_per_year=RateRegimeValues(calm=2.0, bull=2.0, crash=20.0),
        idio_intensity_per_year=RateRegimeValues(calm=3.0, bull=4.0, crash=6.0),
        mean_log={"BTC": -0.06, "ETH": -0.08, "SOL": -0.10, "LINK": -0.09, "AVAX": -0.10},
        std_log={"BTC": 0.06, "ETH": 0.08, "SOL": 0.12, "LINK": 0.10, "AVAX": 0.12},
    )
