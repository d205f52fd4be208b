"""Environment construction: the one place the trainer and ``ppo-core eval`` make environments.

Gymnasium ids go to ``gymnasium.make``; an id of a registered env family
(:mod:`ppo_core.envs.registry`; ``metadrive`` and any id starting with it) goes to
the family's ``make_vector_env``. A family that reports episode outcomes
(``episode_metrics`` / ``summarize_episodes``) has them merged into
:func:`ppo_core.train.evaluate`'s result (success rate etc.) and the training rows.
Nothing here names a family.

The vector env returned here always uses ``AutoresetMode.SAME_STEP``: when a
sub-environment ends an episode, the observation returned is already the
reset one and ``info["final_obs"][i]`` holds the real final observation.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable, Dict, Optional, Tuple, Union

import gymnasium
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from ppo_core.envs.registry import family_name, get_family

from .errors import ConfigError

__all__ = ["make_vector_env", "episode_metrics_fns", "env_family"]

EnvFactory = Callable[[], gymnasium.Env]


def env_family(env_id: str) -> Optional[str]:
    """The name of the env family serving ``env_id``, or None (kept for older callers:
    :func:`ppo_core.envs.registry.family_name`)."""
    return family_name(env_id)


def _single_thread_worker() -> None:
    # Env workers (AsyncVectorEnv subprocesses) must not each start a full
    # torch/OpenMP thread pool on a machine with few cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


class _Thunk:
    """Picklable env factory for (Sync|Async)VectorEnv."""

    def __init__(self, env_id: str, env_kwargs: Dict[str, Any], in_worker: bool) -> None:
        self.env_id = env_id
        self.env_kwargs = env_kwargs
        self.in_worker = in_worker

    def __call__(self) -> gymnasium.Env:
        if self.in_worker:
            _single_thread_worker()
        return gymnasium.make(self.env_id, **self.env_kwargs)


def _check_gymnasium_id(env_id: str) -> None:
    if ":" in env_id:  # "module:EnvId" imports the module that registers the env
        module, _, env_name = env_id.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"unknown environment id {env_id!r}: cannot import {module!r} ({e})") from None
        env_id = env_name
    try:
        gymnasium.spec(env_id)
    except gymnasium.error.Error as e:
        raise ConfigError(f"unknown environment id {env_id!r}: {e}") from None


#: Keywords ``gymnasium.make`` takes itself or hands to every env.
_MAKE_KWARGS = {"max_episode_steps", "disable_env_checker", "render_mode"}


def _check_gymnasium_kwargs(env_id: str, env_kwargs: Dict[str, Any]) -> None:
    """An ``env_kwargs`` key the env's constructor does not take fails here, in one line,
    not as a TypeError inside a worker process."""
    if not env_kwargs:
        return
    import inspect

    from gymnasium.envs.registration import load_env_creator

    spec = gymnasium.spec(env_id.partition(":")[2] if ":" in env_id else env_id)
    try:
        creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
        if creator is None:  # no entry point: nothing to introspect
            return
        params = inspect.signature(creator).parameters.values()
    except (ValueError, TypeError, ImportError, AttributeError):  # not introspectable: the env decides
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                     inspect.Parameter.KEYWORD_ONLY)} | _MAKE_KWARGS
    unknown = sorted(set(env_kwargs) - accepted)
    if unknown:
        raise ConfigError(f"env_kwargs key {unknown[0]!r}: {env_id} does not take it "
                          f"(it takes: {', '.join(sorted(accepted))})")


def make_vector_env(
    env_id: Union[str, EnvFactory],
    num_envs: int,
    seed: Optional[int] = None,
    *,
    asynchronous: bool = False,
    env_kwargs: Optional[Dict[str, Any]] = None,
) -> gymnasium.vector.VectorEnv:
    """A gymnasium vector env with same-step autoreset, not yet reset.

    Parameters
    ----------
    env_id: a registered gymnasium id, an env family's id (``"metadrive"``), or a zero-argument
        callable returning a ``gymnasium.Env`` (for custom environments).
    num_envs: number of sub-environments.
    seed: kept for the env families that seed at construction; gymnasium
        envs are seeded by the caller's ``reset(seed=seed)``.
    asynchronous: ``AsyncVectorEnv`` (subprocesses) instead of ``SyncVectorEnv``.
    env_kwargs: keyword arguments for the environment constructor.

    Raises :class:`ConfigError` for an unknown id.
    """
    env_kwargs = dict(env_kwargs or {})
    if isinstance(env_id, str):
        family = get_family(env_id)
        if family is not None:
            try:
                return family.make_vector_env(env_id, num_envs, seed, asynchronous, env_kwargs)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        _check_gymnasium_id(env_id)
        _check_gymnasium_kwargs(env_id, env_kwargs)
        fns: list = [_Thunk(env_id, env_kwargs, asynchronous) for _ in range(num_envs)]
    else:
        fns = [env_id for _ in range(num_envs)]
    if asynchronous:
        return AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)


def episode_metrics_fns(env_id: str) -> Optional[Tuple[Callable[..., Dict[str, Any]], Callable[..., Dict[str, Any]]]]:
    """The env family's ``(episode_metrics, summarize_episodes)`` for eval, or None."""
    family = get_family(env_id)
    if family is None or not family.has_episode_metrics:
        return None
    return family.episode_metrics, family.summarize_episodes
