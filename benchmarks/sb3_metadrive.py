"""Stable-Baselines3's PPO with its defaults on the MetaDrive setup of ppo_core's preset.

The reference point of ``metadrive_throughput.py``: 2 ``SubprocVecEnv`` workers (one
per core), the same 100 training scenarios, traffic density 0.1 and horizon 1000, and
the same gymnasium wrapper (``ppo_core.envs.metadrive.MetaDriveGymEnv``, offline
assets), so that only the learner differs. Needs ``stable-baselines3`` installed beside
ppo_core's ``metadrive`` extra. Usage: ``python benchmarks/sb3_metadrive.py --steps 40960``.

``--start-method forkserver`` starts SB3's workers as ppo_core's do with
``PPO_CORE_WORKER_START_METHOD=forkserver`` (a forkserver with MetaDrive preloaded,
``ppo_core.envs.metadrive.worker_context``), to tell what the start method alone is
worth; the default, ``spawn``, is the reference
(SB3's own default start method is a forkserver without any preload: each worker
imports MetaDrive either way). "Defaults" are SB3's PPO hyper-parameters.
"""

from __future__ import annotations

import argparse
import functools
import time


def _make(seed: int):
    from ppo_core.envs.metadrive import MetaDriveConfig, MetaDriveGymEnv

    return MetaDriveGymEnv(MetaDriveConfig(num_scenarios=100, start_seed=0, traffic_density=0.1, horizon=1000),
                           seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40960)
    parser.add_argument("--envs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-method", choices=("spawn", "forkserver"), default="spawn")
    args = parser.parse_args()

    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import SubprocVecEnv

    t0 = time.perf_counter()
    method = args.start_method
    if method == "forkserver":
        from ppo_core.envs.metadrive import worker_context

        method = worker_context("forkserver")  # MetaDrive preloaded in the forkserver
    env = SubprocVecEnv([functools.partial(_make, args.seed + i) for i in range(args.envs)], start_method=method)
    model = PPO("MlpPolicy", env, seed=args.seed, device="cpu", verbose=0)
    model.learn(total_timesteps=args.steps)
    env.close()
    print(f"sb3 ppo: {model.num_timesteps} steps in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
