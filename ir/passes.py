"""Graph -> graph passes: shape inference, canonicalisation, verification.

Run in that order by `run_passes`. Each pass mutates the graph in place and returns it.
"""

from __future__ import annotations


import networkx as nx

from .dims import GROUP_OF, LENGTH, broadcast, fmt
from .errors import SpecError
from .graph import Graph, Node
from .kernels import KERNEL_OPS
from .ops import ELEMENTWISE
from .seqops import SEQUENCE_OPS
from .structures import STRUCTURES


def infer_shapes(graph: Graph) -> Graph:
    """Give every tensor node its named dims; structures get ``None`` (they are matrices) and each
    ``apply`` gets its structure's ``layout``."""
    for n in graph.topo():
        args = [graph.node(a) for a in n.args]
        _check_time_uses(n, args)
        if n.op in ("seq", "param"):
            n.dims = tuple(n.attrs["dims"])
        elif n.op == "const":
            n.dims = ()
        elif n.op == "groups_to_heads":
            (a,) = args
            g = n.attrs["group"]
            h = GROUP_OF[g]
            if g not in a.dims:
                raise SpecError(f"groups_to_heads: value has dims {fmt(a.dims)} without the group dim "
                                f"{g!r}", n.where)
            if h in a.dims:
                raise SpecError(f"groups_to_heads: value {fmt(a.dims)} already has the head dim {h!r}",
                                n.where)
            n.dims = tuple(h if d == g else d for d in a.dims)
        elif n.op in ELEMENTWISE:
            for a in args:
                if a.dims is None:
                    raise SpecError(f"{n.op}: a structured matrix can only be applied with '@', "
                                    "not used in elementwise arithmetic", n.where)
            dims = broadcast(*(a.dims for a in args), lead=graph.lead)
            for g, h in GROUP_OF.items():
                if g in dims and h in dims:
                    raise SpecError(
                        f"{n.op}: mixes group dim {g!r} and head dim {h!r} "
                        f"({' and '.join(fmt(a.dims) for a in args)}); wrap the grouped value in "
                        f"mx.groups_to_heads(...) first", n.where)
            n.dims = dims
        elif n.op in KERNEL_OPS:
            n.dims = KERNEL_OPS[n.op].dims(n, args)
        elif n.op in SEQUENCE_OPS:
            (a,) = args
            axis = n.attrs["axis"]
            if axis not in graph.seq_axes:
                raise SpecError(f"mx.{n.op}: axis={axis!r} is not a sequence axis of spec {graph.name!r} (its "
                                f"sequence axes: {', '.join(map(repr, graph.seq_axes))}; declare more with "
                                "@mx.spec(seq_axes=(...)))", n.where)
            if axis not in a.dims:
                raise SpecError(f"mx.{n.op}: value has dims {fmt(a.dims)} without the sequence axis "
                                f"{axis!r}: it is the same at every position, so there is nothing to "
                                f"{n.op} along it", n.where)
            n.dims = a.dims
        elif n.op in STRUCTURES:
            n.dims = None
        elif n.op == "apply":
            m, x = args
            if x.dims is None:
                raise SpecError("'@': the right operand must be a tensor, not another matrix", n.where)
            sdef = STRUCTURES[m.op]
            if sdef.grid_axes != len(graph.seq_axes):
                kind = {1: "a 1-D structure (it mixes along one sequence axis)",
                        2: "a 2-D structure (it mixes over a grid of two sequence axes)"}[sdef.grid_axes]
                raise SpecError(f"mx.{m.op} is {kind}, but spec {graph.name!r} declares "
                                f"seq_axes={graph.seq_axes!r}; "
                                + ("declare @mx.spec(seq_axes=('v', 'l')) for a 2-D spec" if sdef.grid_axes == 2
                                   else "a 2-D spec mixes with a 2-D structure (mx.grid2d)"), m.where or n.where)
            roles = {r: graph.node(a) for r, a in zip(m.attrs["roles"], m.args)}
            roles.update({a: m.attrs.get(a, d) for a, d in sdef.attrs.items()})  # constants
            n.attrs["layout"] = sdef.layout(roles, x, m.where or n.where, n.where or m.where)
            n.dims = x.dims
        else:
            raise SpecError(f"unsupported op {n.op!r}", n.where)
    return graph


def is_time(n: Node) -> bool:
    """A timestamp input (``mx.Seq(..., kind="time")``)."""
    return n.op == "seq" and n.attrs.get("kind") == "time"


def _check_time_uses(n: Node, args: list[Node]):
    """Timestamps reach the compute dtype only through ``mx.diff`` (their exact gaps)."""
    for a in args:
        if is_time(a) and n.op != "diff":
            use = f"mx.{n.op}" if n.op in ELEMENTWISE or n.op in SEQUENCE_OPS else f"'{n.op}'"
            raise SpecError(f"input {a.name!r} holds timestamps (mx.Seq(..., kind='time')) and is used by "
                            f"{use}; a spec reads timestamps only through mx.diff({a.name}), the gap to the "
                            "previous position, taken exactly before the cast to the compute dtype "
                            "(declare a plain mx.Seq for any other per-position value)", n.where)


