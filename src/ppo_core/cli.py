"""The ``ppo-core`` command: ``train``, ``eval`` and ``verify``.

This module imports nothing beyond the standard library at import time:
torch, gymnasium and the simulators are imported inside the subcommands, so
``ppo-core verify`` works on a NumPy-only install and ``ppo-core train`` on a
missing extra names the extra to install. Bad input gives one ``ppo-core:
error: ...`` line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, NoReturn, Optional

__all__ = ["main"]

_TRAIN_MODULES = {"torch": "torch", "gymnasium": "gymnasium", "matplotlib": "matplotlib", "tomli_w": "tomli-w"}


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
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1, got 0")
    return value


def _require(modules: Dict[str, str], extra: str, command: str) -> None:
    missing = [pip_name for mod, pip_name in modules.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise CLIError(
            f"`ppo-core {command}` needs the '{extra}' extra ({', '.join(missing)} not installed): "
            f'pip install "ppo_core[{extra}]"', code=1)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ppo-core", description="PPO on the ppo_core kernels.")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,verify}", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train a policy (needs the 'train' extra)",
                       description="Train PPO on a gymnasium environment. Settings: defaults < --config < flags.")
    t.add_argument("--env", metavar="ENV_ID", help="gymnasium id (e.g. CartPole-v1) or 'metadrive'")
    t.add_argument("--config", metavar="FILE", help="TOML or JSON config file (see configs/)")
    t.add_argument("--total-steps", type=_non_negative_int, metavar="N",
                   help="environment steps, rounded up to whole rollouts (at least one update)")
    t.add_argument("--num-envs", type=_positive_int, metavar="K", help="parallel environments")
    t.add_argument("--seed", type=_non_negative_int, metavar="S", help="random seed")
    t.add_argument("--async-envs", action="store_true", help="step environments in subprocesses")
    t.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/ENV-seedS-TIME)")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run from its latest checkpoint (only --total-steps may be given with it)")
    t.add_argument("--quiet", action="store_true", help="no progress output")

    e = sub.add_parser("eval", help="evaluate a trained run (needs the 'train' extra)",
                       description="Run the latest checkpoint's policy and report the episode returns.")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--episodes", type=_positive_int, default=10, metavar="N", help="episodes (default 10)")
    e.add_argument("--seed", type=_non_negative_int, default=0, metavar="S", help="environment seed (default 0)")
    e.add_argument("--stochastic", action="store_true", help="sample actions instead of the mean / arg-max")
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    v = sub.add_parser("verify", help="check the installed kernels against the NumPy spec",
                       description="Run ppo_core.verify (Hypothesis) against the installed build.")
    v.add_argument("--examples", type=_positive_int, metavar="N", help="Hypothesis examples per property")
    v.add_argument("--seed", type=int, metavar="S", help="Hypothesis seed")
    return parser


# -- progress ---------------------------------------------------------------------


class _Progress:
    """A one-line progress bar on a terminal, plain log lines (at most every 5 s) otherwise."""

    def __init__(self, stream: Any, total_steps: int, start_step: int) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.total = max(total_steps, 1)
        self.start_step = start_step
        self.t0 = time.monotonic()
        self.last_line = -math.inf

    def __call__(self, trainer: Any, row: Dict[str, Any]) -> None:
        step, ret, sps = row["step"], row["episode_return"], row["steps_per_second"]
        ret_text = "   n/a" if math.isnan(ret) else f"{ret:8.2f}"
        done = trainer.finished
        if self.tty:
            frac = min(step / self.total, 1.0)
            width = 24
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            elapsed = time.monotonic() - self.t0
            rate = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
            eta = (self.total - step) / rate if rate > 0 and not done else 0.0
            self.stream.write(f"\r[{bar}] {step:>10,}/{self.total:,} steps  {sps:7.0f} steps/s  "
                              f"return {ret_text}  eta {int(eta) // 60}:{int(eta) % 60:02d} ")
            if done:
                self.stream.write("\n")
            self.stream.flush()
        elif done or time.monotonic() - self.last_line >= 5.0:
            self.last_line = time.monotonic()
            self.stream.write(f"update {row['update']} step {step}/{self.total} return {ret_text.strip()} "
                              f"steps/s {sps:.0f} approx_kl {row['approx_kl']:.4f} "
                              f"explained_variance {row['explained_variance']:.3f}\n")
            self.stream.flush()


# -- subcommands ------------------------------------------------------------------


def _default_out(env_id: str, seed: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in env_id)
    return os.path.join("runs", f"{safe}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}")


def _train(args: argparse.Namespace) -> int:
    _require(_TRAIN_MODULES, "train", "train")
    from ppo_core import train as T
    from ppo_core.train import checkpoint as ckpt

    if args.resume:
        clashing = [flag for flag, value in (("--env", args.env), ("--config", args.config),
                                             ("--num-envs", args.num_envs), ("--seed", args.seed),
                                             ("--out", args.out)) if value is not None]
        if clashing:
            raise CLIError(f"--resume uses the run's saved config; {', '.join(clashing)} cannot be combined with it")
        trainer = T.Trainer.resume(args.resume, total_steps=args.total_steps)
        if trainer.finished:
            trainer.close()
            print(f"{args.resume}: run already finished at step {trainer.global_step} "
                  f"(total_steps {trainer.config.total_steps}); nothing to do. "
                  f"Pass a larger --total-steps to extend it.")
            return 0
        run_dir = args.resume
    else:
        config = T.load_config(args.config) if args.config else T.PPOConfig()
        overrides: Dict[str, Any] = {}
        if args.env is not None:
            overrides["env_id"] = args.env
        if args.total_steps is not None:
            overrides["total_steps"] = args.total_steps
        if args.num_envs is not None:
            overrides["num_envs"] = args.num_envs
        if args.seed is not None:
            overrides["seed"] = args.seed
        if args.async_envs:
            overrides["async_envs"] = True
        config = config.replace(**overrides)
        if not config.env_id:
            raise CLIError("train: --env is required (e.g. --env CartPole-v1)")
        run_dir = args.out or _default_out(config.env_id, config.seed)
        if ckpt.is_run_dir(run_dir) or ckpt.list_checkpoints(run_dir):
            raise CLIError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                           f"or choose another --out", code=1)
        trainer = T.Trainer(config, run_dir)

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
    print(f"done: {row['step']} steps, recent return {row['episode_return']:.2f}; run directory {run_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    _require(_TRAIN_MODULES, "train", "eval")
    from ppo_core import train as T

    policy = T.load_policy(args.run_dir)
    result = T.evaluate(policy, episodes=args.episodes, seed=args.seed, deterministic=not args.stochastic)
    result["env_id"] = policy.config.env_id
    result["step"] = policy.step
    result["deterministic"] = not args.stochastic
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{policy.config.env_id} at step {policy.step}: mean return {result['mean_return']:.2f} "
              f"± {result['std_return']:.2f} over {result['episodes']} episodes "
              f"(mean length {result['mean_length']:.1f}, "
              f"{'deterministic' if not args.stochastic else 'stochastic'} policy)")
        skip = {"episodes", "mean_return", "std_return", "mean_length", "returns", "env_id", "step",
                "deterministic"}
        for key, value in result.items():
            if key not in skip:
                print(f"  {key}: {value}")
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


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``ppo-core`` and ``python -m ppo_core``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return {"train": _train, "eval": _eval, "verify": _verify}[args.command](args)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
