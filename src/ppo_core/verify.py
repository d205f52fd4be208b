"""Check this installed build of ppo_core against its NumPy spec.

Run ``python -m ppo_core.verify`` (needs the ``verify`` extra: hypothesis). It draws
random rollouts (shapes, dtypes, memory layouts, terminated/truncated patterns,
gamma and lambda including 0 and 1) and loss minibatches, runs each through the
compiled kernels and through ``ppo_core_spec``, the plain-loop definition installed
with the wheel, and fails on any difference beyond a floating-point tolerance.

The project's own test-suite imports the same strategies and properties from here,
so what CI proves and what a user re-checks on their machine is one code path.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import numpy as np

try:
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as exc:  # pragma: no cover - exercised by the CLI on a bare install
    raise ImportError(
        "ppo_core.verify needs hypothesis: pip install 'ppo_core[verify]'"
    ) from exc

import ppo_core
import ppo_core_spec as spec

# --------------------------------------------------------------------------------------
# Tolerances
#
# The kernels evaluate the same expressions in the same order as the spec, but in the
# result dtype, while the spec works in float64 on the same (already rounded) inputs.
# GAE and returns are recursions: every step rounds a value of the size of the running
# sum, and that error is carried on with weight (gamma*lam)^k, so the error of A_t is at
# most ~ eps * H * (|A| + |inputs|), where H = min(T, 1/(1 - gamma*lam)) is the
# effective horizon. We allow 8x that bound's constant for float32 (where the kernel
# rounds each step to 24 bits) and for float64 (where only compiler contraction into
# FMAs, e.g. on aarch64, can separate the two).
# --------------------------------------------------------------------------------------


def effective_horizon(T: int, decay: float) -> float:
    return float(T) if decay >= 1.0 else min(float(T), 1.0 / (1.0 - decay))


def recursion_atol(dtype, T: int, decay: float, expected: np.ndarray, *inputs) -> float:
    eps = float(np.finfo(dtype).eps)
    scale = max([float(np.max(np.abs(expected), initial=0.0))] +
                [float(np.max(np.abs(x), initial=0.0)) for x in inputs if x is not None])
    return 8.0 * eps * (effective_horizon(T, decay) + 1.0) * (scale + 1.0)


def assert_close(actual, expected, atol, what):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=0,
                               atol=atol, err_msg=what, strict=False)


# --------------------------------------------------------------------------------------
# Strategies: draw the shape first, then every array of that shape
# --------------------------------------------------------------------------------------

LAYOUTS = ("C", "F", "strided", "reversed")
MASK_DTYPES = (np.bool_, np.int8, np.int64, np.float32)


def relayout(a: np.ndarray, layout: str) -> np.ndarray:
    """The same values in another memory layout (a view into a bigger buffer, etc.)."""
    if layout == "C":
        return np.ascontiguousarray(a)
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided":
        big = np.zeros(tuple(2 * s + 1 for s in a.shape), dtype=a.dtype)
        view = big[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if layout == "reversed":
        flipped = np.ascontiguousarray(a[(slice(None, None, -1),) * a.ndim])
        return flipped[(slice(None, None, -1),) * a.ndim]
    raise ValueError(layout)


@dataclass
class Rollout:
    rewards: np.ndarray
    values: np.ndarray
    next_values: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    gamma: float
    lam: float

    def __repr__(self) -> str:  # keep failure reports readable for big arrays
        return (f"Rollout(shape={self.rewards.shape}, dtype={self.rewards.dtype}, "
                f"mask dtype={self.terminated.dtype}, gamma={self.gamma}, lam={self.lam}, "
                f"terminated={int(np.count_nonzero(self.terminated))}, "
                f"truncated={int(np.count_nonzero(self.truncated))}, "
                f"layouts=({self._layout(self.rewards)}, {self._layout(self.terminated)}))")

    @staticmethod
    def _layout(a):
        return "C" if a.flags.c_contiguous else "F" if a.flags.f_contiguous else f"strides={a.strides}"


unit = st.one_of(st.sampled_from([0.0, 1.0, 0.9, 0.95, 0.99]),
                 st.floats(0.0, 1.0, allow_nan=False))


@st.composite
def rollouts(draw, max_t: int = 3000, max_n: int = 64, small: bool = False,
             fast_paths: bool = False) -> Rollout:
    """A time-major rollout. ``small``: every element drawn by Hypothesis (shrinks to
    the exact failing values); otherwise shapes, flag rates, layouts and gamma/lambda
    are drawn and the bulk data comes from a seeded NumPy generator. ``fast_paths``:
    only contiguous 2-d rollouts with bool masks and a width at one of the kernels'
    block sizes, the inputs that take their dedicated (register-carry, SIMD) code."""
    two_d = fast_paths or draw(st.booleans())
    T = draw(st.integers(1, 12 if small else max_t))
    # Widths at the kernels' block sizes (4, 8, 16, 32 lanes) are drawn often.
    widths = st.integers(1, 8) if small else st.one_of(
        st.sampled_from([4, 8, 12, 16, 32]), st.integers(1, max_n))
    if fast_paths:
        widths = st.sampled_from([1, 3, 4, 8, 12, 16, 24, 32, 33])
    N = draw(widths) if two_d else None
    shape = (T,) if N is None else (T, N)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    mask_dtype = np.bool_ if fast_paths else draw(st.sampled_from(MASK_DTYPES))
    if small:
        elems = st.floats(-100, 100, allow_nan=False, width=32)
        r, v, nv = (draw(hnp.arrays(dtype, shape, elements=elems)) for _ in range(3))
        term = draw(hnp.arrays(np.bool_, shape))
        trunc = draw(hnp.arrays(np.bool_, shape))
    else:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        p_term = draw(st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]))
        p_trunc = draw(st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]))
        r = rng.normal(0, 1, shape).astype(dtype)
        v = rng.normal(0, 5, shape).astype(dtype)
        nv = rng.normal(0, 5, shape).astype(dtype)
        term = rng.random(shape) < p_term
        trunc = rng.random(shape) < p_trunc
    # Contiguous input takes the kernels' fast paths: draw it most often, and give the
    # masks the values' layout unless told otherwise, so every path is well covered.
    layout = "C" if fast_paths else draw(st.sampled_from(("C",) * 3 + LAYOUTS))
    mask_layout = "C" if fast_paths else draw(
        st.one_of(st.just(layout), st.sampled_from(LAYOUTS)))
    return Rollout(relayout(r, layout), relayout(v, layout), relayout(nv, layout),
                   relayout(term.astype(mask_dtype), mask_layout),
                   relayout(trunc.astype(mask_dtype), mask_layout),
                   draw(unit), draw(unit))


# clip_coef: the usual values, and extremes that float32 cannot hold: 1e-50 and 1e-46
# round to 0, 1e-40 to a subnormal, 1e39 and 1e300 saturate at FLT_MAX. Those must still
# compute what float64 and the spec compute (eps -> 0 clips to the old value or ratio 1;
# a huge eps never clips a finite input). With inf inputs a huge eps is left out: an inf
# ratio clipped to 1 + eps, times A, overflows float32's range where float64 has room.
tiny_clip_coefs = st.sampled_from([1e-50, 1e-46, 1e-40, 1e-9])
clip_coefs = st.one_of(st.sampled_from([0.1, 0.2, 0.3]), st.floats(0.01, 1.0),
                       tiny_clip_coefs, st.sampled_from([1e39, 1e300]))
finite_clip_coefs = st.one_of(st.sampled_from([0.1, 0.2, 0.3]), st.floats(0.01, 1.0),
                              tiny_clip_coefs)


@st.composite
def minibatches(draw, max_n: int = 2000, nonfinite: bool = False
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Three equal-shape arrays (log-probs / advantages or values / returns) and eps,
    1-d or 2-d, in any layout. ``nonfinite``: NaN, inf and -inf are scattered over
    each array (at a drawn rate, so some blocks of the kernels hold none), and some
    elements of the second array are set equal to the first or the third (inf - inf)."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.integers(1, max_n))
    shape = draw(st.sampled_from([(n,), (max(1, n // 8), 8)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = draw(st.sampled_from([0.01, 0.1, 0.5]))
    a = rng.normal(0, 1, shape)
    b = a + rng.normal(0, spread, shape)  # new/old log-probs, or values/old values
    c = rng.normal(0, 1, shape)
    if nonfinite:
        rate = draw(st.sampled_from([0.001, 0.01, 0.1, 0.5]))
        specials = np.array([np.nan, np.inf, -np.inf])
        for x in (a, b, c):
            hit = rng.random(shape) < rate
            x[hit] = rng.choice(specials, size=int(np.count_nonzero(hit)))
        for src in (a, c):
            same = rng.random(shape) < rate
            b[same] = src[same]
    layout = draw(st.sampled_from(("C",) * 3 + LAYOUTS))
    eps = draw(finite_clip_coefs if nonfinite else clip_coefs)
    return tuple(relayout(x.astype(dtype), layout) for x in (a, b, c)) + (eps,)


INTEGER_DTYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64,
                  np.uint8, np.uint16, np.uint32, np.uint64)


@st.composite
def integer_minibatches(draw, max_n: int = 200):
    """Loss inputs of one integer or bool dtype, 1-d or 2-d: small values, the dtype's
    extremes within +-255 (uint8 200 - 0 is e^200, finite only in float64) and pairs
    with old > new (which would wrap around in unsigned arithmetic)."""
    dtype = np.dtype(draw(st.sampled_from(INTEGER_DTYPES)))
    if dtype == np.bool_:
        lo, hi = 0, 1
    else:
        info = np.iinfo(dtype)
        lo, hi = max(int(info.min), -255), min(int(info.max), 255)
    n = draw(st.integers(1, max_n))
    shape = draw(st.sampled_from([(n,), (max(1, n // 4), 4)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    small = (max(lo, -3), min(hi, 3))
    out = []
    for _ in range(3):
        x = rng.integers(small[0], small[1] + 1, shape)
        wide = rng.random(shape) < draw(st.sampled_from([0.0, 0.1, 0.5]))
        x = np.where(wide, rng.integers(lo, hi + 1, shape), x)
        out.append(x.astype(dtype))
    return tuple(out) + (draw(clip_coefs),)


def documented_dtype(*arrays) -> np.dtype:
    """The result dtype that ``help(ppo_core)`` promises for these value arrays."""
    kinds = [np.asarray(a).dtype for a in arrays]
    if any(d.kind in "biu" or d == np.float64 for d in kinds):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def _f64(x):
    return np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------------------
# Properties: the build equals the spec
# --------------------------------------------------------------------------------------


def check_gae(ro: Rollout) -> None:
    adv, ret = ppo_core.gae(ro.rewards, ro.values, ro.next_values, ro.terminated,
                            ro.truncated, gamma=ro.gamma, lam=ro.lam)
    exp_adv, exp_ret = spec.gae(_f64(ro.rewards), _f64(ro.values), _f64(ro.next_values),
                                ro.terminated, ro.truncated, gamma=ro.gamma, lam=ro.lam)
    assert adv.dtype == ro.rewards.dtype and adv.shape == ro.rewards.shape, (adv.dtype, adv.shape)
    assert ret.dtype == ro.rewards.dtype and ret.shape == ro.rewards.shape
    T = ro.rewards.shape[0]
    atol = recursion_atol(ro.rewards.dtype, T, ro.gamma * ro.lam, exp_adv,
                          ro.rewards, ro.values, ro.next_values)
    assert_close(adv, exp_adv, atol, "advantages")
    assert_close(ret, exp_ret, atol, "returns")


def check_discounted_returns(ro: Rollout, with_next_values: bool) -> None:
    nv = ro.next_values if with_next_values else None
    got = ppo_core.discounted_returns(ro.rewards, ro.terminated, ro.truncated, nv,
                                      gamma=ro.gamma)
    exp = spec.discounted_returns(_f64(ro.rewards), ro.terminated, ro.truncated,
                                  None if nv is None else _f64(nv), gamma=ro.gamma)
    assert got.dtype == ro.rewards.dtype and got.shape == ro.rewards.shape
    atol = recursion_atol(ro.rewards.dtype, ro.rewards.shape[0], ro.gamma, exp,
                          ro.rewards, nv)
    assert_close(got, exp, atol, "discounted returns")


def check_next_values_from(ro: Rollout, with_final: bool) -> None:
    last = ro.next_values[-1]
    kw = dict(final_values=ro.next_values, done=ro.terminated) if with_final else {}
    got = ppo_core.next_values_from(ro.values, last, **kw)
    exp = spec.next_values_from(_f64(ro.values), _f64(last), **{
        k: (_f64(x) if k == "final_values" else x) for k, x in kw.items()})
    assert got.dtype == ro.values.dtype and got.shape == ro.values.shape
    # A pure gather: exact.
    np.testing.assert_array_equal(_f64(got), exp, strict=True)


def _finite(x) -> np.ndarray:
    x = _f64(x)
    return x[np.isfinite(x)]


def _max_abs(*arrays) -> float:
    """The largest finite magnitude in the arrays (0 for none): tolerances scale with
    it, while NaN and inf are compared exactly."""
    return max(float(np.max(np.abs(_finite(a)), initial=0.0)) for a in arrays)


def _loss_atol(dtype, *arrays) -> float:
    # One exp / product per element, then a mean accumulated in float64 by both: the
    # per-element rounding of the result dtype is the only difference. (Log-ratios are
    # clipped where e^x would overflow float64; integer input reaches e^255.)
    eps = float(np.finfo(dtype).eps)
    scale = max(_max_abs(np.exp(np.clip(_finite(a), -700, 700))) for a in arrays)
    return 16.0 * eps * (scale + 1.0)


def assert_scalar(actual: float, expected: float, atol: float, what) -> None:
    """A loss or statistic: NaN where the spec is NaN, the same inf where it is inf
    (the spec's NaN rule, exact), else within atol."""
    if np.isnan(expected) or np.isinf(expected):
        assert actual == expected or (np.isnan(actual) and np.isnan(expected)), \
            (what, actual, expected)
    else:
        assert abs(actual - expected) <= atol, (what, actual, expected)


def assert_same_nan(actual, expected, what) -> None:
    """NaN exactly where the spec has NaN: the NaN rule leaves no room for rounding."""
    np.testing.assert_array_equal(np.isnan(_f64(actual)), np.isnan(expected),
                                  err_msg=f"{what}: NaN positions differ")


def _near_kink_surrogate(new, old, adv, eps, dtype):
    """Elements whose clip decision could flip by one rounding of the result dtype."""
    with np.errstate(invalid="ignore", over="ignore"):
        ratio = np.exp(_f64(new) - _f64(old))
        tol = 8 * float(np.finfo(dtype).eps) * (1 + ratio)
        return (np.abs(ratio - (1 + eps)) < tol) | (np.abs(ratio - (1 - eps)) < tol) | \
            (np.abs(_f64(adv)) < tol)


def check_clipped_surrogate(new, old, adv, eps) -> None:
    res = ppo_core.clipped_surrogate(new, old, adv, clip_coef=eps)
    exp = spec.clipped_surrogate(_f64(new), _f64(old), _f64(adv), clip_coef=eps)
    assert isinstance(res, ppo_core.SurrogateResult)
    assert all(isinstance(x, float) for x in (res.loss, res.clip_fraction, res.approx_kl))
    dt = documented_dtype(new, old, adv)
    assert res.grad.dtype == dt and res.grad.shape == new.shape, (res.grad.dtype, dt)
    n = new.size
    with np.errstate(invalid="ignore"):
        log_ratio = _f64(new) - _f64(old)
    atol = _loss_atol(dt, log_ratio) * (1 + _max_abs(adv))
    kink = _near_kink_surrogate(new, old, adv, eps, dt)
    assert_scalar(res.loss, exp.loss, atol, "loss")
    assert_scalar(res.approx_kl, exp.approx_kl, atol, "approx_kl")
    assert abs(res.clip_fraction - exp.clip_fraction) <= np.count_nonzero(kink) / n + 1e-12
    assert_same_nan(res.grad, exp.grad, "grad")
    ok = ~kink
    assert_close(res.grad[ok], exp.grad[ok], atol / n, "grad")


def check_clipped_value_loss(values, old, returns, eps) -> None:
    for clip in (None, eps):
        res = ppo_core.clipped_value_loss(values, old, returns, clip_coef=clip)
        exp = spec.clipped_value_loss(_f64(values), _f64(old), _f64(returns), clip_coef=clip)
        assert isinstance(res, ppo_core.ValueLossResult) and isinstance(res.loss, float)
        # The clip fraction (which ppo_core.torch reports) from the same kernel call.
        _, _, clip_fraction = ppo_core.clipped_value_loss_stats(values, old, returns, clip_coef=clip)
        dt = documented_dtype(values, old, returns)
        assert res.grad.dtype == dt and res.grad.shape == values.shape, (res.grad.dtype, dt)
        n = values.size
        fe = float(np.finfo(dt).eps)
        scale = 1.0 + _max_abs(values, old, returns)
        atol = 16 * fe * scale * scale
        assert_scalar(res.loss, exp.loss, atol, ("loss", clip))
        assert_same_nan(res.grad, exp.grad, ("grad", clip))
        ok = np.ones(values.shape, bool)
        if clip is not None:
            # Elements where rounding in the result dtype could flip which term is
            # larger, or whether |v - old| < eps, are compared by the loss only (and
            # by their NaN-ness, above). Non-finite elements are never near a kink.
            v, o, R = _f64(values), _f64(old), _f64(returns)
            with np.errstate(invalid="ignore", over="ignore"):
                d = v - o
                vc = np.where(np.isnan(d), np.nan, o + np.clip(d, -clip, clip))
                margin = 8 * fe * scale
                ok = (np.abs(d) < clip - margin) | (
                    (np.abs(d) > clip + margin) &
                    (np.abs((v - R) ** 2 - (vc - R) ** 2) > 64 * fe * scale * scale))
                ok |= ~np.isfinite(d) | ~np.isfinite(v - R)
        assert_close(res.grad[ok], exp.grad[ok], 4 * fe * scale / n, "grad")
        assert abs(clip_fraction - exp.clip_fraction) <= np.count_nonzero(~ok) / n + 1e-12, \
            ("clip_fraction", clip, clip_fraction, exp.clip_fraction)


# Hypothesis-wrapped properties. Settings (examples, deadline) come from the active
# profile: the test-suite's conftest or ``main`` below.

@given(rollouts())
@example(Rollout(np.ones(1), np.zeros(1), np.ones(1), np.ones(1, bool), np.ones(1, bool), 0.0, 0.0))
@example(Rollout(np.ones(5), np.zeros(5), np.ones(5), np.ones(5, bool), np.zeros(5, bool), 1.0, 1.0))
@example(Rollout(np.ones(5), np.zeros(5), np.ones(5), np.zeros(5, bool), np.ones(5, bool), 0.99, 1.0))
def gae_matches_spec(ro):
    check_gae(ro)


@given(rollouts(small=True))
def gae_matches_spec_small(ro):
    check_gae(ro)


@given(rollouts(max_t=600, fast_paths=True))
def gae_matches_spec_fast_paths(ro):
    check_gae(ro)


@given(rollouts(), st.booleans())
def discounted_returns_matches_spec(ro, with_next_values):
    check_discounted_returns(ro, with_next_values)


@given(rollouts(small=True), st.booleans())
def discounted_returns_matches_spec_small(ro, with_next_values):
    check_discounted_returns(ro, with_next_values)


@given(rollouts(max_t=500), st.booleans())
def next_values_from_matches_spec(ro, with_final):
    check_next_values_from(ro, with_final)


@given(minibatches())
@example((np.array([0.5, -0.5], np.float32), np.array([0, 0], np.float32), np.array([1, 1], np.float32), 1e-50))
def clipped_surrogate_matches_spec(mb):
    check_clipped_surrogate(*mb)


@given(minibatches())
@example((np.array([1], np.float32), np.array([0], np.float32), np.array([1], np.float32), 1e-50))  # float32 eps = 0
def clipped_value_loss_matches_spec(mb):
    check_clipped_value_loss(*mb)


# NaN and inf inputs: the spec's NaN rule (a NaN input or inf - inf gives that element a
# NaN term and gradient; it is not counted as clipped) holds exactly in the build.
_NAN, _INF = np.nan, np.inf


@given(minibatches(nonfinite=True))
@example((np.array([_NAN]), np.array([0.0]), np.array([1.0]), 0.2))
@example((np.array([0.0, _INF]), np.array([_INF, 0.0]), np.array([1.0, 0.0]), 0.2))
def clipped_surrogate_nan_rule_matches_spec(mb):
    check_clipped_surrogate(*mb)


@given(minibatches(nonfinite=True))
@example((np.array([_NAN]), np.array([0.0]), np.array([0.0]), 0.2))
@example((np.array([0.0, _INF, 3.0]), np.array([_NAN, _INF, _INF]), np.array([0.0, 1.0, _INF]), 0.2))
@example((np.arange(600.0), np.r_[np.arange(599.0), _NAN], np.zeros(600), 0.2))
def clipped_value_loss_nan_rule_matches_spec(mb):
    check_clipped_value_loss(*mb)


@given(integer_minibatches())
def losses_on_integer_input_match_spec(mb):
    check_clipped_surrogate(*mb)
    check_clipped_value_loss(*mb)


PROPERTIES: Dict[str, Callable[[], None]] = {
    "gae == spec (large rollouts, seeded data)": gae_matches_spec,
    "gae == spec (small rollouts, every value drawn)": gae_matches_spec_small,
    "gae == spec (contiguous, block widths: the SIMD paths)": gae_matches_spec_fast_paths,
    "discounted_returns == spec (large)": discounted_returns_matches_spec,
    "discounted_returns == spec (small)": discounted_returns_matches_spec_small,
    "next_values_from == spec": next_values_from_matches_spec,
    "clipped_surrogate == spec (loss, grad, clip_fraction, approx_kl)": clipped_surrogate_matches_spec,
    "clipped_value_loss == spec (unclipped and clipped)": clipped_value_loss_matches_spec,
    "both losses == spec on integer and bool input (float64 result)": losses_on_integer_input_match_spec,
    "clipped_surrogate == spec with NaN and inf (the NaN rule)": clipped_surrogate_nan_rule_matches_spec,
    "clipped_value_loss == spec with NaN and inf (the NaN rule)": clipped_value_loss_nan_rule_matches_spec,
}


def _run_with(prop: Callable[[], None], run_settings: settings) -> None:
    """Run a @given property with these settings. @given binds the settings in force
    when the module is imported (the default profile, or the test-suite's), before
    main() knows --examples; applying @settings would mark the module's function for
    good (a second application raises), and loading a profile would not reach it. So
    the bound settings are swapped for the run, where @given looks them up, and put
    back."""
    bound = prop._hypothesis_internal_use_settings  # type: ignore[attr-defined]
    prop._hypothesis_internal_use_settings = run_settings  # type: ignore[attr-defined]
    try:
        prop()
    finally:
        prop._hypothesis_internal_use_settings = bound  # type: ignore[attr-defined]


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ppo_core.verify",
        description="Check this installed ppo_core build against its NumPy spec.")
    parser.add_argument("--examples", type=int, default=100,
                        help="Hypothesis examples per property (default 100)")
    parser.add_argument("--seed", type=int, default=None,
                        help="Hypothesis seed, for a reproducible run")
    args = parser.parse_args(argv)
    if args.examples < 1:
        parser.error("--examples must be >= 1")

    run_settings = settings(
        max_examples=args.examples, deadline=None, derandomize=False, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    print(f"ppo_core {ppo_core.__version__} from {ppo_core.__file__}")
    print(f"spec: {spec.__file__}")
    print(f"numpy {np.__version__}; {args.examples} examples per property; "
          "float32 and float64; 1-d and 2-d; C, Fortran, strided and reversed layouts; "
          "bool, int and float masks; gamma and lam in [0, 1] including 0 and 1; "
          "losses with NaN and inf inputs and on integer and bool input")
    failed = 0
    t0 = time.perf_counter()
    for name, prop in PROPERTIES.items():
        t = time.perf_counter()
        run = prop
        if args.seed is not None:
            from hypothesis import seed as hseed
            run = hseed(args.seed)(prop)
        try:
            _run_with(run, run_settings)
        except Exception as exc:  # report every property, then fail
            failed += 1
            print(f"FAIL  {name}\n      {type(exc).__name__}: {exc}")
        else:
            print(f"ok    {name}  ({time.perf_counter() - t:.1f} s)")
    total = len(PROPERTIES)
    print(f"{total - failed} passed, {failed} failed in {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
