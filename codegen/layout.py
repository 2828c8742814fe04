"""How generated code views IR values: named dims as tensor axes, a structure's canonical layout
(b, l, H, P), and the name of a value (a constant's literal, or its node's name).

Shared by the torch and Triton emitters and by every structure's lowering package.
"""

from __future__ import annotations

from mixerc.ir import STRUCTURES, Graph
from mixerc.ir.ops import literal  # one rule for torch and Triton code (inf and nan included)


def _permuted(expr: str, src: tuple, order: list) -> str:
    """``expr`` (dims ``src``) permuted to the dims ``order`` (same names)."""
    if list(src) == list(order):
        return expr
    return f"{expr}.permute({', '.join(str(src.index(d)) for d in order)})"


def align(expr: str, src: tuple, dst: tuple) -> str:
    """``expr`` with dims ``src`` viewed so that it broadcasts against dims ``dst`` (``src`` a
    subset of ``dst``): a permute when the order differs, ``None`` axes where dims are missing."""
    if src == dst or not src:
        return expr
    expr = _permuted(expr, src, [d for d in dst if d in src])
    index = [":" if d in src else "None" for d in dst]
    while index and index[0] == "None":  # leading axes broadcast on their own
        index.pop(0)
    if all(i == ":" for i in index):
        return expr
    return f"{expr}[{', '.join(index)}]"


def to_canonical(expr: str, src: tuple, canon: list) -> str:
    """View dims ``src`` in the canonical order ``canon`` (None entries: size-1 axes)."""
    out = _permuted(expr, src, [d for d in canon if d is not None and d in src])
    for axis, d in enumerate(canon):
        if d is None or d not in src:
            out = f"{out}.unsqueeze({axis})"
    return out


def from_canonical(expr: str, canon: list, dst: tuple) -> str:
    """Inverse of `to_canonical`: drop size-1 axes and permute to ``dst``."""
    kept = tuple(d for d in canon if d is not None and d in dst)
    out = expr
    for axis in reversed([i for i, d in enumerate(canon) if d is None or d not in dst]):
        out = f"{out}.squeeze({axis})"
    return _permuted(out, kept, list(dst))


def structure_operand(graph: Graph, name: str) -> bool:
    """A constant a structure reads (``log_decay=-0.3``): the lowerings index it as a tensor, so the
    generated code holds it in a 0-d tensor variable of the node's name, not as a literal."""
    return graph.node(name).op == "const" and any(u.op in STRUCTURES for u in graph.users(name))


def value_name(graph: Graph, name: str) -> str:
    """How generated code names an IR value: a constant by its literal (unless a structure reads it,
    `structure_operand`: then by a tensor variable), anything else by its node's name."""
    n = graph.node(name)
    return literal(n.attrs["value"]) if n.op == "const" and not structure_operand(graph, name) else name


def initial_state(k: int, canon: list) -> str:
    """The expression a lowering call reads application ``k``'s initial state with, in the canonical
    state dims ``canon`` (None entries: size-1 axes; the state's own dims are the others)."""
    own = tuple(d for d in canon if d)
    return f"None if initial_states is None else {to_canonical(f'initial_states[{k}]', own, canon)}"


def final_state(k: int, canon: list) -> list[str]:
    """The line that turns ``_s{k}``, the final state in canonical dims ``canon``, back into the
    state's own dims (none when they are the same)."""
    back = from_canonical(f"_s{k}", canon, tuple(d for d in canon if d))
    return [] if back == f"_s{k}" else [f"_s{k} = {back}"]


def apply_lines(graph: Graph, n, k: int, s, names: dict, tag: str, what: str, args: str) -> list[str]:
    """The common shape of a structure's generated call (for `emit_apply` of the lowering modules):
    the applied value as ``_x{k}`` in the canonical (b, l, H, P) layout, ``_y{k}, _s{k} = <args>``
    (args: the call, reading ``_x{k}``), and the output back in the value's own dims (not when
    materialising: then ``_y{k}`` is M)."""
    lay = s.layout
    m = graph.node(n.args[0])
    cx = ["b", "l", lay["head"], lay["value"]]
    out = [f"# {m.name}: {what}, lowering {s.lowering}" + (f"  spec: {m.loc}" if m.loc else ""),
           f"_x{k} = {to_canonical(names[n.args[1]], lay['x'], cx)}  # (b, l, H, P)",
           f"_y{k}, _s{k} = {args}"]
    if s.lowering != "materialize":
        out.append(f"{n.name} = {from_canonical(f'_y{k}', cx, lay['x'])}{tag}")
    return out
