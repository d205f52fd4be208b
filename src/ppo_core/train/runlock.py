"""One owner per run directory: an advisory lock that the kernel drops when its holder dies.

A trainer holds ``RUN_DIR/.lock`` (``fcntl.flock``, exclusive, non-blocking) from before
it writes anything into the run until it is closed. A second trainer on the same run,
or a resume of it, fails at once with :class:`~.errors.RunDirError` naming the process
that holds it. The kernel releases a ``flock`` when the file descriptor's last holder
exits, so a SIGKILLed trainer never leaves a stale lock. Spawned workers (MetaDrive's)
do not inherit the descriptor; forked ones (gymnasium's default ``AsyncVectorEnv`` on
Linux) do, so a hung orphan of a killed trainer keeps the lock until it exits.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional, Union

from .errors import RunDirError

__all__ = ["RunLock", "LOCK_NAME"]

LOCK_NAME = ".lock"


class RunLock:
    """The exclusive lock of one run directory; :meth:`acquire` then :meth:`release`."""

    def __init__(self, run_dir: Union[str, os.PathLike]) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunDirError` at once (never waits)."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise RunDirError(f"cannot write in run directory {self.path.parent}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(f"{self.path.parent} is in use by another trainer (process {holder}); "
                              f"wait for it to finish or stop it, then resume") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent). The file stays; only the lock on it matters."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
