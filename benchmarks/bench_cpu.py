#!/usr/bin/env python
"""CPU benchmark of mixerc's mamba2 lowerings (forward, fp32).

Contenders, all at the same chunk size:

- ``chunked``   mixerc's chunked lowering (the SSD algorithm as batched matmuls),
- ``listing``   the Mamba-2 paper's chunked algorithm written as plain einsums (benchmarks/ssd_listing.py),
- ``recurrent`` mixerc's token loop.

Every contender's output is checked before it is timed: against a float64 ground truth at a small
length, and against the other contenders at the benchmark shape. Speeds are printed as ratios; the
rich tables also show absolute times. Results go to benchmarks/results/cpu.json.

    python benchmarks/bench_cpu.py                # ratios, matmul fraction, 3 GB memory check
    python benchmarks/bench_cpu.py --scaling      # + time vs l (results/scaling_cpu.png / .json)
    python benchmarks/bench_cpu.py --quick        # tiny shapes, a few seconds (smoke test)

How it runs: this process stays small (it never imports torch) and starts child processes of itself:
one for the memory check (so that its peak RSS is its own) and one per allocator regime for the
timings (see README: glibc's allocator page-faults fresh buffers of 32 MiB and more on every call,
which changes the ratios a lot on this VM, so both regimes are measured and reported).
See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# shapes: the benchmark shape, and a tiny one for --quick
FULL = dict(b=2, l=8192, h=8, p=64, n=64, g=1, chunk=64, repeats=5, check_l=512,
            memory_l=65536, memory_b=1, scaling=[512, 1024, 2048, 4096, 8192], recurrent_max_l=2048,
            matmul_size=1024)
QUICK = dict(b=1, l=256, h=2, p=16, n=16, g=1, chunk=32, repeats=2, check_l=128,
             memory_l=4096, memory_b=1, scaling=[128, 256, 512], recurrent_max_l=256,
             matmul_size=256)
MEMORY_LIMIT_BYTES = 3 * 10**9  # "3 GB"
TOL_FP32 = 1e-3  # relative error allowed in fp32: max |a - b| / max |b|
TOL_FP64 = 1e-10  # agreement of the float64 paths that make up the ground truth
CONTENDERS = ("chunked", "listing", "recurrent")
LABELS = {"chunked": "mixerc chunked", "listing": "einsum listing (paper)", "recurrent": "mixerc recurrent"}

# Allocator regimes the timings run under (each in a fresh child process).
#  default:  glibc as it comes. Buffers of >= 32 MiB are mmap'ed and returned on free, so every
#            forward page-faults them in again; whether smaller ones are too depends on the heap's
#            history, so numbers in this regime vary from run to run.
#  retained: glibc told to never mmap and never trim: freed memory is reused, no page faults
#            (roughly what a caching allocator such as jemalloc/tcmalloc or torch's GPU one does).
BIG = str(1 << 40)
REGIMES = {
    "default": dict(env={}, label="glibc default"),
    "retained": dict(env={"MALLOC_MMAP_THRESHOLD_": BIG, "MALLOC_TRIM_THRESHOLD_": BIG},
                     label="retained heap (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_=2^40)"),
}
MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_",
               "MALLOC_ARENA_MAX", "LD_PRELOAD")


# -- helpers (used in the child processes; torch is imported lazily) -----------------------------


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (b is the reference), computed in float64."""
    a, b = a.double(), b.double()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def make_inputs(b, l, h, p, n, g, dtype, seed=0):
    """x, B, C ~ N(0, 1); dt ~ N(0, 1) - 1 (before the module adds dt_bias and applies softplus)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(b, l, h, p, generator=gen).to(dtype),
        dt=(torch.randn(b, l, h, generator=gen) - 1).to(dtype),
        B=torch.randn(b, l, g, n, generator=gen).to(dtype),
        C=torch.randn(b, l, g, n, generator=gen).to(dtype),
    )


def build_modules(h, p, n, g, chunk):
    """(chunked, recurrent) mamba2 modules sharing the package-initialised parameters."""
    import torch

    import mixerc as mx

    spec = mx.load_spec("mamba2")
    dims = dict(h=h, p=p, n=n, g=g)
    torch.manual_seed(0)
    chunked = mx.compile(spec, dims=dims, backend="chunked", chunk_size=chunk)
    recurrent = mx.compile(spec, dims=dims, backend="recurrent")
    recurrent.load_state_dict(chunked.state_dict())
    return chunked.eval(), recurrent.eval()


def contender_fns(chunked, recurrent, chunk):
    """name -> f(inputs) -> y. The listing reads the chunked module's parameters, in the inputs' dtype."""
    from ssd_listing import mamba2_listing

    def listing(inp):
        dtype = inp["x"].dtype
        return mamba2_listing(inp["x"], inp["dt"], inp["B"], inp["C"], chunked.A_log.to(dtype),
                              chunked.dt_bias.to(dtype), chunked.D.to(dtype), chunk)

    return {
        "chunked": lambda inp: chunked(**inp),
        "listing": listing,
        "recurrent": lambda inp: recurrent(**inp),
    }


def useful_flops(b, l, h, p, n, g, chunk) -> int:
    """Matmul FLOPs of the chunked SSD algorithm per forward, 2*m*n*k per product.

    Per chunk of Q positions: C B^T per group (Q x n x Q), scores @ X per head (Q x Q x p),
    chunk state per head (p x Q x n), state -> output per head (Q x n x p). Full Q x Q blocks are
    counted (the causal half is not subtracted); elementwise work and the inter-chunk pass are not.
    """
    Q = chunk
    c = -(-l // Q)
    per_chunk = g * 2 * Q * Q * n + h * (2 * Q * Q * p + 2 * p * Q * n + 2 * Q * n * p)
    return b * c * per_chunk


def vm_hwm_bytes() -> int | None:
    """Peak RSS of this process's own address space (VmHWM), which, unlike ru_maxrss, does not
    carry over the parent's peak across fork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info(threads) -> dict:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit += "+dirty" if dirty and commit else ""
    except Exception:  # noqa: BLE001
        commit = ""
    return dict(cpu=model, logical_cpus=os.cpu_count(), threads=threads, python=platform.python_version(),
                git_commit=commit, malloc_env={k: os.environ[k] for k in MALLOC_VARS if k in os.environ})


