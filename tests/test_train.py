"""The PPO trainer: config, rollouts and bootstrapping, update, checkpoints, CLI, learning."""

import dataclasses
import io
import json
import logging
import math
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gymnasium = pytest.importorskip("gymnasium")
pytest.importorskip("matplotlib")
pytest.importorskip("tomli_w")

from gymnasium.wrappers import TimeLimit  # noqa: E402

import ppo_core  # noqa: E402
from ppo_core import cli  # noqa: E402
from ppo_core import train as T  # noqa: E402
from ppo_core.train import checkpoint as ckpt  # noqa: E402
from ppo_core.train.policies import env_action  # noqa: E402
from ppo_core.train.runlog import METRICS_COLUMNS, TIMING_COLUMNS, WALL_CLOCK_COLUMNS, read_metrics  # noqa: E402
from toy_envs import CountdownEnv, SelfKillingEnv, ValueIsObs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


# -- a synthetic environment ------------------------------------------------------




def _small(**kw):
    base = dict(env_id="CartPole-v1", num_envs=2, num_steps=32, total_steps=64, num_minibatches=2,
                update_epochs=2, checkpoint_every=1, normalize_obs=True, normalize_reward=True)
    base.update(kw)
    return T.PPOConfig(**base)


# -- config -------------------------------------------------------------------------


def test_config_roundtrip_toml_and_json(tmp_path):
    cfg = T.PPOConfig(env_id="Pendulum-v1", hidden_sizes=[32, 16], target_kl=0.02)
    for name in ("c.toml", "c.json"):
        T.save_config(cfg, tmp_path / name)
        assert T.load_config(tmp_path / name) == cfg


@pytest.mark.parametrize("name", ["cartpole.toml", "pendulum.toml"])
def test_shipped_configs_load(name):
    cfg = T.load_config(CONFIGS / name)
    assert cfg.env_id


