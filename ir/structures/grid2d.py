"""The 2-D (Roesser) state space model over a grid of two sequence axes (``seq_axes=("v", "l")``).

Per batch row, head, value channel and state, with zero states before the first row and column:

    h1[v,t] = exp(log_a1[v,t]) h1[v,t-1] + a2[v,t] h2[v,t-1] + scale1[v,t] x[v,t] B1[v,t]
    h2[v,t] = a3[v,t] h1[v-1,t] + exp(log_a4[v,t]) h2[v-1,t] + scale2[v,t] x[v,t] B2[v,t]
    y[v,t]  = h1[v,t] . C1[v,t] + h2[v,t] . C2[v,t]

Canonical form (what every lowering sees): ``x (b, V, L, H, P)``, ``B1, C1, B2, C2 (b, V, L, G, N)``
(head ``i`` reads group ``i // (H // G)``), the four transition coefficients per head ``(.., H)`` or
per state ``(.., H, N)``, the scales ``(.., H)``; size-1 axes broadcast (a coefficient constant over
the grid is LTI). The state along ``l`` is the last column, ``(b, 2, V, H, P, N)``: ``h1`` then ``h2``.
docs/grid2d.md derives the matrix over the flattened grid (index ``v * L + t``) as a sum over monotone
lattice paths.
"""

from __future__ import annotations

import sympy

from ..dims import BATCH, GROUP_OF, fmt, symbol
from ..errors import SpecError
from .base import StructureDef

COEFFICIENTS = ("log_a1", "a2", "a3", "log_a4")
SCALES = ("scale1", "scale2")


