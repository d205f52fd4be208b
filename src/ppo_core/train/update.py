"""The PPO update: advantages, then minibatch epochs of a loss, with its statistics.

A *loss* sees one :class:`Minibatch` (the batch's tensors and the policy's outputs on
them) and the run's config, and returns a :class:`LossOutput`::

    loss(minibatch, config) -> LossOutput(loss=0-d tensor with grad, approx_kl=float, stats={name: float})

``stats`` are averaged over the update's minibatches into the update's metrics row (the
row callbacks get; metrics.csv writes the columns it knows). A loss that keeps
state across updates also has ``after_update(approx_kl) -> dict`` (merged into the row)
and ``state_dict()`` / ``load_state_dict()`` (saved with checkpoints). The default,
:class:`PPOLoss`, is PPO's objective around a swappable policy loss
(:mod:`.losses`: the clipped surrogate, the plain policy gradient, RLlib's adaptive KL
penalty). Pass another as ``Trainer(..., loss=...)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Protocol

import torch
from torch import nn
from torch.distributions import Independent, Normal

from ppo_core import torch as ppo_torch

from .config import PPOConfig
from .policies import BoundedBeta, scale_std
from .rollout import Rollout
from .timing import UpdateTimer

__all__ = ["Minibatch", "LossOutput", "Loss", "PPOLoss", "PPOUpdate"]


@dataclass
class Minibatch:
    """One minibatch of an update: the rollout's tensors, flattened over (time, env), and the
    current policy's outputs on them. ``advantages`` are normalized when ``norm_adv`` is on,
    then multiplied by each sample's std scale when ``std_scale_weight`` is on."""

    obs: torch.Tensor
    actions: torch.Tensor
    old_log_prob: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    dist: Any
    """The distribution each sample is scored under: the policy's on ``obs`` (with
    ``std_scales``, each row's std multiplied by the scale it was sampled with)."""
    new_log_prob: torch.Tensor
    new_values: torch.Tensor
    policy_dist: Any = None
    """The policy's own distribution on ``obs`` (it differs from ``dist`` with ``std_scales``);
    entropy statistics and bonuses are taken from it (None, for a minibatch built without
    it: from ``dist``)."""


@dataclass
class LossOutput:
    loss: torch.Tensor
    """0-d tensor to minimize (with grad)."""
    approx_kl: float
    """Estimated KL(π_old ‖ π_new) on the minibatch (early stop at ``target_kl``, adaptive penalties)."""
    stats: Dict[str, float]
    """Named floats, averaged over the update's minibatches into the metrics row."""


class Loss(Protocol):
    """``(minibatch, config) -> LossOutput``; see the module docstring."""

    def __call__(self, mb: Minibatch, config: PPOConfig) -> LossOutput: ...


class PPOLoss:
    """PPO's objective: ``policy_loss + vf_coef * value loss - ent_coef * entropy``.

    The value loss is :func:`ppo_core.torch.clipped_value_loss` (clipped at
    ``vf_clip_coef``, off at 0); ``policy_loss`` is any :class:`~.losses.PolicyLoss`. State
    kept by the policy loss (``after_update``, ``state_dict``) is handed through.
    Statistics: ``policy_loss``, ``value_loss``, ``entropy``, ``clip_fraction``,
    ``value_clip_fraction``.
    """

    def __init__(self, policy_loss: Any) -> None:
        self.policy_loss = policy_loss
        for name in ("after_update", "state_dict", "load_state_dict"):
            if hasattr(policy_loss, name):
                setattr(self, name, getattr(policy_loss, name))

    def __call__(self, mb: Minibatch, config: PPOConfig) -> LossOutput:
        # the policy's own entropy (with std_scales the scaled one differs by a constant only)
        entropy = (mb.dist if mb.policy_dist is None else mb.policy_dist).entropy().mean()
        pg = self.policy_loss(mb.new_log_prob, mb.old_log_prob, mb.advantages, clip_coef=config.clip_coef)
        vf_clip = config.vf_clip_coef if config.vf_clip_coef > 0 else None
        vl = ppo_torch.clipped_value_loss(mb.new_values, mb.old_values, mb.returns, clip_coef=vf_clip)
        loss = pg.loss - config.ent_coef * entropy + config.vf_coef * vl.loss
        stats = {"policy_loss": float(pg.loss.detach()), "value_loss": float(vl.loss.detach()),
                 "entropy": float(entropy.detach()), "clip_fraction": float(pg.clip_fraction),
                 "value_clip_fraction": float(vl.clip_fraction)}
        return LossOutput(loss, float(pg.approx_kl), stats)


