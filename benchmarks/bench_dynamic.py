#!/usr/bin/env python
"""Shape polymorphism of the torch lowerings under ``torch.compile(dynamic=True, fullgraph=True)``,
and the eager speed of ``chunked``.

1. Graphs: a spec's mixer is compiled once with a counting backend and called at several
   sequence lengths; every graph dynamo builds (a new length the guards reject) is counted, and
   with ``--backward`` AOTAutograd's forward and backward graphs too. The output of every call is
   compared with the eager mixer's (fp64). One graph for every length >= 2 is the goal (the token
   loop ``recurrent`` unrolls l, so it cannot have it).
2. Eager timings (``--time``): mamba2 fp32 b=2 l=8192 h=8 p=n=64 chunk 64, forward and
   forward+backward, of ``chunked`` and of the paper's einsum listing (benchmarks/ssd_listing.py),
   ``--repeats`` times each, interleaved; printed as median and spread (min-max) and as ratios.

``--baseline REV`` runs everything a second time, side by side, on the tree of git revision REV (its
files exported to a temporary folder and imported instead of the installed mixerc, in a child
process), e.g. the commit the shape-polymorphic chunked lowering started from:

    python benchmarks/bench_dynamic.py                          # graph counts, this tree
    python benchmarks/bench_dynamic.py --baseline bb0b909 --specs mamba2 --lengths 2,3,17,64,100
    python benchmarks/bench_dynamic.py --time --repeats 5 --baseline bb0b909 --no-graphs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# spec: (dims, lowerings measured, chunk size); tiny dims: the graph count does not depend on them
SPECS = {
    "mamba2": (dict(h=2, p=4, n=4, g=1), ("chunked", "reference", "recurrent"), 16),
    "mamba": (dict(d=3, n=4), ("chunked",), 16),
    "hydra": (dict(h=2, p=4, n=4, g=1), ("chunked",), 16),
    "longconv": (dict(h=2, k=8), ("fft", "direct"), None),
}
LENGTHS = (2, 3, 17, 64, 100, 1000, 4097)
TIME_SHAPE = dict(b=2, l=8192, h=8, p=64, n=64, g=1, chunk=64)
# the layout of the source tree in the installed package (pyproject.toml's package-dir)
PACKAGE_DIRS = {"ir": "ir", "codegen": "codegen", "rt": "rt", "templates": "templates", "specs": "specs"}


# -- graph counting --------------------------------------------------------------------------------


def count_graphs(spec: str, lowering: str, lengths, backward: bool, b: int = 2, duck: bool = False) -> dict:
    """Graphs built for ``lengths`` (in that order) by one torch.compile'd mixer, the seconds each
    call took (compile included) and the worst relative difference from eager.

    ``duck``: keep dynamo's duck sizing, which assumes two dims equal when their first sizes are
    (``l = 2`` with ``b = 2`` or ``h = 2``), so that the next length recompiles once; off by default,
    as a length colliding with another dim's size says nothing about the lowering."""
    import torch
    import torch.fx.experimental._config as fx_config
    from torch._dynamo.backends.common import aot_autograd

    import mixerc as mx
    from mixerc.check import random_inputs

    dims, _, chunk = SPECS[spec]
    torch._dynamo.reset()
    fx_config.use_duck_shape = duck
    m = mx.compile(spec, dims=dims, backend=lowering, dtype=torch.float64, chunk_size=chunk)
    counts = {"fw": 0, "bw": 0}

    def counting(kind):
        def compiler(gm, example_inputs):
            counts[kind] += 1
            return gm.forward if hasattr(gm, "forward") else gm
        return compiler

    if backward:
        backend = aot_autograd(fw_compiler=counting("fw"), bw_compiler=counting("bw"))
    else:
        backend = counting("fw")
    params = dict(m.named_parameters())

    def run(inputs):
        return m(**inputs)

    fn = torch.compile(run, fullgraph=True, dynamic=True, backend=backend)
    seconds, worst, error = [], 0.0, None
    for l in lengths:
        g = torch.Generator().manual_seed(l)
        inputs = random_inputs(m, b, l, generator=g)
        if backward:
            inputs = {k: v.requires_grad_() for k, v in inputs.items()}
        t0 = time.perf_counter()
        try:
            y = fn(inputs)
            grads = torch.autograd.grad(y.square().sum(), [*inputs.values(), *params.values()]) if backward else ()
        except Exception as e:  # a graph break under fullgraph, or a failed trace: reported, not raised
            error = f"l={l}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            break
        seconds.append(time.perf_counter() - t0)
        y0 = run(inputs)
        diffs = [(y - y0).abs().max() / y0.abs().max().clamp_min(1e-300)]
        if backward:
            want = torch.autograd.grad(y0.square().sum(), [*inputs.values(), *params.values()])
            diffs += [(a - w).abs().max() / w.abs().max().clamp_min(1e-300) for a, w in zip(grads, want)]
        worst = max(worst, max(float(d.detach()) for d in diffs))
    return dict(spec=spec, lowering=lowering, backward=backward, lengths=list(lengths), fw=counts["fw"],
                bw=counts["bw"], seconds=seconds, max_rel_diff=worst, error=error)


