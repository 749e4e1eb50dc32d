"""The compiled simulator step (numba): fused kernels over the batch, same results as numpy.

:class:`~defialloc.envs.compiled.simulator.CompiledSimulator` is the runtime simulator; the numpy
:class:`~defialloc.envs.simulator.PortfolioSimulator` is the reference it is tested against. Modules:
``layout`` (packed tables), ``params`` (packed parameters), ``scratch`` (per-thread temporaries),
``cache`` (numba's disk cache, one folder per version of the sources), ``kernels_*`` (the step: actions, rebalance, execute, amm, population, perps, options and their
quotes, move, reward, observe, batch), ``population`` (the cascades' state), ``simulator`` (the Python class).
"""

from defialloc.envs.compiled.cache import kernel_cache

with kernel_cache():  # the kernels are decorated on import: they cache under the sources' hash
    from defialloc.envs.compiled.simulator import (
        CompiledSimulator,
        compiled_unsupported,
        make_simulator,
    )

__all__ = ["CompiledSimulator", "compiled_unsupported", "make_simulator"]
