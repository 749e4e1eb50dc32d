"""Config loading: sections by path, dotted overrides, clear errors."""

import pytest

from defialloc.envs.config import ConfigError, load_config, parse_cli_overrides


def test_default_config_loads_and_overrides_apply():
    cfg = load_config(
        None, parse_cli_overrides(["env.horizon=90", "env.reward.kind=differential_sharpe"])
    )
    assert cfg.env.horizon == 90
    assert cfg.env.reward.kind == "differential_sharpe"
    assert cfg.market.assets == ["BTC", "ETH", "SOL", "LINK", "AVAX"]


def test_hash_changes_with_config():
    assert load_config().config_hash() != load_config(None, {"env.horizon": 10}).config_hash()
    assert load_config().config_hash() == load_config().config_hash()


@pytest.mark.parametrize(
    "items, fragment",
    [
        (["env.reward.kind=sharpe"], "env.reward.kind"),
        (["env.initial_value_usd=-5"], "greater than 0"),
        (["env.unknown_key=1"], "unknown key"),
        (["nosuchsection.x=1"], "nosuchsection"),
    ],
)
def test_errors_name_key_value_and_allowed(items, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, parse_cli_overrides(items))


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_cli_overrides(["env.horizon"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("does/not/exist.yaml")


def test_a_section_can_be_overridden_by_a_file_and_then_refined():
    cfg = load_config(
        None, {"market": "configs/market/replay_heldout.yaml", "market.assets": ["BTC", "ETH"]}
    )
    assert cfg.market.source == "replay"
    assert str(cfg.market.start) == "2023-01-01"
    assert cfg.market.assets == ["BTC", "ETH"]
