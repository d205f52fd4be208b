"""The gymnasium env around MetaDrive's ``MetaDriveEnv``, and vector envs of it.

MetaDrive is imported when an env is built (``MetaDriveGymEnv.__init__``), not when this
module is. The engine starts on the first ``reset()``; one engine per process.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import gymnasium as gym
import numpy as np

from .assets import ensure_offline_assets
from .config import MetaDriveConfig, scenario_for_seed, speed_limit_factor

__all__ = ["MetaDriveGymEnv", "make_metadrive_env", "make_vector_env", "worker_context", "FORKSERVER_PRELOAD",
           "START_METHOD_ENV"]

#: Set this environment variable to a start method (``spawn``, ``forkserver``, ``fork``)
#: to override the default of :func:`worker_context` for every MetaDrive worker.
START_METHOD_ENV = "PPO_CORE_WORKER_START_METHOD"

#: Modules the forkserver imports once, before it forks MetaDrive workers: each worker then
#: starts without importing MetaDrive again (3-5 s of CPU a worker on the project's machine).
FORKSERVER_PRELOAD = ("metadrive.envs.metadrive_env",)


def worker_context(method: Optional[str] = None) -> str:
    """The multiprocessing start method for MetaDrive worker processes.

    ``None`` (the default everywhere in this package) takes the environment variable
    :data:`START_METHOD_ENV` when it is set, and otherwise ``"spawn"``. ``"forkserver"``
    forks each worker from a separate server process that has imported MetaDrive
    (:data:`FORKSERVER_PRELOAD`; MetaDrive imports torch with it) but has built no engine
    and run nothing: 8 workers start about 3x faster, but a whole 40 960-step training
    process was not faster in the one measurement made (docs/metadrive-study.md,
    "Worker start method"), so it is not the default. Both are safe in a parent that
    holds torch threads or a MetaDrive engine; ``"fork"`` is only safe in a parent
    without either.

    For ``"forkserver"`` the modules are added to the forkserver's preload list
    (``multiprocessing.set_forkserver_preload``). The list and the server belong to the
    whole process: other forkserver users in it then import MetaDrive too, and once the
    server runs, the list no longer changes anything. Forkserver workers see the
    environment variables of the moment the server started (the first forkserver
    worker of the process), not those set in the parent later; spawn workers see the
    parent's environment at their own start.
    """
    methods = multiprocessing.get_all_start_methods()
    if method is None:
        method = os.environ.get(START_METHOD_ENV) or "spawn"
        if method not in methods:
            raise ValueError(f"environment variable {START_METHOD_ENV} must be one of {', '.join(methods)}, "
                             f"got {method!r}")
    if method == "forkserver":
        from multiprocessing import forkserver

        # add to what is already asked for (the list is private: empty when it cannot be read)
        current = list(getattr(getattr(forkserver, "_forkserver", None), "_preload_modules", None) or [])
        missing = [m for m in FORKSERVER_PRELOAD if m not in current]
        if missing:
            multiprocessing.set_forkserver_preload(current + missing)
    return method

# MetaDrive config keys that need the 3D assets (and a render pipeline).
_ASSET_KEYS = ("use_render", "image_observation", "image_on_cuda")


class MetaDriveGymEnv(gym.Env):
    """A gymnasium ``Env`` around MetaDrive's single-agent ``MetaDriveEnv``.

    Observations are MetaDrive's default lidar-state vectors (float32, shape (259,) with
    the default config); actions are ``[steering, throttle_brake]`` in ``[-1, 1]``.

    The MetaDrive engine starts on the first :meth:`reset`, so constructing this object
    (e.g. by ``AsyncVectorEnv`` in the parent process, to read the spaces) is cheap and
    safe. Only one instance per process may be reset/stepped at a time.

    Info dicts are MetaDrive's (``arrive_dest``, ``crash``, ``out_of_road``,
    ``max_step``, ``route_completion``, ``env_seed`` = current scenario, ...).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        config: Optional[MetaDriveConfig] = None,
        seed: Optional[int] = None,
        render_mode: Optional[str] = None,
        render_kwargs: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Create the env (no engine yet).

        Args:
            config: Scenario range and MetaDrive options; default :class:`MetaDriveConfig`.
            seed: Seeds the generator that picks scenarios on ``reset()`` without a seed,
                so a vector env gets reproducible, distinct sequences per worker.
            render_mode: ``"rgb_array"`` makes :meth:`render` return a top-down frame.
            render_kwargs: Extra arguments for MetaDrive's top-down renderer.
        """
        super().__init__()
        self.config = config if config is not None else MetaDriveConfig()
        status = ensure_offline_assets()
        md_config = self.config.metadrive_dict()
        if status == "patched" and any(md_config.get(k) for k in _ASSET_KEYS):
            raise RuntimeError(
                f"{[k for k in _ASSET_KEYS if md_config.get(k)]} need MetaDrive's 3D assets, which are "
                "not installed; run `python -m metadrive.pull_asset` (needs network) or use the "
                "top-down renderer"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.render_kwargs: Dict[str, Any] = dict(screen_size=(400, 400), window=False)
        self.render_kwargs.update(render_kwargs or {})

        from metadrive.envs.metadrive_env import MetaDriveEnv

        self._env = MetaDriveEnv(md_config)
        space = self._env.observation_space
        self.observation_space = gym.spaces.Box(
            low=space.low.astype(np.float32), high=space.high.astype(np.float32), dtype=np.float32
        )
        aspace = self._env.action_space
        self.action_space = gym.spaces.Box(
            low=aspace.low.astype(np.float32), high=aspace.high.astype(np.float32), dtype=np.float32
        )
        self._maps_preloaded = False
        self.current_scenario: Optional[int] = None
        shards = self.config.scenario_shards
        shard = 0 if seed is None else int(seed) % shards
        #: The scenarios this env draws its unseeded resets from (its shard of the range).
        self.draw_scenarios: List[int] = [s for s in self.config.scenarios if (s - self.config.start_seed) % shards == shard]
        if seed is not None:
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)

    # -- gymnasium API -----------------------------------------------------------------

    def reset(
        self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None
    ) -> Tuple[np.ndarray, Dict[str, Any]]:
        """Start an episode; choose the scenario.

        Scenario choice, in order of precedence:

        1. ``options={"scenario": k}``: exactly scenario ``k`` (must be in range).
        2. ``seed=s``: seeds this env's generator and selects scenario
           :func:`scenario_for_seed` ``(s)`` (``s`` itself when in range); with
           ``scenario_shards > 1``, scenario ``s mod (shard size)`` of this env's shard.
        3. neither: a uniformly random scenario of the range (of this env's shard with
           ``scenario_shards > 1``), drawn from this env's generator (seeded by the last
           seed given, or the constructor's ``seed``).

        Other ``options`` keys are ignored (gymnasium's vector envs pass options).
        """
        super().reset(seed=seed)
        cfg = self.config
        if options and options.get("scenario") is not None:
            scenario = int(options["scenario"])
            if scenario not in cfg.scenarios:
                raise ValueError(f"scenario {scenario} outside [{cfg.start_seed}, {cfg.scenarios.stop})")
        elif seed is not None and cfg.scenario_shards == 1:
            scenario = scenario_for_seed(seed, cfg.start_seed, cfg.num_scenarios)
        elif seed is not None:  # stay in the shard: the env caches only its own maps
            scenario = self.draw_scenarios[int(seed) % len(self.draw_scenarios)]
        elif cfg.scenario_shards == 1:
            scenario = cfg.start_seed + int(self.np_random.integers(cfg.num_scenarios))
        else:
            scenario = self.draw_scenarios[int(self.np_random.integers(len(self.draw_scenarios)))]
        if cfg.preload_maps and not self._maps_preloaded:
            self._preload_maps()
        if cfg.traffic_density_range is not None:
            # MetaDrive's traffic manager reads the density from the engine's global config
            # (this env's config object) at every reset.
            low, high = cfg.traffic_density_range  # [low, high], checked by MetaDriveConfig
            self._env.config["traffic_density"] = float(self.np_random.uniform(low, high))
        obs, info = self._env.reset(seed=scenario)
        self.current_scenario = scenario
        return np.asarray(obs, dtype=np.float32), info

    def step(self, action: Any) -> Tuple[np.ndarray, float, bool, bool, Dict[str, Any]]:
        """Step MetaDrive; ``truncated`` only when the horizon ends a non-terminal step.

        With ``speed_limit_km_h`` set, a positive reward of a non-terminal step (MetaDrive's
        progress and speed terms, ``info["step_reward"]``) is scaled by
        :func:`~.config.speed_limit_factor` of the car's speed after the step."""
        obs, reward, terminated, truncated, info = self._env.step(np.asarray(action, dtype=np.float32))
        terminated = bool(terminated)
        truncated = bool(truncated) and not terminated
        reward = float(reward)
        limit = self.config.speed_limit_km_h
        if limit is not None and not terminated and reward > 0 and reward == info.get("step_reward"):
            reward *= speed_limit_factor(float(self._env.agent.speed_km_h), limit)
        return np.asarray(obs, dtype=np.float32), reward, terminated, truncated, info

    def render(self) -> Optional[np.ndarray]:
        """Top-down RGB frame (H, W, 3) uint8 when ``render_mode == "rgb_array"``."""
        if self.render_mode != "rgb_array":
            return None
        frame = self._env.render(mode="topdown", **self.render_kwargs)
        return None if frame is None else np.asarray(frame, dtype=np.uint8)

    def close(self) -> None:
        """Shut the MetaDrive engine down (frees the per-process singleton)."""
        env = getattr(self, "_env", None)
        if env is not None:
            env.close()

    # -- helpers -----------------------------------------------------------------------

    @property
    def metadrive_env(self) -> Any:
        """The wrapped ``metadrive.MetaDriveEnv``."""
        return self._env

    def _preload_maps(self) -> None:
        """Build and store every map of the range once, by visiting each scenario."""
        self._maps_preloaded = True
        for s in self.config.scenarios:
            self._env.reset(seed=s)


def make_metadrive_env(
    config: Optional[MetaDriveConfig] = None, seed: Optional[int] = None, **kwargs: Any
) -> MetaDriveGymEnv:
    """Build one :class:`MetaDriveGymEnv` (picklable as ``functools.partial`` for workers)."""
    return MetaDriveGymEnv(config, seed=seed, **kwargs)


def make_vector_env(
    config: Optional[MetaDriveConfig] = None,
    num_envs: Optional[int] = None,
    seed: Optional[int] = None,
    context: Optional[str] = None,
) -> gym.vector.AsyncVectorEnv:
    """An ``AsyncVectorEnv`` of MetaDrive envs, one engine per worker process.

    Autoreset mode is ``SAME_STEP``: when sub-env ``i`` ends at a step, the returned
    observation is already the first one of its next episode, and the real final
    observation is ``info["final_obs"][i]`` (object array, ``None`` elsewhere; mask
    ``info["_final_obs"]``); the final step's info is ``info["final_info"]`` (a dict of
    batched arrays, mask ``info["final_info"]["_<key>"]`` / ``info["_final_info"]``).
    The trainer's :class:`~ppo_core.train.RolloutCollector` reads both.

    Always asynchronous, even for ``num_envs == 1``: a ``SyncVectorEnv`` would put the
    engine into the calling process, where a second MetaDrive env (evaluation, GIF)
    cannot start.

    Args:
        config: Scenario range and options (default: training defaults).
        num_envs: Number of worker processes; default ``os.cpu_count()``.
        seed: Worker ``i`` gets scenario-choice seed ``seed + i``, so ``reset()`` without
            a seed is reproducible. ``None``: OS entropy.
        context: multiprocessing start method; default: :data:`START_METHOD_ENV` when
            set, else ``"spawn"``; ``"forkserver"`` starts workers from a server with
            MetaDrive preloaded (:func:`worker_context`).
    """
    config = config if config is not None else MetaDriveConfig()
    n = num_envs if num_envs is not None else (os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"num_envs must be >= 1, got {n}")
    fns = [
        functools.partial(make_metadrive_env, config, None if seed is None else seed + i)
        for i in range(n)
    ]
    return gym.vector.AsyncVectorEnv(
        fns, context=worker_context(context), autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
