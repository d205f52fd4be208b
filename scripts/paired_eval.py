"""Compare evaluations on the same scenarios: rates with Wilson intervals, paired differences.

Each argument is a ``ppo-core eval --episodes-out`` file (one JSON line per episode);
give them as ``LABEL=FILE`` or ``FILE``. The first is the reference: every other is
compared with it on the scenarios both evaluated, pairing episodes by ``scenario``.

    python scripts/paired_eval.py base=runs/a.val.jsonl big=runs/b.val.jsonl
"""

from __future__ import annotations

import json
import sys
from typing import Dict, List, Tuple

from ppo_core.stats import paired_difference, wilson_interval


def _load(arg: str) -> Tuple[str, Dict[int, dict]]:
    label, _, path = arg.rpartition("=")
    with open(path, encoding="utf-8") as f:
        episodes = [json.loads(line) for line in f if line.strip()]
    by_scenario = {int(e["scenario"]): e for e in episodes}
    if len(by_scenario) != len(episodes):
        raise SystemExit(f"{path}: a scenario appears twice; pairing needs one episode per scenario")
    return label or path, by_scenario


def main(argv: List[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 2
    try:
        runs = [_load(a) for a in argv]
    except OSError as e:
        raise SystemExit(f"paired_eval: cannot read {e.filename}: {e.strerror}") from None
    print(f"{'evaluation':<24}{'episodes':>9}{'success':>9}{'95% interval':>16}{'crash':>7}{'out of road':>12}"
          f"{'route compl.':>13}")
    for label, eps in runs:
        n = len(eps)
        k = sum(bool(e["success"]) for e in eps.values())
        low, high = wilson_interval(k, n)
        crash = sum(bool(e["crash"]) for e in eps.values()) / n
        oor = sum(bool(e["out_of_road"]) for e in eps.values()) / n
        rc = sum(float(e["route_completion"]) for e in eps.values()) / n
        print(f"{label:<24}{n:>9}{k / n:>9.3f}{f'{low:.3f}-{high:.3f}':>16}{crash:>7.3f}{oor:>12.3f}{rc:>13.3f}")
    ref_label, ref = runs[0]
    for label, eps in runs[1:]:
        common = sorted(set(ref) & set(eps))
        if len(common) < 2:
            print(f"{label} vs {ref_label}: fewer than 2 common scenarios")
            continue
        for key in ("success", "route_completion"):
            d = paired_difference([float(eps[s][key]) for s in common], [float(ref[s][key]) for s in common])
            extra = f", {d['a_only']} scenarios only {label} solved, {d['b_only']} only {ref_label}" \
                if key == "success" else ""
            print(f"{label} - {ref_label}, {key}: {d['mean']:+.3f} (95% interval {d['low']:+.3f} to "
                  f"{d['high']:+.3f}) on {d['n']} paired scenarios{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
