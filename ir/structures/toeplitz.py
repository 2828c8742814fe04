"""Toeplitz matrices: ``M[i, j] = k[i - j]`` (a convolution with the kernel ``k``).

- causal (``causal=True``): ``M[i, j] = k[i - j]`` for ``0 <= i - j < K``, else 0;
- two-sided (``causal=False``, with ``kernel_rev``): in addition ``M[i, j] = kernel_rev[j - i - 1]``
  for ``0 < j - i <= K``: the diagonal comes from ``k`` alone (the state-spaces/s4 ``bidirectional``
  convention, docs/toeplitz.md, "Two-sided convolution").

``K`` is the size of the kernel's last dim (a named dim sized at compile time, e.g. ``k``). A kernel
shorter than the sequence is zero beyond ``K``; a longer one is truncated to the sequence length.

Canonical form (what every lowering sees): ``x (b, l, H, P)`` and ``kernel (B, H, K)`` with ``B``
1 or b and ``H`` 1 when the kernel is shared across heads. The kernel's dims are ``(..., K)``: at
most one channel dim among the applied value's (usually the head ``h``) and optionally ``b``.

A convolution is time-invariant and needs the whole kernel, not a fixed-size state, to continue
a sequence: here the structure carries no recurrent state (no ``initial_state``, no ``step``).
"""

from __future__ import annotations

import sympy

from ..dims import BATCH, LENGTH, fmt, symbol
from ..errors import SpecError
from .base import StructureDef

BL = (BATCH, LENGTH)


