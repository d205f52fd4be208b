"""The tutorial's algorithms as presets, ``ppo-core compare`` / ``lrsweep`` and ``gradvar``."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gymnasium")
pytest.importorskip("matplotlib")
pytest.importorskip("tomli_w")

from ppo_core import cli, compare, gradvar  # noqa: E402
from ppo_core import train as T  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- presets ----------------------------------------------------------------------


def test_algo_files_and_presets_agree():
    files = {p.stem: p for p in (CONFIGS / "algos").glob("*.toml")}
    assert set(files) == set(T.ALGOS)
    for name, path in files.items():
        assert T.read_config_file(path) == T.ALGOS[name], name
        # A preset file used as a config gives the same config as --algo on the defaults.
        assert T.load_config(path, defaults=T.PPOConfig(env_id="CartPole-v1")) == \
            T.apply_algo(T.PPOConfig(env_id="CartPole-v1"), name)


def test_presets_change_only_the_algorithm():
    base = T.load_config(CONFIGS / "cartpole.toml")
    for name in T.ALGOS:
        config = T.apply_algo(base, name)
        changed = {k for k, v in config.to_dict().items() if v != base.to_dict()[k]}
        assert changed <= set(T.ALGOS[name]), (name, changed)
    reinforce = T.apply_algo(base, "reinforce")
    assert (reinforce.advantage_estimator, reinforce.policy_loss) == ("reward_to_go", "policy_gradient")
    assert (reinforce.update_epochs, reinforce.num_minibatches, reinforce.norm_adv) == (1, 1, False)
    assert T.apply_algo(base, "reinforce-baseline").advantage_estimator == "returns_minus_baseline"
    assert T.apply_algo(base, "a2c").advantage_estimator == "gae"
    ppo = T.apply_algo(base, "ppo")
    assert (ppo.policy_loss, ppo.update_epochs, ppo.num_minibatches) == ("clipped_surrogate", 20, 1)
    assert ppo == base  # the CartPole config is a PPO config
    assert T.apply_algo(T.preset("metadrive"), "ppo") == T.preset("metadrive")  # and so is MetaDrive's preset


def test_preset_errors():
    base = T.PPOConfig(env_id="CartPole-v1")
    with pytest.raises(T.ConfigError, match="unknown algorithm 'sac'.*reinforce, reinforce-baseline, a2c, ppo"):
        T.apply_algo(base, "sac")
    with pytest.raises(T.ConfigError, match="'ppo' reuses each batch"):
        T.apply_algo(T.apply_algo(base, "a2c"), "ppo")


def test_train_help_lists_every_preset():
    # The CLI parser cannot import the presets (that would import torch); its help names them.
    help_text = next(a.help for a in cli.build_parser()._subparsers._group_actions[0].choices["train"]._actions
                     if "--algo" in a.option_strings)
    assert help_text.startswith("algorithm preset: reinforce, reinforce-baseline, a2c or ppo")
    assert list(T.ALGOS) == ["reinforce", "reinforce-baseline", "a2c", "ppo"]


@pytest.mark.parametrize("name, steps_per_update", [("reinforce", 1), ("reinforce-baseline", 1), ("a2c", 1),
                                                    ("ppo", 20)])
def test_gradient_steps_per_batch(tmp_path, name, steps_per_update):
    config = T.apply_algo(T.load_config(CONFIGS / "cartpole.toml"), name).replace(total_steps=512)
    trainer = T.Trainer(config, tmp_path / name)
    calls = []
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (calls.append(1), step(*a, **k))[1]
    trainer.train()
    assert len(calls) == 2 * steps_per_update  # 2 updates of 8 x 32 steps


def test_train_algo_precedence(capsys, tmp_path):
    # env defaults < --config < --algo < flags
    run = tmp_path / "run"
    code, out, err = _run(capsys, "train", "--env", "CartPole-v1", "--config", CONFIGS / "cartpole.toml",
                          "--algo", "reinforce", "--num-envs", 2, "--total-steps", 64, "--quiet", "--out", run)
    assert code == 0, err
    saved = T.load_config(run / "config.toml")
    assert saved == T.apply_algo(T.load_config(CONFIGS / "cartpole.toml"), "reinforce").replace(
        num_envs=2, total_steps=64)
    code, _, err = _run(capsys, "train", "--resume", run, "--algo", "ppo")
    assert code == 2 and "--algo cannot be combined" in err
    code, _, err = _run(capsys, "train", "--env", "CartPole-v1", "--algo", "dqn", "--out", tmp_path / "x")
    assert code == 1 and "unknown algorithm 'dqn'" in err and len(err.strip().splitlines()) == 1


# -- compare / lrsweep ------------------------------------------------------------


def test_compare_cli(capsys, tmp_path):
    out = tmp_path / "cmp"
    # A config file entry: its own learning rate, but the command's budget and number of envs.
    mine = tmp_path / "fast-a2c.toml"
    mine.write_text('advantage_estimator = "gae"\npolicy_loss = "policy_gradient"\nupdate_epochs = 1\n'
                    'num_minibatches = 1\nlearning_rate = 0.01\ntotal_steps = 100000\nnum_envs = 4\n')
    argv = ["compare", "reinforce", CONFIGS / "algos" / "ppo.toml", mine, "--env", "CartPole-v1", "--config",
            CONFIGS / "cartpole.toml", "--num-envs", 2, "--total-steps", 128, "--seeds", 2, "--quiet", "--out", out]
    code, stdout, err = _run(capsys, *argv, "--threshold", 15)
    assert code == 0, err
    assert (out / "compare.png").stat().st_size > 1000
    summary = _csv(out / "summary.csv")
    assert list(summary[0]) == compare.SUMMARY_COLUMNS
    assert [r["label"] for r in summary] == ["reinforce", "ppo", "fast-a2c"]
    assert summary[1]["source"].endswith("ppo.toml")
    for r in summary:
        assert r["seeds"] == "2" and r["total_steps"] == "128" and r["threshold"] == "15"
        assert math.isfinite(float(r["final_return_mean"])) and float(r["final_return_std"]) >= 0
        assert r["final_success_mean"] == ""  # not MetaDrive
    runs = _csv(out / "runs.csv")
    assert [(r["label"], r["seed"]) for r in runs] == [("reinforce", "1"), ("reinforce", "2"), ("ppo", "1"),
                                                       ("ppo", "2"), ("fast-a2c", "1"), ("fast-a2c", "2")]
    finals = [float(r["final_return"]) for r in runs if r["label"] == "reinforce"]
    assert float(summary[0]["final_return_mean"]) == pytest.approx(np.mean(finals), rel=1e-5)
    for r in runs:
        cfg = T.load_config(Path(r["run_dir"]) / "config.toml")
        assert cfg.seed == int(r["seed"]) and cfg.total_steps == 128 and cfg.num_envs == 2
        reached = r["steps_to_threshold"]
        if reached:
            assert 0 < int(float(reached)) <= 128
    assert T.load_config(Path(runs[-1]["run_dir"]) / "config.toml").learning_rate == 0.01
    assert "final_return_mean" in stdout

    # A second call reuses the finished runs; the default threshold is gymnasium's (475).
    code, _, err = _run(capsys, *argv)
    assert code == 0, err
    again = _csv(out / "summary.csv")
    assert [r["final_return_mean"] for r in again] == [r["final_return_mean"] for r in summary]
    assert again[0]["threshold"] == "475"

    code, _, err = _run(capsys, "compare", "reinforce", "--env", "CartPole-v1", "--total-steps", 64,
                        "--num-scenarios", 3, "--out", tmp_path / "x")
    assert code == 2 and "only applies to MetaDrive" in err
    code, _, err = _run(capsys, "compare", "reinforce", "--total-steps", 64, "--out", tmp_path / "x")
    assert code == 1 and "no environment" in err
    code, _, err = _run(capsys, "compare", CONFIGS / "pendulum.toml", "--env", "CartPole-v1", "--total-steps", 64,
                        "--out", tmp_path / "x")
    assert code == 1 and "differs from the comparison's environment 'CartPole-v1'" in err


def _fake_run(run_dir, steps, returns, evals=()):
    from ppo_core.train.runlog import METRICS_COLUMNS

    run_dir.mkdir(parents=True)
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, METRICS_COLUMNS)
        w.writeheader()
        ev = dict(evals)
        for i, (s, r) in enumerate(zip(steps, returns)):
            row = {"step": s, "time": 10.0 * (i + 1), "update": i + 1, "episode_return": r}
            if s in ev:
                row.update(eval_step=s, eval_success_rate=ev[s], eval_mean_return=r)
            w.writerow(row)


def test_summary_and_plot_with_success_rate(tmp_path):
    # MetaDrive-like metrics (held-out success every other update) without running MetaDrive.
    steps = [100, 200, 300, 400]
    _fake_run(tmp_path / "a" / "seed1", steps, ["", 5, 10, 20], {200: 0.25, 400: 0.5})
    _fake_run(tmp_path / "a" / "seed2", steps, [1, 2, 30, 40], {200: 0.75, 400: 1.0})
    curves = compare.load_curves("a", [1, 2], tmp_path / "a")
    assert curves.has_success
    entry = compare.Entry("a", T.PPOConfig(env_id="metadrive"), "ppo")
    row = compare.summarize(entry, curves, threshold=25.0, success_threshold=0.5)
    assert row["final_return_mean"] == pytest.approx(30.0) and row["final_return_std"] == pytest.approx(
        np.std([20, 40], ddof=1))
    assert (row["seeds_reached"], row["steps_to_threshold"]) == (1, 300.0)
    assert row["final_success_mean"] == pytest.approx(0.75)
    assert (row["seeds_reached_success"], row["steps_to_success"]) == (2, 300.0)  # mean of 400 and 200
    assert row["seconds_per_run"] == pytest.approx(40.0)
    compare.plot_compare([curves], tmp_path / "compare.png", title="fake", threshold=25.0)
    assert (tmp_path / "compare.png").stat().st_size > 1000
    grid, mean, std = compare._band(curves.steps, curves.returns)
    assert grid.tolist() == steps and mean[0] == 1.0 and std[0] == 0.0  # seed 1 has no episode yet


def test_lrsweep_cli(capsys, tmp_path):
    out = tmp_path / "sweep"
    code, stdout, err = _run(capsys, "lrsweep", "--env", "CartPole-v1", "--config", CONFIGS / "cartpole.toml",
                             "--lrs", 1e-3, 1e-2, "--num-envs", 2, "--total-steps", 128, "--seeds", 1,
                             "--eval-every-steps", 128, "--quiet", "--out", out)
    assert code == 0, err
    assert (out / "lrsweep.png").stat().st_size > 1000
    rows = _csv(out / "summary.csv")
    assert [(r["label"], float(r["learning_rate"])) for r in rows] == [
        ("reinforce", 1e-3), ("ppo", 1e-3), ("reinforce", 1e-2), ("ppo", 1e-2)]
    cfg = T.load_config(out / "runs" / "lr0.01" / "ppo" / "seed1" / "config.toml")
    assert cfg.learning_rate == 1e-2 and cfg.anneal_lr is False and cfg.update_epochs == 20
    assert cfg.eval_every_steps == 128  # held-out return logged at the end; no success rate on CartPole
    assert all(r["final_return_mean"] for r in rows)


# -- gradvar ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    # A briefly trained CartPole policy (PPO, the tuned config, 40 updates: ~5 s).
    config = T.load_config(CONFIGS / "cartpole.toml").replace(total_steps=10_240, seed=3)
    run_dir = tmp_path_factory.mktemp("gradvar") / "snapshot"
    return gradvar.train_snapshot(config, run_dir), run_dir


def test_gradvar_reward_to_go_is_noisiest(snapshot):
    snap, _ = snapshot
    rows = gradvar.measure(snap, batches=16, num_envs=8, num_steps=64, seed=11)
    by_name = {r["estimator"]: r for r in rows}
    assert list(by_name) == ["reward-to-go", "G - V", "GAE lambda=0", "GAE lambda=0.9", "GAE lambda=0.95",
                             "GAE lambda=1"]
    rtg = by_name["reward-to-go"]["grad_variance"]
    # Measured ~10x the baseline's and ~18x GAE(0.95)'s with this seed; 3x is a generous margin.
    for name, r in by_name.items():
        if name != "reward-to-go":
            assert rtg > 3 * r["grad_variance"], (name, rtg, r["grad_variance"])
    # GAE with lambda = 1 is the discounted return minus V, bootstrapped the same way.
    assert by_name["GAE lambda=1"]["grad_variance"] == pytest.approx(by_name["G - V"]["grad_variance"], rel=1e-4)
    assert by_name["GAE lambda=0"]["grad_variance"] < by_name["GAE lambda=1"]["grad_variance"]
    for r in rows:
        assert -1.0 <= r["pairwise_cosine"] <= 1.0 and r["batch_size"] == 512


def test_gradvar_cli_on_a_run_dir(capsys, snapshot, tmp_path):
    _, run_dir = snapshot
    out = tmp_path / "gv"
    code, stdout, err = _run(capsys, "gradvar", run_dir, "--batches", 3, "--num-envs", 2, "--num-steps", 16,
                             "--lams", 0.5, "--out", out)
    assert code == 0, err
    rows = _csv(out / "gradvar.csv")
    assert [r["estimator"] for r in rows] == ["reward-to-go", "G - V", "GAE lambda=0.5"]
    assert all(r["batch_size"] == "32" and r["policy_step"] == "10240" for r in rows)
    assert (out / "gradvar.png").stat().st_size > 1000 and "grad_variance" in stdout
    code, _, err = _run(capsys, "gradvar", run_dir, "--batches", 1, "--out", out)
    assert code == 2 and "--batches must be >= 2" in err
    code, _, err = _run(capsys, "gradvar", run_dir, "--env", "CartPole-v1", "--out", out)
    assert code == 2 and "cannot be combined" in err


@pytest.mark.slow
def test_compare_on_metadrive_smoke(capsys, tmp_path):
    # The MetaDrive path end to end: worker processes, held-out evaluation, the success
    # panel and columns. A few hundred steps: it checks the plumbing, not learning.
    pytest.importorskip("metadrive")
    smoke = tmp_path / "smoke.toml"
    smoke.write_text("num_steps = 64\nnum_minibatches = 2\nupdate_epochs = 2\nhidden_sizes = [32, 32]\n"
                     "eval_episodes = 2\n")
    out = tmp_path / "md"
    code, _, err = _run(capsys, "compare", "ppo", "--env", "metadrive", "--config", smoke, "--num-envs", 2,
                        "--total-steps", 256, "--seeds", 1, "--horizon", 40, "--num-scenarios", 5,
                        "--eval-every-steps", 128, "--quiet", "--out", out)
    assert code == 0, err
    (row,) = _csv(out / "summary.csv")
    assert row["threshold"] == "" and row["success_threshold"] == "0.5"
    assert 0.0 <= float(row["final_success_mean"]) <= 1.0 and row["final_success_std"] == "0"
    run = out / "runs" / "ppo" / "seed1"
    assert T.load_config(run / "config.toml").env_kwargs["horizon"] == 40
    assert compare.load_curves("ppo", [1], out / "runs" / "ppo").eval_steps[0].tolist() == [128.0, 256.0]
    assert (out / "compare.png").stat().st_size > 1000
