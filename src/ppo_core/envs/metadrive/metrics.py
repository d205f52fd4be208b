"""Episode outcomes (success, crash, out of road, ...) and the evaluation summary of many episodes."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import numpy as np

from ppo_core.stats import wilson_interval

__all__ = ["METRIC_KEYS", "RATE_FLAGS", "EPISODE_KEYS", "episode_metrics", "summarize_episodes"]

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
