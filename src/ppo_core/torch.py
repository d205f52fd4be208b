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
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np
import torch

import ppo_core

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
    """

    loss: torch.Tensor
    clip_fraction: float
    approx_kl: float


class ValueLoss(NamedTuple):
    """Result of :func:`clipped_value_loss`.

    loss: 0-d tensor, 0.5·mean((v − R)²) or its clipped form; differentiable
        with respect to ``values``.
    clip_fraction: share of elements where the clipped term (v_c − R)² is
        strictly larger than the unclipped one (0.0 without clipping).
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


class ClippedSurrogateFunction(torch.autograd.Function):
    """autograd.Function for the clipped surrogate; use :func:`clipped_surrogate_loss`.

    ``apply(new_log_prob, old_log_prob, advantages, clip_coef, stats)`` returns the
    0-d loss and appends ``(clip_fraction, approx_kl)`` as floats to the list
    ``stats`` (pass ``None`` to drop them). backward is the kernel's d loss /
    d new_log_prob times the incoming gradient.
    """

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
        if stats is not None:
            stats.append((clip_fraction, approx_kl))
        return _loss_tensor(loss, new_log_prob, grad)

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> Any:
        (grad,) = ctx.saved_tensors
        return _scaled(grad_loss, grad), None, None, None, None


class ClippedValueLossFunction(torch.autograd.Function):
    """autograd.Function for the (optionally clipped) value loss; use :func:`clipped_value_loss`.

    ``apply(values, old_values, returns, clip_coef, stats)`` returns the 0-d loss
    and appends the clip fraction as a float to the list ``stats`` (pass ``None``
    to drop it). backward is the kernel's d loss / d values times the incoming
    gradient.
    """

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, old_values: torch.Tensor,
                returns: torch.Tensor, clip_coef: Optional[float], stats: Optional[list] = None) -> Any:
        # ppo_core._clipped_value_loss is the kernel call that also returns the
        # clip fraction mean((v_c - R)^2 > (v - R)^2) (0 without clipping).
        loss, grad, clip_fraction = ppo_core._clipped_value_loss(
            _as_numpy("values", values), _as_numpy("old_values", old_values),
            _as_numpy("returns", returns), clip_coef)
        grad_t = _grad_like(grad, values)
        ctx.save_for_backward(grad_t)
        if stats is not None:
            stats.append(clip_fraction)
        return _loss_tensor(loss, values, grad)

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> Any:
        (grad,) = ctx.saved_tensors
        return _scaled(grad_loss, grad), None, None, None, None


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
    """
    stats: list = []
    loss = ClippedValueLossFunction.apply(values, old_values, returns, clip_coef, stats)
    return ValueLoss(loss, stats[0])
