"""Triton code generation: the IR plus a `Plan` become one Python module of Triton kernels.

For every structure application: the structure's kernel templates (``templates/ss_scalar.py.j2``,
which includes the stage templates ``ss_chunk_state``, ``ss_state_pass``, ``ss_chunk_scan``,
``ss_bwd_chunk`` and ``ss_step`` over ``ss_common``; or ``ss_diagonal.py.j2``), its launchers
(``*_launch.py.j2``, with the config space and default of ``*_config.py.j2``) and the
``torch.library`` ops (``ops.py.j2``). The spec's own prologue and epilogue (`regions.py` picks
them, `tl_expr.py` writes their lines and their derivatives) reach the kernels through hook
bindings: a template calls ``prologue(b=..., l=..., h=..., ...)`` or ``epilogue(...)`` at a hook
point with the names the spec's code sees there and splices the returned `HookCode`. Then the same
``mixer`` function the torch backends get (`writer.ModuleWriter`), calling those ops where the
structures are, with one kernel config per application (``configs=``).
"""

from __future__ import annotations

import hashlib
import linecache
import re

from mixerc.ir import BackendError, Graph, MixercError

from . import qs_triton
from .layout import from_canonical, to_canonical
from .planner import Plan
from .regions import Fusion, Region, torch_skip
from .structures import code_files
from .tl_expr import HELPERS, Ctx, HookCode, emit_forward, emit_vjp, signature, value
from .triton_common import ENV, VERSION, check_limits, code_hash, pow2, structure_dims
from .writer import ModuleWriter


# -- fragments ---------------------------------------------------------------------------------


def _quotes(graph: Graph, nodes) -> list[str]:
    """The spec lines of some nodes quoted once each, in order: ``# src[mamba2.py:17]: <the line>``."""
    out = []
    for loc in dict.fromkeys(graph.node(n).loc for n in nodes if graph.node(n).loc):
        text = linecache.getline(loc.file, loc.line).strip() if loc.file else ""
        out.append(f"# src[{loc}]: {text or loc.text}".rstrip())
    return out


def _leaf_list(graph: Graph, leaves) -> list[str]:
    """Kernel parameters of the leaves, one each: pointer and one stride per named dim."""
    out = []
    for leaf in leaves:
        out.append(f"L_{leaf}_ptr")
        out += [f"L_{leaf}_s{d}" for d in graph.node(leaf).dims]
    return out


def _leaf_kwargs(graph: Graph, leaves) -> str:
    """The leaves as keyword arguments of a launch (``L_dt_ptr=L_dt, L_dt_sb=L_dt.stride(0), ``)."""
    out = []
    for leaf in leaves:
        out.append(f"L_{leaf}_ptr=L_{leaf}")
        out += [f"L_{leaf}_s{d}=L_{leaf}.stride({i})" for i, d in enumerate(graph.node(leaf).dims)]
    return "".join(f"{a}, " for a in out)


def _drop_dead(lines: list[str]) -> list[str]:
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


