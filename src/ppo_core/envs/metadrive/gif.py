"""A top-down GIF of one episode, driven by a policy in this process (rendered in a worker)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from ..gif import GifFrames
from .config import MetaDriveConfig, scenario_for_seed
from .evaluator import ActFn, ParallelEvaluator

__all__ = ["write_topdown_gif"]

logger = logging.getLogger("ppo_core.envs.metadrive")


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
    context: Optional[str] = None,
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
        context: multiprocessing start method (default: :func:`~.env.worker_context`'s).
        keyed: ``act_fn(obs, episode_indices_of_rows)``, as in :meth:`ParallelEvaluator.run_episodes`.

    Returns:
        The episode's :func:`episode_metrics`, plus ``frames`` (count) and ``path``.
    """
    cfg = config if config is not None else MetaDriveConfig()
    scenario = scenario_for_seed(cfg.start_seed if seed is None else seed, cfg.start_seed, cfg.num_scenarios)
    kwargs: Dict[str, Any] = dict(screen_size=tuple(screen_size), window=False)
    kwargs.update(render_kwargs or {})
    frames = GifFrames(frame_skip)
    with ParallelEvaluator(cfg, 1, context=context, render=True, render_kwargs=kwargs) as ev:
        (metrics,) = ev.run_episodes(act_fn, [scenario], on_frame=lambda _episode, frame: frames.add(frame),
                                     keyed=keyed)
    count = frames.save(path, fps)
    logger.info("wrote %d-frame top-down GIF of scenario %d to %s", count, scenario, path)
    return {**metrics, "frames": count, "path": str(Path(path))}
