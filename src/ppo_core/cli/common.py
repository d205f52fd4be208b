"""What the ``ppo-core`` commands share: the one-line error, argparse types, the env
families' options, extra checks, the progress display and output-path checks.

Standard library (and the import-light env registry) only at import time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, NoReturn, Optional

from ppo_core.envs.registry import FAMILIES, family_entry
from ppo_core.settings import RESUMABLE, config_fields, parse_value, what_it_takes

_TRAIN_MODULES = {"torch": "torch", "gymnasium": "gymnasium", "matplotlib": "matplotlib", "tomli_w": "tomli-w",
                  "tqdm": "tqdm", "PIL": "pillow"}


class CLIError(Exception):
    """Bad input: printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        raise CLIError(f"{self.prog}: {message} (see --help)")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    if value >= 2**63:  # what torch's generators and a config.toml hold
        raise argparse.ArgumentTypeError(f"must be below 2**63, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1, got 0")
    return value


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


_KINDS: Dict[str, Callable[[str], Any]] = {
    "positive_int": _positive_int, "non_negative_int": _non_negative_int, "unit_float": _unit_float, "path": str,
}


def _add_family_options(p: argparse.ArgumentParser, command: str) -> None:
    """Each registered env family's options of ``command``, in a group of their own."""
    for entry in FAMILIES.values():
        options = [o for o in entry.options if o.offered_by(command)]
        if not options:
            continue
        g = p.add_argument_group(f"{entry.title} options (override the config's / run's env_kwargs)")
        for o in options:
            g.add_argument(_flag(o.dest), dest=o.dest, type=_KINDS[o.kind], metavar=o.metavar,
                           help=o.help_for(command))


def _family_flags(args: argparse.Namespace, *, env_kwargs: Optional[bool] = True) -> Dict[str, Any]:
    """The env-family options given on the command line: ``{dest: value}``.

    ``env_kwargs=True``: those that override ``env_kwargs``; ``False``: the others
    (evaluation-only); ``None``: all.
    """
    return {o.dest: getattr(args, o.dest) for entry in FAMILIES.values() for o in entry.options
            if (env_kwargs is None or o.env_kwarg == env_kwargs) and getattr(args, o.dest, None) is not None}


def _check_family_flags(flags: Dict[str, Any], env_id: str) -> None:
    """Refuse family options given for an env outside that family, in one line."""
    own = family_entry(env_id)
    for entry in FAMILIES.values():
        foreign = [d for d in flags if entry is not own and any(o.dest == d for o in entry.options)]
        if foreign:
            raise CLIError(f"{', '.join(map(_flag, foreign))} only applies to {entry.title} "
                           f"(--env {entry.name}), not {env_id!r}")


_METAVARS = {"bool": "BOOL", "int": "N", "float": "X", "str": "TEXT", "list of int": "N,N", "list of float": "X,X",
             "table": "JSON"}


def _config_value(key: str) -> Callable[[str], Any]:
    """The argparse type of config key ``key``: its kind from the dataclass, and a message
    that says what it takes."""
    kind = config_fields()[key].kind

    def convert(text: str) -> Any:
        try:
            return parse_value(kind, text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key} takes {what_it_takes(kind)}, got {text!r}") from None

    convert.__name__ = key  # argparse names the type in some messages
    return convert


def _add_config_flags(p: Any, keys: Any, *, notes: Optional[Dict[str, str]] = None,
                      **kwargs: Dict[str, Any]) -> None:
    """A named flag ``--key-name`` for each config key in ``keys``, generated from
    :class:`PPOConfig`'s field: the value's type and the help line (the field's docstring,
    plus ``notes[key]``) come from the dataclass. ``kwargs[key]`` passes argparse options
    (``required``, ``default``, ``metavar``) for a command whose flag means a little more.
    A bool flag alone means true (``--async-envs``), or takes a value (``--async-envs false``).
    ``args.<key>`` is ``None`` when the flag is not given (unless a default is passed)."""
    fields = config_fields()
    for key in keys:
        f = fields[key]
        options: Dict[str, Any] = {"type": _config_value(key), "metavar": _METAVARS[f.kind],
                                   "help": f.summary + (f" {notes[key]}" if notes and key in notes else "")}
        if f.kind == "bool":
            options.update(nargs="?", const=True, metavar="true|false")
        options.update(kwargs.get(key, {}))
        p.add_argument(f.flag, dest=key, **options)


