"""The MetaDrive options ppo_core exposes (:class:`MetaDriveConfig`) and the project's scenario ranges."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

__all__ = [
    "MAP_BLOCKS",
    "TRAIN_SCENARIO_LIMIT",
    "VALIDATION_START_SEED",
    "TEST_START_SEED",
    "RESERVED_START_SEED",
    "EVAL_START_SEED",
    "MetaDriveConfig",
    "scenario_for_seed",
    "speed_limit_factor",
]

logger = logging.getLogger("ppo_core.envs.metadrive")

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

# Above this many scenarios, caching every map (store_map) costs > ~1.5 GB per worker.
_MANY_MAPS = 300


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
        block_probabilities: ``{block class name: weight}`` (names from :data:`MAP_BLOCKS`;
            needs ``map`` a number of blocks): generate the maps with these
            block-type probabilities (normalized; block types not named get 0) instead
            of MetaDrive's (``PGBlockDistConfig.BLOCK_TYPE_DISTRIBUTION_V2``: curve 0.3,
            straight and the two ramps 0.1 each, ``StdInterSection`` and
            ``StdTInterSection`` 0.15 each, ``Roundabout`` 0.1). A training option: it
            changes which maps scenarios ``0 ..`` are; evaluation always uses
            MetaDrive's own maps.
        speed_limit_km_h: A reward term for training: at a step that is not an episode's
            last, a positive reward (MetaDrive's progress and speed terms) earned above
            this speed is scaled by :func:`speed_limit_factor` (1 up to the limit, falling
            linearly to 0 at twice the limit), so the reward per step, about proportional
            to the speed, peaks at the limit. Terminal rewards and penalties are kept.
            A training option: evaluation runs with MetaDrive's own reward. ``None``: off.
        overrides: Extra raw MetaDrive config entries, applied after the options above
            (in training and in evaluation).
        train_overrides: Raw MetaDrive config entries for training only, applied last
            (e.g. reward terms: ``{"out_of_road_penalty": 20.0}``). Evaluation, both
            ``ppo-core eval`` and the periodic held-out evaluation, runs without them, so
            its returns stay in MetaDrive's own reward and compare across runs. Entries
            that change the observation or action space (e.g. the lidar) would make the
            policy unfit for evaluation: use ``overrides`` for those.
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
    block_probabilities: Optional[Dict[str, float]] = None
    speed_limit_km_h: Optional[float] = None
    overrides: Dict[str, Any] = field(default_factory=dict)
    train_overrides: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("overrides", "train_overrides"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise ValueError(f"{name} must be a table of MetaDrive config entries (string keys), "
                                 f"got {value!r}")
        if self.block_probabilities is not None:
            p = self.block_probabilities
            if (not isinstance(p, Mapping) or not p or not all(isinstance(k, str) for k in p)
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                               and v >= 0 for v in p.values()) or sum(p.values()) <= 0):
                raise ValueError("block_probabilities must be a table of MetaDrive block class names to "
                                 f"non-negative weights with a positive sum, got {p!r}")
            unknown = sorted(set(p) - set(MAP_BLOCKS))
            if unknown:
                raise ValueError(f"block_probabilities: unknown block type {unknown[0]!r}; the blocks of "
                                 f"MetaDrive's procedural maps are {', '.join(MAP_BLOCKS)}")
            if isinstance(self.map, str):
                raise ValueError(f"block_probabilities applies to maps of a number of blocks (map = 3); with "
                                 f"map = {self.map!r} MetaDrive follows that block sequence")
            self.block_probabilities = {k: float(v) for k, v in p.items()}
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
        if self.speed_limit_km_h is not None:
            v = self.speed_limit_km_h
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"speed_limit_km_h must be a positive number of km/h or None, got {v!r}")
            self.speed_limit_km_h = float(v)
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
        if self.block_probabilities is not None:
            d["block_dist_config"] = block_distribution(self.block_probabilities)
        d.update(self.overrides)
        d.update(self.train_overrides)
        return d

    def for_evaluation(self, start_seed: int, num_scenarios: int) -> "MetaDriveConfig":
        """This config on the evaluation range ``[start_seed, start_seed + num_scenarios)``,
        without its training-only options (:data:`TRAINING_ONLY`): one fixed traffic
        density, no sharding, MetaDrive's own maps and reward (no ``speed_limit_km_h``, no
        ``train_overrides``)."""
        return self.replace(start_seed=start_seed, num_scenarios=num_scenarios, traffic_density_range=None,
                            scenario_shards=1, block_probabilities=None, speed_limit_km_h=None,
                            train_overrides={})


#: The block types of MetaDrive's procedural maps (those its own distribution draws; the
#: others in ``PGBlockDistConfig`` are special-purpose or fail to build in random maps).
MAP_BLOCKS = ("Curve", "Straight", "InRampOnStraight", "OutRampOnStraight", "StdInterSection", "StdTInterSection",
              "Roundabout")


def block_distribution(weights: Mapping[str, float]) -> type:
    """A MetaDrive ``PGBlockDistConfig`` whose map generator draws block types with
    probabilities proportional to ``weights`` (block types not named: 0)."""
    from metadrive.component.algorithm.blocks_prob_dist import PGBlockDistConfig

    known = PGBlockDistConfig.BLOCK_TYPE_DISTRIBUTION_V2
    missing = sorted(set(weights) - set(known))
    if missing:  # MAP_BLOCKS is checked by MetaDriveConfig; this MetaDrive lacks one of them
        raise ValueError(f"block_probabilities: block type {missing[0]!r} is not in this MetaDrive's "
                         f"PGBlockDistConfig ({', '.join(known)})")
    total = float(sum(weights.values()))
    dist = {name: float(weights.get(name, 0.0)) / total for name in known}
    return type("WeightedBlockDist", (PGBlockDistConfig,), {"BLOCK_TYPE_DISTRIBUTION_V2": dist})


#: The options that only shape training (the range, its sharding, traffic randomization,
#: the speed-limit reward term, training-only MetaDrive entries); evaluation runs one fixed
#: range without them.
TRAINING_ONLY = ("start_seed", "num_scenarios", "traffic_density_range", "scenario_shards", "block_probabilities",
                 "speed_limit_km_h", "train_overrides")


def speed_limit_factor(speed_km_h: float, limit_km_h: float) -> float:
    """The factor :attr:`MetaDriveConfig.speed_limit_km_h` puts on a step's positive reward:
    1 at speeds up to the limit, ``2 - speed / limit`` above it, 0 from twice the limit on.
    MetaDrive's per-step reward is about proportional to the speed ``v``, so the shaped one,
    ``v * (2 - v / limit)`` above the limit, is largest at the limit itself."""
    return min(1.0, max(0.0, 2.0 - speed_km_h / limit_km_h))


def scenario_for_seed(seed: int, start_seed: int, num_scenarios: int) -> int:
    """Map any integer seed to a valid MetaDrive scenario index.

    A seed inside ``[start_seed, start_seed + num_scenarios)`` selects that scenario;
    any other integer is wrapped into the range: ``start_seed + (seed - start_seed) %
    num_scenarios``.
    """
    return start_seed + (int(seed) - start_seed) % num_scenarios
