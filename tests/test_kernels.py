"""The compiled kernels equal the spec, reject bad input clearly, and are thread-safe.

The spec-comparison properties are imported from ``ppo_core.verify`` so that CI and a
user's ``python -m ppo_core.verify`` run the very same checks.
"""

import threading

import numpy as np
import pytest

import ppo_core
import ppo_core_spec as spec
from ppo_core import verify

# The spec comparisons (Hypothesis; examples set by the profile in conftest.py).
test_gae_matches_spec = verify.gae_matches_spec
test_gae_matches_spec_small = verify.gae_matches_spec_small
test_gae_matches_spec_fast_paths = verify.gae_matches_spec_fast_paths
test_discounted_returns_matches_spec = verify.discounted_returns_matches_spec
test_discounted_returns_matches_spec_small = verify.discounted_returns_matches_spec_small
test_next_values_from_matches_spec = verify.next_values_from_matches_spec
test_clipped_surrogate_matches_spec = verify.clipped_surrogate_matches_spec
test_clipped_value_loss_matches_spec = verify.clipped_value_loss_matches_spec
test_losses_on_integer_input_match_spec = verify.losses_on_integer_input_match_spec
test_clipped_surrogate_nan_rule_matches_spec = verify.clipped_surrogate_nan_rule_matches_spec
test_clipped_value_loss_nan_rule_matches_spec = verify.clipped_value_loss_nan_rule_matches_spec


