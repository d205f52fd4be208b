"""A trained policy as a file that runs without ppo_core: TorchScript or ONNX.

The exported model is the deterministic policy of :meth:`Policy.act` with everything
around the network built in: the run's observation normalization (its saved
statistics), the deterministic action (the distribution's mode, or E[clip(a)] with
``deterministic_action = "expected"``), and the clipping of Box actions to their bounds
(Discrete actions come out as int64 with the space's ``start`` added). Input: a float32
batch of raw observations ``(N, *obs_shape)``, any N. Outputs: the env actions ``(N,
*action_shape)`` (``(N,)`` for Discrete), then the value estimates ``(N,)``.

TorchScript needs only torch (``torch.jit.load``); ONNX needs the ``onnx`` extra to export
(``onnx``, ``onnxscript``) and ``onnxruntime`` to run.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import gymnasium
import numpy as np
import torch
from torch import nn

from .agent import Policy
from .checkpoint import atomic_write_bytes
from .errors import ConfigError
from .policies import BoundedBeta, expected_clipped_action, space_shape

__all__ = ["ExportedPolicy", "export_policy", "FORMATS"]

FORMATS = ("torchscript", "onnx")


class ExportedPolicy(nn.Module):
    """``obs (N, *obs_shape) float32 -> (actions, values)``: :meth:`Policy.act` as one module."""

    # Buffers (register_buffer): the observation statistics, and a Box action space's bounds.
    obs_mean: torch.Tensor
    obs_scale: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.net = copy.deepcopy(policy.net).requires_grad_(False)  # a plain inference graph; the policy is untouched
        norm = policy.obs_normalizer
        self.normalize = bool(norm.enabled)
        shape = space_shape(policy.observation_space)
        # As ObsNormalizer: float64 arithmetic on the float32 observation, then float32.
        mean = np.array(np.broadcast_to(norm.rms.mean, shape), np.float64)
        scale = np.sqrt(np.array(np.broadcast_to(norm.rms.var, shape), np.float64) + 1e-8)
        self.register_buffer("obs_mean", torch.from_numpy(mean))
        self.register_buffer("obs_scale", torch.from_numpy(scale))
        self.obs_clip = float(norm.clip)
        space = policy.action_space
        self.discrete = isinstance(space, gymnasium.spaces.Discrete)
        if isinstance(space, gymnasium.spaces.Discrete):
            self.start = int(space.start)
        elif isinstance(space, gymnasium.spaces.Box):
            self.register_buffer("low", torch.as_tensor(space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(space.high, dtype=torch.float32))
        else:
            raise ConfigError(f"unsupported action space {space}: expected Discrete or Box")
        self.expected = policy.deterministic_action == "expected" and not self.discrete

    def forward(self, obs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = obs
        if self.normalize:
            x = ((obs.double() - self.obs_mean) / self.obs_scale).clamp(-self.obs_clip, self.obs_clip).float()
        dist, value = self.net(x)
        if self.discrete:
            return dist.probs.argmax(-1) + self.start, value
        if isinstance(dist, BoundedBeta):
            return torch.minimum(torch.maximum(dist.mean, self.low), self.high), value
        base = dist.base_dist
        if self.expected:
            action = expected_clipped_action(base.loc, base.scale, self.low, self.high, dtype=torch.float32)
        else:
            action = base.loc
        return torch.minimum(torch.maximum(action, self.low), self.high), value


def export_policy(policy: Policy, path: Union[str, os.PathLike], fmt: str = "torchscript") -> Dict[str, Any]:
    """Write ``policy`` (a :class:`Policy`, e.g. from :func:`load_policy`) to ``path`` as
    ``fmt`` (``"torchscript"`` or ``"onnx"``), atomically. Returns facts about the file.

    Raises :class:`ConfigError` for an unknown format, an ONNX export without the
    ``onnx`` extra, or a network that the exporter cannot follow.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r}: choose from {', '.join(FORMATS)}")
    module = ExportedPolicy(policy).eval()
    shape = space_shape(policy.observation_space)
    example = torch.zeros((2, *shape), dtype=torch.float32)
    path = Path(path)
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)  # no data-dependent checks in the graph
    try:
        with torch.no_grad():
            if fmt == "torchscript":
                import io
                import warnings

                with warnings.catch_warnings():
                    # torch 2.13 marks torch.jit deprecated; TorchScript files still load everywhere
                    # torch does (C++ libtorch included), which is why it is offered next to ONNX.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)  # constant shapes are what we want
                    traced = torch.jit.trace(module, example, check_trace=False)
                    buf = io.BytesIO()
                    torch.jit.save(traced, buf)
                data = buf.getvalue()
            else:
                data = _onnx_bytes(module, example, path)
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
    atomic_write_bytes(path, data)
    return {"path": str(path), "format": fmt, "bytes": len(data), "obs_shape": list(shape),
            "step": policy.step, "deterministic_action": policy.deterministic_action}


def _onnx_bytes(module: nn.Module, example: torch.Tensor, path: Path) -> bytes:
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"ONNX export needs the 'onnx' extra ({', '.join(missing)} not installed): "
                          f'pip install "ppo_core[onnx]"')
    import tempfile
    import warnings

    import logging

    batch = torch.export.Dim("batch", min=1)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its notes on optional torchvision ops are not the user's business
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecations inside torch's exporter
        out = Path(tmp) / "policy.onnx"
        try:
            torch.onnx.export(module, (example,), str(out), input_names=["obs"], output_names=["action", "value"],
                              dynamic_shapes={"obs": {0: batch}}, dynamo=True, external_data=False,
                              verbose=False)
        except Exception as e:  # the exporter's errors are long; the first line says what failed
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"ONNX export failed: {first}") from None
        finally:
            quiet.setLevel(level)
        return out.read_bytes()
