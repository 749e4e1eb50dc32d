"""Perpetual futures math against hand-computed values."""

import numpy as np
import pytest

from defialloc.envs.protocols.params import ProtocolConfigError, load_perps_params
from defialloc.envs.protocols.perps import (
    adverse_price,
    funding_payment_usd,
    funding_rate,
    funding_rate_from_params,
    initial_margin_usd,
    is_liquidatable,
    liquidation_fee_usd,
    maintenance_margin_usd,
    mark_price,
    meets_initial_margin,
    perp_liquidation,
    regime_basis,
    trading_fee_usd,
    unrealized_pnl_usd,
)


def test_mark_price():
    np.testing.assert_allclose(
        mark_price(np.array([100.0, 2000.0]), np.array([0.001, -0.002])), [100.1, 1996.0]
    )
    with pytest.raises(ValueError, match="basis"):
        mark_price(100.0, -1.0)


def test_funding_sign_perp_above_index_longs_pay_shorts_receive():
    rate = funding_rate(101.0, 100.0, 0.05)
    assert rate == pytest.approx(0.01)  # (101 - 100) / 100
    sizes = np.array([2.0, -3.0])  # 2 units long, 3 units short
    pay = funding_payment_usd(sizes, 100.0, rate)
    # long pays 2 USD, short gets 3
    np.testing.assert_allclose(pay, [-0.01 * 2 * 100, +0.01 * 3 * 100])
    assert funding_payment_usd(np.array([5.0, -5.0]), 100.0, rate).sum() == pytest.approx(0.0)


def test_funding_sign_perp_below_index_longs_receive():
    rate = funding_rate(99.5, 100.0, 0.05)
    assert rate == pytest.approx(-0.005)
    np.testing.assert_allclose(funding_payment_usd(np.array([1.0, -1.0]), 100.0, rate), [0.5, -0.5])


def test_funding_clamp_periods_and_interest():
    assert funding_rate(110.0, 100.0, 0.0075) == pytest.approx(0.0075)  # 10 % premium clamped
    assert funding_rate(80.0, 100.0, 0.0075) == pytest.approx(-0.0075)
    assert funding_rate(110.0, 100.0, 0.0075, periods_per_step=3.0) == pytest.approx(3 * 0.0075)
    assert funding_rate(
        100.02, 100.0, 0.0075, periods_per_step=3.0, interest_per_period=0.0001
    ) == pytest.approx(3 * (0.0002 + 0.0001))
    np.testing.assert_allclose(
        funding_rate(np.array([[100.1, 99.0]]), np.array([100.0, 100.0]), 0.005), [[0.001, -0.005]]
    )


def test_funding_from_snapshot_params():
    params = load_perps_params()
    # premium 1 bp per 8 h period, 3 periods per daily step, no interest -> 3 bp per day
    assert funding_rate_from_params(100.01, 100.0, params.funding) == pytest.approx(3 * 0.0001)


def test_regime_basis_means_and_signs():
    params = load_perps_params()
    process = params.basis_by_regime.process(("calm", "bull", "crash"), n_assets=2)
    basis = regime_basis(np.array([0, 1, 2]), process, np.zeros((3, 2)))
    np.testing.assert_allclose(basis, [[0.0001] * 2, [0.0003] * 2, [-0.0003] * 2])
    assert basis[1, 0] > basis[0, 0] > 0 > basis[2, 0]
    draws = regime_basis(np.full(5000, 1), process, np.random.default_rng(0))
    assert draws.shape == (5000, 2)
    assert abs(draws.mean() - 0.0003) < 0.00002


def test_margin_tiers_from_config():
    params = load_perps_params()
    imf, mmf = params.margin_arrays(["BTC", "ETH", "SOL", "DOGE"])
    np.testing.assert_allclose(imf, [0.05, 0.05, 0.10, 0.20])
    np.testing.assert_allclose(mmf, [0.03, 0.03, 0.05, 0.10])
    assert params.liquidation_fee == 0.015
    assert params.trading_fee == 0.0005


def test_maintenance_liquidation_at_the_boundary():
    # BTC notional 100,000 at MMF 3 % plus SOL notional 20,000 (short) at MMF 5 %
    notional = np.array([100_000.0, -20_000.0])
    mmf = np.array([0.03, 0.05])
    mm = 100_000 * 0.03 + 20_000 * 0.05  # 4,000
    assert maintenance_margin_usd(notional, mmf) == pytest.approx(mm)
    equity = np.array([mm, mm - 0.01, mm + 0.01, 0.0])
    np.testing.assert_array_equal(
        is_liquidatable(equity, notional, mmf), [False, True, False, True]
    )


