"""MetaDrive environment layer: offline assets, gymnasium env, vector envs, evaluation, GIFs.

Everything here targets ``metadrive-simulator==0.4.3`` (PyPI) with gymnasium >= 1.1.
One job per module; this package hands on their public names:

* :mod:`.assets`: the offline start (:func:`ensure_offline_assets`, :func:`asset_status`).
* :mod:`.config`: :class:`MetaDriveConfig`, the scenario ranges, :func:`scenario_for_seed`.
* :mod:`.env`: :class:`MetaDriveGymEnv`, :func:`make_metadrive_env`, :func:`make_vector_env`,
  :func:`worker_context` (the workers' start method).
* :mod:`.metrics`: :func:`episode_metrics`, :func:`summarize_episodes` and their keys.
* :mod:`.evaluator`: :class:`ParallelEvaluator` and its worker processes, :func:`evaluate_policy`.
* :mod:`.gif`: :func:`write_topdown_gif`.
* :mod:`.family`: all of it as the ``metadrive`` env family of :mod:`ppo_core.envs.registry`
  (preset, config checks, evaluator), which the trainer and the CLI use.

Importing the package imports no MetaDrive (gymnasium and numpy, yes): MetaDrive is
imported when an env is built, inside the process that steps it.

Design notes (measured facts are in ``docs/metadrive-notes.md``):

* **No network, ever.** MetaDrive 0.4.3 calls ``BaseEngine.try_pull_asset()`` when its
  engine starts and downloads ``assets.zip`` when ``metadrive/assets/version.txt`` or
  ``assets/textures/grass1/GroundGrassGreen002_COL_1K.jpg`` is missing (or the version
  differs). Physics-only stepping and the top-down renderer use none of these files.
  :func:`ensure_offline_assets` replaces that check by a no-op *in the current process*
  when the real assets are absent, and leaves MetaDrive untouched when they are present.
  It never writes into site-packages. Every env built here calls it first.
* **One engine per process.** MetaDrive's engine is a process-wide singleton. The
  :class:`MetaDriveGymEnv` creates it lazily on the first ``reset()``, so building the
  object (as gymnasium's ``AsyncVectorEnv`` does in the parent process to read the
  spaces) costs only the MetaDrive import and starts no engine. Run envs in worker
  processes (:func:`make_vector_env`, :class:`ParallelEvaluator`); a second env that
  steps in a process that already has a live engine fails.
* **Scenario selection.** MetaDrive's ``reset(seed=s)`` needs
  ``start_seed <= s < start_seed + num_scenarios``; see :meth:`MetaDriveGymEnv.reset`
  for how gymnasium seeds are mapped into that range.
* **terminated / truncated.** Crash, out-of-road and arrival give ``terminated=True``
  (MetaDrive's default ``*_done`` settings); reaching the horizon gives
  ``truncated=True`` with ``info["max_step"]``. MetaDrive reports *both* flags when the
  horizon step is also a crash step; this wrapper then returns ``terminated=True,
  truncated=False`` (a real terminal state wins, so it is never bootstrapped).
"""

from __future__ import annotations

from .assets import ALLOW_DOWNLOAD_ENV, asset_status, ensure_offline_assets
from .config import (EVAL_START_SEED, RESERVED_START_SEED, TEST_START_SEED, TRAIN_SCENARIO_LIMIT, TRAINING_ONLY,
                     VALIDATION_START_SEED, MetaDriveConfig, scenario_for_seed, speed_limit_factor)
from .env import (FORKSERVER_PRELOAD, START_METHOD_ENV, MetaDriveGymEnv, make_metadrive_env, make_vector_env,
                  worker_context)
from .evaluator import ActFn, EvalWorkerError, ParallelEvaluator, evaluate_policy
from .gif import write_topdown_gif
from .metrics import EPISODE_KEYS, METRIC_KEYS, RATE_FLAGS, episode_metrics, summarize_episodes

__all__ = [
    "ALLOW_DOWNLOAD_ENV",
    "FORKSERVER_PRELOAD",
    "EVAL_START_SEED",
    "VALIDATION_START_SEED",
    "TEST_START_SEED",
    "RESERVED_START_SEED",
    "TRAIN_SCENARIO_LIMIT",
    "TRAINING_ONLY",
    "METRIC_KEYS",
    "ActFn",
    "EPISODE_KEYS",
    "EvalWorkerError",
    "RATE_FLAGS",
    "START_METHOD_ENV",
    "MetaDriveConfig",
    "speed_limit_factor",
    "MetaDriveGymEnv",
    "ParallelEvaluator",
    "asset_status",
    "ensure_offline_assets",
    "episode_metrics",
    "evaluate_policy",
    "make_metadrive_env",
    "make_vector_env",
    "scenario_for_seed",
    "summarize_episodes",
    "worker_context",
    "write_topdown_gif",
]
