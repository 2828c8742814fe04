"""The Triton lowering of a quasiseparable matrix (Hydra): the scalar-decay SSD kernels of
`templates/ss_scalar.py.j2` rendered with ``qs=True``, which runs both directions in one grid per
kernel stage (see the template's ``dirs`` block), plus the launchers of
`templates/qs_scalar_launch.py.j2`.

No spec code is fused: the log-decays, scales and the diagonal are computed by torch and handed to
the kernels (they are (b, l, h) vectors, small next to x). The generated mixer calls
``k<k>_lowering`` with the `codegen.qs_torch` lowering signature (`qs_torch.emit_apply` writes
that call).
"""

from __future__ import annotations

from mixerc.ir import BackendError, Graph
from mixerc.ir.dims import fmt

from .structures.quasiseparable import emit_apply
from .layout import value_name
from .triton_common import ENV, check_limits, pow2, structure_dims

TENSORS = ["X", "B", "C", "LA", "SC", "B2", "C2", "LA2", "SC2", "runs"]
OPTIONAL = {"LA", "SC", "LA2", "SC2", "runs"}


def render(graph: Graph, sizes: dict, k: int, sp, opname: str) -> str:
    lay = sp.layout
    if lay["decay"] == "diagonal":
        raise BackendError(f"the triton lowering of a quasiseparable matrix takes a scalar decay per head "
                           f"or none; log_decay has dims {fmt(lay['decay_dims'])} (diagonal): use "
                           "backend='chunked'")
    H, P, N, G = structure_dims(sizes, lay)
    PP, NP = pow2(P), pow2(N)
    Q = sp.chunk_size
    check_limits(lay, P, N, Q, False)
    p = f"k{k}_"
    src_loc = str(graph.node(sp.node).loc or graph.name)
    space = {"chunk": [16, 32, 64, 128, 256], "BP": [16, 32, 64, 128], "BS": [256, 512, 1024, 2048],
             "BN": [16, 32, 64], "BN_dbc": [16, 32, 64, 128], "num_warps": [2, 4, 8],
             "num_warps_bwd": [2, 4, 8], "num_stages": [1, 2, 3]}
    config = {"chunk": Q, "BP": min(64, PP), "BS": 1024, "BN": 16, "BN_dbc": 64, "num_warps": 8,
              "num_warps_bwd": 8, "num_stages": 2}
    load = "tl.load({} + (i_b * L + t) * H + i_h, mask=m, other={}).to(ACC)"
    ctx = dict(
        p=p, qs=True, src_loc=src_loc, template="ss_scalar.py.j2", opname=opname,
        title=f"{graph.node(sp.node).args[0]} @ value (quasiseparable: both directions), spec {graph.name!r} "
              f"({src_loc})",
        pro_args="LA_ptr, SCL_ptr, ", pro_src="computed by torch", pro_lines=[],
        la=load.format("LA_ptr", "0.0"), sc=load.format("SCL_ptr", "1.0"),
        epilogue=False, epi_args="", epi_src="none", epi_lines=[],
        H=H, P=P, N=N, G=G, PP=PP, NP=NP, space=space, config=config,
        params=", ".join(TENSORS), tensors=", ".join(t for t in TENSORS if t not in OPTIONAL),
        schema=", ".join(f"Tensor{'?' if t in OPTIONAL else ''} {t}" for t in TENSORS),
        names=repr(TENSORS),
    )
    code = ENV.get_template("ss_scalar.py.j2").render(**ctx)
    return code + ENV.get_template("qs_scalar_launch.py.j2").render(**ctx)


def call_lines(graph: Graph, k: int, sp) -> list[str]:
    """The generated mixer's lines for the application: the torch lowering's call, on the kernels."""
    names = {n.name: value_name(graph, n.name) for n in graph.topo()}
    n = graph.node(sp.node)
    return emit_apply(graph, n, k, sp, names, f"  # {fmt(n.dims)}", None, fn=f"k{k}_lowering")
