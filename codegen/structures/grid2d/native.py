"""The ``grid`` lowering on the CPU as fused C loops (`native_c.SOURCE`, built at their first use in a
process by `mixerc.rt.native.library`): the forward, and with gradients the forward keeping a checkpoint per
strip and its adjoint (`Fused`). Copied with `torch_lowering` into generated modules. docs/grid2d.md,
"The fused CPU loops".
"""

from __future__ import annotations

import ctypes

import torch

from mixerc.rt.native import REALS, function, huge_pages, library, operand_type, operands, ptr

from .native_c import SOURCE

STRIP = 32  # columns per strip: the forward's working set is 2 (STRIP + 1 + V) states, the backward's 2 V STRIP


def _kernels(dtype, P, N):
    """(forward, backward) for this element type and P, N; None where they cannot be built."""
    lib = library("grid2d", SOURCE, REALS[dtype], (("VALUE", P), ("STATE", N)))
    if lib is None:
        return None
    ops, p, n = operand_type(5), ctypes.c_void_p, ctypes.c_long
    return (function(lib, "grid2d_forward", [ops] + [p] * 6 + [n] * 6 + [ctypes.c_int]),
            function(lib, "grid2d_backward", [ops] + [p] * 10 + [n] * 6 + [ctypes.c_int]))


def _views(x, B1, C1, B2, C2, f1, a2, a3, f4, s1, s2):
    """The eleven operands as the kernels read them, broadcast views (no copies): x (b, V, L, H, P),
    B and C (b, V, L, G, N), the factors (b, V, L, H, N) (absent: a constant), the scales (b, V, L, H, 1)."""
    b, V, L, H, P = x.shape
    G, N = B1.shape[3:]

    def factor(t, absent):
        if t is None:
            return x.new_full((), absent).expand(b, V, L, H, N)
        return (t if t.dim() == 5 else t.unsqueeze(-1)).expand(b, V, L, H, N)

    def scale(t):
        return x.new_ones(()).expand(b, V, L, H, 1) if t is None else t.unsqueeze(-1).expand(b, V, L, H, 1)

    return [x] + [t.expand(b, V, L, G, N) for t in (B1, C1, B2, C2)] + [
        factor(f1, 1.0), factor(a2, 0.0), factor(a3, 0.0), factor(f4, 1.0), scale(s1), scale(s2)]


def _check(failed, what, states):
    if failed:
        raise MemoryError(f"the 2-D grid's fused {what} could not allocate its {states} states per task")


