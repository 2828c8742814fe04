"""Which elementwise nodes the Triton lowering fuses into a structure's kernels.

For every ``apply`` planned on ``triton``:

- the **prologue** computes the log-decay (``la``) and the value's scale (``sc``: the ``s`` of
  ``M @ (x * s)`` with ``s`` over (b, l, head), as Mamba's ``Δ``) from leaves read in the first
  kernel; its nodes are the supported elementwise nodes behind those two values whose dims lie in
  the decay's space (b, l, head[, state]);
- the **epilogue** turns the structure's output ``y`` into the spec's output (``+ D x``, a gate):
  every node downstream of the apply, when they are all supported elementwise nodes over the
  value's dims and end in the spec's output, plus the side branches feeding only them.

A node may be both fused and computed by torch (when something outside the kernel also uses it);
`torch_skip` lists the fused nodes torch no longer needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mixerc.ir import Graph

from .tl_expr import SUPPORTED


@dataclass
class Region:
    nodes: list[str] = field(default_factory=list)  # fused nodes, topological order
    leaves: list[str] = field(default_factory=list)  # values read from memory
    outputs: dict = field(default_factory=dict)  # role -> IR value (None: absent)
    space: tuple = ()  # dims of the region's elements


@dataclass
class Fusion:
    apply: str
    matrix: str
    x: str  # the value the structure multiplies (before the fused scale)
    reads: tuple  # other values the kernels read as they are (a structure's generators): torch computes them
    prologue: Region
    epilogue: Region | None  # None: the kernel returns y, torch does the rest


def _topo_index(graph: Graph) -> dict:
    return {n.name: i for i, n in enumerate(graph.topo())}


def grow(graph: Graph, roots, space: set, stop=()) -> list[str]:
    """Supported elementwise nodes reachable backwards from ``roots`` with dims inside ``space``."""
    out, stack, seen = [], list(roots), set(stop)
    while stack:
        name = stack.pop()
        if name in seen or name is None:
            continue
        seen.add(name)
        n = graph.node(name)
        if n.op in SUPPORTED and set(n.dims or ()) <= space:
            out.append(name)
            stack.extend(n.args)
    return out


def region(graph: Graph, nodes, outputs: dict, space: tuple, inner=()) -> Region:
    order = _topo_index(graph)
    nodes = sorted(set(nodes), key=order.get)
    members = set(nodes) | set(inner)
    leaves = []
    for name in nodes:
        for a in graph.node(name).args:
            if a not in members and a not in leaves and graph.node(a).op != "const":
                leaves.append(a)
    for role, v in outputs.items():  # an output that is a plain tensor is read as it is
        if v is not None and v not in members and v not in leaves and graph.node(v).op != "const":
            leaves.append(v)
    return Region(nodes, sorted(leaves, key=order.get), outputs, space)


def epilogue(graph: Graph, apply: str, xspace: tuple) -> Region | None:
    down, stack = [], [apply]
    while stack:
        for u in graph.users(stack.pop()):
            if u.name not in down:
                down.append(u.name)
                stack.append(u.name)
    if not down or graph.output not in down:
        return None
    space = set(xspace)
    if any(graph.node(d).op not in SUPPORTED or not set(graph.node(d).dims) <= space for d in down):
        return None
    side = []
    for d in down:
        for arg in graph.node(d).args:
            if arg != apply and arg not in down:
                side += [s for s in grow(graph, [arg], space, stop=down + [apply])
                         if all(u.name in set(down) | set(side) or u.name == d for u in graph.users(s))]
    return region(graph, down + side, {"out": graph.output}, xspace, inner=(apply,))


def torch_skip(graph: Graph, fusions: list[Fusion]) -> set[str]:
    """Fused nodes that nothing outside the kernels uses: torch need not compute them."""
    skip: set[str] = set()
    owners = set()
    for f in fusions:
        skip |= set(f.prologue.nodes)
        owners |= {f.apply, f.matrix}
        if f.epilogue is not None:
            skip |= set(f.epilogue.nodes)
    scale_muls = {graph.node(f.apply).args[1] for f in fusions if f.prologue.outputs["sc"] is not None}
    skip |= scale_muls
    for f in fusions:  # what the kernels read stays computed by torch
        skip -= {f.x, *f.reads, *f.prologue.leaves, *(f.epilogue.leaves if f.epilogue else ())}
    changed = True
    while changed:
        changed = False
        for name in list(skip):
            users = graph.users(name)
            if any(u.name not in skip and u.name not in owners for u in users) or (
                    name == graph.output and not any(f.epilogue for f in fusions)):
                skip.discard(name)
                changed = True
    return skip


def no_fusion(graph: Graph, apply: str) -> Fusion:
    """Nothing fused: the structure's kernels read values torch computed (the quasiseparable ones)."""
    m = graph.node(graph.node(apply).args[0])
    return Fusion(apply, m.name, graph.node(apply).args[1], (), Region(outputs={"la": None, "sc": None}), None)


def keep_last_epilogue(graph: Graph, fusions: list[Fusion]) -> list[Fusion]:
    """Only the application that comes last keeps its epilogue: one kernel writes the spec's output."""
    order = _topo_index(graph)
    last = max(fusions, key=lambda f: order[f.apply]) if fusions else None
    for f in fusions:
        if f is not last:
            f.epilogue = None
    return fusions
