"""Portfolio Greeks per asset, aggregated over spot, perps and options (observation and info).

Per asset ``i`` (sticky-strike Black-76 sensitivities of the options, :mod:`defialloc.envs.option_book`):

* delta ``dV/dS_i`` (USD per USD of the index, i.e. units): spot units + perp size x (1 + basis)
  (the perp mark is ``index x (1 + basis)``) + sum over option slots of units x the option's delta;
* gamma ``d2V/dS_i^2`` (USD per USD^2): the options' only;
* vega: USD per vol point (+0.01 of every implied vol of the asset's options);
* theta: USD per day of calendar time (prices and vols held).

The ``greeks`` observation block scales them by the equity ``V`` (USD) so that an unlevered
portfolio reads O(1): ``delta_i S_i / V`` (the exposure, as a weight), ``gamma_i S_i^2 / V`` (a +1 %
move of ``S_i`` changes the first by this / 100), ``100 vega_i / V`` (% of equity per vol point),
``1e4 theta_i / V`` (bp of equity per day). The backtest records the totals over assets
(:func:`greek_totals`): ``delta_usd = sum_i delta_i S_i`` (USD per +100 % move of every index),
``gamma_usd = sum_i gamma_i S_i^2 / 100`` (change of ``delta_usd`` per +1 % move), ``vega_usd``,
``theta_usd``.
"""

from __future__ import annotations

import numpy as np

#: scales of the observation block's sub-blocks (module docstring), after dividing by the equity
OBS_SCALES = (1.0, 1.0, 100.0, 1e4)


def portfolio_greeks(
    units: np.ndarray,
    perp_size: np.ndarray | None = None,
    perp_basis: np.ndarray | None = None,
    option_units: np.ndarray | None = None,
    option_unit_greeks: np.ndarray | None = None,
) -> np.ndarray:
    """``(B, N, 4)`` delta, gamma, vega per vol point and theta per day of each asset.

    Args:
        units: ``(B, N)`` spot units held. perp_size, perp_basis: ``(B, N)`` signed perp units and
            the basis ``mark / index - 1`` (None without perps). option_units: ``(B, N, 2)`` signed
            units per slot; option_unit_greeks: ``(B, N, 2, 4)`` their per-unit Greeks (None
            without options).
    """
    out = np.zeros((*units.shape, 4))
    out[..., 0] = units
    if perp_size is not None:
        out[..., 0] += perp_size * (1.0 + (0.0 if perp_basis is None else perp_basis))
    if option_units is not None and option_unit_greeks is not None:
        out += (option_units[..., None] * option_unit_greeks).sum(axis=2)
    return out


def greeks_block(
    greeks: np.ndarray, price: np.ndarray, value: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """``(B, 4N)`` the observation block (module docstring), sub-block-major (all deltas first).

    ``greeks`` ``(B, N, 4)``, ``price`` ``(B, N)`` USD, ``value`` ``(B,)`` USD equity (an empty
    account, ``value <= 0``, reads as zeros)."""
    b, n = price.shape
    out = np.empty((b, 4 * n)) if out is None else out
    inv = np.where(value > 0.0, 1.0 / np.where(value > 0.0, value, 1.0), 0.0)[:, None]
    out[:, :n] = greeks[..., 0] * price * inv
    out[:, n : 2 * n] = greeks[..., 1] * price * price * inv
    out[:, 2 * n : 3 * n] = OBS_SCALES[2] * greeks[..., 2] * inv
    out[:, 3 * n :] = OBS_SCALES[3] * greeks[..., 3] * inv
    return out


def greek_totals(greeks: np.ndarray, price: np.ndarray) -> dict[str, np.ndarray]:
    """``(B,)`` totals over assets in USD (module docstring): ``delta_usd``, ``gamma_usd``,
    ``vega_usd``, ``theta_usd``."""
    return {
        "delta_usd": (greeks[..., 0] * price).sum(axis=1),
        "gamma_usd": (greeks[..., 1] * price * price).sum(axis=1) / 100.0,
        "vega_usd": greeks[..., 2].sum(axis=1),
        "theta_usd": greeks[..., 3].sum(axis=1),
    }
