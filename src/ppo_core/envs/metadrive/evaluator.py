"""Parallel evaluation: worker processes, each with one MetaDrive env, driven by a
batched policy in the calling process.

The worker loop (:func:`_eval_worker`) is the target of spawned processes, so it stays a
module-level function.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import traceback
from collections import deque
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Type, cast

import numpy as np

from .assets import ensure_offline_assets
from .config import EVAL_START_SEED, MetaDriveConfig, scenario_for_seed
from .env import MetaDriveGymEnv, worker_context
from .metrics import episode_metrics, summarize_episodes

__all__ = ["ActFn", "EvalWorkerError", "ParallelEvaluator", "evaluate_policy"]

logger = logging.getLogger("ppo_core.envs.metadrive")

#: A batched policy: ``act_fn(obs) -> actions``, or with ``keyed=True``
#: ``act_fn(obs, episode_keys) -> actions`` (see :meth:`ParallelEvaluator.run_episodes`).
ActFn = Callable[..., np.ndarray]


class _StartMethodContext(Protocol):
    """What the evaluator uses of a multiprocessing context: ``Pipe`` and ``Process``."""

    def Pipe(self, duplex: bool = True) -> Tuple[multiprocessing.connection.Connection,
                                                 multiprocessing.connection.Connection]: ...

    @property
    def Process(self) -> Type[multiprocessing.process.BaseProcess]: ...


class EvalWorkerError(RuntimeError):
    """MetaDrive evaluation workers kept dying or failing: the evaluation gave up."""


class _WorkerLost(Exception):
    """An evaluation worker died or reported an error (internal: the evaluator replaces it)."""


def _eval_worker(conn: multiprocessing.connection.Connection, config: MetaDriveConfig, render: bool,
                 render_kwargs: Optional[Dict[str, Any]]) -> None:
    """Worker loop: one MetaDrive env; commands ("reset", scenario) / ("step", action) / ("close", None)."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env: Optional[MetaDriveGymEnv] = None
    try:
        env = MetaDriveGymEnv(config, render_mode="rgb_array" if render else None, render_kwargs=render_kwargs)
        ep_return, ep_len = 0.0, 0
        while True:
            cmd, data = conn.recv()
            if cmd == "reset":
                obs, _ = env.reset(options={"scenario": data})
                ep_return, ep_len = 0.0, 0
                conn.send(("ok", (obs, env.render() if render else None)))
            elif cmd == "step":
                obs, reward, terminated, truncated, info = env.step(data)
                ep_return += reward
                ep_len += 1
                done = terminated or truncated
                metrics = episode_metrics(info, ep_return, ep_len) if done else None
                conn.send(("ok", (obs, done, metrics, env.render() if render else None)))
            elif cmd == "close":
                conn.send(("ok", None))
                break
            else:
                raise ValueError(f"unknown command {cmd!r}")
    except (KeyboardInterrupt, EOFError):
        pass
    except Exception:  # report to the parent instead of dying silently
        try:
            conn.send(("error", traceback.format_exc()))
        except Exception:
            pass
    finally:
        if env is not None:
            env.close()
        conn.close()


