"""Elementwise ops: everything about one op in one entry.

An entry gives the op's arity, its sympy meaning (formulas, symbolic checks), its cost per element,
how constants fold, its torch and Triton expressions and its derivative. The DSL (`mx.<dsl>`), the
torch emitter, the Triton emitter (forward and the backward of fused prologues and epilogues),
constant folding and the cost model all read this table: a new op is one entry here.

Expressions are format strings over the operands ``{0}``, ``{1}`` (already broadcast) and the op's
attributes (``{min}``); a derivative is one string per operand over the operands, the op's value
``{v}`` and the adjoint ``{g}``. Triton expressions may call the jit helpers of
`codegen/tl_expr.py` (``_sigmoid``, ``_softplus``, ``_log1p``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import sympy


@dataclass(frozen=True)
class OpDef:
    name: str
    arity: int
    sym: Callable  # sympy expressions in -> sympy expression out (attrs as keywords)
    flops: int  # per output element, for the cost model
    fold: Callable | None = None  # floats in -> float out (attrs as keywords); None: never folded
    torch: str | None = None  # torch expression (None: the torch emitter lowers it itself)
    triton: str | Callable | None = None  # Triton expression, or (operands, attrs) -> it; None: not fused
    vjp: tuple[str, ...] | Callable = ()  # Triton: d(op)/d(operand k) * g per operand, or a function
    dsl: str | None = None  # the name of its `mx.` function (None: a Python operator, or its own function)
    tensors: bool = False  # its torch function takes tensors only: a constant operand becomes a 0-d tensor

    def torch_expr(self, ops: list[str], attrs: dict) -> str:
        return self.torch.format(*ops, **attrs)

    def triton_expr(self, ops: list[str], attrs: dict) -> str:
        return self.triton(ops, attrs) if callable(self.triton) else self.triton.format(*ops, **attrs)

    def triton_vjp(self, ops: list[str], value: str, g: str, attrs: dict) -> list[str]:
        if callable(self.vjp):
            return self.vjp(ops, value, g, attrs)
        return [d.format(*ops, v=value, g=g, **attrs) for d in self.vjp]


def literal(v: float) -> str:
    """A float as source that evaluates to it in generated torch and Triton code alike (``inf`` and
    ``nan`` have no literal: ``float("inf")``)."""
    v = float(v)
    if math.isnan(v):
        return 'float("nan")'
    if math.isinf(v):
        return 'float("inf")' if v > 0 else 'float("-inf")'
    return repr(v)


def _sym_clamp(a, min=None, max=None):
    if min is not None:
        a = sympy.Max(a, min)
    if max is not None:
        a = sympy.Min(a, max)
    return a


_min, _max = min, max  # the clamp functions' keywords shadow them


def _fold_clamp(a, min=None, max=None):
    return _min(_max(a, -math.inf if min is None else min), math.inf if max is None else max)


def _tl_clamp(ops, attrs):
    expr = ops[0]
    if attrs.get("min") is not None:
        expr = f"tl.maximum({expr}, {literal(attrs['min'])})"
    if attrs.get("max") is not None:
        expr = f"tl.minimum({expr}, {literal(attrs['max'])})"
    return expr


def _tl_clamp_vjp(ops, value, g, attrs):
    conds = [f"({ops[0]} {cmp} {literal(attrs[k])})" for k, cmp in (("min", ">="), ("max", "<="))
             if attrs.get(k) is not None]
    return [f"tl.where({' & '.join(conds) or 'True'}, {g}, 0.0)"]


def _logsigmoid(a):
    return -math.log1p(math.exp(-a)) if a > -30 else a - math.log1p(math.exp(a))


# maximum/minimum: where the operands tie, each gets half the adjoint, as in torch
_TIE = "tl.where({0} == {1}, 0.5 * {g}, 0.0)"

ELEMENTWISE: dict[str, OpDef] = {
    op.name: op
    for op in [
        OpDef("add", 2, lambda a, b: a + b, 1, lambda a, b: a + b, "{0} + {1}", "{0} + {1}", ("{g}", "{g}")),
        OpDef("sub", 2, lambda a, b: a - b, 1, lambda a, b: a - b, "{0} - {1}", "{0} - {1}", ("{g}", "-{g}")),
        OpDef("mul", 2, lambda a, b: a * b, 1, lambda a, b: a * b, "{0} * {1}", "{0} * {1}",
              ("{g} * {1}", "{g} * {0}")),
        OpDef("div", 2, lambda a, b: a / b, 1, lambda a, b: a / b, "{0} / {1}", "{0} / {1}",
              ("{g} / {1}", "-{g} * {v} / {1}")),
        OpDef("neg", 1, lambda a: -a, 1, lambda a: -a, "-{0}", "-{0}", ("-{g}",)),
        OpDef("exp", 1, sympy.exp, 1, math.exp, "torch.exp({0})", "tl.exp({0})", ("{g} * {v}",), dsl="exp"),
        OpDef("log", 1, sympy.log, 1, math.log, "torch.log({0})", "tl.log({0})", ("{g} / {0}",), dsl="log"),
        OpDef("softplus", 1, lambda a: sympy.log(1 + sympy.exp(a)), 3,
              lambda a: a if a > 20 else math.log1p(math.exp(a)), "F.softplus({0})", "_softplus({0})",
              ("{g} * _sigmoid({0})",), dsl="softplus"),
        OpDef("silu", 1, lambda a: a / (1 + sympy.exp(-a)), 4, lambda a: a / (1 + math.exp(-a)), "F.silu({0})",
              "{0} * _sigmoid({0})", ("{g} * (_sigmoid({0}) * (1.0 + {0} * (1.0 - _sigmoid({0}))))",), dsl="silu"),
        OpDef("sigmoid", 1, lambda a: 1 / (1 + sympy.exp(-a)), 3, lambda a: 1 / (1 + math.exp(-a)),
              "torch.sigmoid({0})", "_sigmoid({0})", ("{g} * {v} * (1.0 - {v})",), dsl="sigmoid"),
        OpDef("clamp", 1, _sym_clamp, 2, _fold_clamp, "torch.clamp({0}, min={min!r}, max={max!r})", _tl_clamp,
              _tl_clamp_vjp),
        OpDef("abs", 1, sympy.Abs, 1, abs, "torch.abs({0})", "tl.abs({0})",
              ("tl.where({0} > 0, {g}, tl.where({0} < 0, -{g}, 0.0))",), dsl="abs"),
        OpDef("tanh", 1, sympy.tanh, 4, math.tanh, "torch.tanh({0})", "2.0 * _sigmoid(2.0 * {0}) - 1.0",
              ("{g} * (1.0 - {v} * {v})",), dsl="tanh"),
        OpDef("relu", 1, lambda a: sympy.Max(a, 0), 1, lambda a: _max(a, 0.0), "torch.relu({0})",
              "tl.maximum({0}, 0.0)", ("tl.where({0} > 0, {g}, 0.0)",), dsl="relu"),
        OpDef("square", 1, lambda a: a ** 2, 1, lambda a: a * a, "torch.square({0})", "{0} * {0}",
              ("2.0 * {0} * {g}",), dsl="square"),
        OpDef("sqrt", 1, sympy.sqrt, 1, math.sqrt, "torch.sqrt({0})", "tl.sqrt({0})", ("{g} / (2.0 * {v})",),
              dsl="sqrt"),
        OpDef("logsigmoid", 1, lambda a: -sympy.log(1 + sympy.exp(-a)), 3, _logsigmoid, "F.logsigmoid({0})",
              "-_softplus(-{0})", ("{g} * _sigmoid(-{0})",), dsl="logsigmoid"),
        OpDef("maximum", 2, sympy.Max, 1, _max, "torch.maximum({0}, {1})", "tl.maximum({0}, {1})",
              ("tl.where({0} > {1}, {g}, " + _TIE + ")", "tl.where({1} > {0}, {g}, " + _TIE + ")"), "maximum", True),
        OpDef("minimum", 2, sympy.Min, 1, _min, "torch.minimum({0}, {1})", "tl.minimum({0}, {1})",
              ("tl.where({0} < {1}, {g}, " + _TIE + ")", "tl.where({1} < {0}, {g}, " + _TIE + ")"), "minimum", True),
        # group dim -> head dim (head i reads group i // (h // g)); a gather: the emitters lower it
        OpDef("groups_to_heads", 1, lambda a: a, 0),
    ]
}
