"""The loops users run today, re-implemented here operation for operation.

Each baseline computes what the matching ppo_core function computes, from inputs in the
storage its library keeps (float masks for Stable-Baselines3 and CleanRL, TorchRL's
``[batch, time, feature]`` tensors), so converting to that storage is not timed.

GAE (Schulman et al. 2015, eq. 16-18), with the terminated / truncated split::

    delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t
    A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1},   A_T = 0
    returns = A + values

Stable-Baselines3 and CleanRL run this recursion with one mask, ``next_non_terminal =
1 - done``, and bootstrap a truncated episode by adding ``gamma * V(final_obs)`` to its
last reward while collecting the rollout (SB3's ``collect_rollouts``; CleanRL has no
truncation bootstrap at all). :func:`sb3_numpy_loop` and :func:`cleanrl_torch_loop` are
their loops, operation for operation, fed with those folded rewards::

    rewards_folded_t = r_t + gamma * next_values_t   where truncated_t and not terminated_t
                     = r_t                            elsewhere

which makes them compute exactly what :func:`ppo_core.gae` computes (up to rounding), so
every baseline can be checked against it. Folding happens during collection in those
libraries, so it is not timed here.

The losses are CleanRL's ``ppo.py`` minibatch code (clipped surrogate with its
``approx_kl`` and ``clipfracs`` statistics, and the clipped value loss), as a function
of the tensors so that ``torch.compile`` can take the same expression.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = [
    "fold_truncation",
    "sb3_numpy_loop",
    "cleanrl_torch_loop",
    "torchrl_loop",
    "torchrl_vec",
    "copy_bound",
    "cleanrl_surrogate",
    "cleanrl_value_loss",
]


def fold_truncation(rewards: np.ndarray, next_values: np.ndarray, terminated: np.ndarray,
                    truncated: np.ndarray, gamma: float) -> np.ndarray:
    """Rewards with the truncation bootstrap added, as SB3 stores them (see the module doc)."""
    bootstrap = (truncated & ~terminated).astype(rewards.dtype)
    return rewards + gamma * next_values * bootstrap


def sb3_numpy_loop(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, dones: np.ndarray,
                   gamma: float, lam: float) -> Tuple[np.ndarray, np.ndarray]:
    """GAE as ``RolloutBuffer.compute_returns_and_advantage`` of Stable-Baselines3 runs it.

    One NumPy statement per step over the ``N`` environments, backwards over ``T``.
    ``rewards`` folded as :func:`fold_truncation` does; ``dones`` a float array of the
    values' dtype (SB3 stores its ``episode_starts`` as float32), all of shape ``(T, N)``;
    ``next_values[step]`` plays SB3's ``values[step + 1]`` (``last_values`` at the end).
    """
    advantages = np.zeros_like(rewards)
    last_gae_lam = 0
    for step in reversed(range(rewards.shape[0])):
        next_non_terminal = 1.0 - dones[step]
        delta = rewards[step] + gamma * next_values[step] * next_non_terminal - values[step]
        last_gae_lam = delta + gamma * lam * next_non_terminal * last_gae_lam
        advantages[step] = last_gae_lam
    returns = advantages + values
    return advantages, returns


def cleanrl_torch_loop(rewards, values, next_values, dones, gamma: float, lam: float):
    """GAE as CleanRL's ``ppo.py`` computes it: a PyTorch loop over ``T`` under ``no_grad``.

    Tensors of shape ``(T, N)``, ``rewards`` folded as :func:`fold_truncation` does,
    ``dones`` a float tensor (CleanRL keeps ``dones`` as float32); ``next_values[t]``
    plays CleanRL's ``values[t + 1]`` (``next_value`` at the end).
    """
    import torch

    with torch.no_grad():
        advantages = torch.zeros_like(rewards)
        lastgaelam = 0
        for t in reversed(range(rewards.shape[0])):
            nextnonterminal = 1.0 - dones[t]
            nextvalues = next_values[t]
            delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
            advantages[t] = lastgaelam = delta + gamma * lam * nextnonterminal * lastgaelam
        returns = advantages + values
    return advantages, returns


def torchrl_loop(rewards, values, next_values, terminated, done, gamma: float, lam: float):
    """TorchRL's ``generalized_advantage_estimate``, called directly.

    Tensors in TorchRL's layout ``(N, T, 1)`` (batch, time, feature; time at dim -2,
    its default); ``terminated`` and ``done`` are bool tensors.
    """
    from torchrl.objectives.value.functional import generalized_advantage_estimate

    return generalized_advantage_estimate(gamma, lam, values, next_values, rewards, done, terminated)


def torchrl_vec(rewards, values, next_values, terminated, done, gamma: float, lam: float):
    """TorchRL's ``vec_generalized_advantage_estimate`` (no Python loop over time), called
    directly, on the layout of :func:`torchrl_loop`."""
    from torchrl.objectives.value.functional import vec_generalized_advantage_estimate

    return vec_generalized_advantage_estimate(gamma, lam, values, next_values, rewards, done, terminated)


def copy_bound(rewards, values, next_values, terminated, truncated) -> None:
    """The memory traffic floor of the kernels issue: ``np.copyto`` of the five inputs into
    fresh arrays plus filling the two outputs. One fused pass moves less data, so a good
    kernel beats it."""
    for x in (rewards, values, next_values, terminated, truncated):
        out = np.empty_like(x)
        np.copyto(out, x)
    for _ in range(2):
        np.empty_like(rewards).fill(0)


def cleanrl_surrogate(newlogprob, b_logprobs, mb_advantages, clip_coef: float):
    """CleanRL's clipped surrogate for one minibatch, with the statistics it logs.

    Returns ``(pg_loss, approx_kl, clipfrac)`` as 0-d tensors; only ``pg_loss`` carries a
    gradient. Same outputs as :func:`ppo_core.torch.clipped_surrogate_loss`.
    """
    import torch

    logratio = newlogprob - b_logprobs
    ratio = logratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()
    pg_loss1 = -mb_advantages * ratio
    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()
    return pg_loss, approx_kl, clipfrac


def cleanrl_value_loss(newvalue, b_values, b_returns, clip_coef: float):
    """CleanRL's clipped value loss (``clip_vloss=True``, its default) for one minibatch."""
    import torch

    v_loss_unclipped = (newvalue - b_returns) ** 2
    v_clipped = b_values + torch.clamp(newvalue - b_values, -clip_coef, clip_coef)
    v_loss_clipped = (v_clipped - b_returns) ** 2
    v_loss_max = torch.max(v_loss_unclipped, v_loss_clipped)
    return 0.5 * v_loss_max.mean()
