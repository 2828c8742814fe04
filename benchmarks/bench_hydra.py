#!/usr/bin/env python
"""CPU benchmark: the ``hydra`` spec's chunked quasiseparable lowering against the upstream
approach (goombalab/hydra; docs/quasiseparable.md, "Upstream's doubled batch"): the backward direction flipped and
concatenated along the batch, one causal SSD scan on the doubled batch (mixerc's own chunked
semiseparable lowering, the same algorithm and chunk size), then roll, flip back and add.

Both run forward, and forward + backward, in fp32 at the same chunk size. Outputs are checked
first: both against the fp64 reference lowering at a short length, and against each other at the
benchmark shape. Each allocator regime runs in a child process (see bench_cpu.py: glibc page-faults
fresh buffers of 32 MiB and more on every call; ``retained`` is the reproducible regime).

    python benchmarks/bench_hydra.py           # b=2, l=4096, h=8, p=64, n=64 (results/hydra_cpu.json)
    python benchmarks/bench_hydra.py --quick   # tiny shapes, a smoke test
"""


import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL = dict(b=2, l=4096, h=8, p=64, n=64, g=1, chunk=64, repeats=5, check_l=200)
QUICK = dict(b=1, l=256, h=2, p=16, n=16, g=1, chunk=32, repeats=2, check_l=40)
BIG = str(1 << 40)
REGIMES = {"retained": {"MALLOC_MMAP_THRESHOLD_": BIG, "MALLOC_TRIM_THRESHOLD_": BIG}, "default": {}}
TOL_FP32 = 1e-3


def build(cfg):
    import torch

    import mixerc as mx

    dims = dict(h=cfg["h"], p=cfg["p"], n=cfg["n"], g=cfg["g"])
    hydra = mx.compile("hydra", dims=dims, backend="chunked", chunk_size=cfg["chunk"])

    @mx.spec
    def ssd(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n"),
            A_log: mx.Param("h")):
        """mamba_chunk_scan_combined(x, dt, A, B, C) with dt already softplus'd, D = None."""
        return mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A_log) * dt) @ (x * dt)

    scan = mx.compile(ssd, dims=dims, backend="chunked", chunk_size=cfg["chunk"], parameters=False)

    def doubled(A_log, dt_bias, D, x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd, delta):
        b = x.shape[0]
        flip = lambda t: t.flip(1)  # noqa: E731
        dt = torch.nn.functional.softplus(torch.cat([dt_fwd, flip(dt_bwd)]) + dt_bias)
        y2 = scan(x=torch.cat([x, flip(x)]), dt=dt, B=torch.cat([B_fwd, flip(B_bwd)]),
                  C=torch.cat([C_fwd, flip(C_bwd)]), params={"A_log": A_log})
        y2 = torch.roll(y2, 1, dims=1)
        y2[:, 0] = 0
        return y2[:b] + flip(y2[b:]) + x * (delta + D)[..., None]

    def ours(A_log, dt_bias, D, **ins):
        return hydra(**ins, params={"A_log": A_log, "dt_bias": dt_bias, "D": D})

    return hydra, {"mixerc hydra chunked": ours, "doubled batch (upstream)": doubled}


def make_inputs(mixer, b, l, dtype, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in mixer.ir.inputs:
        shape = [b if d == "b" else l if d == "l" else mixer.sizes[d] for d in mixer.ir.node(name).dims]
        out[name] = torch.randn(*shape, generator=g).to(dtype)
    out["dt_fwd"], out["dt_bwd"] = out["dt_fwd"] - 2, out["dt_bwd"] - 2  # Δ ~ 0.1
    params = {"A_log": torch.rand(mixer.sizes["h"], generator=g).to(dtype),
              "dt_bias": torch.zeros(mixer.sizes["h"], dtype=dtype), "D": torch.ones(mixer.sizes["h"], dtype=dtype)}
    return params, out


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def child(cfg) -> dict:
    import torch

    torch.manual_seed(0)
    hydra, fns = build(cfg)
    # 1. correctness: fp64 reference lowering at a short length, then the two against each other
    import mixerc as mx

    ref = mx.compile("hydra", dims=hydra.sizes, backend="reference", dtype=torch.float64, parameters=False)
    p64, i64 = make_inputs(hydra, cfg["b"], cfg["check_l"], torch.float64)
    y_ref = ref(**i64, params=p64)
    checks = {}
    for name, fn in fns.items():
        p32 = {k: v.float() for k, v in p64.items()}
        checks[name] = rel(fn(**p32, **{k: v.float() for k, v in i64.items()}).double(), y_ref)
        assert checks[name] < TOL_FP32, (name, checks[name])
    params, inputs = make_inputs(hydra, cfg["b"], cfg["l"], torch.float32)
    outs = {name: fn(**params, **inputs) for name, fn in fns.items()}
    a, b = outs.values()
    agree = rel(a, b)
    assert agree < TOL_FP32, agree

    # 2. timing, interleaved rounds
    leaves = {k: v.clone().requires_grad_(True) for k, v in {**params, **inputs}.items()}
    w = torch.randn_like(a)

    def fwd(fn):
        with torch.no_grad():
            fn(**params, **inputs)

    def fwd_bwd(fn):
        y = fn(**leaves)
        torch.autograd.grad((y * w).sum(), list(leaves.values()))

    times = {}
    for mode, run in (("forward", fwd), ("forward+backward", fwd_bwd)):
        for fn in fns.values():
            run(fn)  # warm-up
        t = {name: [] for name in fns}
        for _ in range(cfg["repeats"]):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                run(fn)
                t[name].append(time.perf_counter() - t0)
        times[mode] = {name: statistics.median(v) for name, v in t.items()}
        print(f"  {mode}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in times[mode].items()), flush=True)
    return dict(checks_fp64=checks, agreement=agree, times=times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    ap.add_argument("--out", default=str(HERE / "results" / "hydra_cpu.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.child:
        print("RESULT " + json.dumps(child(cfg)), flush=True)
        return 0
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console()
    console.print(f"hydra fwd(+bwd), fp32: b={cfg['b']} l={cfg['l']} h={cfg['h']} p={cfg['p']} n={cfg['n']} "
                  f"g={cfg['g']} chunk={cfg['chunk']}, median of {cfg['repeats']}")
    results = {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("allocator regimes", total=len(REGIMES))
        for regime, env in REGIMES.items():
            progress.update(task, description=f"regime {regime}")
            cmd = [sys.executable, __file__, "--child", "1"] + (["--quick"] if args.quick else [])
            run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
            if run.returncode != 0:
                console.print(run.stdout[-2000:], run.stderr[-4000:], markup=False)
                return 1
            line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
            results[regime] = json.loads(line[len("RESULT "):])
            progress.advance(task)
    table = Table(title="mixerc hydra chunked vs the doubled batch (higher is better for mixerc)")
    for col in ("regime", "mode", "mixerc (ms)", "doubled (ms)", "speed-up"):
        table.add_column(col, justify="left" if col in ("regime", "mode") else "right")
    for regime, res in results.items():
        for mode, t in res["times"].items():
            ours, theirs = t["mixerc hydra chunked"], t["doubled batch (upstream)"]
            table.add_row(regime, mode, f"{ours * 1e3:.1f}", f"{theirs * 1e3:.1f}", f"{theirs / ours:.2f}x")
            res.setdefault("speedup", {})[mode] = theirs / ours
    console.print(table)
    console.print(f"outputs checked: fp64 reference rel err {results['retained']['checks_fp64']}, "
                  f"agreement {results['retained']['agreement']:.1e}", markup=False)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(config=cfg, results=results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
