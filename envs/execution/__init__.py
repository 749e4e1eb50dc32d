"""Order execution: optimal splitting across a pair's pools and multi-hop swaps (see docs/execution.md).

The batched rebalance (:mod:`defialloc.envs.execution.rebalance`) and pool state (:mod:`defialloc.envs.execution.pools`)
live in their own modules and are imported from there.
"""

from defialloc.envs.execution.router import (
    Pool,
    PoolSet,
    RouteResult,
    SwapLeg,
    SwapQuote,
    route_order,
    route_swap,
)

__all__ = ["Pool", "PoolSet", "RouteResult", "SwapLeg", "SwapQuote", "route_order", "route_swap"]
