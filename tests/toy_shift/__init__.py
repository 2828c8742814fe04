"""A toy structure added from outside mixerc through the public registration: a one-tap shift.

    M[i, j] = a_i  for j = i - 1, else 0        y_t = a_t * x_{t-1}

The state is the last value seen, ``x_{t-1}`` (b, h, p); ``initial_state`` is ``x_{-1}``; a segment
start (``seq_idx``) sees zero. This folder is the whole structure: the IR node (here), the lowering
package (here and `torch_lowering`), and `spec` using it; tests/test_toy_structure.py checks it.
"""

from __future__ import annotations

import sympy

import mixerc as mx
from mixerc.codegen.layout import from_canonical, initial_state, to_canonical
from mixerc.ir.dims import fmt, symbol


class Shift(mx.StructureDef):
    """``M[i, j] = a_i`` for ``j = i - 1``, else 0: ``y_t = a_t x_{t-1}``. ``a``: ``(b, l, h)``;
    apply to ``x`` ``(b, l, h, p)``."""

    name = "toy_shift"
    roles = ("a",)
    lowerings = ("reference", "recurrent", "chunked")
    default = "chunked"
    support = "j = i - 1, else 0"

    def layout(self, args, x, where, where_apply):
        a = args["a"]
        if len(a.dims) != 3 or tuple(a.dims[:2]) != ("b", "l"):
            raise mx.SpecError(f"toy_shift: a has dims {fmt(a.dims)}; expected (b, l, h)", where)
        if len(x.dims) != 4 or tuple(x.dims[:3]) != tuple(a.dims):
            raise mx.SpecError(f"toy_shift: applied to {fmt(x.dims)}; expected (b, l, {a.dims[2]}, p)", where_apply)
        return {"x": tuple(x.dims), "a": tuple(a.dims), "head": x.dims[2], "value": x.dims[3]}

    def state_dims(self, layout):
        return ("b", layout["head"], layout["value"])

    def formula(self, layout):
        i, j = sympy.symbols("i j", integer=True)
        return sympy.Piecewise((sympy.IndexedBase("a")[i], sympy.Eq(j, i - 1)), (0, True))

    def cost(self, layout, lowering):
        b, l, h, p = (symbol(d) for d in ("b", "l", layout["head"], layout["value"]))
        io = 4 * (2 * b * l * h * p + b * l * h)
        if lowering == "reference":
            return 2 * b * h * p * l**2, io + 4 * b * h * l**2
        return b * l * h * p, io


def emit_apply(graph, n, k, s, names, tag, alias, scale):
    """``_y{k}, _s{k} = alias.<lowering>(x, a, initial_state=..., seq_idx=seq_idx)`` on (b, l, H, P)."""
    lay = s.layout
    roles = dict(zip(graph.node(n.args[0]).attrs["roles"], graph.node(n.args[0]).args))
    cx, cs = ["b", "l", lay["head"], lay["value"]], ["b", lay["head"], lay["value"]]
    x = to_canonical(names[n.args[1]], lay["x"], cx)
    a = to_canonical(names[roles["a"]], lay["a"], cx[:3])
    out = [f"_y{k}, _s{k} = {alias}.{s.lowering}({x}, {a}, initial_state={initial_state(k, cs)}, seq_idx=seq_idx)"]
    if s.lowering != "materialize":
        out.append(f"{n.name} = {from_canonical(f'_y{k}', cx, lay['x'])}{tag}")
    return out


LOWERING = mx.register_structure(mx.StructureLowering(
    node=Shift(), torch_module=f"{__name__}.torch_lowering", alias="_toy", emit_apply=emit_apply))
