"""Protocol paths: the agent-independent lending and perps series of every env, built at reset.

Borrow and supply rates (from the regime-driven utilization) and the perp basis, mark and funding
depend only on the market path and the path's seed, never on the agent. Generating them once per
episode (vectorized over the envs that reset; the regime AR(1) as a linear filter) keeps the
per-step cost to a few array gathers. (The borrower population of the cascades is stepped with the
envs instead: envs/leverage_population.py.)

Randomness: env ``i`` draws its utilization shocks from ``np.random.default_rng([seed_i, 1])`` and
its basis shocks from ``np.random.default_rng([seed_i, 2])``, so a path's protocol series are the
same whether it runs alone or in a batch (batched == single, exactly).

Arrays are ``(B, L)`` or ``(B, L, N)`` (env, time point of the market path, asset). Values at
times before ``warmup`` are unused (set to the value at ``warmup``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.protocols.lending import (
    borrow_rate_unchecked,
    regime_utilization,
    supply_rate_unchecked,
)
from defialloc.envs.protocols.params import (
    LendingParams,
    PerpsParams,
    RegimeProcess,
    ReserveArrays,
    load_lending_params,
    load_perps_params,
)
from defialloc.envs.protocols.perps import funding_rate_from_params, mark_price, regime_basis

DAYS_PER_YEAR = 365.0
UTILIZATION_STREAM = 1
BASIS_STREAM = 2


def resolve_params_path(name: str) -> Path:
    """A protocol params path as given if it exists (absolute or from the cwd), else from the repo root."""
    path = Path(name)
    if path.is_absolute() or path.exists():
        return path
    return Path(__file__).resolve().parent.parent / path


@dataclass(frozen=True)
class ProtocolSetup:
    """Loaded protocol parameters as arrays in the simulator's asset order (``N`` risky assets).

    ``reserves`` are the risky assets' lending parameters, ``debt_reserve`` the numeraire's; ``imf`` /
    ``mmf`` the perp margin fractions ``(N,)``. Either side is None when its protocol is not needed.
    """

    asset_names: tuple[str, ...]
    lending: LendingParams | None
    reserves: ReserveArrays | None
    debt_reserve: ReserveArrays | None
    perps: PerpsParams | None
    imf: np.ndarray | None
    mmf: np.ndarray | None

    @classmethod
    def load(
        cls,
        asset_names: tuple[str, ...],
        lending_path: str | None,
        perps_path: str | None,
    ) -> ProtocolSetup:
        lending = reserves = debt_reserve = None
        if lending_path is not None:
            lending = load_lending_params(resolve_params_path(lending_path))
            reserves = lending.reserve_arrays(asset_names)
            debt_reserve = lending.reserve_arrays([lending.debt_asset])
        perps = imf = mmf = None
        if perps_path is not None:
            perps = load_perps_params(resolve_params_path(perps_path))
            imf, mmf = perps.margin_arrays(asset_names)
        return cls(asset_names, lending, reserves, debt_reserve, perps, imf, mmf)


def regime_path(
    process: RegimeProcess, regime_codes: np.ndarray, noise: np.ndarray, draw: object
) -> np.ndarray:
    """Run a regime AR(1) along time: ``(b, T)`` codes and ``(b, T, C)`` shocks -> ``(b, T, C)`` values.

    ``draw`` is the protocol's one-step function (``regime_utilization`` or ``regime_basis``); the
    first step starts from the stationary distribution of its regime. Reference implementation of
    :func:`fast_regime_path`.
    """
    out = np.empty(noise.shape)
    previous = None
    for t in range(noise.shape[1]):
        previous = draw(regime_codes[:, t], process, noise[:, t], previous)  # type: ignore[operator]
        out[:, t] = previous
    return out


def fast_regime_path(
    process: RegimeProcess, regime_codes: np.ndarray, noise: np.ndarray, draw: object
) -> np.ndarray:
    """:func:`regime_path` as a linear filter (equal to ~1e-15), for paths that never touch the bounds.

    ``x_t = phi x_{t-1} + (1 - phi) m_t + sqrt(1 - phi^2) s_t eps_t`` is an IIR filter of its input;
    the clip of every step only matters on a path that leaves ``[lower, upper]``, and such rows are
    recomputed exactly as the step-by-step reference does (:func:`_clipped_path`), so the result
    never depends on the batch. Returns a ``(b, T, C)`` view of :func:`fast_regime_path_time_major`.
    """
    return fast_regime_path_time_major(process, regime_codes, noise, draw).transpose(1, 0, 2)


def fast_regime_path_time_major(
    process: RegimeProcess, regime_codes: np.ndarray, noise: np.ndarray, draw: object
) -> np.ndarray:
    """:func:`fast_regime_path` as a C-contiguous time-major ``(T, b, C)`` array.

    Args: ``regime_codes`` ``(b, T)``, ``noise`` ``(b, T, C)`` (as :func:`regime_path`).
    """
    phi = np.broadcast_to(np.asarray(process.persistence, dtype=float), process.mean.shape[-1:])
    codes = regime_codes.T
    # per-regime tables (R, C) gathered once: sqrt(1 - phi^2) s eps + (1 - phi) m
    drive = np.take(np.sqrt(1.0 - phi * phi) * process.std, codes, axis=0)
    drive *= noise.transpose(1, 0, 2)
    drive += np.take((1.0 - phi) * process.mean, codes, axis=0)
    drive[0] = process.mean[codes[0]] + process.std[codes[0]] * noise[:, 0]  # stationary start
    out = _ar1_filter(drive, phi)
    outside = (out.min(axis=0) < process.lower) | (out.max(axis=0) > process.upper)
    rows = np.flatnonzero(outside.any(axis=1))
    if rows.size:
        out[:, rows] = _clipped_path(process, regime_codes[rows], noise[rows], draw)
    return out


# From this many values per time step, a Python loop over time (two ufuncs per step) filters faster
# than scipy's lfilter (~5 ns per value).
_LOOP_MIN_ROW = 256


def _ar1_filter(drive: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """``y_t = drive_t + phi * y_{t-1}`` (``y_{-1} = 0``) along axis 0 of C-contiguous ``(T, b, C)``.

    ``phi`` ``(C,)``. Bit-identical to ``lfilter([1], [1, -phi_c], ..., axis=0)`` per column: both
    round ``phi * y_{t-1}`` and then the sum (up to the sign of exact zeros).
    """
    if drive[0].size >= _LOOP_MIN_ROW:
        y = np.empty_like(drive)
        y[0] = drive[0]
        rows_x, rows_y = drive.reshape(len(drive), -1), y.reshape(len(y), -1)
        coef = np.broadcast_to(phi, drive.shape[1:]).ravel()
        multiply, add = np.multiply, np.add
        for x, prev, nxt in zip(rows_x[1:], rows_y[:-1], rows_y[1:], strict=True):
            multiply(prev, coef, nxt)
            add(nxt, x, nxt)
        return y
    if (phi == phi[0]).all():  # one coefficient: a single filter call
        return lfilter([1.0], [1.0, -phi[0]], drive, axis=0)
    y = np.empty(drive.shape)
    for value in np.unique(phi):
        cols = np.flatnonzero(phi == value)
        y[..., cols] = lfilter([1.0], [1.0, -value], drive[..., cols], axis=0)
    return y


def _clipped_path(
    process: RegimeProcess, regime_codes: np.ndarray, noise: np.ndarray, draw: object
) -> np.ndarray:
    """:func:`regime_path`, bit for bit, time-major ``(T, b, C)``; each step is six in-place ufuncs.

    ``draw`` makes the first (stationary) step, which also validates the process; the later steps
    repeat its arithmetic: ``clip(m + phi (x - m) + sqrt(1 - phi^2) s eps, lower, upper)``.
    """
    b, steps, c = noise.shape
    phi = np.asarray(process.persistence, dtype=float)
    codes = regime_codes.T  # time-major (T, b): each step reads a contiguous row
    mean = np.take(process.mean, codes, axis=0).reshape(steps, b * c)
    shock = np.take(np.sqrt(1.0 - phi * phi) * process.std, codes, axis=0)
    shock *= noise.transpose(1, 0, 2)
    shock = shock.reshape(steps, b * c)
    out = np.empty((steps, b * c))
    out[0] = np.reshape(draw(regime_codes[:, 0], process, noise[:, 0], None), -1)  # type: ignore[operator]
    phi, lower, upper = (
        np.broadcast_to(np.asarray(v, dtype=float), (b, c)).ravel()
        for v in (process.persistence, process.lower, process.upper)
    )
    subtract, multiply, add = np.subtract, np.multiply, np.add
    maximum, minimum = np.maximum, np.minimum
    for t in range(1, steps):
        x, m = out[t], mean[t]
        subtract(out[t - 1], m, x)
        multiply(x, phi, x)
        add(x, m, x)
        add(x, shock[t], x)
        maximum(x, lower, out=x)  # np.clip(x, lower, upper), without its Python-level wrapper
        minimum(x, upper, out=x)
    return out.reshape(steps, b, c)


def path_noise(seeds: np.ndarray, stream: int, steps: int, columns: int) -> np.ndarray:
    """``(b, steps, columns)`` standard normals, row ``i`` from ``default_rng([seeds[i], stream])``."""
    out = np.empty((len(seeds), steps, columns))
    for row, seed in zip(out, seeds, strict=True):
        np.random.default_rng([int(seed), stream]).standard_normal(out=row)
    return out


class ProtocolPaths:
    """Per-env protocol series for ``n_envs`` envs on market paths of ``length`` points.

    Attributes (allocated only for the protocols that are on):
        borrow_rate: ``(B, L)`` annual borrow rate of the numeraire debt at each time.
        debt_growth: ``(B, L)`` debt multiplier over the step ``tau -> tau + 1`` (``exp(r dt)``).
        cash_supply_rate: ``(B, L)`` annual supply rate of the numeraire (what supplied cash earns).
        cash_growth: ``(B, L)`` supplied-cash multiplier over the step (``1 + r dt``).
        supply_rate: ``(B, L, N)`` annual supply rate of each risky asset.
        supply_growth: ``(B, L, N)`` supplied-units multiplier over the step (``1 + r dt``).
        basis: ``(B, L, N)`` perp premium ``(mark - index) / index``.
        mark: ``(B, L, N)`` perp mark price, USD.
        funding: ``(B, L, N)`` funding rate over the step ``tau -> tau + 1`` (fraction of notional,
            > 0: longs pay).
    """

    def __init__(
        self,
        setup: ProtocolSetup,
        n_envs: int,
        length: int,
        *,
        lending: bool,
        perps: bool,
        step_days: float,
    ) -> None:
        b, n = n_envs, len(setup.asset_names)
        self.setup = setup
        self.lending, self.perps = lending, perps
        self.dt_years = step_days / DAYS_PER_YEAR
        self.step_days = step_days
        self._processes: dict[
            tuple[str, ...], tuple[RegimeProcess | None, RegimeProcess | None]
        ] = {}
        if lending and setup.reserves is not None and setup.debt_reserve is not None:
            # kinked-rate parameters of the utilization columns: the debt reserve, then the assets'
            self._rate_params = tuple(
                np.concatenate([getattr(setup.debt_reserve, f), getattr(setup.reserves, f)])
                for f in ("base", "slope1", "slope2", "u_optimal", "reserve_factor")
            )
        if lending:
            self.borrow_rate = np.zeros((b, length))
            self.debt_growth = np.ones((b, length))
            self.cash_supply_rate = np.zeros((b, length))
            self.cash_growth = np.ones((b, length))
            self.supply_rate = np.zeros((b, length, n))
            self.supply_growth = np.ones((b, length, n))
        if perps:
            self.basis = np.zeros((b, length, n))
            self.mark = np.ones((b, length, n))
            self.funding = np.zeros((b, length, n))

    def _regime_processes(
        self, regime_names: tuple[str, ...]
    ) -> tuple[RegimeProcess | None, RegimeProcess | None]:
        if regime_names not in self._processes:
            setup = self.setup
            util = basis = None
            if self.lending and setup.lending is not None:
                util = setup.lending.utilization_process(
                    regime_names, [setup.lending.debt_asset, *setup.asset_names]
                )
            if self.perps and setup.perps is not None:
                basis = setup.perps.basis_by_regime.process(regime_names, len(setup.asset_names))
            self._processes[regime_names] = (util, basis)
        return self._processes[regime_names]

    def reset(self, index: np.ndarray, paths: MarketPaths, seeds: np.ndarray) -> None:
        """Generate the series of envs ``index`` for ``paths`` (``len(index)`` paths) and ``seeds``."""
        self.assign(index, self.generate(paths, seeds))

    def generate(self, paths: MarketPaths, seeds: np.ndarray) -> dict[str, np.ndarray]:
        """The series of ``paths`` drawn from ``seeds`` ``(K,)``: ``{name: (K, L, ...) array}``, named
        as this object's attributes. Path ``k``'s series depend only on ``seeds[k]`` and path ``k``."""
        codes = paths.regime[:, paths.warmup :]
        util_process, basis_process = self._regime_processes(paths.regime_names)
        series: dict[str, np.ndarray] = {}
        if util_process is not None:
            series.update(self._rates(paths.warmup, seeds, codes, util_process))
        if basis_process is not None:
            series.update(self._perps(paths, seeds, codes, basis_process))
        return series

    def assign(self, index: np.ndarray, series: dict[str, np.ndarray]) -> None:
        """Install :meth:`generate`'s ``series`` as the series of envs ``index``."""
        rows = _as_slice(index)
        for name, values in series.items():
            getattr(self, name)[rows] = values

    def _perps(
        self,
        paths: MarketPaths,
        seeds: np.ndarray,
        codes: np.ndarray,
        process: RegimeProcess,
    ) -> dict[str, np.ndarray]:
        noise = path_noise(seeds, BASIS_STREAM, codes.shape[1], paths.n_assets)
        basis = fast_regime_path_time_major(process, codes, noise, regime_basis)
        basis = _with_history(basis.transpose(1, 0, 2), paths.warmup)
        mark = mark_price(paths.close, basis)
        funding = funding_rate_from_params(mark, paths.close, self.setup.perps.funding)  # type: ignore[union-attr]
        funding *= self.step_days  # the venue's periods_per_step counts 8 h periods per daily step
        return {"basis": basis, "mark": mark, "funding": funding}

    def _rates(
        self,
        warmup: int,
        seeds: np.ndarray,
        codes: np.ndarray,
        process: RegimeProcess,
    ) -> dict[str, np.ndarray]:
        """Rates from the utilization of the debt reserve (column 0) and the N collateral reserves."""
        noise = path_noise(seeds, UTILIZATION_STREAM, codes.shape[1], process.mean.shape[1])
        util = fast_regime_path_time_major(process, codes, noise, regime_utilization)
        # utilization is clipped to [lower, upper] within [0, 1] and the parameters come from a
        # validated snapshot, so the public functions' range checks are skipped here. The columns
        # are flattened with the parameters tiled to match: per-column (C,) operands would make
        # numpy run its inner loops over C values only (~3x slower).
        steps, b, c = util.shape
        flat = util.reshape(steps, b * c)
        base, slope1, slope2, u_opt, reserve_factor = (np.tile(a, b) for a in self._rate_params)
        borrow = borrow_rate_unchecked(flat, base, slope1, slope2, u_opt)
        all_supply = supply_rate_unchecked(flat, borrow, reserve_factor).reshape(steps, b, c)
        supply, cash_supply = all_supply[..., 1:], all_supply[..., 0]
        debt_borrow = borrow.reshape(steps, b, c)[..., 0]
        # accrue_debt / accrue_supply of a unit balance (same arithmetic, rates >= 0 by construction)
        return {
            name: _with_history(np.moveaxis(values, 0, 1), warmup)
            for name, values in (
                ("borrow_rate", debt_borrow),
                ("debt_growth", np.exp(debt_borrow * self.dt_years)),
                ("supply_rate", supply),
                ("supply_growth", 1.0 + supply * self.dt_years),
                ("cash_supply_rate", cash_supply),
                ("cash_growth", 1.0 + cash_supply * self.dt_years),
            )
        }


def _with_history(series: np.ndarray, warmup: int) -> np.ndarray:
    """``(b, warmup + T, ...)``: ``series`` ``(b, T, ...)`` preceded by ``warmup`` copies of its first value."""
    out = np.empty((series.shape[0], warmup + series.shape[1], *series.shape[2:]))
    out[:, warmup:] = series
    out[:, :warmup] = series[:, :1]
    return out


def _as_slice(index: np.ndarray) -> np.ndarray | slice:
    """``index`` as a slice when it is a run of consecutive env indices (basic indexing copies
    whole rows at memory speed), else unchanged."""
    index = np.asarray(index)
    if index.ndim != 1 or index.size == 0 or index.dtype.kind not in "iu":
        return index
    first = int(index[0])
    if first >= 0 and (
        index.size == 1 or np.array_equal(index, np.arange(first, first + index.size))
    ):
        return slice(first, first + index.size)
    return index
