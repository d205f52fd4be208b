"""MetaDrive as an env family of :mod:`ppo_core.envs.registry`: preset, checks, vector env,
metrics and evaluation, in the terms the generic layers ask for."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..registry import EnvFamily
from .config import EVAL_START_SEED, TRAINING_ONLY, MetaDriveConfig
from .env import make_vector_env
from .evaluator import EvalWorkerError, ParallelEvaluator, evaluate_policy
from .gif import write_topdown_gif
from .metrics import EPISODE_KEYS, RATE_FLAGS, episode_metrics, summarize_episodes

__all__ = ["MetaDriveFamily", "FAMILY", "ENV_KWARGS", "PRESET"]

#: Environment of the MetaDrive preset: the MetaDrive paper's generalization setup (a
#: fixed set of 100 training scenarios, traffic density 0.1, horizon 1000).
ENV_KWARGS = {"num_scenarios": 100, "start_seed": 0, "traffic_density": 0.1, "horizon": 1000}

#: The preset (``configs/metadrive.toml`` spells it out). Learner: 2 worker processes (one
#: per core), 2 x 2048-step rollouts, 4 minibatches of 1024 x 10 epochs, [256, 256] tanh
#: MLPs, observation normalization and reward scaling, annealed learning rate, initial
#: action std 0.6; held-out evaluation on 20 unseen scenarios (10000..10019) every 200k
#: steps (<= 10% of wall time even if every eval episode runs to the 1000-step horizon;
#: see docs/metadrive-notes.md).
PRESET = dict(
    env_id="metadrive", total_steps=2_000_000, num_envs=2, async_envs=True, num_steps=2048,
    learning_rate=3e-4, anneal_lr=True, gamma=0.99, lam=0.95, num_minibatches=4, update_epochs=10,
    norm_adv=True, clip_coef=0.2, vf_clip_coef=0.0, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5,
    target_kl=0.0, normalize_obs=True, normalize_reward=True, hidden_sizes=[256, 256],
    activation="tanh", init_log_std=-0.5, torch_threads=1, checkpoint_every=10, keep_checkpoints=1000,
    env_kwargs=ENV_KWARGS, eval_every_steps=200_000, eval_episodes=20, eval_start_seed=EVAL_START_SEED,
)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class EvalSetup:
    """One ``ppo-core eval``: the env options, and episodes on scenarios ``start_seed`` onwards."""

    config: MetaDriveConfig
    start_seed: int
    num_scenarios: int

    def describe(self) -> Dict[str, Any]:
        return {"start_seed": self.start_seed, "num_scenarios": self.num_scenarios,
                "traffic_density": self.config.traffic_density, "horizon": self.config.horizon}


class MetaDriveFamily(EnvFamily):
    steps_in_workers = True  # one engine per process: its envs always run in worker processes
    rate_keys = tuple(RATE_FLAGS)
    episode_keys = EPISODE_KEYS
    reports_success = True
    eval_error = EvalWorkerError

    def preset(self, env_id: str) -> Dict[str, Any]:
        data = copy.deepcopy(PRESET)
        data["env_id"] = env_id
        return data

    def check_config(self, env_kwargs: Dict[str, Any], num_envs: int) -> None:
        # The common options are checked here, so a bad config file or flag fails before any
        # worker starts; everything else is checked by MetaDriveConfig when the env is built.
        checks = {
            "num_scenarios": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
            "start_seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
            "traffic_density": (lambda v: _is_number(v) and 0.0 <= v <= 1.0, "a number in [0, 1]"),
            "horizon": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        }
        for key, (ok, what) in checks.items():
            if key in env_kwargs and not ok(env_kwargs[key]):
                raise ValueError(f"env_kwargs key {key!r} must be {what}, got {env_kwargs[key]!r}")
        known = {f.name for f in dataclasses.fields(MetaDriveConfig)}
        unknown = sorted(set(env_kwargs) - known)
        if unknown:
            raise ValueError(f"env_kwargs: unknown MetaDrive option {unknown[0]!r} "
                             f"(known: {', '.join(sorted(known))})")
        shards = env_kwargs.get("scenario_shards", 1)
        if _is_int(shards) and shards > 1 and num_envs % shards:
            raise ValueError(f"env_kwargs key 'scenario_shards' ({shards}) must divide num_envs "
                             f"({num_envs}): each shard needs the same number of workers")

    def make_vector_env(self, env_id: str, num_envs: int, seed: Optional[int], asynchronous: bool,
                        env_kwargs: Dict[str, Any]) -> Any:
        try:
            md_config = MetaDriveConfig.from_dict(env_kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"env_kwargs for {env_id!r}: {e}") from None
        return make_vector_env(md_config, num_envs, seed)  # always worker processes

    def episode_metrics(self, final_info: Any, ep_return: float, ep_len: int) -> Dict[str, Any]:
        return episode_metrics(final_info, ep_return, ep_len)

    def summarize_episodes(self, episodes: Any) -> Dict[str, Any]:
        return summarize_episodes(episodes)

    def evaluator(self, env_kwargs: Dict[str, Any], start_seed: int, episodes: int, workers: int) -> Any:
        # Held-out scenarios at the fixed traffic density, without training-only options.
        base = MetaDriveConfig.from_dict(env_kwargs)
        ev_cfg = base.for_evaluation(start_seed, episodes)
        return ParallelEvaluator(ev_cfg, min(workers, episodes))

    def eval_setup(self, env_kwargs: Dict[str, Any], episodes: int, options: Dict[str, Any]) -> EvalSetup:
        # Options not given follow the run's env_kwargs, except the scenario range, which
        # defaults to unseen scenarios: S = 10000, K = N (each scenario once). Training-only
        # options are dropped: evaluation runs at a fixed density, the run's traffic_density
        # unless --traffic-density says otherwise.
        kwargs = {k: v for k, v in env_kwargs.items() if k not in TRAINING_ONLY}
        kwargs.update({k: options[k] for k in ("traffic_density", "horizon") if options.get(k) is not None})
        start = EVAL_START_SEED if options.get("start_seed") is None else options["start_seed"]
        k = episodes if options.get("num_scenarios") is None else options["num_scenarios"]
        base = MetaDriveConfig.from_dict({**kwargs, "start_seed": start, "num_scenarios": k})
        return EvalSetup(base, start, k)

    def evaluate(self, act: Callable[..., Any], setup: EvalSetup, episodes: int,
                 workers: Optional[int]) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
        result = evaluate_policy(act, setup.config, episodes=episodes, start_seed=setup.start_seed,
                                 num_scenarios=setup.num_scenarios, num_workers=workers, return_episodes=True,
                                 keyed=True)
        per_episode = result.pop("per_episode")
        return result, per_episode

    def write_gif(self, act: Callable[..., Any], setup: EvalSetup, path: str) -> Dict[str, Any]:
        return write_topdown_gif(act, setup.config, seed=setup.start_seed, path=path, keyed=True)


FAMILY = MetaDriveFamily()
