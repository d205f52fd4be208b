"""Wilson intervals and paired differences (ppo_core.stats) against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from ppo_core.stats import Z95, paired_difference, wilson_interval


def test_wilson_interval_known_values():
    # 45 of 100: p = 0.45, center (0.45 + z^2/200) / (1 + z^2/100)
    low, high = wilson_interval(45, 100)
    z2 = Z95 ** 2
    center = (0.45 + z2 / 200) / (1 + z2 / 100)
    half = Z95 * math.sqrt(0.45 * 0.55 / 100 + z2 / 40000) / (1 + z2 / 100)
    assert low == pytest.approx(center - half) and high == pytest.approx(center + half)
    assert (round(low, 4), round(high, 4)) == (0.3561, 0.5476)  # statsmodels proportion_confint(45, 100, method="wilson")


def test_wilson_interval_edges_stay_in_unit_interval():
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0.15 < high < 0.17  # the "rule of three" region: about 3/20
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and 0.83 < low < 0.85
    low, high = wilson_interval(1, 1)
    assert 0.0 < low < 0.5 and high == 1.0


def test_wilson_interval_shrinks_with_n():
    widths = [wilson_interval(n // 2, n)[1] - wilson_interval(n // 2, n)[0] for n in (20, 100, 400)]
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] == pytest.approx(0.19, abs=0.01)  # about +-0.10 at p = 0.5, n = 100


@pytest.mark.parametrize("k, n, what", [(1, 0, "n must be >= 1"), (-1, 10, "successes must be"),
                                        (11, 10, "successes must be"), (float("nan"), 10, "successes must be")])
def test_wilson_interval_rejects_bad_input(k, n, what):
    with pytest.raises(ValueError, match=what):
        wilson_interval(k, n)


def test_paired_difference():
    a = [1, 1, 0, 1, 0, 1]
    b = [1, 0, 0, 0, 0, 1]
    d = paired_difference(a, b)
    assert d["mean"] == pytest.approx(2 / 6) and d["n"] == 6
    assert d["a_only"] == 2 and d["b_only"] == 0
    se = math.sqrt(sum((x - 1 / 3) ** 2 for x in (0, 1, 0, 1, 0, 0)) / 5) / math.sqrt(6)
    assert d["low"] == pytest.approx(1 / 3 - Z95 * se) and d["high"] == pytest.approx(1 / 3 + Z95 * se)
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1, 0], [1])
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference([1], [0])


def test_paired_eval_script(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "paired_eval.py"
    spec = importlib.util.spec_from_file_location("paired_eval", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def write(name, successes):
        p = tmp_path / name
        p.write_text("".join(json.dumps({"scenario": 10000 + i, "success": s, "crash": not s, "out_of_road": False,
                                         "route_completion": 1.0 if s else 0.5, "return": 1.0, "length": 10}) + "\n"
                             for i, s in enumerate(successes)))
        return str(p)

    a = write("a.jsonl", [True, False, False, True])
    b = write("b.jsonl", [True, True, False, True])
    assert mod.main([f"base={a}", f"new={b}"]) == 0
    out = capsys.readouterr().out
    assert "base" in out and "0.500" in out and "0.750" in out
    assert "new - base, success: +0.250" in out and "1 scenarios only new solved, 0 only base" in out
