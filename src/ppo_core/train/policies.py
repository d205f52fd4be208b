"""Policy networks: the :class:`ActorCritic` interface and the default MLP implementation.

The trainer needs only this from a network (swap it by passing
``policy_factory=`` to :class:`~ppo_core.train.Trainer`)::

    net(obs) -> (dist, value)

``obs`` is a float32 tensor ``(B, *obs_shape)`` (already normalized when
``normalize_obs``); ``dist`` is a ``torch.distributions.Distribution`` over a
batch of B actions whose ``log_prob(action)`` and ``entropy()`` have shape
``(B,)`` and which has ``sample()`` and ``mode``; ``value`` has shape ``(B,)``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Protocol, Sequence, Tuple

import gymnasium
import numpy as np
import torch
from torch import nn
from torch.distributions import Beta, Categorical, Distribution, Independent, Normal, constraints

from .config import ACTION_DISTS
from .errors import ConfigError

__all__ = [
    "ActorCritic",
    "PolicyFactory",
    "MLPActorCritic",
    "make_mlp_policy",
    "space_to_dict",
    "space_from_dict",
    "space_shape",
    "env_action",
    "expected_clipped_action",
    "scale_std",
    "BoundedBeta",
    "ACTION_DISTS",
]


class ActorCritic(Protocol):
    """What the trainer calls: ``net(obs) -> (dist, value)``; also an ``nn.Module``."""

    def __call__(self, obs: torch.Tensor) -> Tuple[Distribution, torch.Tensor]: ...


#: ``factory(observation_space, action_space, config) -> nn.Module`` implementing :class:`ActorCritic`.
PolicyFactory = Callable[[gymnasium.Space, gymnasium.Space, Any], nn.Module]


def _layer(in_dim: int, out_dim: int, gain: float) -> nn.Linear:
    # Orthogonal weights, zero bias (Engstrom et al. 2020; CleanRL's layer_init).
    layer = nn.Linear(in_dim, out_dim)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _mlp(in_dim: int, hidden: Sequence[int], activation: str) -> nn.Sequential:
    act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
    layers: list = []
    for width in hidden:
        layers += [_layer(in_dim, width, math.sqrt(2)), act()]
        in_dim = width
    return nn.Sequential(*layers)


#: Bounds of a state-dependent log-std (std from about 0.0067 to 2.7).
LOG_STD_RANGE = (-5.0, 1.0)


class BoundedBeta(Distribution):
    """Independent Beta distributions mapped onto a Box's bounds: ``low + (high - low) * x``, x ~ Beta(α, β).

    The policy of Chou et al. (2017) for bounded actions: every sample is a valid action,
    so nothing is clipped and nothing lets the distribution drift beyond a bound (an
    unbounded Gaussian's mean does, since every sample past a bound is the same action to
    the env). Batch shape ``(B,)``, event shape the action's; ``log_prob`` and ``entropy``
    sum over the action dimensions (densities are those of the action, with the
    ``log(high - low)`` of the affine map). ``mean`` is the deterministic action (what the
    sampled policy sends on average); ``mode`` is the density's maximum
    ``(α - 1) / (α + β - 2)`` (defined for α, β > 1, which :class:`MLPActorCritic` ensures).
    """

    arg_constraints = {"concentration1": constraints.positive, "concentration0": constraints.positive}
    has_rsample = False

    #: Samples and log-prob arguments are kept this far inside (0, 1): a float32 sample can
    #: round onto a bound, where a Beta with α, β > 1 has density 0.
    EPS = 1e-6

    def __init__(self, concentration1: torch.Tensor, concentration0: torch.Tensor, low: torch.Tensor,
                 high: torch.Tensor, event_dims: int = 1, validate_args: Any = None) -> None:
        self.base = Beta(concentration1, concentration0, validate_args=validate_args)
        self.low = torch.as_tensor(low, dtype=concentration1.dtype)
        self.width = torch.as_tensor(high, dtype=concentration1.dtype) - self.low
        shape = concentration1.shape
        self._event_dims = int(event_dims)
        batch_shape, event_shape = shape[:len(shape) - self._event_dims], shape[len(shape) - self._event_dims:]
        super().__init__(batch_shape, event_shape, validate_args=False)

    @property
    def concentration1(self) -> torch.Tensor:
        return self.base.concentration1

    @property
    def concentration0(self) -> torch.Tensor:
        return self.base.concentration0

    def _sum(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(len(x.shape) - self._event_dims).sum(-1) if self._event_dims else x

    def _to_action(self, x: torch.Tensor) -> torch.Tensor:
        return self.low + self.width * x.clamp(self.EPS, 1 - self.EPS)

    def sample(self, sample_shape: Any = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self._to_action(self.base.sample(sample_shape))

    def sample_with(self, generator: torch.Generator) -> torch.Tensor:
        """A sample drawn from ``generator``: x = G1 / (G1 + G0), G ~ Gamma(concentration, 1),
        the gammas from a stream seeded by ``generator`` (torch's gamma sampler takes no generator)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._to_action(self.base.sample())

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        x = ((value - self.low) / self.width).clamp(self.EPS, 1 - self.EPS)
        return self._sum(self.base.log_prob(x) - torch.log(self.width))

    def entropy(self) -> torch.Tensor:
        return self._sum(self.base.entropy() + torch.log(self.width))

    @property
    def mean(self) -> torch.Tensor:
        return self.low + self.width * self.base.mean

    @property
    def mode(self) -> torch.Tensor:
        a, b = self.concentration1, self.concentration0
        return self.low + self.width * ((a - 1) / (a + b - 2)).clamp(0, 1)

    @property
    def stddev(self) -> torch.Tensor:
        return self.width * self.base.variance.sqrt()

    @property
    def variance(self) -> torch.Tensor:
        return self.width.square() * self.base.variance


def beta_concentration_for_std(std: float, half_width: float) -> float:
    """The c of Beta(c, c) whose std on an interval of half-width ``half_width`` is ``std``:
    the std is ``half_width / sqrt(2c + 1)``, so ``c = ((half_width / std)^2 - 1) / 2``."""
    return ((half_width / std) ** 2 - 1.0) / 2.0


class MLPActorCritic(nn.Module):
    """MLP actor-critic: Categorical for ``Discrete`` actions, diagonal Gaussian (or, with
    ``action_dist="beta"``, a :class:`BoundedBeta` on the bounds) for ``Box``.

    The Gaussian has a state-independent log-std parameter (or, with
    ``state_dependent_std``, a second head that outputs the log-std per state); its samples are
    unbounded (clip them only when sending them to the env, see
    :func:`env_action`) so log-probs are those of the sampled action.
    ``shared=True`` puts one trunk under both heads. Hidden layers use
    orthogonal init with gain √2, the policy head 0.01, the value head 1.
    """

    # Buffers (register_buffer) of a Beta policy: the Box's bounds.
    action_low: torch.Tensor
    action_high: torch.Tensor

    def __init__(self, obs_dim: int, action_space: gymnasium.Space, hidden_sizes: Sequence[int] = (64, 64),
                 activation: str = "tanh", shared: bool = False, init_log_std: float = 0.0,
                 state_dependent_std: bool = False, action_dist: str = "gaussian") -> None:
        super().__init__()
        box_shape: Tuple[int, ...] = ()
        if isinstance(action_space, gymnasium.spaces.Discrete):
            self.discrete = True
            out_dim = int(action_space.n)
        elif isinstance(action_space, gymnasium.spaces.Box):
            self.discrete = False
            box_shape = action_space.shape
            out_dim = int(np.prod(box_shape))
        else:
            raise ConfigError(f"unsupported action space {action_space}: expected Discrete or Box")
        if action_dist not in ACTION_DISTS:
            raise ConfigError(f"config key 'action_dist' must be one of {', '.join(ACTION_DISTS)}, got {action_dist!r}")
        self.beta = action_dist == "beta" and not self.discrete
        if self.beta:
            assert isinstance(action_space, gymnasium.spaces.Box)
            low, high = np.asarray(action_space.low, np.float64), np.asarray(action_space.high, np.float64)
            if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
                raise ConfigError(f"action_dist 'beta' needs a Box with finite bounds, got low={low.tolist()}, "
                                  f"high={high.tolist()}")
            if state_dependent_std:
                raise ConfigError("config key 'state_dependent_std' applies to action_dist 'gaussian'; a Beta "
                                  "policy's concentrations are outputs per state already")
            std = math.exp(init_log_std)
            conc = beta_concentration_for_std(std, float(np.min(high - low)) / 2)
            if not conc > 1.0:
                raise ConfigError(f"config key 'init_log_std' = {init_log_std} asks for an initial std of {std:.3g}; "
                                  f"a Beta with both concentrations above 1 on this action range has a std below "
                                  f"{float(np.min(high - low)) / 2 / math.sqrt(3):.3g} (lower init_log_std)")
            self.register_buffer("action_low", torch.as_tensor(low, dtype=torch.float32).reshape(-1))
            self.register_buffer("action_high", torch.as_tensor(high, dtype=torch.float32).reshape(-1))
        self.shared = shared
        width = hidden_sizes[-1]
        self.flatten = nn.Flatten()
        if shared:
            self.trunk = _mlp(obs_dim, hidden_sizes, activation)
        else:
            self.actor_body = _mlp(obs_dim, hidden_sizes, activation)
            self.critic_body = _mlp(obs_dim, hidden_sizes, activation)
        self.actor_head = _layer(width, 2 * out_dim if self.beta else out_dim, 0.01)
        self.critic_head = _layer(width, 1, 1.0)
        self.state_dependent_std = bool(state_dependent_std) and not self.discrete
        if self.beta:
            # Concentrations 1 + softplus(out): both above 1 (a unimodal density, zero at the
            # bounds); the bias starts them at the c whose Beta(c, c) has std exp(init_log_std).
            self.action_shape = tuple(box_shape)
            nn.init.constant_(self.actor_head.bias, math.log(math.expm1(conc - 1.0)))
        elif not self.discrete:
            self.action_shape = tuple(box_shape)
            if self.state_dependent_std:
                # A second actor head: log-std per state, starting at init_log_std everywhere
                # (small weights, bias init_log_std), clamped to LOG_STD_RANGE.
                self.log_std_head = _layer(width, out_dim, 0.01)
                nn.init.constant_(self.log_std_head.bias, float(init_log_std))
            else:
                self.log_std = nn.Parameter(torch.full((out_dim,), float(init_log_std)))

    def forward(self, obs: torch.Tensor) -> Tuple[Distribution, torch.Tensor]:
        x = self.flatten(obs)
        if self.shared:
            h_actor = h_critic = self.trunk(x)
        else:
            h_actor, h_critic = self.actor_body(x), self.critic_body(x)
        out = self.actor_head(h_actor)
        value = self.critic_head(h_critic).squeeze(-1)
        if self.discrete:
            return Categorical(logits=out), value
        if self.beta:
            conc = 1.0 + nn.functional.softplus(out)
            n = conc.shape[-1] // 2
            shape = (-1, *self.action_shape)
            low, high = self.action_low.reshape(self.action_shape), self.action_high.reshape(self.action_shape)
            return BoundedBeta(conc[:, :n].reshape(shape), conc[:, n:].reshape(shape), low, high,
                               event_dims=len(self.action_shape)), value
        mean = out.reshape(-1, *self.action_shape)
        if self.state_dependent_std:
            log_std = self.log_std_head(h_actor).clamp(*LOG_STD_RANGE)
            std = log_std.exp().reshape_as(mean)
        else:
            std = self.log_std.exp().reshape(self.action_shape).expand_as(mean)
        return Independent(Normal(mean, std), len(self.action_shape)), value


def make_mlp_policy(observation_space: gymnasium.Space, action_space: gymnasium.Space, config: Any) -> nn.Module:
    """The default :data:`PolicyFactory`: an :class:`MLPActorCritic` sized from ``config``."""
    if not isinstance(observation_space, gymnasium.spaces.Box):
        raise ConfigError(f"unsupported observation space {observation_space}: expected Box")
    return MLPActorCritic(
        int(np.prod(observation_space.shape)),
        action_space,
        hidden_sizes=config.hidden_sizes,
        activation=config.activation,
        shared=config.shared_network,
        init_log_std=config.init_log_std,
        state_dependent_std=config.state_dependent_std,
        action_dist=getattr(config, "action_dist", "gaussian"),
    )


def space_to_dict(space: gymnasium.Space) -> Dict[str, Any]:
    """Plain-data description of a Box or Discrete space (safe for ``torch.load(weights_only=True)``)."""
    if isinstance(space, gymnasium.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gymnasium.spaces.Box):
        return {"type": "Box", "low": space.low.tolist(), "high": space.high.tolist(),
                "shape": list(space.shape), "dtype": str(space.dtype)}
    raise ConfigError(f"unsupported space {space}: expected Box or Discrete")


def space_shape(space: gymnasium.Space) -> Tuple[int, ...]:
    """``space.shape`` as a tuple; :class:`ConfigError` for a space without a shape."""
    shape = space.shape
    if shape is None:
        raise ConfigError(f"unsupported space {space}: it has no shape (expected Box or Discrete)")
    return tuple(shape)


def space_from_dict(data: Dict[str, Any]) -> gymnasium.Space:
    """Inverse of :func:`space_to_dict`."""
    if data["type"] == "Discrete":
        return gymnasium.spaces.Discrete(data["n"], start=data.get("start", 0))
    return gymnasium.spaces.Box(
        low=np.asarray(data["low"], data["dtype"]).reshape(data["shape"]),
        high=np.asarray(data["high"], data["dtype"]).reshape(data["shape"]),
        dtype=np.dtype(data["dtype"]),
    )


def _normal_pdf(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def expected_clipped_action(mean: torch.Tensor, std: torch.Tensor, low: Any, high: Any, *,
                            dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """E[clip(a, low, high)] for a ~ N(mean, std²), per dimension: the mean of the action the env receives.

    With α = (low − μ)/σ, β = (high − μ)/σ, Φ and φ the standard normal cdf and density:
    E = low·Φ(α) + high·(1 − Φ(β)) + μ·(Φ(β) − Φ(α)) − σ·(φ(β) − φ(α)).
    When μ lies outside the bounds (an unbounded Gaussian's mean drifts there freely, since
    every sample beyond a bound is the same action to the env), clip(μ) is the bound itself,
    while this is what the sampled policy does on average. ``low`` / ``high``: arrays or
    tensors; ``dtype``: the arithmetic's (float64; an exported ONNX graph uses float32,
    since onnxruntime has no float64 erf).
    """
    mean64, std64 = mean.to(dtype), std.to(dtype).clamp_min(1e-12)
    lo = torch.as_tensor(low, dtype=dtype).expand_as(mean64)
    hi = torch.as_tensor(high, dtype=dtype).expand_as(mean64)
    alpha, beta = (lo - mean64) / std64, (hi - mean64) / std64
    cdf_a, cdf_b = torch.special.ndtr(alpha), torch.special.ndtr(beta)
    zero = torch.zeros_like(mean64)
    tails = torch.where(torch.isfinite(lo), lo * cdf_a, zero) + torch.where(torch.isfinite(hi), hi * (1 - cdf_b), zero)
    out = tails + mean64 * (cdf_b - cdf_a) - std64 * (_normal_pdf(beta) - _normal_pdf(alpha))
    return torch.minimum(torch.maximum(out, lo), hi).to(mean.dtype)


def scale_std(dist: Distribution, scales: torch.Tensor) -> Distribution:
    """The diagonal Gaussian ``dist`` (batch ``(B,)``) with the std of row ``i`` multiplied
    by ``scales[i]`` (shape ``(B,)``); the mean is unchanged (config key ``std_scales``)."""
    if not (isinstance(dist, Independent) and isinstance(dist.base_dist, Normal)):
        raise TypeError(f"std_scales needs a diagonal Gaussian policy (Independent(Normal)), got {type(dist).__name__}")
    base = dist.base_dist
    if scales.shape != base.loc.shape[:1]:
        raise ValueError(f"scales must have shape {tuple(base.loc.shape[:1])} (one per row), got {tuple(scales.shape)}")
    k = scales.to(base.scale.dtype).reshape(scales.shape + (1,) * (base.scale.dim() - 1))
    return Independent(Normal(base.loc, base.scale * k), dist.reinterpreted_batch_ndims)


def env_action(action: torch.Tensor, action_space: gymnasium.Space) -> np.ndarray:
    """Turn sampled actions into what the env accepts: integers, or Box actions clipped to the bounds."""
    a = action.detach().cpu().numpy()
    if isinstance(action_space, gymnasium.spaces.Discrete):
        return a.astype(np.int64) + int(action_space.start)
    if isinstance(action_space, gymnasium.spaces.Box):
        return np.clip(a, action_space.low, action_space.high).astype(action_space.dtype)
    raise ConfigError(f"unsupported action space {action_space}: expected Discrete or Box")
