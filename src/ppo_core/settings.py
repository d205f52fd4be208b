"""The fields of :class:`ppo_core.train.PPOConfig` as data, read without importing the trainer.

The command line builds its named flags (``--total-steps``, ``--num-envs``, ...) and
``--set`` parses its values from here, so every flag takes what the dataclass declares
and says what its docstring says, and ``ppo-core`` still imports nothing but the
standard library until a command runs (``ppo_core.train`` pulls in torch). The fields are
read from the source of ``ppo_core/train/config.py`` with :mod:`ast`, as
:func:`ppo_core.train.field_docs` reads the docstrings; ``tests/test_train.py`` checks
that this reading agrees with the dataclass itself, field by field.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ["ConfigField", "config_fields", "parse_value", "what_it_takes", "KINDS", "RESUMABLE"]

#: Keys a resumed run may change: they change how long it runs, how often it is evaluated
#: and checkpointed, and what it logs, not what it learns from a given batch.
RESUMABLE = ("total_steps", "eval_every_steps", "eval_episodes", "eval_workers", "checkpoint_every",
             "keep_checkpoints", "max_env_restarts", "logger", "stop_at_success")

#: What a field holds, by the name used in error messages.
KINDS = ("bool", "int", "float", "str", "list of int", "list of float", "table")

_ANNOTATION_KINDS = {"bool": "bool", "int": "int", "float": "float", "str": "str", "list": "list of int",
                     "List[int]": "list of int", "List[float]": "list of float", "dict": "table",
                     "Dict[str, Any]": "table"}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class ConfigField:
    """One :class:`PPOConfig` field: its name, kind (one of :data:`KINDS`), default
    (``None`` for a ``default_factory``) and docstring."""

    name: str
    kind: str
    default: Any
    doc: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def summary(self) -> str:
        """The docstring's first sentence, without reST markup, for a ``--help`` line."""
        text = " ".join(self.doc.split()).replace("``", "")
        end = re.search(r"(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z])", text)
        return text if end is None else text[:end.start() + 1]


@functools.lru_cache(maxsize=None)
def config_fields() -> Dict[str, ConfigField]:
    """Every :class:`PPOConfig` field, by name, in declaration order."""
    source = (Path(__file__).resolve().parent / "train" / "config.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PPOConfig")
    out: Dict[str, ConfigField] = {}
    for node, after in zip(cls.body, cls.body[1:] + [None]):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        annotation = ast.unparse(node.annotation)
        if annotation.startswith("ClassVar"):
            continue
        kind = _ANNOTATION_KINDS.get(annotation)
        if kind is None:
            raise TypeError(f"PPOConfig.{node.target.id}: no command-line kind for annotation {annotation!r}")
        default: Optional[Any]
        try:
            default = ast.literal_eval(node.value) if node.value is not None else None
        except ValueError:  # field(default_factory=...)
            default = None
        doc = ""
        if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            doc = inspect.cleandoc(after.value.value)
        out[node.target.id] = ConfigField(node.target.id, kind, default, doc)
    return out


def what_it_takes(kind: str) -> str:
    """What a value of ``kind`` looks like, for an error message."""
    return {"bool": "true or false", "int": "an integer", "float": "a number", "str": "text",
            "list of int": "a list of integers, e.g. 64,64 or [64, 64]",
            "list of float": "a list of numbers, e.g. 1,0.25 or [1, 0.25]", "table": "a JSON object"}[kind]


def parse_value(kind: str, text: str) -> Any:
    """``text`` read as a value of ``kind``; :class:`ValueError` when it is not one."""
    text = text.strip()
    if kind == "bool":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(text)
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
            raise ValueError(text)
        return value
    if kind == "list of float":
        value = json.loads(text) if text.startswith("[") else [float(x) for x in text.split(",") if x.strip()]
        if not isinstance(value, list):
            raise ValueError(text)
        return value
    if kind == "table":
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(text)
        return value
    if kind == "str":
        return text
    raise TypeError(f"unknown kind {kind!r}; expected one of {KINDS}")
