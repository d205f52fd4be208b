"""Stubs for the compiled extension. Users call ppo_core, which validates and converts
arguments first; these functions expect float32/float64 value arrays of one dtype and
bool masks, and raise TypeError/ValueError otherwise."""

from typing import Optional, Tuple

import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating]
_B = npt.NDArray[np.bool_]

def gae(
    rewards: _F, values: _F, next_values: _F, terminated: _B, truncated: _B, *,
    gamma: float, lam: float,
) -> Tuple[_F, _F]: ...
def discounted_returns(
    rewards: _F, terminated: _B, truncated: _B, next_values: Optional[_F] = None, *,
    gamma: float,
) -> _F: ...
def next_values_from(
    values: _F, last_values: _F, *, final_values: Optional[_F] = None,
    done: Optional[_B] = None,
) -> _F: ...
def clipped_surrogate(
    new_log_prob: _F, old_log_prob: _F, advantages: _F, *, clip_coef: float,
) -> Tuple[float, _F, float, float]: ...
def clipped_value_loss(
    values: _F, old_values: _F, returns: _F, *, clip_coef: Optional[float],
) -> Tuple[float, _F, float]: ...
