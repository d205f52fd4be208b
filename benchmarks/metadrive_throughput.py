"""Whole-process training throughput on MetaDrive: ppo_core's collectors against SB3's PPO.

Each variant is one ``ppo-core train`` (or SB3) process for the same number of
environment steps, run in turn in every repeat so that the machine's load drifts
alike over all of them; the table gives each variant's median wall time, its speed
relative to Stable-Baselines3, the CPU it used, and for ppo_core runs the learner's
share of the training loop's wall time (inference, advantages, update: everything
but waiting for simulators, from metrics.csv). No periodic evaluation.

Usage (ppo_core's ``train`` and ``metadrive`` extras; SB3 in the Python given by --sb3-python)::

    python benchmarks/metadrive_throughput.py --steps 40960 --repeats 2 --sb3-python PYTHON
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent

VARIANTS: Dict[str, List[str]] = {
    # name -> `ppo-core train` settings (over the MetaDrive preset) as TOML lines
    "preset (2 envs)": [],
    "8 envs": ["num_envs = 8", "num_steps = 512"],
    "8 envs, 2 groups": ["num_envs = 8", "num_steps = 512", "env_groups = 2"],
    "8 envs, 2 groups, 8 shards": ["num_envs = 8", "num_steps = 512", "env_groups = 2",
                                   "[env_kwargs]", "scenario_shards = 8"],
    "8 envs, 4 groups": ["num_envs = 8", "num_steps = 512", "env_groups = 4"],
    "8 envs, 8 groups": ["num_envs = 8", "num_steps = 512", "env_groups = 8"],
    "4 envs, 4 groups": ["num_envs = 4", "num_steps = 1024", "env_groups = 4"],
    "8 envs, 4 groups, forkserver": ["num_envs = 8", "num_steps = 512", "env_groups = 4"],
}
# variants run with extra environment variables: the workers' start method (default:
# spawn, every worker imports MetaDrive; a forkserver imports it once and forks them)
VARIANT_ENV: Dict[str, Dict[str, str]] = {
    "8 envs, 4 groups, forkserver": {"PPO_CORE_WORKER_START_METHOD": "forkserver"},
}


def _run(cmd: List[str], log: Path, env: Optional[Dict[str, str]] = None) -> Tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True,
                       env=None if env is None else {**os.environ, **env})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _learner_share(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    parts = ("env", "inference", "advantage", "update", "other")
    total = {p: sum(float(r[f"{p}_seconds"]) for r in rows) for p in parts}
    loop = sum(total.values())
    return (loop - total["env"]) / loop if loop else float("nan")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40960)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sb3-python", help="a Python with stable-baselines3 and ppo_core[metadrive]; omit to skip SB3")
    parser.add_argument("--only", nargs="*", help="run only these variants (names of the table)")
    parser.add_argument("--sb3-forkserver", action="store_true",
                        help="also run SB3 with its workers started from a forkserver with MetaDrive preloaded")
    args = parser.parse_args(argv)
    if args.sb3_forkserver and not args.sb3_python:
        parser.error("--sb3-forkserver needs --sb3-python")
    unknown = sorted(set(args.only or ()) - set(VARIANTS))
    if unknown:
        parser.error(f"--only: unknown variant {unknown[0]!r} (known: {', '.join(VARIANTS)})")

    walls: Dict[str, List[float]] = {}
    cpus: Dict[str, List[float]] = {}
    shares: Dict[str, List[float]] = {}
    with tempfile.TemporaryDirectory(prefix="ppo-core-throughput-") as tmp:
        tmpdir = Path(tmp)
        names = [n for n in VARIANTS if not args.only or n in args.only]
        for rep in range(args.repeats):
            for i, name in enumerate(names):
                cfg = tmpdir / f"v{i}.toml"
                cfg.write_text("\n".join(['env_id = "metadrive"', f"total_steps = {args.steps}",
                                          "eval_every_steps = 0", "checkpoint_every = 100000",
                                          *VARIANTS[name]]) + "\n")
                run = tmpdir / f"v{i}-r{rep}"
                cmd = [sys.executable, "-m", "ppo_core", "train", "--config", str(cfg), "--out", str(run), "--quiet"]
                wall, cpu = _run(cmd, tmpdir / f"v{i}-r{rep}.log", VARIANT_ENV.get(name))
                walls.setdefault(name, []).append(wall)
                cpus.setdefault(name, []).append(cpu)
                shares.setdefault(name, []).append(_learner_share(run))
                print(f"repeat {rep + 1} {name}: {wall:.1f} s", file=sys.stderr, flush=True)
            sb3_runs = [("SB3 PPO defaults (2 envs)", "spawn")]
            if args.sb3_forkserver:
                sb3_runs.append(("SB3, forkserver", "forkserver"))
            for name, method in sb3_runs if args.sb3_python else []:
                wall, cpu = _run([args.sb3_python, str(HERE / "sb3_metadrive.py"), "--steps", str(args.steps),
                                  "--start-method", method], tmpdir / f"sb3-{method}-r{rep}.log")
                walls.setdefault(name, []).append(wall)
                cpus.setdefault(name, []).append(cpu)
                print(f"repeat {rep + 1} {name}: {wall:.1f} s", file=sys.stderr, flush=True)

    sb3 = statistics.median(walls["SB3 PPO defaults (2 envs)"]) if "SB3 PPO defaults (2 envs)" in walls else None
    print(f"{args.steps} environment steps per process, {args.repeats} repeats, {os.cpu_count()} cores")
    print(f"{'variant':<28}{'wall s (median)':>16}{'all runs':>22}{'vs SB3':>8}{'CPU cores':>10}{'learner share':>15}")
    for name, ws in walls.items():
        med = statistics.median(ws)
        ratio = f"{sb3 / med:.2f}x" if sb3 else "-"
        cores = statistics.median(c / w for c, w in zip(cpus[name], ws))
        share = f"{100 * statistics.median(shares[name]):.1f}%" if name in shares else "-"
        runs = " ".join(f"{w:.1f}" for w in ws)
        print(f"{name:<28}{med:>16.1f}{runs:>22}{ratio:>8}{cores:>10.2f}{share:>15}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
