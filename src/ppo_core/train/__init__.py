"""PPO trainer on the ppo_core kernels (needs the ``train`` extra: torch, gymnasium, matplotlib, tomli-w).

Start with :class:`PPOConfig` and :func:`train` (or :class:`Trainer`); use a
trained run with :func:`load_policy`. The swappable pieces are documented in
:mod:`.estimators`, :mod:`.losses` and :mod:`.policies`; see ``docs/trainer.md``.
"""

from .agent import Policy, evaluate, load_policy, write_episode_gif
from .algos import ALGOS, algo_overrides, apply_algo
from .config import PPOConfig, config_to_toml, field_docs, load_config, preset, read_config_file, save_config
from .envs import make_vector_env
from .errors import ConfigError, EnvWorkerError, RunDirError, TrainError
from .estimators import ESTIMATORS, AdvantageEstimator, gae, returns_minus_baseline, reward_to_go
from .losses import (POLICY_LOSSES, STATEFUL_POLICY_LOSSES, AdaptiveKLPenalty, PolicyLoss, SurrogateLoss,
                     clipped_surrogate, policy_gradient)
from .policies import ActorCritic, MLPActorCritic, PolicyFactory, make_mlp_policy
from .overrides import RESUMABLE, parse_env_kwargs, parse_set
from .resolve import config_env_id, resolve_config
from .rollout import Rollout, RolloutCollector
from .sources import RolloutSource, VectorEnvSource
from .trainer import Trainer, train

__all__ = [
    "PPOConfig", "load_config", "save_config", "read_config_file", "resolve_config", "config_env_id",
    "config_to_toml", "field_docs", "parse_set", "parse_env_kwargs", "RESUMABLE",
    "Trainer", "train",
    "Policy", "load_policy", "evaluate", "write_episode_gif",
    "make_vector_env",
    "AdvantageEstimator", "gae", "returns_minus_baseline", "reward_to_go", "ESTIMATORS",
    "PolicyLoss", "SurrogateLoss", "clipped_surrogate", "policy_gradient", "POLICY_LOSSES",
    "AdaptiveKLPenalty", "STATEFUL_POLICY_LOSSES",
    "ActorCritic", "MLPActorCritic", "PolicyFactory", "make_mlp_policy",
    "Rollout", "RolloutCollector", "RolloutSource", "VectorEnvSource",
    "TrainError", "ConfigError", "RunDirError", "EnvWorkerError", "preset",
    "ALGOS", "algo_overrides", "apply_algo",
]
