"""Running observation normalization and reward scaling, with state for checkpoints."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

__all__ = ["RunningMeanStd", "ObsNormalizer", "RewardScaler"]


class RunningMeanStd:
    """Mean and variance of a stream of batches (Chan et al.'s parallel update), in float64."""

    def __init__(self, shape: Tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = float(epsilon)

    def update(self, batch: np.ndarray) -> None:
        """Fold a batch of shape ``(B, *shape)`` into the statistics."""
        batch = np.asarray(batch, np.float64)
        self.merge(batch.mean(axis=0), batch.var(axis=0), batch.shape[0])

    def merge(self, b_mean: np.ndarray, b_var: np.ndarray, b_count: float) -> None:
        """Fold in the moments of another stream: its mean, (biased) variance and count."""
        delta = b_mean - self.mean
        total = self.count + b_count
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.mean = self.mean + delta * b_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> Dict[str, Any]:
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": self.count}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.mean = np.asarray(state["mean"], np.float64)
        self.var = np.asarray(state["var"], np.float64)
        self.count = float(state["count"])


class ObsNormalizer:
    """``clip((obs − mean) / sqrt(var + 1e-8), ±clip)`` with running statistics; identity when disabled."""

    def __init__(self, shape: Tuple[int, ...], *, enabled: bool, clip: float = 10.0) -> None:
        self.enabled = enabled
        self.clip = clip
        self.rms = RunningMeanStd(shape)

    def update(self, obs: np.ndarray) -> None:
        if self.enabled:
            self.rms.update(obs)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, np.float32)
        if not self.enabled:
            return obs
        out = (obs - self.rms.mean) / np.sqrt(self.rms.var + 1e-8)
        return np.clip(out, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> Dict[str, Any]:
        return {"enabled": self.enabled, "clip": self.clip, "rms": self.rms.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.enabled = bool(state["enabled"])
        self.clip = float(state["clip"])
        self.rms.load_state_dict(state["rms"])


class RewardScaler:
    """Divide rewards by the running std of the discounted return (as gymnasium's NormalizeReward).

    The per-env discounted return restarts after every episode end.
    """

    def __init__(self, num_envs: int, gamma: float, *, enabled: bool, clip: float = 10.0) -> None:
        self.enabled = enabled
        self.gamma = gamma
        self.clip = clip
        self.rms = RunningMeanStd(())
        self.returns = np.zeros(num_envs, np.float64)

    def __call__(self, rewards: np.ndarray, done: np.ndarray, envs: Optional[slice] = None) -> np.ndarray:
        """Scale one step's rewards of every env, or of the envs ``envs`` (a slice) only."""
        rewards = np.asarray(rewards, np.float64)
        if not self.enabled:
            return rewards.astype(np.float32)
        if envs is None:
            self.returns = self.returns * self.gamma + rewards
            self.rms.update(self.returns)
            self.returns[np.asarray(done, bool)] = 0.0
        else:
            returns = self.returns[envs] * self.gamma + rewards
            self.rms.update(returns)
            returns[np.asarray(done, bool)] = 0.0
            self.returns[envs] = returns
        scaled = rewards / np.sqrt(self.rms.var + 1e-8)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> Dict[str, Any]:
        return {"enabled": self.enabled, "rms": self.rms.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.enabled = bool(state["enabled"])
        self.rms.load_state_dict(state["rms"])
