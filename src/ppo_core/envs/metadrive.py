"""MetaDrive environment layer: offline assets, gymnasium env, vector envs, evaluation, GIFs.

Everything here targets ``metadrive-simulator==0.4.3`` (PyPI) with gymnasium >= 1.1.

Design notes (measured facts are in ``docs/metadrive-notes.md``):

* **No network, ever.** MetaDrive 0.4.3 calls ``BaseEngine.try_pull_asset()`` when its
  engine starts and downloads ``assets.zip`` when ``metadrive/assets/version.txt`` or
  ``assets/textures/grass1/GroundGrassGreen002_COL_1K.jpg`` is missing (or the version
  differs). Physics-only stepping and the top-down renderer use none of these files.
  :func:`ensure_offline_assets` replaces that check by a no-op *in the current process*
  when the real assets are absent, and leaves MetaDrive untouched when they are present.
  It never writes into site-packages. Every env built here calls it first.
* **One engine per process.** MetaDrive's engine is a process-wide singleton. The
  :class:`MetaDriveGymEnv` creates it lazily on the first ``reset()``, so building the
  object (as gymnasium's ``AsyncVectorEnv`` does in the parent process to read the
  spaces) costs only the MetaDrive import and starts no engine. Run envs in worker
  processes (:func:`make_vector_env`, :class:`ParallelEvaluator`); a second env that
  steps in a process that already has a live engine fails.
* **Scenario selection.** MetaDrive's ``reset(seed=s)`` needs
  ``start_seed <= s < start_seed + num_scenarios``; see :meth:`MetaDriveGymEnv.reset`
  for how gymnasium seeds are mapped into that range.
* **terminated / truncated.** Crash, out-of-road and arrival give ``terminated=True``
  (MetaDrive's default ``*_done`` settings); reaching the horizon gives
  ``truncated=True`` with ``info["max_step"]``. MetaDrive reports *both* flags when the
  horizon step is also a crash step; this wrapper then returns ``terminated=True,
  truncated=False`` (a real terminal state wins, so it is never bootstrapped).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import gymnasium as gym
import numpy as np

from ppo_core.stats import wilson_interval

__all__ = [
    "ALLOW_DOWNLOAD_ENV",
    "EVAL_START_SEED",
    "VALIDATION_START_SEED",
    "TEST_START_SEED",
    "EPISODE_KEYS",
    "EvalWorkerError",
    "RATE_FLAGS",
    "MetaDriveConfig",
    "MetaDriveGymEnv",
    "ParallelEvaluator",
    "asset_status",
    "ensure_offline_assets",
    "episode_metrics",
    "evaluate_policy",
    "make_metadrive_env",
    "make_vector_env",
    "scenario_for_seed",
    "summarize_episodes",
    "write_topdown_gif",
]

logger = logging.getLogger(__name__)

#: Set this environment variable to ``1`` to let MetaDrive download its 3D assets as it
#: normally would (only useful for 3D rendering; never needed for training).
ALLOW_DOWNLOAD_ENV = "PPO_CORE_METADRIVE_ALLOW_ASSET_DOWNLOAD"

#: The project's three disjoint scenario ranges (documented in docs/metadrive-study.md).
#: Scenarios from 50 000 on are left to checks by others. Training uses
#: ``[0, num_scenarios)`` (the preset: 0-99; at most 0-9 999); validation, for every
#: choice (periodic evaluation, hyper-parameters, checkpoints, variants), starts at
#: :data:`VALIDATION_START_SEED`; the test range, evaluated once per final policy for
#: the reported number, starts at :data:`TEST_START_SEED`.
TRAIN_SCENARIO_LIMIT = 10_000
VALIDATION_START_SEED = 10_000
TEST_START_SEED = 20_000
RESERVED_START_SEED = 50_000

#: First scenario of the default held-out evaluation range: the validation range.
#: (MetaDrive's own generalization example does the reverse: trains on seeds 5000..
#: and evaluates on 0..199.)
EVAL_START_SEED = VALIDATION_START_SEED

ActFn = Callable[[np.ndarray], np.ndarray]

# --------------------------------------------------------------------------------------
# Offline assets
# --------------------------------------------------------------------------------------

_GRASS_TEXTURE = ("textures", "grass1", "GroundGrassGreen002_COL_1K.jpg")
_offline_state: Optional[str] = None  # result of the first ensure_offline_assets() call


def asset_status() -> Tuple[str, Path]:
    """Report the state of MetaDrive's 3D assets, mirroring MetaDrive 0.4.3's own check.

    Returns:
        ``(status, asset_dir)`` where status is ``"present"`` (``version.txt`` matches
        the installed MetaDrive and the grass texture exists: MetaDrive would not download),
        ``"missing"`` (no asset folder or no ``version.txt``) or ``"outdated"`` (folder
        present but the version differs or the grass texture is missing: MetaDrive would
        re-download).
    """
    from metadrive.engine.asset_loader import AssetLoader
    from metadrive.version import VERSION

    asset_dir = Path(str(AssetLoader.asset_path))
    version_file = asset_dir / "version.txt"
    if not version_file.is_file():
        return "missing", asset_dir
    lines = version_file.read_text().splitlines()
    version = lines[0].replace(" ", "") if lines else ""
    if version != VERSION or not asset_dir.joinpath(*_GRASS_TEXTURE).is_file():
        return "outdated", asset_dir
    return "present", asset_dir


def _skip_asset_pull() -> None:
    """Replacement for ``BaseEngine.try_pull_asset``: never touches the network."""
    logger.debug("MetaDrive engine start: asset download skipped (ppo_core offline mode)")


def ensure_offline_assets(allow_download: Optional[bool] = None) -> str:
    """Make sure starting a MetaDrive engine in this process never downloads anything.

    MetaDrive 0.4.3's ``BaseEngine.try_pull_asset`` (run at every engine start) downloads
    a zip when the 3D assets are missing or outdated. Physics-only stepping and the
    top-down renderer need none of them. This function:

    * leaves MetaDrive untouched if the real assets are present (MetaDrive's check then
      only logs the version and never downloads);
    * otherwise replaces ``BaseEngine.try_pull_asset`` in this process by a no-op, so no
      download is attempted (nothing on disk is changed; a user can still run
      ``python -m metadrive.pull_asset`` at any time to get the real assets);
    * does nothing if downloads are explicitly allowed (argument, or the environment
      variable :data:`ALLOW_DOWNLOAD_ENV` set to ``1``).

    It logs one INFO line per process saying what it did; later calls are cheap.

    Args:
        allow_download: ``True`` keeps MetaDrive's download behaviour. ``None`` reads
            :data:`ALLOW_DOWNLOAD_ENV`.

    Returns:
        ``"present"`` (real assets, untouched), ``"patched"`` (download disabled) or
        ``"download-allowed"``.
    """
    global _offline_state
    if _offline_state is not None:
        return _offline_state
    if allow_download is None:
        allow_download = os.environ.get(ALLOW_DOWNLOAD_ENV, "") == "1"
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    from metadrive.engine.base_engine import BaseEngine

    status, asset_dir = asset_status()
    # One INFO line per run: worker processes (vector envs, evaluators) log at DEBUG.
    info = logging.INFO if multiprocessing.parent_process() is None else logging.DEBUG
    if status == "present":
        logger.log(info, "MetaDrive assets found at %s; using them, no download check changed", asset_dir)
        _offline_state = "present"
    elif allow_download:
        logger.warning(
            "MetaDrive assets %s at %s and %s=1: MetaDrive may download them at engine start",
            status, asset_dir, ALLOW_DOWNLOAD_ENV,
        )
        _offline_state = "download-allowed"
    else:
        BaseEngine.try_pull_asset = staticmethod(_skip_asset_pull)
        logger.log(
            info,
            "MetaDrive 3D assets %s at %s: disabled MetaDrive's asset download "
            "(BaseEngine.try_pull_asset) in this process; physics and the top-down renderer "
            "need no assets (3D rendering would: run `python -m metadrive.pull_asset`)",
            status, asset_dir,
        )
        _offline_state = "patched"
    return _offline_state


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------

# Above this many scenarios, caching every map (store_map) costs > ~1.5 GB per worker.
_MANY_MAPS = 300

# MetaDrive config keys that need the 3D assets (and a render pipeline).
_ASSET_KEYS = ("use_render", "image_observation", "image_on_cuda")


@dataclass
class MetaDriveConfig:
    """The MetaDrive options ppo_core exposes (everything else: :attr:`overrides`).

    Defaults follow the MetaDrive paper's generalization setup: a fixed set of
    procedurally generated training scenarios, traffic density 0.1, horizon 1000.

    Attributes:
        num_scenarios: Number of scenarios (maps + traffic) in the range.
        start_seed: First scenario index; the range is
            ``[start_seed, start_seed + num_scenarios)``.
        traffic_density: MetaDrive ``traffic_density``.
        horizon: Episode step limit; reaching it is a truncation. ``None``: no limit.
        map: MetaDrive ``map``: number of blocks (int) or a block-type string.
        random_traffic: If True traffic varies between resets of the same scenario;
            False (MetaDrive default) makes each scenario fully deterministic.
        store_map: Keep each scenario's generated map after first use: a revisit
            resets in ~0.03 s instead of ~0.15 s, but each stored map costs ~5 MB of
            worker RSS (measured: 100 scenarios -> +540 MB). Turn off for large ranges.
        preload_maps: Generate every map of the range when the engine starts
            (implies ``store_map``; slow start for large ranges).
        log_level: Level of MetaDrive's own logger ("MetaDrive").
        scenario_shards: Split the range into this many shards, scenario ``s`` in shard
            ``(s - start_seed) % scenario_shards``; an env built with seed ``k`` draws its
            episodes (resets without a seed) from shard ``k % scenario_shards`` only. With
            as many shards as workers and consecutive worker seeds (as every vector env
            here gives), each worker builds and caches only its own share of the maps,
            and every batch still covers the whole range. 1: no sharding.
        traffic_density_range: ``[low, high]``: every reset draws the episode's traffic
            density uniformly from this range (from the env's seeded generator) instead
            of using ``traffic_density``. A training option: evaluation always runs at
            the fixed ``traffic_density``.
        overrides: Extra raw MetaDrive config entries, applied last.
    """

    num_scenarios: int = 100
    start_seed: int = 0
    traffic_density: float = 0.1
    horizon: Optional[int] = 1000
    map: Union[int, str] = 3
    random_traffic: bool = False
    store_map: bool = True
    preload_maps: bool = False
    log_level: int = logging.WARNING
    traffic_density_range: Optional[List[float]] = None
    scenario_shards: int = 1
    overrides: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.scenario_shards, int) or isinstance(self.scenario_shards, bool) \
                or not 1 <= self.scenario_shards <= self.num_scenarios:
            raise ValueError(f"scenario_shards must be an integer in [1, num_scenarios={self.num_scenarios}], "
                             f"got {self.scenario_shards!r}")
        if self.traffic_density_range is not None:
            r = self.traffic_density_range
            if (not isinstance(r, (list, tuple)) or len(r) != 2
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in r)
                    or not 0.0 <= r[0] <= r[1] <= 1.0):
                raise ValueError(f"traffic_density_range must be [low, high] with 0 <= low <= high <= 1, got {r!r}")
            self.traffic_density_range = [float(r[0]), float(r[1])]
        if self.num_scenarios < 1:
            raise ValueError(f"num_scenarios must be >= 1, got {self.num_scenarios}")
        if self.start_seed < 0:
            raise ValueError(f"start_seed must be >= 0, got {self.start_seed}")
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"horizon must be >= 1 or None, got {self.horizon}")
        if (self.store_map or self.preload_maps) and self.num_scenarios / self.scenario_shards > _MANY_MAPS:
            logger.warning(
                "store_map with %d scenarios: each worker may grow by ~%d MB as maps are cached; "
                "consider store_map=False", self.num_scenarios, 5 * self.num_scenarios,
            )

    def replace(self, **changes: Any) -> "MetaDriveConfig":
        """Return a copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict of the fields (for saving with a run)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MetaDriveConfig":
        """Build from :meth:`to_dict` output; unknown keys raise ``TypeError``."""
        return cls(**dict(data))

    @property
    def scenarios(self) -> range:
        """The valid scenario indices."""
        return range(self.start_seed, self.start_seed + self.num_scenarios)

    def metadrive_dict(self) -> Dict[str, Any]:
        """The config dict passed to ``metadrive.MetaDriveEnv``."""
        d: Dict[str, Any] = dict(
            num_scenarios=self.num_scenarios,
            start_seed=self.start_seed,
            traffic_density=self.traffic_density,
            horizon=self.horizon,
            map=self.map,
            random_traffic=self.random_traffic,
            store_map=self.store_map or self.preload_maps,
            use_render=False,
            image_observation=False,
            log_level=self.log_level,
        )
        d.update(self.overrides)
        return d


def scenario_for_seed(seed: int, start_seed: int, num_scenarios: int) -> int:
    """Map any integer seed to a valid MetaDrive scenario index.

    A seed inside ``[start_seed, start_seed + num_scenarios)`` selects that scenario;
    any other integer is wrapped into the range: ``start_seed + (seed - start_seed) %
    num_scenarios``.
    """
    return start_seed + (int(seed) - start_seed) % num_scenarios


# --------------------------------------------------------------------------------------
# The gymnasium env
# --------------------------------------------------------------------------------------


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
            self._env.config["traffic_density"] = float(self.np_random.uniform(*cfg.traffic_density_range))
        obs, info = self._env.reset(seed=scenario)
        self.current_scenario = scenario
        return np.asarray(obs, dtype=np.float32), info

    def step(self, action: Any) -> Tuple[np.ndarray, float, bool, bool, Dict[str, Any]]:
        """Step MetaDrive; ``truncated`` only when the horizon ends a non-terminal step."""
        obs, reward, terminated, truncated, info = self._env.step(np.asarray(action, dtype=np.float32))
        terminated = bool(terminated)
        truncated = bool(truncated) and not terminated
        return np.asarray(obs, dtype=np.float32), float(reward), terminated, truncated, info

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
    context: Optional[str] = "spawn",
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
        context: multiprocessing start method. ``"spawn"`` (default) is safe when the
            parent already holds torch threads or a MetaDrive engine; ``"fork"`` starts
            faster but is only safe in a parent without either.
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
        fns, context=context, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )


