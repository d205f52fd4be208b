"""PyTorch layer over the ppo_core kernels.

Every function here takes CPU tensors and hands the kernels NumPy *views* of
them (``Tensor.numpy()`` shares memory, strides included), and wraps the
kernels' NumPy results with ``torch.from_numpy`` (shares memory again), so no
data is copied on the way in or out.

Dtypes follow the NumPy API's rule (see ``help(ppo_core)``: float32 stays
float32, float16 becomes float32, any float64, integer or bool value-carrying
argument makes the result float64; masks may be bool, integer or float). The
one conversion made here: ``torch.bfloat16`` has no NumPy
equivalent, so a bfloat16 tensor is converted to float32 (a copy) before the
call; every other dtype is passed through as a view.

Tensors on any device other than the CPU (CUDA, MPS, meta, ...) raise
``ValueError`` naming the argument and the device: the kernels are CPU code,
and a silent device transfer would hide a large cost. Call ``.cpu()`` first.

The two losses are :class:`torch.autograd.Function` s whose backward is the
kernel's analytic gradient:

* :func:`clipped_surrogate_loss` -> ``SurrogateLoss(loss, clip_fraction, approx_kl)``
* :func:`clipped_value_loss` -> ``ValueLoss(loss, clip_fraction)``

``loss`` is a 0-d tensor that carries the gradient (with respect to
``new_log_prob`` / ``values`` only: old log-probs, advantages, old values and
returns are treated as constants, as in PPO); the other fields are floats.

Derivatives beyond the first are exact, not zero: the Hessian of the surrogate is
diag(grad), that of the value loss diag(m)/n (m = 0 where the clip holds the
gradient constant). Double backward, forward-mode AD and the torch.func
transforms (grad, jacrev, jacfwd, hessian, vmap, ...) give the derivatives of
the plain torch expressions away from their kinks; see the Functions' docstrings.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np
import torch

import ppo_core
from ppo_core import _validate

__all__ = [
    "gae",
    "discounted_returns",
    "next_values_from",
    "clipped_surrogate_loss",
    "clipped_value_loss",
    "SurrogateLoss",
    "ValueLoss",
    "ClippedSurrogateFunction",
    "ClippedValueLossFunction",
]


class SurrogateLoss(NamedTuple):
    """Result of :func:`clipped_surrogate_loss`.

    loss: 0-d tensor, −mean(min(ratio·A, clip(ratio, 1−ε, 1+ε)·A)); differentiable
        with respect to ``new_log_prob``.
    clip_fraction: mean(|ratio − 1| > ε) (CleanRL's definition, which also counts
        elements whose gradient is not zeroed).
    approx_kl: mean((ratio − 1) − log ratio), the low-variance KL estimator.

    Both statistics are floats, or 0-d float64 tensors under a torch.func transform.
    """

    loss: torch.Tensor
    clip_fraction: float
    approx_kl: float


class ValueLoss(NamedTuple):
    """Result of :func:`clipped_value_loss`.

    loss: 0-d tensor, 0.5·mean((v − R)²) or its clipped form; differentiable
        with respect to ``values``.
    clip_fraction: share of elements where the clipped term (v_c − R)² is
        strictly larger than the unclipped one (0.0 without clipping); a float, or
        a 0-d float64 tensor under a torch.func transform.
    """

    loss: torch.Tensor
    clip_fraction: float


def _as_numpy(name: str, x: Any) -> Any:
    """A NumPy view of CPU tensor ``x`` (no copy), or ``x`` unchanged if it is not a tensor."""
    if not isinstance(x, torch.Tensor):
        return x
    if x.device.type != "cpu":
        raise ValueError(
            f"ppo_core.torch: `{name}` is on device {str(x.device)!r}; the kernels run on "
            f"CPU tensors only (call .cpu() first)"
        )
    if x.is_complex():
        raise TypeError(f"ppo_core.torch: `{name}` has complex dtype {x.dtype}; expected a real dtype")
    x = x.detach()
    if x.dtype == torch.bfloat16:
        # NumPy has no bfloat16: the one documented conversion (a copy).
        x = x.to(torch.float32)
    if x.is_conj() or x.is_neg():
        x = x.resolve_conj().resolve_neg()
    return x.numpy()


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a))


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    *,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation on CPU tensors (see :func:`ppo_core.gae`).

    δ_t = r_t + γ(1 − terminated_t)·next_values_t − values_t;
    A_t = δ_t + γλ(1 − done_t)·A_{t+1}; returns = A + values
    (Schulman et al. 2015, eq. 16–18).

    Parameters are time-major tensors of shape ``(T,)`` or ``(T, N)``, all of one
    shape. Returns ``(advantages, returns)``, new tensors sharing memory with the
    kernel's output arrays. Raises ``ValueError`` for non-CPU tensors and for
    everything :func:`ppo_core.gae` rejects.
    """
    adv, ret = ppo_core.gae(
        _as_numpy("rewards", rewards),
        _as_numpy("values", values),
        _as_numpy("next_values", next_values),
        _as_numpy("terminated", terminated),
        _as_numpy("truncated", truncated),
        gamma=gamma,
        lam=lam,
    )
    return _as_tensor(adv), _as_tensor(ret)


