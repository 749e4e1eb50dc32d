"""No free lunch: simple adversarial policies must not beat holding cash net of costs.

Any edge a policy finds in the simulator must be one a real trader could have had. These tests run
simple policies that would profit from an artifact of the simulator (buying from pools a cascade
pushed under the market, a carry the protocols pay twice, a funding or insurance asymmetry, a
round trip that earns instead of paying) on many seeds of the DeFi market (lending, perps and
cascades on, no kill-switch) whose prices are martingales in USD: the ``arithmetic`` drift with a
zero expected return (``simple_return_per_year: 0``), so that in expectation no exposure earns
anything and every policy's excess over cash is its costs, carries and any artifact.

Two measures per policy, per scenario, relative to the all-cash policy on the same path (paired):

* ``excess``: final value minus the cash policy's, as a fraction of the initial value;
* ``flows``: the same without the market PnL of the positions held (by the accounting identity:
  minus every cost kind plus insurance and bad debt). Its variance is far smaller, so an artifact in
  the costs, carries or liquidations shows up with a few hundred seeds.

"Does not beat cash" = the mean is not significantly above zero (mean - 2.5 standard errors <= 0).
Seeds: a block of their own (``SIMULATOR_CHECK_SEEDS``), neither validation nor test scenarios.
"""

from __future__ import annotations

import numpy as np
import pytest

from defialloc.agents.policy import FixedLeveredPolicy, FixedWeightsPolicy, MarketView, Policy
from defialloc.envs.config import SimulationConfig, load_config
from defialloc.evaluation.backtest import BacktestResult, run_backtest
from defialloc.evaluation.rollout import EpisodeRecord
from defialloc.evaluation.statistics import paired_difference_ci

pytestmark = pytest.mark.slow

SIMULATOR_CHECK_SEEDS = np.arange(5_000_000, 5_000_256, dtype=np.int64)
HORIZON = 180
MARTINGALE = {
    "market.synthetic.drift.kind": "arithmetic",
    "market.synthetic.drift.simple_return_per_year": 0.0,
}
DEFI = {"env.kill_switch.enabled": False, "env.horizon": HORIZON}
Z = 2.5  # one-sided significance threshold (standard errors)


def defi_config(**overrides) -> SimulationConfig:
    return load_config("configs/leverage.yaml", {**MARTINGALE, **DEFI, **overrides})


# ---------------------------------------------------------------------------------- policies
class DailyRoundTrip(Policy):
    """All in equal weight one day, all cash the next: a round trip every two days."""

    name = "daily_round_trip"

    def target_weights(self, view: MarketView) -> np.ndarray:
        n = len(view.asset_names)
        invested = np.append(np.full(n, 1.0 / n), 0.0)
        cash = np.append(np.zeros(n), 1.0)
        return np.where((view.step % 2 == 0)[:, None], invested, cash)


class BuyAfterDrop(Policy):
    """Cash, except for one step right after the assets fell on average by more than ``drop``
    (the days the borrower population's cascades sell into the pools): then equal weight."""

    name = "buy_after_drop"
    lookback = 2

    def __init__(self, drop: float = 0.06) -> None:
        self.drop = drop
        self.buys = 0

    def target_weights(self, view: MarketView) -> np.ndarray:
        n = len(view.asset_names)
        fell = (view.prices[:, -1] / view.prices[:, -2] - 1.0).mean(axis=1) < -self.drop
        self.buys += int(fell.sum())
        invested = np.append(np.full(n, 1.0 / n), 0.0)
        return np.where(fell[:, None], invested, np.append(np.zeros(n), 1.0))


def _weights(n: int, **by_index: float) -> np.ndarray:
    w = np.zeros(n + 1)
    for i, value in by_index.items():
        w[int(i.removeprefix("a"))] = value
    w[-1] = 1.0 - w[:-1].sum()
    return w