# --------------------------------------------------------------------------------------
# Episode metrics
# --------------------------------------------------------------------------------------

METRIC_KEYS = (
    "success_rate",
    "crash_rate",
    "out_of_road_rate",
    "route_completion",
    "mean_return",
    "std_return",
    "mean_length",
    "episodes",
    "success_rate_ci",
    "crash_rate_ci",
    "out_of_road_rate_ci",
)

#: Each rate of an evaluation summary and the per-episode flag it counts.
RATE_FLAGS = {"success_rate": "success", "crash_rate": "crash", "out_of_road_rate": "out_of_road"}

#: The keys of one line of ``ppo-core eval --episodes-out`` (one evaluated episode).
EPISODE_KEYS = ("scenario", "success", "crash", "out_of_road", "route_completion", "return", "length")


def episode_metrics(info: Mapping[str, Any], ep_return: float, ep_len: int) -> Dict[str, Any]:
    """Outcome of one episode from the info of its last step.

    ``crash`` is MetaDrive's ``info["crash"]`` (vehicle, object, building, human or
    sidewalk). Flags are not exclusive: hitting the sidewalk is both ``crash`` and
    ``out_of_road``; a horizon-ending crash is ``crash`` and ``max_step``.

    Returns:
        dict with ``success``, ``crash``, ``out_of_road``, ``max_step`` (bools),
        ``route_completion`` (float, MetaDrive's ``info["route_completion"]``),
        ``return``, ``length`` and ``scenario`` (``info["env_seed"]`` or None).
    """
    seed = info.get("env_seed")
    return {
        "success": bool(info.get("arrive_dest", False)),
        "crash": bool(info.get("crash", False)),
        "out_of_road": bool(info.get("out_of_road", False)),
        "max_step": bool(info.get("max_step", False)),
        "route_completion": float(info.get("route_completion", float("nan"))),
        "return": float(ep_return),
        "length": int(ep_len),
        "scenario": None if seed is None else int(seed),
    }


