"""Run outputs: ``metrics.csv`` (one row per update), TensorBoard events, ``learning_curve.png``."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .checkpoint import atomic_write_bytes

__all__ = ["METRICS_COLUMNS", "TIMING_COLUMNS", "EVAL_COLUMNS", "WALL_CLOCK_COLUMNS", "MetricsLog",
           "plot_learning_curve", "read_metrics"]

#: Seconds of the update spent in each part (see ``ppo_core.train.trainer.TIMING_KEYS``).
TIMING_COLUMNS = ["env_seconds", "inference_seconds", "advantage_seconds", "update_seconds",
                  "eval_seconds", "other_seconds"]

#: Periodic held-out evaluation; empty in rows of updates without one. ``eval_step`` is the
#: step evaluated; the rates and route completion are MetaDrive's (empty for other envs).
EVAL_COLUMNS = ["eval_step", "eval_success_rate", "eval_crash_rate", "eval_out_of_road_rate",
                "eval_route_completion", "eval_mean_return", "eval_mean_length"]

#: Outcomes of the training episodes that ended in the update's rollout (MetaDrive; empty
#: for envs that report none, NaN when no episode ended).
TRAIN_OUTCOME_COLUMNS = ["train_success_rate", "train_crash_rate", "train_out_of_road_rate",
                         "train_route_completion"]

#: The held-out evaluation's episode count and the 95% Wilson interval of its success rate.
EVAL_INTERVAL_COLUMNS = ["eval_episodes", "eval_success_rate_low", "eval_success_rate_high"]

#: Columns of metrics.csv. The wall-clock ones (:data:`WALL_CLOCK_COLUMNS`) vary between
#: runs; every other column is reproducible for a fixed seed and config with SyncVectorEnv.
METRICS_COLUMNS = [
    "step", "time", "update", "episode_return", "episode_length", "episodes",
    "policy_loss", "value_loss", "entropy", "clip_fraction", "value_clip_fraction",
    "approx_kl", "explained_variance", "learning_rate", "epochs", "steps_per_second",
    *TIMING_COLUMNS, *EVAL_COLUMNS, "env_restarts", *TRAIN_OUTCOME_COLUMNS, "action_std",
    *EVAL_INTERVAL_COLUMNS, "kl_coef",
]

WALL_CLOCK_COLUMNS = {"time", "steps_per_second", *TIMING_COLUMNS}


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return repr(x) if math.isfinite(x) else ("" if math.isnan(x) else repr(x))
    return str(x)


def read_metrics(path: os.PathLike) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class MetricsLog:
    """Appends rows to metrics.csv (flushed per row) and, with ``tensorboard=True``, to ``tb/``.

    On resume, rows after the checkpoint's step (written by the interrupted run
    after its last checkpoint) are dropped, so each step appears once; in TensorBoard
    the events after that step are purged (hidden) the same way.
    """

    def __init__(self, run_dir: os.PathLike, resume_step: Optional[int] = None, *,
                 tensorboard: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.tensorboard = tensorboard
        self.resume_step = resume_step
        self.path = self.run_dir / "metrics.csv"
        self.rows: List[Dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            # A row cut short by a failed write (disk full) has missing fields: dropped.
            self.rows = [r for r in read_metrics(self.path)
                         if None not in r.values() and int(r["step"]) <= resume_step]
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
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if self.resume_step is None else self.resume_step + 1
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)

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
            file, self._file = self._file, None
            try:
                file.close()
            except OSError:  # the directory stopped taking writes: the rows flushed before stay
                pass
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _floats(rows: Sequence[Dict[str, str]], key: str) -> List[float]:
    return [float(r[key]) if r.get(key) not in (None, "") else math.nan for r in rows]


def _running_mean(xs: Sequence[float], window: int) -> List[float]:
    out: List[float] = []
    for i in range(len(xs)):
        recent = [x for x in xs[max(0, i + 1 - window):i + 1] if not math.isnan(x)]
        out.append(sum(recent) / len(recent) if recent else math.nan)
    return out


def _has(values: Sequence[float]) -> bool:
    return any(not math.isnan(x) for x in values)


def plot_learning_curve(rows: Sequence[Dict[str, str]], path: os.PathLike, title: str = "") -> None:
    """Draw the run's progress against steps into ``path`` (PNG, Agg, written atomically).

    Top: training episode return (and held-out return for envs without a success flag).
    Middle, for envs that report outcomes (MetaDrive): training success (running mean
    over 10 updates) and held-out success with its 95% Wilson interval, and held-out
    route completion. Bottom: losses.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = _floats(rows, "step")
    evals = [r for r in rows if r.get("eval_step")]
    eval_steps = _floats(evals, "eval_step")
    train_success = _floats(rows, "train_success_rate")
    eval_success = _floats(evals, "eval_success_rate")
    rates = _has(train_success) or _has(eval_success)
    fig = Figure(figsize=(8, 8.5 if rates else 6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3 if rates else 2, 1, sharex=True)
    ax1, ax2 = axes[0], axes[-1]
    ax1.plot(steps, _floats(rows, "episode_return"), color="tab:blue", label="training return (last 20 episodes)")
    ax1.set_ylabel("episode return")
    ax1.grid(alpha=0.3)
    if title:
        ax1.set_title(title)
    if evals and not _has(eval_success):  # envs without a success flag: held-out return
        ax1.plot(eval_steps, _floats(evals, "eval_mean_return"), "o-", color="tab:orange",
                 label="held-out return (deterministic)")
    ax1.legend(loc="lower right", fontsize="small")
    if rates:
        ax3 = axes[1]
        if _has(train_success):
            ax3.plot(steps, _running_mean(train_success, 10), color="tab:red", lw=1, alpha=0.8,
                     label="training success (sampled actions, last 10 updates)")
        if _has(eval_success):
            low, high = _floats(evals, "eval_success_rate_low"), _floats(evals, "eval_success_rate_high")
            if _has(low):
                n = evals[-1].get("eval_episodes") or "?"
                ax3.fill_between(eval_steps, low, high, color="tab:orange", alpha=0.2,
                                 label=f"95% interval ({n} episodes)")
            ax3.plot(eval_steps, eval_success, "o-", color="tab:orange", label="held-out success (deterministic)")
            ax3.plot(eval_steps, _floats(evals, "eval_route_completion"), "s--", color="tab:green",
                     alpha=0.7, label="held-out route completion")
        ax3.set_ylim(-0.02, 1.02)
        ax3.set_ylabel("success rate")
        ax3.grid(alpha=0.3)
        ax3.legend(loc="lower right", fontsize="small")
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
