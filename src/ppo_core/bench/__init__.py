"""``ppo-core bench``: ppo_core's kernels against what users run today, in one run.

Baselines (see :mod:`ppo_core.bench.baselines`), all checked against ppo_core's result
before they are timed:

* ``sb3_numpy_loop``: the NumPy loop of Stable-Baselines3's rollout buffer;
* ``cleanrl_torch_loop``: the PyTorch loop of CleanRL's ``ppo.py``;
* ``torchrl_loop``, ``torchrl_vec``: TorchRL's ``generalized_advantage_estimate`` and
  ``vec_generalized_advantage_estimate``, called directly (when torchrl is installed);
* ``copy_bound``: copying the five inputs and filling the two outputs;
* ``cleanrl_torch_eager``, ``cleanrl_torch_compile``: CleanRL's clipped surrogate and
  value loss, forward + backward, eager and under ``torch.compile``.

``run(quick=..., e2e=..., json_path=...)`` prints one table per kernel and returns the
records; nothing here asserts on time.
"""

from __future__ import annotations

from .suite import FULL, QUICK, Settings, measure, run

__all__ = ["run", "Settings", "QUICK", "FULL", "measure"]
