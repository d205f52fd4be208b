"""Env families: the one place that says which environments are more than a gymnasium id.

A *family* is a kind of environment with its own construction, preset, checks,
evaluation and command-line options (MetaDrive is one). The generic layers
(``ppo_core.train``, ``ppo_core.cli``, ``ppo_core.compare``) never name a family;
they ask this registry:

* :func:`family_name` says which family serves an env id, without importing anything
  (an env id belongs to a family when it starts with the family's name).
* :data:`FAMILIES` holds what is known of a family *before* it is imported: the
  package it needs, the pip extra that brings it, and its command-line options. This
  is read when the ``ppo-core`` parser is built, on installs that have only the kernels.
* :func:`get_family` imports the family's module and returns its :class:`EnvFamily`,
  the behaviour: preset, config checks, vector env, episode metrics, evaluator.

Adding a family is a module of its own (a subclass of :class:`EnvFamily`) and one
entry in :data:`FAMILIES`; nothing in ``train/`` or ``cli/`` changes.

This module imports neither gymnasium nor torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type

__all__ = ["EnvFamily", "FamilyEntry", "Option", "FAMILIES", "DEFAULT_ENV", "family_name", "family_entry",
           "get_family", "register_family", "options_for"]

#: The env of ``ppo-core train`` without ``--env`` (and of :func:`ppo_core.train.preset`).
DEFAULT_ENV = "metadrive"


@dataclass(frozen=True)
class Option:
    """A command-line option of a family: ``--dest-with-dashes VALUE`` sets ``env_kwargs[dest]``.

    ``kind`` is ``"positive_int"``, ``"non_negative_int"`` or ``"unit_float"`` (a number
    in [0, 1]) for options that override ``env_kwargs``, or ``"path"`` / ``"positive_int"`` for
    evaluation-only options (``env_kwarg=False``). ``help`` maps a command (``"train"``,
    ``"eval"``, ...) to its help text; ``"*"`` is the text for any other command.
    ``commands`` lists the commands that offer it (empty: all that take family options).
    """

    dest: str
    kind: str
    metavar: str
    help: Mapping[str, str]
    commands: Tuple[str, ...] = ()
    env_kwarg: bool = True

    def help_for(self, command: str) -> str:
        return self.help.get(command, self.help.get("*", ""))

    def offered_by(self, command: str) -> bool:
        return not self.commands or command in self.commands


@dataclass(frozen=True)
class FamilyEntry:
    """What is known of a family without importing it."""

    name: str
    """Env ids starting with it (any case) belong to the family; also the default id."""
    module: str
    """Importable module with a ``FAMILY`` attribute (an :class:`EnvFamily`)."""
    title: str
    """The family's name in messages (``"MetaDrive"``)."""
    requires: Mapping[str, str] = field(default_factory=dict)
    """Import name -> pip distribution of what the family needs beyond the ``train`` extra."""
    extra: str = ""
    """The ``ppo_core`` extra that installs ``requires``."""
    options: Tuple[Option, ...] = ()


