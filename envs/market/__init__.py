"""Market scenarios: synthetic (regime-switching GARCH-t with co-jumps and depegs), historical replay,
and a stationary block bootstrap of history, all returned as :class:`MarketPaths`.

Entry point: :func:`sample_paths` (``cfg.source`` picks the generator). ``docs/market.md`` documents the
model, its parameters and the calibration.
"""

from defialloc.envs.market.config import REGIME_NAMES, MarketConfig, load_market_config
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.market.replay import available_dates, label_regimes, load_ohlcv
from defialloc.envs.market.sources import sample_paths

__all__ = [
    "REGIME_NAMES",
    "MarketConfig",
    "MarketPaths",
    "available_dates",
    "label_regimes",
    "load_market_config",
    "load_ohlcv",
    "sample_paths",
]
