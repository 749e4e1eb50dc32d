"""Log an evaluation to a real ``mlflow server`` over HTTP and read it back through the REST API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings

import numpy as np
import pytest

from envs.config import load_config
from envs.seeds import scenario_seeds
from evaluation.backtest import run_backtest
from evaluation.tracking import log_backtest

STARTUP_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the server by its PID; then clean up its process group (its workers) if needed."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    pgid = proc.pid  # start_new_session=True: the server leads its own group
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(pgid):
            return
        os.killpg(pgid, sig)
        deadline = time.monotonic() + 5
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    # no background job runner (huey consumers): faster start and stop, nothing left behind
    env = dict(
        os.environ, MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"
    )
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"mlflow server exited with {proc.returncode}: {(tmp_path / 'server.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {STARTUP_TIMEOUT_S:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)
        log.close()
        assert proc.poll() is not None and not _group_alive(proc.pid)


def test_log_over_http_and_read_back_through_rest(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    cfg = load_config({"market": {}, "env": {"horizon": 30}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_backtest(
            cfg,
            ["equal_weight", "min_variance"],
            scenario_seeds("test", 4),
            progress=False,
            scenario_set="test",
        )
    run_id = log_backtest(result, "server-eval", "http-run", cfg, plots=False)

    run = _get(f"{server}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert params["policies"] == "equal_weight,min_variance"
    assert params["config_hash"] == cfg.config_hash()
    assert params["seeds"] == "2000000..2000003"
    final = result.records["min_variance"].value_usd[:, -1].mean()
    assert metrics["final_value_usd.min_variance"] == pytest.approx(final, rel=1e-9)
    assert np.isfinite(metrics["sharpe_ratio.equal_weight"])

    experiment = _get(
        f"{server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=server-eval"
    )["experiment"]
    found = _post(
        f"{server}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]}
    )
    assert [r["info"]["run_id"] for r in found["runs"]] == [run_id]

    query = urllib.parse.urlencode({"run_id": run_id})
    files = {
        f["path"] for f in _get(f"{server}/api/2.0/mlflow/artifacts/list?{query}").get("files", [])
    }
    assert {"metrics.csv", "series.parquet", "config.yaml"} <= files
    assert (tmp_path / "artifacts").is_dir()  # artifacts proxied by the server into its destination
