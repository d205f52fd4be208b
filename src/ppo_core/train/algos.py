"""The tutorial's algorithms as presets of the one trainer: ``reinforce`` … ``ppo``.

Each algorithm is a small set of config keys applied on top of an environment's
config, so all of them run the same loop (:class:`~.trainer.Trainer`) with the
same environment, network, batch size, learning rate and γ; only what defines the
algorithm changes:

``preset``: ``advantage_estimator`` / ``policy_loss`` / gradient steps per batch / ``norm_adv``

* ``reinforce``: ``reward_to_go`` / ``policy_gradient`` / 1 (one epoch, one minibatch) / false
* ``reinforce-baseline``: ``returns_minus_baseline`` / ``policy_gradient`` / 1 / false
* ``a2c``: ``gae`` / ``policy_gradient`` / 1 / false
* ``ppo``: ``gae`` / ``clipped_surrogate`` / the base config's epochs × minibatches / true

* ``reinforce`` (Williams 1992): the policy gradient weighted by the discounted
  reward-to-go, no baseline. The critic is still trained, but only to bootstrap the
  return where a fixed-length rollout or a time limit cuts an episode; it is never
  subtracted.
* ``reinforce-baseline``: A = G − V(s) with the learned critic as the baseline.
* ``a2c`` (Mnih et al. 2016, with GAE(γ, λ) of Schulman et al. 2015 as the advantage).
* ``ppo`` (Schulman et al. 2017): the clipped surrogate over several epochs of
  minibatches of the same batch. It keeps the base config's ``update_epochs`` and
  ``num_minibatches``, which are the tuned PPO settings of each environment
  (CartPole: 20 × 1, MetaDrive: 10 × 4, the :class:`PPOConfig` defaults: 10 × 32).

Advantage normalization is off in the one-step presets because subtracting the
batch mean is itself a baseline, which would blur the REINFORCE / baseline
comparison. ``configs/algos/<name>.toml`` spells out each preset (a test keeps the
files and :data:`ALGOS` equal). Precedence in ``ppo-core train``: the
environment's defaults < ``--config`` < ``--algo`` < flags.
"""

from __future__ import annotations

import copy
from typing import Any, Dict

from .config import PPOConfig
from .errors import ConfigError

__all__ = ["ALGOS", "algo_overrides", "apply_algo"]

_ONE_STEP = {"update_epochs": 1, "num_minibatches": 1, "norm_adv": False}

#: The presets: algorithm name -> the config keys it sets.
ALGOS: Dict[str, Dict[str, Any]] = {
    "reinforce": {"advantage_estimator": "reward_to_go", "policy_loss": "policy_gradient", **_ONE_STEP},
    "reinforce-baseline": {"advantage_estimator": "returns_minus_baseline", "policy_loss": "policy_gradient",
                           **_ONE_STEP},
    "a2c": {"advantage_estimator": "gae", "policy_loss": "policy_gradient", **_ONE_STEP},
    "ppo": {"advantage_estimator": "gae", "policy_loss": "clipped_surrogate", "norm_adv": True},
}


def algo_overrides(name: str) -> Dict[str, Any]:
    """The config keys of preset ``name`` (a copy). Raises :class:`ConfigError` for an unknown name."""
    if name not in ALGOS:
        raise ConfigError(f"unknown algorithm {name!r} (choose from {', '.join(ALGOS)})")
    return copy.deepcopy(ALGOS[name])


def apply_algo(config: PPOConfig, name: str) -> PPOConfig:
    """``config`` with the keys of preset ``name`` replaced (a validated copy).

    Raises :class:`ConfigError` for an unknown name, and for ``ppo`` on a config with
    a single gradient step per batch (``update_epochs = num_minibatches = 1``, e.g. one
    of the other presets): that would be A2C, since the clip never acts at ratio 1.
    """
    out = config.replace(**algo_overrides(name))
    if name == "ppo" and out.update_epochs * out.num_minibatches == 1:
        raise ConfigError("algorithm 'ppo' reuses each batch for several gradient steps, but the config has "
                          "update_epochs = 1 and num_minibatches = 1; set update_epochs > 1")
    return out
