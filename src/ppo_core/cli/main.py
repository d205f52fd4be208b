"""``ppo-core train``, ``eval``, ``verify`` and ``bench``, and the parser of every command.

Standard library only at import time: torch, gymnasium and the simulators are
imported inside the subcommands, so ``ppo-core verify`` works on a NumPy-only
install and ``ppo-core train`` on a missing extra names the extra to install.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

from . import experiments
from ppo_core.envs.registry import DEFAULT_ENV, family_entry

from .common import (_TRAIN_MODULES, CLIError, _add_config_flags, _add_family_options, _add_settings_options,
                     _config_flag_values, _check_creatable, _check_family_flags,
                     _check_writable, _family_flags, _flag, _non_negative_int, _Parser, _positive_int, _Progress,
                     _require, _require_family, _setup_logging, _write_jsonl)

__all__ = ["build_parser", "main"]

#: The config keys `ppo-core train` offers as named flags (generated from PPOConfig's
#: fields; every other key is reachable with --set). With --resume only the RESUMABLE ones.
_TRAIN_CONFIG_FLAGS = ("total_steps", "num_envs", "seed", "async_envs", "backend", "ray_address", "num_workers",
                       "envs_per_worker", "logger")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ppo-core", description="PPO on the ppo_core kernels.")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,export,config,verify,bench,compare,lrsweep,gradvar,plot}",
                                parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train a policy (needs the 'train' extra; MetaDrive: the 'metadrive' extra)",
                       description="Train PPO on MetaDrive (the default) or a gymnasium environment. "
                                   "Settings: built-in defaults of the env (MetaDrive: the preset that "
                                   "configs/metadrive.toml spells out) < --config < --algo < --set < "
                                   "the named flags.")
    t.add_argument("--env", metavar="ENV_ID",
                   help="'metadrive' (default) or a gymnasium id (e.g. CartPole-v1)")
    t.add_argument("--config", metavar="FILE", help="TOML or JSON config file (see configs/)")
    t.add_argument("--algo", metavar="NAME",
                   help="algorithm preset: reinforce, reinforce-baseline, a2c or ppo (configs/algos/); sets "
                        "only the algorithm's keys, over --config's and under the other flags")
    _add_config_flags(t, _TRAIN_CONFIG_FLAGS, notes={"async_envs": "(MetaDrive always does.)",
                                                     "logger": "May change on --resume."})
    t.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/ENV-seedS-TIME)")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run from its latest checkpoint (with it only --total-steps, --logger and "
                        "--set for the keys that do not change learning)")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    _add_settings_options(t, resume=True)
    _add_family_options(t, "train")

    c = sub.add_parser("config", help="show the config a run would use, each key with its description",
                       description="Resolve a config as `ppo-core train` does (the env's defaults < --config < "
                                   "--algo < --set) and print it as TOML, each key under its description: the "
                                   "output is itself a config file.")
    c.add_argument("action", choices=("show",))
    c.add_argument("--env", metavar="ENV_ID", help="'metadrive' (default) or a gymnasium id")
    c.add_argument("--config", metavar="FILE", help="TOML or JSON config file")
    c.add_argument("--algo", metavar="NAME", help="algorithm preset (reinforce, reinforce-baseline, a2c, ppo)")
    _add_settings_options(c)

    e = sub.add_parser("eval", help="evaluate a trained run (needs the 'train' extra)",
                       description="Run the latest checkpoint's policy and report the episode returns "
                                   "(MetaDrive: success, crash and out-of-road rates, route completion, "
                                   "on scenarios S, S+1, ... in parallel workers).")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--checkpoint", metavar="best|latest|PATH",
                   help="which checkpoint: the latest (default), best (checkpoints/best.pt, the best periodic "
                        "held-out evaluation), or a path (a checkpoints/step_*.pt of the run)")
    e.add_argument("--env", metavar="ENV_ID", help="environment (default: the run's)")
    e.add_argument("--episodes", type=_positive_int, default=10, metavar="N", help="episodes (default 10)")
    e.add_argument("--seed", type=_non_negative_int, default=0, metavar="S",
                   help="environment seed of gymnasium envs, and torch's seed for --stochastic (default 0)")
    e.add_argument("--stochastic", action="store_true", help="sample actions instead of the mean / arg-max")
    e.add_argument("--deterministic-action", choices=("mean", "expected"),
                   help="Box actions: the clipped mean, or the mean of the clipped Gaussian E[clip(a)] "
                        "(default: the run's deterministic_action)")
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    e.add_argument("--gif", metavar="PATH",
                   help="also write a GIF of one episode (MetaDrive: top-down view of scenario S; other envs: "
                        "any that render rgb_array, e.g. CartPole, Pendulum)")
    e.add_argument("--torch-threads", type=_positive_int, metavar="T",
                   help="torch's intra-op threads (default: the run's torch_threads, as in training)")
    _add_family_options(e, "eval")

    x = sub.add_parser("export", help="write a trained policy as TorchScript or ONNX (runs without ppo_core)",
                       description="Write the run's deterministic policy, with its observation normalization "
                                   "and action clipping built in, as one file: input a float32 batch of raw "
                                   "observations (N, obs_dim), outputs the env actions and the values. "
                                   "TorchScript needs only torch; ONNX needs the 'onnx' extra to export.")
    x.add_argument("run_dir", metavar="RUN_DIR")
    x.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript",
                   help="file format (default torchscript)")
    x.add_argument("--out", required=True, metavar="FILE", help="file to write (replaced atomically)")
    x.add_argument("--checkpoint", default="latest", metavar="best|latest|PATH",
                   help="which checkpoint: the latest (default), best (checkpoints/best.pt, kept by periodic "
                        "held-out evaluation), or a path")

    v = sub.add_parser("verify", help="check the installed kernels against the NumPy spec",
                       description="Run ppo_core.verify (Hypothesis) against the installed build.")
    v.add_argument("--examples", type=_positive_int, metavar="N", help="Hypothesis examples per property")
    v.add_argument("--seed", type=int, metavar="S", help="Hypothesis seed")

    b = sub.add_parser("bench", help="time the kernels against SB3, CleanRL and TorchRL's loops",
                       description="Time ppo_core's kernels against the loops users run today (Stable-Baselines3's "
                                   "NumPy loop, CleanRL's PyTorch loop and losses, TorchRL's GAE when installed, "
                                   "a copy bound), measured in one run: one table per kernel.")
    b.add_argument("--quick", action="store_true",
                   help="fewer and shorter samples, the losses in float32 only (under 2 minutes)")
    b.add_argument("--e2e", action="store_true",
                   help="also profile a short MetaDrive training run (needs the 'train' and 'metadrive' extras)")
    b.add_argument("--json", metavar="PATH", help="also write one JSON record per measurement to PATH")

    experiments.add_parsers(sub)
    return parser



def _default_out(env_id: str, seed: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in env_id)
    return os.path.join("runs", f"{safe}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}")


def _train(args: argparse.Namespace) -> int:
    _require(_TRAIN_MODULES, "train", "train")
    from ppo_core import train as T
    from ppo_core.train import checkpoint as ckpt

    _setup_logging()
    if args.resume:
        named = _config_flag_values(args, [k for k in _TRAIN_CONFIG_FLAGS if k not in T.RESUMABLE])
        clashing = [flag for flag, value in (("--env", args.env), ("--config", args.config),
                                             ("--env-kwargs", args.env_kwargs or None),
                                             ("--algo", args.algo),
                                             *((_flag(k), v) for k, v in named.items()),
                                             ("--out", args.out),
                                             *((_flag(k), v) for k, v in _family_flags(args).items()))
                   if value is not None]
        if clashing:
            raise CLIError(f"--resume uses the run's saved config; {', '.join(clashing)} cannot be combined with it")
        changes = {**T.parse_set(args.set or []),
                   **_config_flag_values(args, [k for k in _TRAIN_CONFIG_FLAGS if k in T.RESUMABLE])}
        trainer = T.Trainer.resume(args.resume, changes=changes)
        if trainer.finished:
            trainer.close()
            print(f"{args.resume}: run already finished at step {trainer.global_step} "
                  f"(total_steps {trainer.config.total_steps}); nothing to do. "
                  f"Pass a larger --total-steps to extend it.")
            return 0
        run_dir = args.resume
    else:
        # the named flags go over --set
        overrides: Dict[str, Any] = {**T.parse_set(args.set or []), **_config_flag_values(args, _TRAIN_CONFIG_FLAGS)}
        env_flags = _family_flags(args)
        _check_family_flags(env_flags, T.config_env_id(args.env, args.config, DEFAULT_ENV))
        env_flags = {**T.parse_env_kwargs(args.env_kwargs or []), **env_flags}
        config = T.resolve_config(args.env, args.config, args.algo, overrides, env_flags, default_env=DEFAULT_ENV)
        _require_family(config.env_id, "train")
        run_dir = args.out or _default_out(config.env_id, config.seed)
        trainer = T.Trainer(config, run_dir)  # refuses a folder that holds a run or other files

    if not args.quiet:
        trainer.callbacks.append(_Progress(sys.stderr, trainer.config.num_updates * trainer.config.batch_size,
                                           trainer.global_step))
        print(f"training {trainer.config.env_id} into {run_dir} "
              f"({trainer.config.num_updates - trainer.update} updates of {trainer.config.batch_size} steps)",
              file=sys.stderr)
    try:
        row = trainer.train()
    except KeyboardInterrupt:
        last = ckpt.latest_checkpoint(run_dir)
        print(f"\ninterrupted; resume with: ppo-core train --resume {run_dir}"
              + (f" (last checkpoint {last.name})" if last else ""), file=sys.stderr)
        return 130
    assert row is not None
    stopped = (f" (stopped early: held-out success reached stop_at_success {trainer.config.stop_at_success})"
               if trainer.stopped_early else "")
    print(f"done: {row['step']} steps{stopped}, recent return {row['episode_return']:.2f}; run directory {run_dir}")
    t = trainer.timing_summary()
    shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in t["shares"].items())
    print(f"time: {t['total_seconds']:.1f} s, {t['steps_per_second']:.0f} steps/s; shares: {shares}; "
          f"outside env stepping and eval: {100 * t['outside_env']:.1f}%"
          + (f"; {trainer.env_restarts} env restart(s) after worker failures" if trainer.env_restarts else ""))
    return 0


def _eval(args: argparse.Namespace) -> int:
    _require(_TRAIN_MODULES, "train", "eval")
    from ppo_core import train as T

    if args.checkpoint not in (None, "latest", "best") and not os.path.isfile(args.checkpoint):
        raise CLIError(f"--checkpoint {args.checkpoint}: no such file", code=1)
    policy = T.load_policy(args.run_dir, args.checkpoint)
    if args.deterministic_action is not None:
        policy.deterministic_action = args.deterministic_action
    # As in training: torch's own default pool (one thread per core) competes with the
    # simulator workers for the same cores and makes evaluation slower, not faster.
    import torch

    torch.set_num_threads(args.torch_threads or policy.config.torch_threads)
    torch.manual_seed(args.seed)  # the action samples of --stochastic
    env_id = args.env or policy.config.env_id
    if args.env is None and ":" in env_id:
        # "module:Env" makes gymnasium import the module: code named by a checkpoint, which is data.
        raise CLIError(f"{args.run_dir} names its env {env_id!r}, which imports the module "
                       f"{env_id.partition(':')[0]!r}; a checkpoint never chooses code to run: "
                       f"pass --env {env_id} to allow it", code=1)
    _check_family_flags(_family_flags(args, env_kwargs=None), env_id)
    if family_entry(env_id) is not None:
        return _eval_family(args, policy, env_id)
    return _eval_gymnasium(args, policy, env_id)


def _eval_gymnasium(args: argparse.Namespace, policy: Any, env_id: str) -> int:
    """``ppo-core eval`` on gymnasium episodes (:func:`ppo_core.train.evaluate`)."""
    from ppo_core import train as T

    if args.gif:
        _check_creatable(args.gif, "--gif")
    try:
        result = T.evaluate(policy, env_id, episodes=args.episodes, seed=args.seed,
                            deterministic=not args.stochastic,
                            env_kwargs=None if env_id == policy.config.env_id else {})
    except ValueError as e:  # e.g. a MetaDrive run evaluated on CartPole
        if env_id == policy.config.env_id or not str(e).startswith("act: expected"):
            raise
        raise CLIError(f"{args.run_dir} was trained on {policy.config.env_id!r}; its policy does not fit "
                       f"{env_id!r} ({e})", code=1) from None
    result["env_id"] = env_id
    result["step"] = policy.step
    result["deterministic"] = not args.stochastic
    if args.gif:
        try:
            result["gif"] = T.write_episode_gif(policy, env_id, args.gif, seed=args.seed,
                                                deterministic=not args.stochastic,
                                                env_kwargs=None if env_id == policy.config.env_id else {})
        except (ValueError, OSError) as e:
            raise CLIError(f"--gif {args.gif}: {getattr(e, 'strerror', None) or e}", code=1) from None
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{env_id} at step {policy.step}: mean return {result['mean_return']:.2f} "
              f"± {result['std_return']:.2f} over {result['episodes']} episodes "
              f"(mean length {result['mean_length']:.1f}, "
              f"{'deterministic' if not args.stochastic else 'stochastic'} policy)")
        skip = {"episodes", "mean_return", "std_return", "mean_length", "returns", "env_id", "step",
                "deterministic"}
        for key, value in result.items():
            if key not in skip:
                print(f"  {key}: {value}")
    return 0


def _eval_family(args: argparse.Namespace, policy: Any, env_id: str) -> int:
    """``ppo-core eval`` of an env family with an evaluator of its own (MetaDrive's workers)."""
    from ppo_core.envs.registry import get_family

    entry = family_entry(env_id)
    if entry is None:  # the caller sends only env ids of a registered family here
        raise RuntimeError(f"{env_id!r} belongs to no registered env family")
    _require_family(env_id, "eval")
    if family_entry(policy.config.env_id) is not entry:
        raise CLIError(f"{args.run_dir} was trained on {policy.config.env_id or 'a custom env'!r}, "
                       f"not {entry.title}; its policy cannot drive", code=1)
    family = get_family(env_id)
    if family is None:  # get_family serves every id that family_entry does
        raise RuntimeError(f"{env_id!r}: no env family loaded for it")
    _setup_logging()
    n = args.episodes
    try:
        setup = family.eval_setup(policy.config.env_kwargs, n, _family_flags(args, env_kwargs=None))
    except (TypeError, ValueError) as e:
        raise CLIError(f"{entry.title} options of {args.run_dir}: {e}", code=1) from None
    if setup is None:  # a family without an evaluator of its own
        return _eval_gymnasium(args, policy, env_id)
    deterministic = not args.stochastic
    # Row by row, and sampled per episode: the same episodes with any --workers.
    act = policy.episode_actor(deterministic=deterministic, seed=args.seed)

    # Output paths are checked before anything runs: a bad path never costs the simulation.
    if args.episodes_out:
        _check_writable(args.episodes_out, "--episodes-out")
    if args.gif:
        _check_creatable(args.gif, "--gif")
    t0 = time.monotonic()
    try:
        result, per_episode = family.evaluate(act, setup, n, args.workers)
    except family.eval_error as e:
        raise CLIError(str(e), code=1) from None
    if args.episodes_out:
        _write_jsonl(args.episodes_out, [{key: e[key] for key in family.episode_keys} for e in per_episode])
    result.update(env_id=env_id, step=policy.step, deterministic=deterministic,
                  deterministic_action=policy.deterministic_action if deterministic else None, **setup.describe(),
                  seconds=round(time.monotonic() - t0, 2))
    if args.gif:
        try:
            gif = family.write_gif(act, setup, args.gif)
        except (family.eval_error, OSError) as e:  # the evaluation above is kept: print it, then fail
            _print_family_result(args, result, family)
            raise CLIError(f"--gif {args.gif}: {getattr(e, 'strerror', None) or e}", code=1) from None
        result["gif"] = {"path": gif["path"], "scenario": gif["scenario"], "frames": gif["frames"],
                         "success": gif["success"], "length": gif["length"]}
    _print_family_result(args, result, family)
    return 0


def _print_family_result(args: argparse.Namespace, result: Dict[str, Any], family: Any) -> None:
    if args.json:
        print(json.dumps(result))
        return
    start, k = result["start_seed"], result["num_scenarios"]
    print(f"{result['env_id']} at step {result['step']}: {result['episodes']} episodes on scenarios "
          f"{start}..{start + k - 1} ({'deterministic' if result['deterministic'] else 'stochastic'} policy, "
          f"{result['seconds']:.0f} s)")
    for rate in family.rate_keys:
        low, high = result[f"{rate}_ci"]
        print(f"  {rate.replace('_rate', '').replace('_', ' '):12} {result[rate]:.3f}  "
              f"(95% interval {low:.3f}-{high:.3f})")
    if "route_completion" in result:
        print(f"  route completion {result['route_completion']:.3f}")
    print(f"  return {result['mean_return']:.2f} ± {result['std_return']:.2f}  "
          f"mean length {result['mean_length']:.1f}")
    if "gif" in result:
        print(f"  GIF of scenario {start}: {args.gif}")


def _config(args: argparse.Namespace) -> int:
    _require(_TRAIN_MODULES, "train", "config show")
    from ppo_core import train as T

    config = T.resolve_config(args.env, args.config, args.algo, T.parse_set(args.set or []),
                              T.parse_env_kwargs(args.env_kwargs or []), default_env=DEFAULT_ENV)
    sys.stdout.write(T.config_to_toml(config, with_docs=True))
    return 0


def _export(args: argparse.Namespace) -> int:
    _require(_TRAIN_MODULES, "train", "export")
    from ppo_core import train as T
    from ppo_core.train.export import export_policy

    if args.checkpoint not in ("latest", "best") and not os.path.isfile(args.checkpoint):
        raise CLIError(f"--checkpoint {args.checkpoint}: no such file", code=1)
    _check_writable(args.out, "--out")
    policy = T.load_policy(args.run_dir, args.checkpoint)
    facts = export_policy(policy, args.out, args.format)
    print(f"wrote {facts['path']} ({facts['format']}, {facts['bytes']} bytes): the deterministic policy of "
          f"{args.run_dir} at step {facts['step']}; input float32 (N, {', '.join(map(str, facts['obs_shape']))}), "
          f"outputs actions and values")
    return 0


def _verify(args: argparse.Namespace) -> int:
    _require({"hypothesis": "hypothesis"}, "verify", "verify")
    from ppo_core import verify

    argv: List[str] = []
    if args.examples is not None:
        argv += ["--examples", str(args.examples)]
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    return int(verify.main(argv) or 0)


def _bench(args: argparse.Namespace) -> int:
    from ppo_core import bench  # NumPy only at import; torch-based baselines are skipped without torch

    if args.e2e:
        _require(_TRAIN_MODULES, "train", "bench --e2e")
        _require_family(DEFAULT_ENV, "bench --e2e")
        _setup_logging()
    bench.run(quick=args.quick, e2e=args.e2e, json_path=args.json)
    return 0


def _tutorial(args: argparse.Namespace) -> int:
    # compare, lrsweep, gradvar: their parsers set ``run`` (ppo_core.compare, ppo_core.gradvar).
    _require(_TRAIN_MODULES, "train", args.command)
    _setup_logging()
    return int(args.run(args))


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``ppo-core`` and ``python -m ppo_core``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return {"train": _train, "eval": _eval, "config": _config, "export": _export, "verify": _verify, "compare": _tutorial, "lrsweep": _tutorial,
                "gradvar": _tutorial, "plot": _tutorial, "bench": _bench}[args.command](args)
    except CLIError as e:
        print(f"ppo-core: error: {e}", file=sys.stderr)
        return e.code
    except Exception as e:  # only the trainer's input errors become one line; bugs keep their traceback
        if type(e).__module__.startswith("ppo_core.train") and _is_input_error(e):
            print(f"ppo-core: error: {e}", file=sys.stderr)
            return 1
        raise


def _is_input_error(e: BaseException) -> bool:
    from ppo_core.train.errors import TrainError  # only reached after the trainer was imported

    return isinstance(e, TrainError)

