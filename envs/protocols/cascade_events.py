"""Documented DeFi liquidation episodes and market-structure figures behind the cascade calibration.

Data only (no network at run time): each number carries where it was published. The calibration
(:mod:`defialloc.envs.cascade_calibration`, ``defialloc calibrate-cascades``) turns an episode's documented
liquidation volume into a target extra price move with the square-root law and compares it with
what the env's borrower population does on the replayed days (docs/leverage.md, "Borrower
population"). Only 2021-2022 episodes: the held-out period starts 2023-01-01.

Units: USD, fractions as plain numbers (0.06 = 6 %), dates as ISO ``YYYY-MM-DD`` (UTC days).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Y of the square-root law ``impact = Y * sigma_daily * sqrt(Q / V_daily)``, "of order 1" (Tóth et
#: al. 2011, Phys. Rev. X 1, 021006; Bouchaud, Bonart, Donier & Gould 2018, "Trades, Quotes and
#: Prices", ch. 12). The calibration uses Y = 1.
SQRT_LAW_Y = 1.0
SQRT_LAW_SOURCE = (
    "Tóth, Lempérière, Deremble, de Lataillade, Kockelkoren & Bouchaud 2011, 'Anomalous price impact "
    "and the critical nature of liquidity in financial markets', Phys. Rev. X 1, 021006; Bouchaud, "
    "Bonart, Donier & Gould 2018, 'Trades, Quotes and Prices' (Cambridge University Press)"
)

#: Realized-volatility window (days of daily log close-to-close returns ending the day before an
#: episode) for the sqrt law's ``sigma_daily``.
SIGMA_WINDOW_DAYS = 30


@dataclass(frozen=True)
class DexShare:
    """A documented DEX share of crypto spot trading volume (a fraction of the whole market's)."""

    share: float
    period: str
    source: str


DEX_SHARE_JAN_2021 = DexShare(
    0.060,
    "January 2021",
    "CoinGecko study via ForkLog, 'DEX Share in Spot Trading Surges to 21%', "
    "https://forklog.com/en/dex-share-in-spot-trading-surges-to-21/amp",
)
DEX_SHARE_EARLY_2022 = DexShare(0.146, "start of 2022", DEX_SHARE_JAN_2021.source)
DEX_SHARE_LOW_2022 = DexShare(
    0.054, "low reached later in 2022 (September), same band through the FTX collapse",
    DEX_SHARE_JAN_2021.source,
)  # fmt: skip
DEX_SHARE_2022_RANGE = DexShare(
    0.08,
    "lower end of ~8-17 % over 2022",
    "CryptoSlate / The Block chart of DEX share of spot volume",
)

#: Prior of ``population.pool_share_of_sales``: the round middle of the documented DEX shares of
#: 2021-22 (6.0 %, 14.6 %, 5.4 %, ~8-17 %). Liquidators receive collateral on-chain (bias up), but the
#: agent's pools are a few of all DEX pools (bias down); 0.10 takes neither side.
POOL_SHARE_PRIOR = 0.10


@dataclass(frozen=True)
class LiquidationEvent:
    """A documented liquidation episode.

    Attributes:
        name: short label.
        first_day, last_day: the UTC days the documented liquidations span (inclusive).
        asset: the env asset whose pools and volume the calibration looks at.
        liquidated_usd: documented USD of collateral liquidated (or the documented lower bound).
        at_least: True when the figure covers only part of the market (a lower bound).
        covers: what the figure covers (protocols, assets, window).
        dex_share: the documented DEX share of spot volume nearest the episode (the sqrt-law
            target's upper end puts every liquidation sale on DEXs).
        sources: where the figures were published.
    """

    name: str
    first_day: str
    last_day: str
    asset: str
    liquidated_usd: float
    at_least: bool
    covers: str
    dex_share: DexShare
    sources: tuple[str, ...]


LIQUIDATION_EVENTS: tuple[LiquidationEvent, ...] = (
    LiquidationEvent(
        name="May 2021",
        first_day="2021-05-19",
        last_day="2021-05-19",
        asset="ETH",
        liquidated_usd=377e6,
        at_least=False,
        covers="Aave $170M + Compound $147M + Maker $60M that day, all collateral assets "
        "(CEX long liquidations that day: $7.09B)",
        dex_share=DEX_SHARE_JAN_2021,
        sources=(
            "Cointelegraph Consulting with Covalent, 'DeFi hit by a tsunami of liquidations in May', "
            "June 2021, e.g. https://tradernation.org/2021/06/08/"
            "cointelegraph-consulting-defi-hit-by-a-tsunami-of-liquidations-in-may/",
            "Gauntlet, 'Aave Protocol Liquidation Retrospective: May 2021', https://medium.com/"
            "gauntlet-networks/aave-protocol-liquidation-retrospective-may-2021-67c655fc1b31",
        ),
    ),
    LiquidationEvent(
        name="Celsius/3AC",
        first_day="2022-06-13",
        last_day="2022-06-14",
        asset="ETH",
        liquidated_usd=53e6,
        at_least=True,
        covers="MakerDAO alone: 53M DAI in 370 margin calls in 24 h (a further $202M was at risk "
        "on Aave below ETH $1,009)",
        dex_share=DEX_SHARE_2022_RANGE,
        sources=(
            "The Defiant, 'Crypto Liquidations Spike to $480M in Last 24 Hours', "
            "https://thedefiant.io/liquidations-crypto-bear-market/",
        ),
    ),
    LiquidationEvent(
        name="FTX",
        first_day="2022-11-08",
        last_day="2022-11-10",
        asset="ETH",
        liquidated_usd=28.6e6,
        at_least=True,
        covers="Aave v2 Ethereum market only, collateral liquidated during the crash",
        dex_share=DEX_SHARE_LOW_2022,
        sources=(
            "Gauntlet, '[ARC] Market Downturn: Gauntlet Analysis November 2022', "
            "https://governance.aave.com/t/arc-market-downturn-gauntlet-analysis-november-2022/10625",
        ),
    ),
)