@pytest.mark.parametrize("text, match", [
    ('nonsense_key = 1\n', "unknown config key 'nonsense_key'"),
    ('gamma = 1.5\n', "'gamma' must be in"),
    ('num_envs = "four"\n', "'num_envs': expected int"),
    ('total_steps = -5\n', "'total_steps' must be >= 0"),
    ('gamma = \n', "cannot parse"),
])
def test_config_errors_name_the_key(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(T.ConfigError, match=match):
        T.load_config(path)


def test_num_updates_rounds_up_and_is_at_least_one():
    assert _small(total_steps=0).num_updates == 1
    assert _small(total_steps=65).num_updates == 2


# -- rollouts: the final observation, not the reset one, bootstraps truncations ---------




@pytest.mark.parametrize("terminate", [False, True])
def test_rollout_bootstraps_truncation_with_final_obs_and_termination_with_nothing(terminate):
    horizon = 4

    def make():
        env = CountdownEnv(horizon, terminate=terminate)
        return env if terminate else TimeLimit(env, horizon)

    envs = T.make_vector_env(make, 1, 0)
    from ppo_core.train.normalize import ObsNormalizer, RewardScaler

    collector = T.RolloutCollector(envs, ValueIsObs(), ObsNormalizer((1,), enabled=False),
                                   RewardScaler(1, 0.9, enabled=False), seed=0)
    ro = collector.collect(10)
    envs.close()
    ends = [t for t in range(10) if (t + 1) % horizon == 0]
    assert ro.terminated[:, 0].tolist() == [terminate and t in ends for t in range(10)]
    assert ro.truncated[:, 0].tolist() == [(not terminate) and t in ends for t in range(10)]
    for t in range(10):
        if t in ends:
            # Final obs has 0 steps remaining -> value 0 here; the reset obs would give 100.
            assert ro.next_values[t, 0].item() == 0.0
        elif t < 9:
            assert ro.next_values[t, 0].item() == ro.values[t + 1, 0].item()
    assert ro.episode_returns == [float(horizon)] * len(ends)


class _NonZeroFinal(torch.nn.Module):
    """Value 5 everywhere: a truncated step must bootstrap with 5, a terminated one with 0."""

    def forward(self, obs):
        return torch.distributions.Categorical(logits=torch.zeros(obs.shape[0], 2)), torch.full((obs.shape[0],), 5.0)


def test_truncated_steps_keep_the_final_value():
    from ppo_core.train.normalize import ObsNormalizer, RewardScaler

    envs = T.make_vector_env(lambda: TimeLimit(CountdownEnv(3), 3), 2, 0)
    ro = T.RolloutCollector(envs, _NonZeroFinal(), ObsNormalizer((1,), enabled=False),
                            RewardScaler(2, 0.9, enabled=False), seed=0).collect(6)
    envs.close()
    assert ro.truncated[2].all() and (ro.next_values[2] == 5.0).all()


# -- the learned value: truncation vs termination ------------------------------------


class PhaseEnv(CountdownEnv):
    """Reward 1 every step; observation = phase (t mod H) / H, a state the agent revisits.

    Under a time limit the final observation (phase 0) is an ordinary state whose
    value is learned, as in a real truncated task.
    """

    def _obs(self):
        return np.array([(self.t % self.horizon) / self.horizon], np.float32)


def _value_run(tmp_path, terminate, gamma=0.9, horizon=10):
    def make():
        env = PhaseEnv(horizon, terminate=terminate)
        return env if terminate else TimeLimit(env, horizon)

    cfg = T.PPOConfig(env_id="countdown", num_envs=4, num_steps=32, total_steps=4 * 32 * 60,
                      num_minibatches=4, update_epochs=8, learning_rate=3e-3, anneal_lr=False, gamma=gamma,
                      lam=0.95, normalize_obs=False, normalize_reward=False, vf_clip_coef=0.0, vf_coef=1.0,
                      max_grad_norm=1.0, checkpoint_every=1000, seed=3)
    trainer = T.Trainer(cfg, tmp_path / ("term" if terminate else "trunc"), env_fn=make)
    trainer.train()
    phase = np.arange(horizon)
    with torch.no_grad():
        obs = torch.tensor(phase / horizon, dtype=torch.float32)[:, None]
        return horizon - phase, trainer.policy(obs)[1].numpy()


def test_truncated_episode_value_approaches_infinite_horizon_value(tmp_path):
    gamma = 0.9
    remaining, values = _value_run(tmp_path, terminate=False, gamma=gamma)
    # Never terminates: V = 1 / (1 - gamma) = 10 in every state, not the steps left.
    np.testing.assert_allclose(values, 1 / (1 - gamma), rtol=0.1)


def test_terminated_episode_value_approaches_remaining_steps_sum(tmp_path):
    gamma = 0.9
    remaining, values = _value_run(tmp_path, terminate=True, gamma=gamma)
    expected = (1 - gamma ** remaining) / (1 - gamma)  # 1 + γ + ... + γ^(k-1)
    np.testing.assert_allclose(values, expected, rtol=0.1, atol=0.15)


# -- runs: outputs, reproducibility, resume, kill ------------------------------------


def test_tiny_budget_gives_checkpoint_metrics_row_and_curve(tmp_path):
    run = tmp_path / "run"
    row = T.train(_small(total_steps=1), run)
    assert row["step"] == 64
    rows = read_metrics(run / "metrics.csv")
    assert len(rows) == 1 and list(rows[0]) == METRICS_COLUMNS and rows[0]["step"] == "64"
    assert len(ckpt.list_checkpoints(run)) == 1
    assert (run / "learning_curve.png").stat().st_size > 0
    assert T.load_config(run / "config.toml").total_steps == 1


def test_same_seed_gives_identical_metrics(tmp_path):
    wall_clock = WALL_CLOCK_COLUMNS
    results = []
    for name in ("a", "b"):
        T.train(_small(total_steps=256, seed=7), tmp_path / name)
        rows = read_metrics(tmp_path / name / "metrics.csv")
        results.append([{k: v for k, v in r.items() if k not in wall_clock} for r in rows])
    assert len(results[0]) == 4
    assert results[0] == results[1]


def test_resume_continues_step_count_and_state(tmp_path):
    run = tmp_path / "run"
    T.train(_small(total_steps=128), run)
    first = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    trainer = T.Trainer.resume(run, total_steps=256)
    assert trainer.global_step == 128 and trainer.update == 2
    assert trainer.obs_normalizer.rms.count == first["obs_normalizer"]["rms"]["count"]
    for k, v in trainer.policy.state_dict().items():
        assert torch.equal(v, first["policy"][k])
    trainer.train()
    rows = read_metrics(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [64, 128, 192, 256]
    assert T.load_config(run / "config.toml").total_steps == 256


def test_resume_drops_metrics_rows_after_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    T.train(_small(total_steps=64 * 3, checkpoint_every=2), run)  # checkpoints at updates 2 and 3
    for p in ckpt.list_checkpoints(run)[1:]:
        p.unlink()  # as if killed after update 3's row but before its checkpoint
    trainer = T.Trainer.resume(run)
    assert trainer.global_step == 128
    assert [int(r["step"]) for r in read_metrics(run / "metrics.csv")] == [64, 128]
    trainer.train()
    assert [int(r["step"]) for r in read_metrics(run / "metrics.csv")] == [64, 128, 192]


def test_new_run_refuses_a_directory_that_holds_a_run(tmp_path):
    T.train(_small(), tmp_path / "run")
    with pytest.raises(T.RunDirError, match="already holds a run"):
        T.Trainer(_small(), tmp_path / "run")


def test_sigkill_leaves_a_loadable_checkpoint(tmp_path):
    cfg_path = tmp_path / "cfg.toml"
    T.save_config(_small(total_steps=10_000_000, num_steps=16, update_epochs=1), cfg_path)
    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "ppo_core", "train", "--config", str(cfg_path),
                                 "--out", str(run), "--quiet"], stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while len(ckpt.list_checkpoints(run)) < 3:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no checkpoints written"
            time.sleep(0.05)
        # Checkpoints are written every update here, so a random moment lands
        # inside a write often enough.
        time.sleep(float(rng.uniform(0.0, 0.5)))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for path in ckpt.list_checkpoints(run):
        state = ckpt.load_checkpoint(path)
        assert state["step"] > 0
    policy = T.load_policy(run)
    assert policy.act(np.zeros(4, np.float32)) in (0, 1)
    # And the run resumes from it.
    trainer = T.Trainer.resume(run, total_steps=policy.step + 64)
    trainer.train()


# -- worker crash recovery ------------------------------------------------------------------




def test_killed_worker_is_replaced_and_its_rollout_discarded(tmp_path, caplog):
    marker = str(tmp_path / "killed")
    cfg = _small(env_id="", async_envs=True, num_steps=16, total_steps=32 * 3)
    # Each worker steps 16 times per rollout: step 20 is in the middle of update 2.
    trainer = T.Trainer(cfg, tmp_path / "run", env_fn=lambda: SelfKillingEnv(20, marker))
    with caplog.at_level(logging.WARNING, logger="ppo_core.train"):
        row = trainer.train()
    assert os.path.exists(marker)
    assert trainer.env_restarts == 1
    assert any("environment worker failed in update 2" in r.getMessage() for r in caplog.records)
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [32, 64, 96] and row["step"] == 96
    assert [r["env_restarts"] for r in rows] == ["0", "1", "1"]
    # Only whole episodes of 8 steps were trained on and counted.
    assert float(rows[-1]["episode_length"]) == 8.0
    assert trainer.envs is None  # closed, workers gone


def test_workers_that_keep_dying_give_a_clear_error(tmp_path):
    cfg = _small(env_id="", async_envs=True, num_steps=16, total_steps=32, max_env_restarts=2)
    trainer = T.Trainer(cfg, tmp_path / "run", env_fn=lambda: SelfKillingEnv(3))
    with pytest.raises(T.EnvWorkerError, match="failed 3 times in a row"):
        trainer.train()
    assert trainer.env_restarts == 2
    assert not ckpt.list_checkpoints(tmp_path / "run")


def test_periodic_evaluation_is_logged_and_drawn(tmp_path):
    run = tmp_path / "run"
    T.train(_small(total_steps=64 * 3, eval_every_steps=128, eval_episodes=2), run)
    rows = read_metrics(run / "metrics.csv")
    assert [r["eval_step"] for r in rows] == ["", "128", "192"]  # every 128 steps and at the end
    assert float(rows[1]["eval_mean_return"]) > 0 and float(rows[1]["eval_seconds"]) > 0
    assert rows[0]["eval_mean_return"] == "" and rows[0]["eval_success_rate"] == ""
    assert (run / "learning_curve.png").stat().st_size > 0


def test_timing_columns_add_up(tmp_path):
    trainer = T.Trainer(_small(total_steps=64 * 2), tmp_path / "run")
    trainer.train()
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    for r in rows:
        parts = [float(r[c]) for c in TIMING_COLUMNS]
        assert all(p >= 0 for p in parts) and float(r["env_seconds"]) > 0 and float(r["update_seconds"]) > 0
    summary = trainer.timing_summary()
    assert summary["shares"].keys() == {"env", "inference", "advantage", "update", "eval", "other"}
    assert sum(summary["shares"].values()) == pytest.approx(1.0)
    assert summary["steps_per_second"] > 0


# -- presets --------------------------------------------------------------------------------


def test_metadrive_preset_agrees_with_the_shipped_config():
    # The wheel does not ship configs/: `ppo-core train` uses the preset in code.
    path = CONFIGS / "metadrive.toml"
    preset = T.preset("metadrive").to_dict()
    raw = T.read_config_file(path)
    for key, value in raw.items():
        assert preset[key] == value, key
    assert T.load_config(path, defaults=T.preset()) == T.preset()
    assert T.preset("metadrive").eval_every_steps > 0
    assert T.preset("CartPole-v1") == T.PPOConfig(env_id="CartPole-v1")


def test_metadrive_env_kwargs_are_checked_in_the_config():
    with pytest.raises(T.ConfigError, match="'horizon' must be an integer >= 1"):
        T.preset().replace(env_kwargs={"horizon": 0})
    with pytest.raises(T.ConfigError, match="unknown MetaDrive option 'horizn'"):
        T.preset().replace(env_kwargs={"horizn": 5})


# -- policies and pieces ----------------------------------------------------------------


def test_load_policy_acts_on_single_and_batched_obs(tmp_path):
    T.train(_small(), tmp_path / "run")
    for policy in (T.load_policy(tmp_path / "run"), ppo_core.load_policy(tmp_path / "run")):
        single = policy.act(np.zeros(4, np.float32))
        assert np.ndim(single) == 0 and single in (0, 1)
        batch = policy.act(np.zeros((5, 4), np.float32), deterministic=False)
        assert batch.shape == (5,)
        with pytest.raises(ValueError, match="shape"):
            policy.act(np.zeros(3))


def test_gaussian_policy_logs_unclipped_samples_and_clips_for_the_env(tmp_path):
    cfg = _small(env_id="Pendulum-v1", init_log_std=1.5)  # std 4.5 on bounds of ±2
    trainer = T.Trainer(cfg, tmp_path / "run")
    ro = trainer.collector.collect(32)
    assert ro.actions.abs().max() > 2.0  # the buffer holds the raw samples
    with torch.no_grad():
        dist, _ = trainer.policy(ro.obs.reshape(-1, 3))
        torch.testing.assert_close(dist.log_prob(ro.actions.reshape(-1, 1)), ro.log_probs.reshape(-1))
    trainer.close()
    policy_actions = env_action(torch.tensor([[-9.0], [0.5], [9.0]]), trainer.action_space)
    np.testing.assert_array_equal(policy_actions, np.array([[-2.0], [0.5], [2.0]], np.float32))


@pytest.mark.parametrize("estimator", ["gae", "returns_minus_baseline", "reward_to_go"])
@pytest.mark.parametrize("loss", ["clipped_surrogate", "policy_gradient"])
def test_named_pieces_run(tmp_path, estimator, loss):
    row = T.train(_small(advantage_estimator=estimator, policy_loss=loss, shared_network=True,
                         target_kl=0.001), tmp_path / "run")
    assert all(math.isfinite(row[k]) for k in ("policy_loss", "value_loss", "approx_kl"))


def test_custom_pieces_are_called(tmp_path):
    calls = {"estimator": 0, "loss": 0, "net": 0}

    def estimator(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        calls["estimator"] += 1
        return T.gae(rewards, values, next_values, terminated, truncated, gamma=gamma, lam=0.0)

    def loss(new_log_prob, old_log_prob, advantages, *, clip_coef):
        calls["loss"] += 1
        return T.policy_gradient(new_log_prob, old_log_prob, advantages, clip_coef=clip_coef)

    def net(obs_space, act_space, config):
        calls["net"] += 1
        return T.MLPActorCritic(4, act_space, hidden_sizes=[8], shared=True)

    T.train(_small(), tmp_path / "run", advantage_estimator=estimator, policy_loss=loss, policy_factory=net)
    assert calls == {"estimator": 1, "loss": 2 * 2, "net": 1}
    policy = T.load_policy(tmp_path / "run", policy_factory=net)
    assert policy.act(np.zeros(4)) in (0, 1)


def test_docs_swap_example_runs(tmp_path):
    # The example in docs/trainer.md, on a tiny budget.
    block = _docs_block("def ppo_kl_penalty")
    assert len(block.strip().splitlines()) < 20
    block = block.replace("total_steps=50_000", "total_steps=64").replace('"runs/kl-penalty"', repr(str(tmp_path / "r")))
    exec(compile(block, "docs/trainer.md", "exec"), {})
    assert len(read_metrics(tmp_path / "r" / "metrics.csv")) == 1


def _docs_block(marker):
    text = (REPO / "docs" / "trainer.md").read_text()
    blocks = [b.split("```")[0] for b in text.split("```python")[1:] if marker in b.split("```")[0]]
    assert len(blocks) == 1, marker
    return blocks[0]


def test_docs_loss_example_runs(tmp_path):
    block = _docs_block("def huber_value_loss")
    block = block.replace("total_steps=50_000", "total_steps=64").replace('"runs/huber"', repr(str(tmp_path / "r")))
    exec(compile(block, "docs/trainer.md", "exec"), {})
    assert len(read_metrics(tmp_path / "r" / "metrics.csv")) == 1


def test_docs_onnx_example_runs(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    T.train(_small(total_steps=64), tmp_path / "run")
    assert cli.main(["export", str(tmp_path / "run"), "--format", "onnx", "--out", str(tmp_path / "cartpole.onnx")]) == 0
    block = _docs_block("onnxruntime.InferenceSession").replace('"cartpole.onnx"', repr(str(tmp_path / "cartpole.onnx")))
    assert len(block.strip().splitlines()) <= 11
    capsys.readouterr()
    exec(compile(block, "docs/trainer.md", "exec"), {})
    assert float(capsys.readouterr().out.strip()) >= 1


def test_minibatch_of_one_stays_finite(tmp_path):
    row = T.train(_small(num_envs=1, num_steps=2, num_minibatches=2, total_steps=2), tmp_path / "run")
    assert math.isfinite(row["policy_loss"]) and math.isfinite(row["value_loss"])


# -- command line -----------------------------------------------------------------------


def _run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, match", [
    (["train", "--env", "NoSuchEnv-v0", "--total-steps", "1"], "unknown environment id 'NoSuchEnv-v0'"),
    (["train", "--env", "CartPole-v1", "--total-steps", "-5"], "must be >= 0"),
    (["train", "--env", "CartPole-v1", "--horizon", "5"], "--horizon only applies to MetaDrive"),
    (["train", "--env", "metadrive", "--traffic-density", "2"], "must be in [0, 1]"),
    (["train", "--env", "metadrive", "--num-scenarios", "0"], "must be >= 1"),
    (["eval", "/nonexistent/run", "--env", "metadrive"], "run directory not found"),
    (["train", "--env", "CartPole-v1", "--config", "/nonexistent.toml"], "config file not found"),
    (["eval", "/nonexistent/run"], "run directory not found"),
    (["train", "--resume", "/nonexistent/run"], "run directory not found"),
    (["train", "--resume", "x", "--seed", "3"], "cannot be combined"),
    (["eval", "."], "is not a run directory"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_bad_input_gives_one_error_line(capsys, tmp_path, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run_cli(capsys, *argv, *(["--out", str(tmp_path / "r")] if argv[0] == "train"
                                                and "--resume" not in argv else []))
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("ppo-core: error:") and match in err
    assert not (tmp_path / "r").exists()


def test_cli_unknown_config_key(capsys, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('env_id = "CartPole-v1"\nlearning_rat = 0.1\n')
    code, _, err = _run_cli(capsys, "train", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert code != 0 and "unknown config key 'learning_rat'" in err and len(err.splitlines()) == 1


def test_cli_missing_extra_names_it(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    code, _, err = _run_cli(capsys, "train", "--env", "CartPole-v1")
    assert code == 1 and 'pip install "ppo_core[train]"' in err and "torch" in err


def test_cli_does_not_import_torch_at_startup():
    code = "import sys, ppo_core.cli; assert not {'torch', 'gymnasium', 'metadrive'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_train_eval_resume_no_traceback(capsys, tmp_path):
    run = tmp_path / "run"
    code, out, err = _run_cli(capsys, "train", "--env", "CartPole-v1", "--total-steps", "100", "--num-envs", "2",
                              "--seed", "3", "--out", str(run))
    assert code == 0 and "done" in out and "update 1 " in err  # plain log lines: not a TTY
    code, out, _ = _run_cli(capsys, "eval", str(run), "--episodes", "2", "--json")
    result = json.loads(out)
    assert code == 0 and result["episodes"] == 2
    assert {"mean_return", "std_return", "mean_length"} <= set(result)
    code, out, _ = _run_cli(capsys, "eval", str(run), "--episodes", "2", "--stochastic")
    assert code == 0 and "mean return" in out
    code, out, _ = _run_cli(capsys, "train", "--resume", str(run))
    assert code == 0 and "already finished" in out
    code, _, err = _run_cli(capsys, "train", "--env", "CartPole-v1", "--out", str(run))
    assert code != 0 and "already holds a run" in err


# -- learning ------------------------------------------------------------------------


def test_cartpole_short_training_beats_random(tmp_path):
    # Random CartPole play scores about 22; the shipped config reaches 500 around
    # 30k steps. 25k steps (about 8 s here) must clearly beat random.
    cfg = T.load_config(CONFIGS / "cartpole.toml").replace(total_steps=25_000, seed=1)
    T.train(cfg, tmp_path / "run")
    result = T.evaluate(T.load_policy(tmp_path / "run"), episodes=10, seed=123)
    assert result["mean_return"] > 150, result


# -- losses with state, state-dependent std, logged action std ----------------------


def test_adaptive_kl_penalty_adds_the_kl_term_and_adapts_its_coefficient():
    penalty = T.AdaptiveKLPenalty(kl_coef=0.2, kl_target=0.01)
    new = torch.tensor([0.1, -0.3, 0.2, 0.0], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([0.0, 0.0, 0.0, 0.1], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    got = penalty(new, old, adv, clip_coef=0.2)
    ratio = (new - old).exp()
    surrogate = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
    kl = ((ratio - 1) - (new - old)).mean()
    torch.testing.assert_close(got.loss, surrogate + 0.2 * kl)
    got.loss.backward()
    new2 = new.detach().clone().requires_grad_(True)
    r2 = (new2 - old).exp()
    ref = -torch.min(r2 * adv, r2.clamp(0.8, 1.2) * adv).mean() + 0.2 * ((r2 - 1) - (new2 - old)).mean()
    ref.backward()
    torch.testing.assert_close(new.grad, new2.grad)
    # RLlib's rule: x1.5 above 2 x target, x0.5 below target / 2, unchanged between.
    assert penalty.after_update(0.05) == {"kl_coef": 0.2} and penalty.kl_coef == pytest.approx(0.3)
    penalty.after_update(0.01)
    assert penalty.kl_coef == pytest.approx(0.3)
    penalty.after_update(0.001)
    assert penalty.kl_coef == pytest.approx(0.15)
    restored = T.AdaptiveKLPenalty()
    restored.load_state_dict(penalty.state_dict())
    assert restored.kl_coef == pytest.approx(0.15) and restored.kl_target == 0.01


def test_kl_penalty_loss_by_name_logs_and_resumes_its_coefficient(tmp_path):
    cfg = _small(env_id="Pendulum-v1", policy_loss="kl_penalty", kl_coef=0.5, kl_target=1e-6, total_steps=128)
    T.train(cfg, tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    coefs = [float(r["kl_coef"]) for r in rows]
    assert coefs[0] == 0.5 and coefs[1] == pytest.approx(0.75)  # any real update exceeds 2e-6
    trainer = T.Trainer.resume(tmp_path / "run", total_steps=192)
    assert trainer.policy_loss.kl_coef == pytest.approx(0.5 * 1.5 ** 2)
    trainer.close()
    with pytest.raises(T.ConfigError, match="kl_target"):
        _small(policy_loss="kl_penalty", kl_target=0.0)


def test_state_dependent_std_varies_with_the_state_and_starts_at_init_log_std(tmp_path):
    cfg = _small(env_id="Pendulum-v1", state_dependent_std=True, init_log_std=-0.5, total_steps=128)
    trainer = T.Trainer(cfg, tmp_path / "run")
    assert not hasattr(trainer.policy, "log_std")
    obs = torch.randn(64, 3)
    with torch.no_grad():
        std0 = trainer.policy(obs)[0].base_dist.stddev
    np.testing.assert_allclose(std0.log().numpy(), -0.5, atol=0.05)  # small head weights
    trainer.train()
    with torch.no_grad():
        std1 = trainer.policy(obs)[0].base_dist.stddev
    assert float(std1.std()) > 0  # not one std for every state
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert all(0.3 < float(r["action_std"]) < 1.0 for r in rows)
    policy = T.load_policy(tmp_path / "run")
    assert policy.act(np.zeros((2, 3), np.float32)).shape == (2, 1)


def test_final_std_schedules_the_log_std_linearly_in_the_log_instead_of_learning_it(tmp_path):
    cfg = _small(env_id="Pendulum-v1", init_log_std=0.0, final_std=0.1, total_steps=256)  # 4 updates
    trainer = T.Trainer(cfg, tmp_path / "run")
    assert not trainer.policy.log_std.requires_grad
    assert all(p is not trainer.policy.log_std for g in trainer.optimizer.param_groups for p in g["params"])
    trainer.train()
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    expected = np.exp(np.linspace(0.0, math.log(0.1), 4))
    np.testing.assert_allclose([float(r["action_std"]) for r in rows], expected, rtol=1e-5)
    np.testing.assert_allclose(trainer.policy.log_std.detach().numpy(), math.log(0.1), rtol=1e-6)
    trainer.close()
    learned = T.Trainer(_small(env_id="Pendulum-v1", init_log_std=0.0, total_steps=256), tmp_path / "learned")
    learned.train()
    assert float(learned.policy.log_std.detach().abs().max()) > 0  # without final_std the gradient moves it
    learned.close()


def test_final_std_config_errors(tmp_path):
    with pytest.raises(T.ConfigError, match="final_std"):
        _small(env_id="Pendulum-v1", final_std=-0.1)
    with pytest.raises(T.ConfigError, match="final_std"):
        _small(env_id="Pendulum-v1", final_std=0.1, state_dependent_std=True)
    with pytest.raises(T.ConfigError, match="final_std"):
        _small(env_id="Pendulum-v1", final_std=0.1, action_dist="beta", init_log_std=-1.0)
    with pytest.raises(T.ConfigError, match="final_std"):  # CartPole: a Categorical policy has no log-std
        T.Trainer(_small(final_std=0.1), tmp_path / "run")


# -- std_scales: a noise level per env ------------------------------------------------


def test_scale_std_multiplies_each_rows_std_and_keeps_the_mean():
    from torch.distributions import Independent, Normal
    from ppo_core.train.policies import scale_std

    loc, std = torch.randn(3, 2), torch.rand(3, 2) + 0.1
    k = torch.tensor([1.0, 0.5, 2.0])
    scaled = scale_std(Independent(Normal(loc, std), 1), k)
    a = torch.randn(3, 2)
    torch.testing.assert_close(scaled.log_prob(a), Independent(Normal(loc, std * k[:, None]), 1).log_prob(a))
    torch.testing.assert_close(scaled.mean, loc)
    with pytest.raises(ValueError, match="one per row"):
        scale_std(Independent(Normal(loc, std), 1), k[:2])
    with pytest.raises(TypeError, match="Gaussian"):
        scale_std(torch.distributions.Categorical(logits=torch.zeros(3, 2)), k)


def test_std_scales_sample_each_env_at_its_noise_and_score_it_there(tmp_path):
    scales = [1.0, 1.0, 0.25, 0.25]
    cfg = _small(env_id="Pendulum-v1", num_envs=4, num_steps=256, total_steps=1024, std_scales=scales,
                 init_log_std=0.0, num_minibatches=1, update_epochs=1)
    trainer = T.Trainer(cfg, tmp_path / "run")
    policy = trainer.policy
    trainer.source.sync_policy(policy)
    ro = trainer.source.collect(cfg.num_steps)
    assert ro.std_scales is not None and ro.std_scales.shape == (256, 4)
    assert ro.std_scales[0].tolist() == scales
    with torch.no_grad():
        dist, _ = policy(ro.obs.reshape(-1, ro.obs.shape[-1]))
        mean = dist.mean.reshape(256, 4, -1)
        # the stored log-probs are those of the scaled distribution each action came from
        from ppo_core.train.policies import scale_std
        scored = scale_std(dist, ro.std_scales.reshape(-1)).log_prob(ro.actions.reshape(-1, ro.actions.shape[-1]))
    torch.testing.assert_close(scored.reshape(256, 4), ro.log_probs)
    noise = (ro.actions - mean).std(dim=(0, 2))  # policy std 1 at the start
    assert 0.85 < float(noise[:2].mean()) < 1.15 and 0.2 < float(noise[2:].mean()) < 0.3
    # one epoch of one minibatch: the first (and only) step's ratios are exactly 1 when the
    # update scores each sample where it was drawn; unscaled scores would give a large KL
    stats = trainer.learn(ro, None)
    assert abs(stats["approx_kl"]) < 1e-6 and stats["clip_fraction"] == 0.0
    np.testing.assert_allclose(stats["action_std"], 1.0, rtol=1e-6)  # the policy's own std
    np.testing.assert_allclose(stats["entropy"], 0.5 * math.log(2 * math.pi * math.e), rtol=1e-6)  # and entropy
    trainer.close()


def test_std_scale_weight_multiplies_each_samples_advantage_by_its_scale(tmp_path):
    scales = [1.0, 0.25, 0.5, 1.0]
    seen = {}
    for weight in (False, True):
        cfg = _small(env_id="Pendulum-v1", num_envs=4, num_steps=64, total_steps=256, std_scales=scales,
                     std_scale_weight=weight, num_minibatches=2, update_epochs=1, seed=3)
        trainer = T.Trainer(cfg, tmp_path / f"run{weight}")
        trainer.source.sync_policy(trainer.policy)
        ro = trainer.source.collect(cfg.num_steps)
        inner, recorded = trainer.updater.loss, []

        def recording(mb, config, inner=inner, recorded=recorded):
            recorded.append((mb.obs.clone(), mb.advantages.detach().clone()))
            return inner(mb, config)

        trainer.updater.loss = recording
        trainer.learn(ro, None)
        trainer.close()
        # each row's scale, found by its observation in the rollout
        flat_obs = ro.obs.reshape(-1, ro.obs.shape[-1])
        flat_scale = ro.std_scales.reshape(-1)
        rows = []
        for obs, adv in recorded:
            match = (obs[:, None, :] == flat_obs[None, :, :]).all(-1).float().argmax(1)
            rows.append((adv, flat_scale[match]))
        seen[weight] = rows
    assert len(seen[True]) == len(seen[False]) == 2
    for (plain, k), (weighted, k2) in zip(seen[False], seen[True]):
        torch.testing.assert_close(k, k2)
        assert set(k.tolist()) == {1.0, 0.25, 0.5}  # every scale is in every minibatch
        torch.testing.assert_close(weighted, plain * k)  # same rollout and shuffle: only the weight differs


def test_std_scale_weight_needs_std_scales():
    with pytest.raises(T.ConfigError, match="std_scale_weight"):
        _small(env_id="Pendulum-v1", std_scale_weight=True)
    with pytest.raises(T.ConfigError, match="std_scale_weight"):
        _small(env_id="Pendulum-v1", std_scale_weight=1)


def test_std_scale_weight_refuses_a_rollout_without_std_scales(tmp_path):
    cfg = _small(env_id="Pendulum-v1", num_envs=2, std_scales=[1.0, 0.5], std_scale_weight=True)
    trainer = T.Trainer(cfg, tmp_path / "run")
    trainer.source.sync_policy(trainer.policy)
    ro = dataclasses.replace(trainer.source.collect(cfg.num_steps), std_scales=None)
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    with pytest.raises(ValueError, match="std_scale_weight.*this rollout has none"):
        trainer.learn(ro, None)
    trainer.close()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))  # nothing was updated


@pytest.mark.parametrize("bad", ["none", "ones"])
def test_a_source_that_ignores_std_scales_is_refused(tmp_path, bad):
    cfg = _small(env_id="Pendulum-v1", std_scales=[1.0, 0.5])
    trainer = T.Trainer(cfg, tmp_path / "run")
    collect = trainer.source.collect
    scales = None if bad == "none" else torch.ones(cfg.num_steps, cfg.num_envs)
    trainer.source.collect = lambda n: dataclasses.replace(collect(n), std_scales=scales)
    with pytest.raises(T.ConfigError, match=r"'std_scales' is \[1.0, 0.5\], but the rollout source"):
        trainer.train()
    trainer.close()


def test_a_run_with_std_scales_resumes_with_them(tmp_path):
    cfg = _small(env_id="Pendulum-v1", std_scales=[1.0, 0.5], total_steps=64)
    T.Trainer(cfg, tmp_path / "run").train()
    resumed = T.Trainer.resume(tmp_path / "run", total_steps=128)
    assert resumed.config.std_scales == [1.0, 0.5]
    resumed.train()
    assert resumed.global_step == 128
    resumed.close()


def test_std_scales_in_pipelined_groups_follow_each_env():
    import gymnasium
    from ppo_core.train.normalize import ObsNormalizer, RewardScaler
    from ppo_core.train.policies import make_mlp_policy, scale_std

    envs = _groups(lambda: gymnasium.make("Pendulum-v1"), 4)
    policy = make_mlp_policy(envs.single_observation_space, envs.single_action_space,
                             _small(env_id="Pendulum-v1", init_log_std=0.0))
    scales = [0.25, 1.0, 1.0, 0.25]  # a low-noise env in each group
    collector = T.RolloutCollector(envs, policy, ObsNormalizer((3,), enabled=False),
                                   RewardScaler(4, 0.9, enabled=False), seed=0, std_scales=scales)
    ro = collector.collect(200)
    envs.close()
    with torch.no_grad():
        dist, _ = policy(ro.obs.reshape(-1, 3))
    torch.testing.assert_close(scale_std(dist, ro.std_scales.reshape(-1)).log_prob(ro.actions.reshape(-1, 1)),
                               ro.log_probs.reshape(-1))
    noise = (ro.actions - dist.mean.reshape(200, 4, 1)).std(dim=(0, 2))
    assert 0.2 < float(noise[[0, 3]].mean()) < 0.3 and 0.85 < float(noise[[1, 2]].mean()) < 1.15


def test_std_scales_of_ones_learn_exactly_as_without(tmp_path):
    runs = {}
    for name, extra in (("plain", {}), ("ones", {"std_scales": [1.0, 1.0]})):
        trainer = T.Trainer(_small(env_id="Pendulum-v1", total_steps=128, **extra), tmp_path / name)
        trainer.train()
        runs[name] = [p.detach().clone() for p in trainer.policy.parameters()]
        trainer.close()
    for a, b in zip(runs["plain"], runs["ones"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_std_scales_config_errors(tmp_path):
    from ppo_core.train.overrides import parse_set

    assert parse_set(["std_scales=1,0.25"]) == {"std_scales": [1.0, 0.25]}
    assert parse_set(["std_scales=[1, 0.25]"]) == {"std_scales": [1, 0.25]}
    with pytest.raises(T.ConfigError, match="std_scales"):
        _small(env_id="Pendulum-v1", std_scales=[1.0])  # num_envs = 2
    with pytest.raises(T.ConfigError, match="std_scales"):
        _small(env_id="Pendulum-v1", std_scales=[1.0, 0.0])
    with pytest.raises(T.ConfigError, match="std_scales"):
        _small(env_id="Pendulum-v1", std_scales=[1.0, float("nan")])
    with pytest.raises(T.ConfigError, match="std_scales"):
        _small(env_id="Pendulum-v1", std_scales=[1.0, True])
    with pytest.raises(T.ConfigError, match="std_scales"):
        _small(env_id="Pendulum-v1", std_scales=[1.0, 0.5], action_dist="beta", init_log_std=-1.0)
    with pytest.raises(T.ConfigError, match="std_scales"):  # CartPole: Discrete actions
        T.Trainer(_small(std_scales=[1.0, 0.5]), tmp_path / "run")


# -- Beta policy (action_dist = "beta") ---------------------------------------------


def _affine_beta(c1, c0, low, high):
    # The reference: torch's Beta moved onto [low, high] by an affine transform.
    from torch.distributions import AffineTransform, Beta, Independent, TransformedDistribution
    return Independent(TransformedDistribution(Beta(c1, c0), [AffineTransform(low, high - low)]), 1)


def test_bounded_beta_log_prob_entropy_and_moments_match_an_affine_beta():
    from ppo_core.train.policies import BoundedBeta
    g = torch.Generator().manual_seed(0)
    c1, c0 = 1 + 4 * torch.rand(6, 2, generator=g, dtype=torch.float64), 1 + 4 * torch.rand(6, 2, generator=g, dtype=torch.float64)
    low, high = torch.tensor([-2.0, 0.0], dtype=torch.float64), torch.tensor([2.0, 0.5], dtype=torch.float64)
    dist, ref = BoundedBeta(c1, c0, low, high), _affine_beta(c1, c0, low, high)
    assert dist.batch_shape == (6,) and dist.event_shape == (2,)
    a = dist.sample()
    assert a.shape == (6, 2) and bool(((a > low) & (a < high)).all())
    torch.testing.assert_close(dist.log_prob(a), ref.log_prob(a))
    beta_entropy = torch.distributions.Beta(c1, c0).entropy() + torch.log(high - low)
    torch.testing.assert_close(dist.entropy(), beta_entropy.sum(-1))
    torch.testing.assert_close(dist.mean, low + (high - low) * c1 / (c1 + c0))
    torch.testing.assert_close(dist.mode, low + (high - low) * (c1 - 1) / (c1 + c0 - 2))
    var01 = c1 * c0 / ((c1 + c0) ** 2 * (c1 + c0 + 1))
    torch.testing.assert_close(dist.stddev, (high - low) * var01.sqrt())
    many = BoundedBeta(c1[:1].expand(20000, 2), c0[:1].expand(20000, 2), low, high).sample()
    torch.testing.assert_close(many.mean(0), dist.mean[0], atol=0.02, rtol=0)
    # A value on a bound (where the density of α, β > 1 is 0) gets a finite log-prob, not -inf.
    assert bool(torch.isfinite(dist.log_prob(low.expand(6, 2))).all())


def test_bounded_beta_samples_from_a_generator_are_reproducible_and_leave_the_global_rng_alone():
    from ppo_core.train.policies import BoundedBeta
    dist = BoundedBeta(torch.full((3, 2), 2.0), torch.full((3, 2), 3.0), torch.tensor(-1.0), torch.tensor(1.0))
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a = dist.sample_with(torch.Generator().manual_seed(1))
    b = dist.sample_with(torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(torch.rand(1), before)
    assert not torch.equal(a, dist.sample_with(torch.Generator().manual_seed(2)))


def test_beta_policy_trains_acts_inside_the_bounds_and_starts_at_init_log_std(tmp_path):
    cfg = _small(env_id="Pendulum-v1", action_dist="beta", init_log_std=-0.7, total_steps=256, num_steps=64)
    trainer = T.Trainer(cfg, tmp_path / "run")
    obs = torch.randn(64, 3)
    with torch.no_grad():
        std0 = trainer.policy(obs)[0].stddev
    np.testing.assert_allclose(std0.numpy(), math.exp(-0.7), rtol=0.02)  # in the action's units, as the Gaussian
    trainer.train()
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert all(0.0 < float(r["action_std"]) < 2.0 for r in rows)
    assert all(math.isfinite(float(r["policy_loss"])) for r in rows)
    policy = T.load_policy(tmp_path / "run")
    o = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    with torch.no_grad():
        dist, _ = policy.net(torch.from_numpy(policy.obs_normalizer(o)))
    np.testing.assert_allclose(policy.act(o), dist.mean.numpy(), rtol=1e-6)  # deterministic: the mean
    sampled = policy.act(o, deterministic=False, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (16, 1) and np.all(np.abs(sampled) < 2.0)
    again = policy.act(o, deterministic=False, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(sampled, again)


def test_beta_policy_config_errors(tmp_path):
    with pytest.raises(T.ConfigError, match="action_dist"):
        _small(action_dist="laplace")
    with pytest.raises(T.ConfigError, match="state_dependent_std"):
        _small(env_id="Pendulum-v1", action_dist="beta", state_dependent_std=True)
    with pytest.raises(T.ConfigError, match="init_log_std"):  # std 1.65 > 2 / sqrt(3), the uniform's on [-2, 2]
        T.Trainer(_small(env_id="Pendulum-v1", action_dist="beta", init_log_std=0.5), tmp_path / "run")
    from ppo_core.train.policies import MLPActorCritic
    with pytest.raises(T.ConfigError, match="finite bounds"):
        MLPActorCritic(3, gymnasium.spaces.Box(-np.inf, np.inf, (1,)), action_dist="beta", init_log_std=-1.0)


def test_action_std_column_is_the_policy_std_and_empty_for_discrete_actions(tmp_path):
    T.train(_small(env_id="Pendulum-v1", init_log_std=-1.0, update_epochs=1, num_minibatches=1,
                   learning_rate=0.0), tmp_path / "pendulum")
    (row,) = read_metrics(tmp_path / "pendulum" / "metrics.csv")
    assert float(row["action_std"]) == pytest.approx(math.exp(-1.0))
    T.train(_small(), tmp_path / "cartpole")
    assert {r["action_std"] for r in read_metrics(tmp_path / "cartpole" / "metrics.csv")} == {""}
    assert {r["train_success_rate"] for r in read_metrics(tmp_path / "cartpole" / "metrics.csv")} == {""}


# -- pipelined collection over env groups -------------------------------------------


def _groups(make, num_envs, seed=0):
    from ppo_core.train.env_groups import EnvGroups

    half = num_envs // 2
    return EnvGroups([T.make_vector_env(make, half, seed, asynchronous=True),
                      T.make_vector_env(make, half, seed + half, asynchronous=True)])


@pytest.mark.parametrize("terminate", [False, True])
def test_pipelined_rollout_keeps_the_bootstrapping_contract(terminate):
    from ppo_core.train.normalize import ObsNormalizer, RewardScaler

    horizon = 4

    def make():
        env = CountdownEnv(horizon, terminate=terminate)
        return env if terminate else TimeLimit(env, horizon)

    envs = _groups(make, 4)
    collector = T.RolloutCollector(envs, ValueIsObs(), ObsNormalizer((1,), enabled=False),
                                   RewardScaler(4, 0.9, enabled=False), seed=0)
    ro = collector.collect(10)
    again = collector.collect(3)  # the next rollout continues the episodes
    envs.close()
    ends = [t for t in range(10) if (t + 1) % horizon == 0]
    for n in range(4):
        assert ro.terminated[:, n].tolist() == [terminate and t in ends for t in range(10)]
        assert ro.truncated[:, n].tolist() == [(not terminate) and t in ends for t in range(10)]
        for t in range(10):
            if t in ends:
                assert ro.next_values[t, n].item() == 0.0  # V(final obs), never V(reset obs) = 100
            elif t < 9:
                assert ro.next_values[t, n].item() == ro.values[t + 1, n].item()
        # obs of step t: horizon - (t mod horizon) steps left, scaled
        np.testing.assert_allclose(ro.obs[:, n, 0].numpy(), [(horizon - t % horizon) / horizon for t in range(10)])
        np.testing.assert_allclose(again.obs[:, n, 0].numpy(), [(horizon - t % horizon) / horizon
                                                                for t in range(10, 13)])
    assert ro.episode_returns == [float(horizon)] * (4 * len(ends))


def test_pipelined_reward_scaling_equals_the_per_env_recursion():
    from ppo_core.train.normalize import RewardScaler

    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(20, 4))
    done = rng.random((20, 4)) < 0.2
    whole, split = RewardScaler(4, 0.9, enabled=True), RewardScaler(4, 0.9, enabled=True)
    for t in range(20):
        whole(rewards[t], done[t])
        split(rewards[t, :2], done[t, :2], slice(0, 2))
        split(rewards[t, 2:], done[t, 2:], slice(2, 4))
    np.testing.assert_allclose(split.returns, whole.returns)  # the same per-env discounted returns
    assert split.rms.count == whole.rms.count
    np.testing.assert_allclose(split.rms.mean, whole.rms.mean)  # the same samples, other batches


def test_env_groups_train_and_recover_from_a_killed_worker(tmp_path, caplog):
    marker = str(tmp_path / "killed")
    cfg = _small(env_id="", async_envs=True, num_envs=4, env_groups=2, num_steps=16, total_steps=64 * 3)
    trainer = T.Trainer(cfg, tmp_path / "run", env_fn=lambda: SelfKillingEnv(20, marker))
    with caplog.at_level(logging.WARNING, logger="ppo_core.train"):
        trainer.train()
    assert os.path.exists(marker) and trainer.env_restarts == 1
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [64, 128, 192]
    assert float(rows[-1]["episode_length"]) == 8.0


def test_env_groups_config_is_checked():
    with pytest.raises(T.ConfigError, match="env_groups"):
        _small(num_envs=3, env_groups=2, async_envs=True)
    with pytest.raises(T.ConfigError, match="async_envs"):
        _small(num_envs=4, env_groups=2)


def test_episode_actor_rows_do_not_depend_on_the_batching(tmp_path):
    T.train(_small(env_id="Pendulum-v1", total_steps=64), tmp_path / "run")
    policy = T.load_policy(tmp_path / "run")
    obs = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    keys = [10, 11, 12, 13, 14, 15]
    for deterministic in (True, False):
        whole = policy.episode_actor(deterministic, seed=1)(obs, keys)
        split_actor = policy.episode_actor(deterministic, seed=1)
        split = np.concatenate([split_actor(obs[i:i + 2], keys[i:i + 2]) for i in (0, 2, 4)])
        np.testing.assert_array_equal(whole, split)
    first = policy.episode_actor(False, seed=1)(obs, keys)
    other_seed = policy.episode_actor(False, seed=2)(obs, keys)
    assert not np.array_equal(first, other_seed)
    np.testing.assert_array_equal(policy.episode_actor(True)(obs, keys), np.stack([policy.act(o[None])[0] for o in obs]))


# -- one owner per run; damaged checkpoints ------------------------------------------


def test_a_run_has_one_trainer_at_a_time(tmp_path, capsys):
    seen = []

    def second_trainer(trainer, row):  # runs while the first trainer owns the run
        if row["update"] == 1:
            with pytest.raises(T.RunDirError, match=rf"in use by another trainer \(process {os.getpid()}\)"):
                T.Trainer(_small(total_steps=128), tmp_path / "run")
            seen.append(cli.main(["train", "--resume", str(tmp_path / "run"), "--total-steps", "64", "--quiet"]))
            seen.append(capsys.readouterr().err)

    first = T.Trainer(_small(total_steps=128), tmp_path / "run", callbacks=[second_trainer])
    first.train()  # still the owner: the refused attempts wrote nothing
    code, err = seen
    assert code == 1 and "in use by another trainer" in err and len(err.strip().splitlines()) == 1
    assert [int(r["step"]) for r in read_metrics(tmp_path / "run" / "metrics.csv")] == [64, 128]
    resumed = T.Trainer.resume(tmp_path / "run", total_steps=192)  # closed: free again
    resumed.train()
    assert [int(r["step"]) for r in read_metrics(tmp_path / "run" / "metrics.csv")] == [64, 128, 192]


def test_a_killed_trainer_leaves_no_stale_lock(tmp_path):
    from ppo_core.train.runlock import RunLock

    run = tmp_path / "run"
    run.mkdir()
    code = ("import os, signal, sys; from ppo_core.train.runlock import RunLock; "
            f"RunLock({str(run)!r}).acquire(); print('held', flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL and "held" in proc.stdout
    lock = RunLock(run)
    lock.acquire()  # the kernel released the dead holder's lock
    assert lock.held
    lock.release()


@pytest.mark.parametrize("damage", ["random", "truncated", "empty", "not_a_checkpoint", "fifo"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_good_one(tmp_path, caplog, damage):
    run = tmp_path / "run"
    T.train(_small(total_steps=128), run)
    good, newest = ckpt.list_checkpoints(run)
    if damage == "fifo":
        newest.unlink()
        fifo = newest.with_name("step_000000000999.pt")
        os.mkfifo(fifo)
    elif damage == "random":
        with open(newest, "r+b") as f:
            f.seek(100)
            f.write(os.urandom(5000))
    elif damage == "truncated":
        with open(newest, "r+b") as f:
            f.truncate(newest.stat().st_size // 2)
    elif damage == "empty":
        newest.write_bytes(b"")
    else:
        torch.save({"hello": 1}, newest)
    with caplog.at_level(logging.WARNING, logger="ppo_core.train"):
        policy = T.load_policy(run)
        trainer = T.Trainer.resume(run, total_steps=192)
    assert policy.step == 64 and trainer.global_step == 64
    trainer.close()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert (damage == "fifo") or (newest.name in warned and "trying the one before it" in warned)
    assert "weights_only=False" not in warned


def test_no_loadable_checkpoint_is_one_error_line(tmp_path, capsys):
    run = tmp_path / "run"
    T.train(_small(total_steps=128), run)
    for path in ckpt.list_checkpoints(run):
        path.write_bytes(b"garbage")
    code = cli.main(["eval", str(run), "--episodes", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "none of its 2 checkpoint(s) loads" in err and len(err.strip().splitlines()) == 1


def test_expected_clipped_action_is_the_mean_of_the_clipped_gaussian():
    from ppo_core.train.policies import expected_clipped_action

    mean = torch.tensor([[0.0, 0.5, 1.3, -2.7, 0.99]], dtype=torch.float64)
    std = torch.tensor([[0.3, 0.35, 0.35, 0.3, 1e-9]], dtype=torch.float64)
    low, high = np.full(5, -1.0), np.full(5, 1.0)
    got = expected_clipped_action(mean, std, low, high)
    g = torch.Generator().manual_seed(0)
    samples = (mean + std * torch.randn((400_000, 5), generator=g, dtype=torch.float64)).clamp(-1, 1)
    # Monte Carlo with 4e5 samples: standard error below 0.35 / 632 = 6e-4
    torch.testing.assert_close(got, samples.mean(0, keepdim=True), rtol=0, atol=3e-3)
    assert abs(got[0, 0]) < 1e-12 and got[0, 4] == pytest.approx(0.99)  # symmetric; std -> 0 gives the mean
    assert 0.9 < got[0, 2] < 0.99 and got[0, 3] == pytest.approx(-1.0, abs=1e-6)


def test_deterministic_action_setting_chooses_what_the_policy_sends(tmp_path):
    T.train(_small(env_id="Pendulum-v1", total_steps=64, init_log_std=0.5, deterministic_action="expected"),
            tmp_path / "run")
    policy = T.load_policy(tmp_path / "run")
    obs = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
    with torch.no_grad():
        dist, _ = policy.net(torch.from_numpy(policy.obs_normalizer(obs)))
    from ppo_core.train.policies import expected_clipped_action

    expected = expected_clipped_action(dist.base_dist.loc, dist.base_dist.scale, np.array([-2.0]), np.array([2.0]))
    np.testing.assert_allclose(policy.act(obs), expected.numpy(), rtol=1e-6)
    policy.deterministic_action = "mean"
    np.testing.assert_allclose(policy.act(obs), dist.base_dist.loc.clamp(-2, 2).numpy(), rtol=1e-6)
    with pytest.raises(T.ConfigError, match="deterministic_action"):
        _small(deterministic_action="median")


def test_scenario_shards_must_divide_the_workers():
    with pytest.raises(T.ConfigError, match="scenario_shards"):
        T.preset().replace(num_envs=4, env_kwargs={"num_scenarios": 100, "scenario_shards": 8})
    assert T.preset().replace(num_envs=8, env_kwargs={"num_scenarios": 100, "scenario_shards": 4}).num_envs == 8


def test_expected_clipped_action_with_unbounded_dimensions():
    from ppo_core.train.policies import expected_clipped_action

    got = expected_clipped_action(torch.tensor([[0.3, 2.0]]), torch.tensor([[0.5, 0.5]]),
                                  np.array([-np.inf, -1.0]), np.array([np.inf, 1.0]))
    assert torch.isfinite(got).all() and got[0, 0].item() == pytest.approx(0.3, abs=1e-6)


# -- faults and bad inputs: one line, nothing on disk damaged --------------------------


def _chattr(path, flag):
    """``chattr +i/-i``; False where the file system or the user cannot (not root, no chattr)."""
    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def test_out_that_is_a_file_or_under_a_file_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    for out, match in ((afile, "is a file, not a folder"), (afile / "sub", "lies under a file")):
        code, _, err = _run_cli(capsys, "train", "--env", "CartPole-v1", "--total-steps", "64", "--out", str(out))
        assert code == 1 and match in err and len(err.strip().splitlines()) == 1
    assert afile.read_text() == "mine\n"


def test_out_in_an_immutable_folder_is_one_line(tmp_path, capsys):
    imm = tmp_path / "imm"
    imm.mkdir()
    if not _chattr(imm, "+i"):
        pytest.skip("chattr +i is not available here (needs root and a file system that has it)")
    try:
        for out in (imm / "run", imm):
            code, _, err = _run_cli(capsys, "train", "--env", "CartPole-v1", "--total-steps", "64",
                                    "--out", str(out))
            assert code == 1 and "cannot write in run directory" in err and len(err.strip().splitlines()) == 1
    finally:
        _chattr(imm, "-i")
    assert list(imm.iterdir()) == []


def test_a_folder_that_holds_other_files_is_refused(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.csv").write_text("someone else's\n")
    (other / "learning_curve.png").write_bytes(b"\x89PNG")
    code, _, err = _run_cli(capsys, "train", "--env", "CartPole-v1", "--total-steps", "64", "--out", str(other))
    assert code == 1 and "is not empty and is not a run" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in other.iterdir()) == ["learning_curve.png", "metrics.csv"]  # no lock left either
    assert (other / "metrics.csv").read_text() == "someone else's\n"
    with pytest.raises(T.RunDirError, match="not empty"):
        T.Trainer(_small(total_steps=64), other)
    empty = tmp_path / "empty"
    empty.mkdir()
    T.train(_small(total_steps=64), empty)  # an empty folder is fine


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_zero(tmp_path, caplog):
    run = tmp_path / "run"
    trainer = T.Trainer(_small(total_steps=256, checkpoint_every=100), run)
    trainer.close()  # like a SIGKILL before the first checkpoint: config.toml, metrics.csv, no checkpoint
    partial = run / "checkpoints" / ".step_000000000064.pt.4242.tmp"
    partial.parent.mkdir()
    partial.write_bytes(b"half a checkpoint")
    with pytest.raises(T.RunDirError, match="already holds a run; resume it"):
        T.Trainer(_small(total_steps=256), run)
    with caplog.at_level(logging.WARNING, logger="ppo_core.train"):
        resumed = T.Trainer.resume(run, total_steps=128)
    assert "no checkpoint yet; starting it over from step 0" in caplog.text
    assert resumed.global_step == 0 and not partial.exists()
    resumed.train()
    assert [int(r["step"]) for r in read_metrics(run / "metrics.csv")] == [64, 128]
    assert ckpt.latest_checkpoint(run).name == "step_000000000128.pt"


def test_partial_checkpoint_files_are_removed_on_resume(tmp_path):
    run = tmp_path / "run"
    T.train(_small(total_steps=64), run)
    partial = run / "checkpoints" / ".step_000000000128.pt.999.tmp"
    partial.write_bytes(b"cut")
    T.Trainer.resume(run, total_steps=128).train()
    assert not partial.exists() and [p.name for p in ckpt.list_checkpoints(run)][-1] == "step_000000000128.pt"


def _write_fails_at_update(n, error):
    def callback(trainer, row):
        if row["update"] == n:
            def fail(*args, **kwargs):
                raise error
            trainer.metrics.log = fail  # the next row's write fails, as on a read-only mount
    return callback


def test_a_run_directory_that_stops_taking_writes_keeps_its_data_and_resumes(tmp_path, capsys):
    import errno

    run = tmp_path / "run"
    trainer = T.Trainer(_small(total_steps=256), run,
                        callbacks=[_write_fails_at_update(2, OSError(errno.EROFS, "Read-only file system"))])
    with pytest.raises(T.RunDirError) as info:
        trainer.train()
    message = str(info.value)
    assert "Read-only file system" in message and f"ppo-core train --resume {run}" in message
    assert "step_000000000128.pt" in message and len(message.splitlines()) == 1
    assert [int(r["step"]) for r in read_metrics(run / "metrics.csv")] == [64, 128]
    T.Trainer.resume(run, total_steps=256).train()  # writable again: resume works
    assert [int(r["step"]) for r in read_metrics(run / "metrics.csv")] == [64, 128, 192, 256]


def test_a_run_directory_made_immutable_mid_run_is_one_line_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    made = []

    def freeze(trainer, row):
        if row["update"] == 1:
            made.append(_chattr(run, "+i") and _chattr(run / "checkpoints", "+i"))

    try:
        code = None
        config = _small(total_steps=256)
        trainer = T.Trainer(config, run, callbacks=[freeze])
        try:
            trainer.train()
        except T.RunDirError as e:
            code, message = 1, str(e)
    finally:
        _chattr(run / "checkpoints", "-i")
        _chattr(run, "-i")
    if not made[0]:
        pytest.skip("chattr +i is not available here (needs root and a file system that has it)")
    assert code == 1 and "cannot write to run directory" in message and "--resume" in message
    assert ckpt.latest_checkpoint(run).name == "step_000000000064.pt"
    T.Trainer.resume(run, total_steps=256).train()
    assert [int(r["step"]) for r in read_metrics(run / "metrics.csv")] == [64, 128, 192, 256]


def test_a_metrics_row_cut_short_by_a_failed_write_is_dropped_on_resume(tmp_path):
    run = tmp_path / "run"
    T.train(_small(total_steps=64), run)
    with open(run / "metrics.csv", "a") as f:
        f.write("12")  # a row cut short (disk full): its step field alone would read as step 12
    T.Trainer.resume(run, total_steps=128).train()
    assert [int(r["step"]) for r in read_metrics(run / "metrics.csv")] == [64, 128]


@pytest.mark.parametrize("setup, argv, match", [
    ("random_config", ["--config", "g.toml"], "not UTF-8 text"),
    (None, ["--env", "CartPole-v1", "--seed", "100000000000000000000000"], "below 2**63"),
    ("bogus_kwarg", ["--config", "b.toml"], "env_kwargs key 'bogus': CartPole-v1 does not take it"),
    ("huge_gamma", ["--config", "c.toml"], "config key 'gamma': expected a finite number"),
    ("huge_clip", ["--config", "d.toml"], "config key 'clip_coef': expected a finite number"),
])
def test_bad_config_values_are_one_line(tmp_path, capsys, monkeypatch, setup, argv, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.toml").write_bytes(bytes(range(128, 256)) + os.urandom(172))
    (tmp_path / "b.toml").write_text('env_id = "CartPole-v1"\nenv_kwargs = {bogus = 1}\n')
    (tmp_path / "c.toml").write_text(f'env_id = "CartPole-v1"\ngamma = {10**400}\n')
    (tmp_path / "d.toml").write_text(f'env_id = "CartPole-v1"\nclip_coef = {10**400}\n')
    code, _, err = _run_cli(capsys, "train", *argv, "--total-steps", "64", "--out", str(tmp_path / "r"))
    assert code in (1, 2) and match in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_config_integers_must_fit_a_toml_file():
    with pytest.raises(T.ConfigError, match="'total_steps'.*out of range"):
        _small(total_steps=2**63)
    with pytest.raises(T.ConfigError, match="'seed' must be >= 0"):
        _small(seed=-1)


def test_a_checkpoint_never_chooses_a_module_to_import(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    T.train(_small(total_steps=64), run)
    # A checkpoint whose env id names a module: evaluating it must not import that module.
    for path in ckpt.list_checkpoints(run):
        state = ckpt.load_checkpoint(path)
        state["config"]["env_id"] = "planted_module_xyz:Evil-v0"
        torch.save(state, path)
    planted = tmp_path / "planted_module_xyz.py"
    planted.write_text("open(__file__ + '.ran', 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = _run_cli(capsys, "eval", str(run), "--episodes", "1")
    assert code == 1 and "a checkpoint never chooses code to run" in err and len(err.strip().splitlines()) == 1
    assert "--env planted_module_xyz:Evil-v0" in err
    assert not (tmp_path / "planted_module_xyz.py.ran").exists()
    code, _, err = _run_cli(capsys, "eval", str(run), "--episodes", "1", "--env", "CartPole-v1")
    assert code == 0


# -- the rollout source seam ------------------------------------------------------------


class ReplaySource:
    """A rollout source that hands out recorded rollouts, in order: no environment at all."""

    def __init__(self, rollouts, observation_space, action_space, obs_normalizer):
        self.rollouts = list(rollouts)
        self.observation_space, self.action_space = observation_space, action_space
        self.num_envs = rollouts[0].obs.shape[1]
        self.obs_normalizer = obs_normalizer
        self.timings = {"env": 0.0, "inference": 0.0}
        self.restarts = 0
        self.next = 0
        self.synced = []
        self.closed = False

    def sync_policy(self, policy):
        self.synced.append({k: v.clone() for k, v in policy.state_dict().items()})

    def collect(self, num_steps):
        rollout = self.rollouts[self.next]
        assert rollout.obs.shape[0] == num_steps
        self.next += 1
        return rollout

    def state_dict(self):
        return {"next": self.next}

    def load_state_dict(self, state):
        self.next = state["next"]

    def close(self):
        self.closed = True


def _recorded(tmp_path, n):
    recorder = T.Trainer(_small(total_steps=64 * n), tmp_path / "recorder")
    rollouts = [recorder.source.collect(32) for _ in range(n)]
    spaces = recorder.observation_space, recorder.action_space
    normalizer = recorder.obs_normalizer
    recorder.close()
    return rollouts, spaces, normalizer


def test_a_trainer_learns_from_any_rollout_source(tmp_path):
    rollouts, (obs_space, act_space), normalizer = _recorded(tmp_path, 3)
    source = ReplaySource(rollouts[:2], obs_space, act_space, normalizer)
    assert isinstance(source, T.RolloutSource)  # the protocol is structural: no base class needed
    cfg = _small(total_steps=128)
    trainer = T.Trainer(cfg, tmp_path / "run", source=source)
    assert trainer.source is source
    trainer.train()
    assert source.next == 2 and source.closed
    # it was handed the weights before each collect: the first as built, the second after one update
    assert len(source.synced) == 3
    assert any(not torch.equal(source.synced[1][k], source.synced[2][k]) for k in source.synced[1])
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [64, 128]
    assert float(rows[0]["episodes"]) == len(rollouts[0].episode_returns)
    # the source's state is checkpointed and restored on resume
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "run"))
    assert state["source"] == {"next": 2}
    again = ReplaySource(rollouts, obs_space, act_space, normalizer)
    resumed = T.Trainer.resume(tmp_path / "run", total_steps=192, source=again)
    assert again.next == 2
    resumed.train()
    assert again.next == 3 and resumed.global_step == 192
    # the policy loads without the source: normalization statistics travel with the model
    policy = T.load_policy(tmp_path / "run")
    assert policy.step == 192


def test_a_loss_of_your_own_replaces_the_whole_objective(tmp_path):
    from ppo_core.train.update import LossOutput, PPOLoss

    seen = []

    class ValueOnly:
        """No policy term: the policy must stay as built, the critic must learn."""

        def __call__(self, mb, config):
            seen.append((mb.obs.shape[0], mb.advantages.shape, config.vf_coef))
            loss = ((mb.new_values - mb.returns) ** 2).mean()
            return LossOutput(loss, 0.0, {"value_only_loss": float(loss.detach())})

    cfg = _small(total_steps=128)
    rows = []
    trainer = T.Trainer(cfg, tmp_path / "run", loss=ValueOnly(), callbacks=[lambda t, row: rows.append(row)])
    actor_before = {k: v.clone() for k, v in trainer.policy.state_dict().items() if "actor" in k or "pi" in k}
    trainer.train()
    assert len(seen) == 2 * cfg.update_epochs * cfg.num_minibatches
    assert seen[0][0] == cfg.batch_size // cfg.num_minibatches
    assert len(rows) == 2 and rows[-1]["value_only_loss"] >= 0 and "policy_loss" not in rows[-1]
    after = trainer.policy.state_dict()
    assert actor_before and all(torch.equal(v, after[k]) for k, v in actor_before.items())
    with pytest.raises(TypeError, match="either loss"):
        T.Trainer(cfg, tmp_path / "run2", loss=ValueOnly(), policy_loss=T.clipped_surrogate)
    # the default objective is this interface too, around the policy loss of the config
    assert isinstance(T.Trainer(cfg, tmp_path / "run3").loss, PPOLoss)


def test_an_env_family_registered_outside_the_package_trains_and_evaluates(tmp_path, monkeypatch, capsys):
    from ppo_core.envs import registry
    from toy_envs import COUNTDOWN_ENTRY

    monkeypatch.setitem(registry.FAMILIES, "countdown", COUNTDOWN_ENTRY)
    monkeypatch.setattr(registry, "_loaded", {})
    cfg = T.preset("countdown-v0")
    assert (cfg.env_id, cfg.num_steps, cfg.env_kwargs) == ("countdown-v0", 16, {"countdown_horizon": 6})
    with pytest.raises(T.ConfigError, match="'countdown_horizon' must be an integer >= 1"):
        cfg.replace(env_kwargs={"countdown_horizon": 0})
    run = tmp_path / "run"
    assert cli.main(["train", "--env", "countdown", "--countdown-horizon", "4", "--out", str(run), "--quiet"]) == 0
    assert T.load_config(run / "config.toml").env_kwargs == {"countdown_horizon": 4}
    rows = read_metrics(run / "metrics.csv")
    assert int(rows[-1]["step"]) == 64 and "train_success_rate" in rows[-1]
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--episodes", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 3 and 0.0 <= result["success_rate"] <= 1.0
    # its options belong to it: given for another env, one line
    code = cli.main(["train", "--env", "CartPole-v1", "--countdown-horizon", "4", "--out", str(tmp_path / "x"),
                     "--quiet"])
    assert code == 2 and "--countdown-horizon only applies to Countdown (--env countdown)" in capsys.readouterr().err


def test_old_checkpoints_with_top_level_statistics_still_resume(tmp_path):
    run = tmp_path / "run"
    T.train(_small(total_steps=64), run)
    path = ckpt.latest_checkpoint(run)
    state = ckpt.load_checkpoint(path)
    source_state = state.pop("source")
    state["reward_scaler"] = source_state["reward_scaler"]  # the layout before rollout sources
    state["collector"] = {"recent_returns": state["recent_episodes"]["returns"],
                          "recent_lengths": state["recent_episodes"]["lengths"]}
    del state["recent_episodes"]
    torch.save(state, path)
    trainer = T.Trainer.resume(run, total_steps=128)
    assert list(trainer.recent_returns) == state["collector"]["recent_returns"]
    assert trainer.source.reward_scaler.state_dict()["rms"]["count"] == source_state["reward_scaler"]["rms"]["count"]
    trainer.train()


# -- settings from the command line ------------------------------------------------


def test_set_reads_every_config_field_by_its_type():
    from ppo_core.train.overrides import parse_set

    got = parse_set(["learning_rate=1e-3", "total_steps=1e6", "anneal_lr=false", "hidden_sizes=32,32",
                     "activation=relu", "env_kwargs={\"a\": 1}", "num_envs=4", "seed=1_000"])
    assert got == {"learning_rate": 1e-3, "total_steps": 1_000_000, "anneal_lr": False, "hidden_sizes": [32, 32],
                   "activation": "relu", "env_kwargs": {"a": 1}, "num_envs": 4, "seed": 1000}
    assert parse_set(["hidden_sizes=[64, 16]"]) == {"hidden_sizes": [64, 16]}


@pytest.mark.parametrize("item, message", [
    ("lerning_rate=1e-3", "--set lerning_rate: no such config key"),
    ("rate=1", "did you mean learning_rate"),
    ("num_envs=two", "--set num_envs=two: num_envs takes an integer"),
    ("num_envs=2.5", "num_envs takes an integer"),
    ("anneal_lr=maybe", "anneal_lr takes true or false"),
    ("gamma=high", "gamma takes a number"),
    ("hidden_sizes=a,b", "hidden_sizes takes a list of integers"),
    ("std_scales=1,x", "std_scales takes a list of numbers"),
    ("env_kwargs=[1]", "env_kwargs takes a JSON object"),
    ("seed", "--set 'seed': expected KEY=VALUE"),
    ("env_id=CartPole-v1", "name the environment with --env"),
])
def test_set_refuses_in_one_line_naming_the_key(item, message):
    from ppo_core.train.overrides import parse_set

    with pytest.raises(T.ConfigError, match=re.escape(message)):
        parse_set([item])


def test_the_config_fields_read_without_torch_are_the_dataclass_fields():
    import dataclasses

    from ppo_core.settings import config_fields

    def kind_of(value):  # what the dataclass's own default says the field holds
        for t, kind in ((bool, "bool"), (int, "int"), (float, "float"), (list, "list of int"), (dict, "table")):
            if isinstance(value, t):
                return kind
        return "str"

    fields, docs = config_fields(), T.field_docs()
    assert list(fields) == [f.name for f in dataclasses.fields(T.PPOConfig)]
    for f in dataclasses.fields(T.PPOConfig):
        read = fields[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert read.kind == ("list of float" if str(f.type) == "List[float]" else kind_of(default)), f.name
        assert read.doc == docs.get(f.name, "") and read.doc, f.name
        if f.default is not dataclasses.MISSING:
            assert read.default == f.default and type(read.default) is type(f.default), f.name
        else:
            assert read.default is None, f.name
    code = ("import sys; from ppo_core.cli.main import build_parser; build_parser(); "
            "print(sorted(k for k in ('torch', 'gymnasium', 'ppo_core.train') if k in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_the_named_config_flags_are_generated_from_the_dataclass(capsys):
    """Every flag of train / compare / lrsweep / gradvar that sets a config key is made from
    its field: the flag's name, its help (the docstring's first sentence) and its type."""
    import argparse

    from ppo_core.cli.main import _TRAIN_CONFIG_FLAGS, build_parser
    from ppo_core.settings import config_fields

    fields = config_fields()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    seen = {}
    for command in ("train", "compare", "lrsweep", "gradvar"):
        for action in sub.choices[command]._actions:
            if action.dest not in fields or action.dest == "env_kwargs":  # --env-kwargs merges, typed by the env
                continue
            f = fields[action.dest]
            assert action.option_strings == [f.flag], (command, action.option_strings)
            assert action.help.startswith(f.summary), (command, f.name)
            assert action.type.__name__ == f.name, (command, f.name)  # the generated converter
            seen.setdefault(command, set()).add(f.name)
    assert seen["train"] == set(_TRAIN_CONFIG_FLAGS)
    assert {"total_steps", "num_envs", "eval_every_steps", "seed"} <= seen["compare"] == seen["lrsweep"] - {"anneal_lr"}
    assert {"num_envs", "num_steps", "gamma", "seed"} <= seen["gradvar"]
    for argv, message in [(["train", "--num-envs", "two"], "num_envs takes an integer, got 'two'"),
                          (["train", "--async-envs", "maybe"], "async_envs takes true or false"),
                          (["gradvar", "--gamma", "high", "--out", "x"], "gamma takes a number"),
                          (["compare", "ppo", "--out", "x"], "--total-steps"),  # required there
                          ]:
        code, _, err = _run_cli(capsys, *argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    args = build_parser().parse_args(["train", "--async-envs", "--seed", "3"])
    assert (args.async_envs, args.seed, args.num_envs) == (True, 3, None)
    assert build_parser().parse_args(["train", "--async-envs", "false"]).async_envs is False


def test_env_kwargs_as_pairs_or_json():
    from ppo_core.train.overrides import parse_env_kwargs

    assert parse_env_kwargs(["traffic_density=0.2", "map=SCS", "flag=true"]) == {
        "traffic_density": 0.2, "map": "SCS", "flag": True}
    assert parse_env_kwargs(['{"horizon": 500, "num_scenarios": 10}', "horizon=600"]) == {
        "horizon": 600, "num_scenarios": 10}
    with pytest.raises(T.ConfigError, match="not a JSON object"):
        parse_env_kwargs(["{bad"])


def test_train_takes_set_and_env_kwargs_and_a_resume_changes_only_safe_keys(tmp_path, capsys):
    run = tmp_path / "run"
    code = cli.main(["train", "--env", "CartPole-v1", "--set", "num_envs=2", "--set", "num_steps=32",
                     "--set", "total_steps=64", "--set", "hidden_sizes=16", "--set", "num_minibatches=2",
                     "--env-kwargs", "max_episode_steps=50", "--out", str(run), "--quiet"])
    assert code == 0
    cfg = T.load_config(run / "config.toml")
    assert (cfg.num_envs, cfg.num_steps, cfg.hidden_sizes, cfg.env_kwargs) == (2, 32, [16], {"max_episode_steps": 50})
    # the named flags go over --set
    code = cli.main(["train", "--env", "CartPole-v1", "--set", "seed=5", "--seed", "7", "--set", "total_steps=64",
                     "--set", "num_steps=32", "--out", str(tmp_path / "b"), "--quiet"])
    assert code == 0 and T.load_config(tmp_path / "b" / "config.toml").seed == 7
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--set", "total_steps=128", "--set", "eval_every_steps=64",
                     "--quiet"]) == 0
    cfg = T.load_config(run / "config.toml")
    assert (cfg.total_steps, cfg.eval_every_steps) == (128, 64)
    capsys.readouterr()
    code = cli.main(["train", "--resume", str(run), "--set", "learning_rate=1e-2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "learning_rate" in err and "cannot change" in err and len(err.strip().splitlines()) == 1
    assert T.load_config(run / "config.toml").learning_rate == cfg.learning_rate


def test_config_show_prints_the_resolved_config_with_its_docs(tmp_path, capsys):
    assert cli.main(["config", "show", "--env", "CartPole-v1", "--config", str(CONFIGS / "cartpole.toml"),
                     "--set", "seed=9"]) == 0
    out = capsys.readouterr().out
    assert "seed = 9" in out and "# Seed of torch, NumPy and the environments" in out
    path = tmp_path / "shown.toml"
    path.write_text(out)
    shown = T.load_config(path)  # what it prints is a config file that gives the same config
    expected = T.resolve_config("CartPole-v1", CONFIGS / "cartpole.toml", None, {"seed": 9})
    assert shown == expected
    assert cli.main(["config", "show", "--set", "bogus=1"]) == 1
    assert "no such config key" in capsys.readouterr().err


# -- export -------------------------------------------------------------------------

_RUN_EXPORTED = r"""
import json, sys
import numpy as np
kind, path, obs_path = sys.argv[1:]
obs = np.load(obs_path)
if kind == "torchscript":
    import torch
    action = torch.jit.load(path)(torch.from_numpy(obs))[0].numpy()
else:
    import onnxruntime
    action = onnxruntime.InferenceSession(path).run(None, {"obs": obs})[0]
assert not any(m == "ppo_core" or m.startswith("ppo_core.") for m in sys.modules), "ppo_core was imported"
print(json.dumps(action.tolist()))
"""


def _exported_actions(kind, path, obs, tmp_path):
    np.save(tmp_path / "obs.npy", obs)
    script = tmp_path / "run_exported.py"
    script.write_text(_RUN_EXPORTED)
    out = subprocess.run([sys.executable, "-I", str(script), kind, str(path), str(tmp_path / "obs.npy")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return np.array(json.loads(out.stdout))


def _real_observations(env_id, policy, n=64):
    import gymnasium

    env = gymnasium.make(env_id)
    obs, _ = env.reset(seed=3)
    rows = []
    for _ in range(n):
        rows.append(obs)
        obs, _, term, trunc, _ = env.step(policy.act(obs))
        if term or trunc:
            obs, _ = env.reset()
    return np.asarray(rows, np.float32)


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
@pytest.mark.parametrize("env_id, extra", [("CartPole-v1", {}), ("Pendulum-v1", {}),
                                           ("Pendulum-v1", {"deterministic_action": "expected",
                                                            "state_dependent_std": True}),
                                           ("Pendulum-v1", {"action_dist": "beta", "init_log_std": -0.5})])
def test_exported_policy_equals_load_policy_act(kind, env_id, extra, tmp_path):
    if kind == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    run = tmp_path / "run"
    T.train(_small(env_id=env_id, total_steps=128, **extra), run)
    policy = T.load_policy(run)
    path = tmp_path / f"policy.{kind}"
    assert cli.main(["export", str(run), "--format", kind, "--out", str(path)]) == 0
    rng = np.random.default_rng(0)
    shape = policy.observation_space.shape
    for obs in (rng.normal(0, 3, (37, *shape)).astype(np.float32), _real_observations(env_id, policy),
                rng.normal(0, 1, (1, *shape)).astype(np.float32)):
        got = _exported_actions(kind, path, obs, tmp_path)
        want = policy.act(obs)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_export_refuses_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    T.train(_small(total_steps=64), run)
    assert cli.main(["export", str(run), "--out", str(tmp_path / "x.pt"), "--checkpoint", "best"]) == 1
    assert "no best checkpoint" in capsys.readouterr().err
    assert cli.main(["export", str(run), "--out", str(tmp_path / "nowhere" / "x.pt")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.pt")]) == 1
    assert not (tmp_path / "x.pt").exists()


# -- the best policy is kept --------------------------------------------------------


def test_best_checkpoint_follows_held_out_return_and_loads_by_name(tmp_path, capsys):
    run = tmp_path / "run"
    T.train(_small(total_steps=512, eval_every_steps=64, eval_episodes=2), run)
    rows = [r for r in read_metrics(run / "metrics.csv") if r.get("eval_step")]
    returns = [float(r["eval_mean_return"]) for r in rows]
    best_row = rows[returns.index(max(returns))]  # the first of equal bests is kept
    assert ckpt.best_checkpoint(run) is not None
    policy = T.load_policy(run, "best")
    assert policy.step == int(best_row["eval_step"])
    assert T.load_policy(run, "latest").step == 512
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    assert state["best"] == {"step": policy.step, "score": [max(returns)]}
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--checkpoint", "best", "--episodes", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == policy.step
    assert cli.main(["export", str(run), "--checkpoint", "best", "--out", str(tmp_path / "best.pt")]) == 0
    # a resume keeps comparing against the best so far, also when best.pt is newer than the
    # last step checkpoint (an evaluation between two checkpoints)
    resumed = T.Trainer.resume(run, total_steps=576)
    assert resumed.best == state["best"]
    resumed.close()
    state["best"] = {"step": 64, "score": [-1.0]}
    torch.save(state, ckpt.latest_checkpoint(run))
    resumed = T.Trainer.resume(run, total_steps=576)
    assert resumed.best == {"step": policy.step, "score": [max(returns)]}
    resumed.close()


def test_best_is_chosen_by_success_then_route_completion_then_return():
    from ppo_core.train.evaluation import eval_score as _eval_score

    a = _eval_score({"eval_success_rate": 0.5, "eval_route_completion": 0.7, "eval_mean_return": 10.0})
    b = _eval_score({"eval_success_rate": 0.5, "eval_route_completion": 0.8, "eval_mean_return": 1.0})
    c = _eval_score({"eval_success_rate": 0.6, "eval_route_completion": 0.1, "eval_mean_return": -5.0})
    assert a < b < c
    assert _eval_score({"eval_mean_return": math.nan}) < _eval_score({"eval_mean_return": -1e9})
    assert _eval_score({}) is None


def test_a_run_stops_at_its_target_success(tmp_path, monkeypatch, capsys):
    from ppo_core.envs import registry
    from toy_envs import COUNTDOWN_ENTRY

    monkeypatch.setitem(registry.FAMILIES, "countdown", COUNTDOWN_ENTRY)
    monkeypatch.setattr(registry, "_loaded", {})
    run = tmp_path / "run"
    code = cli.main(["train", "--env", "countdown", "--set", "total_steps=640", "--set", "eval_every_steps=64",
                     "--set", "eval_episodes=4", "--set", "stop_at_success=0.01", "--set", "checkpoint_every=100",
                     "--out", str(run), "--quiet"])
    out = capsys.readouterr().out
    rows = read_metrics(run / "metrics.csv")
    first_hit = next(r for r in rows if r.get("eval_success_rate") and float(r["eval_success_rate"]) >= 0.01)
    assert code == 0 and "stopped early" in out
    assert rows[-1] is first_hit and int(rows[-1]["step"]) < 640
    assert ckpt.latest_checkpoint(run).name == f"step_{int(first_hit['step']):012d}.pt"
    with pytest.raises(T.ConfigError, match="stop_at_success"):
        _small(stop_at_success=1.5)
    # the target may be changed (or turned off) on resume
    assert cli.main(["train", "--resume", str(run), "--set", "stop_at_success=0", "--quiet"]) == 0
    assert int(read_metrics(run / "metrics.csv")[-1]["step"]) == 640


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_eval_gif_for_any_env_that_renders_rgb_array(env_id, tmp_path, capsys):
    from PIL import Image

    pytest.importorskip("pygame")
    run = tmp_path / "run"
    T.train(_small(env_id=env_id, total_steps=64), run)
    gif = tmp_path / "out" / "episode.gif"
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--episodes", "1", "--gif", str(gif), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    with Image.open(gif) as im:
        assert result["gif"]["frames"] == result["gif"]["length"] + 1  # the reset frame, then one a step
        assert 1 < im.n_frames <= result["gif"]["frames"]  # Pillow merges identical neighbours
        assert im.size[0] > 100
    # a bad path fails before any episode runs
    (tmp_path / "file").write_text("")
    assert cli.main(["eval", str(run), "--episodes", "1", "--gif", str(tmp_path / "file" / "x.gif")]) == 1


# -- watching a run -----------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _progress_rows():
    trainer = SimpleNamespace(finished=False, stopped_early=False)
    rows = [{"step": 64 * (i + 1), "update": i + 1, "episode_return": 10.0 + i, "steps_per_second": 500.0,
             "approx_kl": 0.01, "explained_variance": 0.5} for i in range(4)]
    rows[1].update(eval_step=128, eval_mean_return=42.0)
    return trainer, rows


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere():
    from ppo_core.cli.common import _Progress

    for stream in (_Terminal(), io.StringIO()):
        trainer, rows = _progress_rows()
        progress = _Progress(stream, 256, 0)
        for i, row in enumerate(rows):
            trainer.finished = i == len(rows) - 1
            progress(trainer, row)
        text = stream.getvalue()
        if isinstance(stream, _Terminal):
            assert "[eval] step 128: held-out return 42.00" in text
            assert "256/256" in text and "return 13.00" in text and "held-out return 42.00" in text
        else:
            lines = text.strip().splitlines()
            assert lines[0].startswith("update 1 step 64/256 return 10.00") and "held-out" not in lines[0]
            assert lines[-1].startswith("update 4 step 256/256 return 13.00")


def test_plot_groups_runs_by_config_over_seeds(tmp_path, capsys, caplog):
    from PIL import Image

    from ppo_core.runplot import bootstrap_band, group_runs

    runs = []
    for name, seed, lr in (("a-s1", 1, 3e-4), ("a-s2", 2, 3e-4), ("b-s1", 1, 1e-3)):
        T.train(_small(total_steps=192, seed=seed, learning_rate=lr, eval_every_steps=64, eval_episodes=2),
                tmp_path / name)
        runs.append(tmp_path / name)
    assert {k: [p.name for p in v] for k, v in group_runs(runs).items()} == {"a": ["a-s1", "a-s2"], "b": ["b-s1"]}
    out = tmp_path / "plot.png"
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="ppo_core.plot"):
        assert cli.main(["plot", *map(str, runs), "--out", str(out), "--metric", "episode_return",
                         "--metric", "eval_mean_return", "--metric", "eval_success_rate"]) == 0
    printed = capsys.readouterr().out
    assert "episode_return, eval_mean_return of a (2 runs), b (1 run)" in printed
    assert "has no eval_success_rate" in caplog.text  # CartPole reports no success: skipped, with a warning
    with Image.open(out) as im:
        assert im.size[0] > 500
    # default panels: the training return and, without success, the held-out return
    assert cli.main(["plot", str(runs[0]), "--out", str(tmp_path / "d.png")]) == 0
    assert "episode_return, eval_mean_return" in capsys.readouterr().out
    assert cli.main(["plot", str(runs[0]), "--out", str(tmp_path / "x.png"), "--metric", "nope"]) == 1
    # the band: a mean over seeds with a percentile bootstrap interval around it; one seed has none
    values = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, np.nan]])
    mean, low, high = bootstrap_band(values)
    assert mean.tolist() == [2.0, 1.0] and low[0] < 2.0 < high[0] and low[1] == high[1] == 1.0
    assert 0.0 <= low[0] and high[0] <= 4.0


def test_tensorboard_is_asked_for_and_a_resume_leaves_no_step_twice(tmp_path, capsys, monkeypatch):
    assert "tensorboard" not in T.preset("CartPole-v1").logger  # only when asked for
    with pytest.raises(T.ConfigError, match="'logger' must be"):
        _small(logger="tensorboard")
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a))
    code = cli.main(["train", "--env", "CartPole-v1", "--logger", "csv,tensorboard", "--set", "total_steps=64",
                     "--out", str(tmp_path / "none"), "--quiet"])
    assert code == 1 and 'pip install "ppo_core[tensorboard]"' in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    # a run that logged to TensorBoard still loads where tensorboard is not installed
    assert _small(logger="csv,tensorboard").logger == "csv,tensorboard"
    monkeypatch.undo()

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"

    def interrupt_after_update_3(trainer, row):
        if trainer.update == 3:
            raise KeyboardInterrupt

    trainer = T.Trainer(_small(total_steps=256, checkpoint_every=2, logger="csv,tensorboard"), run,
                        callbacks=[interrupt_after_update_3])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()  # checkpoint at step 128; rows and events up to 192
    resumed = T.Trainer.resume(run)
    resumed.train()
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("ppo/episode_return")]
    assert steps == [64, 128, 192, 256]
    assert [int(r["step"]) for r in read_metrics(run / "metrics.csv")] == [64, 128, 192, 256]
