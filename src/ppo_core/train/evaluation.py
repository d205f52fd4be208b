"""Held-out evaluation during training: when it is due, where it runs, and its metrics row.

One :func:`held_out_evaluation` for every env: an env family with an evaluator of its
own (MetaDrive: scenarios ``eval_start_seed, ...`` in worker processes, kept alive between
evaluations so its workers idle while the training envs step) uses it; any other env runs
:func:`ppo_core.train.evaluate` with reset seed ``eval_start_seed``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Optional

from ppo_core.envs.registry import get_family

from .agent import Policy, evaluate
from .config import PPOConfig

__all__ = ["HeldOutEvaluation", "eval_score"]

logger = logging.getLogger("ppo_core.train")

#: Summary keys copied into the metrics row as ``eval_<key>``.
_ROW_KEYS = ("success_rate", "crash_rate", "out_of_road_rate", "route_completion", "mean_return", "mean_length")


def eval_score(row: Dict[str, Any]) -> Optional[tuple]:
    """What makes one held-out evaluation better than another (compared as a tuple; NaN counts as -inf)."""
    def num(key: str) -> float:
        v = row.get(key, -math.inf)
        return -math.inf if v is None or math.isnan(v) else float(v)

    if "eval_success_rate" in row:
        return num("eval_success_rate"), num("eval_route_completion"), num("eval_mean_return")
    if "eval_mean_return" in row:
        return (num("eval_mean_return"),)
    return None


class HeldOutEvaluation:
    """The periodic held-out evaluation of a run with ``config`` on ``env`` (an id or an env factory)."""

    def __init__(self, config: PPOConfig, env: Any, last_step: int = 0) -> None:
        self.config = config
        self.env = env
        self.last_step = last_step
        """The step of the last evaluation (a resumed run starts at its step)."""
        self._evaluator: Any = None  # the env family's, kept between evaluations
        self._evaluator_episodes = 0

    def due(self, step: int, finished: bool) -> bool:
        """An evaluation is due: ``step`` crossed a multiple of ``eval_every_steps``, or the run ends."""
        every = self.config.eval_every_steps
        if every <= 0:
            return False
        return step // every > self.last_step // every or (finished and self.last_step != step)

    def evaluate(self, policy: Policy, episodes: Optional[int] = None) -> Dict[str, Any]:
        """Evaluate ``policy``'s deterministic actions on ``episodes`` held-out episodes
        (default ``eval_episodes``); returns the summary (``mean_return``, ``success_rate``, ...)."""
        cfg = self.config
        n = cfg.eval_episodes if episodes is None else int(episodes)
        family = get_family(self.env)
        if family is not None and (self._evaluator is None or self._evaluator_episodes < n):
            self.close()
            self._evaluator = family.evaluator(cfg.env_kwargs, cfg.eval_start_seed, n,
                                               cfg.eval_workers or cfg.num_envs)
            self._evaluator_episodes = n
        if self._evaluator is not None:
            # Row by row, as `ppo-core eval` does: the actions do not depend on how episodes are batched.
            return self._evaluator.evaluate(policy.episode_actor(deterministic=True), episodes=n,
                                            start_seed=cfg.eval_start_seed, keyed=True)
        result = evaluate(policy, self.env, episodes=n, seed=cfg.eval_start_seed, env_kwargs=cfg.env_kwargs)
        result.pop("returns", None)
        return result

    def row(self, policy: Policy, step: int) -> Dict[str, Any]:
        """Evaluate now and return the ``eval_*`` columns of the metrics row; ``{}`` when the
        evaluation failed (a crashed worker must not end the training run: it is logged, and
        the evaluator is rebuilt at the next evaluation)."""
        try:
            result = self.evaluate(policy)
        except (RuntimeError, OSError, EOFError) as e:
            logger.warning("evaluation at step %d failed (%s: %s); skipped, the evaluator is restarted "
                           "at the next evaluation", step, type(e).__name__, e)
            self.close()
            return {}
        self.last_step = step
        row: Dict[str, Any] = {"eval_step": step, "eval_episodes": int(result["episodes"])}
        for key in _ROW_KEYS:
            if key in result:
                row[f"eval_{key}"] = float(result[key])
        if "success_rate_ci" in result:
            row["eval_success_rate_low"], row["eval_success_rate_high"] = map(float, result["success_rate_ci"])
        return row

    def close(self) -> None:
        """Stop the family's evaluator, if one runs (best effort: its workers may be dead)."""
        if self._evaluator is not None:
            try:
                self._evaluator.close()
            except Exception as e:
                logger.debug("closing the evaluator: %r", e)
            self._evaluator = None
