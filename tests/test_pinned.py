"""Learning is pinned: fixed-seed runs write the metrics.csv values written at commit 10101f1.

``tests/data/pinned_*.csv`` are the non-wall-clock columns of two runs made with the
code of 10101f1 (the commit before the trainer's layers above the kernels started to
change), with the configs below. The same configs must reproduce every value exactly:
a change that means to alter learning comes in behind a config key whose default keeps
these runs as they are. Exact equality holds for the same torch build on the same kind
of machine (the project's CPU wheel); floats are compared as the strings written.

On another CPU (seen: an AMD EPYC machine against the pins' machine) torch's kernels give
other last bits from the first update on, and the difference compounds: CartPole's runs
part ways after about 10 updates. There the check is weaker and says so: the first
``close_updates`` updates must agree within a relative ``rtol`` (measured there: at most
1.7e-4 over CartPole's first 6 updates, 4.7e-4 over MetaDrive's 3), every text column
exactly. A change to learning moves the first update's losses by far more than that.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional

import pytest

pytest.importorskip("torch")
pytest.importorskip("gymnasium")
pytest.importorskip("matplotlib")
pytest.importorskip("tomli_w")

from ppo_core import train as T  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _close(want: str, have: Optional[str], rtol: float) -> bool:
    if have == want:
        return True
    try:
        a, b = float(want), float(have if have is not None else "nan")
    except ValueError:
        return False
    return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-9)


def _compare(run_dir: Path, pinned: Path, *, close_updates: int, rtol: float) -> None:
    with open(pinned, newline="") as f:
        expected = list(csv.DictReader(f))
    with open(run_dir / "metrics.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(expected)
    exact = all(have.get(k) == v for want, have in zip(expected, got) for k, v in want.items())
    if exact:
        return
    # Not digit for digit: another CPU's last bits (module docstring). The updates before
    # the difference compounds must still agree closely.
    for i, (want, have) in enumerate(zip(expected[:close_updates], got)):
        diff = {k: (v, have.get(k)) for k, v in want.items() if not _close(v, have.get(k), rtol)}
        assert not diff, (f"update {i + 1}: columns differ from the pinned run by more than a relative "
                          f"{rtol} (pinned, now): {diff}")


def test_cartpole_run_is_pinned(tmp_path):
    cfg = T.load_config(CONFIGS / "cartpole.toml", defaults=T.preset("CartPole-v1")).replace(
        total_steps=8192, seed=5)
    T.train(cfg, tmp_path / "run")
    _compare(tmp_path / "run", DATA / "pinned_cartpole.csv", close_updates=6, rtol=1e-3)


def test_metadrive_run_is_pinned(tmp_path):
    pytest.importorskip("metadrive")
    cfg = T.preset().replace(num_envs=2, env_groups=1, async_envs=True, num_steps=64, total_steps=384, num_minibatches=2, update_epochs=2,
                             hidden_sizes=[32, 32], eval_every_steps=0, seed=3, learning_rate=3e-4, anneal_lr=True,
                             gamma=0.99, lam=0.95, clip_coef=0.2, vf_clip_coef=0.0, ent_coef=0.0, init_log_std=-0.5,
                             env_kwargs={"num_scenarios": 5, "start_seed": 0, "traffic_density": 0.1,
                                         "horizon": 50})
    T.train(cfg, tmp_path / "run")
    _compare(tmp_path / "run", DATA / "pinned_metadrive.csv", close_updates=3, rtol=2e-3)
