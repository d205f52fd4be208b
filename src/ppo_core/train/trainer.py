"""The PPO loop: collect a rollout, update on it, evaluate when due, log, checkpoint; resume.

Data flows one way: rollout source -> :class:`~.rollout.Rollout` -> the update
(:mod:`.update`: advantage estimator, then minibatch epochs of the loss, on the kernels)
-> Adam. Every piece that people change is passed in:

* ``source``: a :class:`~.sources.RolloutSource` (default: :class:`~.sources.VectorEnvSource`
  on ``config.env_id`` or ``env_fn``)
* ``policy_factory(observation_space, action_space, config) -> nn.Module`` (:mod:`.policies`)
* ``advantage_estimator(rewards, values, next_values, terminated, truncated, *, gamma, lam)`` (:mod:`.estimators`)
* ``policy_loss(new_log_prob, old_log_prob, advantages, *, clip_coef)`` (:mod:`.losses`), or
  ``loss(minibatch, config) -> LossOutput``, the whole objective (:mod:`.update`)
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Union

import gymnasium
import numpy as np
import torch
from torch import nn


from . import checkpoint as ckpt
from .config import PPOConfig, save_config
from .agent import Policy
from .overrides import RESUMABLE
from .envs import episode_metrics_fns
from .evaluation import HeldOutEvaluation, eval_score
from .errors import ConfigError, RunDirError
from .estimators import ESTIMATORS
from .losses import POLICY_LOSSES, STATEFUL_POLICY_LOSSES, make_policy_loss
from .policies import make_mlp_policy, space_to_dict
from .rollout import Rollout
from .runlock import RunLock
from .runlog import MetricsLog, plot_learning_curve
from .sources import RolloutSource, VectorEnvSource
from .timing import TIMING_KEYS, UpdateTimer
from .update import Loss, PPOLoss, PPOUpdate

__all__ = ["Trainer", "train", "UpdateCallback"]

logger = logging.getLogger("ppo_core.train")

#: ``callback(trainer, row)`` called after every update with that update's metrics row.
UpdateCallback = Callable[["Trainer", Dict[str, Any]], None]


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
                 loss: Optional[Loss] = None,
                 env_fn: Optional[Callable[[], Any]] = None,
                 callbacks: Sequence[UpdateCallback] = (),
                 source: Optional[RolloutSource] = None,
                 _resume_state: Optional[Dict[str, Any]] = None, _restart: bool = False) -> None:
        config.validate()
        if not config.env_id and env_fn is None and source is None:
            raise ConfigError("no environment: set env_id in the config (or --env on the command line)")
        self.config = config
        self.run_dir = Path(run_dir)
        # One owner per run: taken before anything is written, released by close().
        created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(ckpt.run_dir_error(self.run_dir, e)) from None
        self._lock = RunLock(self.run_dir)
        lock_existed = self._lock.path.exists()
        try:
            self._lock.acquire()
            if _resume_state is None and not _restart:
                ckpt.check_new_run_dir(self.run_dir)
            else:  # the trainer that died there may have left a half-written checkpoint
                ckpt.remove_partial_checkpoints(self.run_dir)
            self._init(config, _resume_state, policy_factory, advantage_estimator, policy_loss, loss, env_fn,
                       callbacks, source)
        except BaseException:
            held = self._lock.held
            self._lock.release()
            if held and not lock_existed:  # a refused or failed start leaves no lock file of ours
                self._lock.path.unlink(missing_ok=True)
            if created and held:  # a run that never started leaves no directory behind (never another's)
                try:
                    self.run_dir.rmdir()
                except OSError:
                    pass
            raise

    def _init(self, config: PPOConfig, _resume_state: Optional[Dict[str, Any]], policy_factory: Any,
              advantage_estimator: Any, policy_loss: Any, loss: Optional[Loss], env_fn: Any,
              callbacks: Sequence[UpdateCallback], source: Optional[RolloutSource]) -> None:
        self.callbacks = list(callbacks)
        self.advantage_estimator = advantage_estimator or self._lookup(
            ESTIMATORS, config.advantage_estimator, "advantage_estimator")
        if loss is not None and policy_loss is not None:
            raise TypeError("Trainer: pass either loss (the whole objective) or policy_loss (its policy term), "
                            "not both")
        if loss is None and policy_loss is None:
            known = {**POLICY_LOSSES, **STATEFUL_POLICY_LOSSES}
            self._lookup(known, config.policy_loss, "policy_loss")
            policy_loss = make_policy_loss(config.policy_loss, config)
        self.policy_loss = policy_loss
        """The policy term of the default :class:`~.update.PPOLoss` (None with a ``loss`` of your own)."""
        self.loss: Loss = loss if loss is not None else PPOLoss(policy_loss)
        """The objective each minibatch minimizes (:mod:`.update`)."""

        torch.set_num_threads(config.torch_threads)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed % 2**32)

        update = 0 if _resume_state is None else int(_resume_state["update"])
        if source is None:
            env_seed = config.seed if _resume_state is None else config.seed + 7919 * update
            if config.backend == "ray":
                from .ray_source import RaySource

                make_source: Any = RaySource
            else:
                make_source = VectorEnvSource
            source = make_source(config, env_fn or config.env_id, seed=env_seed, first_update=update,
                                 update_stats_on_reset=_resume_state is None)
        self.source: RolloutSource = source
        """Where the rollouts come from (:class:`~.sources.RolloutSource`); the trainer owns and closes it."""
        self._env_source: Any = env_fn or config.env_id  # for evaluation
        try:
            self.observation_space = source.observation_space
            self.action_space = source.action_space
            self.policy = (policy_factory or make_mlp_policy)(self.observation_space, self.action_space, config)
            if config.std_scales and not isinstance(self.action_space, gymnasium.spaces.Box):
                raise ConfigError("config key 'std_scales' scales a Gaussian policy's std; this env's actions "
                                  f"are {self.action_space}")
            self._scheduled_log_std: Optional[torch.nn.Parameter] = None
            if config.final_std > 0:  # the log-std follows a schedule (train()), not the gradient
                log_std = getattr(self.policy, "log_std", None)
                if not isinstance(log_std, torch.nn.Parameter):
                    raise ConfigError("config key 'final_std' needs a Gaussian policy with a free log-std "
                                      "parameter (`log_std`); this policy has none")
                log_std.requires_grad_(False)
                self._scheduled_log_std = log_std
            self.optimizer = torch.optim.Adam([p for p in self.policy.parameters() if p.requires_grad],
                                              lr=config.learning_rate, eps=config.adam_eps)
            self.perm_generator = torch.Generator().manual_seed(config.seed)
            self.updater = PPOUpdate(self.policy, self.optimizer, self.loss, self.advantage_estimator, config,
                                     self.perm_generator)
            """The update of :meth:`learn` (:class:`~.update.PPOUpdate`)."""
            self.global_step = 0
            self.update = 0
            self.elapsed = 0.0
            self.recent_returns: deque = deque(maxlen=20)
            """Raw returns of the last 20 training episodes (the ``episode_return`` column's mean)."""
            self.recent_lengths: deque = deque(maxlen=20)
            self.best: Dict[str, Any] = {}
            """The best periodic held-out evaluation so far: ``step`` and ``score`` (its
            checkpoint is ``checkpoints/best.pt``); empty before the first one."""
            self.stopped_early = False
            """The run stopped at ``stop_at_success`` before ``total_steps``."""
            if _resume_state is not None:
                self._load_state(_resume_state)
            family_fns = episode_metrics_fns(self._env_source) if isinstance(self._env_source, str) else None
            self._summarize_episodes = family_fns[1] if family_fns else None
            source.sync_policy(self.policy)
        except BaseException:
            source.close()
            raise

        tensorboard = "tensorboard" in config.logger
        if tensorboard and importlib.util.find_spec("tensorboard") is None:
            self.source.close()
            raise ConfigError("config key 'logger': 'tensorboard' needs the tensorboard package: "
                              'pip install "ppo_core[tensorboard]"')
        if (not tensorboard and _resume_state is not None and (self.run_dir / "tb").is_dir()
                and importlib.util.find_spec("tensorboard") is not None):
            # a run from before `logger` existed wrote events whenever tensorboard was installed
            logger.info("%s has TensorBoard events (tb/): they go on being written", self.run_dir)
            tensorboard = True
        try:
            save_config(config, self.run_dir / "config.toml")
            self.metrics: Optional[MetricsLog] = MetricsLog(
                self.run_dir, resume_step=self.global_step if _resume_state else None, tensorboard=tensorboard)
        except OSError as e:
            self.source.close()
            raise RunDirError(ckpt.run_dir_error(self.run_dir, e)) from None
        self.timing_totals: Dict[str, float] = {k: 0.0 for k in TIMING_KEYS}
        """Wall-clock seconds of this session by part (see :data:`TIMING_KEYS`)."""
        self._pending_other = 0.0  # checkpoint time, charged to the next update's timer
        self.held_out = HeldOutEvaluation(config, self._env_source, last_step=self.global_step)
        """The periodic held-out evaluation (:class:`~.evaluation.HeldOutEvaluation`)."""
        self._session_steps = 0

    @staticmethod
    def _lookup(table: Dict[str, Any], name: str, key: str) -> Any:
        if name not in table:
            raise ConfigError(f"config key {key!r}: unknown value {name!r} (choose from {', '.join(table)})")
        return table[name]

    # -- resume -------------------------------------------------------------------

    @classmethod
    def resume(cls, run_dir: Union[str, os.PathLike], *, total_steps: Optional[int] = None,
               changes: Optional[Dict[str, Any]] = None, **kwargs: Any) -> "Trainer":
        """Continue a run from its latest checkpoint with its saved config.

        ``total_steps`` may extend the run; ``changes`` may change the keys of
        :data:`~.overrides.RESUMABLE` (budget, evaluation cadence, checkpoints), and a
        :class:`ConfigError` names any other key. Restores weights, optimizer, step
        count, normalization statistics and RNG streams; the environments start
        fresh episodes (an env's internal state cannot be saved in general).
        Raises :class:`RunDirError` if ``run_dir`` is not a run or has no checkpoint.
        """
        changes = dict(changes or {})
        if total_steps is not None:
            changes["total_steps"] = total_steps
        refused = [k for k in changes if k not in RESUMABLE]
        if refused:
            raise ConfigError(f"{', '.join(refused)} cannot change in a resumed run (it changes what the run "
                              f"learns, so the run would no longer be one experiment); a resume may change: "
                              f"{', '.join(RESUMABLE)}")
        config = ckpt.load_run_config(run_dir)
        if changes:
            config = config.replace(**changes)
        if ckpt.latest_checkpoint(run_dir) is None:
            # Stopped before its first checkpoint: nothing to restore, so it starts over
            # from step 0 with its saved config (and its metrics.csv begins anew).
            logger.warning("%s has no checkpoint yet; starting it over from step 0 with its saved config", run_dir)
            return cls(config, run_dir, _restart=True, **kwargs)
        _, state = ckpt.load_latest_valid_checkpoint(run_dir)  # skips damaged ones, with a warning
        return cls(config, run_dir, _resume_state=state, **kwargs)

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
            "obs_normalizer": self.source.obs_normalizer.state_dict(),  # what load_policy needs
            "source": self.source.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "perm_rng": self.perm_generator.get_state(),
            "recent_episodes": {"returns": list(self.recent_returns), "lengths": list(self.recent_lengths)},
            "best": dict(self.best),
            **({"policy_loss": self.loss.state_dict()} if hasattr(self.loss, "state_dict") else {}),
        }

    def _load_state(self, state: Dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "source" in state:
            self.source.load_state_dict(state["source"])
        else:  # checkpoints written before rollout sources: the statistics at the top level
            self.source.load_state_dict({k: state[k] for k in ("obs_normalizer", "reward_scaler")})
        episodes = state.get("recent_episodes") or {"returns": state.get("collector", {}).get("recent_returns", []),
                                                    "lengths": state.get("collector", {}).get("recent_lengths", [])}
        self.recent_returns.extend(episodes["returns"])
        self.recent_lengths.extend(episodes["lengths"])
        torch.set_rng_state(state["torch_rng"])
        self.perm_generator.set_state(state["perm_rng"])
        self.global_step = int(state["step"])
        self.update = int(state["update"])
        self.elapsed = float(state["elapsed"])
        self.best = dict(state.get("best") or {})
        best_file = ckpt.best_checkpoint(self.run_dir)
        if best_file is not None:  # an evaluation after the last step checkpoint may have written it
            try:
                on_file = dict(ckpt.load_checkpoint(best_file).get("best") or {})
            except Exception as e:  # a damaged best.pt: the next better evaluation replaces it
                logger.warning("%s does not load (%s); it is replaced at the next best evaluation", best_file,
                               ckpt.load_error_reason(e))
                on_file = {}
            if on_file and (not self.best or tuple(on_file["score"]) > tuple(self.best["score"])):
                self.best = on_file
        if "policy_loss" in state and hasattr(self.loss, "load_state_dict"):
            self.loss.load_state_dict(state["policy_loss"])

    def save_checkpoint(self) -> Path:
        """Write a checkpoint now (atomically) and redraw the learning curve."""
        t0 = time.perf_counter()
        path = ckpt.save_checkpoint(self.run_dir, self._state(), self.global_step, self.config.keep_checkpoints)
        plot_learning_curve(self._metrics_log().rows, self.run_dir / "learning_curve.png",
                            title=f"{self.config.env_id or 'custom env'} seed {self.config.seed}")
        dt = time.perf_counter() - t0
        self._pending_other += dt
        self.timing_totals["other"] += dt
        self.elapsed += dt
        return path

    # -- evaluation ---------------------------------------------------------------

    def evaluate(self, episodes: Optional[int] = None) -> Dict[str, Any]:
        """Evaluate the current deterministic policy on the held-out episodes now
        (:class:`~.evaluation.HeldOutEvaluation`: ``episodes`` of them, default
        ``config.eval_episodes``, from ``eval_start_seed``). Returns the evaluation summary
        (``mean_return``, ``success_rate``, ...)."""
        with self._as_policy() as policy:
            return self.held_out.evaluate(policy, episodes)

    @contextlib.contextmanager
    def _as_policy(self) -> Iterator[Policy]:
        was_training = self.policy.training
        try:
            yield Policy(self.policy, self.obs_normalizer, self.observation_space, self.action_space, self.config,
                         step=self.global_step)
        finally:
            self.policy.train(was_training)

    def _maybe_evaluate(self) -> Dict[str, Any]:
        if not self.held_out.due(self.global_step, self.finished):
            return {}
        with self._as_policy() as policy:
            return self.held_out.row(policy, self.global_step)

    # -- the rollout source -------------------------------------------------------

    @property
    def obs_normalizer(self) -> Any:
        """The observation statistics of the policy's inputs (the source's)."""
        return self.source.obs_normalizer

    @property
    def envs(self) -> Any:
        """The source's environments (``VectorEnvSource``; None once closed or for other sources)."""
        return getattr(getattr(self, "source", None), "envs", None)

    @property
    def collector(self) -> Any:
        """The source's :class:`~.rollout.RolloutCollector` (``VectorEnvSource`` only)."""
        return getattr(self.source, "collector", None)

    @property
    def env_restarts(self) -> int:
        """Times this session the source rebuilt its environments after a failure."""
        return int(getattr(self.source, "restarts", 0))

    def timing_summary(self) -> Dict[str, Any]:
        """This session's wall time by part: ``{"seconds": {...}, "shares": {...}, "steps_per_second"}``.

        ``shares`` are fractions of the total; ``outside_env`` is ``1 - shares["env"] - shares["eval"]``
        (the learner's own cost: inference, kernels, the PyTorch update, logging).
        """
        total = sum(self.timing_totals.values())
        shares = {k: (v / total if total > 0 else 0.0) for k, v in self.timing_totals.items()}
        steps = self._session_steps
        return {"seconds": dict(self.timing_totals), "total_seconds": total, "shares": shares,
                "outside_env": 1.0 - shares["env"] - shares["eval"],
                "steps_per_second": steps / total if total > 0 else 0.0}

    # -- the loop -----------------------------------------------------------------

    def train(self) -> Optional[Dict[str, Any]]:
        """Run updates until ``config.total_steps``; return the last metrics row (None if already finished)."""
        cfg = self.config
        row: Optional[Dict[str, Any]] = None
        try:
            while not self.finished:
                timer = UpdateTimer(carried=self._pending_other)
                self._pending_other = 0.0
                self.update += 1
                if cfg.anneal_lr:
                    frac = 1.0 - (self.update - 1) / cfg.num_updates
                    for group in self.optimizer.param_groups:
                        group["lr"] = frac * cfg.learning_rate
                if self._scheduled_log_std is not None:
                    frac = (self.update - 1) / max(cfg.num_updates - 1, 1)
                    with torch.no_grad():
                        self._scheduled_log_std.fill_(
                            cfg.init_log_std + frac * (math.log(cfg.final_std) - cfg.init_log_std))
                self.policy.eval()
                env_before = self.source.timings["env"]
                self.source.sync_policy(self.policy)
                rollout = self.source.collect(cfg.num_steps)
                if cfg.std_scales:
                    self._check_std_scales(rollout)
                timer.mark("inference", inside={"env": self.source.timings["env"] - env_before})
                self.global_step += cfg.batch_size
                self._session_steps += cfg.batch_size
                self.policy.train()
                stats = self.learn(rollout, timer)
                eval_row = self._maybe_evaluate()
                timer.mark("eval")
                timings = timer.finish()
                for k, v in timings.items():
                    self.timing_totals[k] += v
                self.timing_totals["other"] -= timer.carried  # save_checkpoint counted it already
                dt = timer.total
                self.elapsed += dt
                self.recent_returns.extend(rollout.episode_returns)
                self.recent_lengths.extend(rollout.episode_lengths)
                recent = self.recent_returns
                row = {
                    "step": self.global_step,
                    "time": round(self.elapsed, 3),
                    "update": self.update,
                    "episode_return": float(np.mean(recent)) if recent else math.nan,
                    "episode_length": float(np.mean(self.recent_lengths)) if recent else math.nan,
                    "episodes": len(rollout.episode_returns),
                    **stats,
                    "learning_rate": float(self.optimizer.param_groups[0]["lr"]),
                    "steps_per_second": round(cfg.batch_size / dt, 1),
                    **{f"{k}_seconds": round(v, 4) for k, v in timings.items()},
                    **eval_row,
                    "env_restarts": self.env_restarts,
                    **self._training_episode_stats(rollout),
                }
                reached = (cfg.stop_at_success > 0
                           and eval_row.get("eval_success_rate", -1.0) >= cfg.stop_at_success)
                try:
                    self._metrics_log().log(row)
                    if eval_row:
                        self._keep_best(eval_row)
                    if self.update % cfg.checkpoint_every == 0 or self.finished or reached:
                        self.save_checkpoint()
                except OSError as e:
                    raise RunDirError(self._write_failed(e)) from None
                self.stopped_early = reached and not self.finished
                for cb in self.callbacks:
                    cb(self, row)
                if self.stopped_early:
                    logger.info("held-out success %.3f reached stop_at_success %.3f at step %d: stopping",
                                eval_row["eval_success_rate"], cfg.stop_at_success, self.global_step)
                    break
        finally:
            self.close()
        return row

    def _keep_best(self, eval_row: Dict[str, Any]) -> None:
        """Write ``checkpoints/best.pt`` when this evaluation beats the best so far: by held-out
        success where the env reports it (ties: route completion, then return), else by mean return."""
        score = eval_score(eval_row)
        if score is None:
            return
        if self.best and tuple(self.best["score"]) >= score:
            return
        self.best = {"step": self.global_step, "score": list(score)}
        ckpt.save_best(self.run_dir, self._state())

    def _write_failed(self, e: OSError) -> str:
        """One line for a run directory that stopped taking writes mid-run (read-only, full, gone)."""
        last = ckpt.latest_checkpoint(self.run_dir)
        where = f"its latest checkpoint is {last.name}" if last else "it has no checkpoint yet"
        return (f"cannot write to run directory {self.run_dir} at step {self.global_step} "
                f"({e.strerror or e}); the files written before are intact and {where}: "
                f"once it is writable, continue with: ppo-core train --resume {self.run_dir}")

    def _training_episode_stats(self, rollout: Rollout) -> Dict[str, Any]:
        """Outcome rates of the training episodes that ended in ``rollout`` (``train_*`` columns).

        For env families that report outcomes (MetaDrive: success, crash, out of road,
        route completion); NaN when no episode ended in the rollout.
        """
        if self._summarize_episodes is None:
            return {}
        keys = ("success_rate", "crash_rate", "out_of_road_rate", "route_completion")
        if not rollout.episode_metrics:
            return {f"train_{k}": math.nan for k in keys}
        summary = self._summarize_episodes(rollout.episode_metrics)
        return {f"train_{k}": float(summary[k]) for k in keys if k in summary}

    def _metrics_log(self) -> MetricsLog:
        """The open metrics log; a clear error once :meth:`close` has closed it."""
        if self.metrics is None:
            raise RuntimeError("the trainer is closed: its metrics log is closed")
        return self.metrics

    def close(self) -> None:
        """Close the rollout source, the evaluator and the metrics files (idempotent)."""
        if getattr(self, "source", None) is not None:
            self.source.close()
        if getattr(self, "held_out", None) is not None:
            self.held_out.close()
        metrics = getattr(self, "metrics", None)
        if metrics is not None:
            metrics.close()
            self.metrics = None
        if getattr(self, "_lock", None) is not None:
            self._lock.release()

    def _check_std_scales(self, rollout: Rollout) -> None:
        """A source must sample with the config's ``std_scales`` and say so in the rollout."""
        got = rollout.std_scales
        expected = torch.tensor(self.config.std_scales, dtype=torch.float32).expand(rollout.values.shape)
        if got is None or got.shape != expected.shape or not torch.equal(got.float(), expected):
            what = "None" if got is None else f"shape {tuple(got.shape)}, first row {got[0].tolist()}"
            raise ConfigError(f"config key 'std_scales' is {self.config.std_scales}, but the rollout source "
                              f"({type(self.source).__name__}) returned Rollout.std_scales = {what}")

    def learn(self, rollout: Rollout, timer: Optional[UpdateTimer] = None) -> Dict[str, float]:
        """One PPO update on ``rollout`` (:attr:`updater`): advantages, then minibatch epochs.
        Returns the loss statistics of the metrics row."""
        return self.updater(rollout, timer)


def train(config: PPOConfig, run_dir: Union[str, os.PathLike], **pieces: Any) -> Dict[str, Any]:
    """Train a new run: ``Trainer(config, run_dir, **pieces).train()``; returns the last metrics row."""
    row = Trainer(config, run_dir, **pieces).train()
    assert row is not None
    return row
