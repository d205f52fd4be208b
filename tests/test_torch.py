"""ppo_core.torch: zero-copy wrappers and the autograd.Functions on the kernels."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ppo_core  # noqa: E402
import ppo_core_spec  # noqa: E402
from ppo_core import torch as pt  # noqa: E402

CLIP = 0.2


def _rollout(T=7, N=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, N, generator=g, dtype=dtype)
    values = torch.randn(T, N, generator=g, dtype=dtype)
    next_values = torch.randn(T, N, generator=g, dtype=dtype)
    terminated = torch.rand(T, N, generator=g) < 0.2
    truncated = torch.rand(T, N, generator=g) < 0.2
    return rewards, values, next_values, terminated, truncated


# -- wrappers: values, dtypes, zero copy -------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gae_matches_numpy_api(dtype):
    r, v, nv, term, trunc = _rollout(dtype=dtype)
    adv, ret = pt.gae(r, v, nv, term, trunc, gamma=0.99, lam=0.95)
    adv_np, ret_np = ppo_core.gae(r.numpy(), v.numpy(), nv.numpy(), term.numpy(), trunc.numpy(),
                                  gamma=0.99, lam=0.95)
    assert adv.dtype == dtype and ret.dtype == dtype
    np.testing.assert_array_equal(adv.numpy(), adv_np)
    np.testing.assert_array_equal(ret.numpy(), ret_np)


def test_discounted_returns_and_next_values_match_numpy_api():
    r, v, nv, term, trunc = _rollout()
    np.testing.assert_array_equal(
        pt.discounted_returns(r, term, trunc, nv, gamma=0.9).numpy(),
        ppo_core.discounted_returns(r.numpy(), term.numpy(), trunc.numpy(), nv.numpy(), gamma=0.9))
    np.testing.assert_array_equal(
        pt.discounted_returns(r, term, trunc, gamma=0.9).numpy(),
        ppo_core.discounted_returns(r.numpy(), term.numpy(), trunc.numpy(), gamma=0.9))
    done = term | trunc
    out = pt.next_values_from(v, nv[-1], final_values=nv, done=done)
    np.testing.assert_array_equal(
        out.numpy(),
        ppo_core.next_values_from(v.numpy(), nv[-1].numpy(), final_values=nv.numpy(), done=done.numpy()))
    assert torch.equal(pt.next_values_from(v, nv[-1])[:-1], v[1:])


def test_inputs_are_passed_as_views_and_outputs_wrapped_without_copy(monkeypatch):
    seen = {}
    real_gae = ppo_core.gae

    def spy(*args, **kwargs):
        seen["args"] = args
        out = real_gae(*args, **kwargs)
        seen["out"] = out
        return out

    monkeypatch.setattr(ppo_core, "gae", spy)
    base = _rollout(T=9, N=8)
    # Strided views: every other env, and a transposed (Fortran-like) layout.
    strided = [x[:, ::2] for x in base]
    transposed = [x.t().contiguous().t() for x in base]
    for inputs in (base, strided, transposed):
        adv, ret = pt.gae(*inputs, gamma=0.99, lam=0.95)
        for tensor, array in zip(inputs, seen["args"]):
            assert np.shares_memory(array, tensor.numpy()), "input was copied"
        assert adv.data_ptr() == seen["out"][0].__array_interface__["data"][0]
        assert ret.data_ptr() == seen["out"][1].__array_interface__["data"][0]
        # Strided input gives the answer of a contiguous copy.
        ref = real_gae(*(x.contiguous().numpy() for x in inputs), gamma=0.99, lam=0.95)
        np.testing.assert_array_equal(adv.numpy(), ref[0])


def test_output_tensor_shares_memory_with_kernel_result(monkeypatch):
    holder = {}
    real = ppo_core.discounted_returns

    def spy(*args, **kwargs):
        holder["out"] = real(*args, **kwargs)
        return holder["out"]

    monkeypatch.setattr(ppo_core, "discounted_returns", spy)
    r, _, nv, term, trunc = _rollout()
    out = pt.discounted_returns(r, term, trunc, nv, gamma=0.9)
    holder["out"][0, 0] = 12345.0
    assert out[0, 0].item() == 12345.0


def test_masks_may_be_int_or_float_and_values_follow_numpy_rule():
    r, v, nv, term, trunc = _rollout()
    ref = pt.gae(r, v, nv, term, trunc, gamma=0.9, lam=0.9)
    as_int = pt.gae(r, v, nv, term.to(torch.int64), trunc.to(torch.float32), gamma=0.9, lam=0.9)
    torch.testing.assert_close(ref[0], as_int[0], rtol=0, atol=0)
    # Any float64 value-carrying tensor makes the result float64 (NumPy API rule).
    mixed = pt.gae(r, v.double(), nv, term, trunc, gamma=0.9, lam=0.9)
    assert mixed[0].dtype == torch.float64
    # float16 -> float32.
    half = pt.gae(r.half(), v.half(), nv.half(), term, trunc, gamma=0.9, lam=0.9)
    assert half[0].dtype == torch.float32


def test_bfloat16_is_converted_to_float32():
    r, v, nv, term, trunc = _rollout()
    adv, _ = pt.gae(r.bfloat16(), v.bfloat16(), nv.bfloat16(), term, trunc, gamma=0.9, lam=0.9)
    assert adv.dtype == torch.float32
    ref, _ = pt.gae(r.bfloat16().float(), v.bfloat16().float(), nv.bfloat16().float(), term, trunc,
                    gamma=0.9, lam=0.9)
    torch.testing.assert_close(adv, ref, rtol=0, atol=0)


def test_tensors_requiring_grad_are_accepted():
    r, v, nv, term, trunc = _rollout()
    adv, _ = pt.gae(r, v.requires_grad_(), nv, term, trunc, gamma=0.9, lam=0.9)
    assert not adv.requires_grad


def test_non_cpu_tensor_error_names_the_device():
    # `meta` tensors are a real non-CPU device available on every build.
    r, v, nv, term, trunc = _rollout()
    with pytest.raises(ValueError, match=r"`values` is on device 'meta'.*CPU"):
        pt.gae(r, v.to("meta"), nv, term, trunc, gamma=0.9, lam=0.9)
    with pytest.raises(ValueError, match="'meta'"):
        pt.clipped_surrogate_loss(r.to("meta"), r, r, clip_coef=CLIP)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_error_names_the_device():  # pragma: no cover - no GPU in CI
    r, v, nv, term, trunc = _rollout()
    with pytest.raises(ValueError, match=r"`rewards` is on device 'cuda:0'"):
        pt.gae(r.cuda(), v, nv, term, trunc, gamma=0.9, lam=0.9)


def test_errors_of_the_numpy_api_pass_through():
    r, v, nv, term, trunc = _rollout()
    with pytest.raises(ValueError):
        pt.gae(r, v[:-1], nv, term, trunc, gamma=0.9, lam=0.9)
    with pytest.raises(ValueError):
        pt.clipped_surrogate_loss(torch.zeros(0), torch.zeros(0), torch.zeros(0), clip_coef=CLIP)
    with pytest.raises(TypeError):
        pt.gae(r.to(torch.complex64), v, nv, term, trunc, gamma=0.9, lam=0.9)


# -- losses: against the plain PyTorch expression ---------------------------------


def _torch_surrogate(new, old, adv, eps):
    ratio = (new - old).exp()
    return -torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv).mean()


def _torch_value_loss(v, old, ret, eps):
    if eps is None:
        return 0.5 * ((v - ret) ** 2).mean()
    v_clipped = old + (v - old).clamp(-eps, eps)
    return 0.5 * torch.max((v - ret) ** 2, (v_clipped - ret) ** 2).mean()


def _away_from_kinks(new, old, adv, eps, margin=1e-3):
    ratio = (new - old).exp()
    return bool(((ratio - (1 + eps)).abs().min() > margin) and ((ratio - (1 - eps)).abs().min() > margin)
                and (adv.abs().min() > margin))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_surrogate_matches_plain_pytorch_on_random_minibatches(seed, dtype):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 300, (1,), generator=g))
    old = torch.randn(n, generator=g, dtype=dtype)
    new = (old + 0.3 * torch.randn(n, generator=g, dtype=dtype)).requires_grad_()
    adv = torch.randn(n, generator=g, dtype=dtype)
    res = pt.clipped_surrogate_loss(new, old, adv, clip_coef=CLIP)
    (grad,) = torch.autograd.grad(res.loss, new)

    ref_new = new.detach().clone().requires_grad_()
    ref = _torch_surrogate(ref_new, old, adv, CLIP)
    (ref_grad,) = torch.autograd.grad(ref, ref_new)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(res.loss, ref.detach(), **tol)
    torch.testing.assert_close(grad, ref_grad, **tol)
    assert res.loss.dtype == dtype and res.loss.ndim == 0
    ratio = (new.detach() - old).exp()
    assert res.clip_fraction == pytest.approx(float(((ratio - 1).abs() > CLIP).double().mean()))
    kl = ((ratio - 1) - ratio.log()).double().mean()
    assert res.approx_kl == pytest.approx(float(kl), rel=1e-4, abs=1e-7)
    assert isinstance(res.clip_fraction, float) and isinstance(res.approx_kl, float)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("clip", [None, 0.2])
def test_value_loss_matches_plain_pytorch_on_random_minibatches(seed, clip):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 300, (1,), generator=g))
    old = torch.randn(n, generator=g, dtype=torch.float64)
    v = (old + 0.4 * torch.randn(n, generator=g, dtype=torch.float64)).requires_grad_()
    ret = torch.randn(n, generator=g, dtype=torch.float64)
    res = pt.clipped_value_loss(v, old, ret, clip_coef=clip)
    (grad,) = torch.autograd.grad(res.loss, v)
    ref_v = v.detach().clone().requires_grad_()
    ref = _torch_value_loss(ref_v, old, ret, clip)
    (ref_grad,) = torch.autograd.grad(ref, ref_v)
    torch.testing.assert_close(res.loss, ref.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-14)
    if clip is None:
        assert res.clip_fraction == 0.0
    else:
        v_clipped = old + (v.detach() - old).clamp(-clip, clip)
        expected = ((v_clipped - ret) ** 2 > (v.detach() - ret) ** 2).double().mean()
        assert res.clip_fraction == pytest.approx(float(expected))


def test_losses_backpropagate_through_a_network():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2).double()
    x = torch.randn(32, 4, dtype=torch.float64)
    adv, ret = torch.randn(32, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    with torch.no_grad():
        old = net(x)
        old_log_prob = old[:, 0] + 0.05 * torch.randn(32, dtype=torch.float64)

    def grads(use_kernel):
        net.zero_grad()
        out = net(x)
        if use_kernel:
            loss = (pt.clipped_surrogate_loss(out[:, 0], old_log_prob, adv, clip_coef=CLIP).loss
                    + 0.5 * pt.clipped_value_loss(out[:, 1], old[:, 1], ret, clip_coef=0.2).loss)
        else:
            loss = (_torch_surrogate(out[:, 0], old_log_prob, adv, CLIP)
                    + 0.5 * _torch_value_loss(out[:, 1], old[:, 1], ret, 0.2))
        loss.backward()
        return [p.grad.clone() for p in net.parameters()]

    for mine, ref in zip(grads(True), grads(False)):
        assert torch.isfinite(mine).all()
        torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-12)


def test_loss_gradient_dtype_follows_new_log_prob():
    new = torch.randn(16, requires_grad=True)
    res = pt.clipped_surrogate_loss(new, new.detach(), torch.randn(16, dtype=torch.float64), clip_coef=CLIP)
    res.loss.backward()
    assert new.grad.dtype == torch.float32


# -- gradcheck (float64, away from the kinks) --------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_gradcheck_clipped_surrogate(seed):
    g = torch.Generator().manual_seed(seed)
    while True:
        old = torch.randn(12, generator=g, dtype=torch.float64)
        new = old + 0.4 * torch.randn(12, generator=g, dtype=torch.float64)
        adv = torch.randn(12, generator=g, dtype=torch.float64)
        if _away_from_kinks(new, old, adv, CLIP):
            break
    new.requires_grad_()
    # Both sides of the clip occur: some gradients are zeroed, others not.
    assert torch.autograd.gradcheck(lambda x: pt.clipped_surrogate_loss(x, old, adv, clip_coef=CLIP).loss,
                                    (new,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("clip", [None, 0.3])
@pytest.mark.parametrize("seed", range(4))
def test_gradcheck_clipped_value_loss(seed, clip):
    g = torch.Generator().manual_seed(seed)
    while True:
        old = torch.randn(12, generator=g, dtype=torch.float64)
        v = old + 0.5 * torch.randn(12, generator=g, dtype=torch.float64)
        ret = torch.randn(12, generator=g, dtype=torch.float64)
        if clip is None:
            break
        v_clipped = old + (v - old).clamp(-clip, clip)
        ties = ((v - ret) ** 2 - (v_clipped - ret) ** 2).abs().min()
        edges = ((v - old).abs() - clip).abs().min()
        if ties > 1e-3 and edges > 1e-3:
            break
    v.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: pt.clipped_value_loss(x, old, ret, clip_coef=clip).loss,
                                    (v,), eps=1e-6, atol=1e-7)


def _loss_on(fn, x, old, third):
    """The kernel loss `fn` ("surrogate" or "value") of x, with clip_coef CLIP."""
    if fn == "surrogate":
        return pt.clipped_surrogate_loss(x, old, third, clip_coef=CLIP).loss
    return pt.clipped_value_loss(x, old, third, clip_coef=CLIP).loss


@pytest.mark.parametrize("fn", ["surrogate", "value"])
def test_backward_scales_by_the_incoming_gradient(fn):
    """backward is the incoming gradient times the kernel gradient: exact for the usual
    1, for a weighted loss through a non-leaf, and over a retained graph's repeated
    backward calls."""
    g = torch.Generator().manual_seed(3)
    old, third = torch.randn(32, generator=g), torch.randn(32, generator=g)
    x0 = (old + 0.3 * torch.randn(32, generator=g)).requires_grad_()

    def loss_of(y):
        return _loss_on(fn, y, old, third)

    loss_of(x0).backward()
    unit = x0.grad.clone()
    x0.grad = None
    loss = loss_of(x0)
    loss.backward(retain_graph=True)
    loss.backward(retain_graph=True)
    torch.testing.assert_close(x0.grad, 2 * unit, rtol=0, atol=0)
    loss.backward()
    torch.testing.assert_close(x0.grad, 3 * unit, rtol=0, atol=0)
    # Through a non-leaf, with a weight and a second term.
    x1 = x0.detach().clone().requires_grad_()
    y = x1 * 1.0
    (-2.5 * loss_of(y) + 0.0 * y.sum()).backward()
    torch.testing.assert_close(x1.grad, -2.5 * unit)


def test_functions_apply_without_a_stats_list():
    new = torch.randn(8, requires_grad=True)
    loss = pt.ClippedSurrogateFunction.apply(new, new.detach() + 0.1, torch.randn(8), CLIP, None)
    assert loss.ndim == 0 and loss.requires_grad
    stats: list = []
    vloss = pt.ClippedValueLossFunction.apply(new, new.detach(), torch.randn(8), None, stats)
    assert vloss.ndim == 0 and stats == [0.0]


@pytest.mark.parametrize("fn", ["surrogate", "value"])
def test_gradient_handed_out_cannot_corrupt_a_retained_graph(fn):
    """Whatever the caller does to a gradient it received (accumulation through a view,
    an in-place edit of .grad or of autograd.grad's result), the retained graph's next
    backward gives the kernel gradient again."""
    g = torch.Generator().manual_seed(5)
    old, third = torch.randn(32, generator=g), torch.randn(32, generator=g)
    x = (old + 0.3 * torch.randn(32, generator=g)).requires_grad_()

    def loss_of(y):
        return _loss_on(fn, y, old, third)

    unit = torch.autograd.grad(loss_of(x), x)[0]
    loss = loss_of(x.view(-1))
    for k in (1, 2, 3):
        loss.backward(retain_graph=True)
        torch.testing.assert_close(x.grad, k * unit, rtol=0, atol=0)
    x.grad.data.zero_()
    loss.backward(retain_graph=True)
    torch.testing.assert_close(x.grad, unit, rtol=0, atol=0)
    first = torch.autograd.grad(loss, x, retain_graph=True)[0]
    first.mul_(0.5)
    first.numpy()[:] = 0
    torch.testing.assert_close(torch.autograd.grad(loss, x, retain_graph=True)[0], unit, rtol=0, atol=0)


def test_gradient_stays_connected_to_the_incoming_gradient_under_create_graph():
    """A vector-Jacobian product with create_graph: d(grad)/d(grad_output) is the kernel
    gradient, so a second derivative with respect to grad_outputs exists."""
    g = torch.Generator().manual_seed(6)
    old, adv = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    x = (old + 0.3 * torch.randn(16, generator=g, dtype=torch.float64)).requires_grad_()
    c = torch.ones((), dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(pt.clipped_surrogate_loss(x, old, adv, clip_coef=CLIP).loss, x,
                                  grad_outputs=c, create_graph=True)
    (dc,) = torch.autograd.grad(grad.sum(), c)
    torch.testing.assert_close(dc, grad.detach().sum())


def test_integer_inputs_give_a_float_loss():
    new = torch.tensor([0, 1, 2])
    res = pt.clipped_surrogate_loss(new, torch.tensor([0, 0, 0]), torch.tensor([1.5, -0.5, 1.0]), clip_coef=CLIP)
    ref = ppo_core.clipped_surrogate(new.numpy(), np.zeros(3, int), np.array([1.5, -0.5, 1.0]), clip_coef=CLIP)
    assert res.loss.dtype == torch.float64 and res.loss.item() == ref.loss
    v = pt.clipped_value_loss(torch.tensor([1, 2]), torch.tensor([1, 1]), torch.tensor([0, 0]))
    assert v.loss.dtype == torch.float64 and v.loss.item() == 1.25


TORCH_INTEGER_DTYPES = [torch.bool, torch.int8, torch.int16, torch.int32, torch.int64,
                        torch.uint8, torch.uint16, torch.uint32, torch.uint64]


@pytest.mark.parametrize("dtype", TORCH_INTEGER_DTYPES, ids=str)
def test_integer_and_bool_tensors_promote_to_float64(dtype):
    """The NumPy API's rule through the torch layer: integer or bool values give float64
    results, and a uint8 surrogate is finite where the spec is (old > new would wrap in
    uint8 arithmetic; e^200 overflows float32)."""
    hi = 1 if dtype == torch.bool else 200
    new = torch.tensor([hi, 0, 1, 0], dtype=torch.int64).to(dtype)
    old = torch.tensor([0, hi, 0, 0], dtype=torch.int64).to(dtype)
    adv = torch.tensor([0, 1, 1, 0], dtype=torch.int64).to(dtype)
    res = pt.clipped_surrogate_loss(new, old, adv, clip_coef=CLIP)
    exp = ppo_core_spec.clipped_surrogate(new.numpy(), old.numpy(), adv.numpy(), clip_coef=CLIP)
    assert res.loss.dtype == torch.float64
    assert np.isfinite(exp.loss) and torch.isfinite(res.loss)
    assert res.loss.item() == pytest.approx(exp.loss, rel=1e-12)
    v = pt.clipped_value_loss(new, old, adv, clip_coef=0.5)
    assert v.loss.dtype == torch.float64
    assert v.loss.item() == pytest.approx(
        ppo_core_spec.clipped_value_loss(new.numpy(), old.numpy(), adv.numpy(), clip_coef=0.5).loss,
        rel=1e-12)
    term = torch.zeros(4, dtype=torch.bool)
    adv_t, ret_t = pt.gae(new, old, adv, term, term, gamma=0.9, lam=0.9)
    assert adv_t.dtype == ret_t.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_rule_through_the_torch_layer(dtype):
    """The kernels' (and the spec's) NaN rule reaches the torch losses: a NaN element
    has a NaN gradient and is not counted as clipped; the others are untouched."""
    v = torch.tensor([float("nan"), 0.5, 2.0], dtype=dtype, requires_grad=True)
    old = torch.tensor([0.0, float("nan"), 0.0], dtype=dtype)
    ret = torch.tensor([0.0, 0.0, 3.0], dtype=dtype)
    res = pt.clipped_value_loss(v, old, ret, clip_coef=CLIP)
    (grad,) = torch.autograd.grad(res.loss, v)
    assert torch.isnan(res.loss) and torch.isnan(grad[:2]).all() and grad[2] == 0.0
    assert res.clip_fraction == pytest.approx(1 / 3)  # only element 2: (0.2 - 3)^2 > (2 - 3)^2
    exp = ppo_core_spec.clipped_value_loss(v.detach().numpy(), old.numpy(), ret.numpy(), clip_coef=CLIP)
    assert np.isnan(exp.loss) and res.clip_fraction == exp.clip_fraction
    x = torch.tensor([float("nan"), 0.1], dtype=dtype, requires_grad=True)
    s = pt.clipped_surrogate_loss(x, torch.zeros(2, dtype=dtype), torch.ones(2, dtype=dtype), clip_coef=CLIP)
    (g,) = torch.autograd.grad(s.loss, x)
    assert torch.isnan(s.loss) and torch.isnan(g[0]) and torch.isfinite(g[1])
    assert s.clip_fraction == 0.0


# -- derivatives beyond the first: double backward, forward AD, torch.func ----------

F64 = torch.float64
# (loss, clip_coef) cases: the surrogate, the plain value loss, the clipped value loss.
HIGHER = [("surrogate", CLIP), ("value", None), ("value", 0.3)]
HIGHER_IDS = ["surrogate", "value-unclipped", "value-clipped"]


def _kernel_loss(fn, clip):
    if fn == "surrogate":
        return lambda x, old, third: pt.clipped_surrogate_loss(x, old, third, clip_coef=clip).loss
    return lambda x, old, third: pt.clipped_value_loss(x, old, third, clip_coef=clip).loss


def _plain_loss(fn, clip):
    if fn == "surrogate":
        return lambda x, old, third: _torch_surrogate(x, old, third, clip)
    return lambda x, old, third: _torch_value_loss(x, old, third, clip)


def _smooth_point(fn, clip, seed, n=10, batch=()):
    """Inputs away from every kink, with both the clipped and the unclipped branch
    present, so that the Hessian exists and is not trivially one branch's."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(10_000):
        shape = batch + (n,)
        old = torch.randn(shape, generator=g, dtype=F64)
        x = old + 0.5 * torch.randn(shape, generator=g, dtype=F64)
        third = torch.randn(shape, generator=g, dtype=F64)
        if fn == "surrogate":
            ratio = (x - old).exp()
            far = min(float((ratio - (1 + clip)).abs().min()), float((ratio - (1 - clip)).abs().min()),
                      float(third.abs().min()))
            clipped = ((third > 0) & (ratio > 1 + clip)) | ((third < 0) & (ratio < 1 - clip))
        elif clip is None:
            far, clipped = 1.0, torch.tensor([True, False])
        else:
            # Inside the clip range v_c = v identically (equal terms, but no kink); the
            # kinks are |v - old| = eps and, outside the range, equal squared errors.
            v_c = old + (x - old).clamp(-clip, clip)
            outside = (x - old).abs() > clip
            gap = ((x - third) ** 2 - (v_c - third) ** 2).abs()
            far = min(float(torch.where(outside, gap, 1.0).min()),
                      float(((x - old).abs() - clip).abs().min()))
            clipped = ((v_c - third) ** 2 > (x - third) ** 2) & outside
        if far > 1e-3 and bool(clipped.any()) and not bool(clipped.all()):
            return x, old, third
    raise AssertionError("no smooth point drawn")


