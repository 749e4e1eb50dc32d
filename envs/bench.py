"""Throughput and memory benchmark of the single and the batched env (``defialloc bench env``).

Actions are drawn uniformly from the Box in advance so the figure measures the env, not the sampler.
Each figure steps for a time budget (3 s; ``quick``: 0.3 s) and at least one episode, and episodes
reset as they end, so resets (market path generation and features) are included. Every
figure is measured for the runtime (compiled) simulator and, in the same run, for the numpy reference
(:class:`~defialloc.envs.simulator.PortfolioSimulator`): the "before" and "after" of the compiled step.

The standard grid (:func:`bench_grid`): spot (``configs/default.yaml``'s env) and all protocols
(``configs/options.yaml``: lending, perps, cascades and the options venue) on the benchmark market
``configs/market/bench_15_assets.yaml`` (its first 5, 10 or 15 assets), at 1, 64, 256 and 1024 envs.
A ``step only`` row times the simulator's step and observation alone (no wrapper, no ``info``, no
resets): what the compiled kernels replace. Memory per env is what the batched env allocates (tracemalloc: numpy reports its buffers) divided by
the number of envs, at the largest batch.

``defialloc bench compile`` (:func:`bench_compile`) times the kernels' first compile and their cached
load in fresh processes on an empty numba cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from defialloc.envs.config import REPO_ROOT, SimulationConfig, load_config

BENCH_MARKET = REPO_ROOT / "configs" / "market" / "bench_15_assets.yaml"
BENCH_LENDING = REPO_ROOT / "configs" / "protocols" / "bench_15_assets_lending.yaml"
MARKETS = {"spot": "configs/default.yaml", "all_protocols": "configs/options.yaml"}
SIMULATORS = ("compiled", "numpy")


def _simulator_class(name: str) -> Any:
    """None (the runtime simulator) for ``compiled``, the numpy reference class for ``numpy``."""
    if name not in SIMULATORS:
        raise ValueError(f"simulator={name!r} must be one of {SIMULATORS}")
    if name == "numpy":
        from defialloc.envs.simulator import PortfolioSimulator

        return PortfolioSimulator
    return None


def _timed(step: Callable[[int], None], budget_s: float, min_steps: int) -> tuple[int, float]:
    """Call ``step(i)`` for i = 0, 1, ... until ``budget_s`` seconds and ``min_steps`` calls have
    passed; returns (calls, seconds)."""
    start = time.perf_counter()
    i, elapsed = 0, 0.0
    while i < min_steps or elapsed < budget_s:
        step(i)
        i += 1
        if i % 16 == 0 or i >= min_steps:
            elapsed = time.perf_counter() - start
    return i, time.perf_counter() - start


def bench_single(
    config: SimulationConfig, budget_s: float = 3.0, seed: int = 0, simulator: str = "compiled"
) -> float:
    """Env steps per second of one :class:`DeFiMarketEnv` (its ``info`` dict included), over
    ``budget_s`` seconds of stepping (at least one episode's worth of steps)."""
    from defialloc.envs.env import DeFiMarketEnv

    env = DeFiMarketEnv(config, simulator=_simulator_class(simulator))
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1.0, 1.0, size=(4096, env.action_space.shape[0])).astype(np.float32)
    env.reset(seed=seed)
    env.step(actions[0])  # compiles (or loads) the kernels outside the timed part
    env.reset(seed=seed)

    def step(i: int) -> None:
        _, _, terminated, truncated, _ = env.step(actions[i % len(actions)])
        if terminated or truncated:
            env.reset()

    steps, seconds = _timed(step, budget_s, config.env.horizon)
    return steps / seconds