@pytest.fixture(scope="module")
def defi_backtest() -> BacktestResult:
    cfg = defi_config()
    n = len(cfg.market.assets)
    eth = cfg.market.assets.index("ETH")
    half_risky = np.append(np.full(n, 0.5 / n), 0.5)
    lev = 0.25  # debt / equity: the borrowed cash is held, the ETH exposure stays at 0.5 E
    policies = [
        FixedWeightsPolicy(_weights(n), name="cash"),
        DailyRoundTrip(),
        BuyAfterDrop(),
        FixedWeightsPolicy(np.append(np.full(n, 1.0 / n), 0.0), name="supply_only"),
        FixedWeightsPolicy(_weights(n, **{f"a{eth}": 0.5}), name="eth_half"),
        FixedLeveredPolicy(
            _weights(n, **{f"a{eth}": 0.5 / (1 + lev)}),
            cfg,
            leverage=lev,
            name="borrow_and_hold_cash",
        ),
        FixedLeveredPolicy(half_risky, cfg, hedge=0.0, name="spot_half"),
        FixedLeveredPolicy(half_risky, cfg, hedge=-1.0, name="spot_half_long_perp"),
        FixedLeveredPolicy(half_risky, cfg, hedge=1.0, name="spot_half_short_perp"),
    ]
    return run_backtest(cfg, policies, SIMULATOR_CHECK_SEEDS, progress=False)


def _final(rec: EpisodeRecord) -> np.ndarray:
    return rec.value_usd[:, -1] / rec.value_usd[:, 0]


def _flows(rec: EpisodeRecord) -> np.ndarray:
    """Per scenario, the value change that is not market PnL, over the initial value: minus every
    cost kind plus insurance and bad debt (the accounting identity's non-market terms)."""
    costs = sum(series.sum(axis=1) for series in rec.costs_usd.values())
    back = sum(
        np.nan_to_num(rec.extras[k]).sum(axis=1)
        for k in ("insurance_usd", "bad_debt_usd")
        if k in rec.extras
    )
    return (back - costs) / rec.value_usd[:, 0]


def _upper(x: np.ndarray) -> tuple[float, float]:
    """Mean and mean - Z standard errors (the mean is significantly > 0 iff the second is > 0)."""
    mean = float(x.mean())
    return mean, mean - Z * float(x.std(ddof=1)) / np.sqrt(x.size)


def _check_not_beating(result: BacktestResult, name: str, against: str = "cash") -> None:
    rec, ref = result.records[name], result.records[against]
    for label, x in (
        ("excess", _final(rec) - _final(ref)),
        ("flows", _flows(rec) - _flows(ref)),
    ):
        mean, low = _upper(x)
        assert low <= 0.0, f"{name} beats {against} on {label}: mean {mean:+.5f}, low {low:+.5f}"


# ---------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize(
    "name", ["daily_round_trip", "buy_after_drop", "supply_only", "borrow_and_hold_cash"]
)
def test_adversarial_policy_does_not_beat_cash(defi_backtest, name):
    _check_not_beating(defi_backtest, name)


def test_buy_after_drop_actually_bought_after_cascades(defi_backtest):
    """The policy has power: it traded on many cascade days (else the test above proves nothing)."""
    rec = defi_backtest.records["buy_after_drop"]
    assert rec.turnover.astype(bool).sum() > 40
    cascade_days = defi_backtest.records["supply_only"].extras
    assert "liquidations" in cascade_days  # the DeFi market is on


def test_round_trip_pays_its_costs(defi_backtest):
    """A round trip every two days loses its trading costs: strictly, in every scenario's flows."""
    flows = _flows(defi_backtest.records["daily_round_trip"])
    cash = _flows(defi_backtest.records["cash"])
    assert np.all(flows < cash)


def test_borrowing_to_hold_cash_loses_the_rate_spread(defi_backtest):
    """Borrowed cash earns the numeraire's supply rate and pays its borrow rate (> supply rate):
    against the same ETH exposure without debt it loses, significantly."""
    rec = defi_backtest.records["borrow_and_hold_cash"]
    twin = defi_backtest.records["eth_half"]
    assert np.nanmax(rec.extras["debt_usd"]) > 0.0
    diff = _flows(rec) - _flows(twin)
    mean, _ = _upper(diff)
    assert mean < 0.0 and mean + Z * diff.std(ddof=1) / np.sqrt(diff.size) < 0.0


