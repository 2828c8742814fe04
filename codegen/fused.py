"""What every Triton lowering that fuses spec code shares: the spec lines a hook quotes, the kernel
parameters and launch keywords of fused leaves, and the backward kernel of a fused elementwise
region (`elementwise_bwd`, rendered from ``templates/elementwise.py.j2``)."""

from __future__ import annotations

import linecache
import re
import textwrap

from mixerc.ir import Graph

from .regions import Region
from .tl_expr import Ctx, emit_forward, emit_vjp, signature
from .triton_common import ENV


QUOTE_WIDTH = 104  # a quote lands inside a kernel, indented by up to 16 columns


def quotes(graph: Graph, nodes) -> list[str]:
    """The spec lines of some nodes quoted once each, in order: ``# src[mamba2.py:17]: <the line>``; a
    long line is wrapped onto ``#     `` continuation lines (they land indented, within 120 columns)."""
    out = []
    for loc in dict.fromkeys(graph.node(n).loc for n in nodes if graph.node(n).loc):
        text = linecache.getline(loc.file, loc.line).strip() if loc.file else ""
        out += textwrap.wrap(f"# src[{loc}]: {text or loc.text}", width=QUOTE_WIDTH, subsequent_indent="#     ",
                             break_long_words=False, break_on_hyphens=False)
    return out


def leaf_params(graph: Graph, leaves) -> list[str]:
    """Kernel parameters of the leaves, one each: pointer and one stride per named dim."""
    out = []
    for leaf in leaves:
        out.append(f"L_{leaf}_ptr")
        out += [f"L_{leaf}_s{d}" for d in graph.node(leaf).dims]
    return out


def leaf_kwargs(graph: Graph, leaves) -> str:
    """The leaves as keyword arguments of a launch (``L_dt_ptr=L_dt, L_dt_sb=L_dt.stride(0), ``)."""
    out = []
    for leaf in leaves:
        out.append(f"L_{leaf}_ptr=L_{leaf}")
        out += [f"L_{leaf}_s{d}=L_{leaf}.stride({i})" for i, d in enumerate(graph.node(leaf).dims)]
    return "".join(f"{a}, " for a in out)


def drop_dead(lines: list[str]) -> list[str]:
    """``lines`` without the assignments no later line reads (a recomputed forward value that no
    adjoint needs): kernels keep no unused local variable."""
    kept, needed = [], set()
    for line in reversed(lines):
        code = line.split("  #", 1)[0]
        target = re.match(r"(\w+) = (.*)", code)
        if target and target.group(1) not in needed:
            continue
        if target:
            needed.discard(target.group(1))
            code = target.group(2)
        needed |= set(re.findall(r"[A-Za-z_]\w*", code))
        kept.append(line)
    return kept[::-1]


def elementwise_bwd(graph: Graph, name: str, region: Region, head: str | None, col: str | None,
                     seeds: dict, inner: dict, src: str) -> tuple[str, list[tuple[str, bool, bool]]]:
    """A backward kernel over the region's elements: one program per head and block of BR rows
    (positions: r = b * L + l) x the column dim ``col`` (the state dim of a diagonal decay, the
    value dim of an epilogue, or none), padded to CP. It loads the seeds (adjoints of the region's
    outputs, contiguous over (rows, H, cols)), recomputes the region, and stores one adjoint per
    leaf (and per ``inner`` value), summed in the kernel over the axes the leaf does not have:
    per row or per block of rows, per column or summed over them.

    Returns (kernel source, [(name, per row, per column)] in parameter order)."""
    rows = {"b", "l"}
    ctx = Ctx({"b": "i_b[:, None]", "l": "i_l[:, None]", head: "i_h", col: "rc[None, :]"},
              {"b": "mr[:, None]", "l": "mr[:, None]", col: "mc[None, :]"})

    def has(dims, what):
        return bool(set(dims or ()) & what)

    def reduce(expr, src, dst):
        if has(src, rows) and not has(dst, rows):
            expr = f"tl.sum(tl.where(mr[:, None], {expr}, 0.0), axis=0, keep_dims=True)"
        if has(src, {col}) and not has(dst, {col}):
            expr = f"tl.sum(tl.where(mc[None, :], {expr}, 0.0), axis=1, keep_dims=True)"
        return expr

    inner_lines = [f"v_{k} = tl.load({ptr}_ptr + (rows[:, None] * H + i_h) * C + rc[None, :], "
                   "mask=mr[:, None] & mc[None, :], other=0.0)" for k, ptr in inner.items()]
    fwd, names = emit_forward(graph, region.nodes, region.leaves, ctx, inner={k: f"v_{k}" for k in inner})
    seed = {out: (expr, region.space) for role, expr in seeds.items()
            if (out := region.outputs.get(role)) and graph.node(out).op != "const"}
    wanted = list(region.leaves) + list(inner)
    vjp, grads = emit_vjp(graph, region.nodes, names, seed, wanted, reduce)
    stores, kinds = [], []
    zero = "tl.zeros([BR, CP], dtype=ACC)"
    for w in wanted:
        dims = graph.node(w).dims if w not in inner else tuple(d for d in ("b", "l", col) if d)
        per_row, per_col = has(dims, rows), has(dims, {col})
        g = (grads[w] if w in grads else reduce(zero, ("b", col), dims)) + f" + {zero}"
        at_row = "rows[:, None]" if per_row else "rb"
        at_col = "rc[None, :]" if per_col else "0"
        width = "C" if per_col else "1"
        mask = " & ".join(["mr[:, None]"] * per_row + ["mc[None, :]"] * per_col) or "None"
        idx = f"({at_row} * H + i_h)" + (f" * {width} + {at_col}" if per_col else "")
        # one store per element of what the leaf keeps (the broadcast copies are masked off)
        lead = ("" if per_row else "(tl.arange(0, BR)[:, None] == 0)")
        lead += ("" if per_col else (" & " if lead else "") + "(rc[None, :] == 0)")
        mask = " & ".join(x for x in (mask if mask != "None" else "", lead) if x) or "None"
        stores.append(f"tl.store(G_{w}_ptr + {idx} + tl.zeros([BR, CP], dtype=tl.int32), {g}, mask={mask})")
        kinds.append((w, per_row, per_col))
    ptrs = [f"A_{role}_ptr" for role in seeds] + [f"{p}_ptr" for p in inner.values()] + [f"G_{w}_ptr" for w in wanted]
    body = drop_dead(inner_lines + fwd + vjp + stores)
    text = "\n".join(body)
    sig = signature(name, ptrs=ptrs, sizes=["R", "L"], leaves=leaf_params(graph, region.leaves),
                    meta=["ACC", "H", "C", "BR", "CP"])
    used = {v for v in ("i_b", "i_l", "mc") if re.search(rf"\b{v}\b", text)}
    code = ENV.get_template("elementwise.py.j2").render(signature=sig, lines=body, src=src, used=used)
    return code, kinds


def locs(graph: Graph, nodes) -> str:
    """The distinct spec lines of some nodes, in order."""
    seen = dict.fromkeys(str(graph.node(n).loc) for n in nodes if graph.node(n).loc)
    return "spec " + ", ".join(seen) if seen else "none"
