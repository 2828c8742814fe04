#!/usr/bin/env python
"""The CPU paths against the Mamba-2 paper's listing (mamba2, fp32): the fused C `scan` (the CPU default), the
compiled path and eager `chunked`; a thin caller of `mixerc bench` (mixerc/bench.py).

`mixerc.bench.run_bench` checks each contender against the fp64 reference lowering (output, and with
backward every gradient of the inputs and parameters), then times them interleaved with a 1024² fp32
matmul probe in the same rounds: ``scan`` (fused C loops, docs/semiseparable.md), ``compiled``
(``backend="compiled"``, mixerc/compiled.py), ``chunked`` (eager) and the listing (a peer of mamba2 that
ships with mixerc); ``--lowerings`` picks among the first three. This script adds the fraction of the
matmul roof (the chunked algorithm's matmul FLOPs, bench_cpu.useful_flops, 3x for forward + backward,
over the time, divided by the probe's FLOP/s), the rows with busy processes beside the timing, and a
peak-RSS mode. Forward = a call under ``no_grad`` (as `mixerc bench` checks and times it).

    python benchmarks/bench_compiled.py                  # the README's numbers (compiles take minutes)
    python benchmarks/bench_compiled.py --lengths 8192 --busy 0
    python benchmarks/bench_compiled.py --lowerings scan,chunked   # without the compiles
    python benchmarks/bench_compiled.py --quick          # tiny shapes (a smoke test; compiles still take minutes)
    python benchmarks/bench_compiled.py --memory chunked --memory-shape 1,65536   # peak RSS of one forward
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_cpu import useful_flops, vm_hwm_bytes  # noqa: E402

MATMUL = "matmul 1024^2"


def roofs(r, cfg, backward: bool) -> dict:
    """Per length and contender: the median time's fraction of the probe's matmul FLOP/s."""
    med = {c.name: {l: statistics.median(ts) for l, ts in c.times.items()} for c in r.contenders}
    out = {}
    for l in r.lengths:
        if l not in med.get(MATMUL, {}):
            continue
        flops = useful_flops(cfg["b"], l, cfg["h"], cfg["p"], cfg["n"], cfg["g"], cfg["chunk"]) * (3 if backward else 1)
        peak = 2 * 1024 ** 3 / med[MATMUL][l]
        out[str(l)] = {name: flops / ts[l] / peak for name, ts in med.items() if l in ts and name != MATMUL}
    return out


def run(cfg, lengths, backward: bool, busy: int, console, lowerings=("scan", "compiled", "chunked")) -> dict:
    import torch

    import mixerc as mx
    from mixerc.bench import render, run_bench

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    out = torch.empty(1024, 1024)
    r = run_bench(mx.load_spec("mamba2"), {k: cfg[k] for k in "hpng"}, cfg["b"], lengths, backward=backward,
                  lowerings=list(lowerings), chunk_size=cfg["chunk"], repeats=cfg["repeats"],
                  contention=busy, probes={MATMUL: lambda: torch.matmul(a, b, out=out)})
    render(r, console)
    fractions = roofs(r, cfg, backward)
    for l, row in fractions.items():
        console.print(f"l={l}: fraction of the matmul roof " + ", ".join(f"{k} {v:.1%}" for k, v in row.items()))
    return dict(r.to_json(), roof=fractions, failed=r.failures(), load=os.getloadavg())


def memory(backend: str, b: int, l: int) -> dict:
    """Peak RSS (VmHWM) of one ``no_grad`` forward of this process (run it as its own process); the
    compiled path compiles (or loads from the cache) at l = 256 first, so the peak is the long call's."""
    import torch

    import mixerc as mx
    from mixerc.check import random_inputs

    m = mx.compile("mamba2", dims=dict(h=8, p=64, n=64, g=1), backend=backend, chunk_size=64)
    inp = random_inputs(m, b, l, torch.Generator().manual_seed(3))
    first = None
    with torch.no_grad():
        if backend == "compiled":
            t = time.perf_counter()
            m(**{k: v[:, :256] for k, v in inp.items()})
            first = time.perf_counter() - t
        before = vm_hwm_bytes()
        t = time.perf_counter()
        m(**inp)
    return dict(backend=backend, b=b, l=l, peak_mb=vm_hwm_bytes() / 1e6, before_mb=before / 1e6,
                forward_s=time.perf_counter() - t, first_call_s=first, load=os.getloadavg())


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="1024,4096,8192,65536")
    ap.add_argument("--busy", default="0,1,3", help="busy processes beside the benchmark")
    ap.add_argument("--busy-lengths", default="8192", help="lengths also timed with busy processes")
    ap.add_argument("--fwd-only-from", type=int, default=65536, help="from this length, forward only")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="b=1, h=2, p=n=16, l=128,256, no busy processes")
    ap.add_argument("--out", default=str(HERE / "results" / "compiled_cpu.json"))
    ap.add_argument("--lowerings", default="scan,compiled,chunked", help="among scan, compiled, chunked")
    ap.add_argument("--memory", choices=("scan", "compiled", "chunked"), help="only the peak-RSS check of this backend")
    ap.add_argument("--memory-shape", default="1,65536", help="b,l of the peak-RSS check")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from rich.console import Console

    torch.set_num_threads(args.threads)
    if args.memory:
        print(json.dumps(memory(args.memory, *map(int, args.memory_shape.split(",")))))
        return 0
    console = Console() if sys.stdout.isatty() else Console(width=160)
    cfg = dict(b=2, h=8, p=64, n=64, g=1, chunk=64, repeats=args.repeats)
    lengths = [int(x) for x in args.lengths.split(",")]
    busy_levels = [int(x) for x in args.busy.split(",")]
    busy_lengths = {int(x) for x in args.busy_lengths.split(",")}
    if args.quick:
        cfg.update(b=1, h=2, p=16, n=16, chunk=32, repeats=2)
        lengths, busy_levels = [128, 256], [0]
    console.print(f"load average {os.getloadavg()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    runs, failed = [], []
    for busy in busy_levels:
        for backward in (False, True):
            ls = [l for l in lengths if (not busy or l in busy_lengths) and not (backward and l >= args.fwd_only_from)]
            if ls:
                console.rule(f"{'forward + backward' if backward else 'forward'}, {busy} busy processes beside")
                runs.append(dict(run(cfg, ls, backward, busy, console, args.lowerings.split(",")), busy=busy))
                failed += runs[-1]["failed"]
    if not args.quick:
        Path(args.out).write_text(json.dumps(dict(cfg=cfg, runs=runs), indent=1))
        console.print(f"wrote {args.out}")
    if failed:
        console.print("[red]FAILED: " + "; ".join(failed) + "[/red]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
