"""The lowering planner: which algorithm runs every structured-matrix application.

A `Plan` is plain data (printable, hashable into caches): the backend asked for, the lowering and
chunk size of every ``apply`` node, and its prologue (the elementwise nodes that only feed it; the
Triton lowering fuses them into the kernel) and epilogue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mixerc.ir import STRUCTURES, BackendError, Graph
from mixerc.ir.ops import ELEMENTWISE

# every lowering some structure has; a backend name picks that lowering in every structure
BACKENDS = ("auto",) + tuple(dict.fromkeys(low for s in STRUCTURES.values() for low in s.lowerings))
TORCH_BACKENDS = tuple(b for b in BACKENDS[1:] if b != "triton")
DEFAULT_CHUNK = {"scalar": 64, "none": 64, "diagonal": 64}


@dataclass
class StructurePlan:
    node: str  # the apply node
    structure: str
    lowering: str
    chunk_size: int | None
    layout: dict
    prologue: list[str] = field(default_factory=list)
    epilogue: list[str] = field(default_factory=list)


@dataclass
class Plan:
    backend: str
    structures: list[StructurePlan]

    def lowering_of(self) -> dict[str, str]:
        return {s.node: s.lowering for s in self.structures}

    def describe(self) -> str:
        lines = [f"backend: {self.backend}"]
        for s in self.structures:
            lay = s.layout
            chunk = f", chunk {s.chunk_size}" if s.lowering in ("chunked", "triton") else ""
            what = STRUCTURES[s.structure].describe(lay)
            lines.append(f"  {s.node}: {s.structure} ({what}) -> {s.lowering}{chunk}")
            lines.append(f"    prologue: {', '.join(s.prologue) or '-'}")
            lines.append(f"    epilogue: {', '.join(s.epilogue) or '-'}")
        return "\n".join(lines)

    def __str__(self):
        return self.describe()


def _prologue(graph: Graph, apply_name: str) -> list[str]:
    """Elementwise nodes that compute the operands of an apply node (and of its matrix)."""
    members: list[str] = []
    stack = list(graph.node(apply_name).args)
    mat = graph.node(graph.node(apply_name).args[0])
    stack += list(mat.args)
    seen = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        n = graph.node(name)
        if n.op in ELEMENTWISE or n.op == "const":
            members.append(name)
            stack.extend(n.args)
    order = {n.name: i for i, n in enumerate(graph.topo())}
    return sorted(members, key=order.get)


def _epilogue(graph: Graph, apply_name: str) -> list[str]:
    """Elementwise nodes downstream of an apply node up to the output."""
    out, stack, seen = [], [apply_name], set()
    while stack:
        for u in graph.users(stack.pop()):
            if u.name not in seen and u.op in ELEMENTWISE:
                seen.add(u.name)
                out.append(u.name)
                stack.append(u.name)
    order = {n.name: i for i, n in enumerate(graph.topo())}
    return sorted(out, key=order.get)


def plan(graph: Graph, backend: str = "auto", chunk_size: int | None = None) -> Plan:
    """Pick a lowering for every structure. ``auto``: each structure's ``default`` (the runtime
    turns ``auto`` into ``triton`` for CUDA tensors when every structure has that lowering). A named
    backend must be a lowering of every structure in the spec."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise BackendError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    structures = []
    for a in graph.nodes_of("apply"):
        m = graph.node(a.args[0])
        sdef = STRUCTURES[m.op]
        lowering = sdef.default if backend == "auto" else backend
        if lowering not in sdef.lowerings:
            raise BackendError(f"{m.op} has no {lowering!r} lowering; available: "
                               f"{', '.join(sdef.lowerings)}")
        chunk = chunk_size or DEFAULT_CHUNK.get(a.attrs["layout"].get("decay"), 64)
        structures.append(StructurePlan(a.name, m.op, lowering, int(chunk), a.attrs["layout"],
                                        _prologue(graph, a.name), _epilogue(graph, a.name)))
    return Plan(backend, structures)
