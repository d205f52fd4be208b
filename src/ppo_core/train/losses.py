"""Policy losses: swappable pieces with the signature of :func:`ppo_core.torch.clipped_surrogate_loss`.

A policy loss is any callable::

    loss_fn(new_log_prob, old_log_prob, advantages, *, clip_coef)
        -> result with fields loss (0-d tensor with grad), clip_fraction (float), approx_kl (float)

over one minibatch of shape ``(B,)``. Pass one as ``Trainer(..., policy_loss=...)``.

A loss that keeps state across updates (:class:`AdaptiveKLPenalty`) also has
``after_update(approx_kl) -> dict`` (called by the trainer after each update; the dict
goes into metrics.csv) and ``state_dict()`` / ``load_state_dict()`` (saved with
checkpoints).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Protocol

import torch

from ppo_core import torch as ppo_torch
from ppo_core.torch import SurrogateLoss

__all__ = ["PolicyLoss", "clipped_surrogate", "policy_gradient", "AdaptiveKLPenalty", "POLICY_LOSSES",
           "STATEFUL_POLICY_LOSSES", "make_policy_loss", "SurrogateLoss"]


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


class AdaptiveKLPenalty:
    """The clipped surrogate plus an adaptive KL penalty, as in RLlib's PPO.

    ``loss = clipped_surrogate + kl_coef * KL``, where KL(π_old ‖ π_new) is estimated on
    the minibatch's samples (drawn from π_old) by the unbiased, non-negative
    ``mean((ratio - 1) - log ratio)`` (Schulman's k3). After each update
    :meth:`after_update` adapts the coefficient to the update's mean KL: ×1.5 when it
    exceeded ``2 * kl_target``, ×0.5 when it stayed below ``kl_target / 2`` (RLlib's rule).
    The coefficient is state kept across updates and saved in checkpoints
    (:meth:`state_dict`). ``clip_coef`` is the surrogate's ε as for ``clipped_surrogate``.
    """

    def __init__(self, kl_coef: float = 0.2, kl_target: float = 0.01) -> None:
        if not kl_coef >= 0 or not kl_target > 0:
            raise ValueError(f"AdaptiveKLPenalty needs kl_coef >= 0 and kl_target > 0, got {kl_coef}, {kl_target}")
        self.kl_coef = float(kl_coef)
        self.kl_target = float(kl_target)

    def __call__(self, new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                 *, clip_coef: float) -> SurrogateLoss:
        surrogate = clipped_surrogate(new_log_prob, old_log_prob, advantages, clip_coef=clip_coef)
        log_ratio = new_log_prob - old_log_prob
        kl = ((log_ratio.exp() - 1) - log_ratio).mean()
        return SurrogateLoss(surrogate.loss + self.kl_coef * kl, surrogate.clip_fraction, surrogate.approx_kl)

    def after_update(self, approx_kl: float) -> Dict[str, float]:
        """Adapt ``kl_coef`` to the update's mean KL; return ``{"kl_coef": coefficient used}``."""
        used = self.kl_coef
        if approx_kl > 2.0 * self.kl_target:
            self.kl_coef *= 1.5
        elif approx_kl < 0.5 * self.kl_target:
            self.kl_coef *= 0.5
        return {"kl_coef": used}

    def state_dict(self) -> Dict[str, float]:
        return {"kl_coef": self.kl_coef, "kl_target": self.kl_target}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.kl_coef = float(state["kl_coef"])
        self.kl_target = float(state["kl_target"])


#: Names usable as ``policy_loss`` in the config: stateless losses, used as they are.
POLICY_LOSSES: Dict[str, Callable[..., Any]] = {
    "clipped_surrogate": clipped_surrogate,
    "policy_gradient": policy_gradient,
}

#: Names usable as ``policy_loss`` whose loss keeps state: ``factory(config) -> loss object``.
STATEFUL_POLICY_LOSSES: Dict[str, Callable[[Any], Any]] = {
    "kl_penalty": lambda config: AdaptiveKLPenalty(config.kl_coef, config.kl_target),
}


def make_policy_loss(name: str, config: Any) -> Any:
    """The policy loss named ``name`` for a run with ``config`` (a new object for stateful ones).

    Raises ``KeyError`` for an unknown name.
    """
    if name in STATEFUL_POLICY_LOSSES:
        return STATEFUL_POLICY_LOSSES[name](config)
    return POLICY_LOSSES[name]
