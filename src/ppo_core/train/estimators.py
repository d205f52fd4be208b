"""Advantage estimators: swappable pieces with the signature of :func:`ppo_core.torch.gae`.

An estimator is any callable::

    estimator(rewards, values, next_values, terminated, truncated, *, gamma, lam)
        -> (advantages, returns)

taking time-major ``(T, N)`` float32 CPU tensors (``next_values`` already holds V of
the real final observation where an episode was truncated and 0 where it
terminated, see :func:`ppo_core.torch.next_values_from`) and returning two
tensors of that shape: the advantages the policy loss uses and the targets the
value loss regresses on. Pass one as ``Trainer(..., advantage_estimator=...)``.
"""

from __future__ import annotations

from typing import Callable, Dict, Protocol, Tuple

import torch

from ppo_core import torch as ppo_torch

__all__ = ["AdvantageEstimator", "gae", "returns_minus_baseline", "reward_to_go", "ESTIMATORS"]


class AdvantageEstimator(Protocol):
    """``(rewards, values, next_values, terminated, truncated, *, gamma, lam) -> (advantages, returns)``."""

    def __call__(self, rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                 terminated: torch.Tensor, truncated: torch.Tensor, *, gamma: float,
                 lam: float) -> Tuple[torch.Tensor, torch.Tensor]: ...


#: GAE(γ, λ) (Schulman et al. 2015): the default.
gae = ppo_torch.gae


def returns_minus_baseline(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                           terminated: torch.Tensor, truncated: torch.Tensor, *, gamma: float,
                           lam: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Advantage = discounted return − V (the REINFORCE-with-baseline estimator; ignores λ).

    Returns bootstrap with ``next_values`` at truncations and at the rollout's end.
    """
    returns = ppo_torch.discounted_returns(rewards, terminated, truncated, next_values, gamma=gamma)
    return returns - values, returns


def reward_to_go(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                 terminated: torch.Tensor, truncated: torch.Tensor, *, gamma: float,
                 lam: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Advantage = the discounted reward-to-go itself, no baseline (ignores λ).

    The value function is still trained on the same returns (for logging and
    for bootstrapping at truncations).
    """
    returns = ppo_torch.discounted_returns(rewards, terminated, truncated, next_values, gamma=gamma)
    return returns.clone(), returns


#: Names usable as ``advantage_estimator`` in the config.
ESTIMATORS: Dict[str, Callable[..., Tuple[torch.Tensor, torch.Tensor]]] = {
    "gae": gae,
    "returns_minus_baseline": returns_minus_baseline,
    "reward_to_go": reward_to_go,
}
