"""Comparing algorithms on the same budget and seeds (behind ``ppo-core compare`` and ``lrsweep``).

``compare`` trains each algorithm (a preset name from :data:`ppo_core.train.ALGOS` or
a config file) for the same number of environment steps with the same seeds, one
run after another in this process, and writes:

* ``DIR/compare.png``: mean training return (the ``episode_return`` column of
  ``metrics.csv``: the mean of the last 20 finished episodes) against environment
  steps, a band of ± one standard deviation over seeds; on MetaDrive a second panel
  with the held-out success rate of the periodic evaluations;
* ``DIR/summary.csv``: one row per algorithm (see :data:`SUMMARY_COLUMNS`);
* ``DIR/runs.csv``: one row per run (algorithm × seed);
* ``DIR/runs/<label>/seed<S>/``: the run directories (``ppo-core eval`` works on them).

``lrsweep`` does the same for every learning rate of a list (tutorial flaw 2) and
draws one panel per rate plus final return against rate (``DIR/lrsweep.png``).

Settings of each run: the environment's defaults (as ``ppo-core train``) < the shared
``--config`` < the algorithm (its preset keys, or its config file) < the flags
(``--total-steps``, ``--num-envs``, the seed, MetaDrive options; ``lrsweep``: the
learning rate). Existing finished runs with the same config are reused, so an
interrupted comparison continues where it stopped.

This module imports only the standard library at import time (the CLI's parser
imports it); torch and matplotlib are imported when a run starts. The command line
lives in :mod:`ppo_core.cli.experiments`.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ppo_core.envs.registry import family_name, get_family

__all__ = ["Entry", "Curves", "resolve_entries", "base_config", "run_entries", "load_curves", "summarize",
           "plot_compare", "plot_lrsweep", "default_threshold", "SUMMARY_COLUMNS", "RUNS_COLUMNS",
           "LRSWEEP_COLUMNS", "per_run_rows", "write_csv", "format_table", "save_figure",
           "DEFAULT_SUCCESS_THRESHOLD", "ProgressFactory", "lrsweep_summary", "shown_columns"]

#: Columns of ``summary.csv`` (one row per algorithm). Over seeds: ``*_mean`` is the mean,
#: ``*_std`` the sample standard deviation (ddof = 1; 0 with one seed). ``final_return``
#: is the last update's ``episode_return`` (mean of the last 20 training episodes);
#: ``steps_to_threshold`` the mean, over the seeds that reached it, of the first step whose
#: ``episode_return`` >= ``threshold`` (``seeds_reached`` of ``seeds`` did). The ``success``
#: columns are the last held-out success rate and the first evaluation step with success
#: >= ``success_threshold`` (MetaDrive; empty elsewhere).
SUMMARY_COLUMNS = ["label", "source", "env_id", "seeds", "total_steps", "final_return_mean", "final_return_std",
                   "threshold", "seeds_reached", "steps_to_threshold", "final_success_mean", "final_success_std",
                   "success_threshold", "seeds_reached_success", "steps_to_success", "seconds_per_run"]

#: Columns of ``runs.csv`` (one row per run).
RUNS_COLUMNS = ["label", "seed", "run_dir", "steps", "final_return", "steps_to_threshold", "final_success",
                "steps_to_success", "seconds"]

#: Columns of the lrsweep's ``summary.csv``: as :data:`SUMMARY_COLUMNS` (without the success
#: columns) plus the rate, ``peak_return`` (the maximum of the seed-mean curve) and
#: ``second_half_std`` (the mean over seeds of the std of ``episode_return`` over the second
#: half of the updates: how much the curve oscillates once it has had time to learn).
LRSWEEP_COLUMNS = ["label", "learning_rate", "source", "env_id", "seeds", "total_steps", "final_return_mean",
                   "final_return_std", "peak_return", "second_half_std", "threshold", "seeds_reached",
                   "steps_to_threshold", "seconds_per_run"]

#: Held-out success rate at or above which a MetaDrive run counts as having learned.
DEFAULT_SUCCESS_THRESHOLD = 0.5

#: ``progress(total_steps, start_step) -> callback``: a trainer callback per run (e.g. a progress bar).
ProgressFactory = Callable[[int, int], Callable[..., None]]


@dataclass
class Entry:
    """One algorithm of a comparison: ``label`` (plot legend, run folder), its config
    (without seed), and ``source`` (the preset name or the config file it came from)."""

    label: str
    config: Any
    source: str


@dataclass
class Curves:
    """The per-seed curves of one entry, read from its runs' ``metrics.csv``.

    ``steps[i]``/``returns[i]``: seed i's update steps and ``episode_return``;
    ``eval_steps[i]``/``success[i]``: its held-out evaluations with a success rate.
    """

    label: str
    seeds: List[int] = field(default_factory=list)
    steps: List[Any] = field(default_factory=list)
    returns: List[Any] = field(default_factory=list)
    eval_steps: List[Any] = field(default_factory=list)
    success: List[Any] = field(default_factory=list)
    seconds: List[float] = field(default_factory=list)
    run_dirs: List[str] = field(default_factory=list)

    @property
    def has_success(self) -> bool:
        return any(len(s) for s in self.success)


# -- configs ----------------------------------------------------------------------


def default_threshold(env_id: str) -> Optional[float]:
    """The return that counts as solved: gymnasium's ``reward_threshold`` of ``env_id``
    (CartPole-v1: 475), None when the env has none (an env family such as MetaDrive, Pendulum)."""
    if family_name(env_id) is not None:
        return None
    import gymnasium

    try:
        return gymnasium.spec(env_id).reward_threshold
    except gymnasium.error.Error:
        return None


def reports_success(env_id: str) -> bool:
    """Its env family reports a success rate (MetaDrive): the comparison's second panel and threshold."""
    family = get_family(env_id)
    return family is not None and family.reports_success


