"""Per-env gathers from path arrays: ``arr[rows, tau]`` for every env at its own time index.

Every env of a batch sits at its own time index ``tau_b`` of its own path, so each step gathers one
row per env from ``(B, L, ...)`` arrays (prices, lows, gas, rates, marks...). With the flat index
``rows * L + tau`` that gather is a ``take`` along the first axis of the array viewed as
``(B * L, ...)``, 3-4x cheaper than numpy's two-array advanced indexing at B = 256 and at B = 1
(measured: 0.8 vs 3.6 us and 0.26 vs 1.1 us for a ``(B, 427, 5)`` array).
"""

from __future__ import annotations

import numpy as np


def flat_time_index(n_envs: int, length: int, tau: np.ndarray) -> np.ndarray:
    """``(B,)`` int64 ``b * length + tau_b``: env ``b``'s time index ``tau_b`` on ``(B, length, ...)`` arrays."""
    return np.arange(n_envs, dtype=np.int64) * length + tau


def gather_at(arr: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``arr[rows, tau]`` of a C-contiguous ``(B, L, ...)`` array at ``flat`` (:func:`flat_time_index`).

    Returns a new ``(len(flat), ...)`` array (a copy, as advanced indexing would).
    """
    if not arr.flags.c_contiguous:  # a reshape would copy the whole path array
        length = arr.shape[1]
        return arr[flat // length, flat % length]
    return arr.reshape((-1, *arr.shape[2:])).take(flat, axis=0)
