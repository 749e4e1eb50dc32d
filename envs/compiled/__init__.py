"""The compiled simulator step (numba): fused kernels over the batch, same results as numpy.

:class:`~defialloc.envs.compiled.simulator.CompiledSimulator` is the runtime simulator; the numpy
:class:`~defialloc.envs.simulator.PortfolioSimulator` is the reference it is tested against. Modules:
``layout`` (packed tables), ``params`` (packed parameters), ``scratch`` (per-thread temporaries),
``cache`` (keeps numba's disk cache in step with the sources), ``kernels_*`` (the step: actions, rebalance, execute, amm, population, perps, move, reward,
observe, batch), ``population`` (the cascades' state), ``simulator`` (the Python class).
"""

from defialloc.envs.compiled.cache import invalidate_stale_cache

invalidate_stale_cache()  # before the kernels' modules load their cached machine code

from defialloc.envs.compiled.simulator import (  # noqa: E402
    CompiledSimulator,
    compiled_unsupported,
    make_simulator,
)

__all__ = ["CompiledSimulator", "compiled_unsupported", "make_simulator"]
