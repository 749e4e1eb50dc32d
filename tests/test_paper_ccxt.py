"""``--feed ccxt:<exchange>`` on recorded-format Binance responses (tests/fixtures/ccxt; no network):
ccxt's own parsing of the raw JSON, the bars the feed builds from it (spot OHLC, USDC, perp marks,
funding, the lending rates a CEX lacks), a levered paper run on them, and every refusal: unknown
exchange or symbol, a gap, a stale candle, missing funding, an unreachable venue (backoff measured
on a fake clock); each with a clear error and nothing written."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from defialloc.agents.onnx_policy import OnnxPolicy
from defialloc.envs.config import load_config
from defialloc.training.paper.ccxt_feed import CcxtFeed
from defialloc.training.paper.ledger import Ledger
from defialloc.training.paper.runner import PaperTrader
from defialloc.training.paper.venue_errors import (
    Backoff,
    GapInVenueData,
    MissingFunding,
    StaleCandle,
    UnknownExchange,
    UnknownSymbol,
    VenueUnreachable,
)
from tests.ccxt_recorded import FIXTURES, RecordedBinance
from tests.test_paper import DATA_DIR, needs_data

pytestmark = needs_data  # the expected bars come from data/crypto-daily
START, END = (
    "2022-03-01",
    "2022-03-31",
)  # development days; the fixtures hold 2021-12-30 .. 2022-04-05
DAY = 86_400.0


def utc(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


class FakeClock:
    """``now()`` in seconds; ``sleep(s)`` records the wait and moves the clock (no real waiting)."""

    def __init__(self, start: float) -> None:
        self.t = start
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


@pytest.fixture(scope="module")
def levered(levered_policy_dir) -> OnnxPolicy:
    return OnnxPolicy(levered_policy_dir)


@pytest.fixture(scope="module")
def cfg(levered):
    return load_config(levered.manifest.simulation_config)


def make_feed(cfg, session=None, clock=None, **kw) -> CcxtFeed:
    clock = clock or FakeClock(utc("2022-04-01T12:00:00"))
    kw.setdefault("start", START)
    kw.setdefault("end", END)
    return CcxtFeed(cfg, kw.pop("exchange", "binance"), clock=clock.now, sleep=clock.sleep,
                    exchange_options={"session": session or RecordedBinance(), "enableRateLimit": False},
                    **kw)  # fmt: skip


def _run(policy, feed, ledger: Path, max_bars=None):
    trader = PaperTrader(policy, feed, ledger)
    try:
        return trader.run(max_bars)
    finally:
        trader.close()


def _no_ledger(path: Path) -> None:
    assert not path.exists() and not Path(str(path) + "-wal").exists()


def _csv(asset: str) -> pd.DataFrame:
    return pd.read_csv(DATA_DIR / f"{asset}-USD.csv", index_col="Date")


# ---------------------------------------------------------------------------- the bars
def test_recorded_responses_parsed_by_ccxt_give_the_expected_bars(cfg):
    session = RecordedBinance()
    feed = make_feed(cfg, session)
    bars = list(feed.bars())
    assets = cfg.market.assets
    warmup = cfg.env.warmup
    assert len(bars) == feed.length == warmup + 31 and bars[warmup].time == START
    assert bars[0].time == "2021-12-30" and bars[-1].time == END
    # ccxt asked only the public endpoints, markets once
    assert session.requests.count("/api/v3/exchangeInfo") == 1
    assert set(session.requests) == {"/api/v3/exchangeInfo", "/fapi/v1/exchangeInfo", "/api/v3/klines",
                                     "/fapi/v1/markPriceKlines", "/fapi/v1/fundingRate"}  # fmt: skip
    frames = {a: _csv(a) for a in (*assets, "USDC")}
    marks = {a: {r[0]: float(r[4]) for r in json.loads((FIXTURES / "mark_klines" / f"{a}USDT.json").read_text())}
             for a in assets}  # fmt: skip
    settlements = {
        a: json.loads((FIXTURES / "funding" / f"{a}USDT.json").read_text()) for a in assets
    }
    for bar in bars:
        opened = int(utc(bar.time) * 1000)
        for i, a in enumerate(assets):  # spot OHLC: the CSV rows the fixtures were written from
            row = frames[a].loc[bar.time]
            assert (bar.close[i], bar.high[i], bar.low[i]) == (row.Close, row.High, row.Low)
        assert bar.numeraire_usd == frames["USDC"].loc[bar.time].Close
        assert bar.eth_usd == frames["ETH"].loc[bar.time].Close
        assert (bar.gas_price_gwei, bar.depth_multiplier, bar.regime) == (30.0, 1.0, 0)
        state = bar.protocol
        mark = np.array([marks[a][opened] for a in assets])
        np.testing.assert_array_equal(state.mark, mark)
        np.testing.assert_allclose(state.basis, mark / bar.close - 1.0, rtol=0, atol=1e-15)
        # funding over the bar: the settlements of 08:00, 16:00 and the next 00:00 (stamped ms late)
        window = (opened + 3_600_000, opened + 86_400_000 + 3_600_000)
        funding = [sum(float(s["fundingRate"]) for s in settlements[a] if window[0] <= s["fundingTime"] < window[1])
                   for a in assets]  # fmt: skip
        np.testing.assert_allclose(state.funding, funding, rtol=1e-15, atol=0)
        assert all(len([s for s in settlements[a] if window[0] <= s["fundingTime"] < window[1]]) == 3
                   for a in assets)  # fmt: skip
    # the lending rates a CEX lacks: the policy's Aave snapshot at its calm-regime utilization,
    # by hand: kinked model base + slope1 U / U_opt (U below the kink), supply = borrow U (1 - RF)
    usdc_borrow = 0.035 * 0.60 / 0.90
    state = bars[warmup].protocol
    assert state.borrow_rate == pytest.approx(usdc_borrow, rel=1e-12)
    assert state.cash_supply_rate == pytest.approx(usdc_borrow * 0.60 * 0.90, rel=1e-12)
    volatile = 0.07 * 0.20 / 0.45 * 0.20 * 0.80  # SOL, LINK, AVAX
    np.testing.assert_allclose(
        state.supply_rate,
        [
            0.04 * 0.15 / 0.45 * 0.15 * 0.80,
            0.028 * 0.45 / 0.80 * 0.45 * 0.85,
            volatile,
            volatile,
            volatile,
        ],
        rtol=1e-12,
    )
    assert state.debt_growth == pytest.approx(np.exp(usdc_borrow / 365.0), rel=1e-15)
    sources = feed.protocol_sources()
    assert sources["funding"].startswith("binance funding rate history")
    assert sources["borrow_rate"].startswith("Aave v3 snapshot aave_v3_2023-10-31.yaml")
    assert sources["gas_price_gwei"].startswith("constant 30 gwei")


def test_configured_lending_constants_replace_the_snapshot_and_are_recorded(cfg):
    feed = make_feed(cfg, protocol_constants={"borrow_rate": 0.08, "supply_rate.SOL": 0.02})
    bar = next(iter(feed.bars()))
    assert bar.protocol.borrow_rate == 0.08 and bar.protocol.supply_rate[2] == 0.02
    assert bar.protocol.cash_supply_rate == pytest.approx(0.035 * 0.6 / 0.9 * 0.6 * 0.9)
    sources = feed.protocol_sources()
    assert sources["borrow_rate"] == "constant 0.08 (--protocol-constant borrow_rate)"
    assert "SOL constant 0.02" in sources["supply_rate"]
    from defialloc.training.paper.lending_quotes import parse_constants

    with pytest.raises(ValueError, match="KEY one of borrow_rate, cash_supply_rate, supply_rate"):
        parse_constants(["borrowing=0.1"], tuple(cfg.market.assets))
    with pytest.raises(ValueError, match=r"fractions in \[0, 10\]"):
        parse_constants(["borrow_rate=25"], tuple(cfg.market.assets))


def test_levered_paper_run_on_the_venue_records_the_sources(levered, cfg, tmp_path):
    feed = make_feed(cfg)
    ledger = tmp_path / "venue.db"
    summary = _run(levered, feed, ledger)
    assert summary.status == "finished" and summary.decisions == 31
    db = Ledger.open(ledger)
    meta = db.meta
    assert (
        meta["feed"]["kind"] == "ccxt:binance"
        and meta["feed"]["markets"]["BTC-PERP"] == "BTC/USDT:USDT"
    )
    assert meta["protocol_sources"] == feed.protocol_sources() and meta["reference"] is None
    funding = db.conn.execute(
        "SELECT value FROM bar_protocol WHERE field = 'funding' AND asset = 'ETH' ORDER BY bar_index"
    ).fetchall()
    assert len(funding) == feed.length
    levered_rows = db.conn.execute("SELECT COUNT(*), SUM(funding_usd != 0) FROM levered").fetchone()
    assert levered_rows[0] == 31 and levered_rows[1] > 0  # the hedges paid or earned funding
    db.close()


# ---------------------------------------------------------------------------- refusals
def test_unknown_exchange_or_symbol_is_refused_before_anything_is_written(levered, cfg, tmp_path):
    from defialloc.training.cli import app

    with pytest.raises(UnknownExchange, match="no exchange 'binanse'; did you mean binance"):
        make_feed(cfg, exchange="binanse")
    ledger = tmp_path / "x.db"
    result = CliRunner().invoke(app, ["paper", "--policy", str(levered.directory), "--feed", "ccxt:binanse",
                                      "--start", START, "--ledger", str(ledger), "--no-mlflow"])  # fmt: skip
    assert result.exit_code == 2 and "did you mean binance" in " ".join(result.output.split())
    _no_ledger(ledger)
    # the recorded venue lists the assets against USDT only
    with pytest.raises(UnknownSymbol, match=r"binance lists no spot market BTC/EUR .*--quote EUR"):
        _run(levered, make_feed(cfg, quote="EUR"), ledger)
    _no_ledger(ledger)
    delisted = RecordedBinance()
    delisted.usdm_info["symbols"] = [
        s for s in delisted.usdm_info["symbols"] if s["baseAsset"] != "LINK"
    ]
    with pytest.raises(UnknownSymbol, match=r"no perp market LINK/USDT:USDT"):
        _run(levered, make_feed(cfg, delisted), ledger)
    _no_ledger(ledger)


def test_a_gap_in_the_venue_candles_is_refused(levered, cfg, tmp_path):
    session = RecordedBinance()
    gap = int(utc("2022-02-10") * 1000)
    session.klines["SOLUSDT"] = [r for r in session.klines["SOLUSDT"] if r[0] != gap]
    ledger = tmp_path / "gap.db"
    with pytest.raises(
        GapInVenueData, match=r"binance SOL/USDT: no 1d candle opening 2022-02-10T00:00Z \(bar 42\)"
    ):
        _run(levered, make_feed(cfg, session), ledger)
    _no_ledger(ledger)
    marks = RecordedBinance()
    marks.marks["AVAXUSDT"] = [r for r in marks.marks["AVAXUSDT"] if r[0] != gap]
    with pytest.raises(GapInVenueData, match=r"AVAX/USDT:USDT: no 1d mark-price candle"):
        _run(levered, make_feed(cfg, marks), ledger)
    _no_ledger(ledger)


def test_missing_funding_is_refused(levered, cfg, tmp_path):
    session = RecordedBinance()
    day = utc("2022-03-10") * 1000
    session.funding["ETHUSDT"] = [s for s in session.funding["ETHUSDT"]
                                  if not day + 3_600_000 <= s["fundingTime"] < day + DAY * 1000 + 3_600_000]  # fmt: skip
    ledger = tmp_path / "funding.db"
    with pytest.raises(
        MissingFunding, match=r"ETH/USDT:USDT: no funding rate settled .* \(bar 70, 2022-03-10\)"
    ):
        _run(levered, make_feed(cfg, session), ledger)
    _no_ledger(ledger)


def test_a_stale_candle_is_refused_up_front_and_while_polling(levered, cfg, tmp_path):
    # up front: days after the venue's newest candle (2022-04-05), open-ended feed
    late = FakeClock(utc("2022-04-10T12:00:00"))
    ledger = tmp_path / "stale.db"
    with pytest.raises(
        StaleCandle,
        match=r"bar 97 \(2022-04-06\) closed at 2022-04-07T00:00Z, .* the newest 1d candle opens 2022-04-05T00:00Z",
    ):
        _run(levered, make_feed(cfg, clock=late, end=None), ledger)
    _no_ledger(ledger)
    # live: the feed waits for each bar's close, polls, then gives up on the candle that never comes
    clock = FakeClock(utc("2022-04-05T12:00:00"))
    feed = make_feed(cfg, clock=clock, end=None, poll_seconds=60.0, settle_seconds=30.0,
                     stale_after_seconds=600.0)  # fmt: skip
    with pytest.raises(StaleCandle, match="bar 97"):
        _run(levered, feed, ledger)
    db = Ledger.open(ledger)
    assert (
        db.last_bar_index() == 96
        and db.conn.execute("SELECT MAX(time) FROM bars").fetchone()[0] == "2022-04-05"
    )
    db.close()
    # slept to 30 s after the close of 04-05 (bar 96), then of 04-06, then polled every 60 s to 10 min
    assert clock.slept[0] == pytest.approx(utc("2022-04-06T00:00:30") - utc("2022-04-05T12:00:00"))
    assert clock.slept[1] == pytest.approx(DAY)
    assert clock.slept[2:] == [60.0] * 10


def test_an_unreachable_venue_is_retried_with_backoff_then_refused(levered, cfg, tmp_path):
    session = RecordedBinance()
    session.fail_next = 10**6
    clock = FakeClock(utc("2022-04-01T12:00:00"))
    ledger = tmp_path / "down.db"
    with pytest.raises(
        VenueUnreachable,
        match=r"binance: load_markets: no answer after 5 tries over 15 s .*ConnectionError",
    ):
        _run(levered, make_feed(cfg, session, clock=clock), ledger)
    assert clock.slept == [1.0, 2.0, 4.0, 8.0] and len(session.requests) == 5
    _no_ledger(ledger)
    # a venue that fails twice, then answers: two waits, then the same bars as without failures
    flaky = RecordedBinance()
    flaky.fail_next = 2
    clock = FakeClock(utc("2022-04-01T12:00:00"))
    bars = list(
        make_feed(cfg, flaky, clock=clock, backoff=Backoff(tries=3, first_seconds=0.5)).bars()
    )
    assert clock.slept == [0.5, 1.0]
    reference = list(make_feed(cfg).bars())
    assert [b.close.tolist() for b in bars] == [b.close.tolist() for b in reference]


# ---------------------------------------------------------------------------- no free lunch
def _flows(cfg, bars, weights, leverage=0.0, hedge=0.0) -> tuple[float, dict[str, float]]:
    """Stream the venue bars through the simulator with a fixed levered target; returns the summed
    non-market flows (minus every cost kind, plus insurance and bad debt) and the summed funding
    and interest: what the value earns beyond the market PnL of the positions held."""
    from defialloc.envs.actions import weights_to_actions
    from defialloc.envs.leverage_actions import ActionLayout
    from defialloc.envs.streaming import StreamingSimulator

    layout = ActionLayout.for_config(cfg.env, len(cfg.market.assets))
    action = layout.compose(weights_to_actions(np.asarray(weights)[None, :]), leverage, hedge,
                            cfg.env.lending.max_leverage)  # fmt: skip
    sim = StreamingSimulator(cfg, capacity=len(bars))
    total, carry = 0.0, {"funding": 0.0, "interest": 0.0}
    for bar in bars:
        sim.push_bar(bar)
        if bar.index < sim.warmup:
            continue
        if bar.index == sim.warmup:
            sim.start()
        else:
            step = sim.advance()
            costs = step.costs
            total += float(
                step.insurance_usd[0] + step.bad_debt_usd[0]
                - (costs.fees_usd + costs.slippage_usd + costs.gas_usd + costs.interest_usd
                   + costs.funding_usd + costs.liquidation_usd)[0]
            )  # fmt: skip
            carry["funding"] += float(costs.funding_usd[0])
            carry["interest"] += float(costs.interest_usd[0])
        if bar.index < bars[-1].index:
            sim.execute(action)
    return total, carry


def test_no_free_lunch_from_the_venue_quotes(cfg):
    """Adversarial policies on the bars a venue feed builds (constant lending quotes, the venue's
    funding): borrowing the numeraire to hold it loses the rate spread; a long and a short perp of
    the same size on the same spot book earn nothing together (funding is a transfer between them,
    fees are paid twice); and quotes that would pay the borrower are refused."""
    bars = list(make_feed(cfg).bars())
    eth_half = np.array([0.0, 0.5, 0.0, 0.0, 0.0, 0.5])
    # 0.25 debt / equity beside the same 0.5 ETH of equity: ETH 0.4 and cash 0.6 of the gross book
    borrower, carry = _flows(cfg, bars, np.array([0.0, 0.4, 0.0, 0.0, 0.0, 0.6]), leverage=0.25)
    twin, twin_carry = _flows(cfg, bars, eth_half)
    # interest paid minus earned: the borrowed (supplied) cash earns less than its debt costs
    assert carry["interest"] > twin_carry["interest"] and borrower < twin
    spot = np.append(np.full(5, 0.1), 0.5)
    alone, _ = _flows(cfg, bars, spot)
    short, short_carry = _flows(cfg, bars, spot, hedge=1.0)
    long, long_carry = _flows(cfg, bars, spot, hedge=-1.0)
    assert short_carry["funding"] < 0.0 < long_carry["funding"]  # positive rates: longs pay shorts
    assert short + long - 2.0 * alone < 0.0
    with pytest.raises(ValueError, match="cash_supply_rate 0.05 exceeds borrow_rate 0.01"):
        make_feed(cfg, protocol_constants={"borrow_rate": 0.01, "cash_supply_rate": 0.05})
