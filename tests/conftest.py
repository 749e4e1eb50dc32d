"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

#: lending + perps (+ cascades, on with lending): the DeFi market of configs/leverage.yaml
LEVERED = {"env.lending.enabled": True, "env.perps.enabled": True}


@pytest.fixture(scope="session")
def levered_policy_dir(tmp_path_factory) -> Path:
    """An exported (untrained, trading every bar) PPO of the levered and hedged env (~7 s)."""
    from tests.test_paper import make_policy_dir

    return make_policy_dir(tmp_path_factory.mktemp("levered"), seed=4, overrides=LEVERED)