def summarize_episodes(episodes: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Aggregate :func:`episode_metrics` dicts into the evaluation report.

    Keys: ``success_rate``, ``crash_rate``, ``out_of_road_rate`` (fractions in [0, 1]),
    ``route_completion`` (mean), ``mean_return``, ``std_return`` (population std),
    ``mean_length``, ``episodes`` (count), and for each rate a 95% Wilson interval
    ``<rate>_ci`` = ``[low, high]`` (:func:`ppo_core.stats.wilson_interval`).
    """
    n = len(episodes)
    if n == 0:
        raise ValueError("no episodes to summarize")

    def mean(key: str) -> float:
        return float(np.mean([float(e[key]) for e in episodes]))

    returns = np.array([e["return"] for e in episodes], dtype=np.float64)
    summary: Dict[str, Any] = {
        "success_rate": mean("success"),
        "crash_rate": mean("crash"),
        "out_of_road_rate": mean("out_of_road"),
        "route_completion": mean("route_completion"),
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "mean_length": mean("length"),
        "episodes": n,
    }
    for rate, flag in RATE_FLAGS.items():
        low, high = wilson_interval(sum(bool(e[flag]) for e in episodes), n)
        summary[f"{rate}_ci"] = [low, high]
    return summary


# --------------------------------------------------------------------------------------
# Parallel evaluation and GIFs (worker processes driven by a policy in this process)
# --------------------------------------------------------------------------------------


class EvalWorkerError(RuntimeError):
    """MetaDrive evaluation workers kept dying or failing: the evaluation gave up."""


class _WorkerLost(Exception):
    """An evaluation worker died or reported an error (internal: the evaluator replaces it)."""


def _eval_worker(conn: multiprocessing.connection.Connection, config: MetaDriveConfig, render: bool,
                 render_kwargs: Optional[Dict[str, Any]]) -> None:
    """Worker loop: one MetaDrive env; commands ("reset", scenario) / ("step", action) / ("close", None)."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env: Optional[MetaDriveGymEnv] = None
    try:
        env = MetaDriveGymEnv(config, render_mode="rgb_array" if render else None, render_kwargs=render_kwargs)
        ep_return, ep_len = 0.0, 0
        while True:
            cmd, data = conn.recv()
            if cmd == "reset":
                obs, _ = env.reset(options={"scenario": data})
                ep_return, ep_len = 0.0, 0
                conn.send(("ok", (obs, env.render() if render else None)))
            elif cmd == "step":
                obs, reward, terminated, truncated, info = env.step(data)
                ep_return += reward
                ep_len += 1
                done = terminated or truncated
                metrics = episode_metrics(info, ep_return, ep_len) if done else None
                conn.send(("ok", (obs, done, metrics, env.render() if render else None)))
            elif cmd == "close":
                conn.send(("ok", None))
                break
            else:
                raise ValueError(f"unknown command {cmd!r}")
    except (KeyboardInterrupt, EOFError):
        pass
    except Exception:  # report to the parent instead of dying silently
        try:
            conn.send(("error", traceback.format_exc()))
        except Exception:
            pass
    finally:
        if env is not None:
            env.close()
        conn.close()


class ParallelEvaluator:
    """Worker processes, each with one MetaDrive env on a fixed scenario range, driven
    by a batched policy in the calling process.

    Keep one open to evaluate periodically on the same held-out scenarios without
    paying process and engine start-up each time; use it as a context manager.
    """

    def __init__(
        self,
        config: MetaDriveConfig,
        num_workers: Optional[int] = None,
        context: str = "spawn",
        render: bool = False,
        render_kwargs: Optional[Dict[str, Any]] = None,
        max_restarts: int = 3,
    ) -> None:
        """Start ``num_workers`` (default ``os.cpu_count()``) worker processes.

        Args:
            config: Scenario range and options; every scenario evaluated must be in it.
            num_workers: Number of processes (at most as many are ever busy as there are
                episodes).
            context: multiprocessing start method (see :func:`make_vector_env`).
            render: Workers also return a top-down frame after every reset and step.
            render_kwargs: Arguments for MetaDrive's top-down renderer.
            max_restarts: A worker that dies (e.g. killed) or fails is replaced and its
                episode rerun from the reset; a call of :meth:`run_episodes` with more
                failures than this raises :class:`EvalWorkerError`.
        """
        self.config = config
        n = num_workers if num_workers is not None else (os.cpu_count() or 1)
        if n < 1:
            raise ValueError(f"num_workers must be >= 1, got {n}")
        ensure_offline_assets()  # log the asset decision in this process too
        self._ctx = multiprocessing.get_context(context)
        self._worker_args = (config, render, render_kwargs)
        self.max_restarts = max_restarts
        self.restarts = 0
        """Workers replaced after they died or failed, over this evaluator's life."""
        self._conns: List[multiprocessing.connection.Connection] = []
        self._procs: List[multiprocessing.process.BaseProcess] = []
        for i in range(n):
            conn, proc = self._spawn(i)
            self._conns.append(conn)
            self._procs.append(proc)

    def _spawn(self, i: int) -> Tuple[multiprocessing.connection.Connection, multiprocessing.process.BaseProcess]:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_eval_worker, args=(child, *self._worker_args),
                                 name=f"metadrive-eval-{i}", daemon=True)
        proc.start()
        child.close()
        return parent, proc

    def _replace(self, i: int, reason: str, failures: int) -> None:
        """Put a new worker in place of worker ``i``, or give up after ``max_restarts``."""
        proc = self._procs[i]
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5)
        self._conns[i].close()
        if failures > self.max_restarts:
            raise EvalWorkerError(f"MetaDrive evaluation gave up: workers failed {failures} times in one "
                                  f"evaluation (last: worker {i} {reason})")
        logger.warning("MetaDrive eval worker %d %s; starting a new one and rerunning its episode", i, reason)
        self._conns[i], self._procs[i] = self._spawn(i)
        self.restarts += 1

    @property
    def num_workers(self) -> int:
        return len(self._conns)

    def _recv(self, i: int) -> Any:
        """Worker ``i``'s reply; :class:`_WorkerLost` if it died or reported an error."""
        try:
            status, payload = self._conns[i].recv()
        except (EOFError, ConnectionError, OSError):
            self._procs[i].join(timeout=5)
            raise _WorkerLost(f"died (exit code {self._procs[i].exitcode})") from None
        if status == "error":
            raise _WorkerLost(f"failed: {payload.strip().splitlines()[-1]}")
        return payload

    def run_episodes(
        self,
        act_fn: ActFn,
        scenarios: Sequence[int],
        on_frame: Optional[Callable[[int, np.ndarray], None]] = None,
        *,
        keyed: bool = False,
    ) -> List[Dict[str, Any]]:
        """Run one episode per entry of ``scenarios`` and return their metrics, in order.

        Scenarios are handed out in order to whichever worker is free; all active workers
        step in lock-step, so ``act_fn`` gets one batch ``(n_active, obs_dim)`` per step
        and must return actions ``(n_active, 2)``.

        Args:
            act_fn: Batched policy.
            scenarios: Scenario indices (inside the config's range).
            on_frame: With ``render=True``: called as ``on_frame(episode_index, frame)``.
            keyed: Call ``act_fn(obs, keys)`` with each row's episode index (its place in
                ``scenarios``) as its key
                (e.g. :meth:`ppo_core.train.Policy.episode_actor`), so that a policy can
                act per episode whatever the batching.
        """
        valid = self.config.scenarios
        for s in scenarios:
            if s not in valid:
                raise ValueError(f"scenario {s} outside [{valid.start}, {valid.stop})")
        todo = deque(enumerate(scenarios))
        results: List[Optional[Dict[str, Any]]] = [None] * len(scenarios)
        episode_of: Dict[int, int] = {}  # worker -> episode index
        obs: Dict[int, np.ndarray] = {}
        failures = 0

        def start(workers: Sequence[int]) -> None:
            pending = list(workers)
            while pending:
                started = []
                for w in pending:
                    if todo:
                        episode_of[w], scenario = todo.popleft()
                        self._conns[w].send(("reset", int(scenario)))
                        started.append(w)
                pending = []
                for w in started:
                    try:
                        obs[w], frame = self._recv(w)
                    except _WorkerLost as e:
                        requeue(w, str(e))
                        pending.append(w)
                        continue
                    if on_frame is not None and frame is not None:
                        on_frame(episode_of[w], frame)

        def requeue(w: int, reason: str) -> None:
            # The episode starts again from its reset on a new worker (frames already
            # passed to on_frame stay; a stochastic act_fn continues its stream).
            nonlocal failures
            failures += 1
            obs.pop(w, None)
            e = episode_of.pop(w)
            todo.appendleft((e, scenarios[e]))
            self._replace(w, reason, failures)

        start(range(self.num_workers))
        while obs:
            ids = sorted(obs)
            batch = np.stack([obs[w] for w in ids])
            if keyed:
                actions = np.asarray(act_fn(batch, [episode_of[w] for w in ids]), dtype=np.float32)
            else:
                actions = np.asarray(act_fn(batch), dtype=np.float32)
            if actions.shape[0] != len(ids):
                raise ValueError(f"act_fn returned {actions.shape[0]} actions for {len(ids)} observations")
            sent = []
            restart = []
            for k, w in enumerate(ids):
                try:
                    self._conns[w].send(("step", actions[k]))
                    sent.append(w)
                except (BrokenPipeError, ConnectionError, OSError):
                    self._procs[w].join(timeout=5)
                    requeue(w, f"died (exit code {self._procs[w].exitcode})")
                    restart.append(w)
            for w in sent:
                try:
                    o, done, metrics, frame = self._recv(w)
                except _WorkerLost as e:
                    requeue(w, str(e))
                    restart.append(w)
                    continue
                if on_frame is not None and frame is not None:
                    on_frame(episode_of[w], frame)
                if done:
                    results[episode_of[w]] = metrics
                    del obs[w]
                    restart.append(w)
                else:
                    obs[w] = o
            start(restart)
        return [r for r in results if r is not None]

    def evaluate(self, act_fn: ActFn, episodes: Optional[int] = None, start_seed: Optional[int] = None,
                 *, keyed: bool = False) -> Dict[str, Any]:
        """Evaluate on scenarios ``start_seed, start_seed + 1, ...`` (wrapping in the range).

        ``episodes`` defaults to the range size, so each scenario runs exactly once.
        Returns :func:`summarize_episodes` of the episodes.
        """
        cfg = self.config
        n = cfg.num_scenarios if episodes is None else int(episodes)
        s0 = cfg.start_seed if start_seed is None else int(start_seed)
        scenarios = [scenario_for_seed(s0 + i, cfg.start_seed, cfg.num_scenarios) for i in range(n)]
        return summarize_episodes(self.run_episodes(act_fn, scenarios, keyed=keyed))

    def close(self) -> None:
        """Stop the workers (gracefully, then by terminate after a timeout)."""
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []

    def __enter__(self) -> "ParallelEvaluator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def evaluate_policy(
    act_fn: ActFn,
    config: Optional[MetaDriveConfig] = None,
    episodes: int = 100,
    start_seed: int = EVAL_START_SEED,
    num_scenarios: int = 100,
    num_workers: Optional[int] = None,
    context: str = "spawn",
    *,
    return_episodes: bool = False,
    keyed: bool = False,
) -> Dict[str, Any]:
    """Evaluate a batched policy on scenarios ``S, S+1, ...`` in parallel.

    Episode ``i`` runs scenario ``start_seed + i % num_scenarios``: with
    ``episodes == num_scenarios`` each scenario runs exactly once.

    Args:
        act_fn: ``obs (n, obs_dim) float32 -> actions (n, 2)``.
        config: Other MetaDrive options (traffic density, horizon, ...); its
            ``start_seed``/``num_scenarios`` are replaced by the arguments.
        episodes: Number of episodes.
        start_seed: First evaluation scenario (default :data:`EVAL_START_SEED`).
        num_scenarios: Size of the evaluation range.
        num_workers: Worker processes (default ``min(os.cpu_count(), episodes)``).
        context: multiprocessing start method.
        return_episodes: Also return each episode's :func:`episode_metrics`, in
            scenario order, as ``per_episode``.
        keyed: ``act_fn(obs, episode_indices_of_rows)``, as in :meth:`ParallelEvaluator.run_episodes`.

    Returns:
        :func:`summarize_episodes` of the episodes: ``success_rate``, ``crash_rate``,
        ``out_of_road_rate`` (each with its ``<rate>_ci``), ``route_completion``,
        ``mean_return``, ``std_return``, ``mean_length``, ``episodes``.
    """
    base = config if config is not None else MetaDriveConfig()
    # Caching maps only pays when a scenario is visited twice; otherwise it only costs
    # memory (about 5 MB per map, measured).
    cfg = base.replace(start_seed=start_seed, num_scenarios=num_scenarios, scenario_shards=1,
                       store_map=base.store_map and episodes > num_scenarios)
    workers = num_workers if num_workers is not None else (os.cpu_count() or 1)
    workers = max(1, min(workers, episodes))
    scenarios = [scenario_for_seed(start_seed + i, start_seed, num_scenarios) for i in range(episodes)]
    with ParallelEvaluator(cfg, workers, context=context) as ev:
        per_episode = ev.run_episodes(act_fn, scenarios, keyed=keyed)
    result = summarize_episodes(per_episode)
    if return_episodes:
        result["per_episode"] = per_episode
    return result


