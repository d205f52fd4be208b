"""Training and evaluating PPO on MetaDrive end to end (CI smoke tests).

Short horizons and a few hundred steps: these check that an install, the offline
asset setup, the worker processes, checkpoints, metrics, periodic evaluation,
``ppo-core eval`` and the GIF work together, not that the policy learns. The
network is blocked in this process (socket/urllib patched) *and* in every worker
process (a ``sitecustomize`` on ``PYTHONPATH``, which spawned workers inherit), so a
download attempt anywhere fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import textwrap
import urllib.request

import numpy as np
import pytest

pytest.importorskip("metadrive")
pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("tomli_w")

from ppo_core import cli  # noqa: E402
from ppo_core import train as T  # noqa: E402
from ppo_core.envs import metadrive as md  # noqa: E402
from ppo_core.train import checkpoint as ckpt  # noqa: E402
from ppo_core.train.runlog import read_metrics  # noqa: E402

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "metadrive")

_SITECUSTOMIZE = textwrap.dedent(
    """
    # Test helper: refuse and record every network connection in this process.
    import os, socket, urllib.request

    def _refuse(*args, **kwargs):
        with open(os.environ["PPO_CORE_TEST_NETWORK_LOG"], "a") as f:
            f.write(f"{os.getpid()} {args!r}\\n")
        raise OSError("network access blocked by the test")

    socket.socket.connect = _refuse
    socket.socket.connect_ex = _refuse
    socket.create_connection = _refuse
    urllib.request.urlopen = _refuse
    urllib.request.urlretrieve = _refuse
    """
)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Block the network here and in every worker; yield the attempts log.

    The workers are spawned even when PPO_CORE_WORKER_START_METHOD asks for a forkserver:
    that would hand them the environment of its own start, earlier in the test session,
    without this fixture's sitecustomize."""
    site = tmp_path / "offline_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    log = tmp_path / "network_attempts.txt"
    monkeypatch.setenv("PPO_CORE_TEST_NETWORK_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), *sys.path]))
    monkeypatch.delenv(md.ALLOW_DOWNLOAD_ENV, raising=False)
    monkeypatch.setenv(md.START_METHOD_ENV, "spawn")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    for obj, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection"),
                      (urllib.request, "urlretrieve"), (urllib.request, "urlopen")):
        monkeypatch.setattr(obj, name, refuse)
    yield log
    assert not log.exists(), f"a worker attempted network access:\n{log.read_text()}"


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_without_env_uses_the_metadrive_preset(monkeypatch, capsys, tmp_path):
    seen = {}

    class FakeTrainer:
        def __init__(self, config, run_dir, **kwargs):
            seen["config"] = config
            raise T.ConfigError("stopped before building envs")  # printed as one line

    monkeypatch.setattr(T, "Trainer", FakeTrainer)
    code, _, err = _run(capsys, "train", "--out", tmp_path / "r")
    assert code == 1 and "stopped before building envs" in err
    assert seen["config"] == T.preset("metadrive")

    cfg = tmp_path / "c.toml"
    cfg.write_text('total_steps = 5000\n[env_kwargs]\nhorizon = 300\n')
    code, _, _ = _run(capsys, "train", "--config", cfg, "--traffic-density", "0.2", "--start-seed", "50",
                      "--out", tmp_path / "r")
    config = seen["config"]
    assert config.env_id == "metadrive" and config.total_steps == 5000 and config.hidden_sizes == [256, 256]
    assert config.env_kwargs == {"num_scenarios": 100, "start_seed": 50, "traffic_density": 0.2, "horizon": 300}