class Grid2d(StructureDef):
    """The 2-D SSM over a ``(v, l)`` grid (Roesser form; spec ``@mx.spec(seq_axes=("v", "l"))``):
    ``h1[v,t] = exp(log_a1) h1[v,t-1] + a2 h2[v,t-1] + scale1 x B1``, ``h2[v,t] = a3 h1[v-1,t] +
    exp(log_a4) h2[v-1,t] + scale2 x B2``, ``y = h1 . C1 + h2 . C2``.

    ``B1, C1, B2, C2``: ``(b, v, l, g, n)`` or ``(b, v, l, h, n)``; ``log_a1, a2, a3, log_a4``: per head
    ``(b, v, l, h)`` or per state ``(b, v, l, h, n)`` (or constant over the grid: ``(h)``, ``(h, n)``);
    ``a2=None`` / ``a3=None``: no coupling, ``log_a1`` / ``log_a4`` absent: factor 1; ``scale1``,
    ``scale2``: ``(b, v, l, h)`` or ``(b, v, l)``, absent: 1. Apply with ``M @ x``, ``x`` of dims
    ``(b, v, l, h, p)`` or ``(b, v, l, h)``.
    """

    name = "grid2d"
    roles = ("C1", "B1", "C2", "B2") + COEFFICIENTS + SCALES
    optional = frozenset(COEFFICIENTS + SCALES)
    lowerings = ("reference", "recurrent", "grid", "fft2", "triton")
    default = "grid"
    support = "v' <= v and t' <= t, else 0"
    grid_axes = 2
    unsegmented = ("fft2", "triton")  # a segment start breaks the convolution; the kernels read no seq_idx

    def layout(self, args, x, where, where_apply):
        lead = tuple(x.dims[:3])
        if len(x.dims) not in (4, 5) or lead[0] != BATCH:
            raise SpecError(f"grid2d: applied to a value with dims {fmt(x.dims)}; expected (b, v, l, h, p) or "
                            "(b, v, l, h): the batch, the two sequence axes, then a head dim", where_apply)
        head = x.dims[3]
        value = x.dims[4] if len(x.dims) == 5 else None
        bc = args["B1"].dims
        for role in ("C1", "B1", "C2", "B2"):
            d = args[role].dims
            if d[:3] != lead or len(d) != 5 or d[3] not in (head, *[g for g, h in GROUP_OF.items() if h == head]):
                raise SpecError(f"grid2d: {role} has dims {fmt(d)}; expected {fmt(lead + (head, 'n'))} or "
                                f"{fmt(lead + ('g', 'n'))}: a state vector per grid cell and head (or group)", where)
            if d != bc:
                raise SpecError(f"grid2d: {role} has dims {fmt(d)} but B1 has {fmt(bc)}; B1, C1, B2 and C2 "
                                "share their dims", where)
        state = bc[4]
        if state in x.dims:
            raise SpecError(f"grid2d: the state dim {state!r} of B/C also appears in the applied value "
                            f"{fmt(x.dims)}; use a different name for the state size", where_apply)
        kinds = {}
        for role in COEFFICIENTS:
            if role not in args or args[role] is None:
                continue
            d = tuple(args[role].dims)
            grid = d[:3] == lead
            rest = d[3:] if grid else d
            if rest not in ((head,), (head, state)) or (not grid and any(a in d for a in lead)):
                raise SpecError(f"grid2d: {role} has dims {fmt(d)}; expected per head {fmt(lead + (head,))} or per "
                                f"state {fmt(lead + (head, state))}, or constant over the grid: "
                                f"{fmt((head,))} or {fmt((head, state))}", where)
            kinds[role] = ("state" if state in d else "head", grid)
        for role in SCALES:
            if role not in args or args[role] is None:
                continue
            d = tuple(args[role].dims)
            if d not in (lead, lead + (head,)):
                raise SpecError(f"grid2d: {role} has dims {fmt(d)}; expected {fmt(lead + (head,))} or "
                                f"{fmt(lead)}", where)
            kinds[role] = ("head" if head in d else "cell", True)
        return {"x": tuple(x.dims), "lead": lead, "head": head, "value": value, "state": state,
                "group": bc[3], "bc": tuple(bc), "coefficients": kinds,
                "dims": {r: tuple(args[r].dims) for r in kinds}}

    def check_sizes(self, layout, sizes, where):
        g, h = layout["group"], layout["head"]
        if g != h and sizes[h] % sizes[g] != 0:
            raise SpecError(f"grid2d: {h}={sizes[h]} heads are not divisible into {g}={sizes[g]} groups; pick "
                            f"{g} dividing {h}", where)

    def supports(self, lowering, layout):
        if lowering == "fft2":  # a 2-D convolution: every transition constant over the grid
            return all(not grid for role, (_, grid) in layout["coefficients"].items() if role in COEFFICIENTS)
        return lowering in self.lowerings

    def describe(self, layout):
        coef = ", ".join(f"{r} per {k}{'' if grid else ' (constant)'}" for r, (k, grid) in
                         layout["coefficients"].items()) or "no transitions"
        return (f"over {layout['lead'][1]} x {layout['lead'][2]}; head {layout['head']!r}, value "
                f"{layout['value']!r}, state {layout['state']!r}, B/C per {layout['group']}; {coef}")

    def state_dims(self, layout):
        return tuple(d for d in (BATCH, 2, layout["lead"][1], layout["head"], layout["value"], layout["state"])
                     if d is not None)

    def formula(self, layout):
        """``M[(v, t), (v', t')]`` for one head, channel and state: the sum over monotone lattice paths
        from ``(v', t')`` to ``(v, t)`` (docs/grid2d.md); written for the scalar case as the sum over
        the points where a path turns, with the transition weights as indexed symbols."""
        v, t, w, s = sympy.symbols("v t vp tp", integer=True)
        C1, C2, B1, B2 = (sympy.IndexedBase(n) for n in ("C1", "C2", "B1", "B2"))
        G = sympy.Function("Paths")  # Paths(a, c, ...): the lattice-path sum from h_c at (vp, tp) to h_a at (v, t)
        return sum(C[v, t] * G(a, c, v, t, w, s) * Bc[w, s]
                   for a, C in ((1, C1), (2, C2)) for c, Bc in ((1, B1), (2, B2)))

    def cost(self, layout, lowering):
        b, v, l = (symbol(d) for d in layout["lead"])
        H = symbol(layout["head"])
        P = symbol(layout["value"]) if layout["value"] else sympy.Integer(1)
        N = symbol(layout["state"])
        cells = b * v * l * H * P * N
        io = 4 * b * v * l * (2 * H * P + 4 * symbol(layout["group"]) * N + 6 * H)
        if lowering == "reference":
            return 4 * b * H * P * N * (v * l) ** 2, io + 4 * b * H * N * (2 * v * l) ** 2
        if lowering == "fft2":
            logs = sympy.log(4 * v * l, 2)
            return 10 * cells * logs, io + 8 * 4 * cells * 2
        return 14 * cells, io + 2 * 4 * cells  # recurrent, grid: a few multiply-adds per cell and state
