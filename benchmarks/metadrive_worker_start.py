"""How long MetaDrive worker processes take to start: spawn against a forkserver.

Times ``make_vector_env(config, N, seed=0, context=M)`` and its first ``reset`` (each
worker imports what it needs and builds its engine and first map) for each start
method, in turn, ``--repeats`` times, each in a fresh Python process so that no
forkserver outlives its measurement. Usage::

    python benchmarks/metadrive_worker_start.py --envs 8 --repeats 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

CHILD = """
import sys, time
t0 = time.perf_counter()
from ppo_core.envs import metadrive as md
env = md.make_vector_env(md.MetaDriveConfig(num_scenarios=100, start_seed=0, traffic_density=0.1, horizon=1000),
                         {envs}, seed=0, context="{method}")
env.reset(seed=0)
print(time.perf_counter() - t0)
env.close()
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    if args.envs < 1 or args.repeats < 1:
        parser.error("--envs and --repeats must be >= 1")
    times = {"spawn": [], "forkserver": []}
    for _ in range(args.repeats):
        for method in times:
            out = subprocess.run([sys.executable, "-c", CHILD.format(envs=args.envs, method=method)],
                                 capture_output=True, text=True, check=True).stdout
            times[method].append(float(out.strip().splitlines()[-1]))
    for method, ts in times.items():
        print(f"{method:<11} {args.envs} workers, start and first reset: " + ", ".join(f"{t:.1f} s" for t in ts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
