"""Plain-text tables of timings: one row per size, one column per implementation."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

__all__ = ["format_seconds", "render"]


def format_seconds(seconds: float) -> str:
    """``12.3us``, ``4.56ms`` or ``1.23s``."""
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f}us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f}ms"
    return f"{seconds:.2f}s"


def _cell(seconds: Optional[float], reference: Optional[float], is_reference: bool) -> str:
    if seconds is None:
        return "-"
    if is_reference or reference is None:
        return format_seconds(seconds)
    ratio = seconds / reference
    return f"{format_seconds(seconds)} {ratio:.2f}x" if ratio < 10 else f"{format_seconds(seconds)} {ratio:.0f}x"


def render(title: str, label_names: Sequence[str], rows: Sequence[Dict], impls: Sequence[str],
           reference: str = "ppo_core") -> str:
    """A table with a title line, a header and one line per row.

    Each row is ``{"labels": [...], "seconds": {impl: float or None}}``; a baseline cell
    shows its time and the speed-up ``baseline / reference`` (> 1: the reference is
    faster); ``-`` marks an implementation not measured for that row.
    """
    body: List[List[str]] = []
    for row in rows:
        ref = row["seconds"].get(reference)
        cells = [str(x) for x in row["labels"]]
        cells += [_cell(row["seconds"].get(impl), ref, impl == reference) for impl in impls]
        body.append(cells)
    header = list(label_names) + list(impls)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    n_labels = len(label_names)

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(w) if i < n_labels else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    out = [title, line(header), "-" * len(line(header))]
    out += [line(r) for r in body]
    return "\n".join(out)
