"""The Triton lowering of a semiseparable matrix: the SSD stage kernels of
``templates/semiseparable/`` (scalar or no decay: ``ss_scalar.py.j2`` and its stages; diagonal decay:
``ss_diagonal.py.j2``), rendered with the spec's own prologue and epilogue bound at the hook calls,
their launchers, config space and ``torch.library`` ops, and the lines the generated mixer calls them with.
"""

from __future__ import annotations

from mixerc.ir import BackendError, Graph

from ...fused import elementwise_bwd, leaf_kwargs, leaf_params, locs, quotes
from ...layout import final_state, from_canonical, initial_state, to_canonical
from ...analysis import fusable_scale
from ...regions import Fusion, Region, epilogue, grow, region
from ...tl_expr import Ctx, HookCode, emit_forward, emit_vjp, signature, value
from ...triton_common import ENV, MAX_DIM, join_parts, pow2
from ..base import TritonLowering


def structure_dims(sizes: dict, lay: dict) -> tuple[int, int, int, int]:
    head, value_d, state, group = lay["head"], lay["value"], lay["state"], lay["group"]
    H = sizes[head] if head else 1
    P = sizes[value_d] if value_d else 1
    G = sizes[group] if group and group != head else (H if group else 1)
    return H, P, sizes[state], G


def check_limits(lay: dict, P: int, N: int, Q: int, diagonal: bool):
    if pow2(P) > MAX_DIM or pow2(N) > MAX_DIM:
        raise BackendError(f"the triton lowering holds value and state dims up to {MAX_DIM} in one tile "
                           f"({lay['value'] or 'value'}={P}, {lay['state']}={N} given); use backend='chunked'")
    lo = 2 if diagonal else 16  # the diagonal scan has no tl.dot over positions
    if Q & (Q - 1) or not lo <= Q <= 256:
        raise BackendError(f"the triton lowering needs chunk_size a power of two from {lo} to 256, got {Q}")


def _scan_prologue_grads(graph: Graph, pro: Region, head, state, leaf_grads: list, alloc: list) -> dict:
    """The launcher's side of the prologue's backward inside the diagonal scan's backward kernel:
    one gradient buffer per prologue leaf (allocated in ``alloc``, reduced to the leaf's dims in
    ``leaf_grads``), the kernel's parameters for them (``gpro_list``) and the launch keywords."""
    params, call = [], []
    for w in pro.leaves:
        dims = graph.node(w).dims
        per_l, per_h, per_n = "l" in dims, head in dims, state in dims
        params.append(f"G_{w}_ptr")
        call.append(f"g_pro_{w}")
        lead = ["b", "L"] if per_l else ["b"]
        chans = ["H * P"] if per_h else ["nblk"]
        alloc.append(f"g_pro_{w} = torch.empty({', '.join(lead + chans + ['N'] * per_n)}, **f32)")
        view = ", ".join(lead + (["H", "P"] if per_h else ["nblk"]) + ["N"] * per_n)
        space = " ".join(["b"] + ["l"] * per_l + ([head, "_p"] if per_h else ["_blk"]) + [state] * per_n)
        leaf_grads.append(f'grads["L_{w}"] = _rt.reduce_to(g_pro_{w}.view({view}), "{space}", '
                          f'"{" ".join(dims)}", L_{w})')
    return dict(gpro_list=params, gpro_kw="".join(f"{x}={y}, " for x, y in zip(params, call)))


def _scan_prologue_adjoint(graph: Graph, pro: Region, names: dict, head, state, expand, b: str, l: str,
                           chan_at: str, n: str, mask_l: str, mask_h: str, mask_n: str, dla: str,
                           dsc: str) -> tuple[list, list, list]:
    """The prologue's backward inside the diagonal scan's backward kernel, whose tiles are
    (T positions, CB channels[, N states]): batch ``b``, positions ``l``, channels ``chan_at``, state
    index ``n`` (masked by ``mask_*``); ``dla``/``dsc`` hold the adjoints of the log-decay and the
    scale. A leaf with the length dim gets its adjoint stored per block of positions; any other is
    summed over the sequence in registers and stored once per program (the kernel names its channel
    block ``blk`` and their count ``nblk``). Adjoints are per channel (or per program, without the
    head dim); the launcher sums the rest. Returns (lines before the loop, in it, after it)."""
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
    for role, seed in (("la", (dla, space)), ("sc", (dsc, space[:-1]))):
        if pro.outputs[role] and graph.node(pro.outputs[role]).op != "const":
            seeds[pro.outputs[role]] = seed
    vjp, grads = emit_vjp(graph, pro.nodes, names, seeds, list(pro.leaves), reduce, expand)
    lines, init, final = list(vjp), [], []
    for w in pro.leaves:
        dims = graph.node(w).dims
        per_l, per_h, per_n = "l" in dims, head in dims, state in dims
        g = grads.get(w, "0.0")
        at_chan = f"{chan_at}[None, :]" if per_h else "blk"
        mask = [f"{mask_h}[None, :]"] * per_h
        width = "(H * P)" if per_h else "nblk"
        if per_l:  # offsets: the 64-bit batch part, then the 32-bit tile inside one batch row's slice
            base, tile = f"{b} * L * {width}", f"{l}[:, None] * {width} + {at_chan}"
            mask = [f"{mask_l}[:, None]"] + mask
        elif per_h:
            base, tile = f"{b} * (H * P)", at_chan
        else:
            base, tile = f"{b} * nblk", "blk + tl.zeros([1, 1], dtype=tl.int32)"
        if per_n:
            base, tile = f"{base} * N", f"({tile})[:, :, None] * N + {n}[None, None, :]"
            mask = [f"{x}[:, :, None]" for x in mask] + [f"{mask_n}[None, None, :]"]
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
    return init, lines, final


