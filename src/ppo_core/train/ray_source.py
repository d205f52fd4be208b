"""Rollouts from Ray actors: :class:`RaySource`, a :class:`~.sources.RolloutSource` (needs the ``ray`` extra).

K actors each own M environments (``num_envs = K * M``) and a CPU copy of the policy.
Per update the learner puts the new weights into Ray's object store once, every actor
collects a whole ``(T, M)`` fragment with them and its own environments, and the
learner stacks the K fragments into one ``(T, K * M)`` :class:`~.rollout.Rollout`:
one round trip per update and actor, none per step.

Normalization: actors normalize observations with the learner's statistics (sent with
the weights, frozen for the fragment) and return the moments (mean, variance, count)
of the raw observations they saw; the learner folds them into its statistics with the
parallel mean/variance update of :class:`~.normalize.RunningMeanStd`. Reward scaling
stays with the actor whose environments produced the rewards; the learner keeps the
latest copy of each actor's scaler for checkpoints and for a restarted actor.

Faults: an actor that dies mid-fragment (SIGKILL, its node lost) is restarted by Ray
(``max_restarts=-1``); its partial fragment is dropped, the learner logs a warning, gives
the new actor its reward-scaler state and new environment seeds, and collects that
fragment again. After ``config.max_env_restarts`` failures in a row within one update
the run ends with :class:`~.errors.EnvWorkerError`.

What is and is not identical to :class:`~.sources.VectorEnvSource` for the same seed:
environment ``k * M + i`` is reset with the same seed as the local backend's env
``k * M + i``, and the rollout contract (terminated and truncated kept apart,
``next_values`` from the real final observation) is the same code
(:class:`~.rollout.RolloutCollector`). Not identical: each actor samples actions from
its own torch generator (seeded from the run's seed and its index), and observation
statistics change once per update instead of once per step, so the trajectories differ.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .config import PPOConfig
from .envs import episode_metrics_fns, make_vector_env
from .errors import ConfigError, EnvWorkerError
from .normalize import ObsNormalizer, RewardScaler, RunningMeanStd
from .policies import space_shape
from .rollout import Rollout, RolloutCollector

__all__ = ["RaySource", "ray_layout"]

logger = logging.getLogger("ppo_core.train")


def ray_layout(config: PPOConfig) -> Tuple[int, int]:
    """``(K actors, M envs per actor)`` of a config with ``backend = "ray"``."""
    k = config.num_workers or config.num_envs
    m = config.envs_per_worker or config.num_envs // k
    if k * m != config.num_envs:
        raise ConfigError(f"config keys 'num_workers' ({k}) x 'envs_per_worker' ({m}) must equal "
                          f"num_envs ({config.num_envs})")
    return k, m


class _FragmentStats:
    """The observation normalizer of an actor: normalizes with the learner's statistics,
    and records the moments of the raw observations it is shown (``update``)."""

    def __init__(self, shape: Tuple[int, ...], enabled: bool, clip: float) -> None:
        self.normalizer = ObsNormalizer(shape, enabled=enabled, clip=clip)
        self.enabled = enabled
        self.seen = RunningMeanStd(shape, epsilon=0.0)

    def set(self, rms_state: Dict[str, Any]) -> None:
        self.normalizer.rms.load_state_dict(rms_state)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.normalizer(obs)

    def update(self, obs: np.ndarray) -> None:
        if self.enabled:
            self.seen.update(obs)

    def take(self) -> Tuple[List[float], List[float], float]:
        seen, self.seen = self.seen, RunningMeanStd(self.seen.mean.shape, epsilon=0.0)
        return seen.mean.tolist(), seen.var.tolist(), seen.count


class RolloutWorker:
    """One Ray actor's job: M environments, a CPU policy copy, whole fragments on request."""

    def __init__(self, config_data: Dict[str, Any], env: Union[str, Callable[[], Any]], index: int,
                 num_envs: int, seed: int) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        config = PPOConfig.from_dict(config_data)
        self.index = index
        self.seed = seed
        self.generator_seed = (config.seed * 1_000_003 + 7 * index + 1) % 2**63
        torch.manual_seed(self.generator_seed)
        # gymnasium ids step in this process (the actors are the parallelism); families
        # such as MetaDrive run each engine in a worker process of their own.
        self.envs = make_vector_env(env, num_envs, seed, asynchronous=False, env_kwargs=config.env_kwargs)
        shape = space_shape(self.envs.single_observation_space)
        self.obs_stats = _FragmentStats(shape, config.normalize_obs, config.obs_clip)
        self.reward_scaler = RewardScaler(num_envs, config.gamma, enabled=config.normalize_reward,
                                          clip=config.reward_clip)
        fns = episode_metrics_fns(env) if isinstance(env, str) else None
        # this actor's envs are envs index * M .. index * M + M - 1 of the run
        scales = config.std_scales[index * num_envs:(index + 1) * num_envs] or None
        self.collector = RolloutCollector(self.envs, None, self.obs_stats, self.reward_scaler, seed,
                                          episode_metrics_fn=fns[0] if fns else None, std_scales=scales)
        self.net: Optional[nn.Module] = None

    def ready(self) -> Dict[str, Any]:
        """Spaces, process id and the moments of the first reset's observations."""
        return {"observation_space": self.envs.single_observation_space,
                "action_space": self.envs.single_action_space, "pid": os.getpid(),
                "moments": self.obs_stats.take()}

    def set_net(self, net: nn.Module) -> None:
        self.net = net
        self.collector.policy = net

    def restore(self, reward_scaler: Optional[Dict[str, Any]], seed: int) -> Dict[str, Any]:
        """After a restart: the learner's copy of this actor's reward scaler, and new env seeds."""
        if reward_scaler is not None:
            self.reward_scaler.load_state_dict(reward_scaler)
        self.obs_stats.take()
        self.collector.replace_envs(self.envs, seed)
        return self.ready()

    def collect(self, weights: Dict[str, torch.Tensor], rms_state: Dict[str, Any],
                num_steps: int) -> Dict[str, Any]:
        assert self.net is not None, "set_net first"
        t0 = time.perf_counter()
        self.net.load_state_dict(weights)
        self.obs_stats.set(rms_state)
        env_before = self.collector.timings["env"]
        rollout = self.collector.collect(num_steps)
        return {"rollout": rollout, "moments": self.obs_stats.take(),
                "reward_scaler": self.reward_scaler.state_dict(),
                "env_seconds": self.collector.timings["env"] - env_before,
                "seconds": time.perf_counter() - t0}

    def close(self) -> None:
        self.envs.close()


