"""Using a trained policy without the trainer: :func:`load_policy` and :func:`evaluate`."""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Union

import gymnasium
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Normal

from . import checkpoint as ckpt
from .config import PPOConfig
from .envs import episode_metrics_fns, make_vector_env
from .errors import RunDirError
from .normalize import ObsNormalizer
from .policies import BoundedBeta, env_action, expected_clipped_action, make_mlp_policy, space_from_dict, space_shape

__all__ = ["Policy", "load_policy", "evaluate", "write_episode_gif"]


class Policy:
    """A trained policy with its observation normalization: ``act(obs, deterministic=True)``.

    Attributes: ``config`` (the run's :class:`PPOConfig`), ``net`` (the
    ``nn.Module``), ``observation_space``, ``action_space``, ``step`` (environment
    steps the checkpoint was trained for).
    """

    def __init__(self, net: nn.Module, obs_normalizer: ObsNormalizer, observation_space: gymnasium.Space,
                 action_space: gymnasium.Space, config: PPOConfig, step: int = 0) -> None:
        self.net = net.eval()
        self.obs_normalizer = obs_normalizer
        self.observation_space = observation_space
        self.action_space = action_space
        self.config = config
        self.step = step
        self.deterministic_action = config.deterministic_action
        """``"mean"``: the deterministic action is the clipped mean; ``"expected"``: the mean of
        the clipped Gaussian, E[clip(a)] (:func:`~.policies.expected_clipped_action`)."""

    @torch.no_grad()
    def act(self, obs: Any, deterministic: bool = True, generator: Optional[torch.Generator] = None) -> np.ndarray:
        """Actions for one observation (shape ``obs_shape``) or a batch (``(B, *obs_shape)``).

        Deterministic: the distribution's mode (arg-max for discrete actions,
        the mean for Gaussian ones; with ``deterministic_action == "expected"`` the mean
        of the clipped Gaussian, E[clip(a)]); otherwise a sample, drawn from ``generator`` when
        one is given (torch's global generator otherwise). Box actions are clipped
        to the action space's bounds. Returns one action or a ``(B, ...)`` array.
        """
        obs = np.asarray(obs, np.float32)
        shape = space_shape(self.observation_space)
        single = obs.shape == shape
        if single:
            obs = obs[None]
        elif obs.shape[1:] != shape:
            raise ValueError(f"act: expected an observation of shape {shape} or a batch (B, *{shape}), "
                             f"got shape {obs.shape}")
        dist, _ = self.net(torch.from_numpy(self.obs_normalizer(obs)))
        base = getattr(dist, "base_dist", None)
        if deterministic and self.deterministic_action == "expected" and isinstance(base, Normal) \
                and isinstance(self.action_space, gymnasium.spaces.Box):
            action = expected_clipped_action(base.loc, base.scale, self.action_space.low, self.action_space.high)
        elif deterministic and isinstance(dist, BoundedBeta):
            action = dist.mean  # the average action, inside the bounds (its mode is another point)
        elif deterministic:
            action = dist.mode
        elif generator is None:
            action = dist.sample()
        else:
            action = _sample(dist, generator)
        out = env_action(action, self.action_space)
        return out[0] if single else out

    def episode_actor(self, deterministic: bool = True, seed: int = 0) -> Callable[[np.ndarray, Any], np.ndarray]:
        """A batched ``act(obs, episode_keys)`` whose actions do not depend on how episodes are batched.

        Each row is computed on its own (a batch of one gives other last bits than a
        larger batch in the BLAS kernels, and a driving episode amplifies them), so an
        evaluation gives the same episodes with any number of workers. Stochastic: row
        ``i`` is sampled from a generator of its own episode, seeded by ``(seed,
        episode_keys[i])`` (the evaluator's episode index), so the samples do not depend on
        the batching either.
        """
        generators: Dict[Any, torch.Generator] = {}

        def act(obs: np.ndarray, episode_keys: Any) -> np.ndarray:
            rows = []
            for o, key in zip(np.asarray(obs, np.float32), episode_keys):
                if deterministic:
                    rows.append(self.act(o[None])[0])
                else:
                    if key not in generators:
                        generators[key] = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(key))
                    rows.append(self.act(o[None], deterministic=False, generator=generators[key])[0])
            return np.stack(rows)

        return act

    @torch.no_grad()
    def value(self, obs: Any) -> np.ndarray:
        """V(obs) for one observation or a batch (normalization applied)."""
        obs = np.asarray(obs, np.float32)
        single = obs.shape == space_shape(self.observation_space)
        obs = obs[None] if single else obs
        v = self.net(torch.from_numpy(self.obs_normalizer(obs)))[1].numpy()
        return v[0] if single else v


