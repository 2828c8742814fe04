"""The numerics matrix of issue 15: spec x lowering x dtype x decay strength x input scale, each cell
the worst error against fp64 (the same rounded inputs, the reference lowering in fp64) over the
output and every gradient (inputs and parameters), relative to that tensor's largest fp64 entry.

    TRITON_INTERPRET=1 python tests/faults/numerics_matrix.py [--quick]

Decay strength is the shift added to every dt input: -14 gives Δ·A near -1e-6 (softplus(dt - 14) is
about 8e-7), 0 ordinary, 20 and 80 strong, 1e4 the extreme (Δ·A near -1e4 for A = -1). A tensor whose
fp64 value does not fit the dtype (above 65504, or all of it below fp16's normal range 6.1e-5) is
not judged (marked in the cell count). The triton column runs in Triton's interpreter on CPU (fp16
and fp32; bf16 is refused there).
"""

from __future__ import annotations

import argparse
import itertools
import warnings

import torch

import mixerc as mx

SPECS = {
    "mamba2": (dict(h=2, p=8, n=8, g=1), lambda b, l: dict(x=(b, l, 2, 8), dt=(b, l, 2), B=(b, l, 1, 8),
                                                             C=(b, l, 1, 8))),
    "mamba": (dict(d=4, n=8), lambda b, l: dict(x=(b, l, 4), dt=(b, l, 4), B=(b, l, 8), C=(b, l, 8))),
    "hydra": (dict(h=2, p=8, n=8, g=1), lambda b, l: dict(
        x=(b, l, 2, 8), dt_fwd=(b, l, 2), dt_bwd=(b, l, 2), delta=(b, l, 2), B_fwd=(b, l, 1, 8),
        C_fwd=(b, l, 1, 8), B_bwd=(b, l, 1, 8), C_bwd=(b, l, 1, 8))),
}
FITS = {torch.float16: (6.2e-5, 3e4), torch.float32: (0.0, 1e37)}


def cell(spec, low, dtype, shift, scale, x_scale=None, dy_scale=1.0, b=2, l=37, seed=0):
    """``(worst relative error over y and every gradient, how many tensors were judged, which one was
    worst)``: B and C (both directions) scaled by ``scale``, x by ``x_scale`` (default ``scale``), the
    output's gradient by ``dy_scale``."""
    x_scale = scale if x_scale is None else x_scale
    dims, shapes = SPECS[spec]
    g = torch.Generator().manual_seed(seed)
    m = mx.compile(spec, dims=dims, backend=low, dtype=torch.float32, chunk_size=16)
    ref = mx.compile(spec, dims=dims, backend="reference", dtype=torch.float64)
    with torch.no_grad():  # A_log = 0 (A = -1): the shift alone sets the decay's strength
        m.A_log.zero_()
    ref.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    base = {}
    for k, s in shapes(b, l).items():
        t = torch.randn(*s, generator=g)
        base[k] = t + shift if k.startswith("dt") else t * (x_scale if k == "x" else scale if k[0] in "BC" else 1)
    ins = {k: v.to(dtype).requires_grad_() for k, v in base.items()}
    ins64 = {k: v.detach().double().requires_grad_() for k, v in ins.items()}
    y, y64 = m(**ins), ref(**ins64)
    dy = (torch.randn(y64.shape, generator=g, dtype=torch.float64) * dy_scale).to(dtype)
    y.backward(dy)
    y64.backward(dy.double())
    pairs = [("y", y, y64)] + [(k, ins[k].grad, ins64[k].grad) for k in base]
    pairs += [(n, p.grad, q.grad) for (n, p), (_, q) in zip(m.named_parameters(), ref.named_parameters())]
    lo, hi = FITS[dtype]
    worst, judged, where = 0.0, 0, ""
    for name, a, r in pairs:
        top = r.abs().max().item()
        if top == 0.0 or top < lo or top > hi:
            continue
        judged += 1
        err = ((a.double() - r).abs().max() / top).item()
        err = err if err == err else float("inf")  # NaN (a NaN or inf in the result) counts as worst
        if err > worst:
            worst, where = err, name
    return worst, judged, where


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer cells")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    shifts = [-14.0, 0.0, 20.0, 80.0, 1e4]
    scales = [1.0, 100.0] if args.quick else [0.01, 1.0, 100.0]
    print("| spec | lowering | dtype | " + " | ".join(f"dt{s:+g}" for s in shifts) + " |")
    print("|---|---|---|" + "---|" * len(shifts))
    for spec, low, dtype in itertools.product(SPECS, ["recurrent", "chunked", "triton"],
                                              [torch.float32, torch.float16]):
        if dtype == torch.float16 and low != "triton":
            continue  # the torch lowerings compute fp16 inputs in fp32: the fp32 row covers them
        row = []
        for shift in shifts:
            cells = [cell(spec, low, dtype, shift, sc) for sc in scales]
            worst = max(cells, key=lambda c: c[0])
            row.append(f"{worst[0]:.1e}" + (f" ({worst[2]})" if worst[0] > 1e-4 else ""))
        print(f"| {spec} | {low} | {str(dtype)[6:]} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
