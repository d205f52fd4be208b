"""Settings from the command line: ``--set KEY=VALUE`` for any :class:`PPOConfig` field and
``--env-kwargs KEY=VALUE`` (or one JSON object) for the environment, typed by the dataclass.

Also what a resume may change: :data:`RESUMABLE` (budget, evaluation cadence, logging)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Sequence, Tuple

from ppo_core.settings import RESUMABLE, config_fields, parse_value, what_it_takes

from .config import PPOConfig
from .errors import ConfigError

__all__ = ["parse_set", "parse_env_kwargs", "RESUMABLE", "field_kind"]



def _fields() -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(PPOConfig)}


def field_kind(name: str) -> str:
    """What a field holds, in the words of an error message: ``bool``, ``int``, ``float``,
    ``str``, ``list of int``, ``table`` (:func:`ppo_core.settings.config_fields`, the same
    reading the named command-line flags use)."""
    return config_fields()[name].kind


def _split(item: str, flag: str) -> Tuple[str, str]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
    return key, value.strip()


def _parse_value(key: str, kind: str, text: str, flag: str) -> Any:
    try:
        return parse_value(kind, text)
    except ValueError:
        raise ConfigError(f"{flag} {key}={text}: {key} takes {what_it_takes(kind)}") from None


def parse_set(items: Sequence[str], flag: str = "--set") -> Dict[str, Any]:
    """``["lr=1e-3", ...]`` -> ``{"learning_rate": 0.001}``: typed by :class:`PPOConfig`'s fields.

    An unknown key or a value of the wrong type raises :class:`ConfigError` naming the key
    and what it accepts. The values are checked again when the config is built.
    """
    fields = _fields()
    out: Dict[str, Any] = {}
    for item in items:
        key, text = _split(item, flag)
        if key == "env_id":  # the env chooses the preset: it is named first, not overridden
            raise ConfigError(f"{flag} env_id: name the environment with --env (it chooses the env's preset)")
        if key not in fields:
            close = [n for n in fields if key.replace("-", "_") == n or key in n]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else " (see: ppo-core config show)"
            raise ConfigError(f"{flag} {key}: no such config key{hint}")
        out[key] = _parse_value(key, field_kind(key), text, flag)
    return out


def parse_env_kwargs(items: Sequence[str], flag: str = "--env-kwargs") -> Dict[str, Any]:
    """``["traffic_density=0.2", ...]`` or ``['{"traffic_density": 0.2}']`` -> a dict.

    A value is read as JSON when it is JSON (numbers, true/false, lists, objects, quoted
    text), as text otherwise. The env family (or the env's constructor) checks the keys.
    """
    out: Dict[str, Any] = {}
    for item in items:
        if item.lstrip().startswith("{"):
            try:
                value = json.loads(item)
            except ValueError as e:
                raise ConfigError(f"{flag} {item!r}: not a JSON object ({e})") from None
            if not isinstance(value, dict):
                raise ConfigError(f"{flag} {item!r}: not a JSON object")
            out.update(value)
            continue
        key, text = _split(item, flag)
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out
