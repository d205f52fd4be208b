"""The trainer's configuration: one dataclass, read from and written to TOML or JSON.

Defaults follow CleanRL's ``ppo_continuous_action.py`` (the PPO paper's MuJoCo
settings); ``configs/`` holds tuned files for CartPole and Pendulum.
:func:`preset` gives the built-in defaults of an environment family: for
MetaDrive (the default of ``ppo-core train``) they are kept in code, because a
wheel does not ship ``configs/``; ``configs/metadrive.toml`` must agree with
them (a test checks it).
TOML has no null, so "off" for an optional number is written as 0
(``target_kl = 0``, ``vf_clip_coef = 0``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Union

from ppo_core.envs.registry import DEFAULT_ENV, get_family

from .errors import ConfigError

#: Values of the config key ``action_dist`` (Box actions); ``policies.MLPActorCritic`` builds them.
ACTION_DISTS = ("gaussian", "beta")

__all__ = ["PPOConfig", "load_config", "save_config", "read_config_file", "preset", "field_docs", "config_to_toml"]


@dataclass
class PPOConfig:
    """Every setting of a PPO run. Field docstrings say what each one does."""

    env_id: str = ""
    """Gymnasium environment id (e.g. ``CartPole-v1``) or ``metadrive``."""

    seed: int = 1
    """Seed of torch, NumPy and the environments (env i gets ``seed + i``)."""

    total_steps: int = 1_000_000
    """Environment steps to run (summed over envs), rounded up to whole rollouts; at least one update always runs."""

    num_envs: int = 1
    """Number of parallel environments in the vector env."""

    async_envs: bool = False
    """Step the environments in subprocesses (``AsyncVectorEnv``) instead of in-process (``SyncVectorEnv``)."""

    env_groups: int = 1
    """Collect with the envs split into this many groups of worker processes, stepped in turn,
    so that the policy's forward pass for one group overlaps the other groups' simulation
    (``ppo_core.train.env_groups``). 1 is one vector env stepped as a whole; more needs
    ``async_envs`` (MetaDrive always is) and ``num_envs`` divisible by it."""

    num_steps: int = 2048
    """Steps per environment per rollout; one update uses ``num_envs * num_steps`` transitions."""

    learning_rate: float = 3e-4
    """Adam learning rate (the starting value when ``anneal_lr``)."""

    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run."""

    adam_eps: float = 1e-5
    """Adam's epsilon (1e-5 as in the PPO implementations, not PyTorch's 1e-8)."""

    gamma: float = 0.99
    """Discount factor γ."""

    lam: float = 0.95
    """GAE λ (Schulman et al. 2015); ignored by the other advantage estimators."""

    num_minibatches: int = 32
    """Minibatches per epoch; the batch is split into this many shuffled pieces."""

    update_epochs: int = 10
    """Passes over the batch per update."""

    norm_adv: bool = True
    """Normalize advantages per minibatch to zero mean, unit std (a minibatch of one is left as is)."""

    clip_coef: float = 0.2
    """Surrogate clipping ε."""

    vf_clip_coef: float = 0.2
    """Value clipping ε around the rollout's values; 0 turns value clipping off."""

    ent_coef: float = 0.0
    """Entropy bonus coefficient."""

    vf_coef: float = 0.5
    """Value loss coefficient."""

    max_grad_norm: float = 0.5
    """Global gradient-norm clip; 0 turns it off."""

    target_kl: float = 0.0
    """Stop the update's epochs early once the last epoch's mean approx KL exceeds this; 0 turns it off."""

    normalize_obs: bool = True
    """Normalize observations with running mean/std (saved with checkpoints)."""

    obs_clip: float = 10.0
    """Clip normalized observations to ±obs_clip."""

    normalize_reward: bool = True
    """Scale rewards by the running std of the discounted return (saved with checkpoints)."""

    reward_clip: float = 10.0
    """Clip scaled rewards to ±reward_clip."""

    hidden_sizes: list = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of the MLPs."""

    activation: str = "tanh"
    """Hidden activation: ``tanh`` or ``relu``."""

    shared_network: bool = False
    """One MLP trunk for actor and critic (two heads) instead of two separate MLPs."""

    init_log_std: float = 0.0
    """Initial log standard deviation of the Gaussian policy (Box actions)."""

    state_dependent_std: bool = False
    """Gaussian policy: the actor outputs the log-std per state (a second head, clamped to
    [-5, 1]) instead of one free log-std parameter per action dimension."""

    final_std: float = 0.0
    """Gaussian policy with a free log-std: 0 (default) learns the log-std by gradient; a
    positive value fixes it to a schedule instead, linear in the log over the run's
    updates, from ``exp(init_log_std)`` at the first update to ``final_std`` at the last
    (the same for every action dimension). Exploration then stays wide early and narrows
    late, so that the mean learns to drive with little noise."""

    std_scales: List[float] = field(default_factory=list)
    """Gaussian policy: one multiplier per environment of the std that environment's actions
    are sampled with (``num_envs`` positive numbers; empty, the default: 1 for every env).
    The update scores each sample under the distribution it was drawn from, so the
    importance ratios are those of the env's own noise level; the mean (and the critic,
    which does not see the scale) is shared, so envs with a small scale train the mean
    to drive with little noise while the others keep exploring. A small scale k makes
    its samples' ratios move about 1/k times as fast, so they weigh more in
    ``clip_fraction``, the KL and a ``target_kl`` stop. The logged ``action_std`` and
    ``entropy`` and evaluation (``--stochastic``) use the policy's own std. With
    ``backend = "ray"``, actor k's M envs take scales ``k*M .. k*M + M - 1``."""

    std_scale_weight: bool = False
    """With ``std_scales``: weight each sample's policy-loss term by the scale it was
    sampled with (its advantage, after ``norm_adv``, is multiplied by the scale; for the
    clipped surrogate that is exactly a per-sample weight). A sample drawn at scale k
    has a score ``∇μ log π = ε / (kσ)``, 1/k times that of a full-noise sample, so
    without the weight a few quiet envs carry as much policy gradient as many exploring
    ones; with it, every sample pulls the mean about equally hard. The value loss and
    the entropy are not weighted."""

    action_dist: str = "gaussian"
    """Box actions: ``gaussian`` (a diagonal Gaussian, samples clipped to the bounds for the
    env) or ``beta`` (a Beta per dimension on the bounds, Chou et al. 2017: no sample
    needs clipping, and the deterministic action is its mean; needs finite bounds; the
    initial std is still ``exp(init_log_std)``, at most 0.577 of the half-range)."""

    advantage_estimator: str = "gae"
    """``gae``, ``returns_minus_baseline`` or ``reward_to_go`` (or pass your own to the Trainer)."""

    policy_loss: str = "clipped_surrogate"
    """``clipped_surrogate``, ``policy_gradient`` (unclipped) or ``kl_penalty`` (the clipped
    surrogate plus RLlib's adaptive KL penalty; see ``kl_coef``, ``kl_target``); or pass your
    own to the Trainer."""

    kl_coef: float = 0.2
    """``policy_loss = "kl_penalty"``: the KL penalty's starting coefficient (adapted after every update)."""

    kl_target: float = 0.01
    """``policy_loss = "kl_penalty"``: the KL per update that the coefficient's adaptation aims at."""

    deterministic_action: str = "mean"
    """Box actions: what the deterministic policy (evaluation, ``load_policy(...).act``) sends:
    ``mean``, the Gaussian's mean clipped to the bounds, or ``expected``, the mean of the
    clipped Gaussian E[clip(a)], the average of what the sampled policy sends (it differs
    where the mean lies near or beyond a bound). A Beta policy sends its mean either way."""

    torch_threads: int = 1
    """Threads of torch's intra-op pool; 1 suits small MLPs on a 2-core machine and leaves a core to the envs."""

    logger: str = "csv"
    """Where the metrics rows go, comma-separated: ``csv`` (``metrics.csv``, always on: resume,
    plots and the learning curve read it) and ``tensorboard`` (event files in ``tb/``; the
    ``tensorboard`` extra). A resumed run hides the events it writes again (TensorBoard's
    ``purge_step``), so no step appears twice."""

    checkpoint_every: int = 10
    """Write a checkpoint and redraw the learning curve every this many updates (and at the end)."""

    keep_checkpoints: int = 3
    """Number of most recent checkpoints kept in ``checkpoints/``."""

    env_kwargs: dict = field(default_factory=dict)
    """Extra keyword arguments for the environment constructor (MetaDrive: the fields of
    ``ppo_core.envs.metadrive.MetaDriveConfig``, e.g. ``num_scenarios``, ``start_seed``,
    ``traffic_density``, ``horizon``)."""

    eval_every_steps: int = 0
    """Evaluate the deterministic policy on held-out episodes every this many environment
    steps (checked after each update, and once more at the end of the run); 0 turns it off.
    Evaluation runs between rollouts, never concurrently with the training envs."""

    eval_episodes: int = 20
    """Episodes per periodic evaluation (MetaDrive: scenarios ``eval_start_seed`` ..
    ``eval_start_seed + eval_episodes - 1``, each once)."""

    eval_start_seed: int = 10_000
    """First held-out scenario (MetaDrive) or reset seed (other envs) of periodic evaluation;
    outside the training range."""

    stop_at_success: float = 0.0
    """Stop the run early once a periodic held-out evaluation reaches this success rate
    (envs that report success, such as MetaDrive); 0 turns it off. The last checkpoint is
    written; ``--resume`` with a larger ``total_steps`` continues it."""

    eval_workers: int = 0
    """Worker processes of the MetaDrive evaluator, kept alive between evaluations;
    0 means ``num_envs``."""

    max_env_restarts: int = 3
    """When an ``AsyncVectorEnv`` worker (or a Ray actor) crashes or is killed, it is rebuilt
    and the partial rollout discarded; give up after this many consecutive failures."""

    backend: str = "local"
    """Where the environments run: ``local`` (this machine: ``SyncVectorEnv``,
    ``AsyncVectorEnv`` or env groups) or ``ray`` (Ray actors, on this machine or a cluster;
    needs the ``ray`` extra; see ``docs/scaling.md``)."""

    ray_address: str = ""
    """``backend = "ray"``: the address of a Ray cluster to join (e.g. ``ray://head:10001``
    or ``auto``); empty starts a local Ray instance sized to this machine."""

    num_workers: int = 0
    """``backend = "ray"``: rollout actors K (0: one per env); ``num_envs`` stays the total."""

    envs_per_worker: int = 0
    """``backend = "ray"``: environments per actor M (0: ``num_envs / num_workers``)."""

    ray_worker_cpus: float = 1.0
    """``backend = "ray"``: CPUs Ray reserves per actor (locally capped so that all actors fit)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field with an invalid value."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = _default(f)
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
                if ok and not -_INT64 <= value < _INT64:  # what TOML (config.toml) can hold
                    raise ConfigError(f"config key {f.name!r}: {value!r} is out of range "
                                      f"(integers are 64-bit: below 2**63)")
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                if ok:
                    try:
                        value = float(value)
                    except OverflowError:  # an int beyond the float range, e.g. 10**400
                        raise ConfigError(f"config key {f.name!r}: expected a finite number, "
                                          f"got an integer of {len(str(abs(value)))} digits") from None
                    setattr(self, f.name, value)
                    ok = math.isfinite(value)
            else:
                ok = isinstance(value, type(default))
            if not ok:
                raise ConfigError(
                    f"config key {f.name!r}: expected {type(default).__name__}, got {_short(value)}"
                )
        positive = ["kl_target", "eval_episodes", "num_envs", "num_steps", "num_minibatches", "update_epochs", "torch_threads",
                    "checkpoint_every", "keep_checkpoints", "clip_coef", "obs_clip", "reward_clip"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"config key {name!r} must be > 0, got {getattr(self, name)!r}")
        non_negative = ["seed", "total_steps", "eval_every_steps", "eval_start_seed", "eval_workers",
                        "max_env_restarts", "learning_rate", "vf_clip_coef", "ent_coef", "vf_coef",
                        "max_grad_norm", "target_kl", "adam_eps", "kl_coef"]
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"config key {name!r} must be >= 0, got {getattr(self, name)!r}")
        loggers = [x.strip() for x in self.logger.split(",") if x.strip()]
        unknown = sorted(set(loggers) - {"csv", "tensorboard"})
        if unknown or "csv" not in loggers:
            raise ConfigError(f"config key 'logger' must be 'csv' or 'csv,tensorboard' (metrics.csv is always "
                              f"written), got {self.logger!r}")
        if not 0.0 <= self.stop_at_success <= 1.0:
            raise ConfigError(f"config key 'stop_at_success' must be in [0, 1] (0: off), got {self.stop_at_success!r}")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"config key {name!r} must be in [0, 1], got {getattr(self, name)!r}")
        if self.env_groups < 1 or self.num_envs % self.env_groups:
            raise ConfigError(f"config key 'env_groups' must be >= 1 and divide num_envs ({self.num_envs}), "
                              f"got {self.env_groups!r}")
        family = get_family(self.env_id)
        if self.env_groups > 1 and not (self.async_envs or (family is not None and family.steps_in_workers)):
            raise ConfigError("config key 'env_groups' > 1 needs async_envs = true (worker processes to overlap)")
        if self.num_minibatches > self.batch_size:
            raise ConfigError(
                f"config key 'num_minibatches' ({self.num_minibatches}) exceeds the batch size "
                f"num_envs * num_steps = {self.batch_size}"
            )
        if not self.hidden_sizes or not all(
            isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in self.hidden_sizes
        ):
            raise ConfigError(f"config key 'hidden_sizes' must be a non-empty list of positive ints, "
                              f"got {self.hidden_sizes!r}")
        if self.backend not in ("local", "ray"):
            raise ConfigError(f"config key 'backend' must be 'local' or 'ray', got {self.backend!r}")
        for name in ("num_workers", "envs_per_worker"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key {name!r} must be >= 0, got {getattr(self, name)!r}")
        if self.ray_worker_cpus <= 0:
            raise ConfigError(f"config key 'ray_worker_cpus' must be > 0, got {self.ray_worker_cpus!r}")
        if self.backend == "ray":
            k = self.num_workers or self.num_envs
            m = self.envs_per_worker or self.num_envs // k
            if k * m != self.num_envs:
                raise ConfigError(f"config keys 'num_workers' ({k}) x 'envs_per_worker' ({m}) must equal "
                                  f"num_envs ({self.num_envs})")
            if self.env_groups != 1:
                raise ConfigError("config key 'env_groups' applies to the local backend; with backend 'ray' "
                                  "the actors step in parallel")
        if self.action_dist not in ACTION_DISTS:
            raise ConfigError(f"config key 'action_dist' must be one of {', '.join(ACTION_DISTS)}, "
                              f"got {self.action_dist!r}")
        if self.final_std < 0:
            raise ConfigError(f"config key 'final_std' must be >= 0 (0: the log-std is learned), "
                              f"got {self.final_std!r}")
        if self.final_std > 0 and (self.state_dependent_std or self.action_dist != "gaussian"):
            raise ConfigError("config key 'final_std' schedules the free log-std of a Gaussian policy; it "
                              "cannot be combined with state_dependent_std or action_dist 'beta'")
        if self.std_scales:
            if len(self.std_scales) != self.num_envs or not all(
                    isinstance(k, (int, float)) and not isinstance(k, bool) and math.isfinite(k) and k > 0
                    for k in self.std_scales):
                raise ConfigError(f"config key 'std_scales' must be empty or a list of num_envs ({self.num_envs}) "
                                  f"positive numbers, got {_short(self.std_scales)}")
            if self.action_dist != "gaussian":
                raise ConfigError("config key 'std_scales' scales the std of a Gaussian policy; it cannot be "
                                  "combined with action_dist 'beta'")
            self.std_scales = [float(k) for k in self.std_scales]
        if self.std_scale_weight and not self.std_scales:
            raise ConfigError("config key 'std_scale_weight' weights samples by their std_scales; set "
                              "'std_scales' too (it is empty)")
        if self.action_dist == "beta" and self.state_dependent_std:
            raise ConfigError("config key 'state_dependent_std' applies to action_dist 'gaussian'; a Beta "
                              "policy's concentrations are outputs per state already")
        if self.deterministic_action not in ("mean", "expected"):
            raise ConfigError(f"config key 'deterministic_action' must be 'mean' or 'expected', "
                              f"got {self.deterministic_action!r}")
        if self.activation not in ("tanh", "relu"):
            raise ConfigError(f"config key 'activation' must be 'tanh' or 'relu', got {self.activation!r}")
        if family is not None:
            try:
                family.check_config(self.env_kwargs, self.num_envs)
            except ValueError as e:
                raise ConfigError(str(e)) from None

    @property
    def batch_size(self) -> int:
        """Transitions per update: ``num_envs * num_steps``."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """Updates needed for ``total_steps``, rounded up, and at least one."""
        return max(1, -(-self.total_steps // self.batch_size))

    def to_dict(self) -> dict:
        """Plain-data copy, suitable for TOML/JSON and for checkpoints."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "config") -> "PPOConfig":
        """Build a config from a mapping; unknown keys raise :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a table of settings, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown config key {unknown[0]!r} (known keys: {', '.join(sorted(known))})"
            )
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def replace(self, **changes: Any) -> "PPOConfig":
        """A validated copy with some fields changed."""
        return self.from_dict({**self.to_dict(), **changes}, source="override")


#: Names that moved out of this module, kept for older callers: name -> (module, attribute).
_MOVED = {"METADRIVE_ENV_KWARGS": ("ppo_core.envs.metadrive.family", "ENV_KWARGS")}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        module, attribute = _MOVED[name]
        return copy.deepcopy(getattr(importlib.import_module(module), attribute))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def preset(env_id: str = DEFAULT_ENV) -> PPOConfig:
    """The built-in defaults for ``env_id``: its env family's preset (MetaDrive's for ids
    starting with ``metadrive``, ``env_id`` kept as given), plain :class:`PPOConfig`
    defaults otherwise."""
    family = get_family(env_id)
    if family is not None:
        return PPOConfig(**family.preset(env_id))
    return PPOConfig(env_id=env_id)


_INT64 = 2**63


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"PPOConfig field {f.name!r} has no default")


def load_config(path: Union[str, os.PathLike], *, defaults: Union[PPOConfig, None] = None) -> PPOConfig:
    """Read a config from a ``.toml`` or ``.json`` file (keys may be under a ``[ppo]`` table).

    Missing keys take their value from ``defaults`` (default: the :class:`PPOConfig`
    defaults); an ``env_kwargs`` table is merged into ``defaults.env_kwargs`` key by key.
    Raises :class:`ConfigError` for a missing file, a parse error, an unknown key or a bad value.
    """
    data = read_config_file(path)
    if defaults is not None:
        merged = defaults.to_dict()
        if isinstance(data.get("env_kwargs"), dict):
            data = {**data, "env_kwargs": {**merged["env_kwargs"], **data["env_kwargs"]}}
        data = {**merged, **data}
    return PPOConfig.from_dict(data, source=f"config file {path}")


def read_config_file(path: Union[str, os.PathLike]) -> dict:
    """The raw table of settings of a ``.toml`` / ``.json`` config file (not validated)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {e.start} cannot be decoded); "
                          f"a config is a .toml or .json text file") from None
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read it ({e.strerror or e})") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            raise ConfigError(f"config file {path}: expected a .toml or .json file")
    except (ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"config file {path}: cannot parse: {e}") from None
    if isinstance(data, dict) and set(data) == {"ppo"}:
        data = data["ppo"]
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a table of settings, got {type(data).__name__}")
    return data


