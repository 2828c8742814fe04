"""Value ops that generate convolution kernels (not elementwise): their output dims and cost.

``s4d_kernel(log_dt, A_re_log, A_im, C_re, C_im)`` with attrs ``length`` (a named dim sized at
compile time) and ``disc`` (``zoh`` or ``bilinear``): the S4D kernel of a diagonal complex SSM kept
as ``n2`` conjugate pairs, ``K[..., t] = 2 Re sum_n Ct_n exp(t log Abar_n)`` for ``t < length``, with
``A = -exp(A_re_log) + i A_im``, ``Delta = exp(log_dt)``, ``B = 1`` (folded into C) and

- zoh: ``log Abar = Delta A``, ``Ct = C (exp(Delta A) - 1) / A``,
- bilinear: ``log Abar = log((1 + Delta A / 2) / (1 - Delta A / 2))``, ``Ct = C Delta / (1 - Delta A / 2)``

(docs/toeplitz.md, "The S4D kernel"). ``A_re_log, A_im, C_re, C_im`` share their last dim (the state pairs
``n2``); ``log_dt`` lacks it; the output has the union of the other dims, then ``length``.

A new kernel op is one entry in `KERNEL_OPS` plus its torch emission in `mixerc.codegen`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import sympy

from .dims import LENGTH, RESERVED, broadcast, fmt, symbol
from .errors import SpecError

DISCRETISATIONS = ("zoh", "bilinear")
S4D_ROLES = ("log_dt", "A_re_log", "A_im", "C_re", "C_im")


def _numel(dims) -> sympy.Expr:
    return sympy.Mul(*[symbol(d) for d in dims]) if dims else sympy.Integer(1)


def s4d_dims(node, args) -> tuple:
    where = node.where
    length, disc = node.attrs["length"], node.attrs["disc"]
    if disc not in DISCRETISATIONS:
        raise SpecError(f"s4d_kernel: disc={disc!r}; choose one of {', '.join(DISCRETISATIONS)}", where)
    for role, a in zip(S4D_ROLES, args):
        if a.dims is None:
            raise SpecError(f"s4d_kernel: {role} is a structured matrix, not a tensor", where)
        if LENGTH in a.dims:
            raise SpecError(f"s4d_kernel: {role} has dims {fmt(a.dims)}; the SSM parameters of a "
                            "convolution kernel cannot vary along the sequence dim 'l'", where)
    log_dt, *rest = args
    for role, a in zip(S4D_ROLES[1:], rest):
        if not a.dims:
            raise SpecError(f"s4d_kernel: {role} is a scalar; expected dims (..., n2) with the state "
                            "pairs last, e.g. 'h n2'", where)
    state = rest[0].dims[-1]
    for role, a in zip(S4D_ROLES[1:], rest):
        if a.dims[-1] != state:
            raise SpecError(f"s4d_kernel: {role} has dims {fmt(a.dims)} but A_re_log has "
                            f"{fmt(rest[0].dims)}; A_re_log, A_im, C_re and C_im share their last "
                            "dim (the state pairs)", where)
    if state in log_dt.dims:
        raise SpecError(f"s4d_kernel: log_dt has dims {fmt(log_dt.dims)} including the state dim "
                        f"{state!r}; the step size is per channel, e.g. 'h'", where)
    dims = broadcast(*(a.dims for a in args))
    if length in dims:
        raise SpecError(f"s4d_kernel: length={length!r} is already a dim of the parameters "
                        f"({fmt(dims)}); name the kernel length differently", where)
    return tuple(d for d in dims if d != state) + (length,)


def s4d_cost(node, args) -> tuple[sympy.Expr, sympy.Expr]:
    """A complex exp and multiply-add per (channel, state pair, tap)."""
    state = args[1].dims[-1]
    work = _numel(node.dims) * symbol(state)
    reads = sum((_numel(a.dims) for a in args), sympy.Integer(0))
    return 12 * work, 4 * (reads + _numel(node.dims))


@dataclass(frozen=True)
class KernelOp:
    name: str
    arity: int
    dims: Callable  # (node, arg nodes) -> output dims; raises SpecError
    cost: Callable  # (node, arg nodes) -> (FLOPs, bytes)


KERNEL_OPS: dict[str, KernelOp] = {
    op.name: op for op in [KernelOp("s4d_kernel", 5, s4d_dims, s4d_cost)]
}


def check_length_name(length, where=None) -> str:
    if not isinstance(length, str) or not length.isidentifier() or length in RESERVED:
        raise SpecError(f"s4d_kernel: length={length!r} must name a dim sized at compile time "
                        "(e.g. length='k' with dims=dict(k=4096)), not b or l", where)
    return length
