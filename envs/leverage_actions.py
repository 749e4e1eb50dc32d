"""The leveraged action: its layout, the leverage target and its feasibility clip.

Action layout (a Box in ``[-1, 1]``, ``N`` risky assets; blocks present per config flag)::

    [ N + 1 spot weight outputs (cash last) ]  always          -> weights w (envs/actions.py)
    [ 1 leverage target                     ]  if lending       -> l = (a + 1) / 2 * max_leverage
    [ N hedge ratios                        ]  if perps         -> h_i = a_i
    [ N covered-call shares, N put shares,  ]  if options       -> c_i = (a + 1) / 2, p_i likewise;
    [ call strike, put strike, tenor        ]                      choices: bin floor((a + 1) / 2 n)

With equity ``E`` (net value: assets minus debt, USD) the targets are: risky value ``w_i (1 + l) E``,
cash ``w_c (1 + l) E``, debt ``l E`` (leverage = debt / equity). Infeasible targets are clipped,
never rejected: ``l <= S / (1 - S)`` with ``S = ltv_buffer * sum_i w_i LTV_i`` (only risky holdings
are collateral), which keeps the target debt within ``ltv_buffer`` of the borrowing capacity. Perp
size ``s_i = -h_i * target units_i`` (``h = 1``: spot fully hedged by a short; ``h = -1``: doubled
by a long). The perps' initial margin ``margin_buffer * sum IMF_i |s_i| index_i`` must fit in the
post-trade cash (USDC is the cross margin); the whole perp book is scaled down pro rata where it
does not. A spot-only ``(B, N + 1)`` action is accepted too: it means no leverage, no hedges and no
options. The options block (:mod:`defialloc.envs.option_book`) asks for short calls on ``c_i`` and long puts on
``p_i`` of the held units of each listed asset, opened at the chosen listed strike and tenor.

Execution lives in :mod:`defialloc.envs.leverage` (decision time) and :mod:`defialloc.envs.leverage_move` (the move).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defialloc.envs.config import EnvConfig
from defialloc.envs.protocols.lending import health_factor_unchecked


@dataclass(frozen=True)
class ActionLayout:
    """Where each block of the action lives (see the module docstring)."""

    n_assets: int
    lending: bool
    perps: bool
    options: bool = False
    #: listed strikes and tenors of the options venue (0 without options)
    n_strikes: int = 0
    n_tenors: int = 0

    @property
    def options_start(self) -> int:
        """Column of the options block's first entry."""
        return self.n_assets + 1 + int(self.lending) + self.n_assets * int(self.perps)

    @property
    def dim(self) -> int:
        return self.options_start + (2 * self.n_assets + 3) * int(self.options)

    @classmethod
    def for_config(cls, env: EnvConfig, n_assets: int) -> ActionLayout:
        """The layout an env with config ``env`` (its lending, perps and options flags) and
        ``n_assets`` takes (the options venue's listing sets the choices' sizes)."""
        if not env.options.enabled:
            return cls(n_assets, env.lending.enabled, env.perps.enabled)
        from defialloc.envs.leverage_paths import resolve_params_path  # noqa: PLC0415 (a heavier module)
        from defialloc.envs.protocols.options_params import load_options_params  # noqa: PLC0415

        venue = load_options_params(resolve_params_path(env.options.params_path))
        return cls(
            n_assets,
            env.lending.enabled,
            env.perps.enabled,
            True,
            len(venue.strikes),
            len(venue.tenors_days),
        )

    def split_options(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The options block of ``(B, dim)`` actions: call-share outputs ``(B, N)``, put-share outputs
        ``(B, N)`` and the choice outputs ``(B, 3)`` (call strike, put strike, tenor).

        A spot-only ``(B, N + 1)`` action (or a layout without options) reads as no options (-1)."""
        b, n = actions.shape[0], self.n_assets
        if not self.options or actions.shape[1] == n + 1:
            return np.full((b, n), -1.0), np.full((b, n), -1.0), np.zeros((b, 3))
        start = self.options_start
        block = actions[:, start : start + 2 * n + 3]
        return block[:, :n], block[:, n : 2 * n], block[:, 2 * n :]

    def split(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(B, dim)`` (or spot-only ``(B, N + 1)``) -> spot ``(B, N+1)``, leverage ``(B,)``, hedges ``(B, N)``.

        Missing blocks read as no leverage (``-1``) and no hedge (``0``).
        """
        n1 = self.n_assets + 1
        b = actions.shape[0]
        spot = actions[:, :n1]
        if actions.shape[1] == n1:
            return spot, np.full(b, -1.0), np.zeros((b, self.n_assets))
        lev = actions[:, n1] if self.lending else np.full(b, -1.0)
        start = n1 + int(self.lending)
        hedge = (
            actions[:, start : start + self.n_assets]
            if self.perps
            else np.zeros((b, self.n_assets))
        )
        return spot, lev, hedge

    def compose(
        self,
        spot: np.ndarray,
        leverage: np.ndarray | float = 0.0,
        hedge: np.ndarray | float = 0.0,
        max_leverage: float = 0.0,
        options: OptionOrder | None = None,
    ) -> np.ndarray:
        """The ``(B, dim)`` action asking for spot outputs ``spot`` ``(B, N+1)``, debt / equity
        ``leverage``, hedge ratios ``hedge`` (scalars or ``(B,)`` / ``(B, N)``) and the option
        order ``options`` (None: no options): the right inverse of :meth:`split`,
        :meth:`split_options` and :func:`leverage_target` before its feasibility clip.

        ``leverage`` must lie in ``[0, max_leverage]`` (the config's ``env.lending.max_leverage``)
        and is only allowed with lending on; ``hedge`` in ``[-1, 1]`` and only with perps on;
        option shares in ``[0, 1]`` and choices among the listed ones, only with options on.
        """
        spot = np.asarray(spot, dtype=np.float64)
        b = spot.shape[0]
        lev = np.broadcast_to(np.asarray(leverage, dtype=np.float64), (b,))
        hedges = np.broadcast_to(np.asarray(hedge, dtype=np.float64), (b, self.n_assets))
        if lev.any() and not self.lending:
            raise ValueError("leverage > 0 needs the lending market (env.lending.enabled=true)")
        if hedges.any() and not self.perps:
            raise ValueError("hedge ratios need the perps venue (env.perps.enabled=true)")
        if not ((lev >= 0.0) & (lev <= max_leverage)).all():
            raise ValueError(
                f"leverage (debt / equity) must be in [0, env.lending.max_leverage={max_leverage}], "
                f"got {lev.min():g}..{lev.max():g}"
            )
        if not ((hedges >= -1.0) & (hedges <= 1.0)).all():
            raise ValueError(
                f"hedge ratios must be in [-1, 1], got {hedges.min():g}..{hedges.max():g}"
            )
        parts = [spot]
        if self.lending:  # inverse of l = (a + 1) / 2 * max_leverage
            a = 2.0 * lev / max_leverage - 1.0 if max_leverage > 0.0 else np.full(b, -1.0)
            parts.append(a[:, None])
        if self.perps:
            parts.append(hedges)
        if options is not None and not self.options:
            raise ValueError("option orders need the options venue (env.options.enabled=true)")
        if self.options:
            parts.append((options or OptionOrder()).outputs(b, self.n_assets, self))
        return np.concatenate(parts, axis=1)

    def safe_action(self) -> np.ndarray:
        """``(dim,)`` action meaning all numeraire, no debt, no perps, no options (the
        kill-switch's target)."""
        action = np.zeros(self.dim)
        action[: self.n_assets] = -1.0
        action[self.n_assets] = 1.0
        if self.lending:
            action[self.n_assets + 1] = -1.0
        if self.options:
            start = self.options_start
            action[start : start + 2 * self.n_assets] = -1.0
        return action


def choice_index(a: np.ndarray, n: int) -> np.ndarray:
    """A choice output in ``[-1, 1]`` -> the index ``floor((a + 1) / 2 n)`` in ``[0, n - 1]`` (int64)."""
    x = (np.minimum(np.maximum(a, -1.0), 1.0) + 1.0) * 0.5 * n
    return np.minimum(x.astype(np.int64), n - 1)


def choice_output(index: np.ndarray | int, n: int) -> np.ndarray:
    """The output in the middle of choice ``index``'s bin (the inverse of :func:`choice_index`)."""
    return 2.0 * (np.asarray(index, dtype=np.float64) + 0.5) / n - 1.0


@dataclass(frozen=True)
class OptionOrder:
    """What an options block asks for, per env: ``call_share`` / ``put_share`` (scalars, ``(B,)`` or
    ``(B, N)`` in ``[0, 1]``: short calls / long puts on that share of each listed asset's held
    units) and the listed ``call_strike`` / ``put_strike`` / ``tenor`` indices (ints or ``(B,)``)."""

    call_share: np.ndarray | float = 0.0
    put_share: np.ndarray | float = 0.0
    call_strike: np.ndarray | int = 0
    put_strike: np.ndarray | int = 0
    tenor: np.ndarray | int = 0

    def outputs(self, b: int, n: int, layout: ActionLayout) -> np.ndarray:
        """The ``(B, 2N + 3)`` options block of the action (target kind: ``a = 2 share - 1``)."""
        calls = np.broadcast_to(np.asarray(self.call_share, dtype=np.float64), (b, n))
        puts = np.broadcast_to(np.asarray(self.put_share, dtype=np.float64), (b, n))
        for name, shares in (("call_share", calls), ("put_share", puts)):
            if not ((shares >= 0.0) & (shares <= 1.0)).all():
                raise ValueError(
                    f"{name} must be in [0, 1], got {shares.min():g}..{shares.max():g}"
                )
        choices = []
        for name, value, size in (
            ("call_strike", self.call_strike, layout.n_strikes),
            ("put_strike", self.put_strike, layout.n_strikes),
            ("tenor", self.tenor, layout.n_tenors),
        ):
            idx = np.broadcast_to(np.asarray(value), (b,))
            if idx.dtype.kind not in "iu" or not ((idx >= 0) & (idx < size)).all():
                raise ValueError(
                    f"{name} must be an integer index in [0, {size - 1}], got {value!r}"
                )
            choices.append(choice_output(idx, size)[:, None])
        return np.concatenate([2.0 * calls - 1.0, 2.0 * puts - 1.0, *choices], axis=1)


def leverage_target(
    leverage_action: np.ndarray,
    weights: np.ndarray,
    ltv: np.ndarray,
    max_leverage: float,
    ltv_buffer: float,
) -> np.ndarray:
    """Target debt / equity ``(B,)``: ``(a + 1) / 2 * max_leverage`` clipped to ``S / (1 - S)``.

    Args:
        leverage_action: ``(B,)`` in [-1, 1] (clipped first).
        weights: ``(B, N + 1)`` target weights, cash last.
        ltv: ``(N,)`` loan-to-value of each risky asset.
    """
    wanted = (np.maximum(np.minimum(leverage_action, 1.0), -1.0) + 1.0) * 0.5 * max_leverage
    return clip_leverage_to_ltv(wanted, weights, ltv, ltv_buffer)


def clip_leverage_to_ltv(
    wanted: np.ndarray, weights: np.ndarray, ltv: np.ndarray, ltv_buffer: float
) -> np.ndarray:
    """Debt / equity ``(B,)`` ``wanted`` clipped to ``S / (1 - S)``, ``S = ltv_buffer * sum_i w_i LTV_i``
    (the target debt stays within ``ltv_buffer`` of the post-trade borrowing capacity).

    Args:
        wanted: ``(B,)`` debt / equity asked for (>= 0).
        weights: ``(B, N + 1)`` target weights, cash last.
        ltv: ``(N,)`` loan-to-value of each risky asset.
    """
    s = ltv_buffer * (weights[:, :-1] * ltv).sum(axis=1)
    return np.minimum(wanted, s / (1.0 - s))


def max_feasible_leverage(ltv: np.ndarray, ltv_buffer: float) -> float:
    """Largest leverage any target can reach: all weight on the highest-LTV asset."""
    s = ltv_buffer * float(np.max(ltv))
    return s / (1.0 - s)


def health_factor_fast(
    units: np.ndarray, price: np.ndarray, liq_threshold: np.ndarray, debt_usd: np.ndarray
) -> np.ndarray:
    """``(B,)`` HF = sum(units * price * LT) / debt, ``inf`` without debt (unchecked hot-path form of
    :func:`defialloc.envs.protocols.lending.health_factor`)."""
    return health_factor_unchecked(units * price, liq_threshold, debt_usd)
