"""The one precedence chain of a run's settings, used by ``ppo-core train``, ``compare``,
``lrsweep`` and ``gradvar``:

    the env's built-in defaults (its family's preset) < config file < algorithm preset < overrides

``env_kwargs`` given with the overrides are merged key by key into the config's.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

from .algos import apply_algo
from .config import PPOConfig, load_config, preset, read_config_file
from .errors import ConfigError

__all__ = ["resolve_config", "config_env_id"]

PathLike = Union[str, "os.PathLike[str]"]


def config_env_id(env: Optional[str], config_file: Optional[PathLike], default: Optional[str]) -> str:
    """The env a run is for: ``env``, else the config file's ``env_id``, else ``default``.

    Raises :class:`ConfigError` when there is none or it is not a string.
    """
    file_data = read_config_file(config_file) if config_file else {}
    env_id = env or file_data.get("env_id") or default
    if not env_id:
        raise ConfigError("no environment: pass --env (e.g. --env CartPole-v1) or set env_id in --config")
    if not isinstance(env_id, str):
        raise ConfigError(f"config key 'env_id': expected str, got {env_id!r}")
    return env_id


def resolve_config(env: Optional[str] = None, config_file: Optional[PathLike] = None, algo: Optional[str] = None,
                   overrides: Optional[Dict[str, Any]] = None, env_kwargs: Optional[Dict[str, Any]] = None, *,
                   default_env: Optional[str] = None) -> PPOConfig:
    """A validated config: ``env``'s preset < ``config_file`` < ``algo`` < ``overrides`` (+ ``env_kwargs``).

    ``env`` (or the file's ``env_id``, or ``default_env``) names the environment; given
    as ``env`` it wins over the file's. Raises :class:`ConfigError`.
    """
    env_id = config_env_id(env, config_file, default_env)
    defaults = preset(env_id)
    config = load_config(config_file, defaults=defaults) if config_file else defaults
    if algo is not None:
        config = apply_algo(config, algo)
    changes: Dict[str, Any] = {"env_id": env_id} if env is not None or config.env_id != env_id else {}
    changes.update(overrides or {})
    if env_kwargs:
        changes["env_kwargs"] = {**config.env_kwargs, **env_kwargs}
    return config.replace(**changes) if changes else config
