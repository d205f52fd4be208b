"""Learning is pinned: fixed-seed runs write the metrics.csv values written at commit 10101f1.

``tests/data/pinned_*.csv`` are the non-wall-clock columns of two runs made with the
code of 10101f1 (the commit before the trainer's layers above the kernels started to
change), with the configs below. The same configs must reproduce every value exactly:
a change that means to alter learning comes in behind a config key whose default keeps
these runs as they are. Exact equality holds for the same torch build on the same kind
of machine (the project's CPU wheel); floats are compared as the strings written.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("gymnasium")
pytest.importorskip("matplotlib")
pytest.importorskip("tomli_w")

from ppo_core import train as T  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _compare(run_dir: Path, pinned: Path) -> None:
    with open(pinned, newline="") as f:
        expected = list(csv.DictReader(f))
    with open(run_dir / "metrics.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(expected)
    for i, (want, have) in enumerate(zip(expected, got)):
        diff = {k: (v, have.get(k)) for k, v in want.items() if have.get(k) != v}
        assert not diff, f"update {i + 1}: columns differ from the pinned run (pinned, now): {diff}"


def test_cartpole_run_is_pinned(tmp_path):
    cfg = T.load_config(CONFIGS / "cartpole.toml", defaults=T.preset("CartPole-v1")).replace(
        total_steps=8192, seed=5)
    T.train(cfg, tmp_path / "run")
    _compare(tmp_path / "run", DATA / "pinned_cartpole.csv")


def test_metadrive_run_is_pinned(tmp_path):
    pytest.importorskip("metadrive")
    cfg = T.preset().replace(num_envs=2, env_groups=1, async_envs=True, num_steps=64, total_steps=384, num_minibatches=2, update_epochs=2,
                             hidden_sizes=[32, 32], eval_every_steps=0, seed=3, learning_rate=3e-4, anneal_lr=True,
                             gamma=0.99, lam=0.95, clip_coef=0.2, vf_clip_coef=0.0, ent_coef=0.0, init_log_std=-0.5,
                             env_kwargs={"num_scenarios": 5, "start_seed": 0, "traffic_density": 0.1,
                                         "horizon": 50})
    T.train(cfg, tmp_path / "run")
    _compare(tmp_path / "run", DATA / "pinned_metadrive.csv")
