"""The generated lines that call a grid2d lowering (a torch one, or the Triton module's)."""

from __future__ import annotations

from mixerc.ir.structures.grid2d import COEFFICIENTS, SCALES

from ...layout import from_canonical, to_canonical


def emit_apply(graph, n, k, s, names, tag, alias, scale=None, fn=None, extra="") -> list[str]:
    """The generated lines of apply node ``n``: every operand in the canonical grid layout (missing
    axes as size-1 axes that broadcast), the call, the output and the state (h1, h2 stacked on axis 1)
    back in the spec's dims. ``fn``: the function called instead of ``alias.<lowering>`` (the Triton
    module's ``k<k>_lowering``, same signature); ``extra``: more keyword arguments of the call."""
    lay = s.layout
    m = graph.node(n.args[0])
    roles = dict(zip(m.attrs["roles"], m.args))
    _, V, L = lay["lead"]
    head, value, state = lay["head"], lay["value"], lay["state"]
    cx = ["b", V, L, head, value]
    cbc = ["b", V, L, lay["group"], state]
    out = [f"# {m.name}: grid2d over ({V}, {L}), lowering {s.lowering}" + (f"  spec: {m.loc}" if m.loc else ""),
           f"_x{k} = {to_canonical(names[n.args[1]], lay['x'], cx)}  # (b, V, L, H, P)"]
    args = [to_canonical(names[roles[r]], lay["bc"], cbc) for r in ("B1", "C1", "B2", "C2")]
    for r in COEFFICIENTS + SCALES:
        if r in roles:
            kind = lay["coefficients"][r][0]
            canon = ["b", V, L, head if kind != "cell" else None] + ([state] if kind == "state" else [])
            args.append(f"{r}={to_canonical(names[roles[r]], lay['dims'][r], canon)}")
    own = f"initial_states[{k}].unbind(1)"  # (h1, h2); the canonical state has a value axis (P = 1)
    own = own if value else f"tuple(s.unsqueeze(-2) for s in {own})"
    out.append(f"_i{k} = None if initial_states is None else {own}")
    chunk = f", chunk_size={s.chunk_size}" if s.lowering == "step" else ""
    seg = "" if fn else ", seq_idx=seq_idx"  # the Triton kernels take no segments (the runtime refuses them)
    out.append(f"_y{k}, _s{k} = {fn or f'{alias}.{s.lowering}'}(_x{k}, {', '.join(args)}, initial_state=_i{k}"
               f"{seg}{chunk}{extra})")
    if s.lowering == "materialize":  # _y{k} is M (b, H, V*L, V*L); nothing downstream runs
        return out
    out.append(f"{n.name} = {from_canonical(f'_y{k}', cx, lay['x'])}{tag}")
    out.append(f"_s{k} = torch.stack(_s{k}, 1)" + ("" if value else ".squeeze(-2)") + "  # (b, 2, V, H, P, N)")
    return out
