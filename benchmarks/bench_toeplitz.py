#!/usr/bin/env python
"""CPU benchmark of mixerc's Toeplitz lowerings (fp32, side by side in one process).

1. ``s4d``: the ``fft`` lowering against the dense ``reference`` lowering (M materialised, one
   matvec per channel), forward and forward+backward, at l = 16384. ``b=1, h=1, n2=32`` and the
   kernel as long as the sequence (``k = l``): the dense matrix is h·l² fp32 = 1 GiB per channel,
   and its backward needs about three such buffers, so one channel keeps it within a few GB.
2. A scaling sweep over l (the same shape, ``k = l``): dense up to 16384, fft up to 65536.
3. ``longconv`` with short kernels (K = 4, 16, 64; ``b=1, h=64, l=16384``): ``direct`` (a depthwise
   conv1d, O(l·K)) against ``fft`` (the crossover).

A thin caller of `mixerc bench` (mixerc/bench.py): every `run_bench` checks each contender against the
fp64 reference lowering (output, and forward+backward the gradients of the input and every parameter)
and against the baseline (``fft``) at the timed length, then times them in interleaved rounds; its
tables, `join` (the sweep as one table) and `plot` give the output. Results go to
``benchmarks/results/toeplitz.json`` and the sweep's plot to ``benchmarks/results/toeplitz_scaling.png``.

    python benchmarks/bench_toeplitz.py            # the full run (a few minutes on 2 cores)
    python benchmarks/bench_toeplitz.py --quick    # tiny shapes, seconds (smoke test)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from rich.console import Console

import mixerc as mx
from mixerc.bench import join, plot, render, run_bench

RESULTS = Path(__file__).resolve().parent / "results"
FULL = dict(l=16384, b=1, h=1, n2=32, repeats=5, dense_ls=[1024, 2048, 4096, 8192, 16384],
            fft_ls=[1024, 2048, 4096, 8192, 16384, 32768, 65536], short_h=64, short_ks=[4, 16, 64])
QUICK = dict(l=512, b=1, h=1, n2=8, repeats=1, dense_ls=[128, 256], fft_ls=[128, 256, 512],
             short_h=4, short_ks=[4, 16])
MODES = (("forward", False), ("forward+backward", True))


def median(r, name) -> float | None:
    c = next(c for c in r.contenders if c.name == name)
    ts = c.times.get(r.lengths[0])
    return statistics.median(ts) if ts else None


def ratio(r, slow, fast) -> str:
    a, b = median(r, slow), median(r, fast)
    return f"{a / b:.2f}x" if a and b else "not timed"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes: seconds (smoke test)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "toeplitz.json")
    ap.add_argument("--plot", type=Path, default=RESULTS / "toeplitz_scaling.png")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    s4d, l, big = mx.load_spec("s4d"), cfg["l"], max(cfg["dense_ls"])

    def s4d_at(n, lowerings, backward=False):
        return run_bench(s4d, dict(h=cfg["h"], n2=cfg["n2"], k=n), cfg["b"], [n], backward=backward,
                         repeats=cfg["repeats"], lowerings=lowerings, reference_max_l=n)

    head = {mode: s4d_at(l, ["reference", "fft"], backward) for mode, backward in MODES}
    for r in head.values():
        render(r, console)
    sweep = join([s4d_at(n, ["reference", "fft"] if n in cfg["dense_ls"] else ["fft"]) for n in cfg["fft_ls"]])
    render(sweep, console)
    short = {K: {mode: run_bench(mx.load_spec("longconv"), dict(h=cfg["short_h"], k=K), cfg["b"], [l],
                                 backward=backward, repeats=cfg["repeats"], lowerings=["fft", "direct"])
                 for mode, backward in MODES} for K in cfg["short_ks"]}
    for modes in short.values():
        for r in modes.values():
            render(r, console)

    console.print(f"fft vs dense at l={l}: " + ", ".join(f"{mode} {ratio(r, 'reference', 'fft')}"
                                                       for mode, r in head.items()), markup=False)
    big_ms = {c.name: statistics.median(c.times[big]) for c in sweep.contenders if c.times.get(big)}
    if len(big_ms) == 2:
        console.print(f"fft vs dense forward at l={big} in the sweep: {big_ms['reference'] / big_ms['fft']:.1f}x")
    for K, modes in short.items():
        console.print(f"direct vs fft, K={K}: " + ", ".join(f"{mode} {ratio(r, 'fft', 'direct')}"
                                                            for mode, r in modes.items()) + " (> 1: direct is faster)")
    runs = [*head.values(), sweep, *(r for modes in short.values() for r in modes.values())]
    failed = [f for r in runs for f in r.failures()]
    res = dict(config=cfg, threads=args.threads, torch=torch.__version__, failed=failed,
               headline={mode: r.to_json() for mode, r in head.items()}, sweep=sweep.to_json(),
               short_kernels={K: {mode: r.to_json() for mode, r in modes.items()} for K, modes in short.items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=str))
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"wrote {args.out} and {plot(sweep, str(args.plot))}", markup=False)
    if failed:
        console.print("FAILED: " + "; ".join(failed), markup=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
