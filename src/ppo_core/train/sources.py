"""Where rollouts come from: the :class:`RolloutSource` protocol and :class:`VectorEnvSource`.

The trainer needs one thing from its environments: a time-major :class:`~.rollout.Rollout`
per update, collected with the current policy. A rollout source provides it and owns
everything on the way there: the environments, the observation and reward
normalization statistics it updates while collecting, and recovery when an
environment worker fails. The trainer hands it the policy before every
:meth:`~RolloutSource.collect`, saves :meth:`~RolloutSource.state_dict` in checkpoints
and restores it on resume.

:class:`VectorEnvSource` (the default) steps a gymnasium vector env in this process or
in worker processes. Any object with the same attributes and methods can take its
place (``Trainer(config, run_dir, source=...)``): rollouts from remote actors, from a
recorded buffer, or from a simulator with another API.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from typing import Any, Callable, Dict, Optional, Protocol, Union, runtime_checkable

import gymnasium
from torch import nn

from .config import PPOConfig
from .env_groups import EnvGroups
from .envs import episode_metrics_fns, make_vector_env
from .errors import EnvWorkerError
from .normalize import ObsNormalizer, RewardScaler
from .rollout import Rollout, RolloutCollector

__all__ = ["RolloutSource", "VectorEnvSource", "worker_failed", "force_close"]

logger = logging.getLogger("ppo_core.train")


@runtime_checkable
class RolloutSource(Protocol):
    """What the trainer needs from the place its rollouts come from.

    Attributes:
        observation_space, action_space: One environment's spaces (the policy is built
            for them).
        num_envs: Environments stepped in parallel (the ``N`` of a ``(T, N)`` rollout).
        obs_normalizer: The observation statistics the policy's inputs are normalized
            with; saved with the model, so that a trained policy sees what it saw in training.
        timings: Cumulative wall-clock seconds of this session: ``env`` (simulation,
            including rebuilding environments) and ``inference`` (the rest of collection).
        restarts: How many times this session the environments were rebuilt after a failure.
    """

    observation_space: gymnasium.Space
    action_space: gymnasium.Space
    num_envs: int
    obs_normalizer: ObsNormalizer
    timings: Dict[str, float]
    restarts: int

    def sync_policy(self, policy: nn.Module) -> None:
        """Act with ``policy``'s current weights from the next :meth:`collect` on (called
        before every collect; a local source keeps the module, a remote one ships weights)."""

    def collect(self, num_steps: int) -> Rollout:
        """``num_steps`` steps of every environment, as one time-major rollout: terminated
        and truncated kept apart, ``next_values`` from the real final observations."""

    def state_dict(self) -> Dict[str, Any]:
        """What a checkpoint must hold to continue collecting as before (statistics; plain data and tensors)."""

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (on resume, before the first collect)."""

    def close(self) -> None:
        """Release environments and workers (idempotent)."""


def worker_failed(envs: Any, error: Optional[BaseException] = None) -> bool:
    """True if ``envs`` is an ``AsyncVectorEnv`` with a dead or failed worker.

    A worker killed by a signal closes its pipe (``error`` is then an ``EOFError`` or
    a connection error, possibly before the process is reaped) and dies; one whose env
    raised an exception reports it and exits, and gymnasium drops its pipe (``None``).
    Either way the vector env cannot be used again.
    """
    procs = getattr(envs, "processes", None)
    pipes = getattr(envs, "parent_pipes", None)
    if procs is None or pipes is None:
        return False
    if isinstance(error, (EOFError, ConnectionError)):
        return True
    return any(p is None for p in pipes) or any(not proc.is_alive() for proc in procs)


def force_close(envs: Any) -> None:
    """Close a (possibly broken) vector env: terminate its remaining workers, never raise."""
    for proc in getattr(envs, "processes", []):
        if proc.is_alive():
            proc.terminate()
    if hasattr(envs, "_state"):  # a pending step on a dead pipe would be waited for
        from gymnasium.vector.async_vector_env import AsyncState

        envs._state = AsyncState.DEFAULT
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            envs.close(terminate=True) if hasattr(envs, "processes") else envs.close()
    except Exception as e:  # the workers are gone already; closing is best effort
        logger.debug("closing a broken vector env: %r", e)
    for proc in getattr(envs, "processes", []):
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    envs.closed = True