# -- timing -------------------------------------------------------------------------------------


def time_rounds(fns: dict, repeats: int, warmup: int, on_run=None) -> dict:
    """Interleaved timing: ``warmup`` untimed rounds, then ``repeats`` rounds in each of which
    every callable runs once (the order rotates from round to round). Runs of one round are close
    in time, so per-round ratios are robust to the machine getting slower or faster meanwhile."""
    names = list(fns)
    times = {k: [] for k in names}
    for r in range(warmup + repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            fns[name]()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt)
            if on_run:
                on_run(name)
    return times


def summarize(times: dict, flops: int | None = None, matmul: dict | None = None) -> dict:
    """Medians, per-round ratios against chunked, and matmul fractions."""
    med = {k: statistics.median(v) for k, v in times.items()}
    out = dict(median_s=med, min_s={k: min(v) for k, v in times.items()}, ratios={})
    for other in ("listing", "recurrent"):
        if other in times and "chunked" in times:
            per_round = [o / c for o, c in zip(times[other], times["chunked"])]
            out["ratios"][f"chunked_vs_{other}"] = dict(median=statistics.median(per_round), min=min(per_round),
                                                        max=max(per_round), of_medians=med[other] / med["chunked"])
    if flops and matmul:
        out["useful_gflops"] = {k: flops / med[k] / 1e9 for k in CONTENDERS if k in med}
        frac = {}
        for kind, mm_flops in matmul.items():
            per_round = [(flops / c) / (mm_flops / m) for c, m in zip(times["chunked"], times[f"matmul_{kind}"])]
            frac[kind] = dict(median=statistics.median(per_round), min=min(per_round), max=max(per_round),
                              matmul_gflops=mm_flops / med[f"matmul_{kind}"] / 1e9)
        out["matmul_fraction"] = frac
    return out