def rollout(T=7, N=3, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    shape = (T,) if N is None else (T, N)
    return dict(
        rewards=rng.normal(size=shape).astype(dtype),
        values=rng.normal(size=shape).astype(dtype),
        next_values=rng.normal(size=shape).astype(dtype),
        terminated=rng.random(shape) < 0.2,
        truncated=rng.random(shape) < 0.2,
    )


def call_gae(ro, gamma=0.99, lam=0.95):
    return ppo_core.gae(ro["rewards"], ro["values"], ro["next_values"], ro["terminated"],
                        ro["truncated"], gamma=gamma, lam=lam)


# ---------------------------------------------------------------- dtypes and layouts

@pytest.mark.parametrize("dtypes,expected", [
    ((np.float32, np.float32, np.float32), np.float32),
    ((np.float32, np.float64, np.float32), np.float64),
    ((np.float32, np.int64, np.float32), np.float64),
    ((np.int32, np.int32, np.int32), np.float64),
    ((np.int8, np.int8, np.int8), np.float64),
    ((np.uint8, np.float32, np.uint8), np.float64),
    ((np.float32, np.bool_, np.float32), np.float64),
    ((np.float16, np.int16, np.float16), np.float64),
    ((np.float16, np.float16, np.float16), np.float32),
    ((np.float16, np.float32, np.float16), np.float32),
    ((np.float64, np.float64, np.float64), np.float64),
])
def test_result_dtype_rule(dtypes, expected):
    ro = rollout()
    for key, dt in zip(("rewards", "values", "next_values"), dtypes):
        ro[key] = (ro[key] * 4).astype(dt)
    adv, ret = call_gae(ro)
    assert adv.dtype == expected and ret.dtype == expected
    exp_adv, _ = spec.gae(*(np.asarray(ro[k], np.float64) for k in ("rewards", "values", "next_values")),
                          ro["terminated"], ro["truncated"], gamma=0.99, lam=0.95)
    np.testing.assert_allclose(adv, exp_adv, rtol=1e-5, atol=1e-5)


INTEGER_DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64,
                  np.uint8, np.uint16, np.uint32, np.uint64]


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=lambda d: np.dtype(d).name)
def test_integer_and_bool_values_promote_to_float64(dtype):
    """Any integer or bool value-carrying argument makes the result float64, as the
    docs say (float32 would round int32 beyond 2^24 and overflow exp where float64 does
    not), alone or mixed with float32."""
    ro = rollout(T=6, N=2)
    ints = {k: (np.abs(ro[k]) * 3).astype(dtype) for k in ("rewards", "values", "next_values")}
    for mixed in (False, True):
        vals = dict(ints)
        if mixed:
            vals["values"] = ro["values"].astype(np.float32)
        adv, ret = ppo_core.gae(vals["rewards"], vals["values"], vals["next_values"],
                                ro["terminated"], ro["truncated"], gamma=0.9, lam=0.8)
        assert adv.dtype == ret.dtype == np.float64, (mixed, adv.dtype)
        exp_adv, exp_ret = spec.gae(vals["rewards"], vals["values"], vals["next_values"],
                                    ro["terminated"], ro["truncated"], gamma=0.9, lam=0.8)
        np.testing.assert_allclose(adv, exp_adv, rtol=1e-12, atol=1e-12)
        G = ppo_core.discounted_returns(vals["rewards"], ro["terminated"], ro["truncated"],
                                        vals["next_values"], gamma=0.9)
        assert G.dtype == np.float64
        nv = ppo_core.next_values_from(vals["values"], vals["next_values"][-1])
        assert nv.dtype == np.float64
        for loss in (ppo_core.clipped_surrogate, ppo_core.clipped_value_loss):
            res = loss(vals["rewards"], vals["values"], vals["next_values"], clip_coef=0.2)
            assert res.grad.dtype == np.float64, (loss.__name__, mixed)


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=lambda d: np.dtype(d).name)
def test_integer_and_bool_losses_equal_the_spec(dtype):
    """Integer log-probs and advantages over the dtype's range: no wraparound (old >
    new in an unsigned dtype), no overflow of exp (uint8 200 - 0 gives e^200, finite in
    float64) and so no NaN where the spec is finite."""
    info = np.iinfo(dtype) if dtype != np.bool_ else None
    hi = 1 if info is None else min(int(info.max), 255)
    lo = 0 if info is None else max(int(info.min), -255)
    grid = np.array([lo, 0, 1, hi // 2, hi], dtype=np.int64)
    new, old, adv = (np.array(x).astype(dtype) for x in
                     np.meshgrid(grid, grid, np.clip(grid, lo, min(hi, 2)), indexing="ij"))
    res = ppo_core.clipped_surrogate(new, old, adv, clip_coef=0.2)
    exp = spec.clipped_surrogate(new, old, adv, clip_coef=0.2)
    assert np.isfinite(exp.loss) and np.isfinite(exp.grad).all()
    assert np.isfinite(res.loss) and np.isfinite(res.grad).all(), (res.loss, res.grad)
    assert res.loss == pytest.approx(exp.loss, rel=1e-12)
    np.testing.assert_allclose(res.grad, exp.grad, rtol=1e-12, atol=0)
    assert res.clip_fraction == exp.clip_fraction
    vres = ppo_core.clipped_value_loss(new, old, adv, clip_coef=0.5)
    vexp = spec.clipped_value_loss(new, old, adv, clip_coef=0.5)
    assert vres.loss == pytest.approx(vexp.loss, rel=1e-12)
    np.testing.assert_allclose(vres.grad, vexp.grad, rtol=1e-12, atol=0)


@pytest.mark.parametrize("mask_dtype", [np.bool_, np.int8, np.uint8, np.int64, np.float32, np.float64])
def test_masks_read_as_bool(mask_dtype):
    ro = rollout()
    base = call_gae(ro)
    for key in ("terminated", "truncated"):
        # nonzero values other than 1 (and negative ones) are True
        ro[key] = (ro[key].astype(mask_dtype) * (3 if mask_dtype != np.bool_ else 1))
        if np.issubdtype(mask_dtype, np.signedinteger) or np.issubdtype(mask_dtype, np.floating):
            ro[key] = -ro[key]
    got = call_gae(ro)
    np.testing.assert_array_equal(got[0], base[0])


def test_no_copy_of_matching_inputs(monkeypatch):
    """Inputs already of the result dtype reach the kernel as the caller's memory,
    strided or not (a copy would be a silent cost on every call)."""
    ro = rollout(T=20, N=6, dtype=np.float32)
    strided = {k: v[::2, ::3] for k, v in ro.items()}
    seen = {}
    real = ppo_core._core.gae

    def spy(rewards, values, next_values, terminated, truncated, **kw):
        seen.update(rewards=rewards, values=values, next_values=next_values,
                    terminated=terminated, truncated=truncated)
        return real(rewards, values, next_values, terminated, truncated, **kw)

    monkeypatch.setattr(ppo_core._core, "gae", spy)
    call_gae(strided)
    for k, arr in strided.items():
        assert np.shares_memory(seen[k], arr), k


@pytest.mark.parametrize("layout", ["F", "strided", "reversed", "transposed"])
def test_layouts_equal_contiguous(layout):
    ro = rollout(T=33, N=5)
    expected = call_gae(ro)
    if layout == "transposed":
        # (N, T) storage read through its transpose: stride over time is one element.
        views = {k: np.ascontiguousarray(v.T).T for k, v in ro.items()}
    else:
        views = {k: verify.relayout(v, layout) for k, v in ro.items()}
    got = call_gae(views)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(
        ppo_core.discounted_returns(views["rewards"], views["terminated"], views["truncated"],
                                    views["next_values"], gamma=0.9),
        ppo_core.discounted_returns(ro["rewards"], ro["terminated"], ro["truncated"],
                                    ro["next_values"], gamma=0.9))


@pytest.mark.parametrize("shape", [(0,), (0, 3), (5, 0)])
def test_empty_rollouts_give_empty_outputs(shape):
    z = np.zeros(shape, np.float32)
    adv, ret = ppo_core.gae(z, z, z, z, z, gamma=0.9, lam=0.9)
    assert adv.shape == shape and ret.shape == shape and adv.dtype == np.float32
    assert ppo_core.discounted_returns(z, z, z, gamma=0.9).shape == shape
    assert ppo_core.next_values_from(z, np.zeros(shape[1:], np.float32)).shape == shape


def test_torch_tensors_accepted():
    torch = pytest.importorskip("torch")
    ro = rollout(dtype=np.float32)
    tens = {k: torch.from_numpy(v) for k, v in ro.items()}
    np.testing.assert_array_equal(call_gae(tens)[0], call_gae(ro)[0])


# ---------------------------------------------------------------- NaN and inf

def test_nan_propagates_within_episode_only():
    r = np.array([1.0, np.nan, 1.0, 1.0])
    v = np.zeros(4)
    nv = np.zeros(4)
    term = np.array([False, False, True, False])
    adv, ret = ppo_core.gae(r, v, nv, term, np.zeros(4, bool), gamma=0.9, lam=0.9)
    assert np.isnan(adv[0]) and np.isnan(adv[1])
    assert np.isfinite(adv[2]) and np.isfinite(adv[3])
    G = ppo_core.discounted_returns(r, term, np.zeros(4, bool), gamma=0.9)
    assert np.isnan(G[:2]).all() and np.isfinite(G[2:]).all()


def test_inf_propagates():
    adv, _ = ppo_core.gae(np.array([1.0, np.inf]), np.zeros(2), np.zeros(2),
                          np.zeros(2, bool), np.zeros(2, bool), gamma=0.9, lam=0.9)
    assert adv[0] == np.inf and adv[1] == np.inf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_reaches_losses(dtype):
    a = np.array([0.1, np.nan, 0.2], dtype)
    b = np.zeros(3, dtype)
    A = np.ones(3, dtype)
    res = ppo_core.clipped_surrogate(a, b, A, clip_coef=0.2)
    assert np.isnan(res.loss) and np.isnan(res.approx_kl) and np.isnan(res.grad[1])
    res = ppo_core.clipped_surrogate(b, b, np.array([1, np.nan, 1], dtype), clip_coef=0.2)
    assert np.isnan(res.loss) and np.isnan(res.grad[1]) and np.isfinite(res.grad[0])
    for clip in (None, 0.2):
        res = ppo_core.clipped_value_loss(a, b, A, clip_coef=clip)
        assert np.isnan(res.loss) and np.isnan(res.grad[1]) and np.isfinite(res.grad[0])


NAN, INF = float("nan"), float("inf")

# (values, old_values, returns): one element each, whose clipped value loss term must be
# NaN (a NaN input, or inf - inf). Row 0 is the reported case: v = NaN gave grad 0 and
# clip fraction 1 in the spec, NaN and 0 in the kernel.
NAN_VALUE_CASES = [
    (NAN, 0.0, 0.0), (0.0, NAN, 0.0), (0.0, 0.0, NAN), (NAN, NAN, NAN),
    (INF, 0.0, INF), (INF, INF, 0.0), (-INF, -INF, 5.0), (3.0, NAN, 3.0),
]


@pytest.mark.parametrize("impl", [ppo_core, spec], ids=["kernel", "spec"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", NAN_VALUE_CASES, ids=str)
def test_value_loss_nan_rule(impl, dtype, case):
    """NaN propagates as IEEE arithmetic would: v_c = old + clip(v - old) is NaN when
    v - old is, max() of two squared errors is NaN when either is (np.maximum,
    torch.maximum), so the element's loss term and gradient are NaN; a NaN element is
    not counted as clipped (NaN > x is false), as in the surrogate's clip fraction."""
    v, old, R = (np.array([x, 0.5], dtype) for x in case)  # a finite second element
    R[1], old[1] = 0.25, 0.5
    res = ppo_core.clipped_value_loss_stats(v, old, R, clip_coef=0.2) if impl is ppo_core else \
        spec.clipped_value_loss(v, old, R, clip_coef=0.2)
    loss, grad, clip_fraction = res[0], res[1], res[2]
    assert np.isnan(loss), loss
    assert np.isnan(grad[0]) and grad[1] == pytest.approx(0.125), grad
    assert clip_fraction == 0.0


@pytest.mark.parametrize("impl", [ppo_core, spec], ids=["kernel", "spec"])
def test_value_loss_nan_in_old_values_is_ignored_without_clipping(impl):
    """Without clipping old_values is not part of the loss."""
    v, old, R = np.array([1.0, 2.0]), np.array([NAN, INF]), np.array([0.0, 0.0])
    if impl is ppo_core:
        loss, grad, cf = ppo_core.clipped_value_loss_stats(v, old, R, clip_coef=None)
    else:
        loss, grad, cf = spec.clipped_value_loss(v, old, R)
    assert loss == 1.25 and list(grad) == [0.5, 1.0] and cf == 0.0


# (new_log_prob, old_log_prob, advantage): the surrogate follows the same rule.
NAN_SURROGATE_CASES = [(NAN, 0.0, 1.0), (0.0, NAN, -1.0), (0.0, 0.0, NAN), (5.0, 0.0, NAN),
                       (INF, INF, 1.0), (INF, 0.0, 0.0)]


@pytest.mark.parametrize("impl", [ppo_core, spec], ids=["kernel", "spec"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", NAN_SURROGATE_CASES, ids=str)
def test_surrogate_nan_rule(impl, dtype, case):
    new, old, A = (np.array([x, 0.0], dtype) for x in case)
    A[1] = 1.0
    res = impl.clipped_surrogate(new, old, A, clip_coef=0.2)
    assert np.isnan(res.loss) and np.isnan(res.grad[0]), res
    assert res.grad[1] == pytest.approx(-0.5)
    with np.errstate(invalid="ignore", over="ignore"):
        ratio = np.exp(np.float64(case[0]) - np.float64(case[1]))
    assert res.clip_fraction == (0.5 if abs(ratio - 1) > 0.2 else 0.0)


@pytest.mark.parametrize("clip", [1e-50, 1e-46, 1e-40, 1e-9])
def test_tiny_clip_coef_clips_in_float32_as_in_float64(clip):
    """A clip_coef that rounds to 0 (or a subnormal) in float32 still clips: float32,
    float64 and the spec agree. 0 is not a "no clipping" sentinel (None is); with eps
    -> 0 the clipped value is old itself, as old +- 1e-50 is in float64."""
    rng = np.random.default_rng(0)
    v64 = np.array([1.0, -0.5, 2.0, 0.25] + list(rng.normal(size=300)))
    old64 = np.array([0.0, 0.5, 2.0, 0.5] + list(v64[4:] + rng.normal(0, 0.3, 300)))
    R64 = np.array([1.0, 0.0, 3.0, -1.0] + list(rng.normal(size=300)))
    v, old, R = (x.astype(np.float32) for x in (v64, old64, R64))
    got32 = ppo_core.clipped_value_loss_stats(v, old, R, clip_coef=clip)
    got64 = ppo_core.clipped_value_loss_stats(v.astype(np.float64), old.astype(np.float64),
                                              R.astype(np.float64), clip_coef=clip)
    exp = spec.clipped_value_loss(v, old, R, clip_coef=clip)
    assert ppo_core.clipped_value_loss(np.float32([1]), np.float32([0]), np.float32([1]),
                                       clip_coef=clip).loss == 0.5  # the reported case
    assert got32[0] == pytest.approx(exp.loss, rel=1e-6) and got64[0] == pytest.approx(exp.loss, rel=1e-14)
    np.testing.assert_allclose(got32[1], exp.grad, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got64[1], exp.grad, rtol=1e-15, atol=0)  # x / n vs x * (1 / n)
    assert got32[2] == got64[2] == exp.clip_fraction > 0.4
    # The surrogate: 1 +- eps is 1 in both dtypes, so every ratio off 1 is clipped.
    new, oldlp, A = v, old, R
    s32 = ppo_core.clipped_surrogate(new, oldlp, A, clip_coef=clip)
    s64 = ppo_core.clipped_surrogate(new.astype(np.float64), oldlp.astype(np.float64),
                                     A.astype(np.float64), clip_coef=clip)
    sexp = spec.clipped_surrogate(new, oldlp, A, clip_coef=clip)
    assert s32.clip_fraction == s64.clip_fraction == sexp.clip_fraction
    assert s32.loss == pytest.approx(sexp.loss, rel=1e-6) and s64.loss == pytest.approx(sexp.loss, rel=1e-14)
    np.testing.assert_allclose(s32.grad, sexp.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("clip", [1e39, 1e300])
def test_huge_clip_coef_stays_finite_in_float32(clip):
    """clip_coef beyond FLT_MAX saturates instead of becoming inf in float32, so an inf
    old value clips as in float64: v_c = inf - eps = inf, not v (d < -inf is false)."""
    v, old, R = np.array([0.0, 1.0]), np.array([np.inf, 0.5]), np.array([0.0, 0.0])
    exp = spec.clipped_value_loss(v, old, R, clip_coef=clip)
    for dt in (np.float32, np.float64):
        loss, grad, cf = ppo_core.clipped_value_loss_stats(v.astype(dt), old.astype(dt), R.astype(dt), clip_coef=clip)
        assert loss == exp.loss == np.inf and cf == exp.clip_fraction == 0.5, (dt, loss, cf)
        np.testing.assert_array_equal(grad, exp.grad)
    s = ppo_core.clipped_surrogate(np.float32([np.inf, 0.1]), np.float32([0, 0]),
                                   np.float32([1, 1]), clip_coef=clip)
    sexp = spec.clipped_surrogate([np.inf, 0.1], [0, 0], [1, 1], clip_coef=clip)
    np.testing.assert_allclose(s.grad, sexp.grad, rtol=1e-6)  # inf ratio, A > 0: clipped
    assert s.grad[0] == 0.0 and s.clip_fraction == sexp.clip_fraction == 0.5


def test_core_value_loss_takes_none_for_no_clipping_and_rejects_bad_clip_coef():
    core = ppo_core._core
    x = np.array([1.0, 2.0])
    loss, grad, cf = core.clipped_value_loss(x, np.zeros(2), np.zeros(2), clip_coef=None)
    assert loss == 1.25 and cf == 0.0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="clip_coef"):
            core.clipped_value_loss(x, x, x, clip_coef=bad)
        with pytest.raises(ValueError, match="clip_coef"):
            core.clipped_surrogate(x, x, x, clip_coef=bad)


# ---------------------------------------------------------------- gradients

def finite_difference(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        g[i] = (f(xp) - f(xm)) / (2 * h)
    return g


@pytest.mark.parametrize("seed", range(5))
def test_surrogate_grad_equals_finite_differences(seed):
    rng = np.random.default_rng(seed)
    n, eps = 64, 0.2
    old = rng.normal(size=n)
    new = old + rng.normal(0, 0.3, n)
    A = rng.normal(size=n)
    ratio = np.exp(new - old)
    # Stay away from the kinks at ratio = 1 +- eps, where the loss is not differentiable.
    far = (np.abs(ratio - 1.2) > 1e-3) & (np.abs(ratio - 0.8) > 1e-3)
    new = np.where(far, new, new + 0.01)
    res = ppo_core.clipped_surrogate(new, old, A, clip_coef=eps)
    fd = finite_difference(lambda x: ppo_core.clipped_surrogate(x, old, A, clip_coef=eps).loss, new)
    np.testing.assert_allclose(res.grad, fd, rtol=1e-5, atol=1e-9)
    assert np.count_nonzero(res.grad == 0) > 0  # some elements clipped: the test bites


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("clip", [None, 0.2])
def test_value_grad_equals_finite_differences(seed, clip):
    rng = np.random.default_rng(seed)
    n = 64
    old = rng.normal(size=n)
    v = old + rng.normal(0, 0.4, n)
    R = rng.normal(size=n)
    if clip is not None:
        far = np.abs(np.abs(v - old) - clip) > 1e-3
        v = np.where(far, v, v + 0.01)
    res = ppo_core.clipped_value_loss(v, old, R, clip_coef=clip)
    fd = finite_difference(lambda x: ppo_core.clipped_value_loss(x, old, R, clip_coef=clip).loss, v)
    np.testing.assert_allclose(res.grad, fd, rtol=1e-5, atol=1e-9)


def test_surrogate_grad_matches_autograd_at_the_clip_boundary():
    torch = pytest.importorskip("torch")
    eps = 0.25  # 1 +- 0.25 are exact in binary, so ratio hits them exactly
    new = np.log(np.array([1.25, 0.75, 1.25, 0.75]))
    old = np.zeros(4)
    A = np.array([1.0, -1.0, -1.0, 1.0])
    res = ppo_core.clipped_surrogate(new, old, A, clip_coef=eps)
    x = torch.tensor(new, requires_grad=True)
    ratio = torch.exp(x - torch.tensor(old))
    At = torch.tensor(A)
    loss = -torch.min(ratio * At, torch.clamp(ratio, 1 - eps, 1 + eps) * At).mean()
    loss.backward()
    np.testing.assert_allclose(res.grad, x.grad.numpy(), rtol=1e-12)


def test_losses_any_shape():
    rng = np.random.default_rng(0)
    shape = (4, 3, 2)
    new, old, A = (rng.normal(size=shape) for _ in range(3))
    res = ppo_core.clipped_surrogate(new, old, A, clip_coef=0.2)
    flat = ppo_core.clipped_surrogate(new.ravel(), old.ravel(), A.ravel(), clip_coef=0.2)
    assert res.grad.shape == shape
    assert res.loss == flat.loss
    np.testing.assert_array_equal(res.grad.ravel(), flat.grad)
    # a non-contiguous 3-d view gives the answer of its contiguous copy
    big = rng.normal(size=(8, 3, 4))
    view = big[::2, :, ::2]
    res_v = ppo_core.clipped_value_loss(view, old, A, clip_coef=0.2)
    res_c = ppo_core.clipped_value_loss(np.ascontiguousarray(view), old, A, clip_coef=0.2)
    assert res_v.loss == res_c.loss
    np.testing.assert_array_equal(res_v.grad, res_c.grad)


# ---------------------------------------------------------------- bad input

GOOD = rollout(T=5, N=2)


def gae_with(**over):
    kw = dict(GOOD, gamma=0.9, lam=0.9)
    kw.update(over)
    return lambda: ppo_core.gae(kw["rewards"], kw["values"], kw["next_values"],
                                kw["terminated"], kw["truncated"], gamma=kw["gamma"], lam=kw["lam"])


BAD_GAE = [
    ("values", dict(values=np.zeros((4, 2))), ValueError, r"values: shape \(4, 2\) differs"),
    ("next_values", dict(next_values=np.zeros((5,))), ValueError, r"next_values: shape \(5,\)"),
    ("terminated", dict(terminated=np.zeros((5, 3), bool)), ValueError, r"terminated: shape"),
    ("0-d", dict(rewards=np.float64(1.0)), ValueError, r"rewards: expected a time-major array"),
    ("3-d", {k: np.zeros((5, 2, 1)) for k in GOOD}, ValueError, r"rewards: .*got shape \(5, 2, 1\)"),
    ("gamma>1", dict(gamma=1.01), ValueError, r"gamma: expected a finite number in \[0, 1\], got 1.01"),
    ("gamma<0", dict(gamma=-0.1), ValueError, r"gamma: "),
    ("gamma nan", dict(gamma=float("nan")), ValueError, r"gamma: .*nan"),
    ("lam inf", dict(lam=float("inf")), ValueError, r"lam: .*inf"),
    ("gamma str", dict(gamma="0.9"), TypeError, r"gamma: expected a real number, got str"),
    ("lam None", dict(lam=None), TypeError, r"lam: expected a real number"),
    ("complex", dict(rewards=GOOD["rewards"] + 1j), TypeError, r"rewards: .*complex128"),
    ("object", dict(values=GOOD["values"].astype(object)), TypeError, r"values: .*object"),
    ("string mask", dict(truncated=np.full((5, 2), "x")), TypeError, r"truncated: .*<U1"),
]


@pytest.mark.parametrize("case,over,exc,match", BAD_GAE, ids=[c[0] for c in BAD_GAE])
def test_gae_bad_input(case, over, exc, match):
    with pytest.raises(exc, match=match):
        gae_with(**over)()


def test_discounted_returns_bad_input():
    ro = GOOD
    with pytest.raises(ValueError, match=r"next_values: shape \(3, 2\)"):
        ppo_core.discounted_returns(ro["rewards"], ro["terminated"], ro["truncated"],
                                    np.zeros((3, 2)), gamma=0.9)
    with pytest.raises(ValueError, match="gamma"):
        ppo_core.discounted_returns(ro["rewards"], ro["terminated"], ro["truncated"], gamma=2)
    with pytest.raises(TypeError, match="rewards"):
        ppo_core.discounted_returns(ro["rewards"].astype(complex), ro["terminated"],
                                    ro["truncated"], gamma=0.9)


def test_next_values_from_bad_input():
    v = np.zeros((5, 2))
    with pytest.raises(ValueError, match=r"last_values: expected shape .*\(2,\), got \(3,\)"):
        ppo_core.next_values_from(v, np.zeros(3))
    with pytest.raises(ValueError, match="final_values was given without done"):
        ppo_core.next_values_from(v, np.zeros(2), final_values=v)
    with pytest.raises(ValueError, match="done was given without final_values"):
        ppo_core.next_values_from(v, np.zeros(2), done=v)
    with pytest.raises(ValueError, match=r"done: shape \(4, 2\)"):
        ppo_core.next_values_from(v, np.zeros(2), final_values=v, done=np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"values: .*got shape \(\)"):
        ppo_core.next_values_from(np.float64(1), np.zeros(()))


LOSSES = [
    ("surrogate", lambda a, b, c, e: ppo_core.clipped_surrogate(a, b, c, clip_coef=e),
     ("new_log_prob", "old_log_prob", "advantages")),
    ("value", lambda a, b, c, e: ppo_core.clipped_value_loss(a, b, c, clip_coef=e),
     ("values", "old_values", "returns")),
]


@pytest.mark.parametrize("name,f,args", LOSSES, ids=[x[0] for x in LOSSES])
def test_loss_bad_input(name, f, args):
    x = np.zeros(4)
    with pytest.raises(ValueError, match=rf"{args[0]}: empty input"):
        f(np.zeros(0), np.zeros(0), np.zeros(0), 0.2)
    with pytest.raises(ValueError, match=rf"{args[1]}: shape \(3,\) differs"):
        f(x, np.zeros(3), x, 0.2)
    with pytest.raises(ValueError, match=rf"{args[2]}: shape \(2, 2\) differs"):
        f(x, x, np.zeros((2, 2)), 0.2)
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="clip_coef: expected a finite number > 0"):
            f(x, x, x, bad)
    with pytest.raises(TypeError, match="clip_coef: expected a real number"):
        f(x, x, x, "0.2")
    with pytest.raises(TypeError, match=rf"{args[0]}: .*complex"):
        f(x + 0j, x, x, 0.2)


def test_surrogate_clip_coef_is_required():
    x = np.zeros(3)
    with pytest.raises(TypeError, match="clip_coef"):
        ppo_core.clipped_surrogate(x, x, x, clip_coef=None)


def test_core_rejects_bad_input_without_crashing():
    """Direct calls into the private extension raise instead of reading out of bounds."""
    core = ppo_core._core
    a = np.zeros((5, 2))
    m = np.zeros((5, 2), bool)
    with pytest.raises(ValueError, match="values"):
        core.gae(a, np.zeros((4, 2)), a, m, m, gamma=0.9, lam=0.9)
    with pytest.raises(TypeError, match="terminated"):
        core.gae(a, a, a, a, m, gamma=0.9, lam=0.9)
    with pytest.raises(TypeError, match="values"):
        core.gae(a, a.astype(np.float32), a, m, m, gamma=0.9, lam=0.9)
    with pytest.raises(ValueError, match="old_log_prob"):
        core.clipped_surrogate(np.zeros(3), np.zeros(2), np.zeros(3), clip_coef=0.2)
    with pytest.raises(ValueError, match="last_values"):
        core.next_values_from(a, np.zeros(5), final_values=None, done=None)


# ---------------------------------------------------------------- threads

def test_threads_agree_with_serial():
    rng = np.random.default_rng(1)
    jobs = []
    for i in range(16):
        T, N = 512 + 37 * i, 1 + (i % 8)
        ro = rollout(T=T, N=N, dtype=np.float32 if i % 2 else np.float64, seed=i)
        jobs.append(ro)
    lp = [(rng.normal(size=4096), rng.normal(size=4096), rng.normal(size=4096)) for _ in range(16)]

    def work(i):
        ro = jobs[i]
        adv, ret = call_gae(ro)
        G = ppo_core.discounted_returns(ro["rewards"], ro["terminated"], ro["truncated"],
                                        ro["next_values"], gamma=0.97)
        s = ppo_core.clipped_surrogate(*lp[i], clip_coef=0.2)
        vl = ppo_core.clipped_value_loss(*lp[i], clip_coef=0.2)
        return adv, ret, G, s.loss, s.grad, vl.loss, vl.grad

    serial = [work(i) for i in range(16)]
    results = [None] * 16
    barrier = threading.Barrier(8)

    def runner(k):
        barrier.wait()
        for rep in range(5):
            for i in range(k, 16, 8):
                results[i] = work(i)

    threads = [threading.Thread(target=runner, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s, r in zip(serial, results):
        for a, b in zip(s, r):
            np.testing.assert_array_equal(a, b)


def test_gil_is_released_during_kernels():
    """Another Python thread runs while a kernel is in its loop: a tick of a ticker
    thread lands in the middle of a single long call into the extension. A kernel
    holding the GIL would allow no tick at all between its first and last instant."""
    import time

    T, N = 4000, 4096
    z = np.ones((T, N), np.float32)
    m = np.zeros((T, N), bool)
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0002)

    t = threading.Thread(target=ticker)
    t.start()
    try:
        time.sleep(0.01)
        start = time.perf_counter()
        ppo_core._core.gae(z, z, z, m, m, gamma=0.99, lam=0.95)
        end = time.perf_counter()
    finally:
        stop.set()
        t.join()
    lo, hi = start + 0.4 * (end - start), end - 0.4 * (end - start)
    assert any(lo < x < hi for x in ticks), (end - start, len(ticks))


@pytest.mark.parametrize("N", [1, 3, 4, 8, 12, 16, 17, 32, 33])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_narrow_fast_paths_equal_strided_path_and_spec(N, dtype):
    """Narrow contiguous rollouts take dedicated kernels (register carries, and an AVX2
    one for float64 with N a multiple of 4 up to 16); they must equal the strided
    path bit for bit and the spec within rounding."""
    ro = rollout(T=300, N=N, dtype=dtype, seed=N)
    fast = call_gae(ro)
    slow = call_gae({k: verify.relayout(v, "strided") for k, v in ro.items()})
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])
    exp, _ = spec.gae(*(np.asarray(ro[k], np.float64) for k in ("rewards", "values", "next_values")),
                      ro["terminated"], ro["truncated"], gamma=0.99, lam=0.95)
    np.testing.assert_allclose(fast[0], exp, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4)


@pytest.mark.parametrize("N", [None, 1, 16, 33])
@pytest.mark.parametrize("T", [0, 1, 50])
def test_gae_outputs_are_separate_writable_arrays(T, N):
    """The two outputs share one allocation (see two_outputs_like in bindings.cpp) but
    never an element: writing one leaves the other alone."""
    ro = rollout(T=T, N=N)
    adv, ret = call_gae(ro)
    for out in (adv, ret):
        assert out.shape == ro["rewards"].shape and out.dtype == np.float64
        assert out.flags.c_contiguous and out.flags.writeable
    assert not np.shares_memory(adv, ret)
    np.testing.assert_array_equal(ret, adv + ro["values"])
    before = ret.copy()
    adv[...] = 123.0
    np.testing.assert_array_equal(ret, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gae_shortcut_for_kernel_ready_input_equals_general_path(dtype):
    """ndarrays already in a kernel dtype skip the conversions; the answer is the one
    the general path gives for the same numbers in other containers and dtypes."""
    ro = rollout(T=40, N=4, dtype=dtype)
    fast = call_gae(ro)
    # A list reads as float64, so only the float64 case passes one.
    rewards = ro["rewards"].tolist() if dtype == np.float64 else ro["rewards"]
    general = ppo_core.gae(rewards, ro["values"], ro["next_values"],
                           ro["terminated"].astype(np.uint8), ro["truncated"].astype(np.int64),
                           gamma=0.99, lam=0.95)
    for a, b in zip(fast, general):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_array_equal(a, b)


def test_verify_main_runs_the_examples_it_is_asked_for(monkeypatch, capsys):
    """``ppo-core verify --examples N`` runs N examples per property: @given binds its
    settings when the module is imported, before main() knows N."""
    from hypothesis import given, strategies as st

    calls = []

    @given(st.integers())
    def prop(i):
        calls.append(i)

    monkeypatch.setattr(verify, "PROPERTIES", {"counting": prop})
    assert verify.main(["--examples", "7", "--seed", "1"]) == 0
    assert len(calls) == 7, len(calls)
    assert "1 passed, 0 failed" in capsys.readouterr().out