def _sample(dist: Any, generator: torch.Generator) -> torch.Tensor:
    """A sample of the policy's distribution (diagonal Gaussian, Beta or Categorical) from ``generator``."""
    if isinstance(dist, BoundedBeta):
        return dist.sample_with(generator)
    base = getattr(dist, "base_dist", None)
    if isinstance(base, Normal):
        noise = torch.randn(base.loc.shape, generator=generator, dtype=base.loc.dtype)
        return base.loc + base.scale * noise
    if isinstance(dist, Categorical):
        return torch.multinomial(dist.probs, 1, generator=generator).squeeze(-1)
    raise TypeError(f"sampling with a generator needs a diagonal Gaussian, a BoundedBeta or a Categorical, got {type(dist).__name__}")


def load_policy(run_dir: Union[str, os.PathLike], checkpoint: Optional[Union[str, os.PathLike]] = None, *,
                policy_factory: Optional[Callable[..., nn.Module]] = None) -> Policy:
    """Load the latest (or the given) checkpoint of a run as a :class:`Policy`.

    ``checkpoint``: ``"latest"`` (the default, also None), ``"best"`` (``checkpoints/best.pt``,
    the best periodic held-out evaluation) or a path. ``policy_factory`` must be the one the
    run was trained with if it was not the default MLP. For the latest, a damaged newest checkpoint is skipped
    (with a warning) for the newest one that loads. Raises :class:`RunDirError` if
    ``run_dir`` is not a run or holds no checkpoint that loads.
    """
    if checkpoint is not None and str(checkpoint) in ("latest", "best"):
        ckpt.load_run_config(run_dir)  # raises RunDirError with a clear message
        checkpoint = ckpt.resolve_checkpoint(run_dir, checkpoint)
    if checkpoint is None:
        ckpt.load_run_config(run_dir)  # raises RunDirError with a clear message
        if ckpt.latest_checkpoint(run_dir) is None:
            raise RunDirError(f"{run_dir} has no checkpoint yet")
        checkpoint, state = ckpt.load_latest_valid_checkpoint(run_dir)  # skips damaged ones, with a warning
    else:
        try:
            state = ckpt.load_checkpoint(checkpoint)
        except Exception as e:
            raise RunDirError(f"checkpoint {checkpoint} does not load: {ckpt.load_error_reason(e)}") from None
    config = PPOConfig.from_dict(state["config"], source=str(checkpoint))
    obs_space = space_from_dict(state["observation_space"])
    act_space = space_from_dict(state["action_space"])
    net = (policy_factory or make_mlp_policy)(obs_space, act_space, config)
    net.load_state_dict(state["policy"])
    norm = ObsNormalizer(space_shape(obs_space), enabled=config.normalize_obs, clip=config.obs_clip)
    norm.load_state_dict(state["obs_normalizer"])
    return Policy(net, norm, obs_space, act_space, config, step=int(state["step"]))


