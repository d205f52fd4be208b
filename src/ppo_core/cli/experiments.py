"""``ppo-core compare``, ``lrsweep`` and ``gradvar``: the command-line side of
:mod:`ppo_core.compare` and :mod:`ppo_core.gradvar` (which know nothing of argparse).

Standard library only at import time; the experiments' modules are imported when a command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ppo_core.compare import (DEFAULT_SUCCESS_THRESHOLD, reports_success, LRSWEEP_COLUMNS, RUNS_COLUMNS, SUMMARY_COLUMNS, Curves,
                              Entry, base_config, default_threshold, format_table, per_run_rows, plot_compare,
                              plot_lrsweep, resolve_entries, run_entries, lrsweep_summary, shown_columns, summarize,
                              write_csv)
from ppo_core.gradvar import (DEFAULT_LAMS, GRADVAR_COLUMNS, load_snapshot, measure, plot_gradvar,
                              train_snapshot)

from ppo_core.envs.registry import family_entry

from .common import (CLIError, _add_config_flags, _add_family_options, _config_flag_values, _add_settings_options, _check_writable, _check_family_flags, _family_flags, _non_negative_int,
                     _positive_float, _positive_int, _Progress, _require_family, _unit_float)

__all__ = ["add_parsers"]


def _progress(args: argparse.Namespace) -> Any:
    """The progress display of each run, unless ``--quiet``."""
    if args.quiet:
        return None
    return lambda total_steps, start_step: _Progress(sys.stderr, total_steps, start_step)


def _prepare(args: argparse.Namespace) -> Tuple[Any, List[Entry], List[int], Path]:
    from ppo_core import train as T

    overrides: Dict[str, Any] = {**T.parse_set(args.set or []),
                                 **_config_flag_values(args, ("total_steps", "num_envs", "eval_every_steps"))}
    env_flags = {**T.parse_env_kwargs(args.env_kwargs or []), **_family_flags(args)}
    base = base_config(args.env, args.config, overrides, env_flags)
    _check_family_flags(_family_flags(args), base.env_id)
    _require_family(base.env_id, args.command)
    entries = resolve_entries(args.algos, base, overrides, env_flags)
    seeds = list(range(args.seed, args.seed + args.seeds))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory", code=1)
    out.mkdir(parents=True, exist_ok=True)
    return base, entries, seeds, out


def _thresholds(args: argparse.Namespace, env_id: str) -> Tuple[Optional[float], Optional[float]]:
    threshold = args.threshold if args.threshold is not None else default_threshold(env_id)
    entry = family_entry(env_id)
    if entry is None or not reports_success(env_id):
        return threshold, None
    success = args.success_threshold if args.success_threshold is not None else DEFAULT_SUCCESS_THRESHOLD
    return threshold, success


def compare_command(args: argparse.Namespace) -> int:
    """``ppo-core compare``."""
    base, entries, seeds, out = _prepare(args)
    threshold, success_threshold = _thresholds(args, base.env_id)
    print(f"compare {', '.join(e.label for e in entries)} on {base.env_id}: {base.num_updates * base.batch_size} "
          f"steps x seeds {seeds[0]}..{seeds[-1]} into {out}", file=sys.stderr)
    curves = run_entries(entries, seeds, out / "runs", progress=_progress(args))
    summary = [summarize(e, curves[e.label], threshold, success_threshold) for e in entries]
    runs = [r for e in entries for r in per_run_rows(curves[e.label], threshold, success_threshold)]
    write_csv(out / "summary.csv", SUMMARY_COLUMNS, summary)
    write_csv(out / "runs.csv", RUNS_COLUMNS, runs)
    plot_compare([curves[e.label] for e in entries], out / "compare.png",
                 title=f"{base.env_id}, {base.num_updates * base.batch_size} steps", threshold=threshold)
    shown = shown_columns(SUMMARY_COLUMNS, summary)
    print(format_table(shown, summary))
    print(f"wrote {out / 'compare.png'}, {out / 'summary.csv'}, {out / 'runs.csv'}")
    return 0


def lrsweep_command(args: argparse.Namespace) -> int:
    """``ppo-core lrsweep``."""
    base, entries, seeds, out = _prepare(args)
    threshold, _ = _thresholds(args, base.env_id)
    if not args.anneal_lr:
        entries = [Entry(e.label, e.config.replace(anneal_lr=False), e.source) for e in entries]
    lrs = sorted(set(args.learning_rates))
    print(f"lrsweep {', '.join(e.label for e in entries)} on {base.env_id} at learning rates "
          f"{', '.join(f'{lr:g}' for lr in lrs)} ({'annealed' if args.anneal_lr else 'constant'}): "
          f"{base.num_updates * base.batch_size} steps x seeds {seeds[0]}..{seeds[-1]} into {out}",
          file=sys.stderr)
    grid: Dict[float, Dict[str, Curves]] = {}
    summary: List[Dict[str, Any]] = []
    for lr in lrs:
        lr_entries = [Entry(e.label, e.config.replace(learning_rate=lr), e.source) for e in entries]
        grid[lr] = run_entries(lr_entries, seeds, out / "runs" / f"lr{lr:g}", progress=_progress(args))
        summary += [lrsweep_summary(e, grid[lr][e.label], lr, threshold) for e in lr_entries]
    write_csv(out / "summary.csv", LRSWEEP_COLUMNS, summary)
    plot_lrsweep(grid, out / "lrsweep.png",
                 title=f"{base.env_id}, {base.num_updates * base.batch_size} steps, "
                       f"{'annealed' if args.anneal_lr else 'constant'} learning rate", threshold=threshold)
    shown = shown_columns(LRSWEEP_COLUMNS, summary)
    print(format_table(shown, summary))
    print(f"wrote {out / 'lrsweep.png'}, {out / 'summary.csv'}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:

    p.add_argument("--env", metavar="ENV_ID", help="'metadrive' or a gymnasium id (required unless --config "
                                                   "sets env_id)")
    p.add_argument("--config", metavar="FILE",
                   help="shared base config (e.g. configs/cartpole.toml): environment, network, batch, "
                        "learning rate; each algorithm's keys go over it")
    _add_config_flags(p, ("total_steps", "num_envs", "eval_every_steps"),
                      notes={"total_steps": "The budget of every run.",
                             "num_envs": "Of every run.",
                             "eval_every_steps": "Default: the config's (MetaDrive 200000); on MetaDrive the "
                                                 "held-out success rate is the second panel."},
                      total_steps={"required": True})
    p.add_argument("--seeds", type=_positive_int, default=3, metavar="K", help="seeds per algorithm (default 3)")
    _add_config_flags(p, ("seed",), notes={"seed": "The first seed: runs use S..S+K-1 (default 1)."},
                      seed={"default": 1, "metavar": "S"})
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (runs are kept in DIR/runs)")
    p.add_argument("--threshold", type=float, metavar="R",
                   help="return that counts as solved, for steps-to-threshold (default: the env's "
                        "gymnasium reward_threshold, e.g. 475 for CartPole-v1; none for MetaDrive)")
    p.add_argument("--quiet", action="store_true", help="no per-update progress")
    _add_settings_options(p)
    _add_family_options(p, "compare")



def gradvar_command(args: argparse.Namespace) -> int:
    """``ppo-core gradvar``."""

    if args.batches < 2:
        raise CLIError(f"--batches must be >= 2 to estimate a variance, got {args.batches}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.run_dir:
        clashing = [f for f, v in (("--env", args.env), ("--config", args.config),
                                   ("--train-steps", args.train_steps)) if v is not None]
        if clashing:
            raise CLIError(f"a RUN_DIR is the snapshot; {', '.join(clashing)} cannot be combined with it")
        snapshot = load_snapshot(args.run_dir)
        source = str(args.run_dir)
    else:
        steps = 20_000 if args.train_steps is None else args.train_steps
        config = base_config(args.env, args.config, {"total_steps": steps, "seed": args.seed})
        print(f"training a snapshot of {config.env_id} for {config.num_updates * config.batch_size} steps "
              f"into {out / 'snapshot'}", file=sys.stderr, flush=True)
        snapshot = train_snapshot(config, out / "snapshot")
        source = str(out / "snapshot")
    # the flags checked as config keys (a bad value names its key), over the snapshot's
    cfg = dataclasses.replace(snapshot.config, **_config_flag_values(args, ("num_envs", "num_steps", "gamma", "seed")))
    num_envs, num_steps = cfg.num_envs, cfg.num_steps
    print(f"{args.batches} batches of {num_envs} x {num_steps} steps with the policy of {source} "
          f"(step {snapshot.step})", file=sys.stderr, flush=True)
    rows = measure(snapshot, batches=args.batches, num_envs=num_envs, num_steps=num_steps, lams=args.lams,
                   seed=args.seed + 10_000, gamma=args.gamma)
    write_csv(out / "gradvar.csv", GRADVAR_COLUMNS, rows)
    plot_gradvar(rows, out / "gradvar.png",
                 title=f"{cfg.env_id}: policy-gradient variance over {args.batches} batches of "
                       f"{num_envs * num_steps} steps (policy at step {snapshot.step}, γ={rows[0]['gamma']:g})")
    print(format_table(["estimator", "grad_variance", "variance_vs_reward_to_go", "mean_grad_sq_norm",
                        "pairwise_cosine", "mean_abs_advantage"], rows))
    print(f"wrote {out / 'gradvar.png'}, {out / 'gradvar.csv'}")
    return 0



def add_parsers(sub: Any) -> None:
    """Register ``compare``, ``lrsweep``, ``gradvar`` and ``plot`` on the CLI's subparsers."""
    _add_compare_parsers(sub)
    _add_gradvar_parser(sub)
    _add_plot_parser(sub)