# -- child: memory ------------------------------------------------------------------------------


def memory_child(args) -> int:
    """One chunked forward under no_grad; prints peak RSS as a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    import mixerc as mx

    m = mx.compile(mx.load_spec("mamba2"), dims=dict(h=args.h, p=args.p, n=args.n, g=args.g),
                   backend="chunked", chunk_size=args.chunk)
    inp = make_inputs(args.b, args.l, args.h, args.p, args.n, args.g, torch.float32, seed=3)
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm_before = vm_hwm_bytes()
    t0 = time.perf_counter()
    with torch.no_grad():
        y = m(**inp)
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps(dict(peak_rss_bytes=peak_kb * 1024, rss_before_forward_bytes=before_kb * 1024,
                          vm_hwm_bytes=vm_hwm_bytes(), vm_hwm_before_forward_bytes=hwm_before,
                          forward_s=seconds, finite=bool(torch.isfinite(y).all()),
                          shape=dict(b=args.b, l=args.l, h=args.h, p=args.p, n=args.n, g=args.g,
                                     chunk=args.chunk))))
    return 0


# -- child: one allocator regime ----------------------------------------------------------------


def regime_child(args) -> int:
    """Checks, timings, matmul fraction (and scaling) under the allocator regime this process was
    started with. Prints its tables, writes its results to ``args.child_json``."""
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    torch.set_num_threads(args.threads)
    console = Console() if sys.stdout.isatty() else Console(width=120)
    cfg = json.loads(args.child_cfg)
    chunk, label = cfg["chunk"], REGIMES[args.regime_child]["label"]
    shape_txt = shape_text(cfg)
    out = dict(regime=args.regime_child, label=label, torch=torch.__version__, threads=torch.get_num_threads(),
               opt_einsum=bool(torch.backends.opt_einsum.is_available() and torch.backends.opt_einsum.enabled),
               malloc_env={k: os.environ[k] for k in MALLOC_VARS if k in os.environ}, failed=[])
    console.rule(f"regime: {label}")

    def progress():
        return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True)

    def save():
        Path(args.child_json).write_text(json.dumps(out, indent=2))

    if cfg["timing"]:
        # 1. ground truth at a small length: chunked in float64, itself checked against the float64
        #    listing and recurrent paths; then every contender in fp32 against it
        chunked, recurrent = build_modules(cfg["h"], cfg["p"], cfg["n"], cfg["g"], chunk)
        fns = contender_fns(chunked, recurrent, chunk)
        inp32 = make_inputs(cfg["b"], cfg["check_l"], cfg["h"], cfg["p"], cfg["n"], cfg["g"], torch.float32, seed=1)
        inp64 = {k: v.double() for k, v in inp32.items()}
        gt = dict(l=cfg["check_l"], tol_fp32=TOL_FP32, tol_fp64=TOL_FP64, fp64_agreement={}, fp32_vs_truth={})
        with torch.no_grad(), console.status(f"checking outputs against the float64 ground truth, l={cfg['check_l']}"):
            truth = fns["chunked"](inp64)
            gt["truth_dtype"] = str(truth.dtype)
            for name in ("listing", "recurrent"):
                gt["fp64_agreement"][name] = rel_err(fns[name](inp64), truth)
            for name in CONTENDERS:
                gt["fp32_vs_truth"][name] = rel_err(fns[name](inp32), truth)
        gt["ok"] = (truth.dtype == torch.float64
                    and all(e < TOL_FP64 for e in gt["fp64_agreement"].values())
                    and all(e < TOL_FP32 for e in gt["fp32_vs_truth"].values()))
        out["ground_truth"] = gt
        table = Table(title=f"correctness at l={gt['l']}: max|err| / max|truth|, truth = chunked in float64")
        table.add_column("contender")
        table.add_column("float64 path vs truth", justify="right")
        table.add_column("fp32 vs truth", justify="right")
        for name in CONTENDERS:
            e64, e32 = gt["fp64_agreement"].get(name), gt["fp32_vs_truth"][name]
            table.add_row(name, "(truth)" if e64 is None else f"{e64:.1e}",
                          f"[{'green' if e32 < TOL_FP32 else 'red'}]{e32:.1e}[/]")
        console.print(table)
        if not gt["ok"]:
            out["failed"].append("ground truth")
            console.print(f"[red]FAIL: outputs differ from the float64 ground truth (fp32 tol {TOL_FP32}, "
                          f"float64 tol {TOL_FP64}, truth dtype {truth.dtype}); no timings reported[/red]")
        del truth, inp32, inp64

        # 2. outputs at the benchmark shape (the first call is also the first warmup), cross check
        inp = make_inputs(cfg["b"], cfg["l"], cfg["h"], cfg["p"], cfg["n"], cfg["g"], torch.float32, seed=0)
        with torch.no_grad(), console.status(f"outputs at {shape_txt}"):
            outputs = {name: fns[name](inp) for name in CONTENDERS}
        cross = cross_check(outputs)
        del outputs
        out["cross_check"] = cross
        console.print("cross check at the benchmark shape (max|err| / max|ref|): " + ", ".join(
            f"{k} {v:.1e}" for k, v in cross["errors"].items()) + f" (tol {TOL_FP32})")
        if not cross["ok"]:
            out["failed"].append("cross check")
            console.print("[red]FAIL: the contenders disagree at the benchmark shape; no timings reported[/red]")

        # 3. only now: timing, interleaved with the two matmul probes
        if gt["ok"] and cross["ok"]:
            flops = useful_flops(cfg["b"], cfg["l"], cfg["h"], cfg["p"], cfg["n"], cfg["g"], chunk)
            s = cfg["matmul_size"]
            gen = torch.Generator().manual_seed(1)
            sq_a, sq_b = torch.randn(s, s, generator=gen), torch.randn(s, s, generator=gen)
            nb = cfg["b"] * (cfg["l"] // chunk) * cfg["h"]
            bt_a, bt_b = torch.randn(nb, chunk, chunk, generator=gen), torch.randn(nb, chunk, cfg["p"], generator=gen)
            matmul = {"square": 2 * s**3, "batched": 2 * nb * chunk * chunk * cfg["p"]}
            calls = {name: (lambda f=fns[name]: f(inp)) for name in CONTENDERS}
            # out= buffers: the probes measure arithmetic, not the allocator (a fresh 32 MiB result
            # would be page-faulted in on every call in the glibc default regime)
            sq_out, bt_out = torch.matmul(sq_a, sq_b), torch.matmul(bt_a, bt_b)
            calls["matmul_square"] = lambda: torch.matmul(sq_a, sq_b, out=sq_out)
            calls["matmul_batched"] = lambda: torch.matmul(bt_a, bt_b, out=bt_out)
            warmup = 1
            with torch.no_grad(), progress() as prog:
                tasks = {k: prog.add_task(f"timing {k}", total=warmup + cfg["repeats"]) for k in calls}
                times = time_rounds(calls, cfg["repeats"], warmup, on_run=lambda k: prog.advance(tasks[k]))
            summ = summarize(times, flops, matmul)
            out.update(times_s=times, useful_flops=flops, matmul_flops=matmul,
                       matmul_shapes=dict(square=[s, s, s], batched=[nb, chunk, chunk, cfg["p"]]), **summ)
            print_timing_table(console, cfg, out)
            save()

            rl = summ["ratios"]["chunked_vs_listing"]["median"]
            if cfg["profile"] or (rl < 2 and not cfg["quick"] and args.regime_child == "retained"):
                if not cfg["profile"]:
                    console.print("[yellow]chunked is less than 2x faster than the listing in this regime: "
                                  "torch.profiler of one chunked forward[/yellow]")
                path = RESULTS / f"profile_chunked_{args.regime_child}{cfg['suffix']}.txt"
                console.print(profile_chunked(fns["chunked"], inp, path))
                console.print(f"(also grouped by input shape: {path})")
                out["profile"] = str(path)
        del inp

    if cfg["scaling"]:
        out["scaling"] = run_scaling(cfg, chunk, console, progress)
        if not out["scaling"]["ok"]:
            out["failed"].append("scaling cross check")
            console.print("[red]FAIL: contenders disagree in the scaling sweep[/red]")
    save()
    return 1 if out["failed"] else 0


def shape_text(cfg) -> str:
    return (f"b={cfg['b']} l={cfg['l']} h={cfg['h']} p={cfg['p']} n={cfg['n']} g={cfg['g']} "
            f"chunk={cfg['chunk']}")


def cross_check(outputs: dict) -> dict:
    """Pairwise relative errors of the contenders' outputs (reference: the second of the pair)."""
    names = list(outputs)
    errs = {}
    for i, a in enumerate(names):
        for bname in names[i + 1:]:
            errs[f"{a} vs {bname}"] = rel_err(outputs[a], outputs[bname])
    return dict(errors=errs, tol=TOL_FP32, ok=all(e < TOL_FP32 for e in errs.values()))