class EnvFamily:
    """The behaviour of a family; subclass it in the family's module and set ``FAMILY``.

    Every hook has a default that means "nothing special": a family overrides what it has.
    Errors in a config are raised as ``ValueError`` with a message naming the key; the
    trainer's config turns them into its ``ConfigError``.
    """

    #: The family's :class:`FamilyEntry` (set by :func:`get_family`).
    entry: FamilyEntry

    #: Its vector env always steps in worker processes (``async_envs`` is implied).
    steps_in_workers: bool = False
    #: Keys of :meth:`summarize_episodes` that are rates, each with a ``<rate>_ci`` interval.
    rate_keys: Tuple[str, ...] = ()
    #: Keys of one line of ``ppo-core eval --episodes-out``.
    episode_keys: Tuple[str, ...] = ()
    #: The summary has ``success_rate``: compare/gradvar show a success panel and use a
    #: success threshold instead of a return threshold.
    reports_success: bool = False
    #: The error an evaluation raises when its workers keep failing (CLI: one line).
    eval_error: Type[BaseException] = RuntimeError

    def preset(self, env_id: str) -> Dict[str, Any]:
        """The built-in ``PPOConfig`` fields for ``env_id``."""
        return {"env_id": env_id}

    def check_config(self, env_kwargs: Dict[str, Any], num_envs: int) -> None:
        """Raise ``ValueError`` for ``env_kwargs`` the family cannot run, before any worker starts."""

    def make_vector_env(self, env_id: str, num_envs: int, seed: Optional[int], asynchronous: bool,
                        env_kwargs: Dict[str, Any]) -> Any:
        """A same-step-autoreset gymnasium vector env, not yet reset."""
        raise NotImplementedError

    def episode_metrics(self, final_info: Any, ep_return: float, ep_len: int) -> Dict[str, Any]:
        """One finished episode's outcome (``success``, ...); ``{}`` when the family reports none."""
        return {}

    def summarize_episodes(self, episodes: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        """Rates over :meth:`episode_metrics` results; ``{}`` when the family reports none."""
        return {}

    @property
    def has_episode_metrics(self) -> bool:
        return type(self).summarize_episodes is not EnvFamily.summarize_episodes

    # -- evaluation ---------------------------------------------------------------

    def evaluator(self, env_kwargs: Dict[str, Any], start_seed: int, episodes: int, workers: int) -> Any:
        """A reusable held-out evaluator of a run with ``env_kwargs``, for ``episodes`` episodes from
        ``start_seed`` (the trainer keeps it between its periodic evaluations), or None: the
        generic gymnasium evaluation is used. It has ``evaluate(act, episodes=, start_seed=,
        keyed=True) -> summary`` and ``close()``; ``act(obs, episode_keys)`` gives batched actions."""
        return None

    def eval_setup(self, env_kwargs: Dict[str, Any], episodes: int, options: Dict[str, Any]) -> Any:
        """``ppo-core eval`` of a run with ``env_kwargs``: ``episodes`` episodes with the family's
        options that were given (``options``; the rest default). Returns an object with
        ``start_seed`` and ``describe() -> dict`` (merged into the result), passed back to
        :meth:`evaluate` and :meth:`write_gif`; None: the generic gymnasium evaluation.
        Raises ``ValueError`` for options the family cannot run."""
        return None

    def evaluate(self, act: Callable[..., Any], setup: Any, episodes: int,
                 workers: Optional[int]) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
        """Run the evaluation of ``setup``: ``(summary, one dict per episode)``."""
        raise NotImplementedError

    def write_gif(self, act: Callable[..., Any], setup: Any, path: str) -> Dict[str, Any]:
        """Write a GIF of the first scenario of ``setup``; returns its facts (``path``, ``frames``, ...)."""
        raise NotImplementedError


#: The registered families, by name. Adding one: an entry here and its module.
FAMILIES: Dict[str, FamilyEntry] = {}

_loaded: Dict[str, EnvFamily] = {}


def register_family(entry: FamilyEntry) -> None:
    """Register a family (replacing one of the same name)."""
    FAMILIES[entry.name] = entry
    _loaded.pop(entry.name, None)


def family_name(env_id: Any) -> Optional[str]:
    """The name of the family serving ``env_id``, or None (a gymnasium id, a callable). Imports nothing."""
    if not isinstance(env_id, str):
        return None
    lowered = env_id.lower()
    for name in FAMILIES:
        if lowered.startswith(name):
            return name
    return None


def family_entry(env_id: Any) -> Optional[FamilyEntry]:
    """The :class:`FamilyEntry` serving ``env_id``, or None. Imports nothing."""
    name = family_name(env_id)
    return None if name is None else FAMILIES[name]


def get_family(env_id: Any) -> Optional[EnvFamily]:
    """The :class:`EnvFamily` serving ``env_id`` (its module imported), or None."""
    name = family_name(env_id)
    if name is None:
        return None
    if name not in _loaded:
        entry = FAMILIES[name]
        family = importlib.import_module(entry.module).FAMILY
        family.entry = entry
        _loaded[name] = family
    return _loaded[name]


def options_for(command: str) -> List[Tuple[FamilyEntry, Option]]:
    """Every family's options that ``command`` offers, in registration order."""
    return [(e, o) for e in FAMILIES.values() for o in e.options if o.offered_by(command)]


_SCENARIOS_HELP = {"train": "number of training scenarios (default 100)",
                   "eval": "size of the evaluation range (default: N, each scenario once)",
                   "*": "number of training scenarios (default 100)"}
_START_HELP = {"train": "first training scenario (default 0)",
               "eval": "first evaluation scenario (default 10000, unseen in training)",
               "*": "first training scenario (default 0)"}

register_family(FamilyEntry(
    name="metadrive",
    module="ppo_core.envs.metadrive.family",
    title="MetaDrive",
    requires={"metadrive": "metadrive-simulator"},
    extra="metadrive",
    options=(
        Option("num_scenarios", "positive_int", "K", _SCENARIOS_HELP),
        Option("start_seed", "non_negative_int", "S", _START_HELP),
        Option("traffic_density", "unit_float", "D", {"*": "traffic density in [0, 1]"}),
        Option("horizon", "positive_int", "H", {"*": "episode step limit (a truncation)"}),
        Option("workers", "positive_int", "W", {"*": "evaluation worker processes (default: one per core)"},
               commands=("eval",), env_kwarg=False),
        Option("episodes_out", "path", "FILE",
               {"*": "write one JSON line per episode (scenario, success, crash, out_of_road, "
                     "route_completion, return, length)"},
               commands=("eval",), env_kwarg=False),
    ),
))
