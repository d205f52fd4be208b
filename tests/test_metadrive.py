"""MetaDrive environment layer (ppo_core.envs.metadrive): offline start, episode
semantics, vector envs, evaluation, GIFs. Skipped where metadrive is not installed.

Tests that build an env in this process close it (MetaDrive's engine is a
per-process singleton); the others run MetaDrive in worker processes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import urllib.request

import numpy as np
import pytest

pytest.importorskip("metadrive")
gym = pytest.importorskip("gymnasium")

from ppo_core.envs import metadrive_available  # noqa: E402
from ppo_core.envs import metadrive as md  # noqa: E402
from ppo_core.envs.metadrive import family as md_family  # noqa: E402

SMALL = md.MetaDriveConfig(num_scenarios=10, start_seed=0, horizon=50)
TURN_FULL_THROTTLE = np.array([1.0, 1.0], dtype=np.float32)  # hard left, full throttle
STRAIGHT = np.array([0.0, 0.5], dtype=np.float32)


@pytest.fixture
def no_network(monkeypatch):
    """Make any network connection or urllib download in this process raise (Unix-domain
    sockets, local IPC such as the forkserver's, still connect)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    def refuse_network(method):
        def connect(sock, *args, **kwargs):
            if sock.family == getattr(socket, "AF_UNIX", None):
                return method(sock, *args, **kwargs)
            refuse(sock, *args)
        return connect

    monkeypatch.setattr(socket.socket, "connect", refuse_network(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_network(socket.socket.connect_ex))
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def make_env():
    """Build in-process envs and always close them (one engine per process)."""
    envs = []

    def factory(config=SMALL, **kwargs):
        env = md.make_metadrive_env(config, **kwargs)
        envs.append(env)
        return env

    yield factory
    for env in envs:
        env.close()


def run_until_done(env, action, max_steps=10_000):
    for n in range(1, max_steps + 1):
        obs, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return n, obs, terminated, truncated, info
    raise AssertionError("episode did not end")


def test_package_is_import_light():
    code = (
        "import sys, ppo_core.envs, ppo_core.envs.metadrive as m; "
        "assert 'torch' not in sys.modules; "
        "assert not any(k == 'metadrive' or k.startswith('metadrive.') for k in sys.modules), 'metadrive imported'"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert metadrive_available()


def test_offline_assets_patch_when_missing_and_untouched_when_present(monkeypatch):
    from metadrive.engine.base_engine import BaseEngine

    from ppo_core.envs.metadrive import assets

    status, _ = md.asset_status()
    state = md.ensure_offline_assets()
    if status == "present":
        assert state == "present"
        assert BaseEngine.try_pull_asset is not assets._skip_asset_pull
    else:
        assert state == "patched"
        assert BaseEngine.try_pull_asset is assets._skip_asset_pull

    # A user with the real assets: nothing is patched.
    monkeypatch.setattr(assets, "_offline_state", None)
    monkeypatch.setattr(BaseEngine, "try_pull_asset", staticmethod(lambda: None))
    original = BaseEngine.__dict__["try_pull_asset"]
    monkeypatch.setattr(assets, "asset_status", lambda: ("present", "/fake/assets"))
    assert md.ensure_offline_assets() == "present"
    assert BaseEngine.__dict__["try_pull_asset"] is original


def test_offline_start_with_network_blocked(no_network, make_env):
    env = make_env()
    obs, info = env.reset(seed=3)
    assert obs.shape == env.observation_space.shape and obs.dtype == np.float32
    for _ in range(20):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert isinstance(reward, float)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_offline_start_in_network_namespace(tmp_path):
    """A fresh process in a network namespace without any network starts, steps and renders."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot create a network namespace here (needs root / user namespaces)")
    script = textwrap.dedent(
        """
        import numpy as np
        from ppo_core.envs.metadrive import MetaDriveConfig, MetaDriveGymEnv
        env = MetaDriveGymEnv(MetaDriveConfig(num_scenarios=2, horizon=30), render_mode="rgb_array")
        env.reset(seed=1)
        for _ in range(30):
            env.step(np.array([0.0, 1.0]))
        frame = env.render()
        assert frame is not None and frame.ndim == 3 and frame.std() > 0, frame
        env.close()
        print("OFFLINE-OK")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), SDL_VIDEODRIVER="dummy")
    env.pop(md.ALLOW_DOWNLOAD_ENV, None)
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", script],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0 and "OFFLINE-OK" in proc.stdout, proc.stdout + proc.stderr


def test_horizon_is_truncation(make_env):
    env = make_env(SMALL.replace(horizon=50))
    env.reset(seed=0)
    n, obs, terminated, truncated, info = run_until_done(env, STRAIGHT)
    assert n == 50
    assert (terminated, truncated) == (False, True)
    assert info["max_step"] and not info["crash"] and not info["out_of_road"]


def test_out_of_road_is_termination_and_wins_over_horizon(make_env):
    env = make_env(SMALL.replace(horizon=50))
    env.reset(seed=4)
    n, obs, terminated, truncated, info = run_until_done(env, TURN_FULL_THROTTLE)
    assert n < 50
    assert (terminated, truncated) == (True, False)
    assert info["out_of_road"] and not info["max_step"]
    env.close()

    # Horizon reached on the very step the car leaves the road: MetaDrive reports both
    # flags; the wrapper reports a termination only (never bootstrapped).
    env2 = make_env(SMALL.replace(horizon=n))
    env2.reset(seed=4)
    n2, obs2, terminated2, truncated2, info2 = run_until_done(env2, TURN_FULL_THROTTLE)
    assert n2 == n
    assert info2["out_of_road"] and info2["max_step"]
    assert (terminated2, truncated2) == (True, False)


def test_reset_seed_and_options(make_env):
    env = make_env(md.MetaDriveConfig(num_scenarios=5, start_seed=100, horizon=20))
    _, info = env.reset(seed=102, options={"anything": 1})
    assert env.current_scenario == 102 == info["env_seed"]
    env.reset(seed=7)  # outside the range: wrapped
    assert env.current_scenario == md.scenario_for_seed(7, 100, 5) == 102
    env.reset(options={"scenario": 104})
    assert env.current_scenario == 104
    with pytest.raises(ValueError):
        env.reset(options={"scenario": 105})
    seen = set()
    for _ in range(20):
        env.reset()
        seen.add(env.current_scenario)
    assert seen <= set(range(100, 105)) and len(seen) > 1


def test_vector_env_endings_reach_the_trainer_with_final_obs_and_info(no_network):
    """Two MetaDrive workers through the trainer's rollout path (VectorEnvSource ->
    RolloutCollector): every ending is booked as terminated or truncated, never both; a
    truncation is valued on the real final observation, not on the next episode's first
    one, and its final info says max_step."""
    torch = pytest.importorskip("torch")
    from ppo_core import train as T

    class RandomActions(torch.nn.Module):
        """Standard normal actions; value = sum of the observation, to tell observations apart."""

        def __init__(self):
            super().__init__()
            self.batch_shapes = []

        def forward(self, obs):
            self.batch_shapes.append(tuple(obs.shape))
            n = obs.shape[0]
            normal = torch.distributions.Normal(torch.zeros(n, 2), torch.ones(n, 2))
            return torch.distributions.Independent(normal, 1), obs.sum(-1)

    steps, horizon = 150, 40
    config = T.PPOConfig(env_id="metadrive", num_envs=2, seed=0,
                         env_kwargs={"num_scenarios": 10, "start_seed": 0, "horizon": horizon})
    source = T.VectorEnvSource(config)
    policy = RandomActions()
    try:
        source.sync_policy(policy)
        ro = source.collect(steps)
    finally:
        source.close()
    obs_shape = tuple(source.observation_space.shape)
    assert tuple(ro.obs.shape) == (steps, 2) + obs_shape and tuple(ro.rewards.shape) == (steps, 2)
    done = ro.terminated | ro.truncated
    assert not (ro.terminated & ro.truncated).any()
    endings = done.nonzero().tolist()  # in the order the episodes were booked
    assert len(endings) >= 2  # horizon 40: at least one ending per worker
    assert len(ro.episode_metrics) == len(endings)
    # Every step, every step with a truncation (its final observations) and the last observations.
    assert len(policy.batch_shapes) == steps + int(ro.truncated.any(dim=1).sum()) + 1
    assert all(shape[1:] == obs_shape for shape in policy.batch_shapes)
    for (t, i), metrics in zip(endings, ro.episode_metrics):
        assert metrics["max_step"] == bool(ro.truncated[t, i]) or ro.terminated[t, i]
        assert metrics["scenario"] in range(10)
        if ro.truncated[t, i]:
            assert metrics["length"] == horizon
            if t + 1 < steps:
                assert ro.next_values[t, i] != ro.values[t + 1, i]


def test_evaluate_policy_metrics():
    def straight(obs):
        return np.tile(STRAIGHT, (obs.shape[0], 1))

    result = md.evaluate_policy(
        straight, SMALL.replace(horizon=60), episodes=4, start_seed=500, num_scenarios=4, num_workers=2
    )
    assert set(result) == set(md.METRIC_KEYS)
    assert result["episodes"] == 4
    for key in ("success_rate", "crash_rate", "out_of_road_rate", "route_completion"):
        assert 0.0 <= result[key] <= 1.0
    assert 0 < result["mean_length"] <= 60
    assert np.isfinite(result["mean_return"]) and result["std_return"] >= 0


def test_workers_spawn_by_default_and_a_forkserver_preloads_metadrive(monkeypatch):
    import multiprocessing
    from multiprocessing import forkserver

    monkeypatch.delenv(md.START_METHOD_ENV, raising=False)
    assert md.worker_context() == "spawn"
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return  # (Windows) nothing more to check
    assert md.worker_context("forkserver") == "forkserver"
    preload = forkserver._forkserver._preload_modules
    assert set(md.FORKSERVER_PRELOAD) <= set(preload)
    md.worker_context("forkserver")
    assert forkserver._forkserver._preload_modules == preload  # no duplicates


def test_worker_start_method_from_the_environment(monkeypatch):
    monkeypatch.setenv(md.START_METHOD_ENV, "forkserver")
    assert md.worker_context() == "forkserver"
    assert md.worker_context("spawn") == "spawn"  # an explicit argument wins
    monkeypatch.setenv(md.START_METHOD_ENV, "teleport")
    with pytest.raises(ValueError, match="PPO_CORE_WORKER_START_METHOD must be one of .*'teleport'"):
        md.worker_context()


@pytest.mark.slow
def test_forkserver_and_spawn_workers_step_alike(no_network):
    """The start method changes how a worker starts, not what it simulates."""
    cfg = SMALL.replace(start_seed=40, num_scenarios=3, horizon=60)
    traces = {}
    for context in ("spawn", "forkserver"):
        env = md.make_vector_env(cfg, 2, seed=5, context=context)
        try:
            obs, _ = env.reset(seed=5)
            steps = [obs]
            for _ in range(10):
                obs, reward, terminated, truncated, _ = env.step(np.tile(STRAIGHT, (2, 1)))
                steps += [obs, reward]
        finally:
            env.close()
        traces[context] = steps
    for a, b in zip(traces["spawn"], traces["forkserver"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_evaluation_visits_each_scenario_once_and_is_deterministic():
    cfg = SMALL.replace(start_seed=700, num_scenarios=5, horizon=80)

    def straight(obs):
        return np.tile(STRAIGHT, (obs.shape[0], 1))

    with md.ParallelEvaluator(cfg, num_workers=2) as ev:
        first = ev.run_episodes(straight, list(cfg.scenarios))
        again = ev.run_episodes(straight, list(reversed(cfg.scenarios)))
    assert [e["scenario"] for e in first] == list(range(700, 705))
    assert [e["return"] for e in first] == [e["return"] for e in reversed(again)]


def test_topdown_gif(tmp_path):
    from PIL import Image

    def straight(obs):
        return np.tile(STRAIGHT, (obs.shape[0], 1))

    path = tmp_path / "episode.gif"
    out = md.write_topdown_gif(straight, SMALL.replace(horizon=30), seed=2, path=path, frame_skip=3)
    assert path.stat().st_size > 1000
    assert out["scenario"] == 2 and out["length"] == 30
    with Image.open(path) as gif:
        # PIL merges identical consecutive frames (the car standing still at the start)
        assert 10 <= out["frames"] and 5 <= gif.n_frames <= out["frames"]
        gif.seek(gif.n_frames - 1)
        frame = np.asarray(gif.convert("RGB"))
    assert frame.shape == (400, 400, 3) and frame.std() > 5  # not a blank image


def test_episode_metrics_and_summary():
    info = {"arrive_dest": True, "crash": False, "out_of_road": False, "max_step": False,
            "route_completion": np.float64(0.97), "env_seed": 12}
    m = md.episode_metrics(info, 123.5, 400)
    assert m == {"success": True, "crash": False, "out_of_road": False, "max_step": False,
                 "route_completion": pytest.approx(0.97), "return": 123.5, "length": 400, "scenario": 12}
    m2 = md.episode_metrics({"crash": True, "out_of_road": True, "route_completion": 0.1}, -5.0, 20)
    s = md.summarize_episodes([m, m2])
    assert s["success_rate"] == 0.5 and s["crash_rate"] == 0.5 and s["out_of_road_rate"] == 0.5
    assert s["route_completion"] == pytest.approx(0.535)
    assert s["mean_return"] == pytest.approx(59.25) and s["std_return"] == pytest.approx(64.25)
    assert s["mean_length"] == 210 and s["episodes"] == 2
    from ppo_core.stats import wilson_interval

    assert s["success_rate_ci"] == list(wilson_interval(1, 2)) == s["crash_rate_ci"]


def test_traffic_density_range_draws_a_density_per_reset(make_env):
    env = make_env(SMALL.replace(traffic_density_range=[0.05, 0.3], horizon=5))
    densities = []
    for seed in (0, None, None, None):
        env.reset(seed=seed)
        densities.append(env.metadrive_env.engine.global_config["traffic_density"])
        assert env.metadrive_env.engine.traffic_manager.density == densities[-1]
    assert all(0.05 <= d <= 0.3 for d in densities) and len(set(densities)) == 4
    with pytest.raises(ValueError, match="traffic_density_range"):
        md.MetaDriveConfig(traffic_density_range=[0.3, 0.1])


def test_train_overrides_shape_training_only(monkeypatch):
    from ppo_core.envs.metadrive.family import MetaDriveFamily

    cfg = SMALL.replace(overrides={"speed_reward": 0.2}, train_overrides={"out_of_road_penalty": 20.0},
                        traffic_density_range=[0.05, 0.2], scenario_shards=2)
    d = cfg.metadrive_dict()
    assert d["out_of_road_penalty"] == 20.0 and d["speed_reward"] == 0.2  # training: both
    ev = cfg.for_evaluation(10000, 20)
    d = ev.metadrive_dict()
    assert "out_of_road_penalty" not in d and d["speed_reward"] == 0.2  # evaluation: overrides only
    assert (ev.start_seed, ev.num_scenarios, ev.traffic_density_range, ev.scenario_shards) == (10000, 20, None, 1)
    assert ev.traffic_density == cfg.traffic_density and ev.horizon == cfg.horizon
    # `ppo-core eval` and the periodic evaluation drop them too
    setup = MetaDriveFamily().eval_setup(cfg.to_dict(), 5, {})
    assert setup.config.train_overrides == {} and setup.config.overrides == {"speed_reward": 0.2}
    import ppo_core.envs.metadrive.family as family_module
    monkeypatch.setattr(family_module, "ParallelEvaluator", lambda config, workers: (config, workers))
    periodic, workers = MetaDriveFamily().evaluator(cfg.to_dict(), 10000, 20, 2)
    assert periodic == ev and workers == 2
    assert "train_overrides" in md.TRAINING_ONLY
    with pytest.raises(ValueError, match="train_overrides must be a table"):
        md.MetaDriveConfig(train_overrides=[("speed_reward", 0.0)])


def test_block_probabilities_reweight_the_training_maps_only(make_env):
    weights = {"StdInterSection": 1, "Straight": 1}
    env = make_env(SMALL.replace(block_probabilities=weights, horizon=5))
    for scenario in range(4):
        env.reset(options={"scenario": scenario})
        blocks = [b.ID for b in env.metadrive_env.engine.current_map.blocks]
        assert blocks[0] == "I" and set(blocks[1:]) <= {"X", "S"} and len(blocks) == 4, blocks
    assert SMALL.replace(block_probabilities=weights).for_evaluation(10000, 5).block_probabilities is None
    assert "block_probabilities" in md.TRAINING_ONLY
    for name in ("Curvy", "ParkingLot", "InFork"):  # a typo; blocks that do not build in random maps
        with pytest.raises(ValueError, match=f"unknown block type '{name}'"):
            md.MetaDriveConfig(block_probabilities={name: 1.0})
    with pytest.raises(ValueError, match="map = 'SCX'"):
        md.MetaDriveConfig(block_probabilities={"Curve": 1.0}, map="SCX")
    for bad in ({}, {"Curve": -1.0}, {"Curve": 0.0}, {"Curve": float("nan")}, [("Curve", 1.0)]):
        with pytest.raises(ValueError, match="block_probabilities"):
            md.MetaDriveConfig(block_probabilities=bad)


def test_speed_limit_factor_peaks_the_reward_per_step_at_the_limit():
    f = md.speed_limit_factor
    assert [f(v, 30.0) for v in (0.0, 20.0, 30.0, 45.0, 60.0, 90.0)] == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0]
    speeds = np.linspace(0.0, 80.0, 801)
    shaped = speeds * np.array([f(v, 30.0) for v in speeds])  # reward per step ~ speed
    assert speeds[int(np.argmax(shaped))] == 30.0


def test_speed_limit_scales_the_training_reward_above_the_limit_only(make_env):
    """The same scenario and actions with and without the limit: the same physics, and
    each step's reward differs exactly by the factor of the car's speed on the steps
    that earn progress above the limit; the terminal step's penalty is untouched."""
    cfg = SMALL.replace(horizon=200)
    runs = {}
    for limit in (None, 10.0):
        env = make_env(cfg.replace(speed_limit_km_h=limit))
        env.reset(options={"scenario": 4})
        steps = []
        for _ in range(200):
            obs, reward, terminated, truncated, info = env.step(TURN_FULL_THROTTLE if len(steps) >= 60 else
                                                                np.array([0.0, 1.0], dtype=np.float32))
            steps.append((obs, reward, terminated, env.metadrive_env.agent.speed_km_h, info.get("step_reward")))
            if terminated or truncated:
                break
        env.close()
        runs[limit] = steps
    plain, limited = runs[None], runs[10.0]
    assert len(plain) == len(limited) and plain[-1][2] and limited[-1][2]  # left the road at the same step
    scaled = 0
    for (obs0, r0, term0, v0, sr0), (obs1, r1, term1, v1, sr1) in zip(plain, limited):
        np.testing.assert_array_equal(obs0, obs1)
        assert v0 == v1 and sr0 == sr1
        if not term0 and r0 > 0:
            assert r1 == pytest.approx(r0 * md.speed_limit_factor(v0, 10.0), rel=1e-12)
            scaled += v0 > 10.0
        else:
            assert r1 == r0
    assert scaled >= 10  # the limit was passed, and the factor applied
    assert sum(r for _, r, *_ in limited) < sum(r for _, r, *_ in plain)


def test_speed_limit_is_a_training_option():
    from ppo_core.envs.metadrive.family import MetaDriveFamily

    cfg = SMALL.replace(speed_limit_km_h=30)
    assert cfg.speed_limit_km_h == 30.0 and "speed_limit_km_h" in md.TRAINING_ONLY
    assert cfg.for_evaluation(10000, 20).speed_limit_km_h is None
    assert MetaDriveFamily().eval_setup(cfg.to_dict(), 5, {}).config.speed_limit_km_h is None
    assert md.MetaDriveConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (0, -5.0, float("nan"), float("inf"), True, "30"):
        with pytest.raises(ValueError, match="speed_limit_km_h must be a positive number"):
            md.MetaDriveConfig(speed_limit_km_h=bad)


def test_scenario_shards_keep_each_env_on_its_share_of_the_maps():
    cfg = SMALL.replace(scenario_shards=4)  # 10 scenarios: shards {0,4,8}, {1,5,9}, {2,6}, {3,7}
    envs = [md.MetaDriveGymEnv(cfg, seed=100 + i) for i in range(4)]  # consecutive seeds: shards 0..3
    assert sorted(s for e in envs for s in e.draw_scenarios) == list(range(10))
    assert [e.draw_scenarios for e in envs] == [[0, 4, 8], [1, 5, 9], [2, 6], [3, 7]]
    for e in envs:
        e.close()
    with pytest.raises(ValueError, match="scenario_shards"):
        md.MetaDriveConfig(num_scenarios=3, scenario_shards=4)


def test_sharded_resets_stay_in_the_shard(make_env):
    env = make_env(SMALL.replace(scenario_shards=3, horizon=5), seed=7)  # shard 7 % 3 = 1: {1, 4, 7}
    seen = set()
    for seed in (123, None, None, None, None):
        env.reset(seed=seed)
        seen.add(env.current_scenario)
    assert seen <= {1, 4, 7} and len(seen) >= 2


def test_a_killed_eval_worker_is_replaced_and_its_episode_rerun():
    import signal

    cfg = SMALL.replace(start_seed=700, num_scenarios=4, horizon=40)
    killed = []

    with md.ParallelEvaluator(cfg, num_workers=2) as ev:
        def straight_then_kill(obs):
            if not killed and obs.shape[0] == 2:
                killed.append(ev._procs[0].pid)
                os.kill(ev._procs[0].pid, signal.SIGKILL)  # busy: mid-episode, a step command coming
                ev._procs[0].join(timeout=10)
            return np.tile(STRAIGHT, (obs.shape[0], 1))

        episodes = ev.run_episodes(straight_then_kill, list(cfg.scenarios))
        assert killed and ev.restarts == 1
        assert ev._procs[0].pid != killed[0] and ev._procs[0].is_alive()
        assert [e["scenario"] for e in episodes] == [700, 701, 702, 703]
        assert all(e["length"] == 40 or e["success"] or e["crash"] or e["out_of_road"] for e in episodes)
        # the replacement worker keeps serving later evaluations
        again = ev.run_episodes(lambda obs: np.tile(STRAIGHT, (obs.shape[0], 1)), [701])
        assert [e["scenario"] for e in again] == [701]


def test_eval_workers_that_keep_dying_give_up_with_one_error():
    import signal

    cfg = SMALL.replace(start_seed=700, num_scenarios=2, horizon=40)
    with md.ParallelEvaluator(cfg, num_workers=1, max_restarts=2) as ev:
        def kill_every_time(obs):
            os.kill(ev._procs[0].pid, signal.SIGKILL)
            ev._procs[0].join(timeout=10)
            return np.tile(STRAIGHT, (obs.shape[0], 1))

        with pytest.raises(md.EvalWorkerError, match="gave up: workers failed 3 times"):
            ev.run_episodes(kill_every_time, [700])
        assert ev.restarts == 2


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A MetaDrive run of one 16-step update (2 scenarios, horizon 20)."""
    pytest.importorskip("torch")
    from ppo_core import train as T

    run = tmp_path_factory.mktemp("tiny") / "run"
    T.train(T.PPOConfig(env_id="metadrive", num_envs=1, num_steps=16, total_steps=16, num_minibatches=1,
                        update_epochs=1, env_kwargs={"num_scenarios": 2, "horizon": 20}), run)
    return run


def test_eval_prints_each_rate_with_its_interval(tiny_run, capsys):
    from ppo_core import cli

    code = cli.main(["eval", str(tiny_run), "--episodes", "2", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "2 episodes on scenarios 10000..10001" in out
    for name in ("success", "crash", "out of road"):
        assert f"  {name}" in out
    assert out.count("(95% interval") == 3 and "route completion" in out


def test_eval_gif_path_is_checked_before_any_episode_runs(tmp_path, tiny_run, capsys, monkeypatch):
    from ppo_core import cli

    run = tiny_run
    afile = tmp_path / "afile"
    afile.write_text("x")

    def must_not_run(*args, **kwargs):
        raise AssertionError("episodes ran before the --gif path was checked")

    monkeypatch.setattr(md_family, "evaluate_policy", must_not_run)  # what `ppo-core eval` runs
    code = cli.main(["eval", str(run), "--episodes", "2", "--gif", str(afile / "sub" / "x.gif")])
    err = capsys.readouterr().err
    assert code == 1 and "is a file, not a folder" in err and len(err.strip().splitlines()) == 1


def test_eval_gives_up_in_one_line_after_repeated_worker_failures(tiny_run, capsys, monkeypatch):
    from ppo_core import cli

    run = tiny_run

    def dying(*args, **kwargs):
        raise md.EvalWorkerError("MetaDrive evaluation gave up: workers failed 4 times in one evaluation "
                                 "(last: worker 0 died (exit code -9))")

    monkeypatch.setattr(md_family, "evaluate_policy", dying)
    code = cli.main(["eval", str(run), "--episodes", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "gave up" in err and len(err.strip().splitlines()) == 1


def test_drive_stats_script_records_each_episode(tiny_run, tmp_path, capsys, monkeypatch):
    """scripts/drive_stats.py (the study's diagnostic) on a tiny run, with the steering filter."""
    import json
    import pathlib

    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
    import drive_stats

    out = tmp_path / "drive.jsonl"
    assert drive_stats.main([str(tiny_run), "--episodes", "2", "--smooth", "0.5", "--episodes-out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["scenario"] for r in rows] == [10000, 10001] and summary["episodes"] == 2
    assert summary["smooth"] == 0.5
    for r in rows:
        assert 1 <= r["length"] <= 20 and 0 <= r["clipped_input_share"] <= 1
        assert r["end_block"] and r["blocks"].startswith("I")
        assert (r["out_of_road_cause"] in ("off_lane", "sidewalk", "yellow_line", "white_line", "other")) \
            == r["out_of_road"]
    assert sum(summary["out_of_road_by_cause"].values()) == sum(r["out_of_road"] for r in rows)
    with pytest.raises(SystemExit):
        drive_stats.main([str(tiny_run), "--smooth", "1"])
    assert "--smooth must be in [0, 1)" in capsys.readouterr().err

    # the speed diagnostics: no throttle at all keeps the car below any cap it starts under
    assert drive_stats.main([str(tiny_run), "--episodes", "1", "--throttle-scale", "0", "--max-speed", "5"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["throttle_scale"], summary["max_speed_cap"]) == (0.0, 5.0) and summary["max_speed"] < 5
    for args, message in ((["--throttle-scale", "1.5"], "--throttle-scale must be in [0, 1]"),
                          (["--max-speed", "0"], "--max-speed must be > 0")):
        with pytest.raises(SystemExit):
            drive_stats.main([str(tiny_run), *args])
        assert message in capsys.readouterr().err
