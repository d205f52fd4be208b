"""The exponential inside the loss kernels (``exp_vec`` in csrc/losses.hpp) against np.exp.

The kernels compute ratio = exp(new_log_prob - old_log_prob) with their own vectorizable
exp, not std::exp. It is observable through the surrogate's gradient: with
advantages = -1, old_log_prob = 0 and a clip_coef so large that no element is clipped,
grad = (1 * ratio) * (1 / n), exact when n is a power of two and the product is
normal, zero or infinite; with n = 1, grad = ratio exactly, subnormal ratios included.
"""

import numpy as np
import pytest

import ppo_core

# Huge clip_coef: 1 - eps < 0 <= ratio, so with A < 0 the clip never zeroes a gradient
# (float32: the largest float below 1e38 keeps 1 + eps finite).
CLIP = {np.float32: 1e38, np.float64: 1e300}
TINY = {np.float32: np.finfo(np.float32).tiny, np.float64: np.finfo(np.float64).tiny}


def kernel_exp(x: np.ndarray) -> np.ndarray:
    """exp(x) as the surrogate kernel computes it, through its gradient (n a power of 2)."""
    dtype = x.dtype.type
    n = x.size
    assert n & (n - 1) == 0, "n must be a power of two so that 1/n is exact"
    res = ppo_core.clipped_surrogate(x, np.zeros_like(x), np.full_like(x, -1), clip_coef=CLIP[dtype])
    return res.grad * dtype(n)


def kernel_exp_one(x) -> float:
    """exp(x) through a one-element call: grad = ratio exactly, subnormals included."""
    a = np.asarray([x])
    return ppo_core.clipped_surrogate(a, np.zeros_like(a), -np.ones_like(a),
                                      clip_coef=CLIP[a.dtype.type]).grad[0]


def reference(x: np.ndarray) -> np.ndarray:
    # float32: exp in float64 rounded once is the correctly rounded float32 (but for
    # double rounding in a handful of cases, which the 1-ulp bound absorbs).
    with np.errstate(over="ignore"):  # exp(1000) = inf is what the test wants
        return np.exp(x.astype(np.float64)).astype(x.dtype)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in units in the last place, for non-negative finite or infinite a, b."""
    itype = np.int32 if a.dtype == np.float32 else np.int64
    return np.abs(a.view(itype).astype(np.int64) - b.view(itype).astype(np.int64))


def wide_inputs(dtype, n=1 << 16, seed=0):
    rng = np.random.default_rng(seed)
    hi = 90.0 if dtype == np.float32 else 711.0
    parts = [
        rng.uniform(-hi - 20, hi, n // 4),                       # the whole range and beyond
        rng.uniform(-1, 1, n // 4),                              # near 0 (ratios near 1)
        rng.choice([-1, 1], n // 4) * 10.0 ** rng.uniform(-40, 2, n // 4),  # tiny to moderate
        np.round(rng.uniform(-hi, hi, n // 4) / np.log(2)) * np.log(2),     # near k ln 2
    ]
    return np.concatenate(parts).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_within_one_ulp_over_a_wide_range(dtype):
    x = wide_inputs(dtype)
    got, want = kernel_exp(x), reference(x)
    # Where ratio / n underflows the gradient loses bits: those are checked one by one below.
    exact = (want == 0) | (want * dtype(1.0 / x.size) >= TINY[dtype]) | np.isinf(want)
    assert exact.mean() > 0.9
    d = ulp_distance(got[exact], want[exact])
    assert d.max() <= 1, (x[exact][d.argmax()], got[exact][d.argmax()], want[exact][d.argmax()])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_special_values_and_range_ends(dtype):
    f = np.finfo(dtype)
    big = np.log(f.max)  # the largest x with a finite exp
    small = np.log(f.smallest_subnormal)
    xs = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, big, np.nextafter(big, np.inf, dtype=dtype),
                   big + 1, 1e30, f.max, -f.max, small, small - 0.3, small - 1, small + 0.5,
                   np.log(f.tiny), np.log(f.tiny) - 1, -1000.0, 1e-30, -1e-30, f.smallest_subnormal,
                   np.log(1.25), np.log(0.75)], dtype)
    want = reference(xs)
    for x, w in zip(xs, want):
        got = kernel_exp_one(x)
        assert got.dtype == dtype
        if np.isnan(w):
            assert np.isnan(got), x
        else:
            assert ulp_distance(np.array([got]), np.array([w]))[0] <= 1, (x, got, w)
    # The same values through the vectorized loop (n = 32, with the values repeated):
    # NaN stays NaN, infinities and zeros are exact, normal results within 1 ulp.
    v = np.resize(xs, 32).astype(dtype)
    got_v, want_v = kernel_exp(v), reference(v)
    assert np.array_equal(np.isnan(got_v), np.isnan(want_v))
    ok = ~np.isnan(want_v) & ((want_v == 0) | np.isinf(want_v) | (want_v / 32 >= TINY[dtype]))
    assert ulp_distance(got_v[ok], want_v[ok]).max() <= 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_is_exact_where_autograd_compares_at_the_clip_boundary(dtype):
    # tests/test_kernels.py compares gradients with autograd at ratio = 1 +- 0.25 exactly
    # (float64). The correctly rounded exp(log(r)) is r for these r in both dtypes (NumPy's
    # own float32 exp gives 1.2499999 for log(1.25), one ulp below).
    for r in (1.25, 0.75, 1.0, 0.5, 2.0):
        x = np.log(dtype(r))
        assert kernel_exp_one(x) == reference(np.array([x]))[0] == dtype(r)
    assert kernel_exp_one(np.log(1.25)) == np.exp(np.log(1.25))