def test_a_long_and_a_short_perp_together_do_not_beat_the_spot_alone(defi_backtest):
    """Funding and perp PnL are transfers between longs and shorts: a long and a short perp of the
    same size on the same spot book pay fees (and liquidation costs) and earn nothing together."""
    recs = defi_backtest.records
    assert np.nanmax(recs["spot_half_short_perp"].extras["perp_notional_usd"]) > 0.0
    pair = (
        _final(recs["spot_half_long_perp"])
        + _final(recs["spot_half_short_perp"])
        - 2.0 * _final(recs["spot_half"])
    )
    mean, low = _upper(pair)
    assert low <= 0.0, f"long + short perp beat the spot: mean {mean:+.5f}"
    for name in ("spot_half_long_perp", "spot_half_short_perp"):
        _check_not_beating(defi_backtest, name, against="spot_half")


# ------------------------------------------------------------------- equal weight and cascades
@pytest.fixture(scope="module")
def daily_equal_weight() -> dict[bool, BacktestResult]:
    """Equal weight rebalanced every day (no band) with cascades on and off, same paths, the
    calibrated (default) drift."""
    out = {}
    for cascades in (True, False):
        cfg = load_config(
            "configs/leverage.yaml",
            {**DEFI, "env.cascades.enabled": cascades, "env.action.no_trade_band": 0.0},
        )
        n = len(cfg.market.assets)
        ew = FixedWeightsPolicy(np.append(np.full(n, 1.0 / n), 0.0), name="equal_weight_daily")
        out[cascades] = run_backtest(cfg, [ew], SIMULATOR_CHECK_SEEDS[:128], progress=False)
    return out


def test_daily_equal_weight_pays_non_negative_slippage_in_every_episode(daily_equal_weight):
    rec = daily_equal_weight[True].records["equal_weight_daily"]
    slippage = rec.costs_usd["slippage"].sum(axis=1)
    assert np.all(slippage >= 0.0), f"negative episode slippage: {slippage.min():.2f} USD"


def test_cascades_do_not_raise_equal_weights_sharpe(daily_equal_weight):
    sharpe = {}
    for cascades, result in daily_equal_weight.items():
        table = result.metrics_table()
        sharpe[cascades] = table["sharpe_ratio"].to_numpy()
    ci = paired_difference_ci(sharpe[True], sharpe[False], n_boot=2000, seed=0)
    assert ci.low <= 0.0, f"cascades raise Sharpe: {ci.point:+.4f} [{ci.low:+.4f}, {ci.high:+.4f}]"


# ------------------------------------------------------------------- the options venue
OPTIONS_SEEDS = SIMULATOR_CHECK_SEEDS[:128]
NO_PREMIUM = {  # the venue's premia set to none: ATM implied vol = the forecast realized vol, flat smile
    "variance_premium": {"calm": 1.0, "bull": 1.0, "crash": 1.0},
    "skew": {"calm": 0.0, "bull": 0.0, "crash": 0.0},
    "smile": {"calm": 0.0, "bull": 0.0, "crash": 0.0},
}
ATM, MONTH = 2, 1  # indices of the listed strike 1.0 and tenor 30 days


class OptionAdversary(Policy):
    """A fixed spot book (``weights``, cash last) plus an option order that may alternate by step:
    ``orders[step % len(orders)]`` (an :class:`defialloc.envs.leverage_actions.OptionOrder` or None)."""

    def __init__(self, weights: np.ndarray, config: SimulationConfig, orders: list, name: str):
        from defialloc.envs.leverage_actions import ActionLayout

        self.weights, self.orders, self.name = np.asarray(weights, dtype=float), orders, name
        self.layout = ActionLayout.for_config(config.env, len(config.market.assets))

    def act(self, observation: np.ndarray, view: MarketView) -> np.ndarray:
        from defialloc.envs.actions import weights_to_actions

        b = view.weights.shape[0]
        spot = weights_to_actions(np.broadcast_to(self.weights, (b, self.weights.size)))
        out = np.empty((b, self.layout.dim))
        for k, order in enumerate(self.orders):
            rows = np.asarray(view.step) % len(self.orders) == k
            if rows.any():
                out[rows] = self.layout.compose(spot[rows], options=order)
        return out


