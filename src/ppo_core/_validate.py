"""Argument checking for the NumPy API, in one place.

Every public kernel goes through these helpers before the compiled code sees an
array, so the rules (dtypes, shapes, ranges) and the wording of the errors are the
same everywhere. Each error names the argument and shows what was received.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple

import numpy as np

_NUMERIC_KINDS = "biuf"


def as_array(name: str, x) -> np.ndarray:
    """``np.asarray(x)`` with a ``TypeError`` for non-numeric data."""
    try:
        a = np.asarray(x)
    except Exception as exc:  # e.g. a CUDA tensor, whose own message we keep
        raise TypeError(f"{name}: cannot be read as a NumPy array ({exc})") from exc
    if a.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(
            f"{name}: expected a real numeric or bool array, got dtype {a.dtype}"
        )
    return a


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def result_dtype(arrays: Sequence[np.ndarray]) -> np.dtype:
    """The dtype the kernels compute in, from the value-carrying arrays.

    * all float32 -> float32; float16 (alone or with float32) -> float32;
    * any float64 -> float64;
    * any integer or bool array -> float64, whatever its width and whatever it is
      mixed with. ``np.result_type(int8, float32)`` would be float32, but a value
      stored as an integer is an exact count (a reward, a log-prob table), and float32
      loses it beyond 2^24 and overflows ``exp`` where float64 does not (uint8 log-probs
      200 and 0 give a ratio of e^200: inf in float32, 7e86 in float64, so a zero
      advantage would make the loss NaN where the spec is finite). This is the rule
      NumPy applies to int64 (``np.result_type(int64, float32)`` is float64), for every
      integer width.
    """
    first = arrays[0].dtype
    if (first == _F32 or first == _F64) and all(a.dtype == first for a in arrays):
        return first  # the common case: one float dtype throughout
    if any(a.dtype.kind in "biu" for a in arrays):
        return _F64
    dt = np.result_type(*arrays, np.float32)
    if dt.kind != "f" or dt.itemsize > 8:
        # float128 / longdouble has no kernel; float64 is the widest we compute in.
        dt = np.dtype(np.float64)
    return dt


_BOOL = np.dtype(bool)


def kernel_ready(first, values: Sequence, masks: Sequence) -> bool:
    """True when the arrays need no conversion: ndarrays of one shape, (T,) or (T, N),
    ``first`` and ``values`` all float32 or all float64, ``masks`` bool. The general
    path gives the same result for such input, only slower."""
    if type(first) is not np.ndarray:
        return False
    dt, shape = first.dtype, first.shape
    if not (dt == _F32 or dt == _F64) or len(shape) not in (1, 2):
        return False
    for a in values:
        if type(a) is not np.ndarray or a.dtype != dt or a.shape != shape:
            return False
    for m in masks:
        if type(m) is not np.ndarray or m.dtype != _BOOL or m.shape != shape:
            return False
    return True


def as_values(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Convert to the result dtype; a view (any strides) when it already is."""
    return a.astype(dtype, copy=False)


def as_mask(a: np.ndarray) -> np.ndarray:
    """Masks are read as ``astype(bool)``: nonzero is True. No copy for bool input."""
    return a.astype(bool, copy=False)


def rollout_shape(named: Sequence[Tuple[str, np.ndarray]]) -> Tuple[int, ...]:
    """All arrays share one shape, (T,) or (T, N)."""
    first_name, first = named[0]
    shape = first.shape
    if len(shape) in (1, 2) and all(a.shape == shape for _, a in named):
        return shape  # the common case, checked in one pass
    if first.ndim not in (1, 2):
        raise ValueError(
            f"{first_name}: expected a time-major array of shape (T,) or (T, N), "
            f"got shape {first.shape}"
        )
    for name, a in named[1:]:
        if a.shape != first.shape:
            raise ValueError(
                f"{name}: shape {a.shape} differs from {first_name}'s shape {first.shape}"
            )
    return first.shape


def same_shape(named: Sequence[Tuple[str, np.ndarray]]) -> Tuple[int, ...]:
    """Loss inputs: any shape, all equal, not empty."""
    first_name, first = named[0]
    for name, a in named[1:]:
        if a.shape != first.shape:
            raise ValueError(
                f"{name}: shape {a.shape} differs from {first_name}'s shape {first.shape}"
            )
    if first.size == 0:
        raise ValueError(
            f"{first_name}: empty input of shape {first.shape} (the loss is a mean over "
            "its elements)"
        )
    return first.shape


def _real(name: str, x) -> float:
    if type(x) is float:  # the common case, without the slower ABC check below
        return x
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(x).__name__} {x!r}")
    return float(x)


def unit_interval(name: str, x) -> float:
    """gamma and lam: finite and in [0, 1]."""
    v = _real(name, x)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{name}: expected a finite number in [0, 1], got {x!r}")
    return v


def positive(name: str, x) -> float:
    """clip_coef: finite and > 0."""
    v = _real(name, x)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{name}: expected a finite number > 0, got {x!r}")
    return v


def flat(a: np.ndarray) -> np.ndarray:
    """1-d view for the loss kernels (which take any stride); N-d input that is not
    C-contiguous is copied by ``ravel``, the only copy the loss path can make."""
    return a if a.ndim == 1 else a.ravel()


def optional_pair(
    a_name: str, a: Optional[object], b_name: str, b: Optional[object]
) -> bool:
    if (a is None) != (b is None):
        given, missing = (a_name, b_name) if a is not None else (b_name, a_name)
        raise ValueError(f"{given} was given without {missing}: pass both or neither")
    return a is not None
