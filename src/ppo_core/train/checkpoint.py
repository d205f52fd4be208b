"""Atomic checkpoints and run-directory layout.

A run directory holds ``config.toml`` (or ``config.json``), ``metrics.csv``,
``learning_curve.png``, ``checkpoints/step_<step>.pt`` (and ``checkpoints/best.pt`` with
periodic evaluation) and, with ``logger = "csv,tensorboard"``, ``tb/``. Checkpoints are written to a temporary file in the same
directory, fsynced, then renamed over (``os.replace`` is atomic on POSIX), so
a SIGKILL at any moment leaves every ``step_*.pt`` complete: a half-written
file only ever exists under a ``.tmp`` name that loading ignores.
Checkpoints hold only tensors and plain Python data, so they load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from .config import PPOConfig, load_config
from .errors import RunDirError
from .runlock import LOCK_NAME

__all__ = ["save_checkpoint", "load_checkpoint", "load_latest_valid_checkpoint", "list_checkpoints",
           "latest_checkpoint", "remove_partial_checkpoints",
           "config_path", "load_run_config", "is_run_dir"]

logger = logging.getLogger("ppo_core.train")

_NAME = re.compile(r"^step_(\d+)\.pt$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def list_checkpoints(run_dir: Union[str, os.PathLike]) -> List[Path]:
    """Checkpoint files of a run, oldest first (regular files named ``step_<step>.pt`` only:
    a FIFO or a directory of that name is never opened)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir()
             if (m := _NAME.match(p.name)) and stat.S_ISREG(p.stat().st_mode)]
    return [p for _, p in sorted(found)]


_PARTIAL = re.compile(r"^\.(step_\d+|best)\.pt\.\d+\.tmp$")


