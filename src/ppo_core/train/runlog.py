"""Run outputs: ``metrics.csv`` (one row per update), TensorBoard events, ``learning_curve.png``."""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .checkpoint import atomic_write_bytes

__all__ = ["METRICS_COLUMNS", "MetricsLog", "plot_learning_curve", "read_metrics"]

#: Columns of metrics.csv. ``time`` and ``steps_per_second`` are wall-clock
#: figures; every other column is reproducible for a fixed seed and config with SyncVectorEnv.
METRICS_COLUMNS = [
    "step", "time", "update", "episode_return", "episode_length", "episodes",
    "policy_loss", "value_loss", "entropy", "clip_fraction", "value_clip_fraction",
    "approx_kl", "explained_variance", "learning_rate", "epochs", "steps_per_second",
]


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return repr(x) if math.isfinite(x) else ("" if math.isnan(x) else repr(x))
    return str(x)


def read_metrics(path: os.PathLike) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class MetricsLog:
    """Appends rows to metrics.csv (flushed per row) and, if tensorboard is installed, to ``tb/``.

    On resume, rows after the checkpoint's step (written by the interrupted run
    after its last checkpoint) are dropped, so each step appears once.
    """

    def __init__(self, run_dir: os.PathLike, resume_step: Optional[int] = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.csv"
        self.rows: List[Dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            self.rows = [r for r in read_metrics(self.path) if int(r["step"]) <= resume_step]
            buf = io.StringIO()
            w = csv.DictWriter(buf, METRICS_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)
            atomic_write_bytes(self.path, buf.getvalue().encode())
        elif not self.path.is_file() or resume_step is None:
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, METRICS_COLUMNS).writeheader()
        # Files open on the first row, so a trainer that never trains holds none.
        self._file: Any = None
        self._writer: Any = None
        self._tb: Any = None

    def _open(self) -> None:
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, METRICS_COLUMNS, extrasaction="ignore")
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def log(self, row: Dict[str, Any]) -> None:
        if self._file is None:
            self._open()
        text = {k: _fmt(row.get(k, "")) for k in METRICS_COLUMNS}
        self._writer.writerow(text)
        self._file.flush()
        self.rows.append(text)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"ppo/{k}", v, int(row["step"]))
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _floats(rows: Sequence[Dict[str, str]], key: str) -> List[float]:
    return [float(r[key]) if r.get(key) not in (None, "") else math.nan for r in rows]


def plot_learning_curve(rows: Sequence[Dict[str, str]], path: os.PathLike, title: str = "") -> None:
    """Draw episode return and losses against steps into ``path`` (PNG, Agg, written atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = _floats(rows, "step")
    fig = Figure(figsize=(8, 6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.plot(steps, _floats(rows, "episode_return"), color="tab:blue")
    ax1.set_ylabel("episode return\n(mean of last 20)")
    ax1.grid(alpha=0.3)
    if title:
        ax1.set_title(title)
    ax2.plot(steps, _floats(rows, "policy_loss"), label="policy loss")
    ax2.plot(steps, _floats(rows, "value_loss"), label="value loss")
    ax2.set_xlabel("environment steps")
    ax2.set_yscale("symlog", linthresh=1e-2)
    ax2.legend(loc="upper right")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    atomic_write_bytes(Path(path), buf.getvalue())