# torch's forward AD loads its jvp decompositions with torch.jit.script, which warns.
_TORCH_FORWARD_AD_WARNING = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def test_hessian_of_the_reported_case_is_not_zero():
    x, R = torch.randn(4, dtype=F64), torch.randn(4, dtype=F64)
    H = torch.autograd.functional.hessian(
        lambda v: pt.clipped_value_loss(v, torch.zeros(4, dtype=F64), R).loss, x)
    torch.testing.assert_close(H, torch.eye(4, dtype=F64) / 4, rtol=0, atol=0)


@pytest.mark.parametrize("fn,clip", HIGHER, ids=HIGHER_IDS)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("vectorize", [False, True])
def test_hessian_equals_the_plain_expressions(fn, clip, seed, vectorize):
    x, old, third = _smooth_point(fn, clip, seed)
    mine = torch.autograd.functional.hessian(lambda y: _kernel_loss(fn, clip)(y, old, third), x,
                                             vectorize=vectorize)
    ref = torch.autograd.functional.hessian(lambda y: _plain_loss(fn, clip)(y, old, third), x)
    assert ref.abs().sum() > 0
    torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fn,clip", HIGHER, ids=HIGHER_IDS)
def test_gradgradcheck(fn, clip):
    x, old, third = _smooth_point(fn, clip, seed=7)
    f = lambda y: _kernel_loss(fn, clip)(y, old, third)  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (x.requires_grad_(),), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn,clip", HIGHER, ids=HIGHER_IDS)
