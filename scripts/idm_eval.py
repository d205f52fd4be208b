"""MetaDrive's rule-based IDM policy on a scenario range: the same-machine reference point.

Drives ``metadrive.policy.idm_policy.IDMPolicy`` (MetaDrive's hand-written lane-keeping
and car-following rule with lane changes) through ppo_core's evaluator, with the same
scenario range, traffic density and horizon as ``ppo-core eval``, and prints the same
JSON summary (rates with 95% Wilson intervals). ``--episodes-out`` writes the same JSON
lines, for ``scripts/paired_eval.py``.

    python scripts/idm_eval.py --episodes 100 --start-seed 20000 --json --episodes-out idm.test.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--start-seed", type=int, default=10_000)
    parser.add_argument("--traffic-density", type=float, default=0.1)
    parser.add_argument("--horizon", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--episodes-out")
    args = parser.parse_args(argv)

    from metadrive.policy.idm_policy import IDMPolicy

    from ppo_core.envs import metadrive as md

    config = md.MetaDriveConfig(traffic_density=args.traffic_density, horizon=args.horizon,
                                overrides={"agent_policy": IDMPolicy})

    def ignored(obs):  # the IDM policy steers the car; the actions sent are not used
        return np.zeros((obs.shape[0], 2), np.float32)

    result = md.evaluate_policy(ignored, config, episodes=args.episodes, start_seed=args.start_seed,
                                num_scenarios=args.episodes, num_workers=args.workers, return_episodes=True)
    per_episode = result.pop("per_episode")
    if args.episodes_out:
        with open(args.episodes_out, "w", encoding="utf-8") as f:
            for e in per_episode:
                f.write(json.dumps({k: e[k] for k in md.EPISODE_KEYS}) + "\n")
    result.update(policy="IDMPolicy", start_seed=args.start_seed, traffic_density=args.traffic_density,
                  horizon=args.horizon)
    print(json.dumps(result) if args.json else
          f"IDM on {args.episodes} scenarios from {args.start_seed}: success {result['success_rate']:.3f} "
          f"{result['success_rate_ci']}, route completion {result['route_completion']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