def _fold(graph: Graph, n: Node) -> bool:
    """Constant folding of an elementwise node whose arguments are all constants."""
    if n.op not in ELEMENTWISE or not n.args:
        return False
    args = [graph.node(a) for a in n.args]
    if not all(a.op == "const" for a in args):
        return False
    vals = [a.attrs["value"] for a in args]
    fold = ELEMENTWISE[n.op].fold
    if fold is None:
        return False
    try:
        value = float(fold(*vals, **n.attrs))
    except (ValueError, ZeroDivisionError, OverflowError) as e:
        raise SpecError(f"{n.op} of constants {vals} is undefined ({e})", n.where) from None
    n.op, n.args, n.attrs = "const", (), {"value": value}
    for a in list(graph.g.predecessors(n.name)):
        graph.g.remove_edge(a, n.name)
    return True


def canonicalize(graph: Graph) -> Graph:
    """Constant folding, removal of identities (``x * 1``, ``x + 0``, ``--x``), common-subexpression
    elimination and dead-code elimination."""
    changed = True
    while changed:
        changed = False
        seen: dict[tuple, str] = {}
        for n in graph.topo():
            if n.name not in graph:
                continue
            if _fold(graph, n):
                changed = True
            args = [graph.node(a) for a in n.args]
            ident = None
            if n.op == "mul":
                ident = next((b for a, b in ((args[0], args[1]), (args[1], args[0]))
                              if a.op == "const" and a.attrs["value"] == 1.0 and b.dims == n.dims), None)
            elif n.op == "add":
                ident = next((b for a, b in ((args[0], args[1]), (args[1], args[0]))
                              if a.op == "const" and a.attrs["value"] == 0.0 and b.dims == n.dims), None)
            elif n.op == "neg" and args[0].op == "neg":
                ident = graph.node(args[0].args[0])
            if ident is not None:
                graph.replace_uses(n.name, ident.name)
                changed = True
                continue
            if n.op in ("seq", "param"):
                continue
            key = (n.op, n.args, tuple(sorted((k, repr(v)) for k, v in n.attrs.items())))
            if key in seen:
                graph.replace_uses(n.name, seen[key])
                changed = True
            else:
                seen[key] = n.name
        # dead-code elimination (inputs and params stay: they are the module's interface)
        live = {graph.output} | nx.ancestors(graph.g, graph.output)
        for n in list(graph.topo()):
            if n.name not in live and n.op not in ("seq", "param"):
                graph.remove(n.name)
                changed = True
    return graph


def verify_applied(graph: Graph) -> Graph:
    """Every structured matrix is applied (run before dead-code elimination would drop it)."""
    for n in graph.topo():
        if n.op in STRUCTURES and not graph.users(n.name):
            raise SpecError(f"{n.op} is built but never applied; apply it with 'M @ x' or remove it",
                            n.where)
    return graph


def verify_inputs(graph: Graph) -> Graph:
    """Declarations: per-position inputs start with ``b`` and the sequence axes (``b l``, or
    ``b v l`` for a spec with ``seq_axes=("v", "l")``); parameters have none of them."""
    lead = graph.lead
    for name in graph.inputs + graph.params:
        n = graph.node(name)
        dims = n.attrs["dims"]
        if n.op == "seq" and dims[:len(lead)] != lead:
            order = (f"; the sequence axes come in the declared order seq_axes={graph.seq_axes!r}"
                     if set(lead) <= set(dims) else "")
            raise SpecError(f"input {n.name!r} has dims {fmt(dims)}; a per-position input (mx.Seq) "
                            f"must start with '{' '.join(lead)}'{order}", n.where)
        if n.op == "param" and any(d in lead for d in dims):
            axes = " or ".join(f"{'length' if a == LENGTH else 'sequence axis'} {a!r}" for a in graph.seq_axes)
            raise SpecError(f"parameter {n.name!r} has dims {fmt(dims)}; parameters cannot have the "
                            f"batch 'b' or {axes} dims (use mx.Seq for per-position inputs)", n.where)
    return graph


def verify(graph: Graph, sizes: dict | None = None) -> Graph:
    """Check the contract the lowerings rely on (declarations are checked by `verify_inputs`, run first by
    `run_passes`); with ``sizes`` also that every dim is bound."""
    out = graph.node(graph.output)
    if out.dims is None:
        raise SpecError("the spec returns a structured matrix; apply it to a value with "
                        "'M @ x' and return the result", out.where)
    lead = graph.lead
    if out.dims[:len(lead)] != lead:
        raise SpecError(f"the spec returns a value with dims {fmt(out.dims)}; a mixer must return "
                        f"({', '.join(lead)}, ...): one vector per position", out.where)
    if not graph.nodes_of("apply"):
        raise SpecError("the spec applies no structured matrix (e.g. M = mx.semiseparable(...); "
                        "return M @ x): nothing to compile", out.where)
    if sizes is not None:
        for n in graph.topo():
            for d in n.dims or ():
                if d not in lead and d not in sizes:
                    raise SpecError(f"dim {d!r} (of {n.name!r}, dims {fmt(n.dims)}) has no size; pass "
                                    f"dims=dict({d}=...) to mx.compile, --dims {d}=... on the command "
                                    f"line, or give the spec default sizes with "
                                    f"@mx.spec(example_dims=dict({d}=...))", n.where)
        for n in graph.nodes_of("apply"):
            STRUCTURES[graph.node(n.args[0]).op].check_sizes(n.attrs["layout"], sizes, n.where)
    return graph


def run_passes(graph: Graph, sizes: dict | None = None) -> Graph:
    verify_inputs(graph)
    infer_shapes(graph)
    verify_applied(graph)
    canonicalize(graph)  # keeps every surviving node's dims (folds and identities preserve them)
    return verify(graph, sizes)