# -- eager timings ---------------------------------------------------------------------------------


def time_eager(repeats: int, shape: dict) -> dict:
    """Seconds of ``chunked`` and the listing, forward and forward+backward, interleaved."""
    import torch
    import torch.nn.functional as F

    import mixerc as mx
    from ssd_listing import ssd_listing

    torch.manual_seed(0)
    b, l, h, p, n, g, Q = (shape[k] for k in ("b", "l", "h", "p", "n", "g", "chunk"))
    m = mx.compile("mamba2", dims=dict(h=h, p=p, n=n, g=g), backend="chunked", dtype=torch.float32, chunk_size=Q)
    x = torch.randn(b, l, h, p)
    dt = torch.randn(b, l, h) - 1
    B = torch.randn(b, l, g, n)
    C = torch.randn(b, l, g, n)
    A_log, dt_bias, D = m.A_log.detach(), m.dt_bias.detach(), m.D.detach()

    def mixerc_fwd(grad):
        ins = [t.requires_grad_(grad) for t in (x.clone(), dt.clone(), B.clone(), C.clone())]
        y = m(x=ins[0], dt=ins[1], B=ins[2], C=ins[3])
        if grad:
            y.square().sum().backward()
        return y

    def listing_fwd(grad):
        ins = [t.requires_grad_(grad) for t in (x.clone(), dt.clone(), B.clone(), C.clone())]
        delta = F.softplus(ins[1] + dt_bias)
        y, _ = ssd_listing(ins[0] * delta[..., None], -torch.exp(A_log) * delta, ins[2], ins[3], Q)
        y = y + D[:, None] * ins[0]
        if grad:
            y.square().sum().backward()
        return y

    with torch.no_grad():
        ref = listing_fwd(False)
        err = float((mixerc_fwd(False) - ref).abs().max() / ref.abs().max())
    cases = {("chunked", "fwd"): (mixerc_fwd, False), ("listing", "fwd"): (listing_fwd, False),
             ("chunked", "fwd+bwd"): (mixerc_fwd, True), ("listing", "fwd+bwd"): (listing_fwd, True)}
    times = {k: [] for k in cases}
    for fn, grad in cases.values():  # warm-up
        with torch.set_grad_enabled(grad):
            fn(grad)
    for _ in range(repeats):
        for key, (fn, grad) in cases.items():
            with torch.set_grad_enabled(grad):
                t0 = time.perf_counter()
                fn(grad)
                times[key].append(time.perf_counter() - t0)
    return dict(shape=shape, threads=torch.get_num_threads(), rel_err_vs_listing=err,
                times={f"{a}/{b}": v for (a, b), v in times.items()})


# -- child processes on another tree ---------------------------------------------------------------


def export_tree(rev: str, dest: Path) -> Path:
    """``git archive REV`` into dest/src, and dest/pkg laid out as the installed package."""
    src = dest / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pkg = dest / "pkg"
    pkg.mkdir()
    mix = pkg / "mixerc"
    mix.mkdir()
    for entry in (src / "mixerc").iterdir():
        os.symlink(entry, mix / entry.name)
    for name, folder in PACKAGE_DIRS.items():
        os.symlink(src / folder, mix / name)
    return pkg


