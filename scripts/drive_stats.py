"""How a trained MetaDrive policy drives: speed and steering, per episode.

A diagnostic for the study (docs/metadrive-study.md). It plays the validation scenarios
one after another in a single MetaDrive process, with the deterministic policy
(``--scale 0``, the default) or sampled actions with the std scaled by K (as in
``scripts/noise_eval.py``), and records for every episode its outcome, the mean and the
largest speed (km/h), the speed over the last 5 steps, the mean throttle/brake command,
the mean change of the steering command from one step to the next (actions clipped
to [-1, 1], as the env applies them), the map's block sequence (MetaDrive's block IDs:
``I`` the first block, ``S`` straight, ``C`` curve, ``r``/``R`` on/off ramp, ``X``
intersection, ``T`` T-intersection, ``O`` roundabout, ...) and the block of the lane the
car was on at the end, for an episode that left the road what MetaDrive counted as leaving
it (``out_of_road_cause``: ``off_lane``, the car on no lane; ``sidewalk``; ``yellow_line``
or ``white_line``, on a solid line: MetaDrive's ``on_continuous_line_done``), and the
share of steps at which some input of the network sat at the observation normalizer's clip (``clipped_input_share``; 0 without normalization).
Prints one JSON summary, with the failures counted by that end block; ``--episodes-out``
writes the per-episode lines.

``--smooth A`` puts a first-order low-pass filter between the policy and the car's
steering: the applied command is ``A * previous + (1 - A) * policy's`` (0, the default:
the policy's own command). A diagnostic of whether the step-to-step chatter of the
steering is what fails, not a change of the policy.

``--max-speed V`` caps the car's speed: at a step that starts above V km/h, the applied
throttle is cut to 0 (braking is left alone). The same kind of diagnostic, for the speed
itself rather than the command.

``--throttle-scale F`` multiplies the applied throttle (the positive part of action 1,
after clipping; braking is left alone) by F in [0, 1] (1, the default: unchanged). A
diagnostic of whether a slower car with the same steering succeeds more often, not a
change of the policy.

    python scripts/drive_stats.py runs/screen/batch4k-s1 --episodes 50 --episodes-out det.jsonl
    python scripts/drive_stats.py runs/screen/batch4k-s1 --episodes 50 --scale 1 --episodes-out sto.jsonl
    python scripts/drive_stats.py runs/screen/batch4k-s1 --episodes 50 --smooth 0.5 --episodes-out smooth.jsonl
    python scripts/drive_stats.py models/metadrive --episodes 50 --throttle-scale 0.8 --episodes-out slow.jsonl

The scenario configuration is that of ``ppo-core eval --start-seed S --num-scenarios
N``, but one process steps every episode: the physics and the policy's arithmetic are
then not the evaluator's bit for bit, so single episodes can differ from the evaluation's
(the rates agree within their noise).
"""

from __future__ import annotations

import argparse
import collections
import json
import re

import numpy as np
import torch

from noise_eval import scale_noise


