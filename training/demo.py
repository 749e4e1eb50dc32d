"""The main job behind `make demo`: train a small PPO in the DeFi market, compare it with the baselines.

Each training run ends with the paired backtest of its best validated model against every baseline on
the test scenario seeds and on the real held-out period (2023-01-01..2024-04-09), logged to the MLflow
experiment of the demo configs; the comparison table is then read back from MLflow and printed.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from defialloc.training.config import load_train_config

#: `make demo` trains PPO only: SAC in the DeFi market does not fit the demo's 6-minute budget on
#: 2 cores (`defialloc demo --sac` adds it; same simulation config, so compare pairs both).
DEMO_CONFIGS = ("configs/train/demo_ppo.yaml",)
SAC_DEMO_CONFIG = "configs/train/demo_sac.yaml"


def run_demo(
    console: Console, configs: tuple[str, ...] = DEMO_CONFIGS, *, cache: bool = False
) -> None:
    """Train every demo config, then print ``defialloc compare`` for their experiment.

    With ``cache`` the agents share the baselines' backtests (same simulation config and seeds):
    each baseline runs once, and not again in later demos (:mod:`defialloc.evaluation.backtest_cache`).
    """
    from defialloc.agents.mlflow_store import display_tracking_uri
    from defialloc.evaluation.report import compare
    from defialloc.training.train import train

    start = time.perf_counter()
    experiments = []
    for path in configs:
        cfg = load_train_config(path)
        console.rule(
            f"defialloc demo: training {cfg.algo.upper()} ({cfg.total_timesteps:,} env steps)"
        )
        result = train(cfg, cache=cache)
        console.print(
            f"{cfg.algo.upper()}: {result.num_timesteps:,} steps at {result.env_steps_per_s:,.0f} env-steps/s; "
            f"MLflow run {result.run_id}, registered version {result.model_version}"
        )
        if cfg.mlflow.experiment not in experiments:
            experiments.append(cfg.mlflow.experiment)
    for experiment in experiments:
        console.rule(f"agents vs baselines (experiment {experiment})")
        report = Path("reports") / f"{experiment}.md"
        report.parent.mkdir(exist_ok=True)
        compare(experiment, out=report, console=console)
        console.print(f"report with plots: {report}")
    console.rule(f"done in {time.perf_counter() - start:,.0f} s")
    uri = display_tracking_uri()
    console.print(
        f"Open the MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {uri}  (then http://127.0.0.1:5000)"
    )