def discounted_returns(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    next_values: Optional[torch.Tensor] = None,
    *,
    gamma: float,
) -> torch.Tensor:
    """Discounted reward-to-go on CPU tensors (see :func:`ppo_core.discounted_returns`).

    G_t = r_t + γ(1 − terminated_t)·B_t with B_t = G_{t+1} inside an episode and
    ``next_values[t]`` (0 if None) where step t ended an episode or t = T − 1.
    """
    out = ppo_core.discounted_returns(
        _as_numpy("rewards", rewards),
        _as_numpy("terminated", terminated),
        _as_numpy("truncated", truncated),
        None if next_values is None else _as_numpy("next_values", next_values),
        gamma=gamma,
    )
    return _as_tensor(out)


def next_values_from(
    values: torch.Tensor,
    last_values: torch.Tensor,
    *,
    final_values: Optional[torch.Tensor] = None,
    done: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``next_values`` for :func:`gae` (see :func:`ppo_core.next_values_from`).

    next_values[t] = values[t+1] for t < T−1, ``last_values`` at t = T−1, and
    ``final_values[t]`` where ``done[t]`` (V of the real final observation of an
    episode that ended at step t, not of the reset observation).
    """
    out = ppo_core.next_values_from(
        _as_numpy("values", values),
        _as_numpy("last_values", last_values),
        final_values=None if final_values is None else _as_numpy("final_values", final_values),
        done=None if done is None else _as_numpy("done", done),
    )
    return _as_tensor(out)


def _grad_like(grad: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    # The kernel's result dtype may be wider than `like` (e.g. float64
    # advantages with float32 log-probs); autograd needs the input's dtype.
    g = torch.from_numpy(grad)
    return g if g.dtype == like.dtype else g.to(dtype=like.dtype)


def _loss_tensor(value: float, like: torch.Tensor, kernel_grad: np.ndarray) -> torch.Tensor:
    # The input's float dtype; for integer input (which cannot carry a gradient) the
    # kernel's result dtype, so the loss is not truncated to an integer.
    if like.is_floating_point():
        return torch.tensor(value, dtype=like.dtype)
    return torch.tensor(value, dtype=torch.float64 if kernel_grad.dtype == np.float64 else torch.float32)


def _scaled(grad_loss: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    # d/dx (c * loss) = c * kernel gradient, always as a new tensor. Returning the saved
    # gradient itself when c == 1 would save a pass over n elements, but the caller
    # could then receive it (as x.grad through a view, or from autograd.grad) and
    # change it in place, corrupting a retained graph's next backward; and under
    # create_graph the result must stay connected to c.
    return grad_loss * grad


# -- derivatives beyond the first -----------------------------------------------------
#
# Both kernel gradients have a derivative known in closed form, so double backward
# (torch.autograd.functional.hessian, gradgradcheck, create_graph=True) and the
# torch.func transforms are exact rather than silently zero:
#
# * surrogate: g_i = -A_i ratio_i / n off the clip and 0 on it, with ratio_i =
#   exp(x_i - old_i), so d g_i / d x_i = g_i, and so on to every order: the Hessian
#   is diag(g).
# * value loss: g_i = (v_i - R_i) / n, or (v_c,i - R_i) / n with v_c,i = v_i inside
#   the clip range, or 0 where the clipped term wins with |v_i - old_i| >= eps. It is
#   piecewise linear in v: the Hessian is diag(m / n), m_i = 1 where g_i moves with
#   v_i and 0 where it is clipped to a constant; higher derivatives are 0.
#
# These are the derivatives of the plain torch expressions wherever those have one (not
# at ratio = 1 +- eps, at ties, or at |v - old| = eps, kinks where the second derivative
# does not exist and the kernel's side is kept). They are built with torch ops around
# the kernel's g, so the gradient's value stays the kernel's, bit for bit, and only
# when a graph of the backward is wanted (create_graph, forward-mode AD, torch.func):
# a plain first-order backward is still one multiplication.


def _offset(x: torch.Tensor) -> torch.Tensor:
    """0, with derivative 1 with respect to x; exactly 0 (derivative 0) where x is
    +-inf, so that an inf input, whose gradient may be finite, does not turn it into
    inf - inf = NaN. A NaN x gives NaN, where the gradient is NaN already."""
    return torch.where(torch.isinf(x), 0.0, x - x.detach())


def _surrogate_grad(new_log_prob: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The kernel's gradient as a differentiable function of new_log_prob: the value
    ``grad`` (times e^0 = 1 exactly), the derivative diag(grad), to every order."""
    return grad * torch.exp(_offset(new_log_prob))


def _value_slope(values: torch.Tensor, old_values: Any, returns: Any,
                 clip_coef: Optional[float], grad: torch.Tensor) -> torch.Tensor:
    """d grad_i / d values_i of the value loss: 1/n where the kernel's gradient moves
    with values (the unclipped term, or v_c = v inside the clip range), 0 where it is
    clipped to a constant, NaN where the gradient is NaN. The branch is recomputed in
    float64 from the inputs; only the second derivative exactly at a tie or at
    |v - old| = eps (where none exists) can depend on that rounding."""
    if clip_coef is None:
        moves = torch.ones_like(grad, dtype=torch.bool)
    else:
        eps = float(clip_coef)
        v = values.detach().to(torch.float64)
        old = torch.as_tensor(old_values).to(torch.float64)
        ret = torch.as_tensor(returns).to(torch.float64)
        d = v - old
        v_c = torch.where(d < -eps, old - eps, torch.where(d > eps, old + eps, v))
        moves = ~((v_c - ret) ** 2 > (v - ret) ** 2) | (d.abs() < eps)
    slope = moves.to(grad.dtype) / grad.numel()
    return torch.where(torch.isnan(grad), float("nan"), slope)


def _value_grad(values: torch.Tensor, grad: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """The kernel's gradient as a differentiable function of values: the value ``grad``,
    the derivative diag(slope), higher derivatives 0."""
    return grad + slope * _offset(values)


_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", None)


def _under_torch_func() -> bool:
    """True inside a torch.func transform (grad, vmap, jacrev, jvp, ...). The public
    Functions below are legacy-style (``forward(ctx, ...)``), which torch.func refuses
    but which skips the per-call ``inspect.signature`` of the setup_context style (tens
    of microseconds, the cost of a whole small-minibatch call); under a transform they
    hand over to setup_context-style twins."""
    return _transforms_active is not None and bool(_transforms_active())


def _tensor_arg(name: str, x: Any) -> torch.Tensor:
    # The torch.func twins save their inputs with save_for_backward, which takes
    # tensors only; NumPy's dtype rule is kept for array-likes (a list of floats is
    # float64, as in the NumPy API).
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.asarray(_validate.as_array(name, x)))


def _per_sample(fn: Any, info: Any, in_dims: tuple, tensors: tuple, clip_coef: Any) -> Any:
    """vmap rule of the twins: a kernel call takes one minibatch, so a batch of B is B
    calls, stacked (each sample is its own mean, as vmap of the plain expression)."""
    outs = []
    for b in range(info.batch_size):
        args = [x if d is None else x.select(d, b) for x, d in zip(tensors, in_dims)]
        outs.append(fn.apply(*args, clip_coef))
    return tuple(torch.stack([o[k] for o in outs]) for k in range(3)), (0, 0, 0)


class _SurrogateTwin(torch.autograd.Function):
    """:class:`ClippedSurrogateFunction` for torch.func: outputs the loss, the kernel
    gradient and ``[clip_fraction, approx_kl]`` (the last two non-differentiable)."""

    @staticmethod
    def forward(new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                clip_coef: float) -> Any:
        loss, grad, clip_fraction, approx_kl = ppo_core.clipped_surrogate(
            _as_numpy("new_log_prob", new_log_prob), _as_numpy("old_log_prob", old_log_prob),
            _as_numpy("advantages", advantages), clip_coef=clip_coef)
        stats = torch.tensor([clip_fraction, approx_kl], dtype=torch.float64)
        return _loss_tensor(loss, new_log_prob, grad), _grad_like(grad, new_log_prob), stats

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        _, grad, stats = output
        ctx.mark_non_differentiable(grad, stats)
        ctx.save_for_backward(inputs[0], grad)
        ctx.save_for_forward(inputs[0], grad)

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad: Any, _stats: Any) -> Any:
        new_log_prob, grad = ctx.saved_tensors
        return grad_loss * _surrogate_grad(new_log_prob, grad), None, None, None

    @staticmethod
    def jvp(ctx: Any, t_new: Any, _t_old: Any, _t_adv: Any, _t_clip: Any) -> Any:
        new_log_prob, grad = ctx.saved_tensors
        t_loss = None if t_new is None else (_surrogate_grad(new_log_prob, grad) * t_new).sum()
        return t_loss, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple, new_log_prob: torch.Tensor, old_log_prob: torch.Tensor,
             advantages: torch.Tensor, clip_coef: float) -> Any:
        return _per_sample(_SurrogateTwin, info, in_dims, (new_log_prob, old_log_prob, advantages),
                           clip_coef)


