"""Semiseparable matrices: ``M[i, j] = C_i . (prod_{k=j+1..i} A_k) . B_j`` for ``i >= j``, else 0.

Canonical form (what every lowering sees): ``x (b, l, H, P)``, ``B, C (b, l, G, N)`` with head
``i`` reading group ``i // (H // G)``, ``A_k = exp(log_decay_k)`` with ``log_decay``

- absent: *none* (linear attention),
- ``(b, l, H)``: *scalar* per head (Mamba-2 / SSD),
- ``(b, l, H, N)``: *diagonal* per state (Mamba-1),

and the state ``S (b, H, P, N)``: ``S_t = A_t * S_{t-1} + x_t (outer) B_t``, ``y_t = S_t C_t``.

A spec may leave out the head dim (``H = 1``), the value dim (``P = 1``, e.g. Mamba's ``x: b l d``
with ``d`` as the head) or the group dim of B and C (``G = 1``).
"""

from __future__ import annotations

import sympy

from ..dims import BATCH, GROUP_OF, LENGTH, fmt, symbol
from ..errors import SpecError
from .base import StructureDef

BL = (BATCH, LENGTH)


class Semiseparable(StructureDef):
    """``M[i, j] = C_i . (prod_{k=j+1..i} exp(log_decay_k)) . B_j`` for ``i >= j``, else 0.

    ``B``, ``C``: ``(b, l, n)``, ``(b, l, h, n)`` or ``(b, l, g, n)``; ``log_decay``: absent (no decay),
    ``(b, l, h)`` (a scalar per head) or ``(b, l, h, n)`` (diagonal, per state). Apply with ``M @ x``
    where ``x`` is ``(b, l, h, p)`` or ``(b, l, h)``.
    """

    name = "semiseparable"
    roles = ("C", "B", "log_decay")
    optional = frozenset({"log_decay"})
    lowerings = ("reference", "recurrent", "chunked", "scan", "triton")
    default = "scan"
    support = "i >= j, else 0"

    # -- dims ---------------------------------------------------------------------------------
    def layout(self, args, x, where, where_apply):
        C, B, decay = args["C"], args["B"], args.get("log_decay")
        for role, v in (("C", C), ("B", B)):
            if v.dims[:2] != BL or len(v.dims) not in (3, 4):
                raise SpecError(
                    f"semiseparable: {role} has dims {fmt(v.dims)}; expected (b, l, n), (b, l, h, n) "
                    "or (b, l, g, n): one vector of the state size per position", where)
        if B.dims != C.dims:
            raise SpecError(f"semiseparable: B has dims {fmt(B.dims)} but C has {fmt(C.dims)}; "
                            "they must match", where)
        n = B.dims[-1]
        bc_head = B.dims[2] if len(B.dims) == 4 else None
        if x.dims[:2] != BL:
            raise SpecError(f"semiseparable: applied to a value with dims {fmt(x.dims)}; expected "
                            "(b, l, ...): one vector per position", where_apply)
        if n in x.dims:
            raise SpecError(f"semiseparable: the state dim {n!r} of B/C also appears in the applied "
                            f"value {fmt(x.dims)}; use a different name for the state size", where_apply)

        kind, head = "none", None
        if decay is not None:
            extra = [d for d in decay.dims if d not in BL and d != n]
            if len(extra) > 1 or any(d in BL for d in decay.dims) and decay.dims[:2] != BL:
                raise SpecError(f"semiseparable: log_decay has dims {fmt(decay.dims)}; expected "
                                "(b, l, h) for a scalar decay per head or (b, l, h, n) for a "
                                "diagonal decay per state", where)
            kind = "diagonal" if n in decay.dims else "scalar"
            head = extra[0] if extra else None
        if bc_head is not None:
            if head is None:
                head = GROUP_OF.get(bc_head, bc_head)
                if head not in x.dims:
                    head = bc_head
            elif bc_head != head and GROUP_OF.get(bc_head) != head:
                raise SpecError(f"semiseparable: B/C are per {bc_head!r} but log_decay is per {head!r}; "
                                f"use the same head dim, or a group dim 'g' of heads 'h'", where)
        if head is not None and head not in x.dims:
            raise SpecError(f"semiseparable: head dim {head!r} (from B/C or log_decay) is missing "
                            f"from the applied value {fmt(x.dims)}", where_apply)
        value = [d for d in x.dims if d not in BL and d != head]
        if len(value) > 1:
            raise SpecError(f"semiseparable: the applied value has dims {fmt(x.dims)}; expected "
                            "(b, l, h, p) or (b, l, h): at most one dim besides the head", where_apply)
        return {
            "x": tuple(x.dims),
            "bc": tuple(B.dims),
            "decay_dims": tuple(decay.dims) if decay is not None else None,
            "head": head,
            "value": value[0] if value else None,
            "state": n,
            "group": bc_head,
            "decay": kind,
        }

    def check_sizes(self, layout, sizes, where):
        g, h = layout["group"], layout["head"]
        if g is not None and h is not None and g != h and sizes[h] % sizes[g] != 0:
            raise SpecError(f"semiseparable: {h}={sizes[h]} heads are not divisible into "
                            f"{g}={sizes[g]} groups; pick {g} dividing {h}", where)

    def describe(self, layout):
        return (f"{layout['decay']} decay; head {layout['head']!r}, value {layout['value']!r}, state "
                f"{layout['state']!r}, B/C per {layout['group'] or 'sequence'}")

    def state_dims(self, layout):
        return tuple(d for d in (BATCH, layout["head"], layout["value"], layout["state"]) if d)

    # -- math ---------------------------------------------------------------------------------
    def formula(self, layout):
        i, j, k, s = sympy.symbols("i j k s", integer=True)
        N = symbol(layout["state"])
        C, B, a = sympy.IndexedBase("C"), sympy.IndexedBase("B"), sympy.IndexedBase("a")
        if layout["decay"] == "none":
            decay = 1
        elif layout["decay"] == "scalar":
            decay = sympy.Product(a[k], (k, j + 1, i))
        else:
            decay = sympy.Product(a[k, s], (k, j + 1, i))
        return sympy.Sum(C[i, s] * decay * B[j, s], (s, 0, N - 1))

    def sizes(self, layout):
        """Symbolic canonical sizes (B, L, H, P, N, G)."""
        one = sympy.Integer(1)
        H = symbol(layout["head"]) if layout["head"] else one
        G = one if layout["group"] is None else (H if layout["group"] == layout["head"] else symbol(layout["group"]))
        P = symbol(layout["value"]) if layout["value"] else one
        return symbol(BATCH), symbol(LENGTH), H, P, symbol(layout["state"]), G

    def cost(self, layout, lowering):
        b, l, H, P, N, G = self.sizes(layout)
        Q = sympy.Symbol("Q", positive=True, integer=True)
        diag = layout["decay"] == "diagonal"
        word = 4  # bytes; the cost model counts fp32 compute
        io = word * b * l * (2 * H * P + 2 * G * N + (H * N if diag else H))
        if lowering == "reference":
            flops = 2 * b * H * l**2 * N + 2 * b * H * l**2 * P + (b * H * l**2 * N if diag else b * H * l**2)
            return flops, io + word * b * H * l**2 * (N if diag else 1)
        if lowering in ("recurrent", "scan"):
            # per step: decay, outer product add, output contraction
            return 5 * b * l * H * P * N, io + 2 * word * b * l * H * P * N
        if lowering in ("chunked", "triton") and diag:
            # two-level scan: every position's state inside its chunk, then chunk states passed on
            scan = 5 * b * l * H * P * N
            passing = 2 * b * H * (l / Q) * P * N
            off = 2 * b * l * H * P * N + b * l * H * N
            return scan + passing + off, io + word * b * l * H * P * N
        if lowering in ("chunked", "triton"):
            cb = 2 * b * l * Q * N * G
            intra = 2 * b * H * l * Q * P + b * H * l * Q
            states = 2 * b * H * l * P * N
            off = 2 * b * H * l * P * N
            passing = 2 * b * H * (l / Q) * P * N
            scores = word * b * H * l * Q
            return cb + intra + states + off + passing, io + scores + word * b * H * (l / Q) * P * N
        raise ValueError(f"semiseparable has no lowering {lowering!r}; known: {self.lowerings}")