def base_config(env: Optional[str], config_file: Optional[str], overrides: Dict[str, Any],
                env_kwargs: Optional[Dict[str, Any]] = None) -> Any:
    """The shared config of a comparison: the env's defaults < ``config_file`` < ``overrides``
    (``env_kwargs`` merged key by key into the config's).

    ``env`` (or the file's ``env_id``) is required: a comparison names its environment.
    Raises :class:`~ppo_core.train.ConfigError`.
    """
    from ppo_core import train as T

    return T.resolve_config(env, config_file, None, overrides, env_kwargs)


def _with_flags(config: Any, overrides: Dict[str, Any], env_kwargs: Optional[Dict[str, Any]]) -> Any:
    if env_kwargs:
        overrides = {**overrides, "env_kwargs": {**config.env_kwargs, **env_kwargs}}
    return config.replace(**overrides) if overrides else config


def resolve_entries(specs: Sequence[str], base: Any, overrides: Optional[Dict[str, Any]] = None,
                    env_kwargs: Optional[Dict[str, Any]] = None) -> List[Entry]:
    """Turn ``ALGO_OR_CONFIG`` arguments into entries on top of ``base``.

    A preset name applies :func:`ppo_core.train.apply_algo`; anything else is a TOML/JSON
    config file read over ``base`` (its ``env_kwargs`` merged key by key), which must not
    change the environment. ``overrides`` (the command's flags, e.g. ``total_steps``) and
    ``env_kwargs`` (merged key by key) then go over every entry, so a config file cannot
    change the budget. Labels are the name or the file's stem, made unique.
    Raises :class:`~ppo_core.train.ConfigError`.
    """
    from ppo_core import train as T

    if not specs:
        raise T.ConfigError("no algorithm given (choose from " + ", ".join(T.ALGOS) + ", or config files)")
    entries: List[Entry] = []
    for spec in specs:
        if spec in T.ALGOS:
            entries.append(Entry(spec, T.apply_algo(base, spec), spec))
            continue
        path = Path(spec)
        if not path.is_file():
            raise T.ConfigError(f"{spec!r} is neither an algorithm ({', '.join(T.ALGOS)}) nor a config file")
        config = T.load_config(path, defaults=base)
        if config.env_id != base.env_id:
            raise T.ConfigError(f"config file {spec}: env_id {config.env_id!r} differs from the comparison's "
                                f"environment {base.env_id!r}")
        entries.append(Entry(path.stem, config, str(path)))
    for e in entries:
        e.config = _with_flags(e.config, overrides or {}, env_kwargs)
    seen: Dict[str, int] = {}
    for e in entries:
        n = seen.get(e.label, 0)
        seen[e.label] = n + 1
        if n:
            e.label = f"{e.label}-{n + 1}"
    return entries


# -- running ----------------------------------------------------------------------


