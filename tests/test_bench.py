"""``ppo-core bench``: it runs, its tables and JSON records are well formed, and its
baselines compute what ppo_core computes. Nothing here asserts on time."""

import io
import json
import math

import numpy as np
import pytest

import ppo_core
from ppo_core import bench, cli
from ppo_core.bench import baselines as B
from ppo_core.bench.e2e import render_profile
from ppo_core.bench.suite import GAE_IMPLS, LOSS_IMPLS

# Tiny sizes and samples: the run takes a second or two.
TINY = bench.Settings(gae_sizes=((16, 1), (8, 3)), loss_sizes=(64, 300), loss_dtypes=("float32", "float64"),
                      compile_dtypes=(), repeats=2, min_time=0.0005, cell_budget=0.5)


def _rollout(T=12, N=3, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    r, v, nv = (rng.normal(size=(T, N)).astype(dtype) for _ in range(3))
    term = rng.random((T, N)) < 0.2
    trunc = rng.random((T, N)) < 0.2
    return r, v, nv, term, trunc


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = io.StringIO()
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    records = bench.run(settings=TINY, stream=out, json_path=str(path))
    return out.getvalue(), records, json.loads(path.read_text())


def test_records_are_well_formed(tiny_run):
    _, records, from_json = tiny_run
    assert from_json == records
    assert {r["kernel"] for r in records} == {"gae", "clipped_surrogate", "clipped_value_loss"}
    for r in records:
        assert {"kernel", "impl", "dtype", "seconds", "speedup"} <= r.keys()
        assert ("shape" in r) != ("n" in r)
        assert r["impl"] in (GAE_IMPLS if r["kernel"] == "gae" else LOSS_IMPLS)
        assert r["dtype"] in ("float32", "float64")
        assert math.isfinite(r["seconds"]) and r["seconds"] > 0
        assert math.isfinite(r["speedup"]) and r["speedup"] > 0
    # speedup = that impl's time / ppo_core's time in the same cell
    ref = {(r["kernel"], r["dtype"], str(r.get("shape", r.get("n")))): r["seconds"]
           for r in records if r["impl"] == "ppo_core"}
    for r in records:
        key = (r["kernel"], r["dtype"], str(r.get("shape", r.get("n"))))
        assert r["speedup"] == pytest.approx(r["seconds"] / ref[key], rel=1e-12)
        if r["impl"] == "ppo_core":
            assert r["speedup"] == 1.0
    cells = {(r["kernel"], r["dtype"], str(r.get("shape", r.get("n")))) for r in records}
    assert len(cells) == 2 * 2 + 2 * 2 * 2  # GAE: 2 sizes x 2 dtypes; losses: 2 kernels x 2 sizes x 2 dtypes
    # every baseline that can run here was measured in every GAE cell
    gae_impls = {r["impl"] for r in records if r["kernel"] == "gae"}
    assert {"ppo_core", "sb3_numpy_loop", "copy_bound"} <= gae_impls
    for r in records:
        if r["kernel"] == "gae":
            assert r["shape"] in ([16, 1], [8, 3])


def test_tables_are_well_formed(tiny_run):
    text, records, _ = tiny_run
    assert "cores" in text.splitlines()[1] and f"ppo_core {ppo_core.__version__}" in text
    tables = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("gae:", "clipped_surrogate:", "clipped_value_loss:")):
            header = lines[i + 1].split()
            rows = []
            for row in lines[i + 3:]:
                if not row.startswith("float"):
                    break
                rows.append(row.split())
            tables[line.split(":")[0]] = (header, rows)
    assert set(tables) == {"gae", "clipped_surrogate", "clipped_value_loss"}
    for kernel, (header, rows) in tables.items():
        assert header[:3] == ["dtype", "(T," if kernel == "gae" else "n", "N)" if kernel == "gae" else "ppo_core"]
        impls = header[header.index("ppo_core"):]
        assert len(rows) == 4
        for row in rows:
            cells = row[3 if kernel == "gae" else 2:]
            assert cells[0].endswith("s")  # ppo_core's time
            seen, k = 1, 1
            while k < len(cells):  # a baseline: "time speed-up", or "-" when not measured
                if cells[k] == "-":
                    k += 1
                else:
                    assert cells[k].endswith("s") and cells[k + 1].endswith("x") and float(cells[k + 1][:-1]) > 0
                    k += 2
                seen += 1
            assert seen == len(impls)


