#!/usr/bin/env python
"""The cost of TiM4Rec's time modulation: the ``tim4rec`` spec (softplus(dt·tau + dt_bias)) against
``mamba2`` (softplus(dt + dt_bias)) at the same shape, lowering and chunk size, side by side.

A thin caller of `mixerc bench` (mixerc/bench.py). The ``mamba2`` contender is the mamba2 mixer run on
``dt·tau`` (the modulation as one torch multiply of a ``(b, l, h)`` tensor outside the mixer), so both
compute the same output and `run_bench` checks both against tim4rec's fp64 reference lowering (output,
and with ``--backward`` the gradients of every input and parameter) before it times them in interleaved
rounds (the order rotates every round). This script adds the ratio of the medians and the spread
(min..max) of the per-round ratios. The target is a ratio within 5% of 1.

    python benchmarks/bench_tim4rec.py                    # chunked (CPU): b=2, l=4096, h=8, p=64, n=64
    python benchmarks/bench_tim4rec.py --backward         # forward + backward
    python benchmarks/bench_tim4rec.py --backend triton   # on a CUDA device (or TRITON_INTERPRET=1, tiny shapes)
    python benchmarks/bench_tim4rec.py --quick            # a smoke test

glibc hands buffers of 32 MiB and more back to the kernel after each call, and page-faults them in
again on the next one; the script re-executes itself in the 'retained' allocator regime of
bench_cpu.py unless MALLOC_MMAP_THRESHOLD_ is set.
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from bench_cpu import REGIMES, child_env

HERE = Path(__file__).resolve().parent
MAMBA2 = "mamba2 on dt·tau"


def modulated_mamba2(backend, chunk):
    """``make(mixer, chunk)``: mamba2 on ``dt * tau``, reading the tim4rec mixer's parameters."""
    import mixerc as mx

    def make(m, _):
        mamba2 = mx.compile("mamba2", dims=dict(m.sizes), backend=backend, chunk_size=chunk, parameters=False)
        mamba2.to(m.A_log.device)

        def run(ins):
            others = {k: v for k, v in ins.items() if k not in ("dt", "tau")}
            return mamba2(dt=ins["dt"] * ins["tau"], **others, params=dict(m.named_parameters()))
        return run
    return make


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in (("b", 2), ("l", 4096), ("h", 8), ("p", 64), ("n", 64), ("g", 1), ("chunk", 64),
                          ("repeats", 9), ("threads", 2)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--backend", default="chunked", choices=["chunked", "triton"])
    ap.add_argument("--backward", action="store_true", help="time forward + backward")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.b, args.l, args.h, args.p, args.n, args.repeats = 1, 256, 2, 16, 16, 3
        args.chunk = min(args.chunk, 32)
    out = args.out or HERE / "results" / f"tim4rec_{args.backend}{'_quick' if args.quick else ''}.json"

    import torch
    from rich.console import Console

    import mixerc as mx
    from mixerc.bench import render, run_bench

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    r = run_bench(mx.load_spec("tim4rec"), dict(h=args.h, p=args.p, n=args.n, g=args.g), args.b, [args.l],
                  device=device, backward=args.backward, repeats=args.repeats, chunk_size=args.chunk,
                  lowerings=[args.backend], extras={MAMBA2: modulated_mamba2(args.backend, args.chunk)})
    render(r, Console() if sys.stdout.isatty() else Console(width=160))
    times = {c.name: c.times.get(args.l, []) for c in r.contenders}
    failed = r.failures() + [f"{name}: not timed" for name in (args.backend, MAMBA2) if not times[name]]
    result = dict(args={k: str(v) for k, v in vars(args).items()}, bench=r.to_json(), failed=failed)
    if not failed:
        ratios = [a / c for a, c in zip(times[args.backend], times[MAMBA2])]  # round by round
        ratio = statistics.median(times[args.backend]) / statistics.median(times[MAMBA2])
        print(f"tim4rec / mamba2: {ratio:.3f} (per-round ratios {min(ratios):.3f} .. {max(ratios):.3f}); "
              f"target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'}")
        result.update(ratio_of_medians=ratio, round_ratios=ratios)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    if failed:
        print("FAILED: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.execve(sys.executable, [sys.executable, *sys.argv], child_env(REGIMES["retained"]["env"]))
    sys.exit(main())
