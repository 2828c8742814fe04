"""The Triton lowering of the 2-D (Roesser) SSM over a (v, l) grid: the forward and backward kernels of
``templates/grid2d/g2.py.j2`` and the launchers, config space and ``torch.library`` ops of
``templates/grid2d/g2_launch.py.j2``, rendered for the roles a spec gives (an absent coefficient or
scale generates no code).

No spec code is fused: the coefficients, scales, B and C are computed by torch and handed to the
kernels in the canonical grid layout. The generated mixer calls ``k<k>_lowering`` with the torch
lowerings' signature (`emit_apply` of this package writes that call). The schedule and the adjoint
recurrences are derived in docs/grid2d.md ("The triton lowering").
"""

from __future__ import annotations

from mixerc.ir import BackendError, Graph
from mixerc.ir.structures.grid2d import COEFFICIENTS, SCALES

from ...tl_expr import signature
from ...triton_common import MAX_DIM, pow2, render_parts
from ..base import TritonLowering, kernel_call_lines
from .emit import emit_apply

TENSORS = {"log_a1": "LA1", "a2": "A2", "a3": "A3", "log_a4": "LA4", "scale1": "S1", "scale2": "S2"}


def render(graph: Graph, sizes: dict, k: int, sp, opname: str) -> str:
    lay = sp.layout
    head, value, state, group = lay["head"], lay["value"], lay["state"], lay["group"]
    H, P, N = sizes[head], sizes[value] if value else 1, sizes[state]
    G = sizes[group] if group != head else H
    if pow2(P, 2) > MAX_DIM or pow2(N, 2) > MAX_DIM:
        raise BackendError(f"the triton lowering of grid2d holds value and state dims up to {MAX_DIM} in one tile "
                           f"({value or 'value'}={P}, {state}={N} given); use backend='grid'")
    roles = [r for r in COEFFICIENTS + SCALES if r in lay["coefficients"]]
    coefs = [TENSORS[r] for r in roles if r in COEFFICIENTS]
    src_loc = str(graph.node(sp.node).loc or graph.name)
    ins = ["X", "B1", "C1", "B2", "C2"] + [TENSORS[r] for r in roles]
    ctx = dict(
        p=f"k{k}_", src_loc=src_loc, opname=opname, sig=signature,
        title=f"{graph.node(sp.node).args[0]} @ value (grid2d over {lay['lead'][1]} x {lay['lead'][2]}), spec "
              f"{graph.name!r} ({src_loc})",
        H=H, P=P, N=N, G=G, NP=pow2(N, 2), PP=pow2(P, 2), roles=roles, T=TENSORS,
        per_state={r: lay["coefficients"][r][0] == "state" for r in roles},
        dcoefs=coefs, dcoef_ptrs=[f"D{t}_ptr" for t in coefs + [TENSORS[r] for r in roles if r in SCALES]],
        schema=[f"Tensor {t}" for t in ins] + ["Tensor? S0"],
        kwargs="".join(f"{r}, " for r in roles),
    )
    return render_parts(["grid2d/g2.py.j2", "grid2d/g2_launch.py.j2"], ctx)


def call_lines(graph: Graph, k: int, sp) -> list[str]:
    """The generated mixer's lines for the application: the torch lowering's call, on the kernels."""
    return kernel_call_lines(graph, k, sp, emit_apply, f", step=step, config=None if configs is None else configs[{k}]")


NOTATION = """  V, L         the grid's two sequence axes (variates, time), runtime sizes
  BP           value channels per program of the grid2d kernels (state tiles (BP, NP), NP: N padded)
  ST1, ST2     grid2d: the states h1, h2 of every cell (backward) or of the row above (forward)
  U1, U2       grid2d backward: what row v sends up to row v - 1 (a3 g2, exp(log_a4) g2), one row"""


class Grid2dTriton(TritonLowering):
    templates = "grid2d"
    notation = NOTATION

    def render(self, graph, sizes, k, sp, opname):
        return render(graph, sizes, k, sp, opname), {sp.node: call_lines(graph, k, sp)}


TRITON = Grid2dTriton()
