"""Per-env time gathers (envs/indexing.py) against numpy's two-array indexing."""

import numpy as np
import pytest

from defialloc.envs.indexing import flat_time_index, gather_at


@pytest.mark.parametrize("trailing", [(), (5,), (3, 2)])
def test_gather_at_equals_fancy_indexing(trailing):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(4, 9, *trailing))
    tau = np.array([0, 8, 3, 5])
    flat = flat_time_index(4, 9, tau)
    np.testing.assert_array_equal(gather_at(arr, flat), arr[np.arange(4), tau])
    np.testing.assert_array_equal(
        gather_at(arr, flat + 1 - (tau == 8)), arr[np.arange(4), np.minimum(tau + 1, 8)]
    )
    # a non-contiguous view takes the fallback path, with the same result
    view = np.asfortranarray(arr)
    np.testing.assert_array_equal(gather_at(view, flat), arr[np.arange(4), tau])


def test_gather_returns_a_copy():
    arr = np.zeros((2, 3, 2))
    out = gather_at(arr, flat_time_index(2, 3, np.array([1, 2])))
    out += 1.0
    assert not arr.any()
