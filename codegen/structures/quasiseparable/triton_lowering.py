"""The Triton lowering of a quasiseparable matrix (Hydra): the semiseparable scalar-decay stage
templates (``templates/semiseparable/ss_scalar.py.j2``) rendered with the both-directions side of
their direction interface (``templates/quasiseparable/qs_dirs.py.j2``: both directions run in one
grid per kernel stage), plus the launchers of ``templates/quasiseparable/qs_scalar_launch.py.j2``.

No spec code is fused: the log-decays, scales and the diagonal are computed by torch and handed to
the kernels (they are (b, l, h) vectors, small next to x). The generated mixer calls
``k<k>_lowering`` with the torch lowerings' signature (`emit.emit_apply` writes that call).
"""

from __future__ import annotations

from mixerc.ir import BackendError, Graph
from mixerc.ir.dims import fmt

from ...tl_expr import HookCode, signature
from ...triton_common import pow2, render_parts
from ..base import TritonLowering, kernel_call_lines
from ..semiseparable.triton_lowering import NOTATION, check_limits, structure_dims
from .emit import emit_apply

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

    def prologue(b, l, h, tile, mask_l=None):
        """No spec code: the log-decay and the scale (b, l, H), computed by torch, loaded at the hook
        where batch, position and head are ``b``, ``l``, ``h`` (masked by ``mask_l``)."""
        load = f"tl.load({{}} + ({b} * L + {l}) * H + {h}, mask={mask_l}, other={{}}).to(ACC)"
        return HookCode("prologue", "computed by torch", [], [], la=load.format("LA_ptr", "0.0"),
                        sc=load.format("SCL_ptr", "1.0"))

    ctx = dict(
        p=p, src_loc=src_loc, opname=opname,
        title=f"{graph.node(sp.node).args[0]} @ value (quasiseparable: both directions), spec {graph.name!r} "
              f"({src_loc})",
        dirs="quasiseparable/qs_dirs.py.j2", sig=signature, prologue=prologue, epilogue=None, step=False,
        pro_params=["LA_ptr", "SCL_ptr"], epi_params=[], step_params=[],
        H=H, P=P, N=N, G=G, PP=PP, NP=NP, Q=Q,
        params=", ".join(TENSORS), tensors=", ".join(t for t in TENSORS if t not in OPTIONAL),
        schema=", ".join(f"Tensor{'?' if t in OPTIONAL else ''} {t}" for t in TENSORS),
        names=repr(TENSORS),
    )
    return render_parts(["semiseparable/ss_scalar.py.j2", "quasiseparable/qs_scalar_launch.py.j2"], ctx)


def call_lines(graph: Graph, k: int, sp) -> list[str]:
    """The generated mixer's lines for the application: the torch lowering's call, on the kernels."""
    return kernel_call_lines(graph, k, sp, emit_apply, f", config=None if configs is None else configs[{k}]")


class QuasiseparableTriton(TritonLowering):
    templates = "quasiseparable"
    notation = NOTATION + """
  NB           batch rows per direction: program rows i_b < NB run forward, the others backward"""

    def render(self, graph, sizes, k, sp, opname):
        return render(graph, sizes, k, sp, opname), {sp.node: call_lines(graph, k, sp)}


TRITON = QuasiseparableTriton()
