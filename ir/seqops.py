"""Sequence ops: ops whose value at a position reads other positions along the sequence axis.

``diff(x)`` (first difference), ``shift(x, k)`` and ``flip(x)``. Each works inside segments: a
packed batch (``seq_idx``, ``cu_seqlens``) holds several sequences in one row, and no op reads across
a boundary. For a position ``t`` of the segment ``[s, e]`` (first and last position):

- ``diff``:  ``y[t] = x[t] - x[t-1]`` for ``t > s``; ``y[s] = 0``;
- ``shift``: ``y[t] = x[t-k]`` when ``s <= t-k <= e``, else 0 (``k > 0`` reads back, ``k < 0`` ahead);
- ``flip``:  ``y[t] = x[s + e - t]`` (the segment reversed).

An entry gives the op's meaning at one position (sympy, over a function ``x(i)``), its adjoint
(the transpose's entry, which the tests check against autograd of the torch lowering), its cost,
how far back it reads (its decode window; ``None``: it reads ahead, so it has no step) and the
run-time function of `mixerc.rt.segments` the generated code calls. Every backend computes these
ops with torch (a Triton kernel reads the result). A new sequence op is one entry here plus its
function in `mixerc.rt.segments`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import sympy

AXIS = "l"  # the time axis: segments (seq_idx), varlen batches and step run along it; a 2-D spec adds one


def _diff(x, t, s, e):
    return x(t) - x(t - 1) if t > s else sympy.Integer(0)


def _diff_adj(g, t, s, e):
    """d/dx[t] of sum_u g[u] y[u]: g[t] (unless t = s) - g[t+1] (unless t = e)."""
    return (g(t) if t > s else 0) - (g(t + 1) if t < e else 0)


def _shift(x, t, s, e, k):
    return x(t - k) if s <= t - k <= e else sympy.Integer(0)


def _shift_adj(g, t, s, e, k):
    return _shift(g, t, s, e, -k)


def _flip(x, t, s, e):
    return x(s + e - t)


def op_attrs(attrs: dict) -> dict:
    """A node's attributes as its entry's functions take them (the axis is implied)."""
    return {k: v for k, v in attrs.items() if k != "axis"}


@dataclass(frozen=True)
class SeqOpDef:
    name: str
    sym: Callable  # (x: position -> expr, t, s, e, **attrs) -> the value at t of segment [s, e]
    adjoint: Callable  # (g, t, s, e, **attrs) -> entry t of the transpose applied to g
    flops: int  # per output element
    window: Callable  # attrs -> positions back its value reads (None: it reads ahead)
    doc: str


SEQUENCE_OPS: dict[str, SeqOpDef] = {
    op.name: op
    for op in [
        SeqOpDef("diff", _diff, _diff_adj, 1, lambda **a: 1,
                 "first difference along the sequence, 0 at the first position of every segment"),
        SeqOpDef("shift", _shift, _shift_adj, 0, lambda k: k if k >= 0 else None,
                 "the value k positions back (k < 0: ahead) in the same segment, else 0"),
        SeqOpDef("flip", _flip, lambda g, t, s, e: _flip(g, t, s, e), 0, lambda: None,
                 "every segment reversed"),
    ]
}


def windows(graph) -> list[tuple[str, int]]:
    """``[(node, window)]``: the sequence ops of ``graph`` that read only back, in topological order.
    Each carries the last ``window`` values of its operand as a state (its decode window), after the
    structures' states."""
    out = []
    for n in graph.topo():
        if n.op in SEQUENCE_OPS:
            w = SEQUENCE_OPS[n.op].window(**op_attrs(n.attrs))
            if w is not None and n.attrs["axis"] == AXIS:  # along another axis it reads the same step
                out.append((n.name, w))
    return out


def reads_ahead(graph) -> list[str]:
    """The sequence ops of ``graph`` that read later positions (a spec with one has no step)."""
    return [n.op for n in graph.topo() if n.op in SEQUENCE_OPS and n.attrs["axis"] == AXIS
            and SEQUENCE_OPS[n.op].window(**op_attrs(n.attrs)) is None]