def test_third_derivative_equals_the_plain_expressions(fn, clip):
    """diag(grad) again for the surrogate, 0 for the piecewise-quadratic value loss."""
    x, old, third = _smooth_point(fn, clip, seed=11)
    u, w = torch.randn_like(x), torch.randn_like(x)

    def third_order(loss):
        y = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(loss(y, old, third), y, create_graph=True)
        (h,) = torch.autograd.grad((g * u).sum(), y, create_graph=True)
        if not h.requires_grad:  # the plain value loss: its Hessian is constant
            return torch.zeros_like(x)
        (t,) = torch.autograd.grad((h * w).sum(), y, allow_unused=True)
        return torch.zeros_like(x) if t is None else t

    torch.testing.assert_close(third_order(_kernel_loss(fn, clip)), third_order(_plain_loss(fn, clip)),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fn,clip", HIGHER, ids=HIGHER_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_create_graph_keeps_the_kernel_gradient_bit_for_bit(fn, clip, dtype):
    g = torch.Generator().manual_seed(3)
    old = torch.randn(300, generator=g, dtype=dtype)
    x, third = old + 0.5 * torch.randn(300, generator=g, dtype=dtype), torch.randn(300, generator=g, dtype=dtype)
    x.requires_grad_()
    (plain,) = torch.autograd.grad(_kernel_loss(fn, clip)(x, old, third), x)
    (graphed,) = torch.autograd.grad(_kernel_loss(fn, clip)(x, old, third), x, create_graph=True)
    assert graphed.requires_grad
    torch.testing.assert_close(graphed.detach(), plain, rtol=0, atol=0)


@_TORCH_FORWARD_AD_WARNING
@pytest.mark.parametrize("fn,clip", HIGHER, ids=HIGHER_IDS)
def test_forward_mode_ad_equals_the_plain_expressions(fn, clip):
    import torch.autograd.forward_ad as fwAD

    x, old, third = _smooth_point(fn, clip, seed=5)
    t = torch.randn_like(x)
    tangents = []
    for loss in (_kernel_loss(fn, clip), _plain_loss(fn, clip)):
        with fwAD.dual_level():
            out = loss(fwAD.make_dual(x, t), old, third)
            tangents.append(fwAD.unpack_dual(out).tangent)
    torch.testing.assert_close(tangents[0], tangents[1], rtol=1e-12, atol=1e-15)


@_TORCH_FORWARD_AD_WARNING
@pytest.mark.parametrize("fn,clip", HIGHER, ids=HIGHER_IDS)
def test_torch_func_transforms_equal_the_plain_expressions(fn, clip):
    """grad, jacrev, jacfwd, jvp, hessian (forward over reverse) and reverse over
    reverse: the kernel losses give what torch.func gives for the plain expressions."""
    x, old, third = _smooth_point(fn, clip, seed=2)
    mine = lambda y: _kernel_loss(fn, clip)(y, old, third)  # noqa: E731
    ref = lambda y: _plain_loss(fn, clip)(y, old, third)  # noqa: E731
    t = torch.randn_like(x)
    tf = torch.func
    for name, transform in [
        ("grad", tf.grad), ("jacrev", tf.jacrev), ("jacfwd", tf.jacfwd), ("hessian", tf.hessian),
        ("jacrev(jacrev)", lambda f: tf.jacrev(tf.jacrev(f))),
        ("jacrev(jacfwd)", lambda f: tf.jacrev(tf.jacfwd(f))),
        ("jvp", lambda f: lambda y: tf.jvp(f, (y,), (t,))[1]),
    ]:
        got, exp = transform(mine)(x), transform(ref)(x)
        torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-15, msg=name)


