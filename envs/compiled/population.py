"""The borrower population's state in the compiled simulator: env-major views of ``fstate``.

:class:`defialloc.envs.leverage_population.BorrowerCascades` keeps the population bucket-major for numpy's
sake; the kernels want each env's buckets contiguous (one env per loop iteration), so the compiled
simulator replaces it by :class:`CompiledCascades`, which has the same ``units``/``debt``/``fresh``
``(B, N, Kb)`` attributes (read by snapshots) and ``reset``, over ``fstate[:, population:]``.
Stepping it is :func:`defialloc.envs.compiled.kernels_population.population_step`.
"""

from __future__ import annotations

import numpy as np

from defialloc.envs.compiled.layout import Layout
from defialloc.envs.leverage_population import BorrowerCascades
from defialloc.envs.protocols.borrowers import fresh_positions


class CompiledCascades:
    """Population state of ``B`` envs as views of the packed state (see the module docstring)."""

    def __init__(self, source: BorrowerCascades, fstate: np.ndarray, layout: Layout) -> None:
        self.params = source.params
        self.reserves = source.reserves
        self.depth_usd = source.depth_usd
        self.entry_hf = source.entry_hf
        self._threshold = np.asarray(source.reserves.liq_threshold, dtype=float)
        b, n, kb = fstate.shape[0], layout.n, layout.kb
        block = fstate[:, layout.population : layout.population + 3 * n * kb].reshape(b, 3, n, kb)
        self.units, self.debt, self.fresh = block[:, 0], block[:, 1], block[:, 2]

    @classmethod
    def over(cls, source: BorrowerCascades, fstate: np.ndarray, layout: Layout) -> CompiledCascades:
        """The population of ``source`` (its parameters; its state is all zeros before a reset)
        moved into ``fstate``."""
        cascades = cls(source, fstate, layout)
        cascades.units[...] = source.units
        cascades.debt[...] = source.debt
        cascades.fresh[...] = source.fresh
        return cascades

    def reset(
        self, index: np.ndarray, entry_price: np.ndarray, depth_multiplier: np.ndarray
    ) -> None:
        """New populations for envs ``index`` (``BorrowerCascades.reset``: the same numbers)."""
        depth = self.depth_usd[None, :] * depth_multiplier[:, None]
        units, debt_times_hf = fresh_positions(entry_price, depth, self._threshold, self.params)
        self.debt[index] = debt_times_hf[:, :, None] / self.entry_hf
        self.units[index] = units[:, :, None]
        self.fresh[index] = units[:, :, None]
