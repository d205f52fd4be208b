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

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["GRADVAR_COLUMNS", "DEFAULT_LAMS", "Snapshot", "load_snapshot", "train_snapshot", "measure",
           "plot_gradvar"]

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
    from ppo_core.train.errors import RunDirError

    policy = load_policy(run_dir)
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None:
        raise RunDirError(f"{run_dir} has no checkpoint yet")
    state = ckpt.load_checkpoint(latest)
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

    def __call__(self, rewards: Any, done: Any, envs: Optional[slice] = None) -> Any:
        # ``envs`` (one group's slice): the frozen scaling is the same for every env.
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
    rows: List[Dict[str, Any]] = []
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

    from ppo_core.compare import save_figure

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
    save_figure(fig, Path(path))
