"""Environments in groups, stepped one group at a time, for pipelined rollout collection.

With one vector env, every step is a barrier: the policy's forward pass runs while
every simulator waits, and the simulators that finish first wait for the slowest.
:class:`EnvGroups` splits the ``num_envs`` environments into two ``AsyncVectorEnv`` s
(worker processes) so that the collector can run the policy for one group while the
other group's simulators step (:meth:`~.rollout.RolloutCollector.collect` does this
when it is given an :class:`EnvGroups`). Env ``i`` of the whole gets the same seed as
in one vector env of ``num_envs``; the data differ from the one-barrier collector
only in the order of the normalizers' updates and of the action samples.

It offers what the collector and the trainer's crash handling use: ``num_envs``, the
single spaces, ``action_space``, ``reset``, per-group ``step_async`` / ``step_wait``,
``processes`` / ``parent_pipes`` (for worker-failure detection) and ``close``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from gymnasium.vector import AsyncVectorEnv
from gymnasium.vector.utils import batch_space

__all__ = ["EnvGroups"]


class EnvGroups:
    """``num_envs`` environments as consecutive groups of ``AsyncVectorEnv`` s."""

    def __init__(self, groups: Sequence[AsyncVectorEnv]) -> None:
        if len(groups) < 2:
            raise ValueError(f"EnvGroups needs at least 2 groups, got {len(groups)}")
        self.groups: List[AsyncVectorEnv] = list(groups)
        self.single_observation_space = self.groups[0].single_observation_space
        self.single_action_space = self.groups[0].single_action_space
        for g in self.groups[1:]:
            if g.single_observation_space != self.single_observation_space or \
                    g.single_action_space != self.single_action_space:
                raise ValueError("EnvGroups: all groups must have the same spaces")
        self.num_envs = sum(g.num_envs for g in self.groups)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        starts = np.cumsum([0] + [g.num_envs for g in self.groups])
        self.slices: List[slice] = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
        self.closed = False

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def reset(self, *, seed: Optional[int] = None) -> Tuple[np.ndarray, Dict[str, Any]]:
        """Reset every group; env ``i`` gets ``seed + i`` as in a single vector env."""
        parts = []
        for g, sl in zip(self.groups, self.slices):
            obs, _ = g.reset(seed=None if seed is None else seed + sl.start)
            parts.append(np.asarray(obs))
        return np.concatenate(parts), {}

    def step_async(self, group: int, actions: np.ndarray) -> None:
        """Send ``actions`` (for the envs of ``group``) to that group's workers."""
        self.groups[group].step_async(actions)

    def step_wait(self, group: int) -> Tuple[Any, ...]:
        """The ``(obs, rewards, terminated, truncated, info)`` of ``group``'s pending step."""
        return self.groups[group].step_wait()

    # -- what worker-failure handling reads (as on an AsyncVectorEnv) -------------------

    @property
    def processes(self) -> List[Any]:
        return [p for g in self.groups for p in getattr(g, "processes", [])]

    @property
    def parent_pipes(self) -> List[Any]:
        return [p for g in self.groups for p in getattr(g, "parent_pipes", [])]

    @property
    def _state(self) -> Any:
        states = [getattr(g, "_state", None) for g in self.groups]
        pending = [s for s in states if s is not None and getattr(s, "value", "default") != "default"]
        return pending[0] if pending else states[0]

    @_state.setter
    def _state(self, value: Any) -> None:
        for g in self.groups:
            if hasattr(g, "_state"):
                g._state = value

    def close(self, **kwargs: Any) -> None:
        """Close every group (``terminate=True`` is passed on to each)."""
        errors = []
        for g in self.groups:
            try:
                g.close(**kwargs)
            except Exception as e:  # close the others all the same
                errors.append(e)
        self.closed = True
        if errors:
            raise errors[0]
