"""Observation features: one causal function of the price history, shared by the env and the paper trader.

Market blocks are computed for every time point of a batch of paths at once (at reset), so a step
only gathers a row. The paper trader calls the same :func:`market_features` on its trailing
history and takes the last row: there is no second copy of feature code.

``env.observation.blocks`` picks the blocks and their order (default
``defialloc.envs.config.DEFAULT_OBSERVATION_BLOCKS``: returns, realized_vol, correlations, market, weights,
drawdown, protocol). For ``N`` assets and return window ``W`` (float32, every entry clipped to
``[-clip, clip]``; row ``t`` uses data up to and including ``t`` only):

=================  ==================  =====================================================
block              size                value
=================  ==================  =====================================================
``returns``        ``W * N``           ``log(p_t-k / p_t-k-1) / return_scale``, lag-major (lag 0
                                       = the step that just closed, all assets, then lag 1, ...)
``realized_vol``   ``N``               annualized std of log returns over ``vol_window``
``garch_vol``      ``N``               ``sqrt(f_t * 365 / step_days)``: the GARCH(1,1) forecast
                                       ``f_t = omega + alpha r_t^2 + beta f_t-1`` of the next
                                       step's variance (``market.synthetic.garch``; garch.py)
``correlations``   ``N (N - 1) / 2``   upper triangle (row-major) of the zero-mean EWMA
                                       correlation over ``corr_window`` steps
``regime``         3                   filtered ``P(calm), P(bull), P(crash)`` at ``t`` (the
                                       Hamilton filter of regime.py with the market's model)
``market``         3                   ``log(depth_multiplier)``, ``log(gas_price_gwei / 30)``,
                                       ``(numeraire_usd - 1) * 20`` (a 5% depeg -> -1)
``weights``        ``N + 1``           the portfolio's weights now, cash last
``drawdown``       1                   ``1 - value / running peak``
``protocol``       0, 3, ``2N``, ...   lending / perps / options block (``defialloc.envs.leverage``), empty
                                       in spot mode
``greeks``         ``4 N``             portfolio Greeks per asset over spot, perps and options
                                       (``envs/greeks.py``): ``delta_a = Delta_a S_a / V``,
                                       ``gamma_a = Gamma_a S_a^2 / V``, ``vega_a`` = 100 x vega
                                       per vol point / V, ``theta_a`` = 1e4 x theta per day / V
=================  ==================  =====================================================

Modules: :mod:`~defialloc.envs.features.blocks` (sizes, names, layout), :mod:`~defialloc.envs.features.market`
(:func:`market_features`), :mod:`~defialloc.envs.features.windows` (rolling and EWMA statistics),
:mod:`~defialloc.envs.features.model` (the trader's model of the market config),
:mod:`~defialloc.envs.features.garch` and :mod:`~defialloc.envs.features.regime` (the model blocks' recursions).
"""

from defialloc.envs.features.blocks import (
    MARKET_BLOCKS,
    ObservationLayout,
    block_names,
    block_size,
    feature_names,
    n_market_features,
    observation_size,
)
from defialloc.envs.features.garch import garch_forecast
from defialloc.envs.features.market import GAS_REFERENCE_GWEI, market_features
from defialloc.envs.features.model import GarchModel, RegimeModel, TraderModel, trader_model_for
from defialloc.envs.features.regime import emission_loglik, regime_filter
from defialloc.envs.features.windows import ewma_correlation

__all__ = [
    "GAS_REFERENCE_GWEI",
    "MARKET_BLOCKS",
    "GarchModel",
    "ObservationLayout",
    "RegimeModel",
    "TraderModel",
    "block_names",
    "block_size",
    "emission_loglik",
    "ewma_correlation",
    "feature_names",
    "garch_forecast",
    "market_features",
    "n_market_features",
    "observation_size",
    "regime_filter",
    "trader_model_for",
]
