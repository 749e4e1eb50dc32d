"""A ``requests.Session`` that answers ccxt's Binance requests from the fixtures in
tests/fixtures/ccxt/binance (no network): ccxt builds the URLs, parses the raw JSON and maps the
venue's errors itself, exactly as it would with a live connection.

The fixtures are the venue's whole series; a request gets the part Binance would return for its
query (``startTime``/``endTime`` inclusive, ``limit``, first rows first). Tests edit the series
(drop a candle, a funding settlement) and make the connection fail (``fail_next``) to check the
feed's refusals and its backoff.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ccxt" / "binance"


def _load(name: str):
    return json.loads((FIXTURES / name).read_text())


class RecordedBinance(requests.Session):
    """Serve ``/api/v3/exchangeInfo``, ``/fapi/v1/exchangeInfo``, ``/api/v3/klines``,
    ``/fapi/v1/markPriceKlines`` and ``/fapi/v1/fundingRate`` from the fixtures.

    Attributes: ``klines``/``marks``/``funding`` ``{SYMBOL: rows}`` (editable), ``requests``
    (the paths asked for, in order), ``fail_next`` (raise ``ConnectionError`` for that many requests).
    """

    def __init__(self) -> None:
        super().__init__()
        self.spot_info = _load("spot_exchange_info.json")
        self.usdm_info = _load("usdm_exchange_info.json")
        self.klines = {
            p.stem: json.loads(p.read_text()) for p in (FIXTURES / "klines").glob("*.json")
        }
        self.marks = {
            p.stem: json.loads(p.read_text()) for p in (FIXTURES / "mark_klines").glob("*.json")
        }
        self.funding = {
            p.stem: json.loads(p.read_text()) for p in (FIXTURES / "funding").glob("*.json")
        }
        self.requests: list[str] = []
        self.fail_next = 0

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.requests.append(parts.path)
        if self.fail_next > 0:
            self.fail_next -= 1
            raise requests.exceptions.ConnectionError(f"connection refused: {parts.netloc}")
        path = parts.path
        if path == "/api/v3/exchangeInfo":
            return _response(url, self.spot_info)
        if path == "/fapi/v1/exchangeInfo":
            return _response(url, self.usdm_info)
        if path in ("/api/v3/klines", "/fapi/v1/markPriceKlines"):
            series = (self.klines if path == "/api/v3/klines" else self.marks).get(
                query.get("symbol")
            )
            if series is None:
                return _response(url, {"code": -1121, "msg": "Invalid symbol."}, status=400)
            rows = _window(series, query, key=lambda r: r[0], default_limit=500)
            return _response(url, rows)
        if path == "/fapi/v1/fundingRate":
            series = self.funding.get(query.get("symbol"))
            if series is None:
                return _response(url, {"code": -1121, "msg": "Invalid symbol."}, status=400)
            rows = _window(series, query, key=lambda r: r["fundingTime"], default_limit=100)
            return _response(url, rows)
        raise AssertionError(f"the recorded Binance has no response for {method} {url}")


def _window(rows: list, query: dict[str, str], key, default_limit: int) -> list:
    start = int(query.get("startTime", -1))
    end = int(query.get("endTime", 2**62))
    limit = int(query.get("limit", default_limit))
    return [r for r in rows if start <= key(r) <= end][:limit]


def _response(url: str, payload, status: int = 200) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.reason = "OK" if status == 200 else "Bad Request"
    response.url = url
    response._content = json.dumps(payload).encode()
    response.headers["Content-Type"] = "application/json;charset=UTF-8"
    response.encoding = "utf-8"
    return response
