"""Action transform: documented mapping, reachability of concentrated and all-cash portfolios."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defialloc.envs.actions import (
    actions_to_weights,
    apply_no_trade_band,
    validate_actions,
    weights_to_actions,
)


def test_hand_computed_mapping():
    # x = (a + 1) / 2 = [1, 0.5, 0, 0.5] -> w = x / 2
    w = actions_to_weights(np.array([1.0, 0.0, -1.0, 0.0]))
    np.testing.assert_allclose(w, [0.5, 0.25, 0.0, 0.25])


def test_zero_action_is_equal_weight_and_all_minus_one_is_cash():
    np.testing.assert_allclose(actions_to_weights(np.zeros(6)), np.full(6, 1 / 6))
    np.testing.assert_allclose(actions_to_weights(-np.ones(6)), [0, 0, 0, 0, 0, 1])


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 12), asset=st.integers(0, 12), level=st.floats(0.95, 1.0))
def test_concentrated_portfolios_and_cash_are_reachable_inside_the_box(n, asset, level):
    """Any single asset (or cash, index n) can get >= 95% weight from an action strictly inside the Box."""
    target = asset % (n + 1)
    a = np.full(n + 1, -0.999)
    a[target] = 0.999
    w = actions_to_weights(a)
    assert w[target] >= 0.95
    # and exactly any simplex point via the right inverse
    weights = np.full(n + 1, (1 - level) / n)
    weights[target] = level
    np.testing.assert_allclose(actions_to_weights(weights_to_actions(weights)), weights, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=10))
def test_weights_are_on_the_simplex(a):
    w = actions_to_weights(np.array(a))
    assert np.all(w >= 0)
    assert np.isclose(w.sum(), 1.0)


def test_no_trade_band():
    target = np.array([[0.5, 0.3, 0.2]])
    current = np.array([[0.495, 0.2, 0.305]])
    np.testing.assert_array_equal(apply_no_trade_band(target, current, 0.01), [[False, True]])


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([0.1, np.nan, 0.0]), "NaN or inf"),
        (np.array([0.1, np.inf, 0.0]), "NaN or inf"),
        (np.zeros(4), "shape"),
        (np.zeros((2, 3)), "shape"),
    ],
)
def test_bad_actions_are_rejected_clearly(bad, match):
    with pytest.raises(ValueError, match=match):
        validate_actions(bad, n_envs=1, action_dim=3)
