"""``ppo-core gradvar``: the variance of the policy-gradient estimate, per advantage estimator.

The tutorial's flaw 1, measured. Take one policy snapshot (a run directory, or a
policy trained briefly for the purpose), collect ``M`` independent batches of the
same size with it, and compute on each batch the policy gradient

    g = ∇θ (1/B) Σ_t log π_θ(a_t | s_t) · Â_t

once per advantage estimator Â, all on the same batches:

* ``reward-to-go``: Â_t = G_t, the discounted return from t (no baseline);
* ``G - V``: Â_t = G_t − V(s_t), the snapshot's critic as the baseline;
* ``GAE λ``: GAE(γ, λ) for each λ (λ = 1 is G − V again, λ = 0 the one-step TD error).

The returns and advantages come from the ppo_core kernels (through
:mod:`ppo_core.train.estimators`). Over the ``M`` gradients, the table reports the
total variance (the trace of their covariance, unbiased), the squared norm of their
mean, and the mean cosine between the gradients of two different batches (a
scale-free measure: 1 when every batch points the same way, 0 when they are noise).
Advantages are not normalized: the point is what each estimator does to the raw
gradient.

Batches come from one vector env stepping on after a discarded burn-in rollout (as in
training, so batches hold states from every phase of an episode), with frozen
observation and reward normalization; consecutive batches share only the envs'
state at their boundary.

This module imports only the standard library at import time (the CLI's parser
imports it); torch is imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["GRADVAR_COLUMNS", "DEFAULT_LAMS", "Snapshot", "load_snapshot", "train_snapshot", "measure",
           "plot_gradvar", "add_parser"]

#: λ values of GAE measured by default.
DEFAULT_LAMS = (0.0, 0.9, 0.95, 1.0)

#: Columns of ``gradvar.csv``: ``grad_variance`` = tr Cov(g) over the batches (unbiased,
#: ddof = 1); ``variance_vs_reward_to_go`` = grad_variance / that of reward-to-go;
#: ``mean_grad_sq_norm`` = |mean g|² (biased upwards by grad_variance / batches);
#: ``pairwise_cosine`` = mean over pairs of different batches of cos(g_i, g_j);
#: ``mean_abs_advantage`` = mean |Â| over all batches (the scale of the weights on ∇ log π).
GRADVAR_COLUMNS = ["estimator", "lam", "batches", "batch_size", "grad_variance", "variance_vs_reward_to_go",
                   "mean_grad_sq_norm", "pairwise_cosine", "mean_abs_advantage", "gamma", "policy_step"]


class Snapshot:
    """A frozen policy: ``net``, observation normalizer, reward scaler, config, training step."""

    def __init__(self, net: Any, obs_normalizer: Any, reward_scaler_state: Dict[str, Any], config: Any,
                 step: int) -> None:
        self.net = net
        self.obs_normalizer = obs_normalizer
        self.reward_scaler_state = reward_scaler_state
        self.config = config
        self.step = step


def load_snapshot(run_dir: Any) -> Snapshot:
    """The latest checkpoint of ``run_dir`` (weights, normalization statistics, config)."""
    from ppo_core.train import checkpoint as ckpt
    from ppo_core.train.agent import load_policy

    policy = load_policy(run_dir)
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))
    scaler = (state["source"] if "source" in state else state)["reward_scaler"]  # older checkpoints: top level
    return Snapshot(policy.net, policy.obs_normalizer, scaler, policy.config, policy.step)


def train_snapshot(config: Any, run_dir: Any) -> Snapshot:
    """Train ``config`` into ``run_dir`` (or reuse a finished run with the same config there); load it."""
    from ppo_core import train as T
    from ppo_core.train import checkpoint as ckpt

    if ckpt.list_checkpoints(run_dir):
        if ckpt.load_run_config(run_dir).to_dict() != config.to_dict():
            raise T.RunDirError(f"{run_dir} holds a run with another config; choose another --out")
        trainer = T.Trainer.resume(run_dir)
        if trainer.finished:
            trainer.close()
        else:
            trainer.train()
    else:
        T.Trainer(config, run_dir).train()
    return load_snapshot(run_dir)


class _FrozenObs:
    # The collector updates its normalizer as it goes; the snapshot's must stay fixed.
    def __init__(self, normalizer: Any) -> None:
        self.normalizer = normalizer

    def update(self, obs: Any) -> None:
        pass

    def __call__(self, obs: Any) -> Any:
        return self.normalizer(obs)


class _FrozenRewards:
    # RewardScaler's scaling with its saved statistics, never updated.
    def __init__(self, state: Dict[str, Any], clip: float) -> None:
        import numpy as np

        self.enabled = bool(state.get("enabled", False))
        self.var = float(np.asarray(state["rms"]["var"])) if self.enabled else 1.0
        self.clip = clip

    def __call__(self, rewards: Any, done: Any) -> Any:
        import numpy as np

        rewards = np.asarray(rewards, np.float64)
        if not self.enabled:
            return rewards.astype(np.float32)
        return np.clip(rewards / np.sqrt(self.var + 1e-8), -self.clip, self.clip).astype(np.float32)


def _estimators(lams: Sequence[float]) -> List[Tuple[str, Optional[float], Any]]:
    from ppo_core.train.estimators import gae, returns_minus_baseline, reward_to_go

    out: List[Tuple[str, Optional[float], Any]] = [("reward-to-go", None, reward_to_go),
                                                    ("G - V", None, returns_minus_baseline)]
    out += [(f"GAE lambda={lam:g}", float(lam), gae) for lam in lams]
    return out


def measure(snapshot: Snapshot, *, batches: int, num_envs: int, num_steps: int,
            lams: Sequence[float] = DEFAULT_LAMS, seed: int = 0,
            gamma: Optional[float] = None) -> List[Dict[str, Any]]:
    """Collect ``batches`` batches of ``num_envs * num_steps`` steps with the snapshot and
    return one :data:`GRADVAR_COLUMNS` row per estimator (reward-to-go, G − V, GAE per λ).

    ``gamma`` defaults to the snapshot's. Raises ``ValueError`` for fewer than 2 batches.
    """
    import numpy as np
    import torch

    from ppo_core.train.envs import make_vector_env
    from ppo_core.train.rollout import RolloutCollector

    if batches < 2:
        raise ValueError(f"batches must be >= 2 to estimate a variance, got {batches}")
    cfg = snapshot.config
    gamma = cfg.gamma if gamma is None else float(gamma)
    torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(seed)
    net = snapshot.net.eval()
    params = [p for p in net.parameters() if p.requires_grad]
    estimators = _estimators(lams)
    grads: List[List[Any]] = [[] for _ in estimators]
    abs_adv = [0.0 for _ in estimators]
    envs = make_vector_env(cfg.env_id, num_envs, seed, env_kwargs=cfg.env_kwargs)
    try:
        collector = RolloutCollector(envs, net, _FrozenObs(snapshot.obs_normalizer),
                                     _FrozenRewards(snapshot.reward_scaler_state, cfg.reward_clip), seed)
        collector.collect(num_steps)  # burn-in: start the batches mid-episode, as in training
        for _ in range(batches):
            r = collector.collect(num_steps)
            dist, _ = net(r.obs.reshape(-1, *r.obs.shape[2:]))
            log_prob = dist.log_prob(r.actions.reshape(-1, *r.actions.shape[2:]))
            for k, (_, lam, fn) in enumerate(estimators):
                adv, _ = fn(r.rewards, r.values, r.next_values, r.terminated, r.truncated, gamma=gamma,
                            lam=cfg.lam if lam is None else lam)
                adv = adv.reshape(-1).float()
                g = torch.autograd.grad((log_prob * adv).mean(), params, retain_graph=True, allow_unused=True)
                grads[k].append(torch.cat([x.reshape(-1) for x in g if x is not None]).double().numpy())
                abs_adv[k] += float(adv.abs().mean()) / batches
    finally:
        envs.close()
    rows = []
    for k, (name, lam, _) in enumerate(estimators):
        G = np.stack(grads[k])
        mean = G.mean(axis=0)
        var = float(((G - mean) ** 2).sum(axis=1).sum() / (len(G) - 1))
        unit = G / np.maximum(np.linalg.norm(G, axis=1, keepdims=True), 1e-300)
        total = unit.sum(axis=0)
        m = len(G)
        rows.append({"estimator": name, "lam": lam, "batches": batches, "batch_size": num_envs * num_steps,
                     "grad_variance": var, "mean_grad_sq_norm": float(mean @ mean),
                     "pairwise_cosine": float((total @ total - m) / (m * (m - 1))),
                     "mean_abs_advantage": abs_adv[k], "gamma": gamma, "policy_step": snapshot.step})
    for row in rows:
        row["variance_vs_reward_to_go"] = row["grad_variance"] / rows[0]["grad_variance"]
    return rows


def plot_gradvar(rows: Sequence[Dict[str, Any]], path: Any, *, title: str) -> None:
    """``gradvar.png``: total gradient variance (log scale) and the mean cosine between batches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ppo_core.compare import _save

    names = [r["estimator"].replace("GAE lambda=", "GAE λ=").replace("G - V", "G − V") for r in rows]
    colors = ["C3", "C1"] + ["C0"] * (len(rows) - 2)
    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    for ax, key, label in ((ax1, "grad_variance", "tr Cov(g) over batches (log scale)"),
                           (ax2, "pairwise_cosine", "mean cos(g_i, g_j), i ≠ j")):
        values = [r[key] for r in rows]
        bars = ax.bar(range(len(rows)), values, color=colors)
        if key == "grad_variance":
            ax.set_yscale("log")
        else:
            ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize="small")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
        for b, v in zip(bars, values):
            ax.annotate(f"{v:.3g}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                        fontsize="x-small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    _save(fig, Path(path))


def gradvar_command(args: argparse.Namespace) -> int:
    """``ppo-core gradvar``."""
    from ppo_core.cli import CLIError
    from ppo_core.compare import base_config, format_table, write_csv

    if args.batches < 2:
        raise CLIError(f"--batches must be >= 2 to estimate a variance, got {args.batches}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.run_dir:
        clashing = [f for f, v in (("--env", args.env), ("--config", args.config),
                                   ("--train-steps", args.train_steps)) if v is not None]
        if clashing:
            raise CLIError(f"a RUN_DIR is the snapshot; {', '.join(clashing)} cannot be combined with it")
        snapshot = load_snapshot(args.run_dir)
        source = str(args.run_dir)
    else:
        steps = 20_000 if args.train_steps is None else args.train_steps
        config = base_config(args.env, args.config, {"total_steps": steps, "seed": args.seed})
        print(f"training a snapshot of {config.env_id} for {config.num_updates * config.batch_size} steps "
              f"into {out / 'snapshot'}", file=sys.stderr, flush=True)
        snapshot = train_snapshot(config, out / "snapshot")
        source = str(out / "snapshot")
    cfg = snapshot.config
    num_envs = args.num_envs or cfg.num_envs
    num_steps = args.num_steps or cfg.num_steps
    print(f"{args.batches} batches of {num_envs} x {num_steps} steps with the policy of {source} "
          f"(step {snapshot.step})", file=sys.stderr, flush=True)
    rows = measure(snapshot, batches=args.batches, num_envs=num_envs, num_steps=num_steps, lams=args.lams,
                   seed=args.seed + 10_000, gamma=args.gamma)
    write_csv(out / "gradvar.csv", GRADVAR_COLUMNS, rows)
    plot_gradvar(rows, out / "gradvar.png",
                 title=f"{cfg.env_id}: policy-gradient variance over {args.batches} batches of "
                       f"{num_envs * num_steps} steps (policy at step {snapshot.step}, γ={rows[0]['gamma']:g})")
    print(format_table(["estimator", "grad_variance", "variance_vs_reward_to_go", "mean_grad_sq_norm",
                        "pairwise_cosine", "mean_abs_advantage"], rows))
    print(f"wrote {out / 'gradvar.png'}, {out / 'gradvar.csv'}")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``gradvar`` on the CLI's subparsers."""
    from ppo_core.cli import _non_negative_int, _positive_int, _unit_float

    g = sub.add_parser("gradvar", help="variance of the policy-gradient estimate per advantage estimator "
                                       "(tutorial flaw 1)",
                       description="Estimate the variance of the policy gradient over independent batches "
                                   "of one policy snapshot, for reward-to-go, G - V and GAE(lambda); write "
                                   "DIR/gradvar.png and DIR/gradvar.csv. The snapshot is RUN_DIR's latest "
                                   "checkpoint, or a policy trained for --train-steps with --env/--config.")
    g.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="trained run to take the policy from")
    g.add_argument("--env", metavar="ENV_ID", help="environment of the snapshot to train")
    g.add_argument("--config", metavar="FILE", help="config of the snapshot to train (e.g. configs/cartpole.toml)")
    g.add_argument("--train-steps", type=_non_negative_int, metavar="N",
                   help="steps to train the snapshot for (default 20000)")
    g.add_argument("--batches", type=_positive_int, default=32, metavar="M",
                   help="independent batches (default 32)")
    g.add_argument("--num-envs", type=_positive_int, metavar="K", help="envs per batch (default: the config's)")
    g.add_argument("--num-steps", type=_positive_int, metavar="T",
                   help="steps per env per batch (default: the config's)")
    g.add_argument("--lams", type=_unit_float, nargs="+", default=list(DEFAULT_LAMS), metavar="LAMBDA",
                   help="GAE lambdas (default 0 0.9 0.95 1)")
    g.add_argument("--gamma", type=_unit_float, metavar="G", help="discount (default: the snapshot's)")
    g.add_argument("--seed", type=_non_negative_int, default=1, metavar="S", help="seed (default 1)")
    g.add_argument("--out", required=True, metavar="DIR", help="output directory")
    g.set_defaults(run=gradvar_command)
