"""What every generated Triton module calls at run time: dtype choices, segment bookkeeping,
guarded kernel launches and the `torch.library` registration of its ops.

The generated module (rendered by `triton_emit.py`) holds the kernels and thin launchers; this
module holds the code that would otherwise be repeated in every one of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType, SimpleNamespace

import torch
import triton.language as tl

from mixerc.ir import BackendError, InputError, MixercError

LIB = torch.library.Library("mixerc", "FRAGMENT")
_DEFINED: set[str] = set()

_TL = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
       torch.float64: tl.float64}


def acc_dtype(X: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, else float32."""
    return torch.float64 if X.dtype == torch.float64 else torch.float32


def kinds(X: torch.Tensor) -> SimpleNamespace:
    """``acc``/``ACC``: accumulation dtype (torch / Triton); ``DOT``: dtype of ``tl.dot`` operands
    (the input's for half precision, as mamba-ssm does; else the accumulation dtype, with IEEE
    precision so that float32 is not silently TF32 on a GPU); ``PREC``: ``tl.dot``'s precision."""
    acc = acc_dtype(X)
    half = X.dtype in (torch.float16, torch.bfloat16)
    return SimpleNamespace(acc=acc, ACC=_TL[acc], DOT=_TL[X.dtype] if half else _TL[acc],
                           PREC=None if half else "ieee")


def chunk_runs(runs, b: int, L: int, nc: int, Q: int):
    """Segment number at the end of every chunk (RE) and at the end of the chunk before (RP; 0
    before the first). A chunk whose RE equals its RP has no segment start inside it."""
    if runs is None:
        return None, None
    ends = (torch.arange(nc, device=runs.device) * Q + Q - 1).clamp_(max=L - 1)
    RE = runs[:, ends].contiguous()
    RP = torch.cat([torch.zeros_like(RE[:, :1]), RE[:, :-1]], 1).contiguous()
    return RE, RP


def launch(template: str, name: str, kernel, grid, *args, **kwargs):
    """Run a kernel; a failure to compile or launch becomes a `BackendError` naming the template,
    the kernel and the generated file (kept on disk for the report)."""
    device = next((a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
    try:
        if device is not None and device.type == "cuda":
            with torch.cuda.device(device):  # launch on the tensors' GPU, not the current one
                kernel[grid](*args, **kwargs)
        else:
            kernel[grid](*args, **kwargs)
    except MixercError:
        raise
    except Exception as e:  # noqa: BLE001 - any Triton/driver failure is reported the same way
        src = getattr(getattr(kernel, "fn", None), "__code__", None)
        where = src.co_filename if src else "<unknown>"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackendError(f"Triton kernel {name} (template templates/{template}) failed: "
                           f"{type(e).__name__}: {first}. The generated source is kept at {where}; "
                           "report it with the spec, or use backend='chunked'") from e


def check_config(space: dict, changes, what: str = "kernel config"):
    """Every key of ``changes`` in ``space`` (a dict of lists) and its value in the key's list; else a
    `BackendError` naming the key, the value and the space."""
    if not isinstance(changes, Mapping):
        raise BackendError(f"{what}: expected None or a mapping of config keys to values, got "
                           f"{type(changes).__name__}")
    for key, val in changes.items():
        if key not in space:
            raise BackendError(f"unknown kernel config {key!r}; tunable: {', '.join(space)}")
        if val not in space[key]:
            raise BackendError(f"kernel config {key}={val!r} is outside its space {space[key]}")


def config(space: dict, base: Mapping, changes: Mapping | None = None) -> Mapping:
    """``base`` with ``changes`` applied (checked, see `check_config`), as an immutable mapping in
    the space's key order."""
    changes = {} if changes is None else changes
    check_config(space, changes)
    merged = {**base, **changes}
    return MappingProxyType({key: merged[key] for key in space})


def config_values(space: dict, default: Mapping, cfg: Mapping | None) -> list[int]:
    """The op argument ``int[] cfg`` of a config (None: the default; a mapping: changes to it,
    checked), its values in space order. Traceable by torch.compile (no identity test, no new
    mapping type: dynamo does not trace ``is`` on a mappingproxy)."""
    if cfg is None:
        return [default[key] for key in space]
    check_config(space, cfg)
    return [cfg[key] if key in cfg else default[key] for key in space]


def config_of(space: dict, values) -> dict:
    """The config an op received as ``int[] cfg`` (values in space order), by key."""
    return dict(zip(space, values))


def strides(name: str, t: torch.Tensor, dims: str) -> dict:
    """A tensor's strides as a kernel's keyword arguments: ``strides("X", X, "blhp")`` is
    ``{"X_sb": X.stride(0), "X_sl": X.stride(1), "X_sh": ..., "X_sp": ...}``."""
    return {f"{name}_s{d}": s for d, s in zip(dims, t.stride(), strict=True)}


INT32_MAX = 2**31 - 1


def row_span(t: torch.Tensor | None) -> int:
    """Elements one batch row of ``t`` spans in memory (its largest offset past the row's start, plus
    one), whatever its strides."""
    if t is None or t.dim() < 2:
        return 0
    return 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape[1:], t.stride()[1:]))