def evaluate(policy: Policy, env_id: Union[str, Callable[[], gymnasium.Env], None] = None, *,
             episodes: int = 10, seed: Optional[int] = 0, deterministic: bool = True,
             env_kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run ``episodes`` full episodes in one environment; return summary statistics.

    The result has ``episodes``, ``mean_return``, ``std_return``, ``mean_length``,
    ``returns`` and, for env families that define ``episode_metrics`` and
    ``summarize_episodes`` (see :mod:`.envs`; e.g. MetaDrive's success rate), the
    keys of that summary. Rewards are the environment's raw rewards. The env is built
    with ``env_kwargs`` (default: the run's, as trained); for MetaDrive that is the
    training range with its training-only options, so held-out evaluation goes through
    ``ppo-core eval`` or the family's evaluator instead.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    env_id = env_id or policy.config.env_id
    kwargs = policy.config.env_kwargs if env_kwargs is None else env_kwargs
    envs = make_vector_env(env_id, 1, seed, env_kwargs=kwargs)
    family_fns = episode_metrics_fns(env_id) if isinstance(env_id, str) else None
    returns: List[float] = []
    lengths: List[int] = []
    per_episode: List[Dict[str, Any]] = []
    try:
        obs, _ = envs.reset(seed=seed)
        ep_ret, ep_len = 0.0, 0
        while len(returns) < episodes:
            action = policy.act(obs, deterministic=deterministic)
            obs, reward, term, trunc, info = envs.step(action)
            ep_ret += float(reward[0])
            ep_len += 1
            if term[0] or trunc[0]:
                returns.append(ep_ret)
                lengths.append(ep_len)
                if family_fns is not None:
                    final_info = {k: v[0] for k, v in info.get("final_info", {}).items()
                                  if not k.startswith("_")}
                    per_episode.append(family_fns[0](final_info, ep_ret, ep_len))
                ep_ret, ep_len = 0.0, 0
    finally:
        envs.close()
    result: Dict[str, Any] = {
        "episodes": len(returns),
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_length": float(np.mean(lengths)),
        "returns": returns,
    }
    if family_fns is not None and per_episode:
        summary = family_fns[1](per_episode)
        result.update({k: v for k, v in summary.items() if k not in result})
    return result


def write_episode_gif(policy: Policy, env_id: Optional[str] = None, path: Union[str, os.PathLike] = "episode.gif", *,
                      seed: Optional[int] = 0, deterministic: bool = True, env_kwargs: Optional[Dict[str, Any]] = None,
                      frame_skip: int = 1, fps: int = 30) -> Dict[str, Any]:
    """Run one episode of a gymnasium env that renders ``rgb_array`` (CartPole, Pendulum, ...)
    and write it as a GIF. Returns ``path``, ``frames``, ``return`` and ``length``.

    Raises ``ValueError`` when the env renders no ``rgb_array`` frames.
    """
    from ppo_core.envs.gif import GifFrames

    env_id = env_id or policy.config.env_id
    kwargs = dict(policy.config.env_kwargs if env_kwargs is None else env_kwargs)
    try:
        env = gymnasium.make(env_id, render_mode="rgb_array", **kwargs)
    except (TypeError, gymnasium.error.Error) as e:
        raise ValueError(f"{env_id} cannot render frames for a GIF: {e}") from None
    frames = GifFrames(frame_skip)
    ep_return, length = 0.0, 0
    try:
        obs, _ = env.reset(seed=seed)
        try:
            first = env.render()
        except gymnasium.error.DependencyNotInstalled as e:
            raise ValueError(f"{env_id} needs a renderer for a GIF: {e}") from None
        if not isinstance(first, np.ndarray) or first.ndim != 3:
            raise ValueError(f"{env_id} renders no rgb_array frames (render() gave {type(first).__name__})")
        frames.add(first)
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy.act(obs, deterministic=deterministic))
            ep_return += float(reward)
            length += 1
            frame = env.render()
            if not isinstance(frame, np.ndarray):
                raise ValueError(f"{env_id} rendered no rgb_array frame (render() gave {type(frame).__name__})")
            frames.add(frame)
            done = terminated or truncated
    finally:
        env.close()
    count = frames.save(path, fps)
    return {"path": str(path), "frames": count, "return": ep_return, "length": length}
