#!/usr/bin/env python
"""The compiled CPU path against eager `chunked` and the Mamba-2 paper's listing (mamba2, fp32).

Contenders, side by side in one process, interleaved (the order rotates every round):

- ``compiled``  ``backend="compiled"``: the chunked lowering compiled once by inductor (mixerc/compiled.py),
- ``chunked``   the eager chunked lowering,
- ``listing``   the paper's einsum listing (mixerc/peers/ssd_listing.py),
- ``matmul``    a 1024² fp32 ``torch.matmul`` probe: this CPU's matmul roof, measured in the same rounds.

Forward (under ``no_grad``) and forward + backward (``y.sum()``, every input and parameter), at each
length, with 0, 1 and 3 busy processes (``while True: pass``) beside it (``--busy-lengths`` only).
Before timing, each contender's output and gradients are compared at ``--check-l`` with the eager fp64
chunked lowering. Reports medians with the spread (min..max) of ``--repeats`` rounds, per-round ratios
and the fraction of the matmul roof: the chunked algorithm's matmul FLOPs (bench_cpu.useful_flops; 3x for
forward + backward) over the time, divided by the probe's FLOP/s. Results: results/compiled_cpu.json.

    python benchmarks/bench_compiled.py                  # the README's numbers (~15 min on 2 loaded cores)
    python benchmarks/bench_compiled.py --quick          # tiny shapes (a smoke test; compiles still take minutes)
    python benchmarks/bench_compiled.py --memory chunked --memory-shape 1,65536   # peak RSS of one forward
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_cpu import make_inputs, rel_err, time_rounds, useful_flops  # noqa: E402

NAMES = ("compiled", "chunked", "listing")


def busy(n: int) -> list:
    """``n`` processes that spin a core each (the caller stops them)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def build(h, p, n, g, chunk):
    import torch

    import mixerc as mx
    from mixerc.peers.ssd_listing import mamba2_listing

    torch.manual_seed(0)
    mods = {name: mx.compile("mamba2", dims=dict(h=h, p=p, n=n, g=g), backend=name, chunk_size=chunk)
            for name in ("compiled", "chunked")}
    mods["compiled"].load_state_dict(mods["chunked"].state_dict())
    ref = mods["chunked"]

    def listing(x, dt, B, C, A_log, dt_bias, D):
        return mamba2_listing(x, dt, B, C, A_log, dt_bias, D, chunk)

    def runner(name):
        if name == "listing":
            return lambda inp, prm: listing(**inp, **prm)
        return lambda inp, prm, m=mods[name]: m(**inp, params=prm)

    return ref, {name: runner(name) for name in NAMES}


def params_of(ref, dtype, grad):
    return {k: v.detach().to(dtype).requires_grad_(grad) for k, v in ref.named_parameters()}


def check(fns, ref, cfg) -> dict:
    """Output and every gradient of each contender (fp32) against eager chunked in fp64."""
    import torch

    inp32 = make_inputs(cfg["b"], cfg["check_l"], cfg["h"], cfg["p"], cfg["n"], cfg["g"], torch.float32, seed=1)
    errs = {}
    want = None
    for name, dtype in [("truth", torch.float64)] + [(n, torch.float32) for n in NAMES]:
        inp = {k: v.to(dtype).requires_grad_() for k, v in inp32.items()}
        prm = params_of(ref, dtype, True)
        y = fns["chunked" if name == "truth" else name](inp, prm)
        grads = torch.autograd.grad(y.sum(), [*inp.values(), *prm.values()])
        got = [y.detach(), *grads]
        if want is None:
            want = got
        else:
            errs[name] = max(rel_err(a.double(), w) for a, w in zip(got, want))
    return errs


def time_length(fns, ref, cfg, l, train, matmul):
    import torch

    inp = make_inputs(cfg["b"], l, cfg["h"], cfg["p"], cfg["n"], cfg["g"], torch.float32, seed=2)
    prm = params_of(ref, torch.float32, train)
    if train:
        inp = {k: v.requires_grad_() for k, v in inp.items()}

    def call(name):
        def run():
            if train:
                torch.autograd.grad(fns[name](inp, prm).sum(), [*inp.values(), *prm.values()])
            else:
                with torch.no_grad():
                    fns[name](inp, prm)
        return run

    calls = {name: call(name) for name in NAMES}
    calls["matmul"] = matmul
    return time_rounds(calls, cfg["repeats"], warmup=1)