def remove_partial_checkpoints(run_dir: Union[str, os.PathLike]) -> List[Path]:
    """Delete the ``.step_*.tmp`` files a killed writer left; only call while holding the run's lock."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    removed = [p for p in ckpt_dir.iterdir() if _PARTIAL.match(p.name) and p.is_file()]
    for p in removed:
        p.unlink(missing_ok=True)
        logger.info("removed the partial checkpoint %s (a writer stopped mid-write)", p)
    return removed


def latest_checkpoint(run_dir: Union[str, os.PathLike]) -> Optional[Path]:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


#: The checkpoint of the best periodic held-out evaluation so far (``checkpoints/best.pt``).
BEST_NAME = "best.pt"


def best_checkpoint(run_dir: Union[str, os.PathLike]) -> Optional[Path]:
    """``checkpoints/best.pt`` if the run keeps one (a regular file), else None."""
    path = Path(run_dir) / "checkpoints" / BEST_NAME
    return path if path.is_file() else None


def save_best(run_dir: Union[str, os.PathLike], state: Dict[str, Any]) -> Path:
    """Write ``state`` as ``checkpoints/best.pt`` atomically (replacing the previous best)."""
    import io

    ckpt_dir = Path(run_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    path = ckpt_dir / BEST_NAME
    atomic_write_bytes(path, buf.getvalue())
    return path


def resolve_checkpoint(run_dir: Union[str, os.PathLike], which: Union[str, os.PathLike, None]) -> Optional[Path]:
    """``None`` / ``"latest"``: None (the newest loadable one); ``"best"``: ``checkpoints/best.pt``;
    anything else: that path. Raises :class:`RunDirError` for a missing best or file."""
    if which is None or str(which) == "latest":
        return None
    if str(which) == "best":
        best = best_checkpoint(run_dir)
        if best is None:
            raise RunDirError(f"{run_dir} has no best checkpoint (checkpoints/best.pt is kept when periodic "
                              f"held-out evaluation is on: eval_every_steps > 0); use the latest instead")
        return best
    path = Path(which)
    if not path.is_file():
        raise RunDirError(f"checkpoint {path}: no such file")
    return path


def save_checkpoint(run_dir: Union[str, os.PathLike], state: Dict[str, Any], step: int, keep: int = 3) -> Path:
    """Write ``state`` as ``checkpoints/step_<step>.pt`` atomically; keep the newest ``keep``."""
    import io

    ckpt_dir = Path(run_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    path = ckpt_dir / f"step_{step:012d}.pt"
    atomic_write_bytes(path, buf.getvalue())
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain data only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


#: Keys every checkpoint written by the trainer holds.
_REQUIRED_KEYS = ("step", "update", "config", "observation_space", "action_space", "policy", "obs_normalizer")


def load_error_reason(error: BaseException) -> str:
    """One line saying why a checkpoint did not load (never advice to load it unsafely)."""
    text = str(error).strip()
    if "Weights only load failed" in text:
        return "it holds objects other than tensors and plain data, which are never unpickled"
    first = text.splitlines()[0] if text else type(error).__name__
    return first[:200]


def load_latest_valid_checkpoint(run_dir: Union[str, os.PathLike]) -> Tuple[Path, Dict[str, Any]]:
    """The newest checkpoint of ``run_dir`` that loads and holds a trainer's state.

    A checkpoint that does not load (damaged, truncated, empty, not a checkpoint) is
    skipped with a warning naming it, and the next older one is tried. Loading is
    always ``weights_only``: a checkpoint is data, never code. Raises
    :class:`RunDirError` (one line) when no checkpoint loads.
    """
    paths = list_checkpoints(run_dir)
    if not paths:
        raise RunDirError(f"{run_dir} has no checkpoint")
    for path in reversed(paths):
        try:
            state = load_checkpoint(path)
        except Exception as e:  # torch raises RuntimeError, pickle/zip/EOF errors, ...
            reason = load_error_reason(e)
            logger.warning("checkpoint %s does not load (%s); trying the one before it", path, reason)
            continue
        missing = [k for k in _REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            logger.warning("checkpoint %s is not a trainer checkpoint (missing %s); trying the one before it",
                           path, ", ".join(missing))
            continue
        return path, state
    raise RunDirError(f"{run_dir}: none of its {len(paths)} checkpoint(s) loads (newest: {paths[-1].name})")


def config_path(run_dir: Union[str, os.PathLike]) -> Optional[Path]:
    for name in ("config.toml", "config.json"):
        p = Path(run_dir) / name
        if p.is_file():
            return p
    return None


def is_run_dir(run_dir: Union[str, os.PathLike]) -> bool:
    return config_path(run_dir) is not None


def load_run_config(run_dir: Union[str, os.PathLike]) -> PPOConfig:
    """The saved config of a run; :class:`RunDirError` if ``run_dir`` is not a run."""
    if not Path(run_dir).is_dir():
        raise RunDirError(f"run directory not found: {run_dir}")
    path = config_path(run_dir)
    if path is None:
        raise RunDirError(f"{run_dir} is not a run directory (no config.toml or config.json in it)")
    return load_config(path)


def run_dir_error(run_dir: Path, e: OSError) -> str:
    """One line for an ``OSError`` on the run directory itself."""
    if isinstance(e, FileExistsError) or (run_dir.exists() and not run_dir.is_dir()):
        return f"run directory {run_dir} is a file, not a folder; choose another --out"
    if isinstance(e, NotADirectoryError):
        return f"run directory {run_dir} lies under a file, not a folder; choose another --out"
    return f"cannot write in run directory {run_dir}: {e.strerror or e}"


def check_new_run_dir(run_dir: Path) -> None:
    """A new run starts in an empty (or new) folder: never over a run, never over others' files."""
    entries = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
    if not entries:
        return
    if is_run_dir(run_dir) or list_checkpoints(run_dir):
        raise RunDirError(f"{run_dir} already holds a run; resume it with --resume {run_dir} "
                          f"or choose another --out")
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise RunDirError(f"{run_dir} is not empty and is not a run (it holds {shown}); "
                      f"choose an empty or new --out")