class _ValueLossTwin(torch.autograd.Function):
    """:class:`ClippedValueLossFunction` for torch.func: outputs the loss, the kernel
    gradient and ``[clip_fraction]`` (the last two non-differentiable)."""

    @staticmethod
    def forward(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                clip_coef: Optional[float]) -> Any:
        loss, grad, clip_fraction = ppo_core.clipped_value_loss_stats(
            _as_numpy("values", values), _as_numpy("old_values", old_values),
            _as_numpy("returns", returns), clip_coef=clip_coef)
        stats = torch.tensor([clip_fraction], dtype=torch.float64)
        return _loss_tensor(loss, values, grad), _grad_like(grad, values), stats

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        _, grad, stats = output
        ctx.mark_non_differentiable(grad, stats)
        ctx.clip_coef = inputs[3]
        ctx.save_for_backward(*inputs[:3], grad)
        ctx.save_for_forward(*inputs[:3], grad)

    @staticmethod
    def _grad(ctx: Any) -> torch.Tensor:
        values, old_values, returns, grad = ctx.saved_tensors
        return _value_grad(values, grad, _value_slope(values, old_values, returns, ctx.clip_coef, grad))

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad: Any, _stats: Any) -> Any:
        return grad_loss * _ValueLossTwin._grad(ctx), None, None, None

    @staticmethod
    def jvp(ctx: Any, t_values: Any, _t_old: Any, _t_ret: Any, _t_clip: Any) -> Any:
        t_loss = None if t_values is None else (_ValueLossTwin._grad(ctx) * t_values).sum()
        return t_loss, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple, values: torch.Tensor, old_values: torch.Tensor,
             returns: torch.Tensor, clip_coef: Optional[float]) -> Any:
        return _per_sample(_ValueLossTwin, info, in_dims, (values, old_values, returns), clip_coef)


