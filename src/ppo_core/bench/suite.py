"""The measurements behind ``ppo-core bench``: kernels against baselines, in one run.

Every cell is the median over ``repeats`` samples of the time of one call; a sample
calls the function in a loop for at least ``min_time`` seconds and divides. The
implementations of one row are sampled in turns (ppo_core, then each baseline, then
again), so a change in the machine's load hits them alike. Each implementation's first
call is a warm-up, excluded (``torch.compile`` compiles there). Each baseline's result
is checked against ppo_core's before it is timed, so a table never compares different
computations.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

import numpy as np

import ppo_core

from . import baselines as B
from .table import format_seconds, render

__all__ = ["Settings", "QUICK", "FULL", "run", "measure", "measure_all", "environment"]

GAE_IMPLS = ("ppo_core", "sb3_numpy_loop", "cleanrl_torch_loop", "torchrl_loop", "torchrl_vec", "copy_bound")
LOSS_IMPLS = ("ppo_core", "cleanrl_torch_eager", "cleanrl_torch_compile")
GAMMA, LAM, CLIP = 0.99, 0.95, 0.2


@dataclass(frozen=True)
class Settings:
    """What one run measures and how long it samples.

    gae_sizes: (T, N) rollout shapes; loss_sizes: minibatch sizes n.
    repeats: samples per cell (the median is reported); min_time: seconds per sample.
    cell_budget: seconds per cell after which a slow call gets fewer samples (at
    least one), so one slow baseline cannot take the whole run.
    compile_dtypes: dtypes for which ``torch.compile`` of CleanRL's losses is timed.
    """

    gae_sizes: Tuple[Tuple[int, int], ...] = ((128, 1), (2048, 1), (2048, 16), (128, 64), (1000, 4096))
    gae_dtypes: Tuple[str, ...] = ("float32", "float64")
    loss_sizes: Tuple[int, ...] = (64, 256, 2048, 1_000_000)
    loss_dtypes: Tuple[str, ...] = ("float32", "float64")
    compile_dtypes: Tuple[str, ...] = ("float32", "float64")
    repeats: int = 9
    min_time: float = 0.05
    cell_budget: float = 6.0
    torch_threads: int = 1
    e2e_steps: int = 8192
    seed: int = 0


#: ``ppo-core bench``: every size, both dtypes, 9 samples of >= 50 ms.
FULL = Settings()
#: ``ppo-core bench --quick``: the same sizes, 5 samples of >= 20 ms, the losses in
#: float32 only, and a tighter budget for the slowest baseline cells.
QUICK = Settings(repeats=5, min_time=0.02, cell_budget=3.0, loss_dtypes=("float32",),
                 compile_dtypes=("float32",))


def _warm_up(fn: Callable[[], Any], repeats: int, budget: float) -> Tuple[int, float]:
    """Call ``fn`` once (excluded from the timing); return the samples to take within
    ``budget`` seconds (at least one) and the warm-up's seconds."""
    t0 = time.perf_counter()
    fn()
    warmup = time.perf_counter() - t0
    if warmup * repeats > budget:
        repeats = max(1, int(budget / max(warmup, 1e-9)))
    return repeats, warmup


def _sample(fn: Callable[[], Any], min_time: float) -> float:
    """Seconds per call of ``fn``, over as many calls as take ``min_time`` (at most 100 000)."""
    calls = 0
    t0 = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time or calls >= 100_000:
            return elapsed / calls


def measure(fn: Callable[[], Any], repeats: int, min_time: float,
            budget: float = float("inf")) -> Tuple[float, int, float]:
    """Median seconds per call of ``fn`` over ``repeats`` samples, warm-up excluded.

    Returns ``(median, samples, warmup_seconds)``. When the warm-up call shows that
    ``repeats`` samples would exceed ``budget`` seconds, fewer samples are taken (at least
    one).
    """
    repeats, warmup = _warm_up(fn, repeats, budget)
    return statistics.median(_sample(fn, min_time) for _ in range(repeats)), repeats, warmup


