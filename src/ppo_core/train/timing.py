"""Where an update's wall time goes: one :class:`UpdateTimer` per update makes the
``*_seconds`` columns of metrics.csv and the trainer's time shares."""

from __future__ import annotations

import time
from typing import Dict, Mapping, Optional

__all__ = ["TIMING_KEYS", "UpdateTimer"]

#: The parts of an update, in the order of the ``<part>_seconds`` columns: ``env``
#: (simulation, as the rollout source measures it), ``inference`` (the rest of collecting:
#: the policy's forward passes and the source's bookkeeping), ``advantage`` (the estimator
#: kernel), ``update`` (the minibatch epochs), ``eval`` (held-out evaluation), ``other``
#: (logging, checkpoints; a checkpoint's time is charged to the next update).
TIMING_KEYS = ("env", "inference", "advantage", "update", "eval", "other")


class UpdateTimer:
    """Splits one update's wall time into :data:`TIMING_KEYS`.

    :meth:`mark` charges the time since the previous mark (or the start) to a part;
    :meth:`finish` charges what no mark claimed to ``other``, plus ``carried`` (time spent
    between updates, such as writing a checkpoint).
    """

    def __init__(self, carried: float = 0.0) -> None:
        self._start = self._last = time.perf_counter()
        self.carried = float(carried)
        self.seconds: Dict[str, float] = {}
        self.total = 0.0
        """Wall seconds from the start to :meth:`finish` (without ``carried``)."""

    def mark(self, part: str, *, inside: Optional[Mapping[str, float]] = None) -> None:
        """Charge the time since the last mark to ``part``; ``inside``: seconds of that span that
        another clock measured for other parts (the source's env time), charged to them instead."""
        now = time.perf_counter()
        span = now - self._last
        self._last = now
        for name, seconds in (inside or {}).items():
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            span -= seconds
        self.seconds[part] = self.seconds.get(part, 0.0) + span

    def finish(self) -> Dict[str, float]:
        """Seconds by part, every one of :data:`TIMING_KEYS` (``other`` takes the rest)."""
        self.total = time.perf_counter() - self._start
        parts = {k: self.seconds.get(k, 0.0) for k in TIMING_KEYS if k != "other"}
        parts["other"] = max(self.total - sum(parts.values()), 0.0) + self.carried
        return parts
