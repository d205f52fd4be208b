"""Rollout collection from a gymnasium vector env with same-step autoreset.

Bootstrapping rule (the step users get wrong most often): with
``AutoresetMode.SAME_STEP`` the observation returned at an episode's end is the
*reset* observation of the next episode; the real final observation is in
``info["final_obs"]``. A truncated step (time limit) bootstraps with
V(final observation); a terminated step bootstraps nothing (0). Both go
through :func:`ppo_core.torch.next_values_from` with ``done = terminated | truncated``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol, Union

import gymnasium
import numpy as np
import torch

from ppo_core import torch as ppo_torch

from .env_groups import EnvGroups
from .policies import env_action, scale_std

__all__ = ["Rollout", "RolloutCollector", "final_info_of", "ObsNormalizing", "RewardScaling"]


class ObsNormalizing(Protocol):
    """What the collector needs of its observation normalizer (:class:`~.normalize.ObsNormalizer`
    or a stand-in): ``norm(obs) -> normalized obs`` and ``update(raw obs)``."""

    def __call__(self, obs: np.ndarray) -> np.ndarray: ...

    def update(self, obs: np.ndarray) -> None: ...


class RewardScaling(Protocol):
    """What the collector needs of its reward scaler (:class:`~.normalize.RewardScaler` or a
    stand-in): ``scale(rewards, done)`` for every env, ``scale(rewards, done, envs)`` for the
    envs of one :class:`EnvGroups` group (a slice)."""

    def __call__(self, rewards: np.ndarray, done: np.ndarray, envs: Optional[slice] = None) -> np.ndarray: ...


@dataclass
class Rollout:
    """One rollout, time-major: every field is ``(T, N, ...)``.

    ``obs`` are normalized observations (as the policy saw them); ``rewards``
    are scaled rewards (as the learner sees them); ``next_values`` is V of the
    observation that really followed each step (0 after a termination).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    next_values: torch.Tensor
    episode_returns: List[float] = field(default_factory=list)
    """Raw (unscaled) returns of the episodes that ended during this rollout."""
    episode_lengths: List[int] = field(default_factory=list)
    episode_metrics: List[Dict[str, Any]] = field(default_factory=list)
    """Per-episode outcomes of the episodes that ended here, from the env family's
    ``episode_metrics(final_info, return, length)`` (MetaDrive: success, crash, ...);
    empty for envs without one."""
    std_scales: Optional[torch.Tensor] = None
    """``(T, N)``: the multiplier of the policy's std each action was sampled with (config
    key ``std_scales``); None: the policy's own std everywhere."""


def final_info_of(info: Dict[str, Any], i: int) -> Dict[str, Any]:
    """The unbatched info dict of sub-env ``i``'s last step, from a ``SAME_STEP`` vector env's info.

    Gymnasium puts the ending step's info under ``info["final_info"]`` as batched arrays
    with ``_<key>`` masks; keys that sub-env ``i`` did not report are left out.
    """
    batched = info.get("final_info", {})
    return {k: v[i] for k, v in batched.items()
            if not k.startswith("_") and (f"_{k}" not in batched or batched[f"_{k}"][i])}


class _Buffers:
    """The time-major arrays of one rollout being filled, and its finished episodes."""

    def __init__(self, T: int, N: int, obs_shape: tuple) -> None:
        self.obs = torch.zeros((T, N, *obs_shape), dtype=torch.float32)
        self.values = torch.zeros((T, N))
        self.log_probs = torch.zeros((T, N))
        self.rewards = torch.zeros((T, N))
        self.terminated = torch.zeros((T, N), dtype=torch.bool)
        self.truncated = torch.zeros((T, N), dtype=torch.bool)
        self.final_values = torch.zeros((T, N))
        self.ep_returns: List[float] = []
        self.ep_lengths: List[int] = []
        self.ep_metrics: List[Dict[str, Any]] = []