def print_timing_table(console, cfg, res):
    from rich.table import Table

    med, mn = res["median_s"], res["min_s"]
    table = Table(title=f"{res['label']}: {shape_text(cfg)}, {res['threads']} threads, "
                        f"median of {cfg['repeats']} interleaved rounds")
    for col, just in [("contender", "left"), ("median ms", "right"), ("min ms", "right"),
                      ("time / chunked", "right"), ("useful GFLOP/s", "right"),
                      (f"of {cfg['matmul_size']}^2 matmul", "right"), ("of batched matmul", "right")]:
        table.add_column(col, justify=just)
    mf = res["matmul_fraction"]
    for name in CONTENDERS:
        gf = res["useful_gflops"][name]
        table.add_row(name, f"{med[name] * 1e3:.1f}", f"{mn[name] * 1e3:.1f}", f"{med[name] / med['chunked']:.2f}",
                      f"{gf:.1f}", f"{gf / mf['square']['matmul_gflops']:.1%}",
                      f"{gf / mf['batched']['matmul_gflops']:.1%}")
    console.print(table)
    sq, bt = res["matmul_shapes"]["square"], res["matmul_shapes"]["batched"]
    console.print(f"torch.matmul fp32: {mf['square']['matmul_gflops']:.1f} GFLOP/s "
                  f"({sq[0]}x{sq[1]} @ {sq[1]}x{sq[2]}), {mf['batched']['matmul_gflops']:.1f} GFLOP/s "
                  f"(batched {bt[0]} x {bt[1]}x{bt[2]} @ {bt[2]}x{bt[3]}); "
                  f"chunked's useful work: {res['useful_flops'] / 1e9:.3g} GFLOP per forward")


