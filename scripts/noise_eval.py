"""How much action noise a trained MetaDrive policy needs: sampled actions with the
policy's std scaled by K (K = 0: the deterministic mean; K = 1: ``ppo-core eval --stochastic``).

A diagnostic for the study (docs/metadrive-study.md): if a small K already recovers
the sampled policy's success, the deterministic policy fails on a knife edge; if only
K near 1 does, the noise is part of how the policy drives. Each episode samples from a
generator of its own (seeded by ``--seed`` and the episode), as ``ppo-core eval`` does,
so results do not depend on the worker count. Prints the JSON summary;
``--episodes-out`` writes the per-episode lines for ``scripts/paired_eval.py``.

    python scripts/noise_eval.py runs/screen/batch4k-s1 --scale 0.25 --episodes 100 --start-seed 10000 \\
        --episodes-out noise025.jsonl

``--dims 0`` puts the noise on the steering only (MetaDrive's action 0), ``--dims 1`` on
the throttle/brake only; the other dimension takes the mean action.
"""

from __future__ import annotations

import argparse
import json

import torch


def scale_noise(policy, scale: float, dims=None) -> None:
    """Replace ``policy.net`` by the same network with its Gaussian std multiplied by
    ``scale`` (on ``dims`` only, if given: the other dimensions get a std of 1e-12, i.e.
    their mean). ``scale`` = 1 leaves the std as it is, so it reproduces ``ppo-core eval
    --stochastic`` exactly; ``scale`` = 0 changes nothing (use the deterministic actor)."""
    net = policy.net

    class Scaled(torch.nn.Module):
        def forward(self, obs):
            dist, value = net(obs)
            base = dist.base_dist
            std = base.scale * scale if scale > 0 else base.scale
            if dims is not None and scale > 0:
                mask = torch.zeros(std.shape[-1], dtype=torch.bool)
                mask[list(dims)] = True
                std = torch.where(mask, std, torch.full_like(std, 1e-12))
            return torch.distributions.Independent(torch.distributions.Normal(base.loc, std), 1), value

    policy.net = Scaled()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--scale", type=float, required=True, help="multiplier K of the policy's std")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--start-seed", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--dims", type=int, nargs="+", default=None,
                        help="action dimensions to add noise to (default: all); the others take the mean")
    parser.add_argument("--episodes-out")
    args = parser.parse_args(argv)

    from ppo_core.envs import metadrive as md
    from ppo_core.envs.metadrive.family import MetaDriveFamily
    from ppo_core.train import load_policy

    policy = load_policy(args.run_dir)
    torch.set_num_threads(policy.config.torch_threads)
    dims = None if args.dims is None else sorted(set(args.dims))
    scale_noise(policy, args.scale, dims)
    act = policy.episode_actor(deterministic=args.scale == 0, seed=args.seed)
    # the configuration `ppo-core eval --start-seed S --episodes N` evaluates on
    setup = MetaDriveFamily().eval_setup(policy.config.env_kwargs, args.episodes, {"start_seed": args.start_seed})
    config = setup.config
    result = md.evaluate_policy(act, config, episodes=args.episodes, start_seed=args.start_seed,
                                num_scenarios=args.episodes, num_workers=args.workers, return_episodes=True,
                                keyed=True)
    per_episode = result.pop("per_episode")
    if args.episodes_out:
        with open(args.episodes_out, "w") as f:
            for e in per_episode:
                f.write(json.dumps({k: e[k] for k in md.EPISODE_KEYS}) + "\n")
    print(json.dumps({"run_dir": args.run_dir, "scale": args.scale, "dims": dims, **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