def _add_plot_parser(sub: Any) -> None:
    p = sub.add_parser("plot", help="plot runs against steps: mean over seeds with a bootstrap 95%% band",
                       description="Draw metrics.csv columns of several runs against environment steps. Runs "
                                   "whose configs differ only in the seed form one group, drawn as the mean "
                                   "over its seeds with a percentile-bootstrap 95%% band (one seed: a line). "
                                   "Default panels: the training return and the held-out success rate (or "
                                   "held-out return where no run reports success).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="FILE.png", help="the PNG to write")
    p.add_argument("--metric", action="append", metavar="COLUMN",
                   help="a metrics.csv column to draw (repeatable; default: episode_return and held-out success)")
    p.add_argument("--title", help="the figure's title")
    p.set_defaults(run=plot_command)


def plot_command(args: argparse.Namespace) -> int:
    """``ppo-core plot``."""
    from ppo_core.runplot import plot_runs

    _check_writable(args.out, "--out")
    try:
        result = plot_runs(args.run_dirs, args.out, args.metric, title=args.title)
    except ValueError as e:
        raise CLIError(str(e), code=1) from None
    groups = ", ".join(f"{k} ({len(v)} run{'s' if len(v) > 1 else ''})" for k, v in result["groups"].items())
    print(f"wrote {args.out}: {', '.join(result['metrics'])} of {groups}")
    return 0


def _add_compare_parsers(sub: Any) -> None:
    """Register ``compare`` and ``lrsweep`` on the CLI's subparsers (``sub.add_parser``)."""

    c = sub.add_parser("compare", help="train several algorithms on the same budget and seeds; plot and summarize",
                       description="Train each ALGO_OR_CONFIG (reinforce, reinforce-baseline, a2c, ppo, or a "
                                   "config file) with the same step budget and seeds, one run after another; "
                                   "write DIR/compare.png, DIR/summary.csv, DIR/runs.csv. Settings: the env's "
                                   "defaults < --config < the algorithm < flags.")
    c.add_argument("algos", nargs="+", metavar="ALGO_OR_CONFIG")
    _common(c)
    c.add_argument("--success-threshold", type=_unit_float, metavar="P",
                   help="MetaDrive: held-out success rate that counts as learned (default 0.5)")
    c.set_defaults(run=compare_command)

    s = sub.add_parser("lrsweep", help="train algorithms at several learning rates (tutorial flaw 2); plot",
                       description="Train each ALGO_OR_CONFIG (default: reinforce ppo) at every learning rate "
                                   "with the same budget and seeds; write DIR/lrsweep.png and DIR/summary.csv. "
                                   "The learning rate is constant unless --anneal-lr.")
    s.add_argument("algos", nargs="*", default=["reinforce", "ppo"], metavar="ALGO_OR_CONFIG")
    _common(s)
    s.add_argument("--learning-rates", "--lrs", type=_positive_float, nargs="+",
                   default=[3e-4, 1e-3, 3e-3, 1e-2], metavar="LR",
                   help="learning rates (default 3e-4 1e-3 3e-3 1e-2)")
    _add_config_flags(s, ("anneal_lr",), notes={"anneal_lr": "lrsweep's default: false (a constant rate)."},
                      anneal_lr={"default": False})
    s.set_defaults(run=lrsweep_command, success_threshold=None)



def _add_gradvar_parser(sub: Any) -> None:
    """Register ``gradvar`` on the CLI's subparsers."""

    g = sub.add_parser("gradvar", help="variance of the policy-gradient estimate per advantage estimator "
                                       "(tutorial flaw 1)",
                       description="Estimate the variance of the policy gradient over independent batches "
                                   "of one policy snapshot, for reward-to-go, G - V and GAE(lambda); write "
                                   "DIR/gradvar.png and DIR/gradvar.csv. The snapshot is RUN_DIR's latest "
                                   "checkpoint, or a policy trained for --train-steps with --env/--config.")
    g.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="trained run to take the policy from")
    g.add_argument("--env", metavar="ENV_ID", help="environment of the snapshot to train")
    g.add_argument("--config", metavar="FILE", help="config of the snapshot to train (e.g. configs/cartpole.toml)")
    g.add_argument("--train-steps", type=_non_negative_int, metavar="N",
                   help="steps to train the snapshot for (default 20000)")
    g.add_argument("--batches", type=_positive_int, default=32, metavar="M",
                   help="independent batches (default 32)")
    _add_config_flags(g, ("num_envs", "num_steps"), notes={"num_envs": "Envs of each batch (default: the config's).",
                                                          "num_steps": "Of each batch (default: the config's)."})
    g.add_argument("--lams", type=_unit_float, nargs="+", default=list(DEFAULT_LAMS), metavar="LAMBDA",
                   help="GAE lambdas (default 0 0.9 0.95 1)")
    _add_config_flags(g, ("gamma", "seed"), notes={"gamma": "Default: the snapshot's.", "seed": "Default 1."},
                      seed={"default": 1})
    g.add_argument("--out", required=True, metavar="DIR", help="output directory")
    g.set_defaults(run=gradvar_command)

