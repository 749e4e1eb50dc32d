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

from envs.market.paths import MarketPaths
from envs.protocols.lending import (
    accrue_debt,
    accrue_supply,
    regime_utilization,
    reserve_rates,
)
from envs.protocols.params import (
    LendingParams,
    PerpsParams,
    RegimeProcess,
    ReserveArrays,
    load_lending_params,
    load_perps_params,
)
from envs.protocols.perps import funding_rate_from_params, mark_price, regime_basis

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
    recomputed with the step-by-step reference, so the result never depends on the batch.
    """
    mean = process.mean[regime_codes]
    std = process.std[regime_codes]
    phi = np.broadcast_to(np.asarray(process.persistence, dtype=float), mean.shape[-1:])
    drive = (1.0 - phi) * mean + np.sqrt(1.0 - phi * phi) * std * noise
    drive[:, 0] = mean[:, 0] + std[:, 0] * noise[:, 0]  # stationary start
    out = np.empty(noise.shape)
    for value in np.unique(phi):
        cols = np.flatnonzero(phi == value)
        out[..., cols] = lfilter([1.0], [1.0, -value], drive[..., cols], axis=1)
    lower = np.broadcast_to(np.asarray(process.lower, dtype=float), phi.shape)
    upper = np.broadcast_to(np.asarray(process.upper, dtype=float), phi.shape)
    outside = ((out < lower) | (out > upper)).any(axis=(1, 2))
    if outside.any():
        rows = np.flatnonzero(outside)
        out[rows] = regime_path(process, regime_codes[rows], noise[rows], draw)
    return out


def path_noise(seeds: np.ndarray, stream: int, steps: int, columns: int) -> np.ndarray:
    """``(b, steps, columns)`` standard normals, row ``i`` from ``default_rng([seeds[i], stream])``."""
    return np.stack(
        [np.random.default_rng([int(s), stream]).standard_normal((steps, columns)) for s in seeds]
    )


class ProtocolPaths:
    """Per-env protocol series for ``n_envs`` envs on market paths of ``length`` points.

    Attributes (allocated only for the protocols that are on):
        borrow_rate: ``(B, L)`` annual borrow rate of the numeraire debt at each time.
        debt_growth: ``(B, L)`` debt multiplier over the step ``tau -> tau + 1`` (``exp(r dt)``).
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
        if lending:
            self.borrow_rate = np.zeros((b, length))
            self.debt_growth = np.ones((b, length))
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
        w = paths.warmup
        codes = paths.regime[:, w:]
        steps = codes.shape[1]
        util_process, basis_process = self._regime_processes(paths.regime_names)
        if util_process is not None:
            self._reset_rates(index, paths, seeds, codes, util_process)
        if basis_process is not None:
            noise = path_noise(seeds, BASIS_STREAM, steps, paths.n_assets)
            basis = fast_regime_path(basis_process, codes, noise, regime_basis)
            self.basis[index, w:] = basis
            self.basis[index, :w] = basis[:, :1]
            self.mark[index] = mark_price(paths.close, self.basis[index])
            funding = funding_rate_from_params(
                self.mark[index], paths.close, self.setup.perps.funding
            )  # type: ignore[union-attr]
            # the venue's periods_per_step counts 8 h periods per daily step
            self.funding[index] = funding * self.step_days

    def _reset_rates(
        self,
        index: np.ndarray,
        paths: MarketPaths,
        seeds: np.ndarray,
        codes: np.ndarray,
        process: RegimeProcess,
    ) -> None:
        w, n = paths.warmup, paths.n_assets
        noise = path_noise(seeds, UTILIZATION_STREAM, codes.shape[1], n + 1)
        util = fast_regime_path(process, codes, noise, regime_utilization)
        setup = self.setup
        debt_borrow, _ = reserve_rates(util[..., 0], setup.debt_reserve)  # type: ignore[arg-type]
        _, asset_supply = reserve_rates(util[..., 1:], setup.reserves)  # type: ignore[arg-type]
        self.borrow_rate[index, w:] = debt_borrow
        self.borrow_rate[index, :w] = debt_borrow[:, :1]
        self.supply_rate[index, w:] = asset_supply
        self.supply_rate[index, :w] = asset_supply[:, :1]
        self.debt_growth[index] = accrue_debt(1.0, self.borrow_rate[index], self.dt_years)
        self.supply_growth[index] = accrue_supply(1.0, self.supply_rate[index], self.dt_years)
