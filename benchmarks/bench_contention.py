#!/usr/bin/env python
"""One small parallel op under contention (docs/contention.md): ``torch.exp`` of 2**17 fp32 values (above
ATen's grain size, so an OpenMP parallel region) timed with 1 and 2 torch threads, interleaved, with N
busy processes beside it. Run it under different libgomp wait policies to see where the time goes:

    python benchmarks/bench_contention.py --busy 1
    OMP_WAIT_POLICY=passive python benchmarks/bench_contention.py --busy 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from mixerc.bench import busy_processes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busy", type=int, default=1, help="busy processes beside the timing")
    ap.add_argument("--calls", type=int, default=200, help="calls per thread count")
    args = ap.parse_args(argv)
    x = torch.randn(1 << 17)
    out = torch.empty_like(x)
    times = {1: [], 2: []}
    before = torch.get_num_threads()
    with busy_processes(args.busy):
        time.sleep(0.2)  # the busy processes are running
        for r in range(2 * args.calls):
            n = 1 + r % 2
            torch.set_num_threads(n)
            start = time.perf_counter()
            torch.exp(x, out=out)
            times[n].append(time.perf_counter() - start)
    torch.set_num_threads(before)
    policy = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ)
    print(f"busy={args.busy} {policy or 'default wait policy'} load={os.getloadavg()[0]:.1f}")
    for n, ts in times.items():
        p90 = statistics.quantiles(ts, n=10)[-1]
        print(f"  {n} thread{'s' * (n > 1)}: median {statistics.median(ts) * 1e3:.3f} ms, p90 {p90 * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
