"""Where the wall time of a short MetaDrive training run goes.

The trainer already splits each update's wall time into the parts of
:data:`ppo_core.train.trainer.TIMING_KEYS` (the ``*_seconds`` columns of metrics.csv);
this runs the MetaDrive preset of ``ppo-core train`` for a few thousand steps in a
temporary directory and reports those parts. The policy loss is wrapped to also time
its forward call on the kernel (its backward runs inside ``loss.backward()`` of the
update and is not separable).
"""

from __future__ import annotations

import tempfile
import time
from typing import Any, Dict

from .table import format_seconds

__all__ = ["profile_metadrive", "render_profile"]

_LABELS = {
    "env": "env stepping (MetaDrive workers)",
    "inference": "policy inference and rollout bookkeeping",
    "advantage": "advantages (ppo_core.gae kernel)",
    "update": "PyTorch update (minibatch epochs)",
    "eval": "evaluation",
    "other": "logging and checkpoints",
}


def profile_metadrive(steps: int = 8192, *, seed: int = 0) -> Dict[str, Any]:
    """Train the MetaDrive preset for ``steps`` environment steps (rounded up to whole
    rollouts; no periodic evaluation) and return the trainer's timing summary plus
    ``steps``, ``updates`` and ``policy_loss_forward_seconds``."""
    from ppo_core import torch as pt
    from ppo_core.train import Trainer, preset

    loss_time = [0.0]

    def timed_loss(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = pt.clipped_surrogate_loss(*args, **kwargs)
        loss_time[0] += time.perf_counter() - t0
        return out

    config = preset("metadrive").replace(total_steps=steps, eval_every_steps=0, seed=seed)
    with tempfile.TemporaryDirectory(prefix="ppo-core-bench-") as run_dir:
        trainer = Trainer(config, run_dir, policy_loss=timed_loss)
        trainer.train()
        summary = trainer.timing_summary()
        summary["steps"] = trainer.global_step
        summary["updates"] = trainer.update
    summary["policy_loss_forward_seconds"] = loss_time[0]
    summary["config"] = {"num_envs": config.num_envs, "num_steps": config.num_steps,
                         "num_minibatches": config.num_minibatches, "update_epochs": config.update_epochs,
                         "hidden_sizes": list(config.hidden_sizes)}
    return summary


def render_profile(p: Dict[str, Any]) -> str:
    """The profile as a table: part, seconds, share of wall time."""
    c = p["config"]
    lines = [f"e2e_metadrive: {p['steps']} steps in {p['updates']} updates ({c['num_envs']} envs x "
             f"{c['num_steps']} steps, {c['num_minibatches']} minibatches x {c['update_epochs']} epochs, "
             f"MLP {c['hidden_sizes']}); {p['total_seconds']:.1f} s, {p['steps_per_second']:.0f} steps/s",
             f"{'part':<54}{'time':>10}{'share':>9}", "-" * 73]
    for part, secs in p["seconds"].items():
        lines.append(f"{part + ': ' + _LABELS.get(part, ''):<54}{format_seconds(secs):>10}"
                     f"{100 * p['shares'][part]:>8.2f}%")
    fwd = p["policy_loss_forward_seconds"]
    total = p["total_seconds"]
    lines.append(f"of the update: clipped surrogate forward on the kernel {format_seconds(fwd)} "
                 f"({100 * fwd / total if total else 0.0:.2f}% of wall time)")
    return "\n".join(lines)