def in_child(args_list: list[str], pythonpath: Path | None) -> list[dict]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env.get('PYTHONPATH', '')}"
    out = subprocess.run([sys.executable, __file__, "--child", *args_list], env=env, capture_output=True,
                         text=True)
    if out.returncode:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"child failed ({out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(args) -> list[dict]:
    import mixerc

    results = []
    lengths = [int(s) for s in args.lengths.split(",")]
    if not args.no_graphs:
        for spec in args.specs.split(","):
            lows = SPECS[spec][1] if not args.lowerings else [x for x in args.lowerings.split(",") if
                                                              x in SPECS[spec][1]]
            for low in lows:
                for backward in (False, True):
                    ls = lengths if low not in ("reference", "recurrent") else [x for x in lengths if x <= 100]
                    r = count_graphs(spec, low, ls, backward, duck=args.duck)
                    r["mixerc"] = str(Path(mixerc.__file__).parent)
                    results.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)
    if args.time:
        shape = dict(TIME_SHAPE, **({"l": args.time_l} if args.time_l else {}))
        results.append(dict(timing=time_eager(args.repeats, shape)))
    return results


# -- report ----------------------------------------------------------------------------------------


def spread(v: list[float]) -> str:
    return f"{statistics.median(v) * 1e3:8.1f} ms [{min(v) * 1e3:.1f}-{max(v) * 1e3:.1f}]"


def report(runs: dict[str, list[dict]]):
    names = list(runs)
    graph_rows = {}
    for name, results in runs.items():
        for r in results:
            if "spec" in r:
                key = (r["spec"], r["lowering"], "fwd+bwd" if r["backward"] else "fwd")
                graph_rows.setdefault(key, {})[name] = r
    if graph_rows:
        print("graphs under torch.compile(dynamic=True, fullgraph=True) (fw graphs / bw graphs; total seconds of "
              "the calls, compiles included; worst rel. diff from eager, fp64)")
        for key, per in graph_rows.items():
            some = next(iter(per.values()))
            print(f"  {key[0]:9s} {key[1]:9s} {key[2]:7s} l={','.join(map(str, some['lengths']))}")
            for name in names:
                r = per.get(name)
                if r is None:
                    continue
                what = f"{r['fw']} / {r['bw']}" if r["backward"] else f"{r['fw']}"
                err = f"  ERROR {r['error']}" if r["error"] else ""
                print(f"      {name:10s} graphs {what:7s} {sum(r['seconds']):7.1f} s  "
                      f"diff {r['max_rel_diff']:.1e}{err}")
    for name, results in runs.items():
        for r in results:
            if "timing" in r:
                t = r["timing"]
                print(f"eager timings [{name}] {t['shape']} threads={t['threads']} "
                      f"(chunked vs listing rel. err {t['rel_err_vs_listing']:.1e}); median [min-max]")
                for k, v in t["times"].items():
                    print(f"  {k:16s} {spread(v)}")
                for mode in ("fwd", "fwd+bwd"):
                    c, li = (statistics.median(t["times"][f"{x}/{mode}"]) for x in ("chunked", "listing"))
                    print(f"  {mode}: listing / chunked = {li / c:.2f}")
    timed = [(name, r["timing"]) for name, results in runs.items() for r in results if "timing" in r]
    if len(timed) == 2:
        (n0, t0), (n1, t1) = timed
        for mode in ("fwd", "fwd+bwd"):
            a = statistics.median(t0["times"][f"chunked/{mode}"])
            b = statistics.median(t1["times"][f"chunked/{mode}"])
            print(f"  chunked {mode}: {n1} / {n0} time = {b / a:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", default=",".join(SPECS))
    ap.add_argument("--lowerings", default="", help="comma list; default: each spec's in SPECS")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--baseline", default="", help="git revision to measure side by side")
    ap.add_argument("--no-graphs", action="store_true")
    ap.add_argument("--duck", action="store_true", help="keep dynamo's duck sizing (see count_graphs)")
    ap.add_argument("--time", action="store_true", help="eager timings of mamba2 chunked and the listing")
    ap.add_argument("--time-l", type=int, default=0, help="sequence length of the timings (default 8192)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    passthrough = [a for a in sys.argv[1:] if a != "--child"]
    drop = {"--baseline", "--json"}
    cleaned, skip = [], False
    for a in passthrough:
        if skip:
            skip = False
            continue
        if a in drop:
            skip = True
            continue
        if any(a.startswith(d + "=") for d in drop):
            continue
        cleaned.append(a)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            pkg = export_tree(args.baseline, Path(tmp))
            runs[f"base {args.baseline[:7]}"] = in_child(cleaned, pkg)
        runs["this tree"] = in_child(cleaned, None)
    report(runs)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
