"""A top-down GIF of one episode, driven by a policy in this process (rendered in a worker)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

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