def profile_chunked(fn, inp, path) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        fn(inp)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            fn(inp)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n\ngrouped by input shape:\n" + by_shape)
    return table


def run_scaling(cfg, chunk, console, progress) -> dict:
    import torch
    from rich.table import Table

    chunked, recurrent = build_modules(cfg["h"], cfg["p"], cfg["n"], cfg["g"], chunk)
    fns = contender_fns(chunked, recurrent, chunk)
    rows, ok = [], True
    with torch.no_grad(), progress() as prog:
        for l in cfg["scaling_l"]:
            names = [k for k in CONTENDERS if k != "recurrent" or l <= cfg["recurrent_max_l"]]
            inp = make_inputs(cfg["b"], l, cfg["h"], cfg["p"], cfg["n"], cfg["g"], torch.float32, seed=2)
            check = cross_check({k: fns[k](inp) for k in names})
            ok &= check["ok"]
            row = dict(l=l, check=check)
            if check["ok"]:
                task = prog.add_task(f"scaling l={l}", total=(cfg["repeats"] + 1) * len(names))
                times = time_rounds({k: (lambda f=fns[k]: f(inp)) for k in names}, cfg["repeats"], 1,
                                    on_run=lambda _k: prog.advance(task))
                row.update(times_s=times, **summarize(times))
            rows.append(row)
    table = Table(title=f"scaling, {REGIMES[cfg['regime']]['label']}: median forward ms")
    table.add_column("l", justify="right")
    for k in CONTENDERS:
        table.add_column(k, justify="right")
    table.add_column("chunked vs listing", justify="right")
    for r in rows:
        med = r.get("median_s", {})
        rl = r.get("ratios", {}).get("chunked_vs_listing")
        table.add_row(str(r["l"]), *[f"{med[k] * 1e3:.1f}" if k in med else "-" for k in CONTENDERS],
                      f"{rl['median']:.2f}x" if rl else "-")
    console.print(table)
    return dict(rows=rows, ok=ok)


