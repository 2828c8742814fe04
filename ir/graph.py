"""The IR graph: a networkx DiGraph of `Node`s, one per value, edges from argument to user.

Node kinds (``Node.op``):
- ``seq``, ``param``: inputs; ``attrs["dims"]`` holds the declared dims (``param`` also its init).
- ``const``: a Python number, ``attrs["value"]``.
- elementwise ops from `ir.ops.ELEMENTWISE` (``add``, ``exp``, ``clamp``...).
- a structure constructor (``semiseparable``...) from `ir.structures.STRUCTURES`: a matrix, not a tensor.
- ``apply``: ``M @ x``; args ``(M, x)``. Shape inference stores the structure's layout in
  ``attrs["layout"]``.

Every node remembers the spec line it came from (`Loc`), so errors and generated code point back.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import networkx as nx

from .dims import BATCH, LENGTH, fmt


@dataclass(frozen=True)
class Loc:
    file: str
    line: int
    text: str = ""

    def __str__(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}"


@dataclass
class Node:
    name: str
    op: str
    args: tuple = ()
    attrs: dict = field(default_factory=dict)
    dims: tuple | None = None
    loc: Loc | None = None

    @property
    def where(self) -> str | None:
        return str(self.loc) if self.loc else None


class Graph:
    """A traced spec. ``inputs``/``params`` keep declaration order; ``output`` is the returned value."""

    def __init__(self, name: str, file: str | None = None, seq_axes: tuple = (LENGTH,)):
        self.name = name
        self.file = file
        self.seq_axes = tuple(seq_axes)  # the sequence axes, in layout order; the last is l
        self.g = nx.DiGraph()
        self.inputs: list[str] = []
        self.params: list[str] = []
        self.output: str | None = None
        self._order: dict[str, int] = {}

    # -- building -------------------------------------------------------------------------
    def add(self, node: Node) -> Node:
        if node.name in self.g:
            raise ValueError(f"duplicate IR value {node.name!r}")
        self._order[node.name] = len(self._order)
        self.g.add_node(node.name, node=node)
        for a in node.args:
            self.g.add_edge(a, node.name)
        if node.op == "seq":
            self.inputs.append(node.name)
        elif node.op == "param":
            self.params.append(node.name)
        return node

    def fresh(self, prefix: str = "v") -> str:
        i = sum(1 for n in self._order if n.startswith(prefix) and n[len(prefix):].isdigit())
        while f"{prefix}{i}" in self.g:
            i += 1
        return f"{prefix}{i}"

    def remove(self, name: str) -> None:
        self.g.remove_node(name)
        del self._order[name]
        for lst in (self.inputs, self.params):
            if name in lst:
                lst.remove(name)

    def replace_uses(self, old: str, new: str) -> None:
        """Point every user of ``old`` at ``new``."""
        for user in list(self.g.successors(old)):
            n = self.node(user)
            n.args = tuple(new if a == old else a for a in n.args)
            self.g.remove_edge(old, user)
            self.g.add_edge(new, user)
        if self.output == old:
            self.output = new

    # -- reading --------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        return self.g.nodes[name]["node"]

    def __contains__(self, name: str) -> bool:
        return name in self.g

    def topo(self) -> list[Node]:
        """Nodes in a deterministic topological order (ties broken by creation order)."""
        order = nx.lexicographical_topological_sort(self.g, key=lambda n: self._order[n])
        return [self.node(n) for n in order]

    def users(self, name: str) -> list[Node]:
        return [self.node(u) for u in sorted(self.g.successors(name), key=self._order.get)]

    def nodes_of(self, op: str) -> list[Node]:
        return [n for n in self.topo() if n.op == op]

    # -- printing -------------------------------------------------------------------------
    @property
    def lead(self) -> tuple:
        """The symbolic dims every input starts with: ``b`` and the sequence axes."""
        return (BATCH,) + self.seq_axes

    def to_text(self, sizes: dict | None = None) -> str:
        axes = "" if self.seq_axes == (LENGTH,) else f" (seq_axes {', '.join(self.seq_axes)})"
        lines = [f"graph {self.name}{axes}:"]
        for n in self.topo():
            attrs = {k: v for k, v in n.attrs.items() if k not in ("dims", "layout")}
            attr_s = "".join(f" {k}={v!r}" for k, v in sorted(attrs.items()) if v is not None)
            dims = fmt(n.dims, sizes) if n.dims is not None else "matrix"
            args = ", ".join(n.args)
            loc = f"   # {n.loc}" if n.loc else ""
            lines.append(f"  %{n.name}: {dims} = {n.op}({args}){attr_s}{loc}")
        lines.append(f"  return %{self.output}")
        return "\n".join(lines)

    def to_dot(self) -> str:
        out = [f'digraph "{self.name}" {{', "  rankdir=TB;", '  node [fontname="monospace"];']
        shapes = {"seq": "invhouse", "param": "cylinder", "const": "plaintext", "apply": "box3d"}
        for n in self.topo():
            dims = " ".join(n.dims) if n.dims is not None else "matrix"
            label = f"{n.name}\\n{n.op}\\n[{dims}]"
            shape = shapes.get(n.op, "box" if n.dims is not None else "doubleoctagon")
            out.append(f'  "{n.name}" [label="{label}", shape={shape}];')
        for a, b in self.g.edges:
            out.append(f'  "{a}" -> "{b}";')
        out.append(f'  "{self.output}" -> "return";')
        out.append("}")
        return "\n".join(out)

    def hash(self) -> str:
        return hashlib.sha256(self.to_text().encode()).hexdigest()[:16]
