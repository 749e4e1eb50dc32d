"""Layout of a step's scratch row: one row of floats per thread, reused by every env it steps.

Numba cannot put small arrays on the stack and a heap allocation per env and step costs more than
the arithmetic, so every temporary of a step lives in a preallocated row (``work[thread]``):
router slots of ``MAX_TIERS`` entries, vectors of ``N + 1`` entries (:func:`vec` gives the offset of
vector ``V_*``) and pool matrices of ``N * K`` entries (:func:`mat`).
"""

from __future__ import annotations

from numba import njit

MAX_TIERS = 4
# router slots (MAX_TIERS each)
W_C, W_RIN, W_ROUT, W_SPLIT, W_OUT = (j * MAX_TIERS for j in range(5))
W_VECTORS = 5 * MAX_TIERS
# vectors
(
    V_PRICE,
    V_WCUR,
    V_WTGT,
    V_HEDGE,
    V_TARGET,
    V_MASK,
    V_VOL,
    V_AMOUNT,
    V_SIDE,
    V_IN_PRICE,
    V_OUT_PRICE,
    V_TOTAL_OUT,
    V_TOTAL_IN,
    V_TRADED,
    V_DELTA,
    V_MARK,
    V_NEWPERP,
    V_PRICE1,
    V_LOW,
    V_SALES,
    V_SEIZED,
    V_BAG,
    V_COLL,
    V_ADVERSE,
    V_MARKADV,
    V_RECEIVED,
    V_TUSD,
    V_O_CSHARE,
    V_O_PSHARE,
    V_O_NAKED,
    V_O_OWED,
    V_O_ADV_MID,
    V_O_ADV_ASK,
) = range(33)
# the option book's per-contract temporaries: two vectors each (slot 0 the call, 1 the put; ``ov``)
V_O_STRIKE, V_O_EXPIRY, V_O_MID, V_O_ASK, V_O_BID, V_O_VOL, V_O_TY, V_O_FWD = range(33, 49, 2)
V_O_BUY, V_O_SELL, V_O_FORCED, V_O_MARK1, V_O_QUOTED = range(49, 59, 2)
N_VECTORS = 59
# pool matrices (N * K each; the saved reserves take two)
M_POOL_IN, M_POOL_OUT, M_RIN, M_ROUT, M_SAVED = range(5)
N_MATRICES = 6


def work_columns(n: int, k: int) -> int:
    """Floats of one scratch row for ``n`` assets and ``k`` fee tiers."""
    return W_VECTORS + N_VECTORS * (n + 1) + N_MATRICES * n * k


@njit(cache=True, nogil=True)
def vec(v, n):
    """Offset of vector ``v`` in a scratch row (``n`` assets)."""
    return W_VECTORS + v * (n + 1)


@njit(cache=True, nogil=True)
def ov(v, n, slot):
    """Offset of option slot ``slot`` (0 call, 1 put) of the per-contract vector pair ``v``."""
    return W_VECTORS + (v + slot) * (n + 1)


@njit(cache=True, nogil=True)
def mat(m, n, k):
    """Offset of pool matrix ``m`` (``(N, K)`` row-major) in a scratch row."""
    return W_VECTORS + N_VECTORS * (n + 1) + m * n * k