def test_metadrive_training_and_eval_smoke(offline, capsys, tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "smoke.toml"
    cfg.write_text(textwrap.dedent(
        """
        num_steps = 64
        num_minibatches = 2
        update_epochs = 2
        hidden_sizes = [32, 32]
        eval_every_steps = 256
        eval_episodes = 2
        """
    ))
    code, out, err = _run(capsys, "train", "--env", "metadrive", "--config", cfg, "--num-envs", 2,
                          "--total-steps", 384, "--horizon", 40, "--num-scenarios", 5, "--seed", 3, "--out", run)
    assert code == 0, err
    assert "done: 384 steps" in out and "shares:" in out
    assert len(ckpt.list_checkpoints(run)) == 1
    rows = read_metrics(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [128, 256, 384]
    assert [r["eval_step"] for r in rows] == ["", "256", "384"]  # every 256 steps and at the end
    for key in ("eval_success_rate", "eval_route_completion", "eval_mean_return"):
        assert np.isfinite(float(rows[-1][key]))
    assert float(rows[-1]["env_seconds"]) > 0
    # Outcomes of the training episodes and the policy's action std, per update.
    ended = [r for r in rows if int(r["episodes"]) > 0]
    assert ended, "no training episode ended in 384 steps with horizon 40"
    for r in ended:
        for key in ("train_success_rate", "train_crash_rate", "train_out_of_road_rate", "train_route_completion"):
            assert 0.0 <= float(r[key]) <= 1.0
    assert all(0 < float(r["action_std"]) < 2 for r in rows)
    assert rows[-1]["eval_episodes"] == "2"
    low, high = float(rows[-1]["eval_success_rate_low"]), float(rows[-1]["eval_success_rate_high"])
    assert 0.0 <= low <= float(rows[-1]["eval_success_rate"]) <= high <= 1.0
    assert (run / "learning_curve.png").stat().st_size > 0
    saved = T.load_config(run / "config.toml")
    assert saved.env_kwargs == {"num_scenarios": 5, "start_seed": 0, "traffic_density": 0.1, "horizon": 40}

    # Eval on unseen scenarios; --env omitted (read from the run), horizon and traffic
    # overridden on the command line (they win over the run's training settings).
    gif = tmp_path / "episode.gif"
    episodes_out = tmp_path / "episodes.jsonl"
    code, out, err = _run(capsys, "eval", run, "--episodes", 2, "--start-seed", 20000, "--horizon", 30,
                          "--traffic-density", 0.2, "--workers", 2, "--json", "--gif", gif,
                          "--episodes-out", episodes_out)
    assert code == 0, err
    result = json.loads(out)
    assert set(md.METRIC_KEYS) <= set(result)
    assert result["episodes"] == 2 and result["start_seed"] == 20000 and result["num_scenarios"] == 2
    assert result["horizon"] == 30 and result["traffic_density"] == 0.2
    assert 0 < result["mean_length"] <= 30
    for key in ("success_rate", "crash_rate", "out_of_road_rate", "route_completion"):
        assert 0.0 <= result[key] <= 1.0
    for rate in ("success_rate", "crash_rate", "out_of_road_rate"):
        low, high = result[f"{rate}_ci"]
        assert 0.0 <= low <= result[rate] <= high <= 1.0 and high - low > 0.3  # 2 episodes: a wide interval
    lines = [json.loads(line) for line in episodes_out.read_text().splitlines()]
    assert [e["scenario"] for e in lines] == [20000, 20001]
    assert all(set(e) == {"scenario", "success", "crash", "out_of_road", "route_completion", "return", "length"}
               for e in lines)
    assert np.mean([e["success"] for e in lines]) == result["success_rate"]
    assert np.mean([e["length"] for e in lines]) == result["mean_length"]
    assert gif.stat().st_size > 1000 and result["gif"]["scenario"] == 20000

    code, _, err = _run(capsys, "eval", run, "--env", "CartPole-v1", "--episodes", 1)
    assert code == 1 and "does not fit 'CartPole-v1'" in err and len(err.strip().splitlines()) == 1


def test_eval_metadrive_refuses_a_run_of_another_env(capsys, tmp_path):
    T.train(T.PPOConfig(env_id="CartPole-v1", num_envs=1, num_steps=16, total_steps=16, num_minibatches=1,
                        update_epochs=1), tmp_path / "cartpole")
    code, _, err = _run(capsys, "eval", tmp_path / "cartpole", "--env", "metadrive", "--episodes", 1)
    assert code == 1 and "trained on 'CartPole-v1', not MetaDrive" in err
    code, _, err = _run(capsys, "eval", tmp_path / "cartpole", "--workers", 2)
    assert code == 2 and "--workers only applies to MetaDrive" in err


def test_killed_metadrive_worker_is_replaced(tmp_path, caplog):
    import logging

    cfg = T.preset().replace(num_envs=2, num_steps=32, total_steps=128, num_minibatches=2, update_epochs=1,
                             hidden_sizes=[16], eval_every_steps=0,
                             env_kwargs={"num_scenarios": 3, "start_seed": 0, "traffic_density": 0.1,
                                         "horizon": 30})
    killed = []

    def kill_a_worker(trainer, row):
        if not killed:
            proc = trainer.envs.processes[0]
            os.kill(proc.pid, signal.SIGKILL)
            killed.append(proc.pid)

    trainer = T.Trainer(cfg, tmp_path / "run", callbacks=[kill_a_worker])
    with caplog.at_level(logging.WARNING, logger="ppo_core.train"):
        trainer.train()
    assert killed and trainer.env_restarts == 1
    assert any("environment worker failed in update 2" in r.getMessage() for r in caplog.records)
    assert [int(r["step"]) for r in read_metrics(tmp_path / "run" / "metrics.csv")] == [64, 128]


def test_metadrive_env_groups_collect_and_train(tmp_path):
    cfg = T.preset().replace(num_envs=2, env_groups=2, num_steps=32, total_steps=128, num_minibatches=2,
                             update_epochs=1, hidden_sizes=[16], eval_every_steps=0,
                             env_kwargs={"num_scenarios": 3, "start_seed": 0, "traffic_density": 0.1,
                                         "horizon": 30})
    trainer = T.Trainer(cfg, tmp_path / "run")
    ro = trainer.collector.collect(40)  # more steps than the horizon: episodes end and reset
    assert ro.obs.shape == (40, 2, 259) and (ro.truncated | ro.terminated).any()
    assert len(ro.episode_metrics) == len(ro.episode_returns) > 0
    trainer.train()
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [64, 128]
    assert trainer.envs is None


def test_eval_is_reproducible_and_batching_free(capsys, tmp_path):
    # The shipped policy, short episodes. The same command gives the same episodes; with
    # 1 and with 3 workers the policy's batches differ (a batch of one takes other BLAS
    # kernels) but the actions do not, so each worker's first episode is the same. (Later
    # episodes of a worker may differ in the last digits: MetaDrive's physics carries state
    # from one episode to the next in a process; docs/metadrive-study.md measures it.)
    runs = {}
    stochastic = ("--stochastic", "--seed", "4")
    for workers, rep, mode in ((3, 0, ()), (3, 1, ()), (1, 0, ()), (3, 0, stochastic), (1, 0, stochastic)):
        out = tmp_path / f"w{workers}{rep}{'s' if mode else 'd'}.jsonl"
        code, _, err = _run(capsys, "eval", SHIPPED, "--episodes", 3, "--start-seed", 20010,
                            "--horizon", 60, "--workers", workers, "--episodes-out", out, *mode)
        assert code == 0, err
        runs[workers, rep, bool(mode)] = [json.loads(line) for line in out.read_text().splitlines()]
    assert runs[3, 0, False] == runs[3, 1, False]
    for sampled in (False, True):
        assert runs[1, 0, sampled][0] == runs[3, 0, sampled][0]
    assert runs[3, 0, True] != runs[3, 0, False]