def _forward(kernels, ins, init1, init2, strip):
    """Run the forward kernel: (y, last1, last2, the states left of every strip of ``strip`` columns (None:
    not kept)); without checkpoints the strips are `STRIP` wide."""
    x, B1 = ins[0], ins[1]
    b, V, L, H, P = x.shape
    G, N = B1.shape[3:]
    inits = [None if s is None else s.expand(b, V, H, P, N).contiguous() for s in (init1, init2)]
    y, last1, last2 = huge_pages(x.new_empty(b, V, L, H, P)), x.new_empty(b, V, H, P, N), x.new_empty(b, V, H, P, N)
    ck = None if strip is None else x.new_empty(b, H, -(-L // strip), 2, V, P, N)
    views = _views(*ins)
    failed = kernels[0](operands(views), *map(ptr, inits), y.data_ptr(), last1.data_ptr(),
                        last2.data_ptr(), ptr(ck), b, V, L, H, G, strip or STRIP, torch.get_num_threads())
    _check(failed, "forward", 2 * (STRIP + 1 + V))
    return y, last1, last2, ck


class Fused(torch.autograd.Function):
    """The fused forward with a checkpoint per strip, and the fused adjoint as its backward. Inputs:
    the kernels, x, B1, C1, B2, C2, the factors f1, a2, a3, f4, the scales s1, s2, h1_0, h2_0 (None:
    absent); outputs y and the last column's h1, h2. The backward writes every gradient per cell and head
    and sums them here to each input's shape; it works in place, so it is once differentiable."""

    @staticmethod
    def forward(ctx, kernels, *ins):
        ctx.strip = STRIP  # the backward must read the checkpoints with the forward's strips
        y, last1, last2, ck = _forward(kernels, ins[:11], ins[11], ins[12], ctx.strip)
        ctx.kernels, ctx.given = kernels, [t is not None for t in ins]
        ctx.save_for_backward(*[t for t in ins[:11] if t is not None], ck)
        ctx.init_shapes = [None if s is None else s.shape for s in ins[11:]]
        return y, last1, last2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dl1, dl2):
        saved = iter(ctx.saved_tensors)
        ins = [next(saved) if given else None for given in ctx.given[:11]]
        ck = next(saved)
        x, B1 = ins[0], ins[1]
        b, V, L, H, P = x.shape
        G, N = B1.shape[3:]
        dy = x.new_zeros(x.shape) if dy is None else dy.contiguous()
        dl = [None if d is None else d.contiguous() for d in (dl1, dl2)]
        cells = (b, V, L, H)
        dx, ds = huge_pages(x.new_empty(*cells, P)), x.new_empty(2, *cells)
        dbc = huge_pages(x.new_empty(4, *cells, N))
        # a factor's gradient per state (K = N), per head (1: the kernel sums over n) or not wanted (0)
        K = [0 if t is None or not need else N if t.dim() == 5 and t.shape[-1] != 1 else 1
             for t, need in zip(ins[5:9], ctx.needs_input_grad[6:10])]
        dfac = x.new_empty(sum(K) * b * V * L * H)
        want_init = any(ctx.needs_input_grad[12:14])
        dinit = x.new_empty(2, b, V, H, P, N) if want_init else None
        views = _views(*ins)
        failed = ctx.kernels[1](operands(views), ck.data_ptr(), dy.data_ptr(), *map(ptr, dl),
                                dx.data_ptr(), dbc.data_ptr(), dfac.data_ptr(), (ctypes.c_long * 4)(*K),
                                ds.data_ptr(), ptr(dinit),
                                b, V, L, H, G, ctx.strip, torch.get_num_threads())
        _check(failed, "backward", 2 * V * (STRIP + 1) + (STRIP + V + 2))

        def gen(d, t):  # per head -> per group, then the input's broadcast axes
            return d.unflatten(3, (G, H // G)).sum(4).sum_to_size(t.shape)

        def factor(m, t):  # factor m's block of dfac
            d = dfac[sum(K[:m]) * b * V * L * H:][:K[m] * b * V * L * H].view(*cells, K[m])
            return (d if t.dim() == 5 else d.squeeze(-1)).sum_to_size(t.shape)

        grads = [dx.sum_to_size(x.shape)] + [gen(dbc[m], ins[1 + m]) for m in range(4)]
        grads += [factor(m, ins[5 + m]) if K[m] else None for m in range(4)]
        grads += [None if ins[9 + m] is None else ds[m].sum_to_size(ins[9 + m].shape) for m in range(2)]
        grads += [None if shape is None or dinit is None else dinit[m].sum_to_size(shape)
                  for m, shape in enumerate(ctx.init_shapes)]
        return (None,) + tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[1:]))


def run(x, B1, C1, B2, C2, f, s1, s2, initial_state):
    """(y (b, V, L, H, P), (h1, h2) at the last column (b, V, H, P, N)), or None where the kernels cannot
    be built. ``f``: the factors f1, a2, a3, f4 (`torch_lowering._factors`; None: absent), ``s1``, ``s2``:
    the scales (b, V, L, H) or None. With gradients wanted, through `Fused`."""
    kernels = _kernels(x.dtype, x.shape[-1], B1.shape[-1])
    if kernels is None:
        return None
    ins = [x, B1, C1, B2, C2, f["f1"], f["a2"], f["a3"], f["f4"], s1, s2]
    init = (None, None) if initial_state is None else tuple(initial_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ins + list(init)):
        y, last1, last2 = Fused.apply(kernels, *ins, *init)
    else:
        y, last1, last2, _ = _forward(kernels, ins, *init, None)
    return y, (last1, last2)
