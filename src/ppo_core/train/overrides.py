"""Settings from the command line: ``--set KEY=VALUE`` for any :class:`PPOConfig` field and
``--env-kwargs KEY=VALUE`` (or one JSON object) for the environment, typed by the dataclass.

Also what a resume may change: :data:`RESUMABLE` (budget, evaluation cadence, logging)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Sequence, Tuple

from .config import PPOConfig
from .errors import ConfigError

__all__ = ["parse_set", "parse_env_kwargs", "RESUMABLE", "field_kind"]

#: Keys a resumed run may change: they change how long it runs, how often it is evaluated
#: and checkpointed, and what it logs, not what it learns from a given batch.
RESUMABLE = ("total_steps", "eval_every_steps", "eval_episodes", "eval_workers", "checkpoint_every",
             "keep_checkpoints", "max_env_restarts", "logger", "stop_at_success")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _fields() -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(PPOConfig)}


def field_kind(name: str) -> str:
    """What a field holds, in the words of an error message: ``bool``, ``int``, ``float``,
    ``str``, ``list of int``, ``table``."""
    f = _fields()[name]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, list):
        return "list of int"
    if isinstance(default, dict):
        return "table"
    return "str"


def _split(item: str, flag: str) -> Tuple[str, str]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
    return key, value.strip()


def _parse_value(key: str, kind: str, text: str, flag: str) -> Any:
    what = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "text",
            "list of int": "a list of integers, e.g. 64,64 or [64, 64]", "table": "a JSON object"}[kind]
    try:
        if kind == "bool":
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if kind == "int":
            try:
                return int(text.replace("_", ""))
            except ValueError:
                number = float(text)  # 1e6
                if not number.is_integer():
                    raise
                return int(number)
        if kind == "float":
            return float(text.replace("_", ""))
        if kind == "list of int":
            value = json.loads(text) if text.startswith("[") else [int(x) for x in text.split(",") if x.strip()]
            if not isinstance(value, list):
                raise ValueError
            return value
        if kind == "table":
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
        return text
    except ValueError:
        raise ConfigError(f"{flag} {key}={text}: {key} takes {what}") from None


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
