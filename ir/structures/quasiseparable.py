"""Quasiseparable matrices (Hydra): a strictly lower semiseparable part, a strictly upper one and
a diagonal, each with its own generators.

    M = shift(SS_fwd) + flip · shift(SS_bwd) · flip + diag(δ)

    M[i, j] = C_{i-1}   . B_j   (Π_{k=j+1..i-1} a_k)   s_j     for i > j   (lower; C read one row up)
    M[i, j] = C'_{i+1} . B'_j  (Π_{k=i+1..j-1} a'_k)  s'_j    for i < j   (upper; C read one row down)
    M[i, i] = δ_i

``SS`` is the semiseparable matrix of `semiseparable.py` on the columns scaled by ``s`` (Mamba-2's
Δ), built from (C, B, log_decay); ``SS_bwd`` the same from the primed generators on the reversed
sequence. ``shift`` moves rows down by one (row 0 becomes zero), so neither triangle touches the
diagonal, which comes from δ alone (Hwang et al., "Hydra: Bidirectional State Space Models Through
Generalized Matrix Mixers", 2024, §3; goombalab/hydra). Every generator is given in the original
time order. Rows read the lower part through the causal state after position i-1 and the upper
part through the anti-causal state after position i+1: both are semiseparable applications, which
is how every lowering computes them.

Layouts follow `Semiseparable`: B, C of each direction ``(b, l[, g|h], n)`` (both directions the
same), log-decays none / ``(b, l, h)`` scalar / ``(b, l, h, n)`` diagonal (both the same kind),
scales ``(b, l[, h])``, the diagonal any subset of the applied value's dims. Non-causal: no state
carries across calls, so there is no ``step`` and no ``initial_state``.
"""

from __future__ import annotations

import sympy

from ..dims import BATCH, LENGTH, fmt, symbol
from ..errors import SpecError
from .base import StructureDef
from .semiseparable import Semiseparable

PAIRS = (("C", "C_bwd"), ("B", "B_bwd"), ("log_decay", "log_decay_bwd"), ("scale", "scale_bwd"))


class Quasiseparable(StructureDef):
    """Hydra's matrix: ``shift(SS_fwd) + flip · shift(SS_bwd) · flip + diag(diag)``.

    ``M[i, j] = C_{i-1} . B_j (Π_{k=j+1..i-1} exp(log_decay_k)) scale_j`` for ``i > j``, the same
    with the ``_bwd`` generators and ``C_bwd_{i+1}``, ``Π_{k=i+1..j-1}`` for ``i < j``, and
    ``diag_i`` on the diagonal. Every generator is in the original time order; dims as
    `semiseparable` (both directions alike), ``scale`` ``(b, l[, h])``. Non-causal: no step.
    """

    name = "quasiseparable"
    roles = ("C", "B", "log_decay", "scale", "C_bwd", "B_bwd", "log_decay_bwd", "scale_bwd", "diag")
    optional = frozenset({"log_decay", "scale", "log_decay_bwd", "scale_bwd", "diag"})
    lowerings = ("reference", "recurrent", "chunked", "scan", "triton")
    default = "scan"

    def layout(self, args, x, where, where_apply):
        for fwd, bwd in PAIRS[2:]:
            if (fwd in args) != (bwd in args):
                given, missing = (fwd, bwd) if fwd in args else (bwd, fwd)
                raise SpecError(f"quasiseparable: {given} is given but {missing} is not; give both "
                                "directions or neither", where)
        for role_f, role_b in PAIRS:
            if role_f in args and args[role_f].dims != args[role_b].dims:
                raise SpecError(f"quasiseparable: {role_f} has dims {fmt(args[role_f].dims)} but {role_b} "
                                f"has {fmt(args[role_b].dims)}; both directions must have the same dims", where)
        ss = Semiseparable()
        fwd = ss.layout({"C": args["C"], "B": args["B"], "log_decay": args.get("log_decay")}, x, where, where_apply)
        bwd = ss.layout({"C": args["C_bwd"], "B": args["B_bwd"], "log_decay": args.get("log_decay_bwd")},
                        x, where, where_apply)
        if fwd != bwd:  # same dims, so only the head inference can differ; kept as a guard
            raise SpecError("quasiseparable: the two directions give different layouts", where)
        lay = dict(fwd)
        head = lay["head"]
        scale = args.get("scale")
        if scale is not None:
            extra = [d for d in scale.dims if d not in (BATCH, LENGTH, head)]
            if scale.dims[:2] != (BATCH, LENGTH) or extra:
                raise SpecError(f"quasiseparable: scale has dims {fmt(scale.dims)}; expected (b, l) or "
                                f"(b, l, {head or 'h'}): one factor per position (and head), as Mamba-2's Δ",
                                where)
        diag = args.get("diag")
        if diag is not None and any(d not in x.dims for d in diag.dims):
            raise SpecError(f"quasiseparable: diag has dims {fmt(diag.dims)}, not all among the applied "
                            f"value's {fmt(x.dims)}; the diagonal multiplies that value elementwise", where)
        lay["scale_dims"] = tuple(scale.dims) if scale is not None else None
        lay["diag_dims"] = tuple(diag.dims) if diag is not None else None
        return lay

    def supports(self, lowering, layout):
        # the triton kernels are the scalar-decay SSD ones; a diagonal decay runs on torch
        return lowering in self.lowerings and not (lowering == "triton" and layout["decay"] == "diagonal")

    def check_sizes(self, layout, sizes, where):
        Semiseparable().check_sizes(layout, sizes, where)

    def describe(self, layout):
        return Semiseparable().describe(layout) + ("; diagonal" if layout["diag_dims"] else "")

    def state_dims(self, layout):
        return None  # non-causal

    def formula(self, layout):
        """``M[i, j]`` for every (i, j) as a Piecewise of the two triangles and the diagonal."""
        i, j, k, s = sympy.symbols("i j k s", integer=True)
        N = symbol(layout["state"])
        scalar = layout["decay"] == "scalar"

        def part(C, B, a, w, row, lo, hi):
            if layout["decay"] == "none":
                decay = 1
            else:
                decay = sympy.Product(a[k] if scalar else a[k, s], (k, lo, hi))
            sc = w[j] if layout["scale_dims"] else 1
            return sympy.Sum(C[row, s] * decay * B[j, s], (s, 0, N - 1)) * sc

        base = {n: sympy.IndexedBase(n) for n in ("C", "B", "a", "w", "Cb", "Bb", "ab", "wb", "d")}
        lower = part(base["C"], base["B"], base["a"], base["w"], i - 1, j + 1, i - 1)
        upper = part(base["Cb"], base["Bb"], base["ab"], base["wb"], i + 1, i + 1, j - 1)
        diag = base["d"][i] if layout["diag_dims"] else 0
        return sympy.Piecewise((lower, i > j), (upper, i < j), (diag, True))

    def cost(self, layout, lowering):
        ss = Semiseparable()
        one = ss.cost(layout, "chunked" if lowering == "triton" else lowering)
        b, l, H, P, _, _ = ss.sizes(layout)
        diag = 2 * b * l * H * P
        if lowering in ("chunked", "triton") and layout["decay"] != "diagonal":
            # both directions share the intra-chunk (Q x Q) @ (Q x P) product
            Q = sympy.Symbol("Q", positive=True, integer=True)
            shared = 2 * b * H * l * Q * P
            return 2 * one[0] - shared + diag, 2 * one[1] - 4 * b * l * H * P
        return 2 * one[0] + diag, 2 * one[1]