def _run_one(config: Any, run_dir: Path, progress: Optional[ProgressFactory]) -> float:
    """Train ``config`` into ``run_dir`` (or finish / reuse the run there); return its seconds."""
    from ppo_core import train as T
    from ppo_core.train import checkpoint as ckpt

    if ckpt.is_run_dir(run_dir):
        saved = ckpt.load_run_config(run_dir)
        if saved.to_dict() != config.to_dict():
            raise T.RunDirError(f"{run_dir} holds a run with another config; choose another --out "
                                f"or remove it")
        trainer = T.Trainer.resume(run_dir)
        if trainer.finished:
            trainer.close()
            return trainer.elapsed
    else:
        trainer = T.Trainer(config, run_dir)
    if progress is not None:
        trainer.callbacks.append(progress(config.num_updates * config.batch_size, trainer.global_step))
    trainer.train()
    return trainer.elapsed


def run_entries(entries: Sequence[Entry], seeds: Sequence[int], runs_dir: Path, *,
                progress: Optional[ProgressFactory] = None, log: Any = None) -> Dict[str, Curves]:
    """Train every entry with every seed, sequentially; return the curves by label.

    ``progress(total_steps, start_step)``, if given, makes a trainer callback per run
    (the CLI passes its progress display).

    Run directories are ``runs_dir/<label>/seed<S>``. Every run gets the same
    ``total_steps`` (its entry's config decides it; the CLI sets the same for all).
    """
    log = log or sys.stderr
    total = len(entries) * len(seeds)
    k = 0
    for e in entries:
        for s in seeds:
            k += 1
            run_dir = runs_dir / e.label / f"seed{s}"
            config = e.config.replace(seed=s)
            t0 = time.monotonic()
            print(f"[{k}/{total}] {e.label} seed {s} -> {run_dir}", file=log, flush=True)
            seconds = _run_one(config, run_dir, progress)
            curves = load_curves(e.label, [s], runs_dir / e.label)
            last = curves.returns[0][-1] if len(curves.returns[0]) else math.nan
            print(f"[{k}/{total}] {e.label} seed {s}: final return {last:.1f} "
                  f"({seconds:.0f} s of training, {time.monotonic() - t0:.0f} s now)", file=log, flush=True)
    return {e.label: load_curves(e.label, seeds, runs_dir / e.label) for e in entries}


def load_curves(label: str, seeds: Sequence[int], label_dir: Path) -> Curves:
    """Read ``label_dir/seed<S>/metrics.csv`` for each seed."""
    import numpy as np

    from ppo_core.train.runlog import read_metrics

    c = Curves(label)
    for s in seeds:
        run_dir = label_dir / f"seed{s}"
        rows = read_metrics(run_dir / "metrics.csv")

        def col(rs: Sequence[Dict[str, str]], key: str) -> Any:
            return np.array([float(r[key]) if r.get(key) not in (None, "") else math.nan for r in rs])

        c.seeds.append(s)
        c.run_dirs.append(str(run_dir))
        c.steps.append(col(rows, "step"))
        c.returns.append(col(rows, "episode_return"))
        evals = [r for r in rows if r.get("eval_step") and r.get("eval_success_rate") not in (None, "")]
        c.eval_steps.append(col(evals, "eval_step"))
        c.success.append(col(evals, "eval_success_rate"))
        c.seconds.append(float(rows[-1]["time"]) if rows else math.nan)
    return c


# -- statistics -------------------------------------------------------------------


def seed_grid(steps: Sequence[Any], values: Sequence[Any]) -> Tuple[Any, Any]:
    """Seed curves on the union of their steps -> ``(grid, array (seeds, grid))``: each seed
    linearly interpolated between its own first and last finite values, NaN outside them."""
    import numpy as np

    grid = np.unique(np.concatenate([np.asarray(s, float) for s in steps])) if steps else np.zeros(0)
    stack = []
    for s, v in zip(steps, values):
        s, v = np.asarray(s, float), np.asarray(v, float)
        ok = np.isfinite(v)
        row = np.full(grid.shape, np.nan)
        if ok.sum():
            inside = (grid >= s[ok][0]) & (grid <= s[ok][-1])
            row[inside] = np.interp(grid[inside], s[ok], v[ok])
        stack.append(row)
    return grid, (np.array(stack) if stack else np.zeros((0, 0)))


def _band(steps: Sequence[Any], values: Sequence[Any]) -> Tuple[Any, Any, Any]:
    """Seed curves on the union of their steps -> (grid, mean, std); NaN where no seed has a
    value. The std is the sample std over the seeds that have one (ddof = 1, as in
    summary.csv), 0 where only one seed has."""
    import warnings

    import numpy as np

    grid, arr = seed_grid(steps, values)
    with warnings.catch_warnings():  # all-NaN columns (before the first finished episode) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(arr, axis=0)
        count = np.isfinite(arr).sum(axis=0)
        std = np.where(count > 1, np.nanstd(arr, axis=0, ddof=1), np.where(count == 1, 0.0, np.nan))
        return grid, mean, std