class ClippedSurrogateFunction(torch.autograd.Function):
    """autograd.Function for the clipped surrogate; use :func:`clipped_surrogate_loss`.

    ``apply(new_log_prob, old_log_prob, advantages, clip_coef, stats)`` returns the
    0-d loss and appends ``(clip_fraction, approx_kl)`` as floats to the list
    ``stats`` (pass ``None`` to drop them). backward is the kernel's d loss /
    d new_log_prob times the incoming gradient.

    Derivatives (exact, at every order): the Hessian with respect to new_log_prob is
    diag(grad), since off the clip the gradient -A·ratio/n is its own derivative and
    on it both are 0; this is the Hessian of the plain torch expression away from its
    kinks. Double backward (``create_graph=True``, ``torch.autograd.functional.hessian``,
    ``gradgradcheck``), forward-mode AD and every torch.func transform (``grad``,
    ``vjp``, ``jacrev``, ``jacfwd``, ``jvp``, ``hessian``, ``vmap``) work; under a
    torch.func transform ``apply`` hands over to a setup_context-style twin and the
    stats are 0-d float64 tensors. Only new_log_prob is differentiated: the other
    arguments are constants at every order.
    """

    @classmethod
    def apply(cls, new_log_prob: Any, old_log_prob: Any, advantages: Any, clip_coef: float,
              stats: Optional[list] = None) -> Any:
        if _under_torch_func():
            loss, _, st = _SurrogateTwin.apply(
                _tensor_arg("new_log_prob", new_log_prob), _tensor_arg("old_log_prob", old_log_prob),
                _tensor_arg("advantages", advantages), clip_coef)
            if stats is not None:
                stats.append((st[0], st[1]))
            return loss
        return super().apply(new_log_prob, old_log_prob, advantages, clip_coef, stats)

    @staticmethod
    def forward(ctx: Any, new_log_prob: torch.Tensor, old_log_prob: torch.Tensor,
                advantages: torch.Tensor, clip_coef: float, stats: Optional[list] = None) -> Any:
        loss, grad, clip_fraction, approx_kl = ppo_core.clipped_surrogate(
            _as_numpy("new_log_prob", new_log_prob),
            _as_numpy("old_log_prob", old_log_prob),
            _as_numpy("advantages", advantages),
            clip_coef=clip_coef,
        )
        grad_t = _grad_like(grad, new_log_prob)
        ctx.save_for_backward(grad_t)
        # For derivatives beyond the first only: the input (as a reference, so that an
        # in-place change to it after forward does not fail a first-order backward).
        ctx.higher = (new_log_prob, grad_t)
        if stats is not None:
            stats.append((clip_fraction, approx_kl))
        return _loss_tensor(loss, new_log_prob, grad)

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> Any:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        (grad,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the gradient's own derivative too
            grad = _surrogate_grad(ctx.higher[0], grad)
        return _scaled(grad_loss, grad), None, None, None, None

    @staticmethod
    def jvp(ctx: Any, t_new: Any, *_: Any) -> Any:
        return None if t_new is None else (_surrogate_grad(*ctx.higher) * t_new).sum()


class ClippedValueLossFunction(torch.autograd.Function):
    """autograd.Function for the (optionally clipped) value loss; use :func:`clipped_value_loss`.

    ``apply(values, old_values, returns, clip_coef, stats)`` returns the 0-d loss
    and appends the clip fraction as a float to the list ``stats`` (pass ``None``
    to drop it). backward is the kernel's d loss / d values times the incoming
    gradient.

    Derivatives (exact, at every order): the Hessian with respect to values is
    diag(m)/n, m = 1 where the gradient moves with the value (the unclipped term, or
    inside the clip range) and 0 where it is clipped to a constant; higher derivatives
    are 0 (the loss is piecewise quadratic). This is the Hessian of the plain torch
    expression away from its kinks. Double backward, forward-mode AD and every
    torch.func transform work, as for :class:`ClippedSurrogateFunction`. Only values
    is differentiated: the other arguments are constants at every order.
    """

    @classmethod
    def apply(cls, values: Any, old_values: Any, returns: Any, clip_coef: Optional[float],
              stats: Optional[list] = None) -> Any:
        if _under_torch_func():
            loss, _, st = _ValueLossTwin.apply(
                _tensor_arg("values", values), _tensor_arg("old_values", old_values),
                _tensor_arg("returns", returns), clip_coef)
            if stats is not None:
                stats.append(st[0])
            return loss
        return super().apply(values, old_values, returns, clip_coef, stats)

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, old_values: torch.Tensor,
                returns: torch.Tensor, clip_coef: Optional[float], stats: Optional[list] = None) -> Any:
        # ppo_core.clipped_value_loss_stats is the kernel call that also returns the
        # clip fraction mean((v_c - R)^2 > (v - R)^2) (0 without clipping).
        old_np, ret_np = _as_numpy("old_values", old_values), _as_numpy("returns", returns)
        loss, grad, clip_fraction = ppo_core.clipped_value_loss_stats(
            _as_numpy("values", values), old_np, ret_np, clip_coef=clip_coef)
        grad_t = _grad_like(grad, values)
        ctx.save_for_backward(grad_t)
        # For derivatives beyond the first only (see ClippedSurrogateFunction.forward).
        ctx.higher = (values, grad_t, old_np, ret_np, clip_coef)
        if stats is not None:
            stats.append(clip_fraction)
        return _loss_tensor(loss, values, grad)

    @staticmethod
    def _grad(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        values, _, old_values, returns, clip_coef = ctx.higher
        return _value_grad(values, grad, _value_slope(values, old_values, returns, clip_coef, grad))

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> Any:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        (grad,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the gradient's own derivative too
            grad = ClippedValueLossFunction._grad(ctx, grad)
        return _scaled(grad_loss, grad), None, None, None, None

    @staticmethod
    def jvp(ctx: Any, t_values: Any, *_: Any) -> Any:
        return None if t_values is None else (ClippedValueLossFunction._grad(ctx, ctx.higher[1]) * t_values).sum()


def clipped_surrogate_loss(
    new_log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_coef: float,
) -> SurrogateLoss:
    """PPO's clipped surrogate loss with the kernel's analytic gradient.

    ratio = exp(new_log_prob − old_log_prob);
    loss = −mean(min(ratio·A, clip(ratio, 1−ε, 1+ε)·A)) (Schulman et al. 2017, eq. 7).
    The gradient flows into ``new_log_prob`` only; it is zero where the clip is
    active with strict inequalities, which matches autograd at ratio = 1±ε.

    All three tensors have one shape (any shape). Returns
    ``SurrogateLoss(loss, clip_fraction, approx_kl)``. Raises ``ValueError`` for
    empty input, ε ≤ 0 or non-CPU tensors.

    Hessian: diag(grad) with respect to new_log_prob (see
    :class:`ClippedSurrogateFunction`).

    Derivatives: the first is the kernel's gradient; higher ones are exact, equal
    to those of the plain torch expression away from its kinks, through double
    backward (``create_graph=True``, ``torch.autograd.functional.hessian``),
    forward-mode AD and the torch.func transforms (``grad``, ``jacrev``, ``jacfwd``,
    ``jvp``, ``hessian``, ``vmap``, ...). Under a torch.func transform the
    statistics fields are 0-d float64 tensors instead of floats (so vmap can batch
    them), and vmap runs the kernel once per batch element.
    """
    stats: list = []
    loss = ClippedSurrogateFunction.apply(new_log_prob, old_log_prob, advantages, clip_coef, stats)
    clip_fraction, approx_kl = stats[0]
    return SurrogateLoss(loss, clip_fraction, approx_kl)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    *,
    clip_coef: Optional[float] = None,
) -> ValueLoss:
    """Value loss 0.5·mean((v − R)²), or PPO's clipped form when ``clip_coef`` is given.

    Clipped: 0.5·mean(max((v − R)², (v_c − R)²)) with
    v_c = old_values + clip(v − old_values, −ε, ε). The gradient flows into
    ``values`` only and is the kernel's (see :func:`ppo_core.clipped_value_loss`
    for the rule at ties). Returns ``ValueLoss(loss, clip_fraction)``.

    Hessian: diag(m)/n with respect to values, m = 0 where the clipped term wins
    with |v − old| ≥ ε and 1 elsewhere (I/n without clipping; see
    :class:`ClippedValueLossFunction`).

    Derivatives: the first is the kernel's gradient; higher ones are exact, equal
    to those of the plain torch expression away from its kinks, through double
    backward (``create_graph=True``, ``torch.autograd.functional.hessian``),
    forward-mode AD and the torch.func transforms (``grad``, ``jacrev``, ``jacfwd``,
    ``jvp``, ``hessian``, ``vmap``, ...). Under a torch.func transform the
    statistics fields are 0-d float64 tensors instead of floats (so vmap can batch
    them), and vmap runs the kernel once per batch element.
    """
    stats: list = []
    loss = ClippedValueLossFunction.apply(values, old_values, returns, clip_coef, stats)
    return ValueLoss(loss, stats[0])