def field_docs() -> Dict[str, str]:
    """Each :class:`PPOConfig` field's docstring (the string literal under it), by name."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(PPOConfig)))
    cls = tree.body[0]
    if not isinstance(cls, ast.ClassDef):
        raise TypeError(f"the source of PPOConfig parses to {type(cls).__name__}, not a class")
    body = cls.body
    docs: Dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def config_to_toml(config: PPOConfig, *, with_docs: bool = False) -> str:
    """``config`` as TOML text (needs ``tomli-w``); ``with_docs``: each key under its
    description as comments. Either way the text reads back as the same config."""
    import tomli_w

    data = config.to_dict()
    if not with_docs:
        return tomli_w.dumps(data)
    docs = field_docs()
    lines: List[str] = []
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    for key, value in data.items():
        if key in tables:
            continue
        lines += [f"# {line}".rstrip() for line in docs.get(key, "").splitlines()]
        lines += [tomli_w.dumps({key: value}).rstrip("\n"), ""]
    for key, value in tables.items():
        lines += [f"# {line}".rstrip() for line in docs.get(key, "").splitlines()]
        lines += [tomli_w.dumps({key: value}).strip("\n"), ""]
    return "\n".join(lines)


def save_config(config: PPOConfig, path: Union[str, os.PathLike]) -> None:
    """Write ``config`` as TOML (``.toml``, needs ``tomli-w``) or JSON (any other suffix), atomically."""
    path = Path(path)
    data = config.to_dict()
    if path.suffix == ".toml":
        import tomli_w

        text = tomli_w.dumps(data)
    else:
        text = json.dumps(data, indent=2) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