def normalize_advantages(adv: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std over the minibatch; a minibatch of one keeps its raw advantage
    (the std of a single number is undefined: NaN unbiased, 0 biased)."""
    if adv.numel() < 2:
        return adv
    return (adv - adv.mean()) / (adv.std() + 1e-8)


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - pred) / Var(target); NaN when the target is constant."""
    var = float(target.var(unbiased=False))
    if var == 0.0:
        return math.nan
    return 1.0 - float((target - pred).var(unbiased=False)) / var


class PPOUpdate:
    """One update of ``policy`` on a rollout: the advantage estimator, then ``update_epochs``
    epochs of ``num_minibatches`` shuffled minibatches of ``loss``, gradient-norm clipping,
    and CleanRL's early stop (finish the epoch, then stop when its mean KL passed ``target_kl``).

    The shuffles come from ``perm_generator``, so an update is reproducible from its seed.
    """

    def __init__(self, policy: nn.Module, optimizer: torch.optim.Optimizer, loss: Loss, advantage_estimator: Any,
                 config: PPOConfig, perm_generator: torch.Generator) -> None:
        self.policy = policy
        self.optimizer = optimizer
        self.loss = loss
        self.advantage_estimator = advantage_estimator
        self.config = config
        self.perm_generator = perm_generator

    def __call__(self, rollout: Rollout, timer: Optional[UpdateTimer] = None) -> Dict[str, float]:
        """Update on ``rollout``; returns the statistics of the metrics row. ``timer`` gets the
        ``advantage`` and ``update`` parts."""
        cfg = self.config
        advantages, returns = self.advantage_estimator(
            rollout.rewards, rollout.values, rollout.next_values, rollout.terminated, rollout.truncated,
            gamma=cfg.gamma, lam=cfg.lam,
        )
        if timer is not None:
            timer.mark("advantage")
        obs = rollout.obs.reshape(-1, *rollout.obs.shape[2:])
        actions = rollout.actions.reshape(-1, *rollout.actions.shape[2:])
        old_log_probs = rollout.log_probs.reshape(-1)
        old_values = rollout.values.reshape(-1)
        advantages = advantages.reshape(-1).float()
        returns = returns.reshape(-1).float()
        std_scales = None if rollout.std_scales is None else rollout.std_scales.reshape(-1)
        if cfg.std_scale_weight and std_scales is None:
            raise ValueError("config key 'std_scale_weight' needs a rollout sampled with std_scales; "
                             "this rollout has none")

        n = obs.shape[0]
        mb_size = n // cfg.num_minibatches
        sums: Dict[str, float] = {}
        count = 0
        epochs = 0
        has_std: Optional[bool] = None
        std_sum = 0.0
        for _ in range(cfg.update_epochs):
            epochs += 1
            perm = torch.randperm(n, generator=self.perm_generator)
            epoch_kl, epoch_batches = 0.0, 0
            for start in range(0, mb_size * cfg.num_minibatches, mb_size):
                idx = perm[start:start + mb_size]
                own_dist, new_values = self.policy(obs[idx])
                # each sample is scored under the distribution it was drawn from (std_scales)
                dist = own_dist if std_scales is None else scale_std(own_dist, std_scales[idx])
                mb_adv = advantages[idx]
                if cfg.norm_adv:
                    mb_adv = normalize_advantages(mb_adv)
                if cfg.std_scale_weight and std_scales is not None:  # weight each sample by its scale
                    mb_adv = mb_adv * std_scales[idx]
                mb = Minibatch(obs[idx], actions[idx], old_log_probs[idx], old_values[idx], mb_adv, returns[idx],
                               dist, dist.log_prob(actions[idx]), new_values, own_dist)
                out = self.loss(mb, cfg)

                self.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                if cfg.max_grad_norm > 0:
                    nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()

                for k, v in out.stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                if has_std is None:
                    has_std = (isinstance(own_dist, Independent) and isinstance(own_dist.base_dist, Normal)) \
                        or isinstance(own_dist, BoundedBeta)
                if has_std:  # the policy's own std, not the scaled one of std_scales
                    std_sum += float(own_dist.stddev.detach().mean())
                epoch_kl += out.approx_kl
                epoch_batches += 1
                count += 1
            approx_kl = epoch_kl / epoch_batches
            if cfg.target_kl > 0 and approx_kl > cfg.target_kl:
                break
        stats = {k: v / count for k, v in sums.items()}
        stats["approx_kl"] = approx_kl
        stats["explained_variance"] = explained_variance(old_values, returns)
        stats["epochs"] = epochs
        after_update = getattr(self.loss, "after_update", None)
        if after_update is not None:  # a loss with state across updates (e.g. an adaptive KL penalty)
            stats.update(after_update(approx_kl))
        if has_std:
            stats["action_std"] = std_sum / count  # mean over minibatches, samples and action dims
        if timer is not None:
            timer.mark("update")
        return stats
