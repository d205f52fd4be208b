"""ppo_core's kernels against the loops users run today, measured in one run.

    python benchmarks/bench_kernels.py [--repeats 7] [--json out.json]

For GAE at each (T, N) and dtype it prints the median time of:
  ppo_core     ppo_core.gae
  numpy_loop   the per-step NumPy loop of Stable-Baselines3's rollout buffer
               (compute_returns_and_advantage), with terminated/truncated masks
  copy_bound   np.copyto of the five inputs into fresh arrays plus filling the two
               outputs: more memory traffic than one fused pass, so a good kernel
               beats it
and speed-ups (baseline time / ppo_core time; > 1 means ppo_core is faster).
Timings are noisy on a shared machine: only ratios measured in the same run count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

import ppo_core

SIZES = [(2048, 16), (128, 64), (1000, 4096)]
DTYPES = [np.float32, np.float64]


def numpy_loop_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """The Stable-Baselines3 rollout-buffer loop, step by step over T, with the
    terminated/truncated split (bootstrap through next_values unless terminated)."""
    T = rewards.shape[0]
    advantages = np.zeros_like(rewards)
    last_gae_lam = np.zeros_like(rewards[0])
    not_terminated = 1.0 - terminated.astype(rewards.dtype)
    not_done = 1.0 - (terminated | truncated).astype(rewards.dtype)
    for step in reversed(range(T)):
        delta = rewards[step] + gamma * next_values[step] * not_terminated[step] - values[step]
        last_gae_lam = delta + gamma * lam * not_done[step] * last_gae_lam
        advantages[step] = last_gae_lam
    return advantages, advantages + values


def copy_bound(rewards, values, next_values, terminated, truncated):
    for x in (rewards, values, next_values, terminated, truncated):
        out = np.empty_like(x)
        np.copyto(out, x)
    for _ in range(2):
        np.empty_like(rewards).fill(0)


def timeit(fn, repeats, min_time=0.02):
    fn()  # warm-up, excluded
    samples = []
    for _ in range(repeats):
        n = 0
        t0 = time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time or n >= 1000:
                break
        samples.append(elapsed / n)
    return statistics.median(samples)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", help="write one record per measurement to this file")
    args = p.parse_args(argv)

    print(f"ppo_core {ppo_core.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}")
    print(f"median of {args.repeats} repeats, warm-up excluded; speed-up = baseline / ppo_core")
    print()
    header = f"{'kernel':<8} {'dtype':<8} {'(T, N)':<12} {'ppo_core':>10} {'numpy_loop':>11} {'x':>8} {'copy_bound':>11} {'x':>6}"
    print(header)
    print("-" * len(header))
    records = []
    rng = np.random.default_rng(0)
    for T, N in SIZES:
        for dtype in DTYPES:
            shape = (T, N)
            r, v, nv = (rng.normal(size=shape).astype(dtype) for _ in range(3))
            term = rng.random(shape) < 0.01
            trunc = rng.random(shape) < 0.01
            g, lam = 0.99, 0.95
            mine = ppo_core.gae(r, v, nv, term, trunc, gamma=g, lam=lam)
            ref = numpy_loop_gae(r, v, nv, term, trunc, g, lam)
            tol = 1e-3 if dtype == np.float32 else 1e-9
            np.testing.assert_allclose(mine[0], ref[0], rtol=tol, atol=tol)
            t_core = timeit(lambda: ppo_core.gae(r, v, nv, term, trunc, gamma=g, lam=lam), args.repeats)
            t_loop = timeit(lambda: numpy_loop_gae(r, v, nv, term, trunc, g, lam), args.repeats)
            t_copy = timeit(lambda: copy_bound(r, v, nv, term, trunc), args.repeats)
            dt = np.dtype(dtype).name
            print(f"{'gae':<8} {dt:<8} {str(shape):<12} {t_core*1e3:>8.3f}ms {t_loop*1e3:>9.3f}ms "
                  f"{t_loop/t_core:>7.1f}x {t_copy*1e3:>9.3f}ms {t_copy/t_core:>5.2f}x")
            for impl, t in (("ppo_core", t_core), ("numpy_loop", t_loop), ("copy_bound", t_copy)):
                records.append(dict(kernel="gae", impl=impl, dtype=dt, shape=list(shape),
                                    seconds=t, speedup=t / t_core))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
        print(f"\nwrote {len(records)} records to {args.json}")


if __name__ == "__main__":
    main()
