#!/usr/bin/env python
"""GPU benchmark: mixerc's generated Triton kernels against mamba-ssm's kernels.

    python benchmarks/bench_gpu.py              # mamba2 at b=4 l=4096 h=32 p=64 n=128 g=1, mamba at
                                                # b=4 l=4096 d=1536 n=16, hydra at b=2 l=4096 h=8 p=64
                                                # n=64 g=1; bf16 inputs; fwd and fwd+bwd
    TRITON_INTERPRET=1 python benchmarks/bench_gpu.py --quick   # tiny shapes on CPU: a smoke test

A thin caller of `mixerc bench` (mixerc/bench.py): for each spec `run_bench` runs the ``triton``
lowering and the spec's installed peers (mixerc/peers: mamba-ssm's ``mamba_chunk_scan_combined`` for
mamba2, ``selective_scan_fn`` and ``selective_scan_ref`` for mamba; installable without CUDA builds:
``MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation --no-deps
mamba-ssm``), checks every output and every gradient against the fp64 reference lowering (a
contender off by more than the dtype's tolerance is rejected, and the run exits 1), then times them in
interleaved rounds (wall clock, synchronised). This script adds, for hydra, goombalab/hydra's approach
on ``mamba_chunk_scan_combined`` (the backward direction flipped and concatenated along the batch,
roll, flip back, add). The tables give the median (min..max) and the speed against ``triton``.
"""

from __future__ import annotations

import argparse
import sys

import torch
from rich.console import Console

import mixerc as mx
from mixerc.bench import render, run_bench

SHAPES = {"mamba2": dict(b=4, l=4096, h=32, p=64, n=128, g=1), "mamba": dict(b=4, l=4096, d=1536, n=16),
          "hydra": dict(b=2, l=4096, h=8, p=64, n=64, g=1)}
QUICK = {"mamba2": dict(b=1, l=40, h=2, p=16, n=16, g=1), "mamba": dict(b=1, l=40, d=4, n=8),
         "hydra": dict(b=1, l=40, h=2, p=16, n=16, g=1)}
console = Console() if sys.stdout.isatty() else Console(width=160)


def doubled_batch(m, chunk):
    """goombalab/hydra's way on mamba-ssm: the backward direction as a doubled batch."""
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    def run(ins):
        x, b, f = ins["x"], ins["x"].shape[0], lambda t: t.flip(1)
        cat = lambda k: torch.cat([ins[f"{k}_fwd"], f(ins[f"{k}_bwd"])])  # noqa: E731
        y2 = mamba_chunk_scan_combined(torch.cat([x, f(x)]), cat("dt"), -torch.exp(m.A_log.float()), cat("B"),
                                       cat("C"), chunk, dt_bias=m.dt_bias, dt_softplus=True)
        y2 = torch.cat([torch.zeros_like(y2[:, :1]), y2[:, :-1]], 1)  # roll by one, row 0 zeroed
        return y2[:b] + f(y2[b:]) + x * (ins["delta"] + m.D)[..., None]
    return run


def extras(spec: str) -> dict:
    if spec != "hydra":
        return {}
    try:
        import mamba_ssm.ops.triton.ssd_combined  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import or build problem: say so and go on without it
        console.print(f"hydra: the doubled batch on mamba-ssm is unavailable ({type(e).__name__}: {e})",
                      markup=False)
        return {}
    return {"doubled batch on mamba-ssm": doubled_batch}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test; runs on CPU)")
    ap.add_argument("--specs", default="mamba2,mamba,hydra")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if not cuda:
        dtype = torch.float32 if dtype == torch.bfloat16 else dtype  # the interpreter has no bf16 tl.dot
        if not args.quick:
            console.print("no GPU: run with TRITON_INTERPRET=1 and --quick (numbers mean nothing on CPU)")
            return 1
    console.print(f"device: {torch.cuda.get_device_name() if cuda else 'CPU (the Triton interpreter)'}, "
                  f"torch {torch.__version__}", markup=False)
    failed = []
    for spec in args.specs.split(","):
        shape = (QUICK if args.quick else SHAPES)[spec]
        dims, others = {k: v for k, v in shape.items() if k not in ("b", "l")}, extras(spec)
        for backward in (False, True):
            r = run_bench(mx.load_spec(spec), dims, shape["b"], [shape["l"]], dtype=dtype,
                          device="cuda" if cuda else "cpu", backward=backward, lowerings=["triton"],
                          repeats=2 if args.quick else args.repeats, extras=others)
            render(r, console)
            failed += [f"{spec}: {f}" for f in r.failures()]
    if failed:
        console.print("FAILED: " + "; ".join(failed), markup=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