def measure_all(fns: Dict[str, Callable[[], Any]], repeats: int, min_time: float,
                budget: float = float("inf")) -> Dict[str, Tuple[float, int]]:
    """:func:`measure` for several functions, their samples taken in turns (one sample of
    each, then the next round), so that a change in the machine's load while a cell is
    measured affects every implementation alike. Returns ``{name: (median, samples)}``."""
    wanted = {name: _warm_up(fn, repeats, budget)[0] for name, fn in fns.items()}
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for round_ in range(max(wanted.values(), default=0)):
        for name, fn in fns.items():
            if round_ < wanted[name]:
                samples[name].append(_sample(fn, min_time))
    return {name: (statistics.median(v), len(v)) for name, v in samples.items()}


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _version(module: str) -> Optional[str]:
    if not _have(module):
        return None
    return getattr(__import__(module), "__version__", "?")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(settings: Settings) -> Dict[str, Any]:
    """Date, machine, core count, load and library versions, for the header and the JSON."""
    env: Dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "ppo_core": ppo_core.__version__,
        "numpy": np.__version__,
        "torch": _version("torch"),
        "torchrl": _version("torchrl"),
        "torch_threads": settings.torch_threads,
        "repeats": settings.repeats,
        "min_time": settings.min_time,
    }
    if hasattr(os, "getloadavg"):
        env["load_average_1min"] = round(os.getloadavg()[0], 2)
    return env


def _header(env: Dict[str, Any]) -> str:
    libs = ", ".join(f"{k} {env[k] or 'not installed'}" for k in ("ppo_core", "numpy", "torch", "torchrl"))
    load = env.get("load_average_1min")
    lines = [
        f"ppo-core bench, {env['date']}",
        f"{env['cores']} cores ({env['cpu']}), load average {load} at start; Python {env['python']}; {libs}",
        f"torch threads: {env['torch_threads']} (the kernels are single-threaded; the MetaDrive preset trains "
        f"with 1)",
        f"cells: median of {env['repeats']} samples of >= {env['min_time'] * 1e3:.0f} ms each, taken in turns "
        f"across a row's implementations, warm-up call excluded; x = baseline time / ppo_core time "
        f"(> 1: ppo_core is faster)",
    ]
    if load is not None and env["cores"] and load > 0.5 * env["cores"]:
        lines.append("note: the machine was busy when the run started; absolute times are inflated, "
                     "read the ratios")
    return "\n".join(lines)


def _check(name: str, actual: Any, expected: Any, dtype: str, loose: bool = False) -> None:
    # float32: the loops round each step in a different order from the kernel, so they
    # agree to ~1e-5 of the values' magnitude over thousands of steps; float64 agrees to
    # ~1e-12. `loose` is for TorchRL, which multiplies by its masks as float32 tensors
    # (gamma * (~terminated).int() is float32 even for float64 values: ~1e-7 relative
    # error) and whose vectorized form drops the terms below 1e-7 of the sum.
    tol = 1e-3 if dtype == "float32" or loose else 1e-9
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                               rtol=tol, atol=tol, err_msg=f"{name} disagrees with ppo_core")