def write_topdown_gif(
    act_fn: ActFn,
    config: Optional[MetaDriveConfig] = None,
    seed: Optional[int] = None,
    path: Union[str, os.PathLike] = "episode.gif",
    *,
    frame_skip: int = 2,
    fps: int = 15,
    screen_size: Tuple[int, int] = (400, 400),
    render_kwargs: Optional[Mapping[str, Any]] = None,
    context: str = "spawn",
    keyed: bool = False,
) -> Dict[str, Any]:
    """Run one episode in a worker process and write its top-down view as a GIF.

    Uses MetaDrive's top-down renderer headless (pygame surfaces, no window, no 3D
    assets; ``SDL_VIDEODRIVER=dummy`` is set in the worker). The episode is on
    scenario ``seed`` (default: the config's ``start_seed``), which must lie in the
    config's range or is wrapped into it by :func:`scenario_for_seed`.

    Args:
        act_fn: Batched policy, called with a batch of one observation.
        config: Scenario range and options.
        seed: Scenario to drive.
        path: Output ``.gif`` path (parent directories are created).
        frame_skip: Keep every ``frame_skip``-th frame (plus the last one).
        fps: GIF playback rate.
        screen_size: Frame size in pixels.
        render_kwargs: Extra arguments for MetaDrive's ``TopDownRenderer``
            (e.g. ``scaling``, ``film_size``, ``target_agent_heading_up``).
        context: multiprocessing start method.
        keyed: ``act_fn(obs, episode_indices_of_rows)``, as in :meth:`ParallelEvaluator.run_episodes`.

    Returns:
        The episode's :func:`episode_metrics`, plus ``frames`` (count) and ``path``.
    """
    from PIL import Image

    cfg = config if config is not None else MetaDriveConfig()
    scenario = scenario_for_seed(cfg.start_seed if seed is None else seed, cfg.start_seed, cfg.num_scenarios)
    kwargs: Dict[str, Any] = dict(screen_size=tuple(screen_size), window=False)
    kwargs.update(render_kwargs or {})
    frames: List[Image.Image] = []
    counter = [0]
    last: List[Optional[np.ndarray]] = [None]

    def keep(_episode: int, frame: np.ndarray) -> None:
        if counter[0] % max(1, frame_skip) == 0:
            frames.append(Image.fromarray(frame).convert("P", palette=Image.Palette.ADAPTIVE, colors=64))
            last[0] = None
        else:
            last[0] = frame
        counter[0] += 1

    with ParallelEvaluator(cfg, 1, context=context, render=True, render_kwargs=kwargs) as ev:
        (metrics,) = ev.run_episodes(act_fn, [scenario], on_frame=keep, keyed=keyed)
    if last[0] is not None:
        frames.append(Image.fromarray(last[0]).convert("P", palette=Image.Palette.ADAPTIVE, colors=64))
    if not frames:
        raise RuntimeError("the top-down renderer produced no frames")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0, optimize=False)
    logger.info("wrote %d-frame top-down GIF of scenario %d to %s", len(frames), scenario, out)
    return {**metrics, "frames": len(frames), "path": str(out)}
