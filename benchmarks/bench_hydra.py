#!/usr/bin/env python
"""CPU benchmark: the ``hydra`` spec's chunked quasiseparable lowering against the upstream
approach (goombalab/hydra; docs/quasiseparable.md, "Upstream's doubled batch"): the backward direction
flipped and concatenated along the batch, one causal SSD scan on the doubled batch (mixerc's own chunked
semiseparable lowering, the same algorithm and chunk size), then roll, flip back and add.

A thin caller of `mixerc bench` (mixerc/bench.py): `run_bench` checks both contenders against the fp64
reference lowering (output and the gradients of every input and parameter), then times them in
interleaved rounds, forward and forward + backward, fp32. This script adds the doubled batch (an
``extras`` contender) and the allocator regimes (one child process each, as bench_cpu.py).

    python benchmarks/bench_hydra.py           # b=2, l=4096, h=8, p=64, n=64 (results/hydra_cpu.json)
    python benchmarks/bench_hydra.py --quick   # tiny shapes, a smoke test
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

from bench_cpu import REGIMES, run_child

HERE = Path(__file__).resolve().parent
FULL = dict(b=2, l=4096, h=8, p=64, n=64, g=1, chunk=64, repeats=5)
QUICK = dict(b=1, l=256, h=2, p=16, n=16, g=1, chunk=32, repeats=2)
DOUBLED = "doubled batch (upstream)"


def doubled_batch(cfg):
    """``make(mixer, chunk)`` of the doubled batch, reading the hydra mixer's parameters."""
    import torch

    import mixerc as mx

    @mx.spec
    def ssd(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n"),
            A_log: mx.Param("h")):
        """mamba_chunk_scan_combined(x, dt, A, B, C) with dt already softplus'd, D = None."""
        return mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A_log) * dt) @ (x * dt)

    dims = {k: cfg[k] for k in "hpng"}
    scan = mx.compile(ssd, dims=dims, backend="chunked", chunk_size=cfg["chunk"], parameters=False)

    def make(m, chunk):
        def run(ins):
            x, b = ins["x"], ins["x"].shape[0]
            flip = lambda t: t.flip(1)  # noqa: E731
            cat = lambda k: torch.cat([ins[f"{k}_fwd"], flip(ins[f"{k}_bwd"])])  # noqa: E731
            dt = torch.nn.functional.softplus(cat("dt") + m.dt_bias)
            y2 = scan(x=torch.cat([x, flip(x)]), dt=dt, B=cat("B"), C=cat("C"), params={"A_log": m.A_log})
            y2 = torch.cat([torch.zeros_like(y2[:, :1]), y2[:, :-1]], 1)  # roll by one, row 0 zeroed
            return y2[:b] + flip(y2[b:]) + x * (ins["delta"] + m.D)[..., None]
        return run
    return make


def child(cfg) -> int:
    """Both modes under the allocator regime this process was started with: tables, then JSON."""
    import torch
    from rich.console import Console

    import mixerc as mx
    from mixerc.bench import render, run_bench

    torch.set_num_threads(cfg["threads"])
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.rule(f"regime: {REGIMES[cfg['regime']]['label']}")
    out = {}
    for mode, backward in (("forward", False), ("forward+backward", True)):
        r = run_bench(mx.load_spec("hydra"), {k: cfg[k] for k in "hpng"}, cfg["b"], [cfg["l"]], backward=backward,
                      lowerings=["chunked"], chunk_size=cfg["chunk"], repeats=cfg["repeats"],
                      extras={DOUBLED: doubled_batch(cfg)})
        render(r, console)
        out[mode] = dict(r.to_json(), failed=r.failures())
    Path(cfg["child_json"]).write_text(json.dumps(out))
    return 0


def speedup(res: dict) -> float | None:
    """time(doubled batch) / time(chunked), medians."""
    t = {name: c["times_s"].get(str(res["lengths"][0]), []) for name, c in res["contenders"].items()}
    return statistics.median(t[DOUBLED]) / statistics.median(t["chunked"]) if t["chunked"] and t[DOUBLED] else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--out", default=str(HERE / "results" / "hydra_cpu.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)  # a child's configuration (JSON)
    args = ap.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    cfg = dict(QUICK if args.quick else FULL, threads=args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results, failed = {}, []
    for regime, spec in REGIMES.items():
        child_json = out.with_name(f".child_{regime}_{out.name}")
        child_json.unlink(missing_ok=True)
        proc = run_child(dict(cfg, regime=regime, child_json=str(child_json)), spec["env"], script=__file__)
        if proc.returncode != 0 or not child_json.exists():
            failed.append(f"{regime}: child failed (exit {proc.returncode})")
            continue
        results[regime] = json.loads(child_json.read_text())
        child_json.unlink()
        failed += [f"{regime} {mode}: {f}" for mode, res in results[regime].items() for f in res["failed"]]
    print("hydra chunked against the doubled batch, time(doubled) / time(chunked), medians (above 1: chunked is "
          "faster):")
    for regime, modes in results.items():
        print(f"  {regime:9s}" + "".join(f"  {mode} {s:.2f}x" if s else f"  {mode} not timed"
                                         for mode, s in ((m, speedup(res)) for m, res in modes.items())))
    out.write_text(json.dumps(dict(config=cfg, results=results, failed=failed), indent=1))
    print(f"wrote {out}")
    if failed:
        print("FAILED: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
