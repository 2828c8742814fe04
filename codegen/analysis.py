"""Small questions about the IR graph that the emitters and the fusion analysis share."""

from __future__ import annotations

from mixerc.ir import Graph


def upstream(graph: Graph, nodes: list[str]) -> set[str]:
    """Every node that ``nodes`` read, directly or not (``nodes`` included)."""
    out, stack = set(), list(nodes)
    while stack:
        name = stack.pop()
        if name not in out:
            out.add(name)
            stack += graph.node(name).args
    return out


def fusable_addcmuls(graph: Graph) -> dict[str, tuple[str, str]]:
    """``add`` nodes with an operand ``mul`` of two tensors used only there:
    ``{add: (mul, other operand)}`` (``torch.addcmul`` takes no Python numbers)."""
    out = {}
    for n in graph.nodes_of("add"):
        for a, other in (n.args, n.args[::-1]):
            mul = graph.node(a)
            if (mul.op == "mul" and single_use(graph, a) and a != other
                    and all(graph.node(v).op != "const" for v in mul.args + (other,))):
                out[n.name] = (a, other)
                break
    return out


def fusable_skip(graph: Graph, apply: str, layout: dict, x: str) -> tuple[str, str, str] | None:
    """``(add, mul, D)`` when the apply's only use is ``add(apply, D * x)``, ``x`` the value the structure reads (before a
    fused scale), ``D`` over the head and value dims only, computed before the apply (the call reads it) and the
    product used nowhere else (Mamba's skip term ``D x``); the lowering adds it as it writes each output row."""
    users = graph.users(apply)
    if not single_use(graph, apply) or users[0].op != "add" or users[0].dims != graph.node(apply).dims:
        return None
    add = users[0]
    mul = graph.node(add.args[1] if add.args[0] == apply else add.args[0])
    if mul.op != "mul" or not single_use(graph, mul.name) or len(set(add.args)) != 2:
        return None
    order = {n.name: i for i, n in enumerate(graph.topo())}
    for d, v in (mul.args, mul.args[::-1]):
        node = graph.node(d)
        if (v == x and d != x and node.op != "const" and set(node.dims) <= {layout["head"], layout["value"]}
                and order[d] < order[apply]):
            return add.name, mul.name, d
    return None


def single_use(graph: Graph, name: str) -> bool:
    return len(graph.users(name)) == 1 and graph.output != name


def fusable_scale(graph: Graph, apply: str, layout: dict) -> tuple[str, str] | None:
    """``(x, s)`` when the applied value is ``x * s`` with ``s`` over (b, l, head) only and used
    nowhere else (Mamba-2's ``x * Δ``); the lowerings take ``x`` and ``s`` apart."""
    head = layout["head"]
    v = graph.node(graph.node(apply).args[1])
    if v.op != "mul" or not single_use(graph, v.name) or head is None:
        return None
    for val, sc in (v.args, v.args[::-1]):
        if graph.node(val).dims == v.dims and set(graph.node(sc).dims) == {"b", "l", head}:
            return val, sc
    return None
