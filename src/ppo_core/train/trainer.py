"""The PPO loop: collect a rollout, estimate advantages, run minibatch epochs, log, checkpoint.

Data flows one way: vector env -> :class:`~.rollout.Rollout` -> advantage
estimator (kernels) -> policy and value losses (kernels) -> Adam. Every piece
that people change is passed in:

* ``policy_factory(observation_space, action_space, config) -> nn.Module`` (:mod:`.policies`)
* ``advantage_estimator(rewards, values, next_values, terminated, truncated, *, gamma, lam)`` (:mod:`.estimators`)
* ``policy_loss(new_log_prob, old_log_prob, advantages, *, clip_coef)`` (:mod:`.losses`)
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ppo_core import torch as ppo_torch

from . import checkpoint as ckpt
from .config import PPOConfig, save_config
from .envs import make_vector_env
from .errors import ConfigError, RunDirError
from .estimators import ESTIMATORS
from .losses import POLICY_LOSSES
from .normalize import ObsNormalizer, RewardScaler
from .policies import make_mlp_policy, space_to_dict
from .rollout import Rollout, RolloutCollector
from .runlog import MetricsLog, plot_learning_curve

__all__ = ["Trainer", "train", "UpdateCallback"]

#: ``callback(trainer, row)`` called after every update with that update's metrics row.
UpdateCallback = Callable[["Trainer", Dict[str, Any]], None]


def _normalize_advantages(adv: torch.Tensor) -> torch.Tensor:
    # The std of a single number is undefined; a minibatch of one keeps its
    # raw advantage instead of becoming NaN (unbiased std) or 0 (biased std).
    if adv.numel() < 2:
        return adv
    return (adv - adv.mean()) / (adv.std() + 1e-8)


def _explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    var = float(target.var(unbiased=False))
    if var == 0.0:
        return math.nan
    return 1.0 - float((target - pred).var(unbiased=False)) / var


class Trainer:
    """A PPO run writing to ``run_dir``.

    Create with ``Trainer(config, run_dir, ...)`` for a new run, or
    ``Trainer.resume(run_dir, ...)`` to continue one; then call :meth:`train`.
    ``env_fn`` (a zero-argument callable returning a ``gymnasium.Env``) replaces
    ``config.env_id`` for custom environments.
    """

    def __init__(self, config: PPOConfig, run_dir: Union[str, os.PathLike], *,
                 policy_factory: Optional[Callable[..., nn.Module]] = None,
                 advantage_estimator: Optional[Callable[..., Any]] = None,
                 policy_loss: Optional[Callable[..., Any]] = None,
                 env_fn: Optional[Callable[[], Any]] = None,
                 callbacks: Sequence[UpdateCallback] = (),
                 _resume_state: Optional[Dict[str, Any]] = None) -> None:
        config.validate()
        if not config.env_id and env_fn is None:
            raise ConfigError("no environment: set env_id in the config (or --env on the command line)")
        self.config = config
        self.run_dir = Path(run_dir)
        if _resume_state is None and ckpt.list_checkpoints(self.run_dir):
            raise RunDirError(f"{self.run_dir} already holds a run; resume it with --resume or choose another --out")
        self.callbacks = list(callbacks)
        self.advantage_estimator = advantage_estimator or self._lookup(
            ESTIMATORS, config.advantage_estimator, "advantage_estimator")
        self.policy_loss = policy_loss or self._lookup(POLICY_LOSSES, config.policy_loss, "policy_loss")

        torch.set_num_threads(config.torch_threads)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed % 2**32)

        update = 0 if _resume_state is None else int(_resume_state["update"])
        env_seed = config.seed if _resume_state is None else config.seed + 7919 * update
        self.envs = make_vector_env(env_fn or config.env_id, config.num_envs, env_seed,
                                    asynchronous=config.async_envs, env_kwargs=config.env_kwargs)
        try:
            self.observation_space = self.envs.single_observation_space
            self.action_space = self.envs.single_action_space
            self.policy = (policy_factory or make_mlp_policy)(self.observation_space, self.action_space, config)
            self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.learning_rate, eps=config.adam_eps)
            self.obs_normalizer = ObsNormalizer(tuple(self.observation_space.shape),
                                                enabled=config.normalize_obs, clip=config.obs_clip)
            self.reward_scaler = RewardScaler(config.num_envs, config.gamma,
                                              enabled=config.normalize_reward, clip=config.reward_clip)
            self.perm_generator = torch.Generator().manual_seed(config.seed)
            self.global_step = 0
            self.update = 0
            self.elapsed = 0.0
            if _resume_state is not None:
                self._load_state(_resume_state)
            self.collector = RolloutCollector(self.envs, self.policy, self.obs_normalizer,
                                              self.reward_scaler, env_seed,
                                              update_stats_on_reset=_resume_state is None)
            if _resume_state is not None:
                self.collector.load_state_dict(_resume_state.get("collector", {}))
        except BaseException:
            self.envs.close()
            raise

        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, self.run_dir / "config.toml")
        self.metrics = MetricsLog(self.run_dir, resume_step=self.global_step if _resume_state else None)

    @staticmethod
    def _lookup(table: Dict[str, Any], name: str, key: str) -> Any:
        if name not in table:
            raise ConfigError(f"config key {key!r}: unknown value {name!r} (choose from {', '.join(table)})")
        return table[name]

    # -- resume -------------------------------------------------------------------

    @classmethod
    def resume(cls, run_dir: Union[str, os.PathLike], *, total_steps: Optional[int] = None,
               **kwargs: Any) -> "Trainer":
        """Continue a run from its latest checkpoint with its saved config.

        ``total_steps`` may extend the run. Restores weights, optimizer, step
        count, normalization statistics and RNG streams; the environments start
        fresh episodes (an env's internal state cannot be saved in general).
        Raises :class:`RunDirError` if ``run_dir`` is not a run or has no checkpoint.
        """
        config = ckpt.load_run_config(run_dir)
        if total_steps is not None:
            config = config.replace(total_steps=total_steps)
        path = ckpt.latest_checkpoint(run_dir)
        if path is None:
            raise RunDirError(f"{run_dir} has no checkpoint to resume from")
        return cls(config, run_dir, _resume_state=ckpt.load_checkpoint(path), **kwargs)

    @property
    def finished(self) -> bool:
        """True when the run has done all the updates its ``total_steps`` asks for."""
        return self.update >= self.config.num_updates

    def _state(self) -> Dict[str, Any]:
        return {
            "format": 1,
            "step": self.global_step,
            "update": self.update,
            "elapsed": self.elapsed,
            "config": self.config.to_dict(),
            "observation_space": space_to_dict(self.observation_space),
            "action_space": space_to_dict(self.action_space),
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "obs_normalizer": self.obs_normalizer.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "perm_rng": self.perm_generator.get_state(),
            "collector": self.collector.state_dict(),
        }

    def _load_state(self, state: Dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.obs_normalizer.load_state_dict(state["obs_normalizer"])
        self.reward_scaler.load_state_dict(state["reward_scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.perm_generator.set_state(state["perm_rng"])
        self.global_step = int(state["step"])
        self.update = int(state["update"])
        self.elapsed = float(state["elapsed"])

    def save_checkpoint(self) -> Path:
        """Write a checkpoint now (atomically) and redraw the learning curve."""
        path = ckpt.save_checkpoint(self.run_dir, self._state(), self.global_step, self.config.keep_checkpoints)
        plot_learning_curve(self.metrics.rows, self.run_dir / "learning_curve.png",
                            title=f"{self.config.env_id} seed {self.config.seed}")
        return path

    # -- the loop -----------------------------------------------------------------

    def train(self) -> Optional[Dict[str, Any]]:
        """Run updates until ``config.total_steps``; return the last metrics row (None if already finished)."""
        cfg = self.config
        row: Optional[Dict[str, Any]] = None
        try:
            while not self.finished:
                t0 = time.perf_counter()
                self.update += 1
                if cfg.anneal_lr:
                    frac = 1.0 - (self.update - 1) / cfg.num_updates
                    for group in self.optimizer.param_groups:
                        group["lr"] = frac * cfg.learning_rate
                self.policy.eval()
                rollout = self.collector.collect(cfg.num_steps)
                self.global_step += cfg.batch_size
                self.policy.train()
                stats = self.learn(rollout)
                dt = time.perf_counter() - t0
                self.elapsed += dt
                recent = self.collector.recent_returns
                row = {
                    "step": self.global_step,
                    "time": round(self.elapsed, 3),
                    "update": self.update,
                    "episode_return": float(np.mean(recent)) if recent else math.nan,
                    "episode_length": float(np.mean(self.collector.recent_lengths)) if recent else math.nan,
                    "episodes": len(rollout.episode_returns),
                    **stats,
                    "learning_rate": float(self.optimizer.param_groups[0]["lr"]),
                    "steps_per_second": round(cfg.batch_size / dt, 1),
                }
                self.metrics.log(row)
                if self.update % cfg.checkpoint_every == 0 or self.finished:
                    self.save_checkpoint()
                for cb in self.callbacks:
                    cb(self, row)
        finally:
            self.close()
        return row

    def close(self) -> None:
        """Close the environments and the metrics files (idempotent)."""
        if getattr(self, "envs", None) is not None:
            self.envs.close()
            self.envs = None
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
            self.metrics = None

    def learn(self, rollout: Rollout) -> Dict[str, float]:
        """One PPO update on ``rollout``: advantages, then minibatch epochs. Returns loss statistics."""
        cfg = self.config
        advantages, returns = self.advantage_estimator(
            rollout.rewards, rollout.values, rollout.next_values, rollout.terminated, rollout.truncated,
            gamma=cfg.gamma, lam=cfg.lam,
        )
        obs = rollout.obs.reshape(-1, *rollout.obs.shape[2:])
        actions = rollout.actions.reshape(-1, *rollout.actions.shape[2:])
        old_log_probs = rollout.log_probs.reshape(-1)
        old_values = rollout.values.reshape(-1)
        advantages = advantages.reshape(-1).float()
        returns = returns.reshape(-1).float()

        n = obs.shape[0]
        mb_size = n // cfg.num_minibatches
        vf_clip = cfg.vf_clip_coef if cfg.vf_clip_coef > 0 else None
        sums: Dict[str, float] = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0,
                                  "clip_fraction": 0.0, "value_clip_fraction": 0.0}
        count = 0
        epochs = 0
        for _ in range(cfg.update_epochs):
            epochs += 1
            perm = torch.randperm(n, generator=self.perm_generator)
            epoch_kl, epoch_batches = 0.0, 0
            for start in range(0, mb_size * cfg.num_minibatches, mb_size):
                idx = perm[start:start + mb_size]
                dist, new_values = self.policy(obs[idx])
                new_log_prob = dist.log_prob(actions[idx])
                entropy = dist.entropy().mean()
                mb_adv = advantages[idx]
                if cfg.norm_adv:
                    mb_adv = _normalize_advantages(mb_adv)
                pg = self.policy_loss(new_log_prob, old_log_probs[idx], mb_adv, clip_coef=cfg.clip_coef)
                vl = ppo_torch.clipped_value_loss(new_values, old_values[idx], returns[idx], clip_coef=vf_clip)
                loss = pg.loss - cfg.ent_coef * entropy + cfg.vf_coef * vl.loss

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm > 0:
                    nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()

                sums["policy_loss"] += float(pg.loss.detach())
                sums["value_loss"] += float(vl.loss.detach())
                sums["entropy"] += float(entropy.detach())
                sums["clip_fraction"] += float(pg.clip_fraction)
                sums["value_clip_fraction"] += float(vl.clip_fraction)
                epoch_kl += float(pg.approx_kl)
                epoch_batches += 1
                count += 1
            approx_kl = epoch_kl / epoch_batches
            # CleanRL's rule: finish the epoch, then stop if the policy moved too far.
            if cfg.target_kl > 0 and approx_kl > cfg.target_kl:
                break
        stats = {k: v / count for k, v in sums.items()}
        stats["approx_kl"] = approx_kl
        stats["explained_variance"] = _explained_variance(old_values, returns)
        stats["epochs"] = epochs
        return stats


def train(config: PPOConfig, run_dir: Union[str, os.PathLike], **pieces: Any) -> Dict[str, Any]:
    """Train a new run: ``Trainer(config, run_dir, **pieces).train()``; returns the last metrics row."""
    row = Trainer(config, run_dir, **pieces).train()
    assert row is not None
    return row
