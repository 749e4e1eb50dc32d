"""The batch entry points: a loop over the envs of a batch around the per-env kernels.

Every entry point exists twice: a serial loop (``*_serial``) and a ``prange`` loop over the envs
(``*_parallel``, numba's threading layer; each thread uses its own scratch row ``work[thread]``).
Envs never share state, so both give the same numbers, bit for bit, whatever the batch or the
number of threads. The simulator picks the parallel form from :data:`PARALLEL_MIN_ENVS` envs.

Each compiled function is cached on disk (``cache=True``: numba writes it next to this module, in
``envs/compiled/__pycache__``, or in ``NUMBA_CACHE_DIR`` when set) and compiled only when first
called, so a process that never steps a batch never compiles the parallel forms.

Return codes (checked before any state changes): ``execute``/``step`` return ``1 + b`` when env
``b``'s action has a non-finite entry, ``advance``/``step`` ``-(1 + b)`` when env ``b`` is at the
end of its path; 0 otherwise.
"""

from __future__ import annotations

import math

import numba
from numba import njit, prange

from defialloc.envs.compiled.kernels_execute import execute_env, hold
from defialloc.envs.compiled.kernels_move import advance_env
from defialloc.envs.compiled.kernels_observe import observe_env
from defialloc.envs.compiled.layout import I_T
from defialloc.envs.compiled.params import IP_HORIZON, IP_N

#: from this many envs the prange forms run. At 64 envs they stepped 223,000 env-steps/s against the
#: serial forms' 155,000-182,000 (all protocols, 5 assets, two cores), but compiling them costs ~65 s
#: on a fresh machine, and at 64 envs (the training default) the env is ~12 % of a PPO update's time,
#: so they start where they pay: from 256 envs (299,000 against 129,000-153,000).
PARALLEL_MIN_ENVS = 256

JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**JIT)
def _bad_action(actions):
    for b in range(actions.shape[0]):
        for j in range(actions.shape[1]):
            if not math.isfinite(actions[b, j]):
                return 1 + b
    return 0


@njit(**JIT)
def _at_end(istate, ip):
    for b in range(istate.shape[0]):
        if istate[b, I_T] >= ip[IP_HORIZON]:
            return -(1 + b)
    return 0


# ----------------------------------------------------------------------------------- execute
@njit(**JIT)
def execute_serial(actions, spot_only, fstate, istate, mtab, work, fp, ip, rec):
    """Trade every env toward its action (``PortfolioSimulator.execute``)."""
    code = _bad_action(actions)
    if code:
        return code
    n = ip[IP_N]
    for b in range(fstate.shape[0]):
        execute_env(b, n, actions, spot_only, fstate, istate, mtab, work[0], fp, ip, rec)
    return 0


@njit(parallel=True, **JIT)
def execute_parallel(actions, spot_only, fstate, istate, mtab, work, fp, ip, rec):
    """:func:`execute_serial` over threads."""
    code = _bad_action(actions)
    if code:
        return code
    n = ip[IP_N]
    for b in prange(fstate.shape[0]):
        execute_env(
            b, n, actions, spot_only, fstate, istate, mtab, work[numba.get_thread_id()], fp, ip, rec
        )
    return 0


@njit(**JIT)
def hold_all(fstate, rec):
    """A step between decisions for every env: no order, no cost."""
    for b in range(fstate.shape[0]):
        hold(b, fstate, rec)


# ----------------------------------------------------------------------------------- advance
@njit(**JIT)
def advance_serial(fstate, istate, mtab, regime, work, fp, ip, rec, res_f, res_b, res_r, liq):
    """Move every env from ``t`` to ``t + 1`` and score it (``PortfolioSimulator.advance``)."""
    code = _at_end(istate, ip)
    if code:
        return code
    n = ip[IP_N]
    for b in range(fstate.shape[0]):
        advance_env(
            b, n, fstate, istate, mtab, regime, work[0], fp, ip, rec, res_f, res_b, res_r, liq
        )
    return 0


@njit(parallel=True, **JIT)
def advance_parallel(fstate, istate, mtab, regime, work, fp, ip, rec, res_f, res_b, res_r, liq):
    """:func:`advance_serial` over threads."""
    code = _at_end(istate, ip)
    if code:
        return code
    n = ip[IP_N]
    for b in prange(fstate.shape[0]):
        advance_env(
            b, n, fstate, istate, mtab, regime, work[numba.get_thread_id()], fp, ip, rec,
            res_f, res_b, res_r, liq,
        )  # fmt: skip
    return 0


# ----------------------------------------------------------------------------------- step
@njit(**JIT)
def step_serial(
    actions, mode, spot_only, fstate, istate, mtab, regime, features, work, fp, ip,
    rec, res_f, res_b, res_r, liq, obs,
):  # fmt: skip
    """Execute (``mode`` 0) or hold (``mode`` 1), advance and observe every env in one pass."""
    code = _at_end(istate, ip)
    if code:
        return code
    if mode == 0:
        code = _bad_action(actions)
        if code:
            return code
    n = ip[IP_N]
    for b in range(fstate.shape[0]):
        w = work[0]
        if mode == 0:
            execute_env(b, n, actions, spot_only, fstate, istate, mtab, w, fp, ip, rec)
        else:
            hold(b, fstate, rec)
        advance_env(b, n, fstate, istate, mtab, regime, w, fp, ip, rec, res_f, res_b, res_r, liq)
        observe_env(b, n, fstate, istate, mtab, features, fp, ip, obs)
    return 0


@njit(parallel=True, **JIT)
def step_parallel(
    actions, mode, spot_only, fstate, istate, mtab, regime, features, work, fp, ip,
    rec, res_f, res_b, res_r, liq, obs,
):  # fmt: skip
    """:func:`step_serial` over threads."""
    code = _at_end(istate, ip)
    if code:
        return code
    if mode == 0:
        code = _bad_action(actions)
        if code:
            return code
    n = ip[IP_N]
    for b in prange(fstate.shape[0]):
        w = work[numba.get_thread_id()]
        if mode == 0:
            execute_env(b, n, actions, spot_only, fstate, istate, mtab, w, fp, ip, rec)
        else:
            hold(b, fstate, rec)
        advance_env(b, n, fstate, istate, mtab, regime, w, fp, ip, rec, res_f, res_b, res_r, liq)
        observe_env(b, n, fstate, istate, mtab, features, fp, ip, obs)
    return 0


# ----------------------------------------------------------------------------------- observe
@njit(**JIT)
def observe_serial(fstate, istate, mtab, features, fp, ip, obs):
    """Every env's observation (``PortfolioSimulator.observe``)."""
    n = ip[IP_N]
    for b in range(fstate.shape[0]):
        observe_env(b, n, fstate, istate, mtab, features, fp, ip, obs)
