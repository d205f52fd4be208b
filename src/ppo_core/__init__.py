"""ppo_core: fast, spec-verified PPO kernels.

The NumPy API. Every function validates its arguments here (see ``_validate``),
converts them to one result dtype, and hands strided views (no copies) to the
compiled kernels in ``ppo_core._core``, which release the GIL while they run.

Conventions: arrays are time-major, shape ``(T,)`` or ``(T, N)`` for N parallel
environments. ``terminated[t]``: a true terminal state, no future value.
``truncated[t]``: cut by a time limit or the end of a rollout, the future still has
value. ``done = terminated | truncated`` cuts the recursion. ``next_values[t]`` is V
of the observation that really followed step t (the final observation when the
episode ended there, never the reset observation).

Dtypes: the result dtype follows from the value-carrying arguments: all float32 ->
float32; float16 (alone or with float32) -> float32; any float64 -> float64; any
integer or bool array (every width, signed or unsigned, alone or mixed with float32)
-> float64. Integers are converted before any arithmetic, so unsigned input never
wraps around (uint8 ``0 - 200`` is -200). Masks (``terminated``, ``truncated``,
``done``) may be bool, integer or float and are read as ``astype(bool)``. Complex,
object or string arrays raise ``TypeError``.

The executable definition of each function is the NumPy reference in
``ppo_core_spec``; ``python -m ppo_core.verify`` checks this build against it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _core
from . import _validate as _v

try:
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("ppo_core")
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "gae",
    "discounted_returns",
    "next_values_from",
    "clipped_surrogate",
    "clipped_value_loss",
    "clipped_value_loss_stats",
    "ValueLossStats",
    "SurrogateResult",
    "ValueLossResult",
    "load_policy",
]


class SurrogateResult(NamedTuple):
    """Result of :func:`clipped_surrogate`."""

    loss: float
    """-mean(min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A))."""
    grad: np.ndarray
    """d loss / d new_log_prob, same shape and dtype as the inputs."""
    clip_fraction: float
    """mean(|ratio - 1| > eps), CleanRL's definition (see :func:`clipped_surrogate`)."""
    approx_kl: float
    """mean((ratio - 1) - log ratio), the low-variance KL(old || new) estimator."""


class ValueLossResult(NamedTuple):
    """Result of :func:`clipped_value_loss`."""

    loss: float
    grad: np.ndarray
    """d loss / d values, same shape and dtype as the inputs."""


class ValueLossStats(NamedTuple):
    """Result of :func:`clipped_value_loss_stats`."""

    loss: float
    grad: np.ndarray
    """d loss / d values, same shape and dtype as the inputs."""
    clip_fraction: float


