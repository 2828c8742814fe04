"""The generated lines that call a quasiseparable lowering (torch or Triton: same signature)."""

from __future__ import annotations

from ...layout import apply_lines, to_canonical


def emit_apply(graph, n, k, s, names, tag, alias, scale=None, fn=None, extra="") -> list[str]:
    """The generated lines of apply node ``n``.
    ``s.lowering`` may be ``materialize``: then ``_y{k}`` is M (b, H, l, l). ``fn``: the function
    called instead of ``alias.<lowering>`` (the Triton module's, same signature); ``extra``: more
    keyword arguments of the call (``, config=...``)."""
    lay = s.layout
    m = graph.node(n.args[0])
    roles = dict(zip(m.attrs["roles"], m.args))
    head, value, state, group = lay["head"], lay["value"], lay["state"], lay["group"]
    cx = ["b", "l", head, value]
    cbc = ["b", "l", group, state]
    cd = ["b", "l", head] + ([state] if lay["decay"] == "diagonal" else [])

    def arg(role, canon, dims):
        if role not in roles:
            return "None"
        expr = to_canonical(names[roles[role]], dims, canon)
        if "b" not in dims or "l" not in dims:
            expr = f"{expr}.expand(_x{k}.shape[0], _x{k}.shape[1], {', '.join(['-1'] * (len(canon) - 2))})"
        return expr

    args = [f"_x{k}"]
    for suffix in ("", "_bwd"):
        args += [arg("B" + suffix, cbc, lay["bc"]), arg("C" + suffix, cbc, lay["bc"]),
                 arg("log_decay" + suffix, cd, lay["decay_dims"] or ()),
                 arg("scale" + suffix, ["b", "l", head], lay["scale_dims"] or ())]
    diag = "None" if "diag" not in roles else to_canonical(names[roles["diag"]], lay["diag_dims"], cx)
    chunk = f", chunk_size={s.chunk_size}" if s.lowering in ("chunked", "scan") else ""
    call = f"{fn or f'{alias}.{s.lowering}'}({', '.join(args)}, diag={diag}, seq_idx=seq_idx{chunk}{extra})"
    return apply_lines(graph, n, k, s, names, tag, f"{s.structure}, {lay['decay']} decay", call)
