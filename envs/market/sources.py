"""One entry point for market scenarios: :func:`sample_paths` dispatches on ``cfg.source``."""

from __future__ import annotations

import numpy as np

from defialloc.envs.market.bootstrap import bootstrap_paths
from defialloc.envs.market.config import MarketConfig
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.market.replay import replay_paths
from defialloc.envs.market.synthetic import generate_synthetic_paths

_SOURCES = {
    "synthetic": generate_synthetic_paths,
    "replay": replay_paths,
    "bootstrap": bootstrap_paths,
}


def sample_paths(cfg: MarketConfig, seeds: np.ndarray, length: int, warmup: int) -> MarketPaths:
    """``len(seeds)`` market paths of ``length`` points (``warmup`` of them history) from ``cfg.source``.

    Path ``b`` depends only on ``seeds[b]`` (and the config): any batch containing a seed reproduces its
    path exactly.

    Raises:
        ValueError: bad seeds/length/warmup, or a source that cannot serve the request (e.g. a replay
            period shorter than ``length``).
    """
    try:
        source = _SOURCES[cfg.source]
    except KeyError:
        raise ValueError(
            f"market.source={cfg.source!r} must be one of {sorted(_SOURCES)}"
        ) from None
    return source(cfg, seeds, length, warmup)
