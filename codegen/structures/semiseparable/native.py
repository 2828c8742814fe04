"""The ``scan`` lowering on the CPU as fused C loops (`native_c.SOURCE`, built at their first use in a process
by `mixerc.rt.native.library`): the token loop forward, and with gradients the forward keeping the state
before every strip of positions and its adjoint (`Fused`). Copied with `torch_lowering` into generated
modules. docs/semiseparable.md, "The fused CPU scan".
"""

from __future__ import annotations

import ctypes

import torch

from mixerc.rt.native import REALS, function, library, operand_type, operands, ptr

from .native_c import SOURCE

STRIP = 32  # positions per checkpoint of the forward, recomputed by the backward in blocks of rows (native_c)


def padded(N, dtype):
    """The backward's state width: N rounded up to two vectors of 32 bytes (the C source's NP)."""
    two = 2 * 32 // dtype.itemsize
    return -(-N // two) * two


def _kernels(dtype, P, N):
    """(forward, backward) for this element type and P, N; None where they cannot be built."""
    lib = library("scan", SOURCE, REALS[dtype], (("VALUE", P), ("STATE", N)))
    if lib is None:
        return None
    ops, p, n = operand_type(4), ctypes.c_void_p, ctypes.c_long
    return (function(lib, "scan_forward", [ops] + [p] * 4 + [n] * 5 + [ctypes.c_int]),
            function(lib, "scan_backward", [ops] + [p] * 8 + [n, p] + [n] * 5 + [ctypes.c_int]))


def _views(x, B, C, f, s):
    """The five operands as the kernels read them, broadcast views (no copies): x (b, L, H, P), B and C
    (b, L, G, N), the factor (b, L, H, N) (absent: a constant 1), the scale (b, L, H, 1) (absent: 1)."""
    b, L, H, P = x.shape
    G, N = B.shape[2:]
    one = x.new_ones(())
    f = one.expand(b, L, H, N) if f is None else (f if f.dim() == 4 else f.unsqueeze(-1)).expand(b, L, H, N)
    s = one.expand(b, L, H, 1) if s is None else s.unsqueeze(-1).expand(b, L, H, 1)
    return [x, B.expand(b, L, G, N), C.expand(b, L, G, N), f, s]


def _check(failed, what):
    if failed:
        raise MemoryError(f"the semiseparable scan's fused {what} could not allocate its states per task")


def _forward(kernels, ins, init, strip):
    """Run the forward kernel: (y, last, the state before every ``strip`` positions (None: not kept))."""
    x, B = ins[0], ins[1]
    b, L, H, P = x.shape
    G, N = B.shape[2:]
    init = None if init is None else init.expand(b, H, P, N).contiguous()
    y, last = x.new_empty(b, L, H, P), x.new_empty(b, H, P, N)
    ck = None if strip is None else x.new_empty(b, H, -(-L // strip), P, padded(N, x.dtype))
    views = _views(*ins)
    _check(kernels[0](operands(views), ptr(init), y.data_ptr(), last.data_ptr(), ptr(ck),
                      b, L, H, G, strip or 1, torch.get_num_threads()), "forward")
    return y, last, ck


class Fused(torch.autograd.Function):
    """The fused forward keeping the state before every strip, and the fused adjoint as its backward.
    Inputs: the kernels, x, B, C, the factor f (b, L, H) or (b, L, H, N), the scale s (b, L, H), the initial
    state (None: absent); outputs y and the final state. The backward writes every gradient per position and
    head and sums them here to each input's shape; it works in place, so it is once differentiable."""

    @staticmethod
    def forward(ctx, kernels, x, B, C, f, s, init):
        ctx.strip = STRIP  # the backward must read the checkpoints with the forward's strip
        y, last, ck = _forward(kernels, (x, B, C, f, s), init, ctx.strip)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no zeros to read)
        ctx.kernels, ctx.given = kernels, [t is not None for t in (x, B, C, f, s)]
        ctx.save_for_backward(*[t for t in (x, B, C, f, s) if t is not None], ck)
        ctx.init_shape = None if init is None else init.shape
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dlast):
        saved = iter(ctx.saved_tensors)
        x, B, C, f, s = [next(saved) if given else None for given in ctx.given]
        ck = next(saved)
        b, L, H, P = x.shape
        G, N = B.shape[2:]
        dy = x.new_zeros(x.shape) if dy is None else dy.contiguous()
        dlast = None if dlast is None else dlast.contiguous()
        dx, dB, dC = x.new_empty(b, L, H, P), x.new_empty(b, L, H, N), x.new_empty(b, L, H, N)
        ds = x.new_empty(b, L, H) if s is not None and ctx.needs_input_grad[5] else None
        # the factor's gradient per state (K = N), per head (1: the kernel sums over n) or not wanted (0)
        K = 0 if f is None or not ctx.needs_input_grad[4] else N if f.dim() == 4 and f.shape[-1] != 1 else 1
        df = x.new_empty(b, L, H, K) if K else None
        dinit = x.new_empty(b, H, P, N) if ctx.init_shape is not None and ctx.needs_input_grad[6] else None
        views = _views(x, B, C, f, s)
        _check(ctx.kernels[1](operands(views), ck.data_ptr(), dy.data_ptr(), ptr(dlast), dx.data_ptr(), ptr(ds),
                              dB.data_ptr(), dC.data_ptr(), ptr(df), K, ptr(dinit),
                              b, L, H, G, ctx.strip, torch.get_num_threads()), "backward")

        def gen(d, t):  # per head -> per group, then the input's broadcast axes
            return d.unflatten(2, (G, H // G)).sum(3).sum_to_size(t.shape)

        grads = [dx.sum_to_size(x.shape), gen(dB, B), gen(dC, C),
                 None if df is None else (df if f.dim() == 4 else df.squeeze(-1)).sum_to_size(f.shape),
                 None if ds is None else ds.sum_to_size(s.shape),
                 None if dinit is None else dinit.sum_to_size(ctx.init_shape)]
        return (None,) + tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[1:]))


def run(x, B, C, f, s, initial_state):
    """(y (b, L, H, P), final state (b, H, P, N)), or None where the kernels cannot be built. ``f``: the decay
    factor (b, L, H) or (b, L, H, N) (zero where a segment starts) or None (no decay), ``s``: the value's scale
    (b, L, H) or None. With gradients wanted, through `Fused`."""
    kernels = _kernels(x.dtype, x.shape[-1], B.shape[-1])
    if kernels is None:
        return None
    ins = (x, B, C, f, s, initial_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ins):
        return Fused.apply(kernels, *ins)
    y, last, _ = _forward(kernels, ins[:5], initial_state, None)
    return y, last