def check_indexable(what: str, **counts: int):
    """Kernels offset a buffer by a 64-bit part (batch row, program) plus a 32-bit offset inside one
    batch row's slice: every ``counts`` entry (the elements of one batch row's slice of a buffer)
    must stay below 2^31. The batch itself may be as large as memory allows."""
    too_big = {k: v for k, v in counts.items() if v > INT32_MAX}
    if too_big:
        listed = ", ".join(f"{k} ({v:,} elements)" for k, v in too_big.items())
        raise BackendError(f"{what}: one batch row of {listed} is too large for the triton kernels' 32-bit "
                           f"offsets inside a row (at most {INT32_MAX:,}); split the sequence into pieces "
                           "(carry the state with initial_state / return_final_state) or use backend='chunked'")


def reduce_to(g: torch.Tensor, space: str, dims: str, like: torch.Tensor) -> torch.Tensor:
    """A gradient over the region's element space (dims ``space``, one letter-free name per axis,
    space-separated) summed down to a leaf's dims and dtype."""
    space_l, dims_l = space.split(), dims.split()
    extra = [i for i, d in enumerate(space_l) if d not in dims_l]
    if extra:
        g = g.sum(extra)
    kept = [d for d in space_l if d in dims_l]
    g = g.permute([kept.index(d) for d in dims_l]) if kept != dims_l else g
    return g.reshape(like.shape).to(like.dtype)


def grads_for(grads: dict, names: list[str], inputs: list) -> list[torch.Tensor]:
    """One gradient per op input, in order; an empty tensor where there is none."""
    out = []
    for name, t in zip(names, inputs):
        g = grads.get(name)
        if g is None or t is None:
            out.append(torch.empty(0, device=grads["X"].device))
        else:
            out.append(g.reshape(t.shape).to(t.dtype))
    return out


def define_ops(name: str, params: list[str], forward, forward_fake, backward, step, n_out: int, n_state: int = 1):
    """Register ``mixerc::<name>_fwd``, ``_bwd`` and ``_step`` with fake implementations and the
    autograd formula (forward saves its extra outputs, backward is the derived kernels). The forward
    returns ``(out, [final state,] *saved)``: ``n_state`` is 1 for causal structures, 0 otherwise.
    ``params``: the tensor parameters' schema, one entry each (``"Tensor X"``, ``"Tensor? S0"``).
    Every op takes the kernel config last, ``int[] cfg`` (values in the order of the module's
    ``k<i>_SPACE``): the backward gets the forward's own, so the two always run the same config."""
    if name in _DEFINED:
        return
    tensors = ", ".join(p.strip() for p in params if "?" not in p)
    params = ", ".join(params)
    LIB.define(f"{name}_fwd({params}, int[] cfg) -> ({', '.join(['Tensor'] * n_out)})")
    LIB.define(f"{name}_bwd(Tensor dout, Tensor dfinal, Tensor[] saved, {params}, int[] cfg) -> Tensor[]")
    LIB.define(f"{name}_step(Tensor(a!) S, {tensors}, int[] cfg) -> Tensor")
    LIB.impl(f"{name}_fwd", lambda *a: tuple(forward(*a)), "CompositeExplicitAutograd")
    LIB.impl(f"{name}_bwd", lambda dout, dfinal, saved, *a: backward(dout, dfinal, saved, *a),
             "CompositeExplicitAutograd")
    LIB.impl(f"{name}_step", step, "CompositeExplicitAutograd")
    torch.library.register_fake(f"mixerc::{name}_fwd", lib=LIB)(lambda *a: tuple(forward_fake(*a)))
    torch.library.register_fake(f"mixerc::{name}_bwd", lib=LIB)(
        lambda dout, dfinal, saved, *a: [torch.empty_like(t) if t is not None else dout.new_empty(0)
                                         for t in a[:-1]])
    torch.library.register_fake(f"mixerc::{name}_step", lib=LIB)(
        lambda S, X, *a: X.new_empty(X.shape[0], 1, *X.shape[2:]))
    bwd_op = getattr(torch.ops.mixerc, f"{name}_bwd")

    def setup(ctx, inputs, output):
        *tensors, ctx.cfg = inputs
        ctx.n_in = len(tensors)
        ctx.save_for_backward(*tensors, *output[1 + n_state:])

    def grad(ctx, dout, *rest):
        dfinal = rest[0] if n_state else None
        saved = ctx.saved_tensors
        inputs, extra = saved[:ctx.n_in], list(saved[ctx.n_in:])
        if dfinal is None:
            dfinal = dout.new_empty(0)
        grads = bwd_op(dout.contiguous(), dfinal.contiguous(), extra, *inputs, ctx.cfg)
        return tuple(None if t is None or g.numel() == 0 and t.numel() > 0 else g
                     for g, t in zip(grads, inputs)) + (None,)

    torch.library.register_autograd(f"mixerc::{name}_fwd", grad, setup_context=setup, lib=LIB)
    _DEFINED.add(name)


def decode_state(S: torch.Tensor | None) -> torch.Tensor:
    """The state a decode step updates in place: it must exist and be laid out contiguously."""
    if S is None or not S.is_contiguous():
        raise InputError("the triton decode step updates the state in place: pass a contiguous state "
                         "from mixer.init_state(batch) (or a .contiguous() copy)")
    return S


def row_block(C: int) -> tuple[int, int]:
    """Tile of the elementwise backward kernels: BR rows x CP columns (C padded to a power of two),
    about 2K elements (16 per thread at 4 warps: no register spills, see tests/aot_compile.py)."""
    CP = 1 << max(C - 1, 0).bit_length()
    return min(1024, max(16, 2048 // CP)), CP
