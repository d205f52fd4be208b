"""The Ray backend (ppo_core.train.ray_source.RaySource): the rollout contract, training
quality against the local backend, actor faults, shutdown. Runs on a local Ray instance
limited to 2 CPUs; skipped only where the ``ray`` extra is not installed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
torch = pytest.importorskip("torch")
gymnasium = pytest.importorskip("gymnasium")

from gymnasium.wrappers import TimeLimit  # noqa: E402

import toy_envs  # noqa: E402
from toy_envs import CountdownEnv, SelfKillingEnv, ValueIsObs  # noqa: E402

from ppo_core import train as T  # noqa: E402
from ppo_core.train.ray_source import RaySource  # noqa: E402
from ppo_core.train.runlog import read_metrics  # noqa: E402

# Ray's workers cannot import the test files: ship their classes and functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(toy_envs)

CARTPOLE = Path(__file__).resolve().parents[1] / "configs" / "cartpole.toml"


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()






def countdown(terminate):
    def make():
        env = CountdownEnv(4, terminate=terminate)
        return env if terminate else TimeLimit(env, 4)
    return make


def _config(**kw):
    base = dict(env_id="CartPole-v1", num_envs=2, num_steps=32, total_steps=64, num_minibatches=2,
                update_epochs=2, checkpoint_every=1, backend="ray", num_workers=2, normalize_obs=False,
                normalize_reward=False)
    base.update(kw)
    return T.PPOConfig(**base)


@pytest.mark.parametrize("terminate", [False, True])
def test_ray_rollouts_keep_the_contract_bit_for_bit(terminate):
    cfg = _config(num_envs=4, num_workers=2)
    local = T.VectorEnvSource(cfg.replace(backend="local"), countdown(terminate), seed=0)
    remote = RaySource(cfg, countdown(terminate), seed=0)
    try:
        for source in (local, remote):
            source.sync_policy(ValueIsObs())
        a, b = local.collect(10), remote.collect(10)
    finally:
        local.close()
        remote.close()
    assert b.obs.shape == (10, 4, 1)
    for name in ("obs", "values", "rewards", "terminated", "truncated", "next_values"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    ends = [t for t in range(10) if (t + 1) % 4 == 0]
    assert b.terminated[:, 0].tolist() == [terminate and t in ends for t in range(10)]
    assert b.truncated[:, 0].tolist() == [(not terminate) and t in ends for t in range(10)]
    for t in ends:  # V(final observation) = 0, never V(reset observation) = 100
        assert b.next_values[t].tolist() == [0.0] * 4
    assert a.episode_returns == b.episode_returns


def test_std_scales_reach_each_actors_envs():
    cfg = _config(env_id="Pendulum-v1", num_envs=4, num_workers=2, init_log_std=0.0,
                  std_scales=[1.0, 0.25, 0.5, 1.0])
    remote = RaySource(cfg, seed=0)
    try:
        policy = T.make_mlp_policy(remote.observation_space, remote.action_space, cfg)
        remote.sync_policy(policy)
        ro = remote.collect(300)
    finally:
        remote.close()
    assert ro.std_scales.shape == (300, 4) and ro.std_scales[0].tolist() == cfg.std_scales
    with torch.no_grad():
        dist, _ = policy(ro.obs.reshape(-1, 3))
    noise = (ro.actions - dist.mean.reshape(300, 4, 1)).std(dim=(0, 2))
    np.testing.assert_allclose(noise.numpy(), cfg.std_scales, rtol=0.15)  # policy std 1 at the start


def test_observation_statistics_merge_the_actors_moments():
    cfg = _config(num_envs=4, num_workers=2, normalize_obs=True)
    local = T.VectorEnvSource(cfg.replace(backend="local"), countdown(False), seed=0)
    remote = RaySource(cfg, countdown(False), seed=0)
    try:
        for source in (local, remote):
            source.sync_policy(ValueIsObs())
        local.collect(12)
        remote.collect(12)
        got, want = remote.obs_normalizer.rms, local.obs_normalizer.rms
    finally:
        local.close()
        remote.close()
    # Both saw the same raw observations (the reset plus 12 steps of 4 envs); the
    # moments merged from two actors equal the step-by-step statistics.
    assert got.count == pytest.approx(want.count)
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-6)
    np.testing.assert_allclose(got.var, want.var, rtol=1e-5)


def test_cartpole_trains_as_well_on_ray_as_locally(tmp_path):
    cfg = T.load_config(CARTPOLE).replace(total_steps=40_000, seed=13, backend="ray", num_workers=2)
    T.train(cfg, tmp_path / "ray")
    result = T.evaluate(T.load_policy(tmp_path / "ray"), episodes=10, seed=0)
    print("ray backend, 2 actors, 40k steps: deterministic eval return", result["mean_return"])
    assert result["mean_return"] >= 400




def test_a_killed_actor_is_restarted_and_its_fragment_collected_again(tmp_path, caplog):
    import logging

    marker = str(tmp_path / "killed")
    cfg = _config(num_steps=16, total_steps=96, max_env_restarts=2)
    trainer = T.Trainer(cfg, tmp_path / "run", env_fn=lambda: SelfKillingEnv(20, marker))
    pids = list(trainer.source.pids)
    with caplog.at_level(logging.WARNING, logger="ppo_core.train"):
        row = trainer.train()
    assert os.path.exists(marker) and trainer.env_restarts == 1
    assert any("Ray rollout actor" in r.getMessage() and "failed in update 2" in r.getMessage()
               for r in caplog.records)
    assert trainer.source.pids != pids  # one actor is a new process
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [32, 64, 96] and row["step"] == 96
    assert [r["env_restarts"] for r in rows] == ["0", "1", "1"]
    assert float(rows[-1]["episode_length"]) == 8.0  # only whole episodes were counted


def test_an_actor_that_keeps_dying_ends_the_run_with_one_error(tmp_path):
    cfg = _config(num_steps=16, total_steps=96, max_env_restarts=1)
    trainer = T.Trainer(cfg, tmp_path / "run", env_fn=lambda: SelfKillingEnv(3))
    t0 = time.monotonic()
    with pytest.raises(T.EnvWorkerError, match="giving up"):
        trainer.train()
    assert time.monotonic() - t0 < 300  # an error, not a hang


def test_the_cli_starts_and_stops_its_own_ray_instance(tmp_path):
    # A fresh process: it starts a local Ray instance, trains, and leaves nothing running.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "ppo_core", "train", "--config", str(CARTPOLE),
                             "--total-steps", "512", "--num-envs", "2", "--backend", "ray", "--num-workers", "2",
                             "--out", str(tmp_path / "run"), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert "done: 512 steps" in out
    time.sleep(3)
    # Ray's processes (gcs_server, raylet, the actors) run in the session of the process
    # that started them (start_new_session above makes its session id its pid).
    left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert left == []
    assert T.load_config(tmp_path / "run" / "config.toml").backend == "ray"


def test_ctrl_c_leaves_no_ray_process_behind(tmp_path):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "ppo_core", "train", "--config", str(CARTPOLE),
                             "--total-steps", "10000000", "--num-envs", "2", "--backend", "ray",
                             "--num-workers", "2", "--out", str(tmp_path / "run"), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True,
                            # a user's terminal delivers Ctrl-C; a parent started in the background
                            # (a CI runner, `cmd &`) would have the child ignore it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics = tmp_path / "run" / "metrics.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) > 2):
        time.sleep(1)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    running = subprocess.run(["pgrep", "-s", str(proc.pid), "-f", "raylet"], capture_output=True, text=True)
    assert running.stdout.split(), "Ray's processes were expected in the run's session"
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "resume with: ppo-core train --resume" in err
    time.sleep(3)
    # Everything Ray started for this run shares the run's session (start_new_session above).
    left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert left == [], subprocess.run(["ps", "-o", "pid,sid,cmd", "-p", ",".join(left)],
                                      capture_output=True, text=True).stdout


def test_metadrive_smoke_run_with_two_actors(tmp_path):
    # Each actor's MetaDrive engines run in worker processes that build their env through the
    # same offline path as the local backend (ensure_offline_assets: no asset download).
    pytest.importorskip("metadrive")
    cfg = T.preset().replace(num_envs=2, num_steps=20, total_steps=80, num_minibatches=2, update_epochs=1,
                             hidden_sizes=[16], eval_every_steps=0, backend="ray", num_workers=2,
                             env_kwargs={"num_scenarios": 3, "start_seed": 0, "traffic_density": 0.1,
                                         "horizon": 30})
    trainer = T.Trainer(cfg, tmp_path / "run")
    assert trainer.observation_space.shape == (259,) and len(set(trainer.source.pids)) == 2
    trainer.train()
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [40, 80]
    # episodes of at most 30 steps ended in the second update, with MetaDrive's outcomes
    assert rows[1]["train_route_completion"] not in ("", "nan")


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None,
                    reason="needs util-linux unshare and iproute2 ip")
def test_metadrive_with_two_actors_trains_without_any_network(tmp_path):
    """The same smoke run in a fresh process inside a network namespace that has only
    loopback (which Ray needs between its own processes): no route to anywhere else."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot create a network namespace here (needs root / user namespaces)")
    pytest.importorskip("metadrive")
    script = textwrap.dedent(
        f"""
        from ppo_core import train as T
        from ppo_core.train.runlog import read_metrics
        cfg = T.preset().replace(num_envs=2, num_steps=20, total_steps=40, num_minibatches=2, update_epochs=1,
                                 hidden_sizes=[16], eval_every_steps=0, backend="ray", num_workers=2,
                                 env_kwargs={{"num_scenarios": 2, "start_seed": 0, "horizon": 30}})
        T.train(cfg, {str(tmp_path / "run")!r})
        assert [int(r["step"]) for r in read_metrics({str(tmp_path / "run" / "metrics.csv")!r})] == [40]
        print("OFFLINE-RAY-OK")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run(["unshare", "-n", "sh", "-c", f'ip link set lo up && exec "{sys.executable}" -c "$0"',
                           script], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and "OFFLINE-RAY-OK" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]