class ParallelEvaluator:
    """Worker processes, each with one MetaDrive env on a fixed scenario range, driven
    by a batched policy in the calling process.

    Keep one open to evaluate periodically on the same held-out scenarios without
    paying process and engine start-up each time; use it as a context manager.
    """

    def __init__(
        self,
        config: MetaDriveConfig,
        num_workers: Optional[int] = None,
        context: Optional[str] = None,
        render: bool = False,
        render_kwargs: Optional[Dict[str, Any]] = None,
        max_restarts: int = 3,
    ) -> None:
        """Start ``num_workers`` (default ``os.cpu_count()``) worker processes.

        Args:
            config: Scenario range and options; every scenario evaluated must be in it.
            num_workers: Number of processes (at most as many are ever busy as there are
                episodes).
            context: multiprocessing start method (default: :func:`~.env.worker_context`'s).
            render: Workers also return a top-down frame after every reset and step.
            render_kwargs: Arguments for MetaDrive's top-down renderer.
            max_restarts: A worker that dies (e.g. killed) or fails is replaced and its
                episode rerun from the reset; a call of :meth:`run_episodes` with more
                failures than this raises :class:`EvalWorkerError`.
        """
        self.config = config
        n = num_workers if num_workers is not None else (os.cpu_count() or 1)
        if n < 1:
            raise ValueError(f"num_workers must be >= 1, got {n}")
        ensure_offline_assets()  # log the asset decision in this process too
        # get_context(method) returns the start method's concrete context (SpawnContext, ...),
        # each with a Process class; the stubs type it as BaseContext, which declares none.
        self._ctx = cast(_StartMethodContext, multiprocessing.get_context(worker_context(context)))
        self._worker_args = (config, render, render_kwargs)
        self.max_restarts = max_restarts
        self.restarts = 0
        """Workers replaced after they died or failed, over this evaluator's life."""
        self._conns: List[multiprocessing.connection.Connection] = []
        self._procs: List[multiprocessing.process.BaseProcess] = []
        for i in range(n):
            conn, proc = self._spawn(i)
            self._conns.append(conn)
            self._procs.append(proc)

    def _spawn(self, i: int) -> Tuple[multiprocessing.connection.Connection, multiprocessing.process.BaseProcess]:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_eval_worker, args=(child, *self._worker_args),
                                 name=f"metadrive-eval-{i}", daemon=True)
        proc.start()
        child.close()
        return parent, proc

    def _replace(self, i: int, reason: str, failures: int) -> None:
        """Put a new worker in place of worker ``i``, or give up after ``max_restarts``."""
        proc = self._procs[i]
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5)
        self._conns[i].close()
        if failures > self.max_restarts:
            raise EvalWorkerError(f"MetaDrive evaluation gave up: workers failed {failures} times in one "
                                  f"evaluation (last: worker {i} {reason})")
        logger.warning("MetaDrive eval worker %d %s; starting a new one and rerunning its episode", i, reason)
        self._conns[i], self._procs[i] = self._spawn(i)
        self.restarts += 1

    @property
    def num_workers(self) -> int:
        return len(self._conns)

    def _recv(self, i: int) -> Any:
        """Worker ``i``'s reply; :class:`_WorkerLost` if it died or reported an error."""
        try:
            status, payload = self._conns[i].recv()
        except (EOFError, ConnectionError, OSError):
            self._procs[i].join(timeout=5)
            raise _WorkerLost(f"died (exit code {self._procs[i].exitcode})") from None
        if status == "error":
            raise _WorkerLost(f"failed: {payload.strip().splitlines()[-1]}")
        return payload

    def run_episodes(
        self,
        act_fn: ActFn,
        scenarios: Sequence[int],
        on_frame: Optional[Callable[[int, np.ndarray], None]] = None,
        *,
        keyed: bool = False,
    ) -> List[Dict[str, Any]]:
        """Run one episode per entry of ``scenarios`` and return their metrics, in order.

        Scenarios are handed out in order to whichever worker is free; all active workers
        step in lock-step, so ``act_fn`` gets one batch ``(n_active, obs_dim)`` per step
        and must return actions ``(n_active, 2)``.

        Args:
            act_fn: Batched policy.
            scenarios: Scenario indices (inside the config's range).
            on_frame: With ``render=True``: called as ``on_frame(episode_index, frame)``.
            keyed: Call ``act_fn(obs, keys)`` with each row's episode index (its place in
                ``scenarios``) as its key
                (e.g. :meth:`ppo_core.train.Policy.episode_actor`), so that a policy can
                act per episode whatever the batching.
        """
        valid = self.config.scenarios
        for s in scenarios:
            if s not in valid:
                raise ValueError(f"scenario {s} outside [{valid.start}, {valid.stop})")
        todo = deque(enumerate(scenarios))
        results: List[Optional[Dict[str, Any]]] = [None] * len(scenarios)
        episode_of: Dict[int, int] = {}  # worker -> episode index
        obs: Dict[int, np.ndarray] = {}
        failures = 0

        def start(workers: Sequence[int]) -> None:
            pending = list(workers)
            while pending:
                started = []
                for w in pending:
                    if todo:
                        episode_of[w], scenario = todo.popleft()
                        self._conns[w].send(("reset", int(scenario)))
                        started.append(w)
                pending = []
                for w in started:
                    try:
                        obs[w], frame = self._recv(w)
                    except _WorkerLost as e:
                        requeue(w, str(e))
                        pending.append(w)
                        continue
                    if on_frame is not None and frame is not None:
                        on_frame(episode_of[w], frame)

        def requeue(w: int, reason: str) -> None:
            # The episode starts again from its reset on a new worker (frames already
            # passed to on_frame stay; a stochastic act_fn continues its stream).
            nonlocal failures
            failures += 1
            obs.pop(w, None)
            e = episode_of.pop(w)
            todo.appendleft((e, scenarios[e]))
            self._replace(w, reason, failures)

        start(range(self.num_workers))
        while obs:
            ids = sorted(obs)
            batch = np.stack([obs[w] for w in ids])
            if keyed:
                actions = np.asarray(act_fn(batch, [episode_of[w] for w in ids]), dtype=np.float32)
            else:
                actions = np.asarray(act_fn(batch), dtype=np.float32)
            if actions.shape[0] != len(ids):
                raise ValueError(f"act_fn returned {actions.shape[0]} actions for {len(ids)} observations")
            sent = []
            restart = []
            for k, w in enumerate(ids):
                try:
                    self._conns[w].send(("step", actions[k]))
                    sent.append(w)
                except (BrokenPipeError, ConnectionError, OSError):
                    self._procs[w].join(timeout=5)
                    requeue(w, f"died (exit code {self._procs[w].exitcode})")
                    restart.append(w)
            for w in sent:
                try:
                    o, done, metrics, frame = self._recv(w)
                except _WorkerLost as e:
                    requeue(w, str(e))
                    restart.append(w)
                    continue
                if on_frame is not None and frame is not None:
                    on_frame(episode_of[w], frame)
                if done:
                    results[episode_of[w]] = metrics
                    del obs[w]
                    restart.append(w)
                else:
                    obs[w] = o
            start(restart)
        return [r for r in results if r is not None]

    def evaluate(self, act_fn: ActFn, episodes: Optional[int] = None, start_seed: Optional[int] = None,
                 *, keyed: bool = False) -> Dict[str, Any]:
        """Evaluate on scenarios ``start_seed, start_seed + 1, ...`` (wrapping in the range).

        ``episodes`` defaults to the range size, so each scenario runs exactly once.
        Returns :func:`summarize_episodes` of the episodes.
        """
        cfg = self.config
        n = cfg.num_scenarios if episodes is None else int(episodes)
        s0 = cfg.start_seed if start_seed is None else int(start_seed)
        scenarios = [scenario_for_seed(s0 + i, cfg.start_seed, cfg.num_scenarios) for i in range(n)]
        return summarize_episodes(self.run_episodes(act_fn, scenarios, keyed=keyed))

    def close(self) -> None:
        """Stop the workers (gracefully, then by terminate after a timeout)."""
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []

    def __enter__(self) -> "ParallelEvaluator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def evaluate_policy(
    act_fn: ActFn,
    config: Optional[MetaDriveConfig] = None,
    episodes: int = 100,
    start_seed: int = EVAL_START_SEED,
    num_scenarios: int = 100,
    num_workers: Optional[int] = None,
    context: Optional[str] = None,
    *,
    return_episodes: bool = False,
    keyed: bool = False,
) -> Dict[str, Any]:
    """Evaluate a batched policy on scenarios ``S, S+1, ...`` in parallel.

    Episode ``i`` runs scenario ``start_seed + i % num_scenarios``: with
    ``episodes == num_scenarios`` each scenario runs exactly once.

    Args:
        act_fn: ``obs (n, obs_dim) float32 -> actions (n, 2)``.
        config: Other MetaDrive options (traffic density, horizon, ...); its
            ``start_seed``/``num_scenarios`` are replaced by the arguments, and its
            training-only options (:data:`~.config.TRAINING_ONLY`) are dropped.
        episodes: Number of episodes.
        start_seed: First evaluation scenario (default :data:`EVAL_START_SEED`).
        num_scenarios: Size of the evaluation range.
        num_workers: Worker processes (default ``min(os.cpu_count(), episodes)``).
        context: multiprocessing start method (default: :func:`~.env.worker_context`'s).
        return_episodes: Also return each episode's :func:`episode_metrics`, in
            scenario order, as ``per_episode``.
        keyed: ``act_fn(obs, episode_indices_of_rows)``, as in :meth:`ParallelEvaluator.run_episodes`.

    Returns:
        :func:`summarize_episodes` of the episodes: ``success_rate``, ``crash_rate``,
        ``out_of_road_rate`` (each with its ``<rate>_ci``), ``route_completion``,
        ``mean_return``, ``std_return``, ``mean_length``, ``episodes``.
    """
    base = config if config is not None else MetaDriveConfig()
    # Caching maps only pays when a scenario is visited twice; otherwise it only costs
    # memory (about 5 MB per map, measured).
    cfg = base.for_evaluation(start_seed, num_scenarios)
    cfg = cfg.replace(store_map=cfg.store_map and episodes > num_scenarios)
    workers = num_workers if num_workers is not None else (os.cpu_count() or 1)
    workers = max(1, min(workers, episodes))
    scenarios = [scenario_for_seed(start_seed + i, start_seed, num_scenarios) for i in range(episodes)]
    with ParallelEvaluator(cfg, workers, context=context) as ev:
        per_episode = ev.run_episodes(act_fn, scenarios, keyed=keyed)
    result = summarize_episodes(per_episode)
    if return_episodes:
        result["per_episode"] = per_episode
    return result