class Toeplitz(StructureDef):
    """A convolution: ``M[i, j] = kernel[i - j]`` for ``0 <= i - j < K``, else 0 (``causal=True``);
    with ``causal=False`` also ``M[i, j] = kernel_rev[j - i - 1]`` for ``0 < j - i <= K`` (the
    state-spaces/s4 bidirectional convention: the diagonal comes from ``kernel``).

    ``kernel`` (and ``kernel_rev``, same dims): ``(..., K)``, its last dim a named kernel length
    (e.g. ``h k`` with ``dims=dict(k=...)``), the others at most one channel dim of the applied
    value (absent: shared). Shorter than the sequence: zero beyond; longer: truncated. Apply with
    ``M @ x``, ``x`` ``(b, l)``, ``(b, l, h)`` or ``(b, l, h, p)``. Lowerings ``fft`` (default),
    ``direct`` (O(l K), short kernels), ``reference``. No recurrent state: no ``step``.
    """

    name = "toeplitz"
    roles = ("kernel", "kernel_rev")
    optional = frozenset({"kernel_rev"})
    attrs = {"causal": True}
    lowerings = ("reference", "fft", "direct")
    default = "fft"
    stateless_reason = "is a convolution: it keeps no recurrent state"
    support = ("K = the kernel length; causal: kernel[i - j] for 0 <= i - j < K, else 0; two-sided: "
               "also kernel_rev[j - i - 1] for 0 < j - i <= K")

    # -- dims ---------------------------------------------------------------------------------
    def layout(self, args, x, where, where_apply):
        causal = args.get("causal", True)
        kernel, rev = args["kernel"], args.get("kernel_rev")
        if causal and rev is not None:
            raise SpecError("toeplitz: kernel_rev is given but causal=True; a causal matrix has no "
                            "upper part: drop kernel_rev or pass causal=False", where)
        if not causal and rev is None:
            raise SpecError("toeplitz: causal=False needs kernel_rev (the taps above the diagonal, "
                            "M[i, j] = kernel_rev[j - i - 1] for j > i)", where)
        if x.dims[:2] != BL or len(x.dims) > 4:
            raise SpecError(f"toeplitz: applied to a value with dims {fmt(x.dims)}; expected (b, l), "
                            "(b, l, h) or (b, l, h, p)", where_apply)
        kd = tuple(kernel.dims)
        if not kd or kd[-1] in BL:
            raise SpecError(f"toeplitz: kernel has dims {fmt(kd)}; its last dim must be a named "
                            "kernel-length dim (e.g. 'h k' with dims=dict(k=...)), not b or l", where)
        klen = kd[-1]
        if LENGTH in kd:
            raise SpecError(f"toeplitz: kernel has dims {fmt(kd)}; a kernel has no sequence dim 'l' "
                            "(M[i, j] depends on i - j only)", where)
        if klen in x.dims:
            raise SpecError(f"toeplitz: the kernel-length dim {klen!r} also appears in the applied "
                            f"value {fmt(x.dims)}; name the kernel length differently", where_apply)
        channels = [d for d in kd[:-1] if d != BATCH]
        if len(channels) > 1:
            raise SpecError(f"toeplitz: kernel has dims {fmt(kd)}; expected (k), (h, k) or (b, h, k): "
                            "at most one channel dim besides b", where)
        if channels and channels[0] not in x.dims:
            raise SpecError(f"toeplitz: kernel dim {channels[0]!r} is not a dim of the applied value "
                            f"{fmt(x.dims)}; the kernel's channel dim must be one of the value's", where_apply)
        if rev is not None and tuple(rev.dims) != kd:
            raise SpecError(f"toeplitz: kernel_rev has dims {fmt(rev.dims)} but kernel has {fmt(kd)}; "
                            "they must match", where)
        rest = [d for d in x.dims if d not in BL]
        head = channels[0] if channels else (rest[0] if rest else None)
        value = [d for d in rest if d != head]
        return {
            "x": tuple(x.dims),
            "kernel": kd,
            "klen": klen,
            "head": head,
            "value": value[0] if value else None,
            "shared": not channels,  # one kernel for every head
            "batched": BATCH in kd,  # one kernel per batch row
            "causal": bool(causal),
        }

    def describe(self, layout):
        per = "shared" if layout["shared"] else f"per {layout['head']!r}"
        return (f"{'causal' if layout['causal'] else 'two-sided'}, kernel length {layout['klen']!r} "
                f"{per}{', per batch row' if layout['batched'] else ''}; head {layout['head']!r}, "
                f"value {layout['value']!r}")

    def state_dims(self, layout):
        return None

    # -- math ---------------------------------------------------------------------------------
    def formula(self, layout):
        i, j = sympy.symbols("i j", integer=True)
        K = symbol(layout["klen"])
        k, kr = sympy.IndexedBase("kernel"), sympy.IndexedBase("kernel_rev")
        pieces = [(k[i - j], sympy.And(i - j >= 0, i - j < K))]
        if not layout["causal"]:
            pieces.append((kr[j - i - 1], sympy.And(j - i > 0, j - i <= K)))
        return sympy.Piecewise(*pieces, (0, True))

    def sizes(self, layout):
        """Symbolic canonical sizes (b, l, H, P, K, B)."""
        one = sympy.Integer(1)
        H = one if layout["shared"] or layout["head"] is None else symbol(layout["head"])
        Hx = symbol(layout["head"]) if layout["head"] else one
        P = symbol(layout["value"]) if layout["value"] else one
        return symbol(BATCH), symbol(LENGTH), Hx, P, symbol(layout["klen"]), H

    def cost(self, layout, lowering):
        b, l, H, P, K, Hk = self.sizes(layout)
        B = b if layout["batched"] else sympy.Integer(1)
        sides = 1 if layout["causal"] else 2
        word = 4
        io = word * (2 * b * l * H * P + sides * B * Hk * K)
        if lowering == "reference":  # build M per (kernel row, head), then a matmul per head
            return 2 * b * H * P * l**2, io + word * B * Hk * l**2
        if lowering == "direct":  # one multiply-add per tap and position
            return 2 * sides * b * H * P * l * K, io
        if lowering == "fft":  # rfft of x and of the kernel, a complex product, an irfft; n ~ 2l
            n = 2 * l
            fft = sympy.Rational(5, 2) * n * sympy.log(n, 2)
            return (2 * b * H * P * fft + B * Hk * fft + 3 * b * H * P * n,
                    io + word * 2 * (b * H * P + B * Hk) * n)
        raise ValueError(f"toeplitz has no lowering {lowering!r}; known: {self.lowerings}")