@pytest.mark.parametrize("fn,clip", HIGHER, ids=HIGHER_IDS)
def test_vmap_equals_per_sample_calls_and_the_plain_expressions(fn, clip):
    """vmap over a batch of minibatches: each sample is its own loss (and clip
    fraction); vmap(grad) gives per-sample gradients; in_dims=None broadcasts."""
    x, old, third = _smooth_point(fn, clip, seed=4, batch=(5,))
    tf = torch.func
    loss_of = _kernel_loss(fn, clip)
    losses = tf.vmap(loss_of)(x, old, third)
    torch.testing.assert_close(losses, torch.stack([loss_of(*a) for a in zip(x, old, third)]),
                               rtol=0, atol=0)
    torch.testing.assert_close(losses, tf.vmap(_plain_loss(fn, clip))(x, old, third), rtol=1e-12, atol=1e-15)
    grads = tf.vmap(tf.grad(loss_of))(x, old, third)
    torch.testing.assert_close(grads, tf.vmap(tf.grad(_plain_loss(fn, clip)))(x, old, third),
                               rtol=1e-12, atol=1e-15)
    shared = tf.vmap(loss_of, in_dims=(0, None, None))(x, old[0], third[0])
    torch.testing.assert_close(shared, torch.stack([loss_of(xi, old[0], third[0]) for xi in x]), rtol=0, atol=0)
    # The statistics come back batched, one per sample.
    if fn == "surrogate":
        stats = tf.vmap(lambda *a: pt.clipped_surrogate_loss(*a, clip_coef=clip).clip_fraction)(x, old, third)
        expected = [pt.clipped_surrogate_loss(*a, clip_coef=clip).clip_fraction for a in zip(x, old, third)]
    else:
        stats = tf.vmap(lambda *a: pt.clipped_value_loss(*a, clip_coef=clip).clip_fraction)(x, old, third)
        expected = [pt.clipped_value_loss(*a, clip_coef=clip).clip_fraction for a in zip(x, old, third)]
    assert stats.dtype == torch.float64 and stats.tolist() == expected