def options_config(params_path: str | None = None) -> SimulationConfig:
    extra = {} if params_path is None else {"env.options.params_path": params_path}
    return load_config("configs/options.yaml", {**MARTINGALE, **DEFI, **extra})


def _option_policies(cfg: SimulationConfig) -> list[Policy]:
    from defialloc.envs.leverage_actions import OptionOrder

    n = len(cfg.market.assets)
    listed = [cfg.market.assets.index(a) for a in ("BTC", "ETH")]
    book = _weights(n, **{f"a{i}": 0.25 for i in listed})
    calls = OptionOrder(call_share=1.0, call_strike=ATM, tenor=MONTH)
    puts = OptionOrder(put_share=1.0, put_strike=ATM, tenor=MONTH)
    both = OptionOrder(1.0, 1.0, ATM, ATM, MONTH)
    return [
        FixedWeightsPolicy(_weights(n), name="cash"),
        OptionAdversary(book, cfg, [None], "spot_listed"),
        OptionAdversary(book, cfg, [puts, None], "put_round_trip"),
        OptionAdversary(book, cfg, [calls], "covered_call_held"),
        OptionAdversary(book, cfg, [both], "conversion"),
    ]


@pytest.fixture(scope="module")
def option_backtests(tmp_path_factory) -> dict[str, BacktestResult]:
    """The option adversaries on the martingale DeFi market with the options venue, once with the
    documented premia and once with none (same paths)."""
    import yaml

    data = yaml.safe_load(open("configs/protocols/options.yaml").read())
    data.update(NO_PREMIUM)
    path = tmp_path_factory.mktemp("venue") / "no_premium.yaml"
    path.write_text(yaml.safe_dump(data))
    out = {}
    for label, params in (("premium", None), ("no_premium", str(path))):
        cfg = options_config(params)
        out[label] = run_backtest(
            cfg, _option_policies(cfg), OPTIONS_SEEDS, progress=False, cache=False
        )
    return out


def test_buying_and_selling_the_same_option_the_next_day_pays_its_costs(option_backtests):
    """Puts bought one day and sold the next: the fees and the spread, strictly, in every
    scenario's flows; and no excess over the spot book alone (the options' PnL is noise)."""
    result = option_backtests["premium"]
    rec, ref = result.records["put_round_trip"], result.records["spot_listed"]
    assert np.nansum(rec.extras["option_premium_usd"]) != 0.0
    assert np.all(_flows(rec) < _flows(ref))
    _check_not_beating(result, "put_round_trip", against="spot_listed")


def test_a_conversion_at_quoted_prices_does_not_beat_cash(option_backtests):
    """Long spot, short call and long put at the same strike and expiry (put-call parity): the
    book is worth the strike at expiry whatever the price, so it can only lose its costs to cash."""
    for label in ("premium", "no_premium"):
        result = option_backtests[label]
        rec = result.records["conversion"]
        assert np.nanmax(np.abs(rec.extras["option_value_usd"])) > 0.0
        _check_not_beating(result, "conversion")
        # the locked-in book carries almost no market risk: its excess varies far less than spot's
        spot = _final(result.records["spot_listed"])
        assert np.std(_final(rec)) < 0.25 * np.std(spot)


def test_writing_calls_without_a_premium_does_not_beat_holding_the_spot(option_backtests):
    """Calls written at the money on the held units and held to settlement, on a venue whose implied
    vol is the expected realized vol (no variance premium, flat smile): no excess over the same
    spot book without calls in a martingale market."""
    _check_not_beating(option_backtests["no_premium"], "covered_call_held", against="spot_listed")


def test_the_variance_premium_is_what_pays_the_call_writer(option_backtests):
    """Same paths and the same calls: the documented premium raises the writer's final value over
    the venue without it (the only difference is the implied vol the calls are sold at)."""
    with_vrp = _final(option_backtests["premium"].records["covered_call_held"])
    without = _final(option_backtests["no_premium"].records["covered_call_held"])
    diff = with_vrp - without
    mean, low = _upper(diff)
    assert low > 0.0, f"the premium does not pay the writer: {mean:+.5f} (low {low:+.5f})"