class _Run:
    def __init__(self, settings: Settings, stream: TextIO) -> None:
        self.s = settings
        self.out = stream
        self.records: List[Dict[str, Any]] = []
        self.notes: List[str] = []  # printed under the current table

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def time_cells(self, fns: Dict[str, Callable[[], Any]]) -> Tuple[Dict[str, Optional[float]], Dict[str, int]]:
        res = measure_all(fns, self.s.repeats, self.s.min_time, self.s.cell_budget)
        return {k: v[0] for k, v in res.items()}, {k: v[1] for k, v in res.items()}

    def add(self, kernel: str, dtype: str, size_key: str, size: Any, seconds: Dict[str, Optional[float]],
            samples: Dict[str, int]) -> None:
        ref = seconds["ppo_core"]
        for impl, t in seconds.items():
            if t is None:
                continue
            self.records.append({"kernel": kernel, "impl": impl, "dtype": dtype, size_key: size,
                                 "seconds": t, "speedup": t / ref if ref else None,
                                 "samples": samples[impl]})

    # -- GAE --------------------------------------------------------------------------

    def gae(self) -> None:
        have_torch, have_torchrl = _have("torch"), _have("torchrl")
        impls = [i for i in GAE_IMPLS if (have_torch or "torch" not in i) and (have_torchrl or "torchrl" not in i)]
        rows = []
        for T, N in self.s.gae_sizes:
            for dtype in self.s.gae_dtypes:
                seconds, samples = self._gae_cell(T, N, dtype, impls)
                rows.append({"labels": [dtype, f"({T}, {N})"], "seconds": seconds})
                self.add("gae", dtype, "shape", [T, N], seconds, samples)
        self.say(render("gae: advantages and returns of a (T, N) rollout", ["dtype", "(T, N)"], rows, impls))
        self.say("ppo_core = ppo_core.gae on NumPy arrays; each baseline takes its library's storage, "
                 "prepared before timing (SB3, CleanRL: float done masks and rewards with the truncation "
                 "bootstrap folded in; torchrl: (N, T, 1) tensors)")
        for note in self.notes:
            self.say(note)
        self.notes.clear()
        if not have_torch:
            self.say("cleanrl_torch_loop, torchrl_loop, torchrl_vec: skipped (torch is not installed)")
        elif not have_torchrl:
            self.say("torchrl_loop, torchrl_vec: skipped (torchrl is not installed; pip install torchrl)")
        self.say()

    def _gae_cell(self, T: int, N: int, dtype: str, impls: Sequence[str]):
        rng = np.random.default_rng(self.s.seed)
        shape = (T, N)
        r, v, nv = (rng.normal(size=shape).astype(dtype) for _ in range(3))
        term = rng.random(shape) < 0.01
        trunc = rng.random(shape) < 0.01
        done = term | trunc
        expected = ppo_core.gae(r, v, nv, term, trunc, gamma=GAMMA, lam=LAM)
        calls: Dict[str, Callable[[], Any]] = {
            "ppo_core": lambda: ppo_core.gae(r, v, nv, term, trunc, gamma=GAMMA, lam=LAM),
            "copy_bound": lambda: B.copy_bound(r, v, nv, term, trunc),
        }
        checks: Dict[str, Callable[[], Any]] = {}
        r_folded, f_done = B.fold_truncation(r, nv, term, trunc, GAMMA), done.astype(dtype)
        calls["sb3_numpy_loop"] = lambda: B.sb3_numpy_loop(r_folded, v, nv, f_done, GAMMA, LAM)
        checks["sb3_numpy_loop"] = lambda: calls["sb3_numpy_loop"]()
        if "cleanrl_torch_loop" in impls:
            import torch

            tr, tv, tnv, tdone = (torch.from_numpy(x) for x in (r_folded, v, nv, f_done))
            calls["cleanrl_torch_loop"] = lambda: B.cleanrl_torch_loop(tr, tv, tnv, tdone, GAMMA, LAM)
            checks["cleanrl_torch_loop"] = lambda: [x.numpy() for x in calls["cleanrl_torch_loop"]()]
        if "torchrl_loop" in impls:
            import torch

            def batch_major(x: np.ndarray) -> Any:  # TorchRL's [batch, time, feature]
                return torch.from_numpy(np.ascontiguousarray(x.T)).unsqueeze(-1)

            rl = [batch_major(x) for x in (r, v, nv, term, done)]
            for name, fn in (("torchrl_loop", B.torchrl_loop), ("torchrl_vec", B.torchrl_vec)):
                def call(fn: Callable[..., Any] = fn) -> Any:
                    return fn(*rl, GAMMA, LAM)

                def check(name: str = name) -> Any:
                    return [x.squeeze(-1).numpy().T for x in calls[name]()]

                calls[name] = call
                checks[name] = check
        failed = []
        for impl in impls:
            if impl in checks:
                try:
                    adv, ret = checks[impl]()
                except (RuntimeError, MemoryError) as e:  # e.g. torchrl_vec's (T, N)-sized conv buffers
                    failed.append(impl)
                    first_line = str(e).splitlines()[0][:160] if str(e) else ""
                    self.notes.append(f"{impl} at {dtype} ({T}, {N}): failed, not timed ({type(e).__name__}: "
                                      f"{first_line})")
                    continue
                _check(impl, adv, expected[0], dtype, loose=impl.startswith("torchrl"))
                _check(impl, ret, expected[1], dtype, loose=impl.startswith("torchrl"))
        seconds, samples = self.time_cells({impl: calls[impl] for impl in impls if impl not in failed})
        for impl in failed:
            seconds[impl] = None
        return seconds, samples

    # -- losses -------------------------------------------------------------------------

    def losses(self) -> None:
        if not _have("torch"):
            self.say("clipped_surrogate, clipped_value_loss: skipped (torch is not installed)\n")
            return
        import torch

        from ppo_core import torch as pt

        compiled: Dict[str, Any] = {}
        compile_notes: List[str] = []
        for kernel, title in (("clipped_surrogate", "clipped_surrogate: loss, clip fraction and approx KL, "
                                                    "forward + backward, minibatch of n"),
                              ("clipped_value_loss", "clipped_value_loss: clipped value loss, forward + "
                                                     "backward, minibatch of n")):
            rows = []
            for dtype in self.s.loss_dtypes:
                for n in self.s.loss_sizes:
                    seconds, samples = self._loss_cell(torch, pt, kernel, n, dtype, compiled, compile_notes)
                    rows.append({"labels": [dtype, str(n)], "seconds": seconds})
                    self.add(kernel, dtype, "n", n, seconds, samples)
            self.say(render(title, ["dtype", "n"], rows, LOSS_IMPLS))
            if kernel == "clipped_surrogate":
                self.say("ppo_core = ppo_core.torch.clipped_surrogate_loss(...).loss.backward(); cleanrl_torch_eager "
                         "= CleanRL's expression with its approx_kl and clipfrac (.item()), then backward")
            else:
                self.say("ppo_core = ppo_core.torch.clipped_value_loss(..., clip_coef=0.2).loss.backward(); "
                         "cleanrl_torch_eager = CleanRL's clip_vloss expression, then backward")
            for note in compile_notes:
                self.say(note)
            compile_notes.clear()
            self.say()

    def _loss_cell(self, torch: Any, pt: Any, kernel: str, n: int, dtype: str, compiled: Dict[str, Any],
                   notes: List[str]):
        tdtype = getattr(torch, dtype)
        g = torch.Generator().manual_seed(self.s.seed)
        old = torch.randn(n, generator=g, dtype=tdtype)
        third = torch.randn(n, generator=g, dtype=tdtype)  # advantages / returns
        new = (old + 0.3 * torch.randn(n, generator=g, dtype=tdtype)).requires_grad_()

        surrogate = kernel == "clipped_surrogate"
        ours = pt.clipped_surrogate_loss if surrogate else pt.clipped_value_loss
        expr = B.cleanrl_surrogate if surrogate else B.cleanrl_value_loss

        def core() -> Any:
            new.grad = None
            res = ours(new, old, third, clip_coef=CLIP)
            res.loss.backward()
            return res.loss

        def baseline(fn: Callable[..., Any]) -> Callable[[], Any]:
            def call() -> float:
                new.grad = None
                out = fn(new, old, third, CLIP)
                if surrogate:
                    out, approx_kl, clipfrac = out
                    approx_kl.item(), clipfrac.item()  # CleanRL logs both every minibatch
                out.backward()
                return out
            return call

        def checked(fn: Callable[[], Any]) -> None:
            loss = float(fn().detach())
            grad = new.grad.clone()
            ref_loss = float(core().detach())
            _check(kernel, loss, ref_loss, dtype)
            # Gradients are ~1/n: compare them scaled to O(1).
            _check(f"{kernel} gradient", grad.numpy() * n, new.grad.numpy() * n, dtype)

        eager = baseline(expr)
        checked(eager)
        fns: Dict[str, Callable[[], Any]] = {"ppo_core": core, "cleanrl_torch_eager": eager}
        key = f"{kernel}:{dtype}"
        if dtype in self.s.compile_dtypes and compiled.get(key, True) is not None:
            t0 = time.perf_counter()
            try:
                if key not in compiled:
                    compiled[key] = torch.compile(expr, dynamic=True)
                compiled_call = baseline(compiled[key])
                checked(compiled_call)  # the first call per kernel and dtype compiles
            except Exception as e:  # noqa: BLE001 - any compiler failure means "does not work here"
                compiled[key] = None
                first_line = str(e).splitlines()[0][:120] if str(e) else ""
                notes.append(f"cleanrl_torch_compile {dtype}: skipped, torch.compile failed here "
                             f"({type(e).__name__}: {first_line})")
            else:
                first = time.perf_counter() - t0
                if first > 1.0:
                    notes.append(f"cleanrl_torch_compile {dtype}: torch.compile(expr, dynamic=True) compiled "
                                 f"in {format_seconds(first)} at n={n} (excluded from the times)")
                fns["cleanrl_torch_compile"] = compiled_call
        seconds, samples = self.time_cells(fns)
        seconds.setdefault("cleanrl_torch_compile", None)
        return seconds, samples

    # -- end to end --------------------------------------------------------------------

    def e2e(self) -> None:
        missing = [m for m in ("torch", "gymnasium", "metadrive") if not _have(m)]
        if missing:
            self.say(f"e2e: skipped ({', '.join(missing)} not installed)\n")
            return
        from . import e2e

        self.say(f"e2e: a {self.s.e2e_steps}-step MetaDrive training run (the preset of `ppo-core train`) ...")
        profile = e2e.profile_metadrive(self.s.e2e_steps, seed=self.s.seed)
        self.say(e2e.render_profile(profile))
        self.say()
        for part, secs in profile["seconds"].items():
            self.records.append({"kernel": "e2e_metadrive", "impl": part, "dtype": "float32",
                                 "n": profile["steps"], "seconds": secs, "speedup": None,
                                 "share": profile["shares"][part]})


