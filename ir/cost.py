"""Cost model: FLOPs and bytes of a graph under a lowering choice, as sympy expressions.

Sizes stay symbolic (``b``, ``l``, ``Q`` for the chunk size, and every named dim) until `evaluate`.
"""

from __future__ import annotations

import sympy

from .dims import symbol
from .graph import Graph
from .kernels import KERNEL_OPS
from .ops import ELEMENTWISE
from .seqops import SEQUENCE_OPS
from .structures import STRUCTURES

CHUNK = sympy.Symbol("Q", positive=True, integer=True)


def numel(dims) -> sympy.Expr:
    return sympy.Mul(*[symbol(d) for d in dims]) if dims else sympy.Integer(1)


def node_costs(graph: Graph, lowering: dict[str, str]) -> list[tuple[str, str, sympy.Expr, sympy.Expr]]:
    """``[(node, what, flops, bytes)]`` for every computing node; ``lowering`` maps apply nodes to
    lowering names."""
    rows = []
    for n in graph.topo():
        if n.op in ELEMENTWISE:
            flops = ELEMENTWISE[n.op].flops * numel(n.dims)
            reads = sum((numel(graph.node(a).dims) for a in n.args), sympy.Integer(0))
            rows.append((n.name, n.op, flops, 4 * (reads + numel(n.dims))))
        elif n.op in SEQUENCE_OPS:
            rows.append((n.name, n.op, SEQUENCE_OPS[n.op].flops * numel(n.dims), 8 * numel(n.dims)))
        elif n.op == "apply":
            m = graph.node(n.args[0])
            low = lowering[n.name]
            flops, nbytes = STRUCTURES[m.op].cost(n.attrs["layout"], low)
            rows.append((n.name, f"{m.op} [{low}]", flops, nbytes))
        elif n.op in KERNEL_OPS:
            flops, nbytes = KERNEL_OPS[n.op].cost(n, [graph.node(a) for a in n.args])
            rows.append((n.name, n.op, flops, nbytes))
    return rows


def total(graph: Graph, lowering: dict[str, str]) -> tuple[sympy.Expr, sympy.Expr]:
    rows = node_costs(graph, lowering)
    return (sympy.simplify(sum((r[2] for r in rows), sympy.Integer(0))),
            sympy.simplify(sum((r[3] for r in rows), sympy.Integer(0))))


def evaluate(expr: sympy.Expr, sizes: dict[str, int], chunk: int | None = None) -> float:
    subs = {symbol(k): v for k, v in sizes.items()}
    if chunk is not None:
        subs[CHUNK] = chunk
    value = sympy.sympify(expr).subs(subs)
    if value.free_symbols:
        names = ", ".join(sorted(str(v) for v in value.free_symbols))
        raise ValueError(f"cost.evaluate: no value for {names} (pass sizes for every dim, and chunk= "
                         "for the chunk size Q)")
    return float(value)