def _config_flag_values(args: argparse.Namespace, keys: Any) -> Dict[str, Any]:
    """The named config flags given on the command line: ``{key: value}``."""
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _add_settings_options(p: argparse.ArgumentParser, *, resume: bool = False) -> None:
    """``--set KEY=VALUE`` for any config key and ``--env-kwargs`` for the environment."""
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set a config key, typed as the config declares it (repeatable; e.g. --set "
                        "learning_rate=1e-3 --set hidden_sizes=64,64; see `ppo-core config show`)"
                        + ("; with --resume only the keys that do not change learning: " + ", ".join(RESUMABLE)
                           if resume else ""))
    p.add_argument("--env-kwargs", action="append", metavar="KEY=VALUE",
                   help="an environment keyword (repeatable; the value is read as JSON when it is JSON), or "
                        "one JSON object; merged into the config's env_kwargs")


def _require_family(env_id: str, command: str) -> None:
    """The family of ``env_id`` needs packages beyond the 'train' extra: say which extra brings them."""
    entry = family_entry(env_id)
    if entry is not None and entry.requires:
        _require(dict(entry.requires), entry.extra, f"{command} --env {entry.name}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _setup_logging() -> None:
    # Warnings (worker restarts) and the MetaDrive asset decision reach the user; a host
    # application or pytest that configured logging keeps its own handlers.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _require(modules: Dict[str, str], extra: str, command: str) -> None:
    missing = [pip_name for mod, pip_name in modules.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise CLIError(
            f"`ppo-core {command}` needs the '{extra}' extra ({', '.join(missing)} not installed): "
            f'pip install "ppo_core[{extra}]"', code=1)



def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value



# -- progress ---------------------------------------------------------------------


class _Progress:
    """A tqdm progress bar on a terminal (steps, steps/s, ETA, recent return, the latest
    held-out result), plain log lines (at most every 5 s) otherwise."""

    def __init__(self, stream: Any, total_steps: int, start_step: int) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.total = max(total_steps, 1)
        self.step = start_step
        self.last_line = -math.inf
        self.held_out = ""
        self.bar: Any = None
        if self.tty:
            from tqdm import tqdm  # the 'train' extra

            self.bar = tqdm(total=self.total, initial=start_step, unit="step", unit_scale=True, file=stream,
                            dynamic_ncols=True, smoothing=0.1, leave=True)

    def __call__(self, trainer: Any, row: Dict[str, Any]) -> None:
        step, ret, sps = row["step"], row["episode_return"], row["steps_per_second"]
        ret_text = "n/a" if math.isnan(ret) else f"{ret:.2f}"
        done = trainer.finished or getattr(trainer, "stopped_early", False)
        if "eval_step" in row:
            self.held_out = _eval_text(row).lstrip(" |")
        if self.bar is not None:
            if "eval_step" in row:  # kept on screen, above the bar
                self.bar.write(f"[eval] step {row['eval_step']}: {self.held_out}", file=self.stream)
            self.bar.set_postfix_str(f"return {ret_text}" + (f" | {self.held_out}" if self.held_out else ""),
                                     refresh=False)
            self.bar.update(step - self.step)
            if done:
                self.bar.close()
        elif done or time.monotonic() - self.last_line >= 5.0:
            self.last_line = time.monotonic()
            self.stream.write(f"update {row['update']} step {step}/{self.total} return {ret_text} "
                              f"steps/s {sps:.0f} approx_kl {row['approx_kl']:.4f} "
                              f"explained_variance {row['explained_variance']:.3f}{_eval_text(row)}\n")
            self.stream.flush()
        self.step = step


def _eval_text(row: Dict[str, Any]) -> str:
    if "eval_step" not in row:
        return ""
    if "eval_success_rate" in row:
        return (f" | held-out success {row['eval_success_rate']:.2f} route completion "
                f"{row['eval_route_completion']:.2f} return {row['eval_mean_return']:.1f}")
    return f" | held-out return {row['eval_mean_return']:.2f}"



# -- output paths -------------------------------------------------------------------


def _check_writable(path: str, flag: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CLIError(f"{flag} {path}: is a directory", code=1)
    if not os.path.isdir(parent):
        raise CLIError(f"{flag} {path}: folder {parent} does not exist", code=1)
    if not os.access(parent, os.W_OK):
        raise CLIError(f"{flag} {path}: folder {parent} is not writable", code=1)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise CLIError(f"{flag} {path}: file is not writable", code=1)


def _check_creatable(path: str, flag: str) -> None:
    """``path`` can be written, creating missing parent folders: the nearest existing
    ancestor is a writable folder and nothing on the way is a file."""
    if os.path.isdir(path):
        raise CLIError(f"{flag} {path}: is a directory", code=1)
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise CLIError(f"{flag} {path}: {parent} is a file, not a folder", code=1)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {path}: folder {parent} is not writable", code=1)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise CLIError(f"{flag} {path}: file is not writable", code=1)


def _write_jsonl(path: str, records: List[Dict[str, Any]]) -> None:
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        raise CLIError(f"cannot write {path}: {e.strerror or e}", code=1) from None