def summarize(times, flops, mm_flops) -> dict:
    out = {"median_s": {k: statistics.median(v) for k, v in times.items()},
           "spread_s": {k: [min(v), max(v)] for k, v in times.items()}}
    for other in ("chunked", "listing"):
        r = [o / c for o, c in zip(times[other], times["compiled"])]
        out[f"compiled_vs_{other}"] = dict(median=statistics.median(r), min=min(r), max=max(r))
    r = [o / c for o, c in zip(times["listing"], times["chunked"])]
    out["chunked_vs_listing"] = dict(median=statistics.median(r), min=min(r), max=max(r))
    for name in NAMES:
        f = [(flops / c) / (mm_flops / m) for c, m in zip(times[name], times["matmul"])]
        out[f"roof_{name}"] = dict(median=statistics.median(f), min=min(f), max=max(f))
    out["matmul_gflops"] = mm_flops / statistics.median(times["matmul"]) / 1e9
    return out


def row(l, mode, nbusy, s) -> str:
    def ms(k):
        lo, hi = s["spread_s"][k]
        return f"{s['median_s'][k] * 1e3:8.1f} ({lo * 1e3:.0f}..{hi * 1e3:.0f})"

    def ratio(k):
        r = s[k]
        return f"{r['median']:5.2f}x ({r['min']:.2f}..{r['max']:.2f})"

    roof = s["roof_compiled"]
    return (f"{l:>6} {mode:>8} {nbusy:>4} | {ms('compiled')} | {ms('chunked')} | {ms('listing')} | "
            f"{ratio('compiled_vs_listing')} | {ratio('compiled_vs_chunked')} | "
            f"{roof['median']:5.1%} ({roof['min']:.0%}..{roof['max']:.0%}) of {s['matmul_gflops']:.0f} GFLOP/s")


def memory(backend: str, b: int, l: int) -> dict:
    """Peak RSS (VmHWM) of one ``no_grad`` forward of this process (run it as its own process); the
    compiled path compiles (or loads from the cache) at l = 256 first, so the peak is the long call's."""
    import torch

    from bench_cpu import vm_hwm_bytes

    m = mx_compile(backend)
    inp = make_inputs(b, l, 8, 64, 64, 1, torch.float32, seed=3)
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


def mx_compile(backend):
    import mixerc as mx

    return mx.compile("mamba2", dims=dict(h=8, p=64, n=64, g=1), backend=backend, chunk_size=64)


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
    ap.add_argument("--memory", choices=("compiled", "chunked"), help="only the peak-RSS check of this backend")
    ap.add_argument("--memory-shape", default="1,65536", help="b,l of the peak-RSS check")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.memory:
        print(json.dumps(memory(args.memory, *map(int, args.memory_shape.split(",")))))
        return 0
    cfg = dict(b=2, h=8, p=64, n=64, g=1, chunk=64, check_l=256, repeats=args.repeats)  # the listing: l % chunk == 0
    lengths = [int(x) for x in args.lengths.split(",")]
    busy_levels = [int(x) for x in args.busy.split(",")]
    busy_lengths = {int(x) for x in args.busy_lengths.split(",")}
    if args.quick:
        cfg.update(b=1, h=2, p=16, n=16, chunk=32, check_l=128, repeats=2)
        lengths, busy_levels, busy_lengths = [128, 256], [0], set()
    ref, fns = build(cfg["h"], cfg["p"], cfg["n"], cfg["g"], cfg["chunk"])
    print(f"load average {os.getloadavg()}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    t0 = time.perf_counter()
    errs = check(fns, ref, cfg)  # the first compiled call: compiles forward + backward
    print(f"check at l={cfg['check_l']} (output and every gradient vs fp64 chunked): "
          + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()) + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not all(e < 1e-3 for e in errs.values()):
        print("FAIL: a contender differs from the fp64 reference; nothing timed")
        return 1
    s = 1024
    a, b = torch.randn(s, s), torch.randn(s, s)
    out = torch.empty(s, s)
    matmul = (lambda: torch.matmul(a, b, out=out))
    results = []
    print(f"{'l':>6} {'mode':>8} {'busy':>4} | compiled ms (min..max) | chunked ms | listing ms | "
          "compiled/listing | compiled/chunked | compiled: fraction of the matmul roof", flush=True)
    for nbusy in busy_levels:
        procs = busy(nbusy)
        try:
            for l in lengths:
                if nbusy and l not in busy_lengths:
                    continue
                for train in (False, True):
                    if train and l >= args.fwd_only_from:
                        continue
                    times = time_length(fns, ref, cfg, l, train, matmul)
                    flops = useful_flops(cfg["b"], l, cfg["h"], cfg["p"], cfg["n"], cfg["g"], cfg["chunk"])
                    summ = summarize(times, flops * (3 if train else 1), 2 * s ** 3)
                    mode = "fwd+bwd" if train else "fwd"
                    results.append(dict(l=l, mode=mode, busy=nbusy, load=os.getloadavg(), times_s=times, **summ))
                    print(row(l, mode, nbusy, summ), flush=True)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    if not args.quick:
        Path(args.out).write_text(json.dumps(dict(cfg=cfg, check=errs, results=results), indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
