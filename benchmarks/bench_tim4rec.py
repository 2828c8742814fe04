#!/usr/bin/env python
"""The cost of TiM4Rec's time modulation: the ``tim4rec`` spec (softplus(dt·tau + dt_bias)) against
``mamba2`` (softplus(dt + dt_bias)) at the same shape, lowering and chunk size, side by side.

Rounds alternate the two (mamba2 first on even rounds, tim4rec first on odd ones) so that drift in
the machine's load hits both; the report gives each one's median, the ratio of the medians and the
spread (min..max) of the per-round ratios. The target is a ratio within 5% of 1. Before timing,
tim4rec with tau = 1 is checked to equal mamba2 at the benchmark shape.

    python benchmarks/bench_tim4rec.py                    # chunked (CPU): b=2, l=4096, h=8, p=64, n=64
    python benchmarks/bench_tim4rec.py --backward         # forward + backward
    python benchmarks/bench_tim4rec.py --backend triton   # on a CUDA device (or TRITON_INTERPRET=1, tiny shapes)
    python benchmarks/bench_tim4rec.py --quick            # a smoke test

glibc hands buffers of 32 MiB and more back to the kernel after each call, and page-faults them in
again on the next one; the script re-executes itself with MALLOC_MMAP_THRESHOLD_ and
MALLOC_TRIM_THRESHOLD_ set high (the 'retained' regime of bench_cpu.py) unless they are set.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIG = str(1 << 40)


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

    import mixerc as mx

    torch.set_num_threads(args.threads)
    device = "cuda" if args.backend == "triton" and torch.cuda.is_available() else "cpu"
    dims = dict(h=args.h, p=args.p, n=args.n, g=args.g)
    gen = torch.Generator().manual_seed(0)
    b, l, h, p, n, g = args.b, args.l, args.h, args.p, args.n, args.g
    r = lambda *s: torch.randn(*s, generator=gen).to(device)  # noqa: E731
    base = dict(x=r(b, l, h, p), dt=r(b, l, h) - 1, B=r(b, l, g, n), C=r(b, l, g, n))
    tau = r(b, l, h).abs() + 0.5
    params = dict(A_log=torch.log(torch.rand(h, generator=gen) * 15 + 1).to(device),
                  dt_bias=(torch.rand(h, generator=gen) * -4).to(device), D=torch.ones(h, device=device))
    mixers = {s: mx.compile(s, dims=dims, backend=args.backend, chunk_size=args.chunk, parameters=False)
              for s in ("mamba2", "tim4rec")}
    inputs = {"mamba2": base, "tim4rec": {**base, "tau": tau}}

    with torch.no_grad():  # the check: tau = 1 is mamba2
        y2 = mixers["mamba2"](params=params, **base)
        y4 = mixers["tim4rec"](params=params, **base, tau=torch.ones_like(tau))
    err = float((y4 - y2).abs().max() / y2.abs().max())
    ok = err < 1e-5
    print(f"check: tim4rec(tau=1) vs mamba2, max rel error {err:.1e} {'ok' if ok else 'FAIL'}")

    def run(spec):
        ins = {k: v.detach().requires_grad_(args.backward) for k, v in inputs[spec].items()}
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.set_grad_enabled(args.backward):
            y = mixers[spec](params=params, **ins)
            if args.backward:
                y.sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for spec in mixers:  # warm-up (compile, caches)
        run(spec)
        run(spec)
    times = {"mamba2": [], "tim4rec": []}
    for i in range(args.repeats):
        for spec in (("mamba2", "tim4rec") if i % 2 == 0 else ("tim4rec", "mamba2")):
            times[spec].append(run(spec))
    ratios = [a / c for a, c in zip(times["tim4rec"], times["mamba2"])]
    med = {s: statistics.median(t) for s, t in times.items()}
    ratio = med["tim4rec"] / med["mamba2"]
    what = "forward + backward" if args.backward else "forward"
    print(f"{args.backend} {what}, fp32, b={b} l={l} h={h} p={p} n={n} g={g} chunk={args.chunk}, "
          f"{args.repeats} rounds, {args.threads} threads, {device}")
    for s in ("mamba2", "tim4rec"):
        lo, hi = min(times[s]) * 1e3, max(times[s]) * 1e3
        print(f"  {s:8s} median {med[s] * 1e3:9.2f} ms   (min {lo:.2f}, max {hi:.2f})")
    print(f"  tim4rec / mamba2: {ratio:.3f} (per-round ratios {min(ratios):.3f} .. {max(ratios):.3f}); "
          f"target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(args={k: str(v) for k, v in vars(args).items()}, device=device, times_s=times,
                                   ratio_of_medians=ratio, round_ratios=ratios, check_rel_err=err), indent=1))
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": BIG, "MALLOC_TRIM_THRESHOLD_": BIG}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    sys.exit(main())
