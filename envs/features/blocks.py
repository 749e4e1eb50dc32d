"""Observation blocks: their sizes, their entries' names and where each sits in the observation.

``env.observation.blocks`` is an ordered list of block names (``defialloc.envs.config.OBSERVATION_BLOCKS``).
The market blocks are computed for a whole path at reset (:func:`defialloc.envs.features.market_features`,
in their order of ``blocks``, into the env's feature rows); the portfolio blocks (``weights``,
``drawdown``) and the ``protocol`` and ``greeks`` blocks are written at each step. :class:`ObservationLayout` maps
both into the observation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defialloc.envs.config import ObservationConfig
from defialloc.envs.market.regime_values import REGIME_NAMES

#: Blocks precomputed per path at reset (the others depend on the portfolio and are read per step).
MARKET_BLOCKS = ("returns", "realized_vol", "garch_vol", "correlations", "regime", "market")
#: The ``greeks`` block's sub-blocks, each one entry per asset (envs/greeks.py has the formulas).
GREEK_NAMES = ("delta", "gamma", "vega", "theta")
#: The regime filter's states, in the market model's order (envs.market.config.REGIME_NAMES).
REGIMES = REGIME_NAMES


def block_size(name: str, n_assets: int, cfg: ObservationConfig, protocol_size: int = 0) -> int:
    """Number of entries of block ``name`` for ``n_assets`` assets (``protocol_size``: the protocol block's)."""
    n = n_assets
    sizes = {
        "returns": cfg.return_window * n,
        "realized_vol": n,
        "garch_vol": n,
        "correlations": n * (n - 1) // 2,
        "regime": len(REGIMES),
        "market": 3,
        "weights": n + 1,
        "drawdown": 1,
        "protocol": protocol_size,
        "greeks": 4 * n,
    }
    return sizes[name]


def block_names(
    name: str,
    asset_names: tuple[str, ...],
    cfg: ObservationConfig,
    protocol_names: tuple[str, ...] | list[str] = (),
) -> list[str]:
    """Names of block ``name``'s entries, in order."""
    a, n = asset_names, len(asset_names)
    if name == "returns":
        return [f"ret_lag{k}_{x}" for k in range(cfg.return_window) for x in a]
    if name == "realized_vol":
        return [f"vol_{x}" for x in a]
    if name == "garch_vol":
        return [f"garch_vol_{x}" for x in a]
    if name == "correlations":
        return [f"corr_{a[i]}_{a[j]}" for i in range(n) for j in range(i + 1, n)]
    if name == "regime":
        return [f"regime_p_{r}" for r in REGIMES]
    if name == "market":
        return ["log_depth", "log_gas", "numeraire_peg"]
    if name == "weights":
        return [f"weight_{x}" for x in a] + ["weight_cash"]
    if name == "drawdown":
        return ["drawdown"]
    if name == "protocol":
        return list(protocol_names)
    if name == "greeks":
        return [f"{g}_{x}" for g in GREEK_NAMES for x in a]
    raise ValueError(f"unknown observation block {name!r}")


def feature_names(
    asset_names: tuple[str, ...],
    cfg: ObservationConfig,
    protocol_names: tuple[str, ...] | list[str] = (),
) -> list[str]:
    """Names of the observation entries, in the order of ``cfg.blocks``.

    ``protocol_names``: the protocol block's names (``LeverageEngine.observation_names``; empty in
    spot mode, where the block is empty).
    """
    return [x for b in cfg.blocks for x in block_names(b, asset_names, cfg, protocol_names)]


def n_market_features(n_assets: int, cfg: ObservationConfig) -> int:
    """Entries of the market blocks (the per-path feature rows computed at reset)."""
    return sum(block_size(b, n_assets, cfg) for b in cfg.blocks if b in MARKET_BLOCKS)


def observation_size(n_assets: int, cfg: ObservationConfig, protocol_size: int = 0) -> int:
    """Entries of the whole observation (``protocol_size``: the protocol block's, 0 in spot mode)."""
    return sum(block_size(b, n_assets, cfg, protocol_size) for b in cfg.blocks)


@dataclass(frozen=True)
class ObservationLayout:
    """Where each block sits in the observation and in the per-path market feature rows.

    Attributes:
        blocks: the block names in order. size: entries of the observation.
        spans: ``{block: (start, stop)}`` in the observation (every selected block).
        market_runs: ``(obs_start, feature_start, size)`` of each maximal run of market blocks that
            are adjacent in the observation (one run, ``(0, 0, n_market)``, for the default order).
        n_market: entries of the feature rows (the market blocks in their order of ``blocks``).
        weights, protocol, greeks: their columns (slices); drawdown: its column; None when not
        selected (read at every step: no lookups).
    """

    blocks: tuple[str, ...]
    size: int
    spans: dict[str, tuple[int, int]]
    market_runs: tuple[tuple[int, int, int], ...]
    n_market: int
    weights: slice | None = None
    drawdown: int | None = None
    protocol: slice | None = None
    greeks: slice | None = None

    @classmethod
    def build(
        cls, n_assets: int, cfg: ObservationConfig, protocol_size: int = 0
    ) -> ObservationLayout:
        spans: dict[str, tuple[int, int]] = {}
        runs: list[list[int]] = []
        col = feat = 0
        for name in cfg.blocks:
            k = block_size(name, n_assets, cfg, protocol_size)
            spans[name] = (col, col + k)
            if name in MARKET_BLOCKS and k:
                if runs and runs[-1][0] + runs[-1][2] == col:
                    runs[-1][2] += k
                else:
                    runs.append([col, feat, k])
                feat += k
            col += k
        drawdown = spans["drawdown"][0] if "drawdown" in spans else None
        return cls(
            tuple(cfg.blocks),
            col,
            spans,
            tuple(tuple(r) for r in runs),
            feat,
            slice(*spans["weights"]) if "weights" in spans else None,
            drawdown,
            slice(*spans["protocol"]) if "protocol" in spans else None,
            slice(*spans["greeks"]) if "greeks" in spans else None,
        )

    def put_market(self, obs: np.ndarray, rows: np.ndarray) -> None:
        """Write the market feature rows ``rows`` ``(B, n_market)`` into ``obs`` ``(B, size)``."""
        runs = self.market_runs
        if len(runs) == 1 and runs[0][1] == 0:  # one run of every market column (the default)
            start, _, k = runs[0]
            obs[:, start : start + k] = rows
            return
        for start, first, k in runs:
            obs[:, start : start + k] = rows[:, first : first + k]

    def span(self, name: str) -> slice | None:
        """Columns of block ``name`` in the observation (None when the block is not selected)."""
        if name not in self.spans:
            return None
        return slice(*self.spans[name])