def _elementwise_bwd(graph: Graph, name: str, region: Region, head: str | None, col: str | None,
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
    body = _drop_dead(inner_lines + fwd + vjp + stores)
    text = "\n".join(body)
    sig = signature(name, ptrs=ptrs, sizes=["R", "L"], leaves=_leaf_list(graph, region.leaves),
                    meta=["ACC", "H", "C", "BR", "CP"])
    used = {v for v in ("i_b", "i_l", "mc") if re.search(rf"\b{v}\b", text)}
    code = ENV.get_template("elementwise.py.j2").render(signature=sig, lines=body, src=src, used=used)
    return code, kinds


def _scan_prologue_bwd(graph: Graph, pro: Region, names: dict, head, state, leaf_grads: list,
                       alloc: list, expand) -> dict:
    """The prologue's backward inside the diagonal scan's backward kernel, whose tiles are
    (T positions, CB channels[, N states]); ``_dla``/``_dsc`` there are the adjoints of the
    log-decay and the scale. A leaf with the length dim gets its adjoint stored per block of
    positions; any other is summed over the sequence in registers and stored once per program.
    Adjoints are per channel (or per program, without the head dim); the launcher sums the rest."""
    chan = head or "_channel"  # headless: the channels are the value dim, which no prologue value has
    ax = {"l": 0, chan: 1, state: 2}

    def reduce(expr, src, dst):
        if state in src and state not in dst:
            expr = f"tl.sum({expr}, axis=2)"  # a value without the state dim is a 2-D (T, CB) tile
        for d in ("l", chan):
            if d in src and d not in dst:
                expr = f"tl.sum({expr}, axis={ax[d]}, keep_dims=True)"
        return expr

    seeds, space = {}, ("b", "l", chan, state)
    for role, seed in (("la", ("_dla", space)), ("sc", ("_dsc", space[:-1]))):
        if pro.outputs[role] and graph.node(pro.outputs[role]).op != "const":
            seeds[pro.outputs[role]] = seed
    vjp, grads = emit_vjp(graph, pro.nodes, names, seeds, list(pro.leaves), reduce, expand)
    lines, init, final, params, call = list(vjp), [], [], [], []
    for w in pro.leaves:
        dims = graph.node(w).dims
        per_l, per_h, per_n = "l" in dims, head in dims, state in dims
        g = grads.get(w, "0.0")
        chan = "c[None, :]" if per_h else "blk"
        mask = ["mc[None, :]"] * per_h
        width = "(H * P)" if per_h else "nblk"
        if per_l:  # offsets: the 64-bit batch part, then the 32-bit tile inside one batch row's slice
            base, tile = f"i_b * L * {width}", f"t[:, None] * {width} + {chan}"
            mask = ["m[:, None]"] + mask
        elif per_h:
            base, tile = "i_b * (H * P)", chan
        else:
            base, tile = "i_b * nblk", "blk + tl.zeros([1, 1], dtype=tl.int32)"
        if per_n:
            base, tile = f"{base} * N", f"({tile})[:, :, None] * N + rn[None, None, :]"
            mask = [f"{x}[:, :, None]" for x in mask] + ["mn[None, None, :]"]
        at = f"{base} + ({tile})" if " + " in tile else f"{base} + {tile}"
        store = f"tl.store(G_{w}_ptr + {at} + tl.zeros([1, 1{', 1' if per_n else ''}], dtype=tl.int32), " \
                f"{{}}, mask={' & '.join(mask) or 'None'})"
        shape = f"[1, {'CB' if per_h else 1}{', NP' if per_n else ''}]"
        if per_l:
            lines.append(store.format(f"{g} + tl.zeros({shape}, dtype=ACC)"))
        else:
            init.append(f"acc_{w} = tl.zeros({shape}, dtype=ACC)")
            lines.append(f"acc_{w} += {g}")
            final.append(store.format(f"acc_{w}"))
        params.append(f"G_{w}_ptr")
        call.append(f"g_pro_{w}")
        lead = ["b", "L"] if per_l else ["b"]
        chans = ["H * P"] if per_h else ["nblk"]
        alloc.append(f"g_pro_{w} = torch.empty({', '.join(lead + chans + ['N'] * per_n)}, **f32)")
        view = ", ".join(lead + (["H", "P"] if per_h else ["nblk"]) + ["N"] * per_n)
        space = " ".join(["b"] + ["l"] * per_l + ([head, "_p"] if per_h else ["_blk"]) + [state] * per_n)
        leaf_grads.append(f'grads["L_{w}"] = _rt.reduce_to(g_pro_{w}.view({view}), "{space}", '
                          f'"{" ".join(dims)}", L_{w})')
    return dict(gpro_lines=lines, gpro_init=init, gpro_final=final, gpro_list=params,
                gpro_kw="".join(f"{x}={y}, " for x, y in zip(params, call)))


def _locs(graph: Graph, nodes) -> str:
    """The distinct spec lines of some nodes, in order."""
    seen = dict.fromkeys(str(graph.node(n).loc) for n in nodes if graph.node(n).loc)
    return "spec " + ", ".join(seen) if seen else "none"


# -- one structure -----------------------------------------------------------------------------


def _render(graph: Graph, sizes: dict, k: int, sp, f: Fusion, opname: str) -> tuple[str, list]:
    """Kernels, launchers and ops of one structure application (prefix ``k<k>_``)."""
    lay = sp.layout
    head, value_d, state = lay["head"], lay["value"], lay["state"]
    diagonal = lay["decay"] == "diagonal"
    H, P, N, G = structure_dims(sizes, lay)
    PP, NP = pow2(P), pow2(N)
    Q = sp.chunk_size
    check_limits(lay, P, N, Q, diagonal)
    p = f"k{k}_"
    pro, epi = f.prologue, f.epilogue
    la_node, sc_node = pro.outputs["la"], pro.outputs["sc"]

    def lines(region, ctx, inner=None, suffix=""):
        if region is None:
            return [], {}
        return emit_forward(graph, region.nodes, region.leaves, ctx, suffix=suffix, inner=inner)

    def out_of(region, names, default):
        role = next(iter(region.outputs)) if region else None
        return default if region is None else value(graph, region.outputs[role], names)

    def role(names, node, shape, absent):
        """A prologue output as a tile of ``shape``; absent, or a constant, it is filled in (a bare
        Python number would be a float32 constant in Triton)."""
        if node and graph.node(node).op != "const":
            return value(graph, node, names)
        return f"tl.full({shape}, {value(graph, node, names) if node else absent}, ACC)"

    # Hook bindings: a template calls them at a hook point with the names the spec's code sees there
    # (batch b, position l, head h, value index p, state index n, their masks) and splices the
    # returned HookCode. Scalar decay: one head per program, (Q,) positions, (Q, BP) outputs.
    # Diagonal decay: tiles (T, CB) of positions x channels, (T, CB, N) with the state dim, or at one
    # position (CB,) and (CB, N).
    def prologue_ctx(b, l, h, n=None, mask_l=None, mask_h=None, mask_n=None, tile="Q"):
        if tile == "T, CB, N":
            return Ctx({"b": b, "l": f"{l}[:, None]", head: f"{h}[None, :]"},
                       {"l": f"{mask_l}[:, None]", head: f"{mask_h}[None, :]"},
                       (state, {"l": f"{l}[:, None, None]", head: f"{h}[None, :, None]", state: f"{n}[None, None, :]"},
                        {"l": f"{mask_l}[:, None, None]", head: f"{mask_h}[None, :, None]",
                         state: f"{mask_n}[None, None, :]"}, "[:, :, None]"))
        if tile == "CB, N":
            return Ctx({"b": b, "l": l, head: h}, {head: mask_h},
                       (state, {head: f"{h}[:, None]", state: f"{n}[None, :]"},
                        {head: f"{mask_h}[:, None]", state: f"{mask_n}[None, :]"}, "[:, None]"))
        return Ctx({"b": b, "l": l, head: h}, {"l": mask_l} if mask_l else None)

    shapes = {"Q": ("[Q]", "[Q]"), "": ("[]", "[]"), "T, CB, N": ("[T, CB, NP]", "[T, CB]"), "CB, N": ("[CB, NP]", "[CB]")}

    def prologue_hook(b, l, h, n=None, mask_l=None, mask_h=None, mask_n=None, tile="Q", at="", suffix=""):
        """The prologue where batch, position, head (and state index) are ``b``, ``l``, ``h`` (``n``),
        masked by ``mask_*``, on tiles ``tile``: its lines, its log-decay ``la`` and scale ``sc``.
        ``suffix`` tells apart a second copy in one kernel (the diagonal backward's next position)."""
        code, names = lines(pro, prologue_ctx(b, l, h, n, mask_l, mask_h, mask_n, tile), suffix=suffix)
        la_shape, sc_shape = shapes[tile]
        return HookCode("prologue" + (f" at {at}" if at else ""), _locs(graph, pro.nodes),
                        _quotes(graph, pro.nodes) if not suffix else [], code,
                        la=role(names, la_node, la_shape, 0.0), sc=role(names, sc_node, sc_shape, 1.0))

    def epilogue_hook(b, l, h, p, y, mask_l=None, mask_h=None, mask_p=None):
        """The epilogue where batch, position, head and value index are ``b``, ``l``, ``h``, ``p``
        (masked by ``mask_*``; index expressions already shaped for the tile) and the structure's
        output is ``y``: its lines and its result ``out``."""
        masks = {d: mk for d, mk in (("l", mask_l), (head, mask_h), (value_d, mask_p)) if mk}
        code, names = lines(epi, Ctx({"b": b, "l": l, head: h, value_d: p}, masks), {f.apply: y})
        return HookCode("epilogue", _locs(graph, epi.nodes), _quotes(graph, epi.nodes), code,
                        out=out_of(epi, names, y))

    frag = {}
    if diagonal:  # the prologue's adjoints in scan_bwd read the names of its copy at (t, channels, n)
        pro_ctx = prologue_ctx("i_b", "t", "i_h", "rn", "m", "mc", "mn", tile="T, CB, N")
        pn = lines(pro, pro_ctx)[1]

    src_loc = str(graph.node(f.apply).loc or graph.name)
    rows_h = "rows[:, None] * H + i_h"  # seeds are contiguous over (rows, H[, C])
    full = f"({rows_h}) * C + rc[None, :]"
    kernels = []
    sizes_of = {state: "N", value_d: "P", None: "1"}
    leaf_grads, pro_grad_alloc, epi_grad_alloc = [], [], []
    if diagonal:  # the prologue's adjoints run inside scan_bwd (see _scan_prologue_bwd)
        frag.update(_scan_prologue_bwd(graph, pro, pn, head, state, leaf_grads, pro_grad_alloc, pro_ctx.expand))
        pro_kinds = []
    else:
        pro_bwd, pro_kinds = _elementwise_bwd(  # (b, l, h): no column dim
            graph, f"{p}prologue_bwd", pro, head, None,
            {"la": f"tl.load(A_la_ptr + {rows_h}, mask=mr[:, None], other=0.0)",
             "sc": f"tl.load(A_sc_ptr + {rows_h}, mask=mr[:, None], other=0.0)"},
            {}, f"prologue of {src_loc}")
        kernels.append(pro_bwd)

    def grad_lines(kinds, tag, col, alloc, skip=()):
        for w, per_row, per_col in kinds:
            if w in skip:
                continue
            shape = ["b, L" if per_row else "nrb"] + ["H"] + [sizes_of[col]] * per_col
            alloc.append(f"g_{tag}_{w} = torch.empty({', '.join(shape)}, **f32)")
            space = " ".join(["b l" if per_row else "_blk", head or "_h"] + [col] * per_col)
            red = f'_rt.reduce_to(g_{tag}_{w}, "{space}", "{" ".join(graph.node(w).dims)}", L_{w})'
            total = f'grads["L_{w}"] + {red}' if f'grads["L_{w}"] = ' in "".join(leaf_grads) else red
            leaf_grads.append(f'grads["L_{w}"] = {total}')

    grad_lines(pro_kinds, "pro", None, pro_grad_alloc)
    pro_wanted = [w for w, _, _ in pro_kinds]
    epi_bwd_call = ""
    if epi is not None:
        epi_bwd, epi_kinds = _elementwise_bwd(
            graph, f"{p}epilogue_bwd", epi, head, value_d,
            {"out": f"tl.load(A_out_ptr + {full}, mask=mr[:, None] & mc[None, :], other=0.0)"},
            {f.apply: "YS"}, f"epilogue of {src_loc}")
        kernels.append(epi_bwd)
        grad_lines(epi_kinds, "epi", value_d, epi_grad_alloc, skip=(f.apply,))
        epi_bwd_call = _leaf_kwargs(graph, epi.leaves) + "".join(
            f"G_{w}_ptr=dy, " if w == f.apply else f"G_{w}_ptr=g_epi_{w}, " for w, _, _ in epi_kinds)
    leaves = list(dict.fromkeys(pro.leaves + (epi.leaves if epi else [])))
    tensors = ", ".join(["X", "B", "C"] + [f"L_{x}" for x in leaves])
    template = "ss_diagonal.py.j2" if diagonal else "ss_scalar.py.j2"
    ctx = dict(
        frag, p=p, src_loc=src_loc, title=f"{f.matrix} @ value, spec {graph.name!r} ({src_loc})",
        epilogue=epilogue_hook if epi else None,
        prologue=prologue_hook, sig=signature, dirs="ss_dirs.py.j2", step=True,
        pro_params=_leaf_list(graph, pro.leaves), epi_params=_leaf_list(graph, epi.leaves) if epi else [],
        step_params=_leaf_list(graph, leaves), pro_kw=_leaf_kwargs(graph, pro.leaves),
        epi_kw=_leaf_kwargs(graph, epi.leaves) if epi else "", step_kw=_leaf_kwargs(graph, leaves),
        H=H, P=P, N=N, G=G, PP=PP, NP=NP, Q=Q, opname=opname,
        epi_bwd_call=epi_bwd_call,
        pro_bwd_call=_leaf_kwargs(graph, pro.leaves) + "".join(f"G_{w}_ptr=g_pro_{w}, " for w in pro_wanted),
        pro_grad_alloc=pro_grad_alloc, epi_grad_alloc=epi_grad_alloc, leaf_grads=leaf_grads,
        tensors=tensors, params=f"{tensors}, S0, runs",
        schema=", ".join(f"Tensor {t}" for t in tensors.split(", ")) + ", Tensor? S0, Tensor? runs",
        names=repr(["X", "B", "C"] + [f"L_{x}" for x in leaves] + ["S0", "runs"]),
        n_out=4 if diagonal else 6,
    )
    parts = [ENV.get_template(template).render(**ctx), *kernels,
             ENV.get_template(template.replace(".py.j2", "_launch.py.j2")).render(**ctx),
             ENV.get_template("ops.py.j2").render(**ctx)]
    return "\n" + "\n\n\n".join(part.strip("\n") for part in parts) + "\n", leaves


# -- the module --------------------------------------------------------------------------------


def triton_key(graph: Graph, sizes: dict, plan: Plan) -> str:
    """Cache key (and op name prefix): spec name, IR hash, dims, plan, versions, generator code."""
    import torch
    import triton
    key = repr((graph.hash(), sorted(sizes.items()), [(s.node, s.chunk_size) for s in plan.structures],
                VERSION, code_hash(code_files()), torch.__version__, triton.__version__))
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return re.sub(r"\W", "_", f"{graph.name}_{digest}")


class TritonWriter(ModuleWriter):
    """The kernels, launchers and ops of every structure application, and ``mixer`` calling the ops
    where the structures are (and skipping the nodes their kernels compute)."""

    def __init__(self, graph: Graph, plan: Plan, sizes: dict):
        super().__init__(graph, plan, sizes)
        self.fusions = [s.fusion for s in plan.structures]  # the planner's analysis (regions.plan_fusions)
        self.defs, self.lines = [HELPERS], {}
        base = triton_key(graph, sizes, plan)
        for k, (sp, f) in enumerate(zip(plan.structures, self.fusions)):
            if sp.structure == "quasiseparable":
                self.defs.append(qs_triton.render(graph, sizes, k, sp, f"{base}_k{k}"))
                self.lines[f.apply] = qs_triton.call_lines(graph, k, sp)
                continue
            try:
                code, leaves = _render(graph, sizes, k, sp, f, f"{base}_k{k}")
            except MixercError:
                raise
            except Exception as e:  # noqa: BLE001 - a generator bug: say where, keep the traceback chained
                kind = "ss_diagonal.py.j2" if sp.layout["decay"] == "diagonal" else "ss_scalar.py.j2"
                raise BackendError(f"generating Triton code for {f.matrix} (spec {graph.node(f.apply).loc}) "
                                   f"from templates/{kind} failed: {type(e).__name__}: {e}; use "
                                   "backend='chunked' and report the spec") from e
            self.defs.append(code)
            target = graph.output if f.epilogue else f.apply
            if f.epilogue:
                self.lines[f.apply] = []
            self.lines[target] = _call_lines(graph, k, sp, f, leaves, target)

    def doc(self):
        return _DOC.splitlines()

    def imports(self):
        return ["from typing import Optional", "import triton", "import triton.language as tl",
                "from mixerc.codegen import triton_rt as _rt"]

    def definitions(self):
        return self.defs

    def keywords(self):
        return ", step=False, configs=None"

    def preamble(self):
        self.call("mixerc.rt.segments", "segment_runs")
        return ["_runs = None if seq_idx is None else _seg.segment_runs(seq_idx, seq_idx.shape[0], "
                "seq_idx.shape[1], seq_idx.device)"]

    def skipped(self):
        return torch_skip(self.graph, self.fusions)

    def emit_own(self, n):
        return self.lines.get(n.name)


def generate(graph: Graph, plan: Plan, sizes: dict) -> str:
    """Source of a module with the kernels, their ops and ``mixer(...)`` (as the torch backends')."""
    return TritonWriter(graph, plan, sizes).write()


def _call_lines(graph: Graph, k: int, sp, f: Fusion, leaves, target: str) -> list[str]:
    lay = sp.layout
    head, value_d, state, group = lay["head"], lay["value"], lay["state"], lay["group"]
    cx = ["b", "l", head, value_d]
    cbc = ["b", "l", group, state]
    sdims = ["b", head, value_d, state]
    sd = tuple(d for d in sdims if d)
    X = to_canonical(f.x, graph.node(f.x).dims, cx)
    B = to_canonical(f.B, lay["bc"], cbc)
    C = to_canonical(f.C, lay["bc"], cbc)
    S0 = f"None if initial_states is None else {to_canonical(f'initial_states[{k}]', sd, sdims)}"
    args = ", ".join([X, B, C] + list(leaves))
    loc = graph.node(f.apply).loc
    lines = [f"# {f.matrix}: {sp.structure}, {lay['decay']} decay, lowering triton (kernels k{k}_*)"
             + (f"  spec: {loc}" if loc else ""),
             f"_y{k}, _s{k} = k{k}_apply({args}, {S0}, _runs, step=step, "
             f"config=None if configs is None else configs[{k}])",
             f"{target} = {from_canonical(f'_y{k}', cx, graph.node(target).dims)}"]
    back = from_canonical(f"_s{k}", sdims, sd)
    if back != f"_s{k}":
        lines.append(f"_s{k} = {back}")
    return lines


_DOC = '''
Triton kernels. Notation (per structure application k, prefix k<k>_):
  b, L         batch and sequence length (runtime); Q the chunk (constexpr), nc = ceil(L / Q) chunks
  H, P, N, G   heads, value dim, state dim, B/C groups; head h reads group h // HPG (HPG = H // G)
  PP, NP       P and N padded to powers of two >= 16 (tl.dot needs tiles at least 16 wide)
  BP           P block of one program; BS block of the flattened (P, N) state, PN = P * N;
               BN the N block of the backward chunk kernels (scalar decay)
  T, CB        positions per scan block and channels (c = h * P + p) per program (diagonal decay)
  BR, C, CP    rows (positions) per program, columns (the region's last dim) and columns padded
               to a power of two, in the backward kernels of fused prologues and epilogues
  ACC          accumulation dtype (float32, or float64 for float64 inputs)
  DOT, PREC    tl.dot operand dtype and input precision ("ieee": no silent TF32)
  HAS_RUNS     seq_idx given: runs[b, t] numbers segments, a state never crosses a segment start
  HAS_S0/HAS_DF an initial state / a final-state gradient is present
  X, B, C      the structure's operands in canonical views (b, l, H, P) and (b, l, G, N), any strides
  L_<name>     a leaf of a fused prologue or epilogue, in the spec's own dims, one stride per dim
               (L_<name>_s<dim>); v_<node> / g_<node> are a node's value / adjoint
Hook points ("-- hook: prologue" / "-- hook: epilogue") hold the spec's own elementwise lines.'''
