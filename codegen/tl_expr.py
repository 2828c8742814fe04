"""Elementwise IR nodes as Triton expressions, and their vector-Jacobian products.

The Triton lowering fuses the elementwise nodes around a structure (its prologue and epilogue, see
`regions.py`) into the kernels. This module turns such a set of nodes into Triton source lines:

- `emit_forward`: one line per node, ``v_<node> = <expr>``, after loading every leaf from memory
  through a `Ctx` (which knows the tile's index expressions, masks and broadcasting);
- `emit_vjp`: reverse mode over the same nodes, ``g_<node>`` adjoints, ending in one adjoint per
  leaf. Used by the backward kernels, whose tiles are rows (positions) x one column dim; a value
  without one of those axes gets its adjoint summed along it.

Each line ends with ``# spec: file:line`` of the node it comes from.

Also what the templates call to write kernels: `signature` (a kernel's decorator and grouped,
one-per-line signature) and `HookCode` (what a hook binding returns at a hook point).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mixerc.ir import Graph
from mixerc.ir.ops import ELEMENTWISE, literal

# the ops the kernels compute: those with a Triton expression in the op table (ir/ops.py)
SUPPORTED = frozenset(name for name, op in ELEMENTWISE.items() if op.triton) | {"const"}

# helpers every generated module defines (kept in one place so the golden files show them once)
HELPERS = '''

@triton.jit
def _sigmoid(a):
    return 1.0 / (1.0 + tl.exp(-a))


@triton.jit
def _log1p(z):
    # log(1 + z) accurate for tiny z (Goldberg's trick): plain log(1 + z) loses every digit of z < eps
    w = 1.0 + z
    return tl.where(w == 1.0, z, tl.log(w) * z / (w - 1.0))


@triton.jit
def _dot(a, b, DOT: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    # operands in DOT (the input's half type, or the accumulation type), accumulated in ACC. fp16
    # operands are scaled by powers of two first (exact), each tile to a largest magnitude near 2^14:
    # an fp32 intermediate (the scores C.B, a state) above fp16's 65504 does not become inf, nor one
    # below its normal range (6.1e-5) lose its digits; bf16 has fp32's range
    if DOT == tl.float16:
        sa = _fp16_scale(a)
        sb = _fp16_scale(b)
        return tl.dot((a / sa).to(DOT), (b / sb).to(DOT), input_precision=PREC, out_dtype=ACC) * (sa * sb)
    return tl.dot(a.to(DOT), b.to(DOT), input_precision=PREC, out_dtype=ACC)


@triton.jit
def _fp16_scale(a):
    # the power of two that brings max|a| into (2^13, 2^14]; 1 for an all-zero tile
    m = tl.max(tl.max(tl.abs(a.to(tl.float32)), 1), 0)
    return tl.where(m > 0.0, tl.exp2(tl.maximum(tl.ceil(tl.log2(m)) - 14.0, -100.0)), 1.0)


@triton.jit
def _linear_combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2) for h -> a h + b: the first-order recurrence as an associative scan
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(a):
    # torch.nn.functional.softplus with threshold 20: the identity above it
    return tl.where(a > 20.0, a, tl.maximum(a, 0.0) + _log1p(tl.exp(-tl.abs(a))))
'''


class Ctx:
    """How a kernel addresses its tile: ``index[d]`` is the index expression of dim ``d`` (shaped
    for broadcasting when the tile has several axes); ``masks[d]`` the bounds mask along a dim the
    tile spans (a leaf without such dims is one scalar load, unmasked).

    ``full``: for tiles with a higher-rank part (the diagonal scan's (T, CB, N) decay next to its
    (T, CB) rows): ``(dim, index, masks, suffix)``: values with ``dim`` use that index and masks,
    and a row value used by one of them is broadcast with ``suffix`` (e.g. ``[:, :, None]``)."""

    def __init__(self, index: dict, masks: dict | None = None, full: tuple | None = None):
        self.index = {d: ix for d, ix in index.items() if d}
        self.masks = {d: mk for d, mk in (masks or {}).items() if d}
        self.full = full

    def _pick(self, dims):
        if self.full and self.full[0] in dims:
            return {**self.index, **self.full[1]}, self.full[2]
        return self.index, self.masks

    def offset(self, leaf: str, dims) -> str:
        index, _ = self._pick(dims)
        terms = [f"{index[d]} * L_{leaf}_s{d}" for d in dims if d in index and index[d] != "0"]
        # the scalar terms (batch, head: 64-bit where the batch index is) first, then the tile's
        # terms summed on their own, so the tile of offsets stays 32-bit
        scalar = [x for x in terms if "[" not in x]
        tile = [x for x in terms if "[" in x]
        if len(tile) > 1 and scalar:
            tile = [f"({' + '.join(tile)})"]
        return " + ".join(scalar + tile) if terms else "0"

    def mask_for(self, dims) -> str | None:
        _, masks = self._pick(dims)
        found = list(dict.fromkeys(masks[d] for d in dims if d in masks))
        return " & ".join(found) if found else None

    def expand(self, expr: str, src, dst) -> str:
        if (self.full and self.full[0] in dst and self.full[0] not in src
                and any(d in self.masks for d in src)):
            return f"({expr}){self.full[3]}"
        return expr


def _loc(graph: Graph, name: str) -> str:
    loc = graph.node(name).loc
    return f"  # spec: {loc}" if loc else ""


def _atom(expr: str) -> str:
    """``expr`` parenthesised when an operator would bind into it (a space outside brackets)."""
    depth = 0
    for ch in expr:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == " " and depth == 0:
            return f"({expr})"
    return expr


def value(graph: Graph, name: str, names: dict) -> str:
    n = graph.node(name)
    if n.op == "const":
        return literal(n.attrs["value"])
    return names[name]


def emit_forward(graph: Graph, nodes: list[str], leaves: list[str], ctx: Ctx, suffix: str = "",
                 inner: dict | None = None) -> tuple[list[str], dict]:
    """Lines computing every node of ``nodes`` (topological order) from ``leaves`` loaded through
    ``ctx``; ``inner`` maps values already in registers (the structure's output) to their variable.
    Returns (lines, {node: variable})."""
    names = dict(inner or {})
    lines = []
    for leaf in leaves:
        dims = graph.node(leaf).dims
        var = f"lf_{leaf}{suffix}"
        mask = ctx.mask_for(dims)
        guard = f", mask={mask}, other=1.0" if mask else ""
        lines.append(f"{var} = tl.load(L_{leaf}_ptr + {ctx.offset(leaf, dims)}{guard}).to(ACC)"
                     f"{_loc(graph, leaf)}")
        names[leaf] = var
    for name in nodes:
        n = graph.node(name)
        if n.op == "const":
            continue
        ops = [ctx.expand(value(graph, a, names), graph.node(a).dims, n.dims) for a in n.args]
        var = f"v_{name}{suffix}"
        expr = ELEMENTWISE[n.op].triton_expr([_atom(o) for o in ops], n.attrs)
        lines.append(f"{var} = {expr}{_loc(graph, name)}")
        names[name] = var
    return lines, names


def _vjp(graph: Graph, n, names: dict, g: str, expand=None) -> list[tuple[str, str]]:
    """(operand, contribution) pairs of d(node)/d(operand) * g (operands broadcast to the node's
    tile with ``expand``, as in the forward)."""
    a = [value(graph, x, names) for x in n.args]
    if expand is not None:
        a = [expand(v, graph.node(x).dims, n.dims) for v, x in zip(a, n.args)]
    a = [_atom(x) for x in a]
    return list(zip(n.args, ELEMENTWISE[n.op].triton_vjp(a, names[n.name], g, n.attrs)))


def emit_vjp(graph: Graph, nodes: list[str], names: dict, adjoints: dict[str, tuple[str, tuple]],
             wanted: list[str], reduce=None, expand=None) -> tuple[list[str], dict]:
    """Reverse mode over ``nodes`` seeded with ``adjoints`` ({node: (expression, its dims)}).
    Returns lines and {value: adjoint variable} for every name in ``wanted`` that received a
    contribution.

    ``reduce(expr, node_dims, arg_dims)``: sums a contribution down to the shape of an operand
    that has fewer tile axes than the node (broadcasting, undone). A node that does not vary along
    an axis has a derivative that does not either, so summing its adjoint early is exact. A seed
    is summed the same way down to its node's dims: the kernel's adjoint of the log-decay is per
    position, but a decay made of parameters only (RetNet's ``log_gamma: h``) has no position dim.
    ``expand``: a `Ctx.expand`, for tiles whose values have different ranks."""
    lines = []
    grads: dict[str, str] = {}
    for name, (expr, dims) in adjoints.items():
        if reduce is not None:
            expr = reduce(expr, dims, graph.node(name).dims)
        var = f"g_{name}"
        lines.append(f"{var} = {expr}")
        grads[name] = var
    for name in reversed(nodes):
        n = graph.node(name)
        if name not in grads or n.op == "const":
            continue
        for arg, contrib in _vjp(graph, n, names, grads[name], expand):
            if graph.node(arg).op == "const":
                continue
            if reduce is not None:
                contrib = reduce(contrib, n.dims, graph.node(arg).dims)
            var = f"g_{arg}"
            if arg in grads:
                lines.append(f"{var} = {var} + {contrib}{_loc(graph, name)}")
            else:
                lines.append(f"{var} = {contrib}{_loc(graph, name)}")
                grads[arg] = var
    return lines, {w: grads[w] for w in wanted if w in grads}


@dataclass
class HookCode:
    """What a hook binding returns to the template at a hook point: the spec's lines there
    (``lines``), the spec lines they come from quoted once each (``quotes``) and the results the
    template reads (``la``/``sc`` for a prologue, ``out`` for an epilogue)."""
    kind: str
    src: str
    quotes: list
    lines: list
    la: str = ""
    sc: str = ""
    out: str = ""
    init: list = field(default_factory=list)  # an accumulating hook's lines before its loop, and after it
    final: list = field(default_factory=list)


def signature(name: str, ptrs=(), sizes=(), strides=(), leaves=(), meta=()) -> str:
    """A kernel's decorator and signature, one parameter per line in groups, each after a comment:
    pointers, runtime sizes (never specialised: ``do_not_specialize``), strides (``"X:blhp"`` is
    X_sb, X_sl, X_sh, X_sp), the spec tensors of the fused hooks, and the meta-parameters."""
    sizes = [s for s in sizes if s]
    out = [f"@triton.jit(do_not_specialize={sizes!r})" if sizes else "@triton.jit", f"def {name}("]
    groups = [("pointers", list(ptrs)), ("sizes (runtime: never specialised)", sizes),
              ("strides in elements, <tensor>_s<dim>", [f"{t}_s{d}" for t, dims in (x.split(":") for x in strides)
                                                       for d in dims]),
              ("spec tensors of the fused hooks: pointer, then one stride per dim", list(leaves)),
              ("meta-parameters", [f"{m}: tl.constexpr" for m in meta])]
    for comment, names in groups:
        if names:
            out.append(f"    # {comment}")
            out += [f"    {n}," for n in names]
    return "\n".join(out + ["):"])