def block_of(node: str) -> str:
    """The block ID in a MetaDrive road node name (``"2X1_0_"``: block 2, an intersection);
    the first block's nodes (``">"``, ``">>"``, ...) give ``I``."""
    m = re.match(r"^-?\d+(\D)", node)
    return m.group(1) if m else "I"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--scale", type=float, default=0.0,
                        help="multiplier K of the policy's std (0: the deterministic mean)")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--start-seed", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smooth", type=float, default=0.0,
                        help="low-pass factor A in [0, 1) on the applied steering (0: none)")
    parser.add_argument("--throttle-scale", type=float, default=1.0,
                        help="factor F in [0, 1] on the applied throttle (not the brake; 1: none)")
    parser.add_argument("--max-speed", type=float, default=None,
                        help="cut the throttle at steps that start above this speed, km/h (default: no cap)")
    parser.add_argument("--episodes-out")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.scale < 0:
        parser.error(f"--scale must be >= 0, got {args.scale}")
    if not 0 <= args.smooth < 1:
        parser.error(f"--smooth must be in [0, 1), got {args.smooth}")
    if not 0 <= args.throttle_scale <= 1:
        parser.error(f"--throttle-scale must be in [0, 1], got {args.throttle_scale}")
    if args.max_speed is not None and not args.max_speed > 0:
        parser.error(f"--max-speed must be > 0 km/h, got {args.max_speed}")

    from ppo_core.envs import metadrive as md
    from ppo_core.envs.metadrive.family import MetaDriveFamily
    from ppo_core.envs.metadrive.env import MetaDriveGymEnv
    from ppo_core.train import load_policy

    policy = load_policy(args.run_dir)
    torch.set_num_threads(policy.config.torch_threads)
    scale_noise(policy, args.scale)
    act = policy.episode_actor(deterministic=args.scale == 0, seed=args.seed)
    # the configuration `ppo-core eval --start-seed S --episodes N` evaluates on
    setup = MetaDriveFamily().eval_setup(policy.config.env_kwargs, args.episodes, {"start_seed": args.start_seed})
    config = setup.config
    env = MetaDriveGymEnv(config)
    low, high = env.action_space.low, env.action_space.high
    norm = policy.obs_normalizer
    episodes = []
    try:
        for i in range(args.episodes):
            obs, _ = env.reset(options={"scenario": args.start_seed + i})
            ego = env.metadrive_env.agent
            blocks = "".join(b.ID for b in env.metadrive_env.engine.current_map.blocks)
            speeds, steer, throttle, ret, clipped = [], [], [], 0.0, 0
            while True:
                if norm.enabled:
                    clipped += bool((np.abs(norm(obs)) >= norm.clip).any())
                a = np.clip(act(obs[None], [i])[0], low, high)
                if args.smooth and steer:
                    a[0] = args.smooth * steer[-1] + (1 - args.smooth) * a[0]
                if a[1] > 0:
                    a[1] *= args.throttle_scale
                    if args.max_speed is not None and ego.speed_km_h > args.max_speed:
                        a[1] = 0.0
                obs, reward, terminated, truncated, info = env.step(a)
                ret += reward
                speeds.append(float(ego.speed_km_h))
                steer.append(float(a[0]))
                throttle.append(float(a[1]))
                if terminated or truncated:
                    break
            m = md.episode_metrics(info, ret, len(speeds))
            causes = {"off_lane": not ego.on_lane, "sidewalk": ego.crash_sidewalk,
                      "yellow_line": ego.on_yellow_continuous_line, "white_line": ego.on_white_continuous_line}
            cause = next((k for k, v in causes.items() if v), "other") if m["out_of_road"] else None
            episodes.append({
                "scenario": args.start_seed + i, **{k: m[k] for k in md.EPISODE_KEYS if k != "scenario"},
                "mean_speed": float(np.mean(speeds)), "max_speed": float(np.max(speeds)),
                "end_speed": float(np.mean(speeds[-5:])), "mean_throttle": float(np.mean(throttle)),
                "steering_change": float(np.mean(np.abs(np.diff(steer)))) if len(steer) > 1 else 0.0,
                "blocks": blocks, "end_block": block_of(ego.lane_index[1]),
                "clipped_input_share": clipped / len(speeds), "out_of_road_cause": cause,
            })
    finally:
        env.close()
    if args.episodes_out:
        with open(args.episodes_out, "w") as f:
            for e in episodes:
                f.write(json.dumps(e) + "\n")

    def mean(key, rows):
        return float(np.mean([e[key] for e in rows])) if rows else None

    failed = [e for e in episodes if e["out_of_road"]]
    summary = {"run_dir": args.run_dir, "scale": args.scale, "smooth": args.smooth,
               "throttle_scale": args.throttle_scale, "max_speed_cap": args.max_speed, "episodes": len(episodes),
               "success_rate": mean("success", episodes), "out_of_road_rate": mean("out_of_road", episodes),
               "crash_rate": mean("crash", episodes),
               **{k: mean(k, episodes) for k in ("mean_speed", "max_speed", "mean_throttle", "steering_change",
                                                  "clipped_input_share")},
               "end_speed_out_of_road": mean("end_speed", failed),
               "failures_by_end_block": dict(sorted(collections.Counter(
                   e["end_block"] for e in episodes if not e["success"]).items())),
               "out_of_road_by_cause": dict(sorted(collections.Counter(
                   e["out_of_road_cause"] for e in failed).items()))}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