def test_initial_margin():
    notional = np.array([100_000.0, 20_000.0])
    imf = np.array([0.05, 0.10])
    assert initial_margin_usd(notional, imf) == pytest.approx(5_000 + 2_000)
    np.testing.assert_array_equal(
        meets_initial_margin(np.array([7_000.0, 6_999.0]), notional, imf), [True, False]
    )


def test_perp_liquidation_fee_and_insurance():
    size = np.array([[2.0, -100.0], [2.0, -100.0], [2.0, -100.0]])  # 2 BTC long, 100 SOL short
    price = np.array([50_000.0, 200.0])  # notional 100,000 + 20,000; MM = 3,000 + 1,000
    mmf = np.array([0.03, 0.05])
    res = perp_liquidation(np.array([3_000.0, -500.0, 5_000.0]), size, price, mmf, 0.015)
    np.testing.assert_array_equal(res.liquidated, [True, True, False])
    np.testing.assert_allclose(res.fee_usd, [0.015 * 120_000, 0.0, 0.0])  # 1,800 fits in 3,000
    np.testing.assert_allclose(res.equity_after_usd, [3_000 - 1_800, 0.0, 5_000.0])
    np.testing.assert_allclose(res.insurance_loss_usd, [0.0, 500.0, 0.0])
    np.testing.assert_allclose(res.closed_size_units, [[2.0, -100.0], [2.0, -100.0], [0.0, 0.0]])
    # fee capped at what is left: equity 1,000 < fee 1,800
    small = perp_liquidation(np.array([1_000.0]), size[:1], price, mmf, 0.015)
    np.testing.assert_allclose(small.fee_usd, [1_000.0])
    np.testing.assert_allclose(small.equity_after_usd, [0.0])


def test_unchecked_perp_liquidation_equals_the_validated_one():
    rng = np.random.default_rng(3)
    size = rng.uniform(-5.0, 5.0, (30, 2))
    price = rng.uniform(100.0, 1_000.0, (30, 2))
    equity = rng.uniform(-200.0, 400.0, 30)
    mmf = np.array([0.03, 0.05])
    checked = perp_liquidation(equity, size, price, mmf, 0.015)
    fast = perp_liquidation(equity, size, price, mmf, 0.015, validate=False)
    assert checked.liquidated.any() and not checked.liquidated.all()
    for field in (
        "liquidated",
        "fee_usd",
        "equity_after_usd",
        "insurance_loss_usd",
        "closed_size_units",
    ):
        np.testing.assert_array_equal(getattr(fast, field), getattr(checked, field), err_msg=field)
    with pytest.raises(ValueError, match="price"):
        perp_liquidation(equity, size, -price, mmf, 0.015)


def test_fees_pnl_and_adverse_price():
    assert trading_fee_usd(
        np.array([2.0, -3.0]), np.array([30_000.0, 100.0]), 0.0005
    ).tolist() == pytest.approx([0.0005 * 2 * 30_000, 0.0005 * 3 * 100])
    assert liquidation_fee_usd(np.array([100_000.0, -20_000.0])) == pytest.approx(0.015 * 120_000)
    np.testing.assert_allclose(
        unrealized_pnl_usd(np.array([-2.0, 1.0]), np.array([100.0, 100.0]), 90.0), [20.0, -10.0]
    )
    np.testing.assert_allclose(
        adverse_price(
            np.array([1.0, -1.0, 0.0]),
            np.array([90.0, 90.0, 90.0]),
            np.array([110.0, 110.0, 110.0]),
        ),
        [90.0, 110.0, 90.0],
    )
    with pytest.raises(ValueError, match="high"):
        adverse_price(np.array([1.0]), np.array([110.0]), np.array([90.0]))
    with pytest.raises(ValueError, match="fee_rate"):
        trading_fee_usd(np.array([1.0]), np.array([1.0]), -0.001)


def _raw() -> dict:
    return load_perps_params().model_dump(mode="json")


@pytest.mark.parametrize(
    ("path", "value", "pattern"),
    [
        (("margin_tiers", "mid_cap", "maintenance"), 0.10, "maintenance=0.1 must be < initial=0.1"),
        (("asset_tier", "BTC"), "mega_cap", "asset_tier.BTC='mega_cap' must be one of"),
        (("default_tier",), "tiny", "default_tier='tiny'"),
        (("liquidation_fee",), -0.01, r"liquidation_fee = -0\.01"),
        (("trading_fee",), 0.05, r"trading_fee = 0\.05"),
        (("funding", "clamp_per_period"), 0.0, r"funding\.clamp_per_period = 0\.0"),
        (
            ("basis_by_regime", "regimes", "bull", "mean"),
            0.5,
            r"regimes\.bull\.mean=0\.5 must lie in",
        ),
    ],
)
def test_perps_config_errors_name_the_field(path, value, pattern):
    raw = _raw()
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ProtocolConfigError, match=pattern):
        load_perps_params(raw)
