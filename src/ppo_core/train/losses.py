"""Policy losses: swappable pieces with the signature of :func:`ppo_core.torch.clipped_surrogate_loss`.

A policy loss is any callable::

    loss_fn(new_log_prob, old_log_prob, advantages, *, clip_coef)
        -> result with fields loss (0-d tensor with grad), clip_fraction (float), approx_kl (float)

over one minibatch of shape ``(B,)``. Pass one as ``Trainer(..., policy_loss=...)``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Protocol

import torch

from ppo_core import torch as ppo_torch
from ppo_core.torch import SurrogateLoss

__all__ = ["PolicyLoss", "clipped_surrogate", "policy_gradient", "POLICY_LOSSES", "SurrogateLoss"]


class PolicyLoss(Protocol):
    """``(new_log_prob, old_log_prob, advantages, *, clip_coef) -> SurrogateLoss-like``."""

    def __call__(self, new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                 *, clip_coef: float) -> Any: ...


#: PPO's clipped surrogate (Schulman et al. 2017, eq. 7), on the kernel: the default.
clipped_surrogate = ppo_torch.clipped_surrogate_loss


def policy_gradient(new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                    *, clip_coef: float) -> SurrogateLoss:
    """The unclipped importance-weighted policy gradient loss −mean(ratio·A) (L^CPI; ignores ε).

    At ratio = 1 (the first minibatch of an update) its gradient equals
    REINFORCE's −mean(∇log π · A). clip_fraction is reported as 0.
    """
    log_ratio = new_log_prob - old_log_prob
    ratio = log_ratio.exp()
    loss = -(ratio * advantages).mean()
    with torch.no_grad():
        approx_kl = float(((ratio - 1) - log_ratio).mean())
    return SurrogateLoss(loss, 0.0, approx_kl)


#: Names usable as ``policy_loss`` in the config.
POLICY_LOSSES: Dict[str, Callable[..., Any]] = {
    "clipped_surrogate": clipped_surrogate,
    "policy_gradient": policy_gradient,
}