def test_torch_func_on_the_public_functions_and_stats_under_grad():
    x, old, third = _smooth_point("surrogate", CLIP, seed=1)
    stats: list = []

    def f(y):
        return pt.ClippedSurrogateFunction.apply(y, old, third, CLIP, stats)

    torch.testing.assert_close(torch.func.grad(f)(x), torch.func.grad(
        lambda y: _torch_surrogate(y, old, third, CLIP))(x), rtol=1e-12, atol=1e-15)
    cf, kl = stats[0]
    assert isinstance(cf, torch.Tensor) and float(cf) == pt.clipped_surrogate_loss(x, old, third,
                                                                                    clip_coef=CLIP).clip_fraction
    vstats: list = []
    g = torch.func.grad(lambda y: pt.ClippedValueLossFunction.apply(y, old, third, 0.3, vstats))(x)
    torch.testing.assert_close(g, torch.func.grad(lambda y: _torch_value_loss(y, old, third, 0.3))(x),
                               rtol=1e-12, atol=1e-15)
    assert float(vstats[0]) == pt.clipped_value_loss(x, old, third, clip_coef=0.3).clip_fraction
    # A loss with its statistics as aux, and a list (NumPy's float64) as old values.
    (grad, aux) = torch.func.grad(lambda y: (lambda r: (r.loss, r.clip_fraction))(
        pt.clipped_value_loss(y, old.tolist(), third, clip_coef=0.3)), has_aux=True)(x)
    torch.testing.assert_close(grad, g, rtol=0, atol=0)
    assert float(aux) == float(vstats[0])


def test_second_derivative_is_nan_where_the_gradient_is_nan():
    nan, inf = float("nan"), float("inf")
    v = torch.tensor([nan, 1.0, 0.5, inf], dtype=F64)
    old = torch.tensor([0.0, 0.0, nan, 0.0], dtype=F64)
    zeros = torch.zeros(4, dtype=F64)
    H = torch.autograd.functional.hessian(
        lambda y: pt.clipped_value_loss(y, old, zeros, clip_coef=0.2).loss, v)
    assert torch.isnan(H.diagonal()[[0, 2]]).all()
    assert H.diagonal()[1] == 0.25 and H.diagonal()[3] == 0.0  # unclipped; inf: no slope
    x = torch.tensor([nan, 0.1, inf], dtype=F64)
    Hs = torch.autograd.functional.hessian(
        lambda y: pt.clipped_surrogate_loss(y, zeros[:3], torch.ones(3, dtype=F64), clip_coef=0.2).loss, x)
    assert torch.isnan(Hs[0, 0]) and torch.isfinite(Hs[1:, 1:]).all()