def run(*, quick: bool = False, e2e: bool = False, json_path: Optional[str] = None,
        stream: Optional[TextIO] = None, settings: Optional[Settings] = None,
        kernels: Sequence[str] = ("gae", "losses")) -> List[Dict[str, Any]]:
    """Run the benchmark, print its tables to ``stream`` (stdout) and return the records.

    ``settings`` overrides the preset that ``quick`` picks (tests pass tiny sizes).
    ``json_path``: also write the records there, a JSON list; each record has ``kernel, impl, dtype, shape`` (GAE, ``[T, N]``) or ``n`` (losses, e2e),
    ``seconds`` (median per call) and ``speedup`` (that impl's time / ppo_core's).
    """
    s = settings or (QUICK if quick else FULL)
    out = stream or sys.stdout
    bench = _Run(s, out)
    env = environment(s)
    bench.say(_header(env))
    bench.say()
    t_start = time.perf_counter()
    threads = None
    if _have("torch"):
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(s.torch_threads)
    try:
        if "gae" in kernels:
            bench.gae()
        if "losses" in kernels:
            bench.losses()
        if e2e:
            bench.e2e()
    finally:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
    env["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    bench.say(f"total {env['wall_seconds']:.0f} s")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(bench.records, f, indent=1)
        bench.say(f"wrote {len(bench.records)} records to {json_path}")
    return bench.records
