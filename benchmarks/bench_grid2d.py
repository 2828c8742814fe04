#!/usr/bin/env python
"""CPU benchmark of the 2-D SSM (grid2d, docs/grid2d.md): the `grid` lowering against `recurrent` (cell
by cell), forward and (--backward) forward + backward, fp32, on 2-D Mamba-2 coefficients (per head, both
couplings, both scales) as the ssm2d spec makes them. On the CPU `grid` runs its fused C loops (forward,
and the adjoint as its backward); the `wavefront` row is its torch engine, which runs where no C compiler
is. `fft2`
against `grid` on an LTI grid (b=1, l/4); peak RSS of a `grid` forward (with --backward: and forward +
backward) at b=1, v=--memory-v and each --memory-l. Forward + backward is timed at --backward-l
(default 64): `recurrent`'s autograd graph holds every cell's small tensors, about 3 GB there at b=8 and
tens of GB at l=1024.

Every contender is first checked against `recurrent` in fp64 on a small grid. Timings are
interleaved: every round runs each contender once, in an order that rotates; the table shows the
median, min..max and the median of the per-round ratios. Results go to results/grid2d.json.

    python benchmarks/bench_grid2d.py                     # b=8, v=16, l=1024, h=8, p=16, n=16
    python benchmarks/bench_grid2d.py --backward          # + forward and backward at l=--backward-l
    python benchmarks/bench_grid2d.py --quick             # tiny shapes, seconds
    python benchmarks/bench_grid2d.py --backward --memory-l 4096,8192,16384 --repeats 3

Each memory figure comes from a fresh process whose address space is capped at --memory-cap-gb (a run
that needs more reports "over the cap" instead of waking the kernel's OOM killer on a shared machine).
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = ("x", "B1", "C1", "B2", "C2", "log_a1", "a2", "a3", "log_a4", "scale1", "scale2")


def inputs(b, v, l, h, p, n, dtype, lti=False, seed=0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    cs = (b, 1, 1, h) if lti else (b, v, l, h)
    d1 = torch.nn.functional.softplus(rnd(*cs) - 3)
    d2 = torch.nn.functional.softplus(rnd(*cs) - 1)
    return dict(x=rnd(b, v, l, h, p), B1=rnd(b, v, l, 1, n), C1=rnd(b, v, l, 1, n), B2=rnd(b, v, l, 1, n),
                C2=rnd(b, v, l, 1, n), log_a1=-d1, a2=0.1 * d1, a3=-0.1 * d2, log_a4=-d2,
                scale1=rnd(b, v, l, h).sigmoid(), scale2=rnd(b, v, l, h).sigmoid())


def lowering(name):
    """A torch lowering by name; ``wavefront``: ``grid`` with its fused C loops set aside (its torch
    engine)."""
    from mixerc.codegen.structures.grid2d import native, torch_lowering

    if name != "wavefront":
        return getattr(torch_lowering, name)

    def wavefront(*args, **kw):
        usable, native.usable = native.usable, lambda *a: False
        try:
            return torch_lowering.grid(*args, **kw)
        finally:
            native.usable = usable

    return wavefront


def run(name, a, backward):
    import torch

    if not backward:
        with torch.no_grad():
            return lowering(name)(*[a[k] for k in NAMES])[0]
    leaves = {k: t.detach().requires_grad_() for k, t in a.items()}
    y, (f1, f2) = lowering(name)(*[leaves[k] for k in NAMES])
    (y.square().sum() + f1.sum() + f2.sum()).backward()
    return y


def check(names):
    """Every contender against recurrent in fp64 on a small grid, forward and every gradient."""
    import torch

    out = {}
    for lti in (False, True):
        a = inputs(2, 5, 7, 2, 3, 4, torch.float64, lti=lti)
        want = {}
        for name in ["recurrent"] + [n for n in names if lti or n != "fft2"]:
            leaves = {k: t.clone().requires_grad_() for k, t in a.items()}
            y, (f1, f2) = lowering(name)(*[leaves[k] for k in NAMES])
            (y.square().sum() + f1.sum() + f2.sum()).backward()
            got = [y] + [leaves[k].grad for k in NAMES]
            if name == "recurrent":
                want = got
                continue
            err = max(((g - w).abs().max() / w.abs().max()).item() for g, w in zip(got, want))
            if name == "grid":  # without gradients: the fused C forward alone
                with torch.no_grad():
                    err = max(err, ((lowering(name)(*[a[k] for k in NAMES])[0] - want[0]).abs().max()
                                    / want[0].abs().max()).item())
            out[f"{name}{' (LTI)' if lti else ''}"] = err
            if err > 1e-10:
                sys.exit(f"{name}: fp64 relative error {err:.1e} against recurrent (> 1e-10)")
    return out


def timed(contenders, repeats, backward):
    times = {name: [] for name in contenders}
    order = list(contenders)
    for name, a in contenders.items():  # warm-up
        run(name, a, backward)
    for r in range(repeats):
        for name in order[r % len(order):] + order[:r % len(order)]:
            t0 = time.perf_counter()
            run(name, contenders[name], backward)
            times[name].append(time.perf_counter() - t0)
    return times


def table(times, base, title):
    print(f"\n{title}")
    rows = {}
    for name, ts in times.items():
        ratio = statistics.median(b / t for b, t in zip(times[base], ts))
        rows[name] = dict(median_s=statistics.median(ts), min_s=min(ts), max_s=max(ts), speedup_vs=base,
                          speedup=ratio)
        print(f"  {name:10s} median {statistics.median(ts):8.3f} s  ({min(ts):.3f}..{max(ts):.3f})"
              f"  {ratio:6.2f}x {base}")
    return rows


def peak_mb():
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent over fork + exec)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def memory_child(name, backward, b, v, l, h, p, n):
    """One call of lowering `name` (forward, or forward + backward) in this process; prints the peak RSS in MB."""
    import torch

    a = inputs(b, v, l, h, p, n, torch.float32)
    before = peak_mb()
    try:
        run(name, a, backward=bool(backward))
    except RuntimeError as e:  # torch's CPU allocator past the cap: "DefaultCPUAllocator: can't allocate memory"
        if "can't allocate memory" not in str(e):
            raise
        peak = None
    else:
        peak = peak_mb()
    print(json.dumps(dict(lowering=name, backward=bool(backward), b=b, v=v, l=l, before_mb=before, peak_mb=peak)))


def memory(name, backward, shape, cap_gb):
    """Peak RSS of one call in a fresh process (VmHWM is per process), its address space capped at cap_gb."""
    cap = int(cap_gb * 2**30)
    cmd = [sys.executable, __file__, "--memory-child", name, str(int(backward)),
           *[str(shape[k]) for k in ("b", "v", "l", "h", "p", "n")]]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
    m = json.loads(out.stdout)
    what = "forward + backward" if backward else "forward"
    peak = f"{m['peak_mb']:.0f} MB" if m["peak_mb"] is not None else f"over the {cap_gb:g} GB cap"
    print(f"peak RSS, {name} {what} {shape}: {peak} (before it {m['before_mb']:.0f} MB)")
    return m


def time_all(args, shape, result):
    """The fp64 check, then grid against recurrent (forward, and forward + backward), fft2 against grid."""
    import torch

    from mixerc import allocator

    allocator.retain()  # what a mixer's first CPU call does (docs/cpu_memory.md); MIXERC_CPU_ALLOCATOR=keep: not

    result["fp64_check"] = check(["grid", "wavefront", "fft2"])
    print("fp64 check against recurrent:", ", ".join(f"{k} {e:.1e}" for k, e in result["fp64_check"].items()))
    a = inputs(**shape, dtype=torch.float32)
    lti_shape = dict(shape, b=1, l=max(1, args.l // 4))  # fft2 holds FFTs of the whole state: ~8 GB at b=8, l=1024
    lti = inputs(**lti_shape, dtype=torch.float32, lti=True)
    what = [("forward", False)] + ([("forward+backward", True)] if args.backward else [])
    for title, backward in what:
        at = dict(shape, l=args.backward_l) if backward else shape
        both = a if at == shape else inputs(**at, dtype=torch.float32)
        times = timed({k: both for k in ("recurrent", "grid", "wavefront")}, args.repeats, backward)
        result[title] = table(times, "recurrent", f"{title}, {at}, {args.threads} thread(s)")
    times = timed({"grid": lti, "fft2": lti}, args.repeats, False)
    times = {k.replace("grid", "grid (LTI)"): t for k, t in times.items()}
    result["lti_forward"] = table(times, "grid (LTI)", f"LTI forward, {lti_shape}: fft2 against grid")


def memory_all(args, shape):
    """grid at b=1, v=--memory-v and each --memory-l: forward, and with --backward forward + backward."""
    passes = [False, True] if args.backward else [False]
    return [memory("grid", backward, dict(shape, b=1, v=args.memory_v, l=l), args.memory_cap_gb)
            for l in map(int, args.memory_l.split(",")) for backward in passes]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for k, d in dict(b=8, v=16, l=1024, h=8, p=16, n=16, repeats=5, threads=1, backward_l=64).items():
        ap.add_argument(f"--{k}", type=int, default=d)
    ap.add_argument("--backward", action="store_true", help="also time forward + backward")
    ap.add_argument("--memory-v", type=int, default=32)
    ap.add_argument("--memory-l", default="8192,16384", help="peak RSS of grid at b=1 at each of these lengths")
    ap.add_argument("--memory-cap-gb", type=float, default=16.0, help="address-space cap of each memory process")
    ap.add_argument("--memory-only", action="store_true", help="no timings, only the peak RSS figures")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, 2 repeats")
    ap.add_argument("--memory-child", nargs=8, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child[0], *map(int, args.memory_child[1:]))
    if args.quick:
        args.b, args.v, args.l, args.h, args.p, args.n, args.repeats = 1, 4, 64, 2, 4, 4, 2
        args.memory_v, args.memory_l, args.backward_l = 4, "256,512", 64
    import torch

    torch.set_num_threads(args.threads)
    shape = dict(b=args.b, v=args.v, l=args.l, h=args.h, p=args.p, n=args.n)
    result = dict(shape=shape, threads=args.threads)
    if not args.memory_only:
        time_all(args, shape, result)
    result["memory"] = memory_all(args, shape)
    out = HERE / "results" / ("grid2d_quick.json" if args.quick else "grid2d.json")
    out.write_text(json.dumps(result, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