class RolloutCollector:
    """Steps a vector env with a policy and fills :class:`Rollout` s.

    Keeps the current observations and per-env episode accumulators between
    calls, and updates the observation normalizer and reward scaler as it goes.
    ``policy`` (``obs -> (distribution, value)``) may be set later, before the first
    :meth:`collect`.
    ``timings`` accumulates wall-clock seconds in ``env`` (vector env ``step`` and
    ``reset``) and ``inference`` (everything else the collector does: the policy's
    forward passes, normalization, buffer writes); the trainer reads and resets it.
    """

    def __init__(self, envs: Union[gymnasium.vector.VectorEnv, EnvGroups], policy: Optional[Callable],
                 obs_normalizer: ObsNormalizing, reward_scaler: RewardScaling, seed: Optional[int], *,
                 update_stats_on_reset: bool = True,
                 episode_metrics_fn: Optional[Callable[..., Dict[str, Any]]] = None,
                 std_scales: Optional[Any] = None) -> None:
        self.envs: Union[gymnasium.vector.VectorEnv, EnvGroups] = envs
        self.episode_metrics_fn = episode_metrics_fn
        self.policy = policy
        self.obs_normalizer = obs_normalizer
        self.reward_scaler = reward_scaler
        self.num_envs = envs.num_envs
        self.action_space = envs.single_action_space
        self.timings = {"env": 0.0, "inference": 0.0}
        #: ``(N,)`` multipliers of the policy's std, one per env (None: the policy's own std).
        self.std_scales: Optional[torch.Tensor] = None
        if std_scales is not None:
            self.std_scales = torch.as_tensor(std_scales, dtype=torch.float32)
            if self.std_scales.shape != (self.num_envs,) or not bool(
                    torch.all((self.std_scales > 0) & torch.isfinite(self.std_scales))):
                raise ValueError(f"std_scales must be {self.num_envs} positive numbers (one per env), "
                                 f"got {std_scales!r}")
        self.replace_envs(envs, seed, update_stats=update_stats_on_reset)

    def replace_envs(self, envs: Union[gymnasium.vector.VectorEnv, EnvGroups], seed: Optional[int], *,
                     update_stats: bool = True) -> None:
        """Switch to ``envs`` (e.g. rebuilt after a worker crash): reset them with ``seed``
        and start new episodes; unfinished episodes of the old envs are dropped."""
        if envs.num_envs != self.num_envs:
            raise ValueError(f"replace_envs: expected {self.num_envs} envs, got {envs.num_envs}")
        self.envs = envs
        t0 = time.perf_counter()
        obs, _ = envs.reset(seed=seed)
        self.timings["env"] += time.perf_counter() - t0
        if seed is not None:
            envs.action_space.seed(seed)
        self.raw_obs = np.asarray(obs)
        if update_stats:  # off on resume: keep the checkpoint's statistics as saved
            self.obs_normalizer.update(self.raw_obs)
        self.ep_return = np.zeros(self.num_envs, np.float64)
        self.ep_length = np.zeros(self.num_envs, np.int64)

    def _policy(self) -> Callable:
        """The policy, or a clear error when none was set."""
        if self.policy is None:
            raise RuntimeError("RolloutCollector: no policy; set .policy before collecting")
        return self.policy

    @torch.no_grad()
    def _value(self, raw_obs: np.ndarray) -> torch.Tensor:
        obs = torch.from_numpy(self.obs_normalizer(raw_obs))
        return self._policy()(obs)[1].float()

    @torch.no_grad()
    def collect(self, num_steps: int) -> Rollout:
        """Step every env ``num_steps`` times; return the time-major :class:`Rollout`."""
        if isinstance(self.envs, EnvGroups):
            return self._collect_pipelined(num_steps)
        envs = self.envs
        policy = self._policy()
        T, N = num_steps, self.num_envs
        b = _Buffers(T, N, self.raw_obs.shape[1:])
        obs_buf, values, log_probs, rewards = b.obs, b.values, b.log_probs, b.rewards
        terminated, truncated, final_values = b.terminated, b.truncated, b.final_values
        actions: Optional[torch.Tensor] = None
        ep_returns, ep_lengths, ep_metrics = b.ep_returns, b.ep_lengths, b.ep_metrics
        start = time.perf_counter()
        env_time = 0.0
        try:
            for t in range(T):
                obs = torch.from_numpy(self.obs_normalizer(self.raw_obs))
                dist, value = policy(obs)
                if self.std_scales is not None:
                    dist = scale_std(dist, self.std_scales)
                action = dist.sample()
                if actions is None:
                    actions = torch.zeros((T, *action.shape), dtype=action.dtype)
                obs_buf[t] = obs
                actions[t] = action
                log_probs[t] = dist.log_prob(action)
                values[t] = value

                env_actions = env_action(action, self.action_space)
                t_env = time.perf_counter()
                next_obs, reward, term, trunc, info = envs.step(env_actions)
                env_time += time.perf_counter() - t_env
                term = np.asarray(term, bool)
                trunc = np.asarray(trunc, bool) & ~term  # both set: the episode really ended
                done = term | trunc

                if trunc.any():
                    idx = np.flatnonzero(trunc)
                    final_obs = np.stack([np.asarray(info["final_obs"][i]) for i in idx])
                    final_values[t, torch.from_numpy(idx)] = self._value(final_obs)

                reward = np.asarray(reward, np.float64)
                rewards[t] = torch.from_numpy(self.reward_scaler(reward, done))
                terminated[t] = torch.from_numpy(term)
                truncated[t] = torch.from_numpy(trunc)

                self.ep_return += reward
                self.ep_length += 1
                for i in np.flatnonzero(done):
                    ep_returns.append(float(self.ep_return[i]))
                    ep_lengths.append(int(self.ep_length[i]))
                    if self.episode_metrics_fn is not None:
                        ep_metrics.append(self.episode_metrics_fn(final_info_of(info, int(i)), ep_returns[-1],
                                                                  ep_lengths[-1]))
                self.ep_return[done] = 0.0
                self.ep_length[done] = 0

                self.raw_obs = np.asarray(next_obs)
                self.obs_normalizer.update(self.raw_obs)
        finally:  # a failed (discarded) rollout's time is still counted
            self.timings["env"] += env_time
            self.timings["inference"] += time.perf_counter() - start - env_time

        assert actions is not None
        return self._finish(b, actions)

    @torch.no_grad()
    def _collect_pipelined(self, num_steps: int) -> Rollout:
        """:meth:`collect` on :class:`EnvGroups`: one group's forward pass overlaps the other's step.

        Per time step ``t`` and group ``g`` in order: wait for ``g``'s pending step, book
        it, then (unless the rollout is complete) run the policy on ``g``'s new
        observations and send its next actions, so that the forward pass of every group
        runs while the other group's simulators step. No step is left in flight when the
        rollout is returned, so every action comes from the policy being updated.
        Timings: ``env`` is the time spent waiting for simulators, ``inference`` the rest.
        """
        envs = self.envs
        if not isinstance(envs, EnvGroups):
            raise TypeError(f"pipelined collection needs EnvGroups, got {type(envs).__name__}")
        policy = self._policy()
        T, N = num_steps, self.num_envs
        b = _Buffers(T, N, self.raw_obs.shape[1:])
        obs_buf, values, log_probs, rewards = b.obs, b.values, b.log_probs, b.rewards
        terminated, truncated, final_values = b.terminated, b.truncated, b.final_values
        actions: Optional[torch.Tensor] = None
        ep_returns, ep_lengths, ep_metrics = b.ep_returns, b.ep_lengths, b.ep_metrics
        start = time.perf_counter()
        env_time = 0.0

        def launch(g: int, t: int) -> None:
            nonlocal actions
            sl = envs.slices[g]
            obs = torch.from_numpy(self.obs_normalizer(self.raw_obs[sl]))
            dist, value = policy(obs)
            if self.std_scales is not None:
                dist = scale_std(dist, self.std_scales[sl])
            action = dist.sample()
            if actions is None:
                actions = torch.zeros((T, N, *action.shape[1:]), dtype=action.dtype)
            obs_buf[t, sl] = obs
            actions[t, sl] = action
            log_probs[t, sl] = dist.log_prob(action)
            values[t, sl] = value
            envs.step_async(g, env_action(action, self.action_space))

        def book(g: int, t: int) -> None:
            nonlocal env_time
            sl = envs.slices[g]
            t_env = time.perf_counter()
            next_obs, reward, term, trunc, info = envs.step_wait(g)
            env_time += time.perf_counter() - t_env
            term = np.asarray(term, bool)
            trunc = np.asarray(trunc, bool) & ~term
            done = term | trunc
            if trunc.any():
                idx = np.flatnonzero(trunc)
                final_obs = np.stack([np.asarray(info["final_obs"][i]) for i in idx])
                final_values[t, torch.from_numpy(idx + sl.start)] = self._value(final_obs)
            reward = np.asarray(reward, np.float64)
            rewards[t, sl] = torch.from_numpy(self.reward_scaler(reward, done, sl))
            terminated[t, sl] = torch.from_numpy(term)
            truncated[t, sl] = torch.from_numpy(trunc)
            self.ep_return[sl] += reward
            self.ep_length[sl] += 1
            for i in np.flatnonzero(done):
                k = sl.start + i
                ep_returns.append(float(self.ep_return[k]))
                ep_lengths.append(int(self.ep_length[k]))
                if self.episode_metrics_fn is not None:
                    ep_metrics.append(self.episode_metrics_fn(final_info_of(info, int(i)), ep_returns[-1],
                                                              ep_lengths[-1]))
            self.ep_return[sl][done] = 0.0
            self.ep_length[sl][done] = 0
            next_obs = np.asarray(next_obs)
            self.raw_obs[sl] = next_obs
            self.obs_normalizer.update(next_obs)

        try:
            for g in range(envs.num_groups):
                launch(g, 0)
            for t in range(T):
                for g in range(envs.num_groups):
                    book(g, t)
                    if t + 1 < T:
                        launch(g, t + 1)
        finally:  # a failed (discarded) rollout's time is still counted
            self.timings["env"] += env_time
            self.timings["inference"] += time.perf_counter() - start - env_time

        assert actions is not None
        return self._finish(b, actions)

    def _finish(self, b: "_Buffers", actions: torch.Tensor) -> Rollout:
        """Bootstrap the rollout's end with V(last observations) and hand it out."""
        last_values = self._value(self.raw_obs)
        next_values = ppo_torch.next_values_from(
            b.values, last_values, final_values=b.final_values, done=b.terminated | b.truncated
        )
        scales = None if self.std_scales is None else self.std_scales.expand(b.values.shape).clone()
        return Rollout(b.obs, actions, b.log_probs, b.values, b.rewards, b.terminated, b.truncated, next_values,
                       b.ep_returns, b.ep_lengths, b.ep_metrics, scales)
