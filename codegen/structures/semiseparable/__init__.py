"""The semiseparable structure's lowering package: torch lowerings in `torch_lowering` (reference,
recurrent, chunked, materialize), the Triton kernels in ``templates/semiseparable/``."""

from __future__ import annotations

from mixerc.ir.structures import Semiseparable

from ...layout import final_state, from_canonical, initial_state, to_canonical
from ..base import StructureLowering
from .triton_lowering import TRITON


def emit_apply(graph, n, k, s, names, tag, alias, scale=None, skip=None) -> list[str]:
    """The generated lines of apply node ``n``; ``skip``: D of a fused skip term ``y + D x`` (the scan's)."""
    lay = s.layout
    m = graph.node(n.args[0])
    roles = dict(zip(m.attrs["roles"], m.args))
    x = n.args[1] if scale is None else scale[0]
    head, value, state, group = lay["head"], lay["value"], lay["state"], lay["group"]
    cx = ["b", "l", head, value]
    cbc = ["b", "l", group, state]
    out = [f"# {m.name}: {s.structure}, {lay['decay']} decay, lowering {s.lowering}"
           + (f"  spec: {m.loc}" if m.loc else "")]
    call = [f"{to_canonical(names[x], lay['x'], cx)}",
            f"{to_canonical(names[roles['B']], lay['bc'], cbc)}",
            f"{to_canonical(names[roles['C']], lay['bc'], cbc)}"]
    if "log_decay" in roles:
        ddims = lay["decay_dims"]
        cd = ["b", "l", head] + ([state] if lay["decay"] == "diagonal" else [])
        expr = to_canonical(names[roles["log_decay"]], ddims, cd)
        if "b" not in ddims or "l" not in ddims:
            expr = f"{expr}.expand(_x{k}.shape[0], _x{k}.shape[1], {', '.join(['-1'] * (len(cd) - 2))})"
        call.append(expr)
    else:
        call.append("None")
    sdims = ["b", head, value, state]
    out.append(f"_x{k} = {call[0]}  # (b, l, H, P)")
    chunk = f", chunk_size={s.chunk_size}" if s.lowering in ("chunked", "scan") else ""
    if scale is not None:
        sdim = graph.node(scale[1]).dims
        chunk += f", x_scale={to_canonical(names[scale[1]], sdim, ['b', 'l', head])}"
    if skip is not None:
        chunk += f", skip={to_canonical(names[skip], graph.node(skip).dims, cx)}"
    out.append(f"_y{k}, _s{k} = {alias}.{s.lowering}(_x{k}, {call[1]}, {call[2]}, {call[3]}, "
               f"initial_state={initial_state(k, sdims)}, seq_idx=seq_idx{chunk})")
    if s.lowering == "materialize":  # _y{k} is M (b, H, l, l); nothing downstream runs
        return out
    out.append(f"{n.name} = {from_canonical(f'_y{k}', cx, lay['x'])}{tag}")
    return out + final_state(k, sdims)


LOWERING = StructureLowering(
    node=Semiseparable(),
    torch_module=f"{__name__}.torch_lowering",
    alias="_ss",
    emit_apply=emit_apply,
    torch_helpers={f"{__name__}.native": "_ssn", f"{__name__}.native_c": "_ssc"},
    x_scale=True,
    skip=True,
    triton=TRITON,
)