def _stack(fragments: List[Rollout]) -> Rollout:
    """K fragments ``(T, M_k)`` side by side: one ``(T, sum M_k)`` rollout, actor by actor."""
    cat = {name: torch.cat([getattr(f, name) for f in fragments], dim=1)
           for name in ("obs", "actions", "log_probs", "values", "rewards", "terminated", "truncated",
                        "next_values")}
    scales = [f.std_scales for f in fragments if f.std_scales is not None]
    if scales and len(scales) != len(fragments):
        raise ValueError("std_scales: some fragments were sampled with scales, others without")
    return Rollout(**cat, episode_returns=[x for f in fragments for x in f.episode_returns],
                   episode_lengths=[x for f in fragments for x in f.episode_lengths],
                   episode_metrics=[x for f in fragments for x in f.episode_metrics],
                   std_scales=torch.cat(scales, dim=1) if scales else None)


class RaySource:
    """A :class:`~.sources.RolloutSource` whose environments live in Ray actors.

    Args:
        config: The run's config; ``num_workers`` (K, default ``num_envs``) and
            ``envs_per_worker`` (M, default ``num_envs / K``), ``ray_address``
            (``""``: start a local Ray instance sized to this machine), ``ray_worker_cpus``.
        env: A gymnasium id (default ``config.env_id``) or a picklable zero-argument
            env factory.
        seed: Reset seed of env 0 (env ``j`` gets ``seed + j``, as in the local backend).
        first_update: Updates already done (resume), for restart seeds and messages.
    """

    def __init__(self, config: PPOConfig, env: Optional[Union[str, Callable[[], Any]]] = None, *,
                 seed: Optional[int] = None, first_update: int = 0, update_stats_on_reset: bool = True) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("backend 'ray' needs Ray: pip install \"ppo_core[ray]\"") from None
        self._ray = ray
        self.config = config
        self.env = env if env is not None else config.env_id
        self.seed = config.seed if seed is None else int(seed)
        self.num_envs = config.num_envs
        self.k, self.m = ray_layout(config)
        self.restarts = 0
        self.timings: Dict[str, float] = {"env": 0.0, "inference": 0.0}
        self.breakdown: Dict[str, float] = {"broadcast": 0.0, "wait": 0.0, "slowest_actor": 0.0,
                                            "mean_actor": 0.0, "actor_env": 0.0, "stack": 0.0}
        """Cumulative seconds: ``broadcast`` (``ray.put`` of the weights), ``wait`` (until
        every fragment arrived, including transfer), ``slowest_actor`` / ``mean_actor``
        (per update, the slowest and the mean actor's own collect time), ``actor_env``
        (mean actor time inside env steps), ``stack`` (merging fragments and moments)."""
        self._update = int(first_update)
        self._policy: Optional[nn.Module] = None
        self._net_sent = False
        self._started_ray = False
        self.actors: List[Any] = []
        if not ray.is_initialized():  # else: the caller's Ray session, left as it is at close()
            if config.ray_address:  # join: close() disconnects this driver, the cluster keeps running
                ray.init(address=config.ray_address, log_to_driver=False)
            else:  # start: close() shuts the local instance down
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
            self._started_ray = True
        try:
            cpus = config.ray_worker_cpus
            if not config.ray_address:  # local: K actors always fit the machine
                cpus = min(cpus, (os.cpu_count() or 1) / self.k)
            # Ray restarts a dead actor as often as needed; the source gives up after
            # config.max_env_restarts failures in a row within one update, as the local backend does.
            remote = ray.remote(num_cpus=cpus, max_restarts=-1, max_task_retries=0)(RolloutWorker)
            data = config.to_dict()
            self.actors = [remote.remote(data, self.env, i, self.m, self.seed + i * self.m) for i in range(self.k)]
            ready = ray.get([a.ready.remote() for a in self.actors])
            self.observation_space = ready[0]["observation_space"]
            self.action_space = ready[0]["action_space"]
            self.pids = [r["pid"] for r in ready]
            self.obs_normalizer = ObsNormalizer(tuple(self.observation_space.shape), enabled=config.normalize_obs,
                                                clip=config.obs_clip)
            if update_stats_on_reset:  # off on resume: the checkpoint's statistics are restored as saved
                for r in ready:
                    self._merge(r["moments"])
            self._scalers: List[Optional[Dict[str, Any]]] = [None] * self.k
        except BaseException:
            self.close()
            raise

    def _merge(self, moments: Tuple[List[float], List[float], float]) -> None:
        mean, var, count = moments
        if self.config.normalize_obs and count > 0:
            self.obs_normalizer.rms.merge(np.asarray(mean), np.asarray(var), count)

    def sync_policy(self, policy: nn.Module) -> None:
        self._policy = policy

    def collect(self, num_steps: int) -> Rollout:
        ray = self._ray
        assert self._policy is not None, "sync_policy first"
        self._update += 1
        t0 = time.perf_counter()
        if not self._net_sent:  # the module once (its class travels with it), then weights only
            net_ref = ray.put(copy.deepcopy(self._policy).cpu())
            ray.get([a.set_net.remote(net_ref) for a in self.actors])
            self._net_sent = True
        weights = ray.put({k: v.detach().cpu() for k, v in self._policy.state_dict().items()})
        rms = self.obs_normalizer.rms.state_dict()
        t_put = time.perf_counter()
        self.breakdown["broadcast"] += t_put - t0
        results = self._gather(weights, rms, num_steps)
        t_got = time.perf_counter()
        self.breakdown["wait"] += t_got - t_put
        for i, r in enumerate(results):
            self._merge(r["moments"])
            self._scalers[i] = r["reward_scaler"]
        rollout = _stack([r["rollout"] for r in results])
        t_end = time.perf_counter()
        self.breakdown["stack"] += t_end - t_got
        seconds = [r["seconds"] for r in results]
        self.breakdown["slowest_actor"] += max(seconds)
        self.breakdown["mean_actor"] += sum(seconds) / len(seconds)
        actor_env = sum(r["env_seconds"] for r in results) / len(results)
        self.breakdown["actor_env"] += actor_env
        # The learner's view: time spent waiting for simulation vs. its own work.
        self.timings["env"] += t_got - t_put
        self.timings["inference"] += (t_put - t0) + (t_end - t_got)
        return rollout

    def _gather(self, weights: Any, rms: Dict[str, Any], num_steps: int) -> List[Dict[str, Any]]:
        """Every actor's fragment; an actor that died is restarted (by Ray) and asked again."""
        ray = self._ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        pending = {i: a.collect.remote(weights, rms, num_steps) for i, a in enumerate(self.actors)}
        results: List[Optional[Dict[str, Any]]] = [None] * self.k
        failures = 0
        step = (self._update - 1) * self.config.batch_size
        while pending:
            refs = list(pending.values())
            done, _ = ray.wait(refs, num_returns=1)
            i = next(j for j, ref in pending.items() if ref == done[0])
            del pending[i]
            try:
                results[i] = ray.get(done[0])
                continue
            except (RayActorError, ActorUnavailableError) as e:
                failures += 1
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if failures > self.config.max_env_restarts:
                raise EnvWorkerError(f"Ray rollout actors failed {failures} times in update {self._update} "
                                     f"(step {step}); giving up (last: actor {i}: {reason})")
            self.restarts += 1
            logger.warning("Ray rollout actor %d failed in update %d at step %d (%s); dropped its partial "
                           "fragment, collecting it again on the restarted actor (attempt %d of %d)",
                           i, self._update, step, reason, failures, self.config.max_env_restarts)
            seed = self.config.seed + 7919 * self._update + 104_729 * self.restarts + i * self.m
            ready = self._restore(i, seed, step)
            self.pids[i] = ready["pid"]
            pending[i] = self.actors[i].collect.remote(weights, rms, num_steps)
        return [r for r in results if r is not None]

    def _restore(self, i: int, seed: int, step: int, timeout: float = 300.0) -> Dict[str, Any]:
        """Wait for Ray to restart actor ``i``, then give it its state, new seeds and the policy."""
        ray = self._ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        policy = self._policy
        if policy is None:
            raise RuntimeError("RaySource: no policy to restore an actor with; call sync_policy first")
        deadline = time.monotonic() + timeout
        while True:
            try:
                ready = ray.get(self.actors[i].restore.remote(self._scalers[i], seed))
                ray.get(self.actors[i].set_net.remote(copy.deepcopy(policy).cpu()))
                return ready
            except ActorUnavailableError:  # still restarting
                if time.monotonic() > deadline:
                    raise EnvWorkerError(f"Ray rollout actor {i} did not come back within {timeout:.0f} s "
                                         f"in update {self._update} (step {step}); giving up") from None
                time.sleep(0.5)
            except RayActorError as e:
                raise EnvWorkerError(f"Ray rollout actor {i} cannot be restarted in update {self._update} "
                                     f"(step {step}): {type(e).__name__}; giving up") from None

    def state_dict(self) -> Dict[str, Any]:
        return {"obs_normalizer": copy.deepcopy(self.obs_normalizer.state_dict()),
                "reward_scalers": copy.deepcopy(self._scalers)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.obs_normalizer.load_state_dict(state["obs_normalizer"])
        scalers = state.get("reward_scalers")
        if scalers is None and "reward_scaler" in state:  # a local run resumed on Ray: one scaler for all
            scalers = [state["reward_scaler"]] * self.k
        if scalers and len(scalers) == self.k:
            self._scalers = list(scalers)
            ray = self._ray
            ray.get([a.restore.remote(s, self.seed + i * self.m) for i, (a, s) in enumerate(zip(self.actors, scalers))
                     if s is not None])

    def close(self) -> None:
        ray = self._ray
        if self.actors:  # let each actor close its envs (and their worker processes) first
            try:
                ray.get([a.close.remote() for a in self.actors], timeout=30)
            except Exception as e:  # a dead or hung actor: killed below
                logger.debug("closing Ray actors: %r", e)
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception as e:  # already gone
                logger.debug("killing a Ray actor: %r", e)
        self.actors = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False
