"""Stable-Baselines3 with ppo_core's GAE: a drop-in ``RolloutBuffer`` (the ``sb3`` extra).

    from stable_baselines3 import PPO
    from ppo_core.integrations.sb3 import GAERolloutBuffer

    model = PPO("MlpPolicy", "CartPole-v1", rollout_buffer_class=GAERolloutBuffer)

:meth:`GAERolloutBuffer.compute_returns_and_advantage` gives SB3's advantages and returns
(to float32 rounding) from one C++ pass of :func:`ppo_core.gae` instead of SB3's Python
loop over the buffer. SB3 bootstraps a time-limit truncation by adding γ·V(final
observation) to that step's reward while collecting, and then treats the step as
terminal; the buffer keeps that convention, so SB3's learning is unchanged.
"""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.buffers import RolloutBuffer

import ppo_core

__all__ = ["GAERolloutBuffer"]


class GAERolloutBuffer(RolloutBuffer):
    """SB3's ``RolloutBuffer`` whose GAE runs on :func:`ppo_core.gae`."""

    def compute_returns_and_advantage(self, last_values, dones) -> None:
        last = last_values.clone().cpu().numpy().flatten().astype(self.values.dtype)
        ended = np.empty(self.values.shape, dtype=bool)  # the episode ended at step t
        ended[:-1] = self.episode_starts[1:] > 0
        ended[-1] = np.asarray(dones, dtype=bool).reshape(-1)
        next_values = ppo_core.next_values_from(self.values, last)
        advantages, _ = ppo_core.gae(self.rewards, self.values, next_values, ended, np.zeros_like(ended),
                                     gamma=self.gamma, lam=self.gae_lambda)
        self.advantages[:] = advantages
        self.returns = self.advantages + self.values
