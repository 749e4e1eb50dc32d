"""The code is installed under one ``defialloc`` namespace: no top-level ``envs``/``agents``/... names.

``envs``, ``agents`` and ``evaluation`` are also unrelated PyPI packages; installing this project next to
them must break neither. The folders stay at the repository root (setuptools' package-dir mapping).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import gymnasium as gym

from defialloc import envs

ROOT = Path(__file__).resolve().parents[1]
TOP = ("envs", "agents", "evaluation", "training")


def _python_files() -> list[Path]:
    skip = {".venv", ".git", "runs", "reports", "mlruns"}
    return [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]


def test_every_package_folder_is_installed_under_the_namespace():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        "defialloc." + ".".join(d.relative_to(ROOT).parts)
        for top in TOP
        for d in [ROOT / top, *(ROOT / top).rglob("*")]
        if d.is_dir() and (d / "__init__.py").exists()
    }
    assert on_disk == set(config["packages"])
    assert config["package-dir"] == {f"defialloc.{t}": t for t in TOP}


def test_no_module_imports_a_top_level_name():
    offenders = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] in TOP
            ]
    assert offenders == []


def test_installed_names_do_not_collide(tmp_path):
    """Outside the repository, only ``defialloc.*`` is importable: a PyPI ``envs`` would win its name."""
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "__init__.py").write_text("THIRD_PARTY = True\n")
    code = (
        "import envs, defialloc.envs, defialloc.training.cli;"
        "assert envs.THIRD_PARTY and defialloc.envs.ENV_ID == 'defialloc/DeFiMarket-v0'"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_env_id_has_the_namespace_and_the_old_id_is_an_alias():
    assert envs.ENV_ID == "defialloc/DeFiMarket-v0"
    for env_id in (envs.ENV_ID, envs.LEGACY_ENV_ID):
        env = gym.make(env_id, **{"env.horizon": 10})
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        env.close()
