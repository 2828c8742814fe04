#!/usr/bin/env python
"""GPU benchmark: mixerc's generated Triton kernels against mamba-ssm's kernels.

    python benchmarks/bench_gpu.py              # mamba2 at b=4 l=4096 h=32 p=64 n=128 g=1, mamba at
                                                # b=4 l=4096 d=1536 n=16, hydra at b=2 l=4096 h=8 p=64
                                                # n=64 g=1; bf16 inputs; fwd and fwd+bwd
    TRITON_INTERPRET=1 python benchmarks/bench_gpu.py --quick   # tiny shapes on CPU: a smoke test

Peers (when importable): ``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined`` for mamba2
(installable without CUDA builds: ``MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip install
--no-build-isolation --no-deps mamba-ssm``) and ``mamba_ssm.ops.selective_scan_interface.
selective_scan_fn`` for mamba (needs mamba-ssm's CUDA extension); for hydra, goombalab/hydra's
approach on ``mamba_chunk_scan_combined`` (the backward direction flipped and concatenated along
the batch, roll, flip back, add). Before anything is timed, every
contender's output is compared with mixerc's ``chunked`` lowering run in float32 on the same inputs;
a contender further off than ``--tol`` (relative to the largest output) fails the run (exit 1).
Reported: times (ms, median of ``triton.testing.do_bench`` on a GPU, of wall clock on CPU) and the
ratio peer / mixerc (> 1: mixerc is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from rich.console import Console
from rich.table import Table

import mixerc as mx

SHAPES = {"mamba2": dict(b=4, l=4096, h=32, p=64, n=128, g=1), "mamba": dict(b=4, l=4096, d=1536, n=16),
          "hydra": dict(b=2, l=4096, h=8, p=64, n=64, g=1)}
QUICK = {"mamba2": dict(b=1, l=40, h=2, p=16, n=16, g=1), "mamba": dict(b=1, l=40, d=4, n=8),
         "hydra": dict(b=1, l=40, h=2, p=16, n=16, g=1)}
console = Console()


def inputs(m, shape, device, dtype, gen):
    out = {}
    for name in m.ir.inputs:
        dims = m.ir.node(name).dims
        size = [shape["b"] if d == "b" else shape["l"] if d == "l" else m.sizes[d] for d in dims]
        t = torch.randn(*size, generator=gen, dtype=torch.float32)
        out[name] = (t - 1.0 if name.startswith("dt") else t).to(device=device, dtype=dtype)
    return out


def peer(spec, m):
    """A function of the mixer's inputs computing the same output with mamba-ssm, or None."""
    p = dict(m.named_parameters())
    try:
        if spec == "mamba2":
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            return lambda x, dt, B, C: mamba_chunk_scan_combined(
                x, dt, -torch.exp(p["A_log"].float()), B, C, 64, D=p["D"], dt_bias=p["dt_bias"],
                dt_softplus=True)
        if spec == "hydra":  # goombalab/hydra's way: the backward direction as a doubled batch
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            def doubled(x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd, delta):
                b, f = x.shape[0], lambda t: t.flip(1)
                y2 = mamba_chunk_scan_combined(
                    torch.cat([x, f(x)]), torch.cat([dt_fwd, f(dt_bwd)]), -torch.exp(p["A_log"].float()),
                    torch.cat([B_fwd, f(B_bwd)]), torch.cat([C_fwd, f(C_bwd)]), 64, dt_bias=p["dt_bias"],
                    dt_softplus=True)
                y2 = torch.cat([torch.zeros_like(y2[:, :1]), y2[:, :-1]], 1)  # roll by one, row 0 zeroed
                return y2[:b] + f(y2[b:]) + x * (delta + p["D"])[..., None]

            return doubled
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return lambda x, dt, B, C: selective_scan_fn(
            x.transpose(1, 2).contiguous(), dt.transpose(1, 2).contiguous(), -torch.exp(p["A_log"].float()),
            B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), p["D"].float(),
            delta_bias=p["dt_bias"].float(), delta_softplus=True).transpose(1, 2)
    except Exception as e:  # noqa: BLE001 - any import or build problem: report and go on without it
        console.print(f"[yellow]{spec}: mamba-ssm peer unavailable ({type(e).__name__}: {e})[/]")
        return None


def timed(fn, cuda: bool, repeats: int) -> float:
    if cuda:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=repeats * 20))
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def bench(spec: str, shape: dict, dtype, device, tol: float, repeats: int) -> list[tuple]:
    dims = {k: v for k, v in shape.items() if k not in ("b", "l")}
    m = mx.compile(spec, dims=dims, backend="triton").to(device)
    ref = mx.compile(spec, dims=dims, backend="chunked").to(device)
    ref.load_state_dict(m.state_dict())
    ins = inputs(m, shape, device, dtype, torch.Generator().manual_seed(0))
    contenders = {"mixerc triton": lambda **a: m(**a)}
    other = peer(spec, m)
    if other is not None:
        contenders["mamba-ssm"] = lambda **a: other(**a)
    with torch.no_grad():
        y_ref = ref(**{k: v.float() for k, v in ins.items()})
    rows = []
    for name, fn in contenders.items():
        with torch.no_grad():
            err = float((fn(**ins).float() - y_ref).abs().max() / y_ref.abs().max())
        if not err <= tol:
            console.print(f"[bold red]{spec}: {name} is off by {err:.2e} (relative) from chunked fp32[/]")
            sys.exit(1)
        grads = {k: v.detach().requires_grad_(True) for k, v in ins.items()}
        fwd = timed(lambda: fn(**ins), device.type == "cuda", repeats)
        fwd_bwd = timed(lambda: fn(**grads).float().sum().backward(), device.type == "cuda", repeats)
        rows.append((name, err, fwd, fwd_bwd))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test; runs on CPU)")
    ap.add_argument("--specs", default="mamba2,mamba,hydra")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--tol", type=float, default=3e-2, help="max relative error vs chunked fp32")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if not cuda:
        dtype = torch.float32 if dtype == torch.bfloat16 else dtype  # the interpreter has no bf16 tl.dot
        if not args.quick:
            console.print("no GPU: run with TRITON_INTERPRET=1 and --quick (numbers mean nothing on CPU)")
            return 1
    for spec in args.specs.split(","):
        shape = (QUICK if args.quick else SHAPES)[spec]
        rows = bench(spec, shape, dtype, device, args.tol, 2 if args.quick else args.repeats)
        table = Table(title=f"{spec} {shape} {str(dtype).replace('torch.', '')} on "
                            f"{torch.cuda.get_device_name() if cuda else 'CPU (interpreter)'}")
        for col in ("contender", "rel. err", "fwd ms", "fwd+bwd ms", "peer/mixerc fwd", "peer/mixerc fwd+bwd"):
            table.add_column(col, justify="left" if col == "contender" else "right")
        base = rows[0]
        for name, err, f, fb in rows:
            table.add_row(name, f"{err:.1e}", f"{f:.3f}", f"{fb:.3f}", f"{f / base[2]:.2f}x", f"{fb / base[3]:.2f}x")
        console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
