"""Curve StableSwap: reference swaps, invariant solved exactly, y preserves D, fee on the output."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defialloc.envs.protocols.stableswap import get_D, get_dy, get_y

BALANCED = np.array([1e6, 1e6, 1e6])


def _residual(x: np.ndarray, d: np.ndarray, amp: float) -> np.ndarray:
    """Relative residual of Ann*S + D = Ann*D + D^(n+1) / (n^n prod x), Ann = A n."""
    n = x.shape[-1]
    ann = amp * n
    lhs = ann * x.sum(-1) + d
    rhs = ann * d + d ** (n + 1) / (n**n * np.prod(x, axis=-1))
    return (lhs - rhs) / lhs


@pytest.mark.parametrize(("amp", "expected"), [(100, 99_900.110864), (2000, 99_994.952327)])
def test_reference_swaps_balanced_three_coin_pool(amp, expected):
    assert get_dy(0, 1, 1e5, BALANCED, amp) == pytest.approx(expected, abs=1e-6)
    # the pool is symmetric: any pair of coins gives the same
    assert get_dy(2, 0, 1e5, BALANCED, amp) == pytest.approx(expected, abs=1e-6)


def test_fee_is_taken_on_the_output():
    no_fee = get_dy(0, 1, 1e5, BALANCED, 100)
    assert get_dy(0, 1, 1e5, BALANCED, 100, fee=0.0004) == pytest.approx(
        99_900.110864 * (1 - 0.0004), abs=1e-6
    )
    assert get_dy(0, 1, 1e5, BALANCED, 100, fee=0.01) == pytest.approx(no_fee * 0.99, rel=1e-15)


def test_balanced_pool_invariant_is_the_sum():
    assert get_D(BALANCED, 100) == pytest.approx(3e6, rel=1e-15)
    assert get_D(np.array([5.0, 5.0]), 1) == pytest.approx(10.0, rel=1e-15)


def test_two_coin_invariant_matches_polynomial_root():
    # n = 2: D^3 / (4 x1 x2) + (Ann - 1) D - Ann S = 0, one positive root (independent solver)
    x = np.array([3e5, 1.7e6])
    for amp in (1.0, 10.0, 500.0):
        ann = 2 * amp
        roots = np.roots([1 / (4 * x[0] * x[1]), 0.0, ann - 1, -ann * x.sum()])
        positive = roots[(np.abs(roots.imag) < 1e-9) & (roots.real > 0)].real
        assert len(positive) == 1
        assert get_D(x, amp) == pytest.approx(positive[0], rel=1e-12)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(2, 4),
    seed=st.integers(0, 2**32 - 1),
    log_amp=st.floats(0.0, 4.0),
)
def test_get_d_solves_the_invariant_batched(n, seed, log_amp):
    rng = np.random.default_rng(seed)
    x = 10 ** rng.uniform(3, 7, (6, n)) * rng.uniform(0.1, 1.0, (6, 1))
    amp = 10**log_amp
    d = get_D(x, amp)
    assert d.shape == (6,)
    np.testing.assert_allclose(_residual(x, d, amp), 0.0, atol=1e-12)
    # D lies between the constant-product and constant-sum values
    assert np.all(d <= x.sum(-1) * (1 + 1e-12))
    assert np.all(d >= n * np.prod(x, -1) ** (1 / n) * (1 - 1e-12))


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(2, 4),
    seed=st.integers(0, 2**32 - 1),
    log_amp=st.floats(0.0, 3.5),
    frac=st.floats(0.0, 2.0),
)
def test_get_y_preserves_the_invariant(n, seed, log_amp, frac):
    rng = np.random.default_rng(seed)
    x = 10 ** rng.uniform(4, 6, (4, n))
    amp = 10**log_amp
    i, j = rng.choice(n, 2, replace=False)
    x_new_i = x[:, i] * (1 + frac)
    y = get_y(int(i), int(j), x_new_i, x, amp)
    after = x.copy()
    after[:, i] = x_new_i
    after[:, j] = y
    np.testing.assert_allclose(get_D(after, amp), get_D(x, amp), rtol=1e-11)
    assert np.all(y <= x[:, j] * (1 + 1e-12))  # selling i into the pool never adds j


def test_amplification_orders_the_output():
    # higher A -> flatter curve -> more output, bounded by the constant-sum 1:1 price
    outs = [float(get_dy(0, 1, 1e5, BALANCED, amp)) for amp in (1, 10, 100, 2000, 1e6)]
    assert outs == sorted(outs)
    assert outs[-1] < 1e5
    assert outs[-1] == pytest.approx(1e5, rel=1e-6)


def test_batched_dx_and_amplification():
    dx = np.array([0.0, 1e3, 1e5])
    amp = np.array([100.0, 100.0, 2000.0])
    out = get_dy(0, 1, dx, np.broadcast_to(BALANCED, (3, 3)), amp)
    assert out[0] == 0.0
    assert out[2] == pytest.approx(99_994.952327, abs=1e-6)
    assert out[1] == pytest.approx(get_dy(0, 1, 1e3, BALANCED, 100), rel=1e-15)
    # scalar pool, vector of trade sizes
    many = get_dy(1, 2, dx, BALANCED, 100)
    assert many.shape == (3,)
    assert many[2] == pytest.approx(99_900.110864, abs=1e-6)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: get_dy(0, 0, 1.0, BALANCED, 100), "i and j must be different"),
        (lambda: get_dy(0, 3, 1.0, BALANCED, 100), r"j must be an int in \[0, 2\]; got 3"),
        (lambda: get_dy(-1, 1, 1.0, BALANCED, 100), r"i must be an int in \[0, 2\]; got -1"),
        (lambda: get_dy(0, 1, -5.0, BALANCED, 100), r"dx must be in \[0, inf\); got -5.0"),
        (lambda: get_dy(0, 1, 1.0, BALANCED, 0.5), r"A must be in \[1, 1e\+06\]; got 0.5"),
        (lambda: get_dy(0, 1, 1.0, BALANCED, 100, fee=1.0), r"fee must be in \[0, 1\); got 1.0"),
        (
            lambda: get_D(np.array([1.0, 0.0, 2.0]), 100),
            r"x must be in \(0, inf\); got 0.0 at index \(1,\)",
        ),
        (lambda: get_D(np.array([1.0]), 100), "trailing coin axis of length n >= 2"),
        (lambda: get_y(0, 1, -1.0, BALANCED, 100), r"x_new_i must be in \(0, inf\)"),
        (lambda: get_y(0.5, 1, 1.0, BALANCED, 100), "i must be an int"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