def _first_at_least(steps: Any, values: Any, threshold: Optional[float]) -> float:
    import numpy as np

    if threshold is None:
        return math.nan
    hit = np.flatnonzero(np.asarray(values) >= threshold)
    return float(steps[hit[0]]) if hit.size else math.nan


def _last_finite(values: Any) -> float:
    import numpy as np

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return float(v[-1]) if v.size else math.nan


def _mean_std(xs: Sequence[float]) -> Tuple[float, float]:
    import numpy as np

    a = np.array([x for x in xs if math.isfinite(x)], float)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def per_run_rows(curves: Curves, threshold: Optional[float], success_threshold: Optional[float]) -> List[Dict]:
    """One :data:`RUNS_COLUMNS` row per seed of ``curves``."""
    rows = []
    for i, s in enumerate(curves.seeds):
        rows.append({
            "label": curves.label, "seed": s, "run_dir": curves.run_dirs[i],
            "steps": int(curves.steps[i][-1]) if len(curves.steps[i]) else 0,
            "final_return": _last_finite(curves.returns[i]),
            "steps_to_threshold": _first_at_least(curves.steps[i], curves.returns[i], threshold),
            "final_success": _last_finite(curves.success[i]),
            "steps_to_success": _first_at_least(curves.eval_steps[i], curves.success[i],
                                                success_threshold if curves.has_success else None),
            "seconds": curves.seconds[i],
        })
    return rows


def summarize(entry: Entry, curves: Curves, threshold: Optional[float],
              success_threshold: Optional[float]) -> Dict[str, Any]:
    """The :data:`SUMMARY_COLUMNS` row of one entry."""
    runs = per_run_rows(curves, threshold, success_threshold)
    final_mean, final_std = _mean_std([r["final_return"] for r in runs])
    reached = [r["steps_to_threshold"] for r in runs if math.isfinite(r["steps_to_threshold"])]
    row: Dict[str, Any] = {
        "label": entry.label, "source": entry.source, "env_id": entry.config.env_id, "seeds": len(runs),
        "total_steps": max((r["steps"] for r in runs), default=0),
        "final_return_mean": final_mean, "final_return_std": final_std,
        "threshold": threshold, "seeds_reached": len(reached) if threshold is not None else None,
        "steps_to_threshold": sum(reached) / len(reached) if reached else math.nan,
        "seconds_per_run": _mean_std([r["seconds"] for r in runs])[0],
    }
    if curves.has_success:
        s_mean, s_std = _mean_std([r["final_success"] for r in runs])
        hit = [r["steps_to_success"] for r in runs if math.isfinite(r["steps_to_success"])]
        row.update(final_success_mean=s_mean, final_success_std=s_std, success_threshold=success_threshold,
                   seeds_reached_success=len(hit), steps_to_success=sum(hit) / len(hit) if hit else math.nan)
    return row


def lrsweep_summary(entry: Entry, curves: Curves, learning_rate: float, threshold: Optional[float]) -> Dict[str, Any]:
    """:func:`summarize` of one entry at one learning rate, plus its ``learning_rate``,
    ``peak_return`` (of the mean curve over seeds) and ``second_half_std`` (the mean over
    seeds of the return's std in the second half of each run)."""
    import numpy as np

    row = summarize(entry, curves, threshold, None)
    _, mean, _ = _band(curves.steps, curves.returns)
    halves = [np.asarray(r, float)[len(r) // 2:] for r in curves.returns]
    half_stds = [float(h[np.isfinite(h)].std()) for h in halves if np.isfinite(h).sum() >= 2]
    row.update(learning_rate=learning_rate,
               peak_return=float(np.nanmax(mean)) if np.isfinite(mean).any() else math.nan,
               second_half_std=float(np.mean(half_stds)) if half_stds else math.nan)
    return row


def shown_columns(columns: Sequence[str], rows: Sequence[Dict[str, Any]]) -> List[str]:
    """The columns worth printing: those with a value in some row (and not ``source``, ``env_id``)."""
    return [c for c in columns if c not in ("source", "env_id") and any(_fmt(r.get(c)) for r in rows)]


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        if not math.isfinite(x):
            return ""
        return f"{x:.6g}"
    return str(x)


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Dict[str, Any]]) -> None:
    """Write ``rows`` (missing and NaN values empty) atomically."""
    from ppo_core.train.checkpoint import atomic_write_bytes

    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in columns})
    atomic_write_bytes(Path(path), buf.getvalue().encode())