# -- parent ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="CPU benchmark of mixerc's mamba2 lowerings (forward, fp32).")
    for dim, desc in [("l", "sequence length"), ("b", "batch"), ("h", "heads"), ("p", "head dim"),
                      ("n", "state size"), ("g", "B/C groups (the listing needs g == 1 or g == h)")]:
        ap.add_argument(f"--{dim}", type=int, default=None,
                        help=f"{desc} (default {FULL[dim]}; --quick: {QUICK[dim]})")
    ap.add_argument("--chunk", type=int, default=None, help="chunk size of chunked and of the listing (default 64)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed rounds; medians are reported (default 5; --quick: 2)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--scaling", action="store_true",
                    help="also time l in {512..8192} (recurrent up to 2048): results/scaling_cpu.png and .json")
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                    help="peak-RSS check of chunked at l=65536, b=1 in a child process (default: on)")
    ap.add_argument("--memory-l", type=int, default=None, help="length of the memory check (default 65536)")
    ap.add_argument("--timing", action=argparse.BooleanOptionalAction, default=True,
                    help="checks, timings and matmul fraction at the benchmark shape (default: on)")
    ap.add_argument("--regimes", default="default,retained",
                    help="allocator regimes to time under, comma separated (default: default,retained)")
    ap.add_argument("--profile", action="store_true",
                    help="print a torch.profiler table of one chunked forward (automatic in the retained "
                         "regime when chunked is < 2x faster than the listing)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes: the whole script runs in seconds (smoke test)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON results (default results/cpu.json; --quick: results/cpu_quick.json)")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--regime-child", choices=list(REGIMES), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-cfg", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    base = QUICK if args.quick else FULL
    for key in ("l", "b", "h", "p", "n", "g", "chunk", "repeats"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    if args.memory_l is None:
        args.memory_l = base["memory_l"]
    return args


def child_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_VARS or k == "LD_PRELOAD"}
    env.update(extra)
    return env


