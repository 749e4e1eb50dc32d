"""Action parametrizations: how a Box action becomes the targets the env trades toward.

The action is a vector in ``[-1, 1]`` laid out as in :mod:`defialloc.envs.leverage_actions` (``N + 1`` spot
outputs, cash last; one leverage output if lending; ``N`` hedge outputs if perps). ``env.action.kind``
chooses how each block maps to its target, given the portfolio's state at the decision
(:class:`PortfolioState`):

``target`` (today's mapping, :mod:`defialloc.envs.actions`)
    weights ``w = clipped linear simplex(a)``; leverage ``l = (a + 1) / 2 * max_leverage``; hedge
    ratios ``h = a``. Every portfolio is reachable from anywhere in one decision.

``anchored``: an anchor plus bounded deviations
    ``d = a - mean(a)`` (the spot outputs, so ``sum d = 0``), ``w = anchor + max_deviation * d``
    (then clipped at 0 and renormalized, which only happens outside the reachable set);
    ``l = clip(leverage_deviation * a, 0, max_leverage)`` around the anchor's zero debt (so the
    lower half of the output means no debt); ``h = clip(hedge_deviation * a, -1, 1)`` around no
    hedge. The anchor (``env.action.anchor``) is equal weight, inverse volatility (1 / the trailing
    realized vol over ``observation.vol_window`` steps, risky only) or cash. An output of 0 holds
    the anchor: a policy that outputs noise around 0 stays near a sensible portfolio.

``delta``: trades relative to the current portfolio
    ``d = a - mean(a)``, ``w = w_now + max_turnover * d / max(1, |d|_1 / 2)`` (then clipped at 0 and
    renormalized), so the one-sided turnover ``|w - w_now|_1 / 2`` of a decision is at most
    ``max_turnover``; ``l = clip(l_now + max_leverage_change * a, 0, max_leverage)``;
    ``h = clip(h_now + max_hedge_change * a, -1, 1)``. An output of 0 trades nothing.

Right inverses (:meth:`ActionMap.actions_for`): every target in a kind's reachable set maps back
exactly (a property test checks it). Reachable sets: ``target`` every target; ``anchored`` weights
``w >= 0`` with ``max(w - anchor) - min(w - anchor) <= 2 max_deviation``, ``l`` in
``[0, leverage_deviation]``, ``|h| <= hedge_deviation``; ``delta`` weights with one-sided turnover
``<= max_turnover`` from ``w_now`` (every such ``d`` has ``max d - min d <= 2``), ``|l - l_now| <=
max_leverage_change`` and ``|h - h_now| <= max_hedge_change`` (within the bounds).

The options block (``env.options``): covered-call and protective-put shares map like the leverage
block around an anchor of no options: ``target`` ``(a + 1) / 2``; ``anchored``
``clip(option_deviation * a, 0, 1)`` (the lower half means none); ``delta``
``clip(share_now + max_option_change * a, 0, 1)``. The three choice outputs (call strike, put strike,
tenor) pick a listed one in every kind (``defialloc.envs.leverage_actions.choice_index``).

The leverage target is then clipped to what the weights' LTVs allow, and the hedges to the margin,
by the engine (:mod:`defialloc.envs.leverage`), whatever the kind. A spot-only ``(B, N + 1)`` action means no
debt, no hedges and no options in every kind (the spot baselines run unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from defialloc.envs.actions import actions_to_weights, weights_to_actions
from defialloc.envs.config import ActionConfig
from defialloc.envs.leverage_actions import ActionLayout, choice_index, choice_output


class OptionTargets(NamedTuple):
    """What an options block asks for, per env: ``call_share`` / ``put_share`` ``(B, N)`` in [0, 1]
    (short calls / long puts on that share of each listed asset's held units) and the indices of the
    listed ``call_strike``, ``put_strike`` and ``tenor`` ``(B,)`` int64 (used when a contract opens)."""

    call_share: np.ndarray
    put_share: np.ndarray
    call_strike: np.ndarray
    put_strike: np.ndarray
    tenor: np.ndarray

    @classmethod
    def none(cls, n_envs: int, n_assets: int) -> OptionTargets:
        """No options (every contract closed)."""
        zero = np.zeros((n_envs, n_assets))
        idx = np.zeros(n_envs, dtype=np.int64)
        return cls(zero, zero.copy(), idx, idx.copy(), idx.copy())


class ActionTargets(NamedTuple):
    """What an action asks for, per env: ``weights`` ``(B, N+1)`` (cash last, on the simplex),
    ``leverage`` ``(B,)`` debt / equity before the LTV clip, ``hedge`` ``(B, N)`` ratios in [-1, 1],
    ``options`` the option targets (None without the options venue)."""

    weights: np.ndarray
    leverage: np.ndarray
    hedge: np.ndarray
    options: OptionTargets | None = None


def override_targets(
    targets: ActionTargets, safe: ActionTargets, forced: np.ndarray
) -> ActionTargets:
    """``targets`` with the rows ``forced`` ``(B,)`` bool replaced by ``safe``'s (kill-switches)."""

    def pick(t: np.ndarray, s: np.ndarray) -> np.ndarray:
        return np.where(forced.reshape(-1, *([1] * (t.ndim - 1))), s, t)

    options = targets.options
    if options is not None and safe.options is not None:
        options = OptionTargets(*(pick(t, s) for t, s in zip(options, safe.options, strict=True)))
    return ActionTargets(
        pick(targets.weights, safe.weights),
        pick(targets.leverage, safe.leverage),
        pick(targets.hedge, safe.hedge),
        options,
    )


@dataclass
class PortfolioState:
    """The portfolio at the decision, as the action kinds read it (arrays have a leading env axis).

    ``weights`` ``(B, N+1)`` current weights (cash last); ``leverage`` ``(B,)`` debt / equity;
    ``hedge`` ``(B, N)`` current hedge ratios (``-perp size / spot units``, 0 without spot);
    ``vol`` ``(B, N)`` trailing realized vol (any consistent unit), only for the inverse-vol anchor;
    ``call_share`` / ``put_share`` ``(B, N)`` current short calls / long puts over the held units
    (options venue only; None reads as 0).
    """

    weights: np.ndarray
    leverage: np.ndarray
    hedge: np.ndarray
    vol: np.ndarray | None = None
    call_share: np.ndarray | None = None
    put_share: np.ndarray | None = None


def centered(actions: np.ndarray) -> np.ndarray:
    """``a - mean(a)`` over the last axis (a direction on the simplex: its entries sum to 0)."""
    a = np.maximum(np.minimum(actions, 1.0), -1.0)
    return a - a.mean(axis=-1, keepdims=True)


def _on_simplex(w: np.ndarray) -> np.ndarray:
    """Clip at 0 and renormalize (a no-op inside the reachable sets); all-zero rows become cash."""
    w = np.maximum(w, 0.0)
    total = w.sum(axis=-1, keepdims=True)
    cash = np.zeros_like(w)
    cash[..., -1] = 1.0
    return np.where(total > 0.0, w / np.where(total > 0.0, total, 1.0), cash)


def _outputs_for(direction: np.ndarray) -> np.ndarray:
    """The action whose centered form is ``direction`` (sum 0): shifted to the middle of [-1, 1]."""
    shift = 0.5 * (direction.max(axis=-1, keepdims=True) + direction.min(axis=-1, keepdims=True))
    return np.clip(direction - shift, -1.0, 1.0)


class ActionMap:
    """The action -> targets map of one env config (see the module docstring)."""

    def __init__(self, layout: ActionLayout, cfg: ActionConfig, max_leverage: float) -> None:
        self.layout = layout
        self.cfg = cfg
        self.kind = cfg.kind
        self.max_leverage = float(max_leverage)
        n = layout.n_assets
        self._equal = np.append(np.full(n, 1.0 / n), 0.0)
        self._cash = np.append(np.zeros(n), 1.0)

    @property
    def needs_vol(self) -> bool:
        """The mapping reads ``PortfolioState.vol`` (the inverse-volatility anchor)."""
        return self.kind == "anchored" and self.cfg.anchor == "inverse_vol"

    def anchor(self, state: PortfolioState) -> np.ndarray:
        """The anchor weights ``(B, N+1)`` (cash last)."""
        b = state.weights.shape[0]
        name = self.cfg.anchor
        if name == "equal_weight":
            return np.broadcast_to(self._equal, (b, self._equal.size))
        if name == "cash":
            return np.broadcast_to(self._cash, (b, self._cash.size))
        if state.vol is None:
            raise ValueError("the inverse_vol anchor needs PortfolioState.vol")
        inverse = 1.0 / np.maximum(state.vol, 1e-12)
        risky = inverse / inverse.sum(axis=1, keepdims=True)
        return np.concatenate([risky, np.zeros((b, 1))], axis=1)

    # ------------------------------------------------------------------ forward
    def targets(self, actions: np.ndarray, state: PortfolioState) -> ActionTargets:
        """Targets of ``actions`` ``(B, dim)`` (or spot-only ``(B, N+1)``) given ``state``."""
        layout = self.layout
        spot_only = actions.shape[1] == layout.n_assets + 1
        spot, lev_a, hedge_a = layout.split(actions)
        kind = self.kind
        if kind == "target":
            w = actions_to_weights(spot)
        elif kind == "anchored":
            w = _on_simplex(self.anchor(state) + self.cfg.max_deviation * centered(spot))
        else:
            d = centered(spot)
            size = np.maximum(0.5 * np.abs(d).sum(axis=1, keepdims=True), 1.0)
            w = _on_simplex(state.weights + self.cfg.max_turnover * d / size)
        b = actions.shape[0]
        options = self._options(actions, state) if layout.options else None
        if spot_only:
            return ActionTargets(w, np.zeros(b), np.zeros((b, layout.n_assets)), options)
        return ActionTargets(w, self._leverage(lev_a, state), self._hedge(hedge_a, state), options)

    def _options(self, actions: np.ndarray, state: PortfolioState) -> OptionTargets:
        layout = self.layout
        calls_a, puts_a, choice_a = layout.split_options(actions)
        shares = []
        for a, now in ((calls_a, state.call_share), (puts_a, state.put_share)):
            a = np.maximum(np.minimum(a, 1.0), -1.0)
            if self.kind == "target":
                share = (a + 1.0) * 0.5
            elif self.kind == "anchored":
                share = self.cfg.option_deviation * a
            else:
                share = (0.0 if now is None else now) + self.cfg.max_option_change * a
            shares.append(np.minimum(np.maximum(share, 0.0), 1.0))
        return OptionTargets(
            shares[0],
            shares[1],
            choice_index(choice_a[:, 0], layout.n_strikes),
            choice_index(choice_a[:, 1], layout.n_strikes),
            choice_index(choice_a[:, 2], layout.n_tenors),
        )

    def _leverage(self, a: np.ndarray, state: PortfolioState) -> np.ndarray:
        if not self.layout.lending:
            return np.zeros(a.shape[0])
        a = np.maximum(np.minimum(a, 1.0), -1.0)
        if self.kind == "target":
            wanted = (a + 1.0) * 0.5 * self.max_leverage
        elif self.kind == "anchored":
            wanted = self.cfg.leverage_deviation * a
        else:
            wanted = state.leverage + self.cfg.max_leverage_change * a
        return np.minimum(np.maximum(wanted, 0.0), self.max_leverage)

    def _hedge(self, a: np.ndarray, state: PortfolioState) -> np.ndarray:
        if not self.layout.perps:
            return np.zeros_like(a)
        a = np.maximum(np.minimum(a, 1.0), -1.0)
        if self.kind == "target":
            return a
        if self.kind == "anchored":
            return self.cfg.hedge_deviation * a
        return np.clip(state.hedge + self.cfg.max_hedge_change * a, -1.0, 1.0)

    # ------------------------------------------------------------------ inverse
    def actions_for(self, targets: ActionTargets, state: PortfolioState) -> np.ndarray:
        """A right inverse: an action ``(B, dim)`` whose :meth:`targets` are ``targets`` exactly,
        for every target in the kind's reachable set (outside it, the nearest action in the Box).
        """
        w = np.asarray(targets.weights, dtype=np.float64)
        b = w.shape[0]
        if self.kind == "target":
            spot = weights_to_actions(w)
        elif self.kind == "anchored":
            spot = _outputs_for((w - self.anchor(state)) / self.cfg.max_deviation)
        else:
            spot = _outputs_for((w - state.weights) / self.cfg.max_turnover)
        parts = [spot]
        layout = self.layout
        if layout.lending:
            lev = np.broadcast_to(np.asarray(targets.leverage, dtype=np.float64), (b,))
            if self.kind == "target":
                a = 2.0 * lev / self.max_leverage - 1.0 if self.max_leverage > 0 else -np.ones(b)
            elif self.kind == "anchored":
                # zero debt is the whole lower half: ask for it from the middle of that half
                a = np.where(lev > 0.0, lev / self.cfg.leverage_deviation, -0.5)
            else:
                a = (lev - state.leverage) / self.cfg.max_leverage_change
                a = np.where((lev <= 0.0) & (state.leverage <= 0.0), -0.5, a)
            parts.append(np.clip(a, -1.0, 1.0)[:, None])
        if layout.perps:
            h = np.broadcast_to(np.asarray(targets.hedge, dtype=np.float64), (b, layout.n_assets))
            if self.kind == "target":
                a = h
            elif self.kind == "anchored":
                a = h / self.cfg.hedge_deviation
            else:
                a = (h - state.hedge) / self.cfg.max_hedge_change
            parts.append(np.clip(a, -1.0, 1.0))
        if layout.options:
            parts.append(self._option_outputs(targets.options, state, b))
        return np.concatenate(parts, axis=1)

    def _option_outputs(
        self, options: OptionTargets | None, state: PortfolioState, b: int
    ) -> np.ndarray:
        """The inverse of :meth:`_options` (zero shares from the middle of the lower half)."""
        layout, n = self.layout, self.layout.n_assets
        options = options or OptionTargets.none(b, n)
        outs = []
        for share, now in (
            (options.call_share, state.call_share),
            (options.put_share, state.put_share),
        ):
            share = np.broadcast_to(np.asarray(share, dtype=np.float64), (b, n))
            if self.kind == "target":
                a = 2.0 * share - 1.0
            elif self.kind == "anchored":
                a = np.where(share > 0.0, share / self.cfg.option_deviation, -0.5)
            else:
                current = np.zeros((b, n)) if now is None else now
                a = (share - current) / self.cfg.max_option_change
                a = np.where((share <= 0.0) & (current <= 0.0), -0.5, a)
            outs.append(np.clip(a, -1.0, 1.0))
        for idx, size in (
            (options.call_strike, layout.n_strikes),
            (options.put_strike, layout.n_strikes),
            (options.tenor, layout.n_tenors),
        ):
            outs.append(choice_output(np.broadcast_to(idx, (b,)), size)[:, None])
        return np.concatenate(outs, axis=1)

    def safe_targets(self, n_envs: int) -> ActionTargets:
        """All numeraire, no debt, no perps (the kill-switch's target), whatever the kind."""
        n = self.layout.n_assets
        return ActionTargets(
            np.broadcast_to(self._cash, (n_envs, n + 1)).copy(),
            np.zeros(n_envs),
            np.zeros((n_envs, n)),
            OptionTargets.none(n_envs, n) if self.layout.options else None,
        )