def gae(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    r"""Generalized Advantage Estimation (Schulman et al. 2015, eq. 16-18).

    Parameters
    ----------
    rewards, values, next_values : array_like, shape (T,) or (T, N)
        ``values[t]`` = V(s_t); ``next_values[t]`` = V of the observation that
        really followed step t (the final observation when the episode ended there).
    terminated, truncated : array_like, same shape, read as bool
    gamma, lam : float in [0, 1]

    Returns
    -------
    advantages, returns : ndarray, shape of ``rewards``, the result dtype::

        delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t
        A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1},   A_T = 0
        returns = A + values

    On truncation the future value ``next_values[t]`` is kept; on termination it is
    dropped (even if it is inf or NaN). T = 0 or N = 0 gives empty outputs.

    Raises
    ------
    ValueError
        shapes differ, an array is 0-d or 3-d or more, gamma or lam outside [0, 1]
        or not finite.
    TypeError
        complex, object or string arrays; gamma or lam not a real number.
    """
    g = _v.unit_interval("gamma", gamma)
    l = _v.unit_interval("lam", lam)
    if _v.kernel_ready(rewards, (values, next_values), (terminated, truncated)):
        # Already what the kernel takes: skip the conversions (a few us per call).
        return _core.gae(rewards, values, next_values, terminated, truncated, gamma=g, lam=l)
    r, v, nv = (_v.as_array(n, x) for n, x in
                (("rewards", rewards), ("values", values), ("next_values", next_values)))
    term, trunc = _v.as_array("terminated", terminated), _v.as_array("truncated", truncated)
    _v.rollout_shape([("rewards", r), ("values", v), ("next_values", nv),
                      ("terminated", term), ("truncated", trunc)])
    dt = _v.result_dtype([r, v, nv])
    return _core.gae(_v.as_values(r, dt), _v.as_values(v, dt), _v.as_values(nv, dt),
                     _v.as_mask(term), _v.as_mask(trunc), gamma=g, lam=l)


def discounted_returns(rewards, terminated, truncated, next_values=None, *, gamma):
    r"""Discounted reward-to-go, bootstrapped where the rollout or an episode is cut.

    Parameters
    ----------
    rewards : array_like, shape (T,) or (T, N)
    terminated, truncated : array_like, same shape, read as bool
    next_values : array_like, same shape, or None (read as zeros: no bootstrap)
    gamma : float in [0, 1]

    Returns
    -------
    returns : ndarray, shape of ``rewards``, the result dtype::

        B_t = G_{t+1}          if step t did not end an episode and t < T - 1
            = next_values_t    otherwise (0 when next_values is None)
        G_t = r_t + gamma * (1 - terminated_t) * B_t

    On a consistent rollout (``next_values[t] == values[t+1]`` wherever t < T - 1
    and step t did not end an episode), ``gae(..., lam=1)[1]`` equals
    ``discounted_returns(..., next_values=next_values)``.

    Raises
    ------
    ValueError, TypeError
        as :func:`gae`.
    """
    g = _v.unit_interval("gamma", gamma)
    r = _v.as_array("rewards", rewards)
    term, trunc = _v.as_array("terminated", terminated), _v.as_array("truncated", truncated)
    named = [("rewards", r), ("terminated", term), ("truncated", trunc)]
    nv = None
    if next_values is not None:
        nv = _v.as_array("next_values", next_values)
        named.append(("next_values", nv))
    _v.rollout_shape(named)
    dt = _v.result_dtype([r] if nv is None else [r, nv])
    return _core.discounted_returns(
        _v.as_values(r, dt), _v.as_mask(term), _v.as_mask(trunc),
        None if nv is None else _v.as_values(nv, dt), gamma=g)


def next_values_from(values, last_values, *, final_values=None, done=None):
    r"""V of the observation that followed each step, from a rollout's values.

    Parameters
    ----------
    values : array_like, shape (T,) or (T, N)
        V(s_t) of the observations the policy acted on.
    last_values : array_like, shape ``values.shape[1:]``
        V of the observation after the rollout's last step.
    final_values : array_like, shape of ``values``, optional
        V of the final observation of an episode that ended at step t, before the
        environment reset it (gymnasium's ``final_obs``). Read only where ``done``.
    done : array_like, shape of ``values``, read as bool, optional
        Pass it with ``final_values``.

    Returns
    -------
    next_values : ndarray, shape of ``values``, the result dtype::

        next_values[t] = final_values[t]   where done[t] (when given)
                       = values[t + 1]     else, for t < T - 1
                       = last_values       else

    Without ``final_values``, ``next_values[t]`` at a done step is V of the reset
    observation: harmless only where ``gae`` ignores it (terminated steps).

    Raises
    ------
    ValueError
        shapes differ; ``last_values`` is not ``values.shape[1:]``; only one of
        ``final_values`` and ``done`` given.
    TypeError
        complex, object or string arrays.
    """
    v = _v.as_array("values", values)
    last = _v.as_array("last_values", last_values)
    has_final = _v.optional_pair("final_values", final_values, "done", done)
    named = [("values", v)]
    value_arrays = [v, last]
    if has_final:
        fv, d = _v.as_array("final_values", final_values), _v.as_array("done", done)
        named += [("final_values", fv), ("done", d)]
        value_arrays.append(fv)
    _v.rollout_shape(named)
    if last.shape != v.shape[1:]:
        raise ValueError(
            f"last_values: expected shape values.shape[1:] = {v.shape[1:]}, "
            f"got {last.shape}")
    dt = _v.result_dtype(value_arrays)
    return _core.next_values_from(
        _v.as_values(v, dt), _v.as_values(last, dt),
        final_values=_v.as_values(fv, dt) if has_final else None,
        done=_v.as_mask(d) if has_final else None)


def _loss_inputs(named):
    arrays = [(n, _v.as_array(n, x)) for n, x in named]
    shape = _v.same_shape(arrays)
    dt = _v.result_dtype([a for _, a in arrays])
    return shape, [_v.flat(_v.as_values(a, dt)) for _, a in arrays]


def clipped_surrogate(new_log_prob, old_log_prob, advantages, *, clip_coef):
    r"""PPO's clipped surrogate objective (Schulman et al. 2017, eq. 7) as a loss,
    with its analytic gradient.

    Parameters
    ----------
    new_log_prob, old_log_prob, advantages : array_like, any shape, all equal
    clip_coef : float > 0 (epsilon). The kernel uses it rounded to the result dtype,
        saturating at the dtype's largest finite value. One that rounds to 0 (1e-50
        in float32) clips every ratio to 1, as 1 +- 1e-50 does in float64.

    Returns
    -------
    SurrogateResult(loss, grad, clip_fraction, approx_kl)::

        ratio = exp(new_log_prob - old_log_prob)
        loss  = -mean(min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A))
        grad  = d loss / d new_log_prob
              = 0 where (A > 0 and ratio > 1 + eps) or (A < 0 and ratio < 1 - eps)
              = -A * ratio / n elsewhere
        clip_fraction = mean(|ratio - 1| > eps)
        approx_kl     = mean((ratio - 1) - log ratio)

    The inequalities are strict: at ratio exactly 1 +- eps the gradient is the
    unclipped one, as PyTorch autograd gives for the same expression.
    ``clip_fraction`` follows CleanRL: it counts every element whose ratio left the
    interval, including those whose gradient is *not* zeroed (A > 0 with a ratio
    below 1 - eps, say), so it is an upper bound on the share of zeroed gradients.
    ``loss``, ``clip_fraction``, ``approx_kl`` are Python floats, accumulated in
    float64; ``grad`` has the result dtype and the inputs' shape.

    NaN and inf follow IEEE arithmetic, as in the spec: an element with a NaN
    log-prob or advantage (or inf - inf log-probs, or an inf ratio times a zero
    advantage) has a NaN term and a NaN gradient, so the loss is NaN, and it is not
    counted in ``clip_fraction``. Inputs are not scanned for NaN (a NaN loss is what
    shows a diverged network, and a check would cost a pass over the data).

    Raises
    ------
    ValueError
        shapes differ, empty input, clip_coef <= 0 or not finite.
    TypeError
        complex, object or string arrays; clip_coef not a real number.
    """
    eps = _v.positive("clip_coef", clip_coef)
    shape, (new, old, adv) = _loss_inputs(
        [("new_log_prob", new_log_prob), ("old_log_prob", old_log_prob),
         ("advantages", advantages)])
    loss, grad, clip_fraction, approx_kl = _core.clipped_surrogate(
        new, old, adv, clip_coef=eps)
    return SurrogateResult(loss, grad.reshape(shape), clip_fraction, approx_kl)


def clipped_value_loss_stats(values, old_values, returns, *, clip_coef=None):
    """:func:`clipped_value_loss` plus its clip fraction, from the same kernel call.

    Returns ``ValueLossStats(loss, grad, clip_fraction)``: ``clip_fraction`` is the
    share of elements whose clipped term is the larger one (where the clip holds the
    gradient at 0; see :func:`clipped_value_loss`), 0.0 without ``clip_coef``.
    Same arguments and errors as :func:`clipped_value_loss`.
    """
    eps = None if clip_coef is None else _v.positive("clip_coef", clip_coef)
    shape, (v, old, ret) = _loss_inputs(
        [("values", values), ("old_values", old_values), ("returns", returns)])
    loss, grad, clip_fraction = _core.clipped_value_loss(v, old, ret, clip_coef=eps)
    return ValueLossStats(loss, grad.reshape(shape), clip_fraction)


def clipped_value_loss(values, old_values, returns, *, clip_coef=None):
    r"""PPO's value loss, optionally clipped around the old values.

    Parameters
    ----------
    values, old_values, returns : array_like, any shape, all equal
    clip_coef : float > 0, or None for the plain squared error. Used rounded to the
        result dtype, saturating at its largest finite value; one that rounds to 0
        (1e-50 in float32) still clips, to v_c = old_values, as old +- 1e-50 does in
        float64. Only None turns clipping off.

    Returns
    -------
    ValueLossResult(loss, grad)::

        clip_coef None:  loss = 0.5 * mean((v - R)^2),    grad = (v - R) / n
        otherwise:       v_c  = old + clip(v - old, -eps, eps)
                         loss = 0.5 * mean(max((v - R)^2, (v_c - R)^2))
                         grad = (v - R) / n    where (v - R)^2 >= (v_c - R)^2
                              = (v_c - R) / n  where the clipped term is larger
                                               and |v - old| < eps
                              = 0              elsewhere

    Ties: where the two squared errors are equal the unclipped rule is used
    (documented choice; autograd of ``torch.max`` would split the gradient there).

    NaN and inf follow IEEE arithmetic, as in the spec: v_c is NaN where v - old is,
    and the max of a NaN squared error and any other is NaN (``np.maximum``), so an
    element with a NaN value, old value or return (or v - R = inf - inf) has a NaN
    term and a NaN gradient, and is not counted as clipped. Without clipping
    ``old_values`` is not read. Inputs are not scanned for NaN.

    Raises
    ------
    ValueError
        shapes differ, empty input, clip_coef <= 0 or not finite.
    TypeError
        complex, object or string arrays; clip_coef not a real number.
    """
    loss, grad, _ = clipped_value_loss_stats(values, old_values, returns, clip_coef=clip_coef)
    return ValueLossResult(loss, grad)


def load_policy(run_dir):
    """Load a trained policy from a run directory (needs the ``train`` extra).

    Returns an object with ``act(obs, deterministic=True)``; see
    ``ppo_core.train.load_policy``.
    """
    from .train import load_policy as _load_policy  # torch is imported lazily

    return _load_policy(run_dir)
