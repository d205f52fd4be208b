"""Steps/s of the Ray backend against the local backend, paired in one process.

For each env (CartPole with configs/cartpole.toml, MetaDrive with the preset's 2 envs)
the local and the Ray backend (2 actors) train the same config in turn, ``--repeats``
times, and each run's steps/s comes from ``Trainer.timing_summary()`` (start-up
excluded). For the Ray runs it also reports where the time went (weights broadcast,
waiting for fragments, the slowest and the mean actor), the bytes of one update's
weights and of one actor's fragment, and the learner's update time per sample.

    python benchmarks/ray_throughput.py --out ray_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tensor_bytes(obj) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def run(config, out_dir):
    from ppo_core import train as T
    from ppo_core.train.rollout import Rollout

    trainer = T.Trainer(config, out_dir)
    fragments = []
    if config.backend == "ray":
        collect = trainer.source.collect

        def recording(num_steps):  # one fragment's size: the stacked rollout / K
            rollout = collect(num_steps)
            fragments.append(sum(_tensor_bytes(getattr(rollout, f)) for f in Rollout.__dataclass_fields__
                                 if f.startswith(("obs", "act", "log", "val", "rew", "term", "trunc", "next")))
                             / trainer.source.k)
            return rollout

        trainer.source.collect = recording
    breakdown = None
    try:
        trainer.train()
        summary = trainer.timing_summary()
        if config.backend == "ray":
            breakdown = dict(trainer.source.breakdown)
    finally:
        trainer.close()
    updates = config.num_updates
    return {
        "backend": config.backend,
        "steps_per_second": summary["steps_per_second"],
        "seconds": summary["seconds"],
        "update_seconds_per_sample": summary["seconds"]["update"] / (updates * config.batch_size),
        "weights_bytes": _tensor_bytes(trainer.policy.state_dict()),
        "fragment_bytes": (sum(fragments) / len(fragments)) if fragments else None,
        "per_update": {k: v / updates for k, v in breakdown.items()} if breakdown else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cartpole-steps", type=int, default=20480)
    parser.add_argument("--metadrive-steps", type=int, default=8192)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import ray

    from ppo_core import train as T

    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    cases = {
        "CartPole-v1": T.load_config(ROOT / "configs" / "cartpole.toml").replace(
            total_steps=args.cartpole_steps, checkpoint_every=10_000),
        "metadrive": T.preset().replace(total_steps=args.metadrive_steps, eval_every_steps=0, checkpoint_every=10_000),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in cases.items():
            rows = []
            for r in range(args.repeats):
                for backend in ("local", "ray"):
                    c = cfg.replace(backend=backend, num_workers=2 if backend == "ray" else 0)
                    t0 = time.perf_counter()
                    row = run(c, Path(tmp) / f"{name}-{backend}-{r}")
                    row["wall_seconds"] = time.perf_counter() - t0
                    rows.append(row)
                    print(name, backend, r, f"{row['steps_per_second']:.0f} steps/s", flush=True)
            local = [x["steps_per_second"] for x in rows if x["backend"] == "local"]
            remote = [x["steps_per_second"] for x in rows if x["backend"] == "ray"]
            results[name] = {"runs": rows, "ratio_ray_over_local": [b / a for a, b in zip(local, remote)]}
            print(name, "ray/local steps/s:", ", ".join(f"{x:.2f}" for x in results[name]["ratio_ray_over_local"]))
    ray.shutdown()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
