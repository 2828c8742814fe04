#!/usr/bin/env python
"""CPU benchmark of mixerc's Toeplitz lowerings (fp32, side by side in one process).

1. ``s4d``: the ``fft`` lowering against the dense ``reference`` lowering (M materialised, one
   matvec per channel), forward and forward+backward, at l = 16384. ``b=1, h=1, n2=32`` and the
   kernel as long as the sequence (``k = l``): the dense matrix is h·l² fp32 = 1 GiB per channel,
   and its backward needs about three such buffers, so one channel keeps it within a few GB.
2. A scaling sweep over l (the same shape): dense up to 16384, fft up to 65536.
3. ``longconv`` with short kernels (K = 4, 16, 64; ``b=1, h=64, l=16384``): ``direct`` (a depthwise
   conv1d, O(l·K)) against ``fft``.

Every contender's output is checked against the others (and, at a small length, against the dense
lowering in float64) before it is timed. Ratios are printed; results go to
``benchmarks/results/toeplitz.json`` and the sweep's plot to ``benchmarks/results/toeplitz_scaling.png``.

    python benchmarks/bench_toeplitz.py            # the full run (a few minutes on 2 cores)
    python benchmarks/bench_toeplitz.py --quick    # tiny shapes, seconds (smoke test)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import mixerc as mx

RESULTS = Path(__file__).resolve().parent / "results"
FULL = dict(l=16384, b=1, h=1, n2=32, repeats=5, dense_ls=[1024, 2048, 4096, 8192, 16384],
            fft_ls=[1024, 2048, 4096, 8192, 16384, 32768, 65536], short_h=64, short_ks=[4, 16, 64])
QUICK = dict(l=512, b=1, h=1, n2=8, repeats=1, dense_ls=[128, 256], fft_ls=[128, 256, 512],
             short_h=4, short_ks=[4, 16])
TOL_FP32 = 1e-3  # max |a - b| / max |b| between contenders in fp32
TOL_FP64 = 1e-10


def rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def time_rounds(fns: dict, repeats: int) -> dict:
    """Median seconds of every function, run in interleaved rounds (A B A B ...) so that a burst
    of load on this shared machine hits every contender alike."""
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def s4d_mixers(cfg, l, lowerings, dtype=torch.float32):
    dims = dict(h=cfg["h"], n2=cfg["n2"], k=l)
    base = mx.compile("s4d", dims=dims, backend=lowerings[0], dtype=dtype)
    out = {lowerings[0]: base}
    for low in lowerings[1:]:
        m = mx.compile("s4d", dims=dims, backend=low, dtype=dtype)
        m.load_state_dict(base.state_dict())
        out[low] = m
    return out


def fwd(m, x):
    def run():
        with torch.no_grad():
            return m(x=x)
    return run


def fwd_bwd(m, x):
    def run():
        xx = x.detach().requires_grad_(True)
        m.zero_grad(set_to_none=True)
        m(x=xx).square().sum().backward()
    return run


def check_small(cfg):
    """fp64 agreement of fft / direct with the dense lowering (the oracle) at a small length."""
    g = torch.Generator().manual_seed(0)
    ms = s4d_mixers(cfg, 300, ["reference", "fft", "direct"], torch.float64)
    x = torch.randn(cfg["b"], 300, cfg["h"], generator=g, dtype=torch.float64)
    ref = ms["reference"](x=x)
    errs = {low: rel_err(ms[low](x=x), ref) for low in ("fft", "direct")}
    bad = {k: v for k, v in errs.items() if v > TOL_FP64}
    if bad:
        raise SystemExit(f"fp64 check failed: {bad}")
    return errs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes: seconds (smoke test)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "toeplitz.json")
    ap.add_argument("--plot", type=Path, default=RESULTS / "toeplitz_scaling.png")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console()
    res = {"config": cfg, "machine": {"cpu": platform.processor() or platform.machine(),
                                      "threads": args.threads, "torch": torch.__version__}}
    res["fp64_check"] = check_small(cfg)
    n_sweep = len(cfg["dense_ls"]) + len(cfg["fft_ls"])
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        # 1. fft vs dense at the headline length
        task = progress.add_task(f"s4d fft vs dense, l={cfg['l']}", total=4)
        g = torch.Generator().manual_seed(1)
        l = cfg["l"]
        ms = s4d_mixers(cfg, l, ["reference", "fft"])
        x = torch.randn(cfg["b"], l, cfg["h"], generator=g)
        with torch.no_grad():
            err = rel_err(ms["fft"](x=x), ms["reference"](x=x))
        if err > TOL_FP32:
            raise SystemExit(f"fft and dense disagree at l={l}: {err:.2e}")
        head = {"check_rel_err": err}
        for what, make in (("forward", fwd), ("forward+backward", fwd_bwd)):
            t = time_rounds({low: make(ms[low], x) for low in ("reference", "fft")}, cfg["repeats"])
            for low in t:
                head[f"{low} {what} s"] = t[low]
                progress.advance(task)
        del ms
        for what in ("forward", "forward+backward"):
            head[f"fft vs dense {what}"] = head[f"reference {what} s"] / head[f"fft {what} s"]
        res["headline"] = head

        # 2. scaling sweep
        task = progress.add_task("scaling sweep", total=n_sweep)
        sweep = {"reference": {}, "fft": {}}
        for low, ls in (("reference", cfg["dense_ls"]), ("fft", cfg["fft_ls"])):
            for ll in ls:
                m = s4d_mixers(cfg, ll, [low])[low]
                xx = torch.randn(cfg["b"], ll, cfg["h"], generator=g)
                sweep[low][ll] = time_rounds({low: fwd(m, xx)}, cfg["repeats"])[low]
                progress.advance(task)
        res["scaling_forward_s"] = sweep

        # 3. direct vs fft, short kernels
        task = progress.add_task("longconv direct vs fft", total=2 * len(cfg["short_ks"]))
        short = {}
        for K in cfg["short_ks"]:
            dims = dict(h=cfg["short_h"], k=K)
            mf = mx.compile("longconv", dims=dims, backend="fft")
            md = mx.compile("longconv", dims=dims, backend="direct")
            md.load_state_dict(mf.state_dict())
            xx = torch.randn(cfg["b"], l, cfg["short_h"], generator=g)
            with torch.no_grad():
                e = rel_err(md(x=xx), mf(x=xx))
            if e > TOL_FP32:
                raise SystemExit(f"direct and fft disagree at K={K}: {e:.2e}")
            row = {"check_rel_err": e}
            for what, make in (("forward", fwd), ("forward+backward", fwd_bwd)):
                t = time_rounds({"fft": make(mf, xx), "direct": make(md, xx)}, cfg["repeats"])
                row[f"fft {what} s"], row[f"direct {what} s"] = t["fft"], t["direct"]
                row[f"direct vs fft {what}"] = row[f"fft {what} s"] / row[f"direct {what} s"]
                progress.advance(task)
            short[K] = row
        res["short_kernels"] = short

    t = Table(title=f"s4d, b={cfg['b']}, l={l}, h={cfg['h']}, n2={cfg['n2']}, k=l, fp32, {args.threads} threads")
    for c in ("", "dense (reference)", "fft", "fft vs dense"):
        t.add_column(c, justify="right")
    for what in ("forward", "forward+backward"):
        t.add_row(what, f"{head[f'reference {what} s'] * 1e3:.1f} ms", f"{head[f'fft {what} s'] * 1e3:.2f} ms",
                  f"{head[f'fft vs dense {what}']:.0f}x faster")
    console.print(t)
    t = Table(title=f"longconv, b={cfg['b']}, l={l}, h={cfg['short_h']}, fp32: direct (depthwise conv1d) vs fft")
    for c in ("K", "fft fwd", "direct fwd", "direct vs fft fwd", "direct vs fft fwd+bwd"):
        t.add_column(c, justify="right")
    for K, row in short.items():
        t.add_row(str(K), f"{row['fft forward s'] * 1e3:.2f} ms", f"{row['direct forward s'] * 1e3:.2f} ms",
                  f"{row['direct vs fft forward']:.2f}x", f"{row['direct vs fft forward+backward']:.2f}x")
    console.print(t)
    console.print("(direct vs fft > 1: direct is faster)")
    big = max(cfg["dense_ls"])
    console.print(f"fft vs dense forward at l={big} in the sweep: "
                  f"{sweep['reference'][big] / sweep['fft'][big]:.0f}x")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=str))
    plot(sweep, cfg, args.threads, args.plot)
    console.print(f"wrote {args.out} and {args.plot}")
    return 0


def plot(sweep, cfg, threads, png: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for low, label in (("reference", "dense M (reference)"), ("fft", "fft")):
        ls = sorted(sweep[low])
        ax.loglog(ls, [sweep[low][ll] * 1e3 for ll in ls], "o-", label=label)
    ax.set_xlabel("sequence length l (kernel length k = l)")
    ax.set_ylabel("forward time (ms)")
    ax.set_title(f"s4d forward, b={cfg['b']}, h={cfg['h']}, n2={cfg['n2']}, fp32, {threads} threads")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
