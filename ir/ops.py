"""Elementwise ops: arity, sympy meaning (for formulas and symbolic checks) and cost per element.

A new elementwise op is one entry here plus one line in the torch emitter (`codegen/torch_emit.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import sympy


@dataclass(frozen=True)
class OpDef:
    name: str
    arity: int
    sym: Callable  # sympy expressions in -> sympy expression out (attrs as keywords)
    flops: int  # per output element, for the cost model


def _clamp(a, min=None, max=None):
    if min is not None:
        a = sympy.Max(a, min)
    if max is not None:
        a = sympy.Min(a, max)
    return a


ELEMENTWISE: dict[str, OpDef] = {
    op.name: op
    for op in [
        OpDef("add", 2, lambda a, b: a + b, 1),
        OpDef("sub", 2, lambda a, b: a - b, 1),
        OpDef("mul", 2, lambda a, b: a * b, 1),
        OpDef("div", 2, lambda a, b: a / b, 1),
        OpDef("neg", 1, lambda a: -a, 1),
        OpDef("exp", 1, sympy.exp, 1),
        OpDef("log", 1, sympy.log, 1),
        OpDef("softplus", 1, lambda a: sympy.log(1 + sympy.exp(a)), 3),
        OpDef("silu", 1, lambda a: a / (1 + sympy.exp(-a)), 4),
        OpDef("sigmoid", 1, lambda a: 1 / (1 + sympy.exp(-a)), 3),
        OpDef("clamp", 1, _clamp, 2),
        # group dim -> head dim (head i reads group i // (h // g)); a gather, no arithmetic
        OpDef("groups_to_heads", 1, lambda a: a, 0),
    ]
}