def test_cli_bench_quick_writes_json(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench.suite, "QUICK", TINY)
    path = tmp_path / "out.json"
    assert cli.main(["bench", "--quick", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "gae: advantages and returns" in out and f"records to {path}" in out
    assert len(json.loads(path.read_text())) > 0


def test_cli_bench_rejects_bad_flags(capsys):
    assert cli.main(["bench", "--repeats", "3"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


# -- the baselines compute what ppo_core computes ----------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_and_torch_loops_equal_ppo_core(dtype):
    torch = pytest.importorskip("torch")
    r, v, nv, term, trunc = _rollout(dtype=dtype)
    adv, ret = ppo_core.gae(r, v, nv, term, trunc, gamma=0.97, lam=0.9)
    r_folded, f_done = B.fold_truncation(r, nv, term, trunc, 0.97), (term | trunc).astype(dtype)
    # Rounding order differs from the kernel's by a few ulp per step.
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in (B.sb3_numpy_loop(r_folded, v, nv, f_done, 0.97, 0.9),
                 [x.numpy() for x in B.cleanrl_torch_loop(*(torch.from_numpy(x) for x in (r_folded, v, nv, f_done)),
                                                          0.97, 0.9)]):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, adv, rtol=tol, atol=tol)
        np.testing.assert_allclose(b, ret, rtol=tol, atol=tol)


def test_torchrl_equals_ppo_core():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchrl")
    r, v, nv, term, trunc = _rollout(T=40, N=2)

    def batch_major(x):
        return torch.from_numpy(np.ascontiguousarray(x.T)).unsqueeze(-1)

    adv, ret = ppo_core.gae(r, v, nv, term, trunc, gamma=0.99, lam=0.95)
    for fn in (B.torchrl_loop, B.torchrl_vec):
        a, b = (x.squeeze(-1).numpy().T for x in fn(*map(batch_major, (r, v, nv, term, term | trunc)), 0.99, 0.95))
        # TorchRL multiplies by float32 masks even for float64 values (~1e-7 relative).
        np.testing.assert_allclose(a, adv, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(b, ret, rtol=1e-5, atol=1e-5)


def test_cleanrl_losses_equal_ppo_core_torch():
    torch = pytest.importorskip("torch")
    from ppo_core import torch as pt

    g = torch.Generator().manual_seed(0)
    old, third = torch.randn(200, generator=g, dtype=torch.float64), torch.randn(200, generator=g, dtype=torch.float64)
    new = (old + 0.3 * torch.randn(200, generator=g, dtype=torch.float64)).requires_grad_()
    loss, kl, frac = B.cleanrl_surrogate(new, old, third, 0.2)
    loss.backward()
    mine = pt.clipped_surrogate_loss(new.detach(), old, third, clip_coef=0.2)
    assert float(loss.detach()) == pytest.approx(float(mine.loss), rel=1e-12)
    assert float(kl) == pytest.approx(mine.approx_kl, rel=1e-12)
    assert float(frac) == pytest.approx(mine.clip_fraction, rel=1e-6)  # CleanRL's mean is float32
    vl = B.cleanrl_value_loss(new, old, third, 0.2)
    assert float(vl.detach()) == pytest.approx(float(pt.clipped_value_loss(new.detach(), old, third, clip_coef=0.2).loss),
                                      rel=1e-12)


def test_copy_bound_runs():
    r, v, nv, term, trunc = _rollout()
    assert B.copy_bound(r, v, nv, term, trunc) is None


# -- pieces ---------------------------------------------------------------------------------


def test_measure_takes_fewer_samples_over_budget():
    calls = []
    seconds, samples, warmup = bench.measure(lambda: calls.append(1), repeats=4, min_time=0.0, budget=1e9)
    assert samples == 4 and len(calls) == 5 and seconds >= 0 and warmup >= 0
    calls.clear()
    _, samples, _ = bench.measure(lambda: calls.append(sum(range(20000))), repeats=1000, min_time=0.0,
                                  budget=1e-9)
    assert samples == 1 and len(calls) == 2


def test_e2e_profile_renders():
    profile = {"steps": 8192, "updates": 2, "total_seconds": 10.0, "steps_per_second": 819.2,
               "seconds": {"env": 6.0, "inference": 2.0, "advantage": 0.01, "update": 1.9, "eval": 0.0,
                           "other": 0.09},
               "shares": {"env": 0.6, "inference": 0.2, "advantage": 0.001, "update": 0.19, "eval": 0.0,
                          "other": 0.009},
               "policy_loss_forward_seconds": 0.02,
               "config": {"num_envs": 2, "num_steps": 2048, "num_minibatches": 4, "update_epochs": 10,
                          "hidden_sizes": [256, 256]}}
    text = render_profile(profile)
    assert "8192 steps in 2 updates" in text
    assert "advantage: advantages (ppo_core.gae kernel)" in text and "60.00%" in text and "10.00ms" in text


@pytest.mark.parametrize("missing", ["torchrl", "torch"])
def test_missing_optional_libraries_are_skipped_with_a_line(monkeypatch, missing):
    real = bench.suite._have
    monkeypatch.setattr(bench.suite, "_have", lambda m: False if m in (missing, "torchrl") else real(m))
    out = io.StringIO()
    settings = bench.Settings(gae_sizes=((8, 2),), gae_dtypes=("float64",), loss_sizes=(64,),
                              loss_dtypes=("float32",), compile_dtypes=(), repeats=1, min_time=0.0)
    records = bench.run(settings=settings, stream=out)
    text = out.getvalue()
    impls = {r["impl"] for r in records}
    assert not impls & {"torchrl_loop", "torchrl_vec"}
    if missing == "torchrl":
        assert "torchrl_loop, torchrl_vec: skipped (torchrl is not installed" in text
        assert "cleanrl_torch_loop" in impls or not real("torch")
    else:
        assert "cleanrl_torch_loop, torchrl_loop, torchrl_vec: skipped (torch is not installed)" in text
        assert "clipped_surrogate, clipped_value_loss: skipped (torch is not installed)" in text
        assert impls == {"ppo_core", "sb3_numpy_loop", "copy_bound"}