class VectorEnvSource:
    """Rollouts from a gymnasium vector env (``SyncVectorEnv``, ``AsyncVectorEnv``, or with
    ``env_groups > 1`` pipelined groups of worker processes), with crash recovery.

    The environments are built and reset at construction. If an ``AsyncVectorEnv``
    worker dies during :meth:`collect`, the partial rollout is discarded, and so is what
    it added to the observation and reward statistics; the environments are rebuilt with
    new seeds (derived from the run's seed, the update and the restart count) and the
    rollout is collected again, up to ``config.max_env_restarts`` times in a row.

    Args:
        config: The run's config (``num_envs``, ``async_envs``, ``env_groups``,
            ``env_kwargs``, normalization settings, ``max_env_restarts``).
        env: A gymnasium id (default ``config.env_id``) or a zero-argument callable
            returning a ``gymnasium.Env``.
        seed: Seed of the first reset (default ``config.seed``).
        first_update: Updates already done (a resumed run's), for the seeds of rebuilt
            environments and for messages.
        update_stats_on_reset: Feed the first reset's observations to the statistics
            (off on resume: the checkpoint's statistics are restored as saved).
    """

    def __init__(self, config: PPOConfig, env: Optional[Union[str, Callable[[], Any]]] = None, *,
                 seed: Optional[int] = None, first_update: int = 0, update_stats_on_reset: bool = True) -> None:
        self.config = config
        self.env = env if env is not None else config.env_id
        self.seed = config.seed if seed is None else int(seed)
        self.restarts = 0
        self._update = int(first_update)
        self.envs: Any = self._make_envs(self.seed)
        try:
            self.observation_space = self.envs.single_observation_space
            self.action_space = self.envs.single_action_space
            self.num_envs = config.num_envs
            self.obs_normalizer = ObsNormalizer(tuple(self.observation_space.shape),
                                                enabled=config.normalize_obs, clip=config.obs_clip)
            self.reward_scaler = RewardScaler(config.num_envs, config.gamma,
                                              enabled=config.normalize_reward, clip=config.reward_clip)
            family_fns = episode_metrics_fns(self.env) if isinstance(self.env, str) else None
            self.collector = RolloutCollector(self.envs, None, self.obs_normalizer, self.reward_scaler, self.seed,
                                              update_stats_on_reset=update_stats_on_reset,
                                              episode_metrics_fn=family_fns[0] if family_fns else None,
                                              std_scales=config.std_scales or None)
        except BaseException:
            self.envs.close()
            raise

    @property
    def timings(self) -> Dict[str, float]:
        return self.collector.timings

    def sync_policy(self, policy: nn.Module) -> None:
        self.collector.policy = policy  # same process: the module itself, no copy

    def collect(self, num_steps: int) -> Rollout:
        """A rollout; if an ``AsyncVectorEnv`` worker dies, rebuild the envs and start over."""
        cfg = self.config
        self._update += 1
        step = (self._update - 1) * cfg.batch_size
        failures = 0
        while True:
            saved = self.state_dict()
            try:
                if failures:
                    self._rebuild()
                return self.collector.collect(num_steps)
            except Exception as e:
                if self.envs is None or not worker_failed(self.envs, e):
                    raise
                failures += 1
                # The partial rollout is discarded, and so is what it taught the normalizers.
                self.load_state_dict(saved)
                force_close(self.envs)
                self.envs = None
                if failures > cfg.max_env_restarts:
                    raise EnvWorkerError(
                        f"environment workers failed {failures} times in a row in update {self._update} "
                        f"(step {step}); giving up (last error: {type(e).__name__}: {e})"
                    ) from e
                logger.warning(
                    "environment worker failed in update %d at step %d (%s: %s); discarded the partial "
                    "rollout, rebuilding the %d environments (attempt %d of %d)", self._update, step,
                    type(e).__name__, e or "worker died", cfg.num_envs, failures, cfg.max_env_restarts)

    def _rebuild(self) -> None:
        cfg = self.config
        self.restarts += 1
        # New seeds, derived deterministically from the run's seed, update and restart count.
        seed = cfg.seed + 7919 * self._update + 104_729 * self.restarts
        t0 = time.perf_counter()
        self.envs = self._make_envs(seed)
        self.collector.timings["env"] += time.perf_counter() - t0
        self.collector.replace_envs(self.envs, seed)

    def _make_envs(self, seed: int) -> Any:
        """The vector env, or with ``env_groups > 1`` the :class:`EnvGroups` for pipelined collection."""
        cfg = self.config
        groups = cfg.env_groups
        if groups == 1:
            return make_vector_env(self.env, cfg.num_envs, seed, asynchronous=cfg.async_envs,
                                   env_kwargs=cfg.env_kwargs)
        size = cfg.num_envs // groups
        built: list = []
        try:
            for g in range(groups):
                built.append(make_vector_env(self.env, size, seed + g * size, asynchronous=True,
                                             env_kwargs=cfg.env_kwargs))
            return EnvGroups(built)
        except BaseException:
            for envs in built:
                envs.close()
            raise

    def state_dict(self) -> Dict[str, Any]:
        return {"obs_normalizer": copy.deepcopy(self.obs_normalizer.state_dict()),
                "reward_scaler": copy.deepcopy(self.reward_scaler.state_dict())}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.obs_normalizer.load_state_dict(state["obs_normalizer"])
        scaler = state.get("reward_scaler")
        if scaler is None:  # a run of the Ray backend resumed here: its actors' first scaler
            scaler = next((s for s in state.get("reward_scalers") or [] if s is not None), None)
        if scaler is not None:
            self.reward_scaler.load_state_dict(scaler)

    def close(self) -> None:
        if self.envs is None:
            return
        pending = getattr(getattr(self.envs, "_state", None), "value", "default") != "default"
        if pending or worker_failed(self.envs):  # e.g. interrupted mid-step: no graceful close
            force_close(self.envs)
        else:
            self.envs.close()
        self.envs = None