def fusion(graph: Graph, apply: str, layout: dict) -> Fusion:
    """The prologue (the log-decay ``la`` and the value's scale ``sc`` of ``M @ (x * sc)``, over the
    decay's space) and the epilogue this lowering fuses (`codegen.regions`)."""
    a = graph.node(apply)
    m = graph.node(a.args[0])
    roles = dict(zip(m.attrs["roles"], m.args))
    head, state, value = layout["head"], layout["state"], layout["value"]
    bl = ("b", "l")
    pspace = bl + tuple(d for d in (head,) if d) + ((state,) if layout["decay"] == "diagonal" else ())
    xspace = bl + tuple(d for d in (head, value) if d)
    scale = fusable_scale(graph, apply, layout)
    x, sc = scale if scale else (a.args[1], None)
    la = roles.get("log_decay")
    pro_nodes = grow(graph, [la, sc], set(pspace))
    prologue = region(graph, pro_nodes, {"la": la, "sc": sc}, pspace)
    return Fusion(apply, m.name, x, (roles["B"], roles["C"]), prologue, epilogue(graph, apply, xspace))


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

    shapes = {"Q": ("[Q]", "[Q]"), "": ("[]", "[]"), "T, CB, N": ("[T, CB, NP]", "[T, CB]"),
              "CB, N": ("[CB, NP]", "[CB]")}

    def prologue_hook(b, l, h, n=None, mask_l=None, mask_h=None, mask_n=None, tile="Q", at="", suffix=""):
        """The prologue where batch, position, head (and state index) are ``b``, ``l``, ``h`` (``n``),
        masked by ``mask_*``, on tiles ``tile``: its lines, its log-decay ``la`` and scale ``sc``.
        ``suffix`` tells apart a second copy in one kernel (the diagonal backward's next position)."""
        code, names = lines(pro, prologue_ctx(b, l, h, n, mask_l, mask_h, mask_n, tile), suffix=suffix)
        la_shape, sc_shape = shapes[tile]
        return HookCode("prologue" + (f" at {at}" if at else ""), locs(graph, pro.nodes),
                        quotes(graph, pro.nodes) if not suffix else [], code,
                        la=role(names, la_node, la_shape, 0.0), sc=role(names, sc_node, sc_shape, 1.0))

    def epilogue_hook(b, l, h, p, y, mask_l=None, mask_h=None, mask_p=None):
        """The epilogue where batch, position, head and value index are ``b``, ``l``, ``h``, ``p``
        (masked by ``mask_*``; index expressions already shaped for the tile) and the structure's
        output is ``y``: its lines and its result ``out``."""
        masks = {d: mk for d, mk in (("l", mask_l), (head, mask_h), (value_d, mask_p)) if mk}
        code, names = lines(epi, Ctx({"b": b, "l": l, head: h, value_d: p}, masks), {f.apply: y})
        return HookCode("epilogue", locs(graph, epi.nodes), quotes(graph, epi.nodes), code,
                        out=out_of(epi, names, y))

    def prologue_adjoint(b, l, h, chan, n, mask_l, mask_h, mask_n, dla, dsc):
        """The prologue's adjoints inside the diagonal scan backward, where batch, position, head,
        channel and state index are ``b``, ``l``, ``h``, ``chan``, ``n`` (masked by ``mask_*``) and
        ``dla``/``dsc`` hold the adjoints of its log-decay and scale: lines before the block loop
        (``init``), in it (``lines``) and after it (``final``)."""
        ctx = prologue_ctx(b, l, h, n, mask_l, mask_h, mask_n, tile="T, CB, N")
        init, body, final = _scan_prologue_adjoint(graph, pro, lines(pro, ctx)[1], head, state, ctx.expand, b, l,
                                                   chan, n, mask_l, mask_h, mask_n, dla, dsc)
        return HookCode("prologue adjoints", locs(graph, pro.nodes), [], body, init=init, final=final)

    frag = {}

    src_loc = str(graph.node(f.apply).loc or graph.name)
    rows_h = "rows[:, None] * H + i_h"  # seeds are contiguous over (rows, H[, C])
    full = f"({rows_h}) * C + rc[None, :]"
    kernels = []
    sizes_of = {state: "N", value_d: "P", None: "1"}
    leaf_grads, pro_grad_alloc, epi_grad_alloc = [], [], []
    if diagonal:  # the prologue's adjoints run inside scan_bwd (see _scan_prologue_bwd)
        frag.update(_scan_prologue_grads(graph, pro, head, state, leaf_grads, pro_grad_alloc))
        pro_kinds = []
    else:
        pro_bwd, pro_kinds = elementwise_bwd(  # (b, l, h): no column dim
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
        epi_bwd, epi_kinds = elementwise_bwd(
            graph, f"{p}epilogue_bwd", epi, head, value_d,
            {"out": f"tl.load(A_out_ptr + {full}, mask=mr[:, None] & mc[None, :], other=0.0)"},
            {f.apply: "YS"}, f"epilogue of {src_loc}")
        kernels.append(epi_bwd)
        grad_lines(epi_kinds, "epi", value_d, epi_grad_alloc, skip=(f.apply,))
        epi_bwd_call = leaf_kwargs(graph, epi.leaves) + "".join(
            f"G_{w}_ptr=dy, " if w == f.apply else f"G_{w}_ptr=g_epi_{w}, " for w, _, _ in epi_kinds)
    leaves = list(dict.fromkeys(pro.leaves + (epi.leaves if epi else [])))
    tensors = ", ".join(["X", "B", "C"] + [f"L_{x}" for x in leaves])
    template = "semiseparable/ss_diagonal.py.j2" if diagonal else "semiseparable/ss_scalar.py.j2"
    ctx = dict(
        frag, p=p, src_loc=src_loc, title=f"{f.matrix} @ value, spec {graph.name!r} ({src_loc})",
        epilogue=epilogue_hook if epi else None,
        prologue=prologue_hook, prologue_adjoint=prologue_adjoint, sig=signature,
        dirs="semiseparable/ss_dirs.py.j2", step=True,
        pro_params=leaf_params(graph, pro.leaves), epi_params=leaf_params(graph, epi.leaves) if epi else [],
        step_params=leaf_params(graph, leaves), pro_kw=leaf_kwargs(graph, pro.leaves),
        epi_kw=leaf_kwargs(graph, epi.leaves) if epi else "", step_kw=leaf_kwargs(graph, leaves),
        H=H, P=P, N=N, G=G, PP=PP, NP=NP, Q=Q, opname=opname,
        epi_bwd_call=epi_bwd_call,
        pro_bwd_call=leaf_kwargs(graph, pro.leaves) + "".join(f"G_{w}_ptr=g_pro_{w}, " for w in pro_wanted),
        pro_grad_alloc=pro_grad_alloc, epi_grad_alloc=epi_grad_alloc, leaf_grads=leaf_grads,
        tensors=tensors, params=f"{tensors}, S0, runs",
        schema=", ".join(f"Tensor {t}" for t in tensors.split(", ")) + ", Tensor? S0, Tensor? runs",
        names=repr(["X", "B", "C"] + [f"L_{x}" for x in leaves] + ["S0", "runs"]),
        n_out=4 if diagonal else 6,
    )
    parts = [ENV.get_template(template).render(**ctx), *kernels,
             ENV.get_template(template.replace(".py.j2", "_launch.py.j2")).render(**ctx),
             ENV.get_template("ops.py.j2").render(**ctx)]
    return join_parts(parts), leaves


def _call_lines(graph: Graph, k: int, sp, f: Fusion, leaves, target: str) -> list[str]:
    lay = sp.layout
    head, value_d, state, group = lay["head"], lay["value"], lay["state"], lay["group"]
    cx = ["b", "l", head, value_d]
    cbc = ["b", "l", group, state]
    X = to_canonical(f.x, graph.node(f.x).dims, cx)
    B = to_canonical(f.reads[0], lay["bc"], cbc)
    C = to_canonical(f.reads[1], lay["bc"], cbc)
    S0 = initial_state(k, ["b", head, value_d, state])
    args = ", ".join([X, B, C] + list(leaves))
    loc = graph.node(f.apply).loc
    lines = [f"# {f.matrix}: {sp.structure}, {lay['decay']} decay, lowering triton (kernels k{k}_*)"
             + (f"  spec: {loc}" if loc else ""),
             f"_y{k}, _s{k} = k{k}_apply({args}, {S0}, _runs, step=step, "
             f"config=None if configs is None else configs[{k}])",
             f"{target} = {from_canonical(f'_y{k}', cx, graph.node(target).dims)}"]
    return lines + final_state(k, ["b", head, value_d, state])


NOTATION = """  b, L         batch and sequence length (runtime); Q the chunk (constexpr), nc = ceil(L / Q) chunks
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
Hook points ("-- hook: prologue" / "-- hook: epilogue") hold the spec's own elementwise lines, each
spec line quoted once above them ("# src[file:N]: text")."""


class SemiseparableTriton(TritonLowering):
    templates = "semiseparable"
    notation = NOTATION

    def fusion(self, graph, splan):
        return fusion(graph, splan.node, splan.layout)

    def render(self, graph, sizes, k, sp, opname):
        f = sp.fusion
        code, leaves = _render(graph, sizes, k, sp, f, opname)
        target = graph.output if f.epilogue else f.apply
        lines = {f.apply: []} if f.epilogue else {}
        lines[target] = _call_lines(graph, k, sp, f, leaves, target)
        return code, lines


TRITON = SemiseparableTriton()
