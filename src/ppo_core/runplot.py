"""``ppo-core plot``: several runs against steps, grouped by config over seeds, each group's
mean with a bootstrap 95% band (the figure people make by hand from rl_zoo3 or W&B).

Runs whose ``config.toml`` is the same but for ``seed`` form one group. A group of one
seed is drawn as a line without a band; a metric that a run does not have is skipped
for that run, with a warning.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .compare import save_figure, seed_grid

__all__ = ["DEFAULT_METRICS", "group_runs", "bootstrap_band", "plot_runs"]

logger = logging.getLogger("ppo_core.plot")

#: The training return, and held-out success (or, where no run reports success, held-out return).
DEFAULT_METRICS = ("episode_return", "eval_success_rate")


def group_runs(run_dirs: Sequence[Union[str, os.PathLike]]) -> Dict[str, List[Path]]:
    """``{label: [run dirs]}``: runs whose configs differ only in ``seed``, in the order given.

    The label is the run directory's name with a trailing seed part (``-s3``, ``-seed3``,
    ``_seed3``) removed when the group's names agree on it, else the first run's name.
    """
    import re

    from .train.checkpoint import load_run_config

    groups: Dict[str, Tuple[str, List[Path]]] = {}
    for d in map(Path, run_dirs):
        cfg = load_run_config(d).to_dict()
        cfg.pop("seed")
        key = repr(sorted(cfg.items()))
        groups.setdefault(key, ("", []))[1].append(d)
    out: Dict[str, List[Path]] = {}
    for _, (_, dirs) in groups.items():
        names = {re.sub(r"[-_]?(s|seed)\d+$", "", p.name) for p in dirs}
        label = names.pop() if len(names) == 1 else dirs[0].name
        while label in out:
            label += "'"
        out[label] = dirs
    return out


def bootstrap_band(values: Any, *, resamples: int = 2000, seed: int = 0) -> Tuple[Any, Any, Any]:
    """``values`` (seeds, grid) -> (mean, low, high): the mean over seeds and a percentile
    bootstrap 95% interval of it (seeds resampled with replacement), per grid point over
    the seeds that have a value there; low = high = mean where only one seed has."""
    import numpy as np

    arr = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(arr, axis=0)
        low, high = mean.copy(), mean.copy()
        for j in range(arr.shape[1]):
            col = arr[:, j][np.isfinite(arr[:, j])]
            if col.size < 2:
                continue
            means = rng.choice(col, size=(resamples, col.size), replace=True).mean(axis=1)
            low[j], high[j] = np.percentile(means, [2.5, 97.5])
    return mean, low, high


def _column(run: Path, metric: str) -> Optional[Tuple[List[float], List[float]]]:
    from .train.runlog import read_metrics

    if not (run / "metrics.csv").is_file():
        return None
    rows = read_metrics(run / "metrics.csv")
    if not rows or metric not in rows[0]:
        return None
    steps, values = [], []
    for r in rows:
        v = r.get(metric, "")
        if v not in ("", None):
            steps.append(float(r.get("eval_step") or r["step"]) if metric.startswith("eval_") else float(r["step"]))
            values.append(float(v))
    if not values or not any(math.isfinite(v) for v in values):
        return None
    return steps, values


def plot_runs(run_dirs: Sequence[Union[str, os.PathLike]], out: Union[str, os.PathLike],
              metrics: Optional[Sequence[str]] = None, *, title: Optional[str] = None) -> Dict[str, Any]:
    """Draw ``metrics`` (default :data:`DEFAULT_METRICS`) of ``run_dirs`` into the PNG ``out``.

    Returns ``{"groups": {label: [run dirs]}, "metrics": [drawn], "skipped": [(run, metric)]}``.
    Raises ``ValueError`` when no run has any of the metrics.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = group_runs(run_dirs)
    wanted = list(metrics or DEFAULT_METRICS)
    if metrics is None:  # held-out success where some run reports it, else the held-out return
        has_success = any(_column(d, "eval_success_rate") for ds in groups.values() for d in ds)
        wanted = ["episode_return", "eval_success_rate" if has_success else "eval_mean_return"]
    curves: Dict[str, Dict[str, Tuple[List[Any], List[Any]]]] = {m: {} for m in wanted}
    skipped: List[Tuple[str, str]] = []
    for metric in wanted:
        for label, dirs in groups.items():
            steps, values = [], []
            for d in dirs:
                col = _column(d, metric)
                if col is None:
                    skipped.append((str(d), metric))
                    logger.warning("%s has no %s: skipped in that panel", d, metric)
                    continue
                steps.append(col[0])
                values.append(col[1])
            if steps:
                curves[metric][label] = (steps, values)
    drawn = [m for m in wanted if curves[m]]
    if not drawn:
        raise ValueError(f"none of the runs has {', '.join(wanted)} in its metrics.csv")
    fig = Figure(figsize=(5.5 * len(drawn), 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(drawn), squeeze=False)[0]
    for ax, metric in zip(axes, drawn):
        for i, (label, (steps, values)) in enumerate(curves[metric].items()):
            grid, arr = seed_grid(steps, values)
            mean, low, high = bootstrap_band(arr)
            n = len(steps)
            ax.plot(grid, mean, color=f"C{i}", lw=1.5, label=f"{label} ({n} seed{'s' if n > 1 else ''})")
            if n > 1:
                ax.fill_between(grid, low, high, color=f"C{i}", alpha=0.2, lw=0)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "mean over seeds, bootstrap 95% band")
    fig.tight_layout()
    save_figure(fig, Path(out))
    return {"groups": {k: [str(d) for d in v] for k, v in groups.items()}, "metrics": drawn, "skipped": skipped}
