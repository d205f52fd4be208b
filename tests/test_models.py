"""The shipped MetaDrive policy loads and acts without the simulator."""

import pathlib

import numpy as np
import pytest

pytest.importorskip("torch")

import ppo_core

MODEL = pathlib.Path(__file__).resolve().parents[1] / "models" / "metadrive"


def test_shipped_metadrive_policy_acts():
    policy = ppo_core.load_policy(MODEL)
    obs_dim = 259  # MetaDrive 0.4.3's default lidar + state observation
    single = policy.act(np.zeros(obs_dim, np.float32))
    batch = policy.act(np.random.default_rng(0).normal(size=(5, obs_dim)).astype(np.float32))
    assert np.shape(single) == (2,)
    assert np.shape(batch) == (5, 2)
    assert np.all(np.isfinite(batch)) and np.all(np.abs(batch) <= 1.0)
    # deterministic means deterministic
    np.testing.assert_array_equal(policy.act(np.zeros(obs_dim, np.float32)), single)