def run_memory_check(args, console) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", "--l", str(args.memory_l),
           "--b", "1", "--h", str(args.h), "--p", str(args.p), "--n", str(args.n), "--g", str(args.g),
           "--chunk", str(args.chunk), "--threads", str(args.threads)]
    parent_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with console.status(f"memory check: chunked forward at b=1 l={args.memory_l} in a child process"):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=child_env({}))
    if proc.returncode != 0:
        return dict(ok=False, error=(proc.stderr or proc.stdout)[-3000:], cmd=" ".join(cmd))
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(limit_bytes=MEMORY_LIMIT_BYTES, parent_peak_rss_at_spawn_bytes=parent_kb * 1024,
               ok=res["peak_rss_bytes"] < MEMORY_LIMIT_BYTES and res["finite"])
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    if args.regime_child:
        return regime_child(args)

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=120)
    base = QUICK if args.quick else FULL
    suffix = "_quick" if args.quick else ""
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    bad = [r for r in regimes if r not in REGIMES]
    if bad or not regimes:
        console.print(f"[red]--regimes: unknown {bad}; choose from {', '.join(REGIMES)}[/red]")
        return 2
    cfg = dict(b=args.b, l=args.l, h=args.h, p=args.p, n=args.n, g=args.g, chunk=args.chunk,
               repeats=args.repeats, check_l=min(base["check_l"], args.l), matmul_size=base["matmul_size"],
               scaling_l=base["scaling"], recurrent_max_l=base["recurrent_max_l"], quick=args.quick,
               profile=args.profile, timing=args.timing, scaling=args.scaling, suffix=suffix)
    for name in ("l", "check_l"):
        if args.timing and cfg[name] % args.chunk:
            console.print(f"[red]{name}={cfg[name]} is not a multiple of --chunk {args.chunk}; "
                          "the listing needs it[/red]")
            return 2
    if args.g not in (1, args.h):
        console.print(f"[red]--g {args.g}: the listing broadcasts B/C with einsum, so g must be 1 or h[/red]")
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = args.out or RESULTS / f"cpu{suffix}.json"
    info = machine_info(args.threads)
    console.rule(f"mixerc mamba2 forward, fp32, {args.threads} threads: {shape_text(cfg)}")
    console.print(f"cpu: {info['cpu']} ({info['logical_cpus']} logical), python {info['python']}, "
                  f"mixerc git {info['git_commit'] or '?'}")
    results = dict(config=cfg, memory_limit_bytes=MEMORY_LIMIT_BYTES, machine=info, regimes={})
    failed = []

    # memory first: this process is still small, and a child's ru_maxrss starts from the parent's
    # peak at spawn time (Linux keeps it across fork + exec)
    if args.memory:
        console.rule("memory")
        mem = run_memory_check(args, console)
        results["memory"] = mem
        if "error" in mem:
            failed.append("memory (child failed)")
            console.print(f"[red]memory check: the child process failed:[/red]\n{mem['error']}")
        else:
            verdict = "[green]PASS[/green]" if mem["ok"] else "[red]FAIL[/red]"
            console.print(f"chunked forward under no_grad, b=1 l={args.memory_l} h={args.h} p={args.p} n={args.n} "
                          f"g={args.g} chunk={args.chunk}: peak RSS {mem['peak_rss_bytes'] / 1e6:.0f} MB (ru_maxrss; "
                          f"{mem['rss_before_forward_bytes'] / 1e6:.0f} MB before the forward; own VmHWM "
                          f"{(mem['vm_hwm_bytes'] or 0) / 1e6:.0f} MB), "
                          f"limit {MEMORY_LIMIT_BYTES / 1e6:.0f} MB: {verdict}")
            if not mem["ok"]:
                failed.append("memory")

    if args.timing or args.scaling:
        for regime in regimes:
            child_json = RESULTS / f".child_{regime}{suffix}.json"
            child_json.unlink(missing_ok=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--regime-child", regime,
                   "--child-cfg", json.dumps(dict(cfg, regime=regime)), "--child-json", str(child_json),
                   "--threads", str(args.threads)]
            sys.stdout.flush()
            proc = subprocess.run(cmd, env=child_env(REGIMES[regime]["env"]))
            res = json.loads(child_json.read_text()) if child_json.exists() else None
            child_json.unlink(missing_ok=True)
            if res is None:
                failed.append(f"{regime}: child crashed (exit {proc.returncode})")
                continue
            results["regimes"][regime] = res
            failed += [f"{regime}: {f}" for f in res["failed"]]
            if proc.returncode != 0 and not res["failed"]:
                failed.append(f"{regime}: child exit {proc.returncode}")

    if args.timing and any("ratios" in r for r in results["regimes"].values()):
        console.rule(escape("headline (ratios: median over interleaved rounds, [min-max])"))
        table = Table(title=f"mamba2 forward fp32, {shape_text(cfg)}, {args.threads} threads")
        for col in ("allocator regime", "chunked ms", "listing ms", "recurrent ms", "chunked vs listing",
                    "chunked vs recurrent", f"of {cfg['matmul_size']}^2 matmul", "of batched matmul"):
            table.add_column(col, justify="left" if col == "allocator regime" else "right")
        for regime, r in results["regimes"].items():
            if "ratios" not in r:
                continue
            med, rl, rr, mf = r["median_s"], r["ratios"]["chunked_vs_listing"], r["ratios"]["chunked_vs_recurrent"], \
                r["matmul_fraction"]
            table.add_row(regime, *[f"{med[k] * 1e3:.1f}" for k in CONTENDERS],
                          escape(f"{rl['median']:.2f}x [{rl['min']:.2f}-{rl['max']:.2f}]"),
                          escape(f"{rr['median']:.1f}x [{rr['min']:.1f}-{rr['max']:.1f}]"),
                          f"{mf['square']['median']:.1%}", f"{mf['batched']['median']:.1%}")
        console.print(table)
        for regime, r in results["regimes"].items():
            if "ratios" not in r:
                continue
            rl, rr, mf = r["ratios"]["chunked_vs_listing"], r["ratios"]["chunked_vs_recurrent"], r["matmul_fraction"]
            console.print(f"[bold]{escape('[' + REGIMES[regime]['label'] + ']')}[/bold]")
            console.print(f"  {ratio_line('chunked', 'the einsum listing', rl['median'])}")
            console.print(f"  {ratio_line('chunked', 'recurrent', rr['median'])}")
            console.print(f"  chunked reaches {mf['square']['median']:.1%} of this CPU's fp32 matmul throughput "
                          f"({cfg['matmul_size']}^2 torch.matmul, {mf['square']['matmul_gflops']:.0f} GFLOP/s) and "
                          f"{mf['batched']['median']:.1%} of batched {cfg['chunk']}x{cfg['chunk']} matmuls "
                          f"({mf['batched']['matmul_gflops']:.0f} GFLOP/s)")
        results["headline"] = {regime: dict(chunked_vs_listing=r["ratios"]["chunked_vs_listing"]["median"],
                                            chunked_vs_recurrent=r["ratios"]["chunked_vs_recurrent"]["median"],
                                            matmul_fraction_square=r["matmul_fraction"]["square"]["median"],
                                            matmul_fraction_batched=r["matmul_fraction"]["batched"]["median"])
                               for regime, r in results["regimes"].items() if "ratios" in r}

    if args.scaling:
        scal = {k: r["scaling"] for k, r in results["regimes"].items() if r.get("scaling")}
        if scal:
            js, png = RESULTS / f"scaling_cpu{suffix}.json", RESULTS / f"scaling_cpu{suffix}.png"
            js.write_text(json.dumps(dict(shape={k: cfg[k] for k in ("b", "h", "p", "n", "g", "chunk")},
                                          threads=args.threads, regimes=scal), indent=2))
            plot_scaling(scal, cfg, args.threads, png)
            results["scaling"] = dict(json=str(js), png=str(png))
            console.print(f"wrote {js} and {png}")

    if args.memory and "memory" in results and "error" not in results["memory"]:
        mem = results["memory"]
        console.print(f"[bold]memory: chunked at b=1 l={args.memory_l}: peak RSS {mem['peak_rss_bytes'] / 1e6:.0f} MB "
                      f"of {MEMORY_LIMIT_BYTES / 1e6:.0f} MB: {'PASS' if mem['ok'] else 'FAIL'}[/bold]")
    results["failed"] = failed
    results["ok"] = not failed
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {out_path}")
    if failed:
        console.print(f"[red]FAILED: {'; '.join(failed)}[/red]")
        return 1
    return 0


def ratio_line(fast, slow, ratio) -> str:
    if ratio >= 1:
        return f"{fast} is {ratio:.2f}x faster than {slow}"
    return f"{fast} is {1 / ratio:.2f}x SLOWER than {slow}"


def plot_scaling(scal: dict, cfg, threads, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scal), figsize=(6.2 * len(scal), 4.8), sharey=True, squeeze=False)
    styles = {"chunked": "o-", "listing": "s--", "recurrent": "^:"}
    for ax, (regime, sc) in zip(axes[0], scal.items()):
        for k in CONTENDERS:
            pts = [(r["l"], r["median_s"][k] * 1e3) for r in sc["rows"] if k in r.get("median_s", {})]
            if pts:
                ax.plot(*zip(*pts), styles[k], label=LABELS[k])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length l")
        ax.set_title(REGIMES[regime]["label"].split(" (")[0], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("forward time, median (ms)")
    fig.suptitle(f"mamba2 forward, fp32, CPU, {threads} threads: b={cfg['b']} h={cfg['h']} p={cfg['p']} "
                 f"n={cfg['n']} g={cfg['g']} chunk={cfg['chunk']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
