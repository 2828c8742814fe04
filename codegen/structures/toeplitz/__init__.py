"""The Toeplitz structure's lowering package (convolutions): torch lowerings in `torch_lowering`
(reference, fft, direct, materialize) and the S4D kernel generator op ``s4d_kernel``."""

from __future__ import annotations

from mixerc.ir.structures import Toeplitz

from ...layout import align, apply_lines, to_canonical
from ..base import StructureLowering


def emit_apply(graph, n, k, s, names, tag, alias, scale=None) -> list[str]:
    """The generated lines of apply node ``n``.
    ``s.lowering`` may be ``materialize``: then ``_y{k}`` is M (b, H, l, l)."""
    lay = s.layout
    m = graph.node(n.args[0])
    roles = dict(zip(m.attrs["roles"], m.args))
    ck = ["b", None if lay["shared"] else lay["head"], lay["klen"]]
    kern = to_canonical(names[roles["kernel"]], lay["kernel"], ck)
    rev = to_canonical(names[roles["kernel_rev"]], lay["kernel"], ck) if "kernel_rev" in roles else "None"
    what = f"toeplitz, {'causal' if lay['causal'] else 'two-sided'}"
    return apply_lines(graph, n, k, s, names, tag, what,
                       f"{alias}.{s.lowering}(_x{k}, {kern}, {rev}, seq_idx=seq_idx)")


def emit_s4d_kernel(graph, n, names, sizes, tag, alias) -> list[str]:
    """The generated line of an ``s4d_kernel`` node: every argument viewed against the output's
    dims with the state pairs last (broadcasting does the rest)."""
    args = [graph.node(a) for a in n.args]
    state = args[1].dims[-1]
    space = tuple(n.dims[:-1]) + (state,)
    ops = [align(names[a.name], a.dims, space) for a in args]
    L = sizes[n.attrs["length"]]
    return [f"{n.name} = {alias}.s4d_kernel({', '.join(ops)}, {L}, {n.attrs['disc']!r}){tag}"]


LOWERING = StructureLowering(
    node=Toeplitz(),
    torch_module=f"{__name__}.torch_lowering",
    alias="_tp",
    emit_apply=emit_apply,
    step=None,
    value_ops={"s4d_kernel": emit_s4d_kernel},
)
