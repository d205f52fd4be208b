"""Small-sample statistics for evaluation reports: Wilson intervals and paired differences.

NumPy and the standard library only, so evaluation summaries and the study scripts can
use them without torch.

* :func:`wilson_interval`: a 95% interval for a rate from ``k`` successes in ``n``
  trials (Wilson 1927). Unlike the normal ("Wald") interval it stays inside [0, 1] and
  keeps its coverage at rates near 0 or 1 and at small ``n``.
* :func:`paired_difference`: the mean difference of two policies measured on the same
  scenarios, with a 95% interval from the per-scenario differences. Pairing removes
  the scenario-to-scenario variation that two independent samples would carry.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import numpy as np

__all__ = ["Z95", "wilson_interval", "paired_difference"]

#: The two-sided 95% quantile of the standard normal distribution.
Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> Tuple[float, float]:
    """The Wilson score interval ``(low, high)`` of a binomial rate ``successes / n``.

    ``successes`` may be a float (a sum of 0/1 outcomes). Raises ``ValueError`` for
    ``n < 1`` or ``successes`` outside ``[0, n]``.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    k = float(successes)
    if not 0.0 <= k <= n or math.isnan(k):
        raise ValueError(f"successes must be in [0, n={n}], got {successes!r}")
    p = k / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def paired_difference(a: Sequence[float], b: Sequence[float], z: float = Z95) -> Dict[str, float]:
    """Mean of ``a - b`` over paired measurements, with a normal-approximation 95% interval.

    ``a[i]`` and ``b[i]`` are two policies' outcomes (e.g. success 0/1) on the same
    scenario ``i``. Returns ``mean``, ``low``, ``high``, ``n``, and the counts of pairs
    where only ``a`` (``a_only``) or only ``b`` (``b_only``) is larger (the discordant
    pairs of McNemar's test for 0/1 outcomes).
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"a and b must be 1-d of the same length, got shapes {x.shape} and {y.shape}")
    n = x.size
    if n < 2:
        raise ValueError(f"need at least 2 pairs, got {n}")
    d = x - y
    mean = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "low": mean - z * se, "high": mean + z * se, "n": n,
            "a_only": int((d > 0).sum()), "b_only": int((d < 0).sum())}