def bench_batched(
    config: SimulationConfig,
    n_envs: int,
    budget_s: float = 3.0,
    seed: int = 0,
    simulator: str = "compiled",
) -> tuple[float, float]:
    """Env steps per second (summed over envs) of the batched VecEnv with ``n_envs`` envs over
    ``budget_s`` seconds (at least one episode), and the memory it holds per env in MiB
    (everything allocated from its construction through its first step)."""
    from defialloc.envs.vec_env import DeFiMarketVecEnv

    rng = np.random.default_rng(seed)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        venv = DeFiMarketVecEnv(
            config, n_envs=n_envs, seed=seed, simulator=_simulator_class(simulator)
        )
        dim = venv.action_space.shape[0]
        venv.reset()
        venv.step(rng.uniform(-1.0, 1.0, size=(n_envs, dim)).astype(np.float32))  # compile/load
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    actions = rng.uniform(-1.0, 1.0, size=(max(4096 // n_envs, 4), n_envs, dim)).astype(np.float32)
    steps, seconds = _timed(
        lambda i: venv.step(actions[i % len(actions)]), budget_s, config.env.horizon
    )
    return n_envs * steps / seconds, held / n_envs / 2**20


def bench_step(
    config: SimulationConfig,
    n_envs: int,
    budget_s: float = 3.0,
    seed: int = 0,
    simulator: str = "compiled",
) -> float:
    """Env-steps per second of the simulator's step and observation alone (no Gym/VecEnv wrapper,
    no ``info``, resets outside the timer): what the compiled kernels replace."""
    from defialloc.envs.compiled import CompiledSimulator
    from defialloc.envs.simulator import PortfolioSimulator

    sim_class = PortfolioSimulator if simulator == "numpy" else CompiledSimulator
    _simulator_class(simulator)  # validates the name
    sim = sim_class(config, n_envs)
    rows = np.arange(n_envs)
    sim.reset_envs(rows, rows + seed)
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1.0, 1.0, size=(max(4096 // n_envs, 4), n_envs, sim.action_dim))
    sim.step_observe(actions[0])  # compile/load
    steps, seconds, i = 0, 0.0, 0
    while seconds < budget_s or steps < 10:
        if int(sim.t.max()) >= sim.horizon:
            sim.reset_envs(rows, rows + seed + n_envs * (i + 1))
        start = time.perf_counter()
        sim.step_observe(actions[i % len(actions)])
        seconds += time.perf_counter() - start
        steps += 1
        i += 1
    return n_envs * steps / seconds


def grid_config(market: str, n_assets: int) -> SimulationConfig:
    """The bench config of ``market`` (``spot`` / ``all_protocols``) on the first ``n_assets`` of
    the benchmark market."""
    if market not in MARKETS:
        raise ValueError(f"market={market!r} must be one of {sorted(MARKETS)}")
    base = load_config(REPO_ROOT / MARKETS[market])
    bench_market = load_config(base, {"market": str(BENCH_MARKET)}).market
    if not 1 <= n_assets <= len(bench_market.assets):
        raise ValueError(f"n_assets={n_assets} must be in [1, {len(bench_market.assets)}]")
    overrides: dict[str, Any] = {
        "market": str(BENCH_MARKET),
        "market.assets": bench_market.assets[:n_assets],
    }
    if base.env.lending.enabled:
        overrides["env.lending.params_path"] = str(BENCH_LENDING)
    return load_config(base, overrides)


def bench_config(
    config: SimulationConfig,
    *,
    n_envs: Sequence[int] = (1, 64, 256, 1024),
    simulators: Sequence[str] = SIMULATORS,
    quick: bool = False,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Rows ``{simulator, env, n_envs, env_steps_per_s, mib_per_env}`` for one config: the single
    env, the batched env at every ``n_envs`` (``env`` ``single`` / ``batched``: the Gym / SB3
    wrappers, ``info`` and resets included), then the simulator's step and observation alone at
    every ``n_envs`` (``step only``)."""
    budget_s = 0.3 if quick else 3.0
    rows = []
    for simulator in simulators:
        single = bench_single(config, budget_s, simulator=simulator)
        found = [{"simulator": simulator, "env": "single", "n_envs": 1, "env_steps_per_s": single}]
        for n in n_envs:
            speed, mib = bench_batched(config, n, budget_s, simulator=simulator)
            found.append(
                {
                    "simulator": simulator,
                    "env": "batched",
                    "n_envs": n,
                    "env_steps_per_s": speed,
                    "mib_per_env": mib,
                }
            )
        for n in n_envs:
            found.append(
                {
                    "simulator": simulator,
                    "env": "step only",
                    "n_envs": n,
                    "env_steps_per_s": bench_step(config, n, budget_s, simulator=simulator),
                }
            )
        for row in found:
            row["n_assets"] = len(config.market.assets)
            if on_row is not None:
                on_row(row)
        rows += found
    return rows


def bench_grid(
    *,
    markets: Sequence[str] = tuple(MARKETS),
    n_assets: Sequence[int] = (5, 10, 15),
    n_envs: Sequence[int] = (1, 64, 256, 1024),
    simulators: Sequence[str] = SIMULATORS,
    quick: bool = False,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """:func:`bench_config` over markets x asset counts (rows gain ``market``)."""
    rows = []
    for market in markets:
        for k in n_assets:

            def tagged(row: dict, market: str = market) -> None:
                row["market"] = market
                if on_row is not None:
                    on_row(row)

            rows += bench_config(
                grid_config(market, k),
                n_envs=n_envs,
                simulators=simulators,
                quick=quick,
                on_row=tagged,
            )
    return rows


def bench_env(config: SimulationConfig, quick: bool = False) -> dict:
    """One config's figures as a dict (the JSON form of ``defialloc bench env --config``)."""
    rows = bench_config(config, quick=quick)
    return {
        "rows": rows,
        "horizon": config.env.horizon,
        "n_assets": len(config.market.assets),
        "market_source": config.market.source,
    }


def compile_probe(config_path: str, parallel_envs: int) -> None:
    """Print (JSON) this process's import time, first single-env step and first step of
    ``parallel_envs`` envs (the threaded kernels), seconds. Run in a fresh process."""
    t0 = time.perf_counter()
    from defialloc.envs.compiled import CompiledSimulator  # noqa: PLC0415 (what is timed)

    t1 = time.perf_counter()
    config = load_config(config_path, {"env.horizon": 5})
    out = {"import_s": t1 - t0}
    for key, n in (("first_single_step_s", 1), ("first_parallel_step_s", parallel_envs)):
        sim = CompiledSimulator(config, n)
        sim.reset_envs(np.arange(n), np.arange(n))
        actions = np.zeros((n, sim.action_dim))
        start = time.perf_counter()
        sim.step(actions)
        sim.observe()
        out[key] = time.perf_counter() - start
    print(json.dumps(out))


def bench_compile(config_path: str = "configs/options.yaml") -> dict[str, dict[str, float]]:
    """Compile and cached-load times of the kernels: two fresh processes on one empty numba cache
    (``NUMBA_CACHE_DIR``), ``{"first_run": {...}, "cached": {...}}`` (see :func:`compile_probe`)."""
    from defialloc.envs.compiled.kernels_batch import PARALLEL_MIN_ENVS  # noqa: PLC0415

    code = (
        "from defialloc.envs.bench import compile_probe; "
        f"compile_probe({str(config_path)!r}, {PARALLEL_MIN_ENVS})"
    )
    out = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
        for run in ("first_run", "cached"):
            done = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            )
            out[run] = json.loads(done.stdout.strip().splitlines()[-1])
    return out
