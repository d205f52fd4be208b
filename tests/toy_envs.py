"""Small deterministic environments and a tracing policy shared by the trainer's and the
Ray backend's tests (importable by worker processes: tests/ is on their path, and the
Ray tests ship this module by value)."""

import os
import signal

import gymnasium
import numpy as np
import torch


class CountdownEnv(gymnasium.Env):
    """Reward 1 every step; observation = remaining steps of a horizon H, scaled to [0, 1].

    ``terminate=True``: the episode really ends after H steps (terminated).
    ``terminate=False``: it never terminates; wrap it in ``TimeLimit(H)`` to truncate it.
    """

    def __init__(self, horizon=10, terminate=False):
        self.horizon = horizon
        self.terminate = terminate
        self.observation_space = gymnasium.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(2)
        self.t = 0

    def _obs(self):
        return np.array([max(self.horizon - self.t, 0) / self.horizon], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        terminated = self.terminate and self.t >= self.horizon
        return self._obs(), 1.0, terminated, False, {}


class ValueIsObs(torch.nn.Module):
    """Uniform policy whose value is 100 * obs[0], to trace which observation was valued."""

    def forward(self, obs):
        logits = torch.zeros(obs.shape[0], 2)
        return torch.distributions.Categorical(logits=logits), 100.0 * obs[:, 0]


class SelfKillingEnv(gymnasium.Env):
    """Reward 1 per step, episodes of 8 steps; at its ``kill_at``-th step a worker SIGKILLs
    itself: once over all workers and rebuilds when ``marker`` is given (the first to create
    the file dies), every time otherwise."""

    def __init__(self, kill_at, marker=None):
        self.kill_at, self.marker = kill_at, marker
        self.observation_space = gymnasium.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(2)
        self.steps = self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.steps += 1
        self.t += 1
        if self.steps == self.kill_at and self._claim():
            os.kill(os.getpid(), signal.SIGKILL)
        return np.array([self.t / 8], np.float32), 1.0, self.t >= 8, False, {}

    def _claim(self):
        if self.marker is None:
            return True
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False



# -- an env family of the tests' own: what adding one to ppo_core.envs.registry takes --

from gymnasium.vector import AutoresetMode, SyncVectorEnv  # noqa: E402

from ppo_core.envs.registry import EnvFamily, FamilyEntry, Option  # noqa: E402


class _CountdownEpisodes(gymnasium.Wrapper):
    """CountdownEnv whose action 1 ends the episode early (a failure): an outcome to report."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if int(action) == 1 and not terminated:
            return obs, reward, True, truncated, {**info, "gave_up": True}
        return obs, reward, terminated, truncated, {**info, "gave_up": False}


class CountdownFamily(EnvFamily):
    """Env ids ``countdown...``: CountdownEnv episodes of ``countdown_horizon`` steps;
    success = reaching the end without giving up."""

    def preset(self, env_id):
        return {"env_id": env_id, "num_envs": 2, "num_steps": 16, "num_minibatches": 2, "update_epochs": 2,
                "total_steps": 64, "checkpoint_every": 1, "env_kwargs": {"countdown_horizon": 6}}

    def check_config(self, env_kwargs, num_envs):
        h = env_kwargs.get("countdown_horizon", 6)
        if not isinstance(h, int) or isinstance(h, bool) or h < 1:
            raise ValueError(f"env_kwargs key 'countdown_horizon' must be an integer >= 1, got {h!r}")
        unknown = sorted(set(env_kwargs) - {"countdown_horizon"})
        if unknown:
            raise ValueError(f"env_kwargs: unknown countdown option {unknown[0]!r}")

    def make_vector_env(self, env_id, num_envs, seed, asynchronous, env_kwargs):
        h = env_kwargs.get("countdown_horizon", 6)
        return SyncVectorEnv([lambda: _CountdownEpisodes(CountdownEnv(h, terminate=True))] * num_envs,
                             autoreset_mode=AutoresetMode.SAME_STEP)

    def episode_metrics(self, final_info, ep_return, ep_len):
        return {"success": not bool(final_info.get("gave_up", False)), "return": ep_return}

    def summarize_episodes(self, episodes):
        return {"success_rate": float(np.mean([e["success"] for e in episodes]))}


FAMILY = CountdownFamily()

COUNTDOWN_ENTRY = FamilyEntry(
    name="countdown", module="toy_envs", title="Countdown",
    options=(Option("countdown_horizon", "positive_int", "H", {"*": "countdown episode length"}),),
)
