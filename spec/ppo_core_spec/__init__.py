"""The executable definition of ppo_core's kernels.

Plain NumPy loops that read like the equations of Schulman et al. (2015, eq. 16-18,
"High-Dimensional Continuous Control Using Generalized Advantage Estimation") and
Schulman et al. (2017, eq. 7, "Proximal Policy Optimization Algorithms"). Nothing
here is clever or fast: this module is what the compiled kernels are tested against,
both in the project's tests and by ``python -m ppo_core.verify`` on a user's build.

Conventions shared with the kernels:

* Arrays are time-major, shape ``(T,)`` or ``(T, N)`` for ``N`` parallel environments.
* ``terminated[t]``: step ``t`` reached a true terminal state; there is no future value.
* ``truncated[t]``: step ``t`` was cut (time limit); the future still has value.
* ``done[t] = terminated[t] or truncated[t]``: step ``t`` ended an episode, so the
  recursion over ``t`` is cut there.
* ``next_values[t]`` is V of the observation that really followed step ``t`` (the final
  observation when the episode ended there, never the reset observation).

A factor ``(1 - mask)`` in the equations below means "drop this term where mask is
true": the spec (and the kernels) select rather than multiply, so a terminated step
ignores ``next_values`` and a done step ignores ``A_{t+1}`` even where those hold inf
or NaN (``0 * inf`` would be NaN and leak across the episode boundary).

NaN and inf in the losses follow IEEE arithmetic, element by element: an element
whose inputs hold a NaN, or whose arithmetic makes one (inf - inf, 0 * inf), has a
NaN loss term and a NaN gradient, so the loss is NaN; it is never silently given a
finite branch (a comparison with NaN is false, so it is not counted as clipped
either). ``min`` and ``max`` of two terms propagate NaN as ``np.minimum`` /
``np.maximum`` and ``torch.minimum`` / ``torch.maximum`` do. Inputs are not
rejected for holding NaN: a NaN loss is how a diverged network shows itself, and
checking every element would cost a pass over the data on every call.

The spec computes in float64 and does no input validation beyond what NumPy does:
the facade ``ppo_core`` validates. It raises no NumPy floating-point warnings for
these IEEE results.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

__all__ = [
    "gae",
    "discounted_returns",
    "next_values_from",
    "clipped_surrogate",
    "clipped_value_loss",
    "SurrogateSpec",
    "ValueLossSpec",
]


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _mask(x) -> np.ndarray:
    return np.asarray(x).astype(bool)


def gae(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    r"""Generalized Advantage Estimation, GAE(gamma, lambda).

    Parameters
    ----------
    rewards, values, next_values : array, shape (T,) or (T, N)
    terminated, truncated : array of the same shape, read as bool
    gamma, lam : float in [0, 1]

    Returns
    -------
    advantages, returns : float64 arrays of shape (T,) or (T, N)

    Equations::

        done_t  = terminated_t or truncated_t
        delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t
        A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1},     A_T = 0
        R_t     = A_t + values_t
    """
    r, v, nv = _f64(rewards), _f64(values), _f64(next_values)
    term, trunc = _mask(terminated), _mask(truncated)
    T = r.shape[0]
    adv = np.zeros_like(r)
    next_adv = np.zeros_like(r[0]) if T else None
    for t in reversed(range(T)):
        done = term[t] | trunc[t]
        delta = r[t] + np.where(term[t], 0.0, gamma * nv[t]) - v[t]
        adv[t] = delta + np.where(done, 0.0, gamma * lam * next_adv)
        next_adv = adv[t]
    return adv, adv + v


def discounted_returns(rewards, terminated, truncated, next_values=None, *, gamma):
    r"""Discounted reward-to-go, bootstrapped where an episode is cut.

    Parameters
    ----------
    rewards : array, shape (T,) or (T, N)
    terminated, truncated : array of the same shape, read as bool
    next_values : array of the same shape, or None (read as zeros)
    gamma : float in [0, 1]

    Returns
    -------
    returns : float64 array of shape (T,) or (T, N)

    Equations::

        B_t = G_{t+1}          if step t did not end an episode and t < T - 1
            = next_values_t    otherwise (0 when next_values is None)
        G_t = r_t + gamma * (1 - terminated_t) * B_t
    """
    r = _f64(rewards)
    term, trunc = _mask(terminated), _mask(truncated)
    nv = np.zeros_like(r) if next_values is None else _f64(next_values)
    T = r.shape[0]
    G = np.zeros_like(r)
    for t in reversed(range(T)):
        done = term[t] | trunc[t]
        if t < T - 1:
            B = np.where(done, nv[t], G[t + 1])
        else:
            B = nv[t]
        G[t] = r[t] + np.where(term[t], 0.0, gamma * B)
    return G


def next_values_from(values, last_values, *, final_values=None, done=None):
    r"""Values of the observations that followed each step.

    Parameters
    ----------
    values : array, shape (T,) or (T, N): V(s_t) of the observations the policy saw.
    last_values : array, shape values.shape[1:]: V of the observation after the rollout.
    final_values : array like values, or None: V of the final observation of an
        episode that ended at step t (before the reset). Only read where done[t].
    done : array like values, read as bool, or None.

    Returns
    -------
    next_values : float64 array like values::

        next_values_t = final_values_t   if done_t and final_values is given
                      = values_{t+1}     else if t < T - 1
                      = last_values      else
    """
    v = _f64(values)
    T = v.shape[0]
    nv = np.zeros_like(v)
    for t in range(T):
        nv[t] = v[t + 1] if t < T - 1 else _f64(last_values)
    if final_values is not None and done is not None:
        fv, d = _f64(final_values), _mask(done)
        for t in range(T):
            nv[t] = np.where(d[t], fv[t], nv[t])
    return nv


class SurrogateSpec(NamedTuple):
    loss: float
    grad: np.ndarray
    clip_fraction: float
    approx_kl: float


class ValueLossSpec(NamedTuple):
    loss: float
    grad: np.ndarray
    clip_fraction: float


def clipped_surrogate(new_log_prob, old_log_prob, advantages, *, clip_coef):
    r"""PPO's clipped surrogate objective (Schulman et al. 2017, eq. 7), as a loss.

    Equations, over the n elements (any shape, the three equal)::

        ratio = exp(new_log_prob - old_log_prob)
        loss  = -mean(min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A))
        grad  = d loss / d new_log_prob
              = 0                   where (A > 0 and ratio > 1 + eps)
                                       or (A < 0 and ratio < 1 - eps)
              = -A * ratio / n      elsewhere (ratio exactly 1 +- eps included)
        clip_fraction = mean(|ratio - 1| > eps)
        approx_kl     = mean((ratio - 1) - log(ratio))

    NaN (module docstring): a NaN ratio or advantage makes the element's term and
    gradient NaN (``min`` propagates it), and a NaN ratio is not counted in
    clip_fraction. inf - inf log-probs give a NaN ratio; ratio = inf with A = 0 gives
    inf * 0 = NaN.
    """
    new, old, A = _f64(new_log_prob), _f64(old_log_prob), _f64(advantages)
    n = new.size
    grad = np.zeros_like(new)
    loss_sum = clipped = kl_sum = 0.0
    eps = clip_coef
    with np.errstate(invalid="ignore", over="ignore"):
        for i in np.ndindex(new.shape):
            log_ratio = new[i] - old[i]
            ratio = np.exp(log_ratio)
            unclipped = ratio * A[i]
            clipped_obj = np.minimum(np.maximum(ratio, 1.0 - eps), 1.0 + eps) * A[i]
            loss_sum += -np.minimum(unclipped, clipped_obj)
            active = (A[i] > 0 and ratio > 1.0 + eps) or (A[i] < 0 and ratio < 1.0 - eps)
            grad[i] = 0.0 if active else -A[i] * ratio / n
            clipped += abs(ratio - 1.0) > eps
            kl_sum += (ratio - 1.0) - log_ratio
    return SurrogateSpec(loss_sum / n, grad, clipped / n, kl_sum / n)


def clipped_value_loss(values, old_values, returns, *, clip_coef=None):
    r"""PPO's value loss, optionally clipped around the old values.

    Equations, over the n elements::

        clip_coef is None:  loss = 0.5 * mean((v - R)^2),  grad = (v - R) / n
        otherwise:          v_c  = old + clip(v - old, -eps, eps)
                            loss = 0.5 * mean(max((v - R)^2, (v_c - R)^2))
                            grad = (v - R) / n     where (v - R)^2 >= (v_c - R)^2
                                 = (v_c - R) / n   where the clipped term is larger
                                                   and |v - old| < eps
                                 = 0               elsewhere
        clip_fraction = mean((v_c - R)^2 > (v - R)^2)   (0 when clip_coef is None)

    At a tie the unclipped rule is used: there v_c = v or the two squared errors
    are equal, and autograd of ``torch.max`` splits the gradient between them.

    NaN (module docstring): v_c is NaN where v - old is (NaN input, or v = old =
    inf), and ``max`` propagates a NaN squared error, so an element with a NaN in v,
    old or R (or v - R = inf - inf) has a NaN term and a NaN gradient and is not
    counted as clipped. Without clipping, old_values is not part of the loss and
    its NaNs are ignored. (The spec used to send such elements down the clipped
    branch, with gradient 0 and a clip count: a NaN comparison read as "clipped".)
    """
    v, old, R = _f64(values), _f64(old_values), _f64(returns)
    n = v.size
    grad = np.zeros_like(v)
    loss_sum = 0.0
    clipped = 0
    with np.errstate(invalid="ignore", over="ignore"):
        for i in np.ndindex(v.shape):
            err = v[i] - R[i]
            if clip_coef is None:
                loss_sum += 0.5 * err * err
                grad[i] = err / n
                continue
            d = v[i] - old[i]
            # Inside the clip range v_c is v itself (old + (v - old) may round away
            # from v); a NaN d makes old + clip(d, -eps, eps) NaN.
            if np.isnan(d):
                vc = np.nan
            elif d < -clip_coef:
                vc = old[i] - clip_coef
            elif d > clip_coef:
                vc = old[i] + clip_coef
            else:
                vc = v[i]
            err_c = vc - R[i]
            sq, sq_c = err * err, err_c * err_c
            if sq_c > sq:
                clipped += 1
                loss_sum += 0.5 * sq_c
                grad[i] = err_c / n if abs(d) < clip_coef else 0.0
            elif sq >= sq_c:
                loss_sum += 0.5 * sq
                grad[i] = err / n
            else:  # sq or sq_c is NaN: max(sq, sq_c) is NaN, and so is its derivative
                loss_sum += np.nan
                grad[i] = np.nan
    return ValueLossSpec(loss_sum / n, grad, clipped / n)
