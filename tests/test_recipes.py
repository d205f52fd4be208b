"""The recipes of docs/recipes.md against the code they patch."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ppo_core.torch as pt  # noqa: E402
from ppo_core_spec import gae as spec_gae  # noqa: E402


def _cleanrl_gae(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
    """CleanRL's loop (ppo_continuous_action.py): dones[t] says the episode ended *before*
    step t (the flag that came with obs t), and an ended episode is never bootstrapped."""
    num_steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    lastgaelam = 0
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            nextnonterminal = 1.0 - next_done
            nextvalues = next_value
        else:
            nextnonterminal = 1.0 - dones[t + 1]
            nextvalues = values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
    return advantages, advantages + values


def _rollout(seed, truncation):
    rng = np.random.default_rng(seed)
    T, N = 64, 4
    rewards = torch.as_tensor(rng.normal(size=(T, N)), dtype=torch.float32)
    values = torch.as_tensor(rng.normal(size=(T, N)), dtype=torch.float32)
    final_values = torch.as_tensor(rng.normal(size=(T, N)), dtype=torch.float32)
    last_value = torch.as_tensor(rng.normal(size=N), dtype=torch.float32)
    ended = rng.random((T, N)) < 0.08
    trunc = ended & (rng.random((T, N)) < 0.5) if truncation else np.zeros_like(ended)
    terminated = torch.as_tensor(ended & ~trunc, dtype=torch.float32)
    truncated = torch.as_tensor(trunc, dtype=torch.float32)
    return rewards, values, final_values, last_value, terminated, truncated


RECIPES = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"


def _recipe(rewards, values, final_values, last_value, terminated, truncated, gamma, lam):
    """Step 2 of the CleanRL recipe, run as docs/recipes.md writes it."""
    blocks = RECIPES.read_text().split("```python")[1:]
    block = next(b.split("```")[0] for b in blocks if "pt.gae(" in b)

    class Agent:  # CleanRL's agent, as far as the block uses it
        def get_value(self, obs):
            assert obs == "next_obs"
            return last_value[:, None]

    scope = {"torch": torch, "rewards": rewards, "values": values, "final_values": final_values,
             "terminated": terminated, "truncated": truncated, "agent": Agent(), "next_obs": "next_obs",
             "args": SimpleNamespace(gamma=gamma, gae_lambda=lam), "device": torch.device("cpu")}
    exec(compile(block, str(RECIPES), "exec"), scope)
    return scope["advantages"], scope["returns"]


def _cleanrl(rewards, values, last_value, terminated, truncated, gamma, lam):
    ended = ((terminated + truncated) > 0).float()
    dones = torch.zeros_like(ended)
    dones[1:] = ended[:-1]  # CleanRL stores, with obs t, the flag of the step before it
    return _cleanrl_gae(rewards, values, dones, last_value, ended[-1], gamma, lam)


@pytest.mark.parametrize("seed", range(5))
def test_recipe_equals_cleanrl_without_truncation(seed):
    r, v, fv, last, term, trunc = _rollout(seed, truncation=False)
    ours = _recipe(r, v, fv, last, term, trunc, 0.99, 0.95)
    theirs = _cleanrl(r, v, last, term, trunc, 0.99, 0.95)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.float(), b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_recipe_bootstraps_truncation_where_cleanrl_does_not(seed):
    r, v, fv, last, term, trunc = _rollout(seed, truncation=True)
    assert trunc.sum() > 0
    ours_adv, _ = _recipe(r, v, fv, last, term, trunc, 0.99, 0.95)
    theirs_adv, _ = _cleanrl(r, v, last, term, trunc, 0.99, 0.95)
    # the definition (the NumPy spec, float64) with the final observations' values
    next_values = np.where(((term + trunc) > 0).numpy(), fv.numpy(), np.concatenate([v.numpy()[1:], last.numpy()[None]]))
    want, _ = spec_gae(r.numpy().astype(np.float64), v.numpy().astype(np.float64), next_values.astype(np.float64),
                       term.numpy().astype(bool), trunc.numpy().astype(bool), gamma=0.99, lam=0.95)
    np.testing.assert_allclose(ours_adv.numpy(), want, atol=1e-5, rtol=1e-5)
    # CleanRL is off exactly at each truncated step (and, through λ, at the steps of its
    # episode before it); it agrees on every step whose episode never reaches a truncation
    diff = (ours_adv - theirs_adv).abs()
    at_truncation = diff[trunc > 0]
    assert (at_truncation > 1e-3).all()
    expected = 0.99 * fv[trunc > 0]  # the missing γ·V(final observation) term, for a truncated step
    torch.testing.assert_close((ours_adv - theirs_adv)[trunc > 0], expected, atol=1e-4, rtol=1e-4)


# -- Stable-Baselines3 -------------------------------------------------------------


def _filled_buffers(seed, n_steps=32, n_envs=3):
    gymnasium = pytest.importorskip("gymnasium")
    from stable_baselines3.common.buffers import RolloutBuffer

    from ppo_core.integrations.sb3 import GAERolloutBuffer

    obs_space = gymnasium.spaces.Box(-1, 1, (2,), np.float32)
    act_space = gymnasium.spaces.Discrete(2)
    rng = np.random.default_rng(seed)
    buffers = [cls(n_steps, obs_space, act_space, gamma=0.98, gae_lambda=0.9, n_envs=n_envs)
               for cls in (RolloutBuffer, GAERolloutBuffer)]
    starts = rng.random((n_steps, n_envs)) < 0.1
    starts[0] = True
    rows = [(rng.normal(size=(n_envs, 2)).astype(np.float32), rng.integers(0, 2, (n_envs, 1)),
             rng.normal(size=n_envs).astype(np.float32), starts[t], torch.as_tensor(rng.normal(size=n_envs)),
             torch.as_tensor(rng.normal(size=n_envs))) for t in range(n_steps)]
    for buf in buffers:
        for row in rows:
            buf.add(*row)
    last_values = torch.as_tensor(rng.normal(size=(n_envs, 1)))
    dones = rng.random(n_envs) < 0.3
    for buf in buffers:
        buf.compute_returns_and_advantage(last_values, dones)
    return buffers


@pytest.mark.parametrize("seed", range(5))
def test_sb3_buffer_gives_sb3s_advantages_and_returns(seed):
    pytest.importorskip("stable_baselines3")
    theirs, ours = _filled_buffers(seed)
    assert ours.advantages.dtype == theirs.advantages.dtype == np.float32
    np.testing.assert_allclose(ours.advantages, theirs.advantages, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ours.returns, theirs.returns, atol=1e-5, rtol=1e-5)


def test_sb3_ppo_learns_cartpole_with_the_buffer():
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO
    from stable_baselines3.common.evaluation import evaluate_policy

    from ppo_core.integrations.sb3 import GAERolloutBuffer

    torch.set_num_threads(1)
    model = PPO("MlpPolicy", "CartPole-v1", rollout_buffer_class=GAERolloutBuffer, seed=0, n_steps=512,
                batch_size=64, device="cpu", verbose=0)
    assert isinstance(model.rollout_buffer, GAERolloutBuffer)
    model.learn(total_timesteps=20_480)
    mean_return, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=10, deterministic=True)
    assert mean_return >= 150  # a random policy gets about 22