def format_table(columns: Sequence[str], rows: Sequence[Dict[str, Any]]) -> str:
    """A plain-text table of ``rows`` for the terminal."""
    cells = [[c for c in columns]] + [[_fmt(r.get(c)) or "-" for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) if j else v.ljust(w) for j, (v, w) in enumerate(zip(row, widths)))
                     for row in cells)


# -- plots ------------------------------------------------------------------------


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as a PNG, atomically."""
    from ppo_core.train.checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    atomic_write_bytes(Path(path), buf.getvalue())


def _draw_band(ax: Any, steps: Sequence[Any], values: Sequence[Any], label: str, color: Any) -> None:
    grid, mean, std = _band(steps, values)
    ax.plot(grid, mean, color=color, label=label, lw=1.5)
    ax.fill_between(grid, mean - std, mean + std, color=color, alpha=0.2, lw=0)


def plot_compare(curves: Sequence[Curves], path: Path, *, title: str, threshold: Optional[float] = None) -> None:
    """``compare.png``: return (and held-out success, when any run has it) against steps, ± std bands."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    success = any(c.has_success for c in curves)
    fig = Figure(figsize=(11 if success else 7, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if success else 1, squeeze=False)[0]
    colors = [f"C{i}" for i in range(len(curves))]
    for c, color in zip(curves, colors):
        _draw_band(axes[0], c.steps, c.returns, c.label, color)
    if threshold is not None:
        axes[0].axhline(threshold, color="gray", ls=":", lw=1, label=f"threshold {threshold:g}")
    axes[0].set_ylabel("training episode return\n(mean of last 20 episodes)")
    if success:
        for c, color in zip(curves, colors):
            if c.has_success:
                _draw_band(axes[1], c.eval_steps, c.success, c.label, color)
        axes[1].set_ylabel("held-out success rate")
        axes[1].set_ylim(-0.02, 1.02)
    for ax in axes:
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small", loc="best")
    n = max((len(c.seeds) for c in curves), default=0)
    fig.suptitle(f"{title}: mean ± std over {n} seed{'s' * (n != 1)}", fontsize="medium")
    fig.tight_layout()
    save_figure(fig, path)


def plot_lrsweep(grid: Dict[float, Dict[str, Curves]], path: Path, *, title: str,
                 threshold: Optional[float] = None) -> None:
    """``lrsweep.png``: one panel per learning rate (curves of every algorithm, ± std
    bands), and a last panel with the final return against the rate."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lrs = sorted(grid)
    labels = list(next(iter(grid.values())).keys()) if grid else []
    colors = {lab: f"C{i}" for i, lab in enumerate(labels)}
    fig = Figure(figsize=(3.1 * (len(lrs) + 1), 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(lrs) + 1, squeeze=False)[0]
    ymin, ymax = 0.0, 0.0
    for ax, lr in zip(axes, lrs):
        for lab in labels:
            c = grid[lr][lab]
            _draw_band(ax, c.steps, c.returns, lab, colors[lab])
            values = np.concatenate([np.asarray(r, float) for r in c.returns] + [np.zeros(1)])
            ymin, ymax = min(ymin, float(np.nanmin(values))), max(ymax, float(np.nanmax(values)))
        if threshold is not None:
            ax.axhline(threshold, color="gray", ls=":", lw=1)
        ax.set_title(f"learning rate {lr:g}", fontsize="medium")
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
    for ax in axes[:len(lrs)]:  # one scale for all rates, so the panels compare at a glance
        pad = 0.05 * (ymax - ymin) or 1.0
        ax.set_ylim(ymin - (pad if ymin < 0 else 0.0), ymax + pad)
    axes[0].set_ylabel("training episode return")
    axes[0].legend(fontsize="small", loc="best")
    ax = axes[-1]
    for lab in labels:
        stats = [_mean_std([_last_finite(r) for r in grid[lr][lab].returns]) for lr in lrs]
        mean, std = [m for m, _ in stats], [sd for _, sd in stats]
        ax.errorbar(lrs, mean, yerr=std, color=colors[lab], marker="o", capsize=3, label=lab)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_title("final return", fontsize="medium")
    ax.grid(alpha=0.3)
    n = max((len(c.seeds) for d in grid.values() for c in d.values()), default=0)
    fig.suptitle(f"{title}: mean ± std over {n} seed{'s' * (n != 1)}", fontsize="medium")
    fig.tight_layout()
    save_figure(fig, path)


# -- commands ---------------------------------------------------------------------
