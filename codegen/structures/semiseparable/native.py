"""The ``scan`` lowering on the CPU as fused C loops (`native_c.SOURCE`, built at their first use in a process
by `mixerc.rt.native.library`): the token loop forward, and with gradients its adjoint and a second forward
sweep (`Fused`), no state stored between them. Copied with `torch_lowering` into generated modules.
docs/semiseparable.md, "The fused CPU scan".
"""

from __future__ import annotations

import ctypes

import torch

from mixerc.rt.native import REALS, function, huge_pages, library, operand_type, operands, ptr

from .native_c import SOURCE

def _kernels(dtype, P, N):
    """(forward, backward) for this element type and P, N; None where they cannot be built."""
    lib = library("scan", SOURCE, REALS[dtype], (("VALUE", P), ("STATE", N)))
    if lib is None:
        return None
    ops, p, n = operand_type(4), ctypes.c_void_p, ctypes.c_long
    return (function(lib, "scan_forward", [ops, ops] + [p] * 4 + [n] * 5 + [ctypes.c_int]),
            function(lib, "scan_backward", [ops, ops] + [p] * 9 + [n, p, p] + [n] * 5 + [ctypes.c_int]))


# positions between the forward's states kept for the decay's gradient: the backward sums at most this many
# terms from each (native_c `decay_grad`), in fp32 an error that does not grow with the length
CHECKPOINT = 128


def factor(a, keep, b, L, H):
    """The decay factor exp(a) (b, L, H) or (b, L, H, N), a broadcast kept one, times ``keep`` (b, L) (0 where a
    segment starts; None: nowhere); None when there is no decay."""
    f = None if a is None else a.exp().expand(b, L, H, *a.shape[3:])
    if keep is not None:
        keep = keep[:, :, None]
        f = keep.expand(b, L, H) if f is None else f * (keep if f.dim() == 3 else keep[..., None])
    return f


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


def _skip(skip, x):
    """The skip term's D as the kernels read it, broadcast to x's (b, L, H, P) (no copy), or None."""
    return None if skip is None else skip.expand(x.shape)


def _forward(kernels, ins, init, skip=None, keep_states=False):
    """Run the forward kernel on (x, B, C, f, s) from ``init`` (b, H, P, N) contiguous or None, adding D x where
    ``skip`` (D, broadcast to x's shape) is given: (y, last, the state before every `CHECKPOINT`-th position
    where ``keep_states``, else None)."""
    x, B = ins[0], ins[1]
    b, L, H, P = x.shape
    G, N = B.shape[2:]
    y, last = huge_pages(x.new_empty(b, L, H, P)), x.new_empty(b, H, P, N)
    ck = x.new_empty(b, H, -(-L // CHECKPOINT), N, P) if keep_states else None
    views, d = _views(*ins), _skip(skip, x)  # alive until the call returns: `operands` keeps only their pointers
    _check(kernels[0](operands(views), None if d is None else operands([d]), ptr(init), y.data_ptr(),
                      last.data_ptr(), ptr(ck), b, L, H, G, CHECKPOINT, torch.get_num_threads()), "forward")
    return y, last, ck


class Fused(torch.autograd.Function):
    """The fused forward, and as its backward the fused adjoint with a second forward sweep for dC.
    Inputs: the kernels, x, B, C, the log-decay a (b, L, H) or (b, L, H, N) (None: no decay), keep (b, L) (0
    where a segment starts; None: nowhere), the scale s (b, L, H), the initial state (None: absent), the skip
    term's D (broadcastable to x; None: absent); outputs y and the final state. The backward writes every
    gradient per position and head and sums them here to each input's shape; it works in place, so it is once
    differentiable."""

    @staticmethod
    def forward(ctx, kernels, x, B, C, a, keep, s, init, skip):
        b, L, H, P = x.shape
        f = factor(a, keep, b, L, H)
        init_c = None if init is None else init.expand(b, H, P, B.shape[-1]).contiguous()
        wants_da = a is not None and ctx.needs_input_grad[4]
        y, last, ck = _forward(kernels, (x, B, C, f, s), init_c, skip, keep_states=wants_da)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no zeros to read)
        ctx.kernels, ctx.given = kernels, [t is not None for t in (x, B, C, f, s, init_c, ck, skip)]
        ctx.save_for_backward(*[t for t in (x, B, C, f, s, init_c, ck, skip) if t is not None], last)
        ctx.a_shape = None if a is None else a.shape
        ctx.init_shape = None if init is None else init.shape
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dlast):
        saved = iter(ctx.saved_tensors)
        x, B, C, f, s, init, ck, skip = [next(saved) if given else None for given in ctx.given]
        last = next(saved)
        b, L, H, P = x.shape
        G, N = B.shape[2:]
        dy = x.new_zeros(()).expand(x.shape) if dy is None else dy  # read through its strides
        dlast = None if dlast is None else dlast.contiguous()
        dx, dB, dC = huge_pages(x.new_empty(b, L, H, P), x.new_empty(b, H, L, N), x.new_empty(b, H, L, N))
        dB, dC = dB.transpose(1, 2), dC.transpose(1, 2)  # (b, L, H, N), per head in memory: see the C
        ds = x.new_empty(b, H, L).transpose(1, 2) if s is not None and ctx.needs_input_grad[6] else None  # as da
        # the log-decay's gradient per state (K = N), per head (1: the kernel sums over n) or not wanted (0)
        a_shape = ctx.a_shape
        per_state = a_shape is not None and len(a_shape) == 4 and a_shape[-1] != 1
        K = 0 if a_shape is None or not ctx.needs_input_grad[4] else N if per_state else 1
        da = x.new_empty(b, H, L, K).transpose(1, 2) if K else None  # (b, L, H, K), per head in memory: see the C
        dinit = x.new_empty(b, H, P, N) if ctx.init_shape is not None and ctx.needs_input_grad[7] else None
        dskip = x.new_empty(b, H, P) if skip is not None and ctx.needs_input_grad[8] else None
        views, d = _views(x, B, C, f, s) + [dy], _skip(skip, x)  # alive until the call returns
        _check(ctx.kernels[1](operands(views), None if d is None else operands([d]), ptr(init), last.data_ptr(),
                              ptr(dlast), ptr(ck), dx.data_ptr(), ptr(ds), dB.data_ptr(), dC.data_ptr(), ptr(da), K,
                              ptr(dinit), ptr(dskip), b, L, H, G, CHECKPOINT, torch.get_num_threads()), "backward")

        def gen(d, t):  # per head -> per group, then the input's broadcast axes
            return d.unflatten(2, (G, H // G)).sum(3).sum_to_size(t.shape)

        grads = [dx.sum_to_size(x.shape), gen(dB, B), gen(dC, C),
                 None if da is None else (da if len(a_shape) == 4 else da.squeeze(-1)).sum_to_size(a_shape), None,
                 None if ds is None else ds.sum_to_size(s.shape),
                 None if dinit is None else dinit.sum_to_size(ctx.init_shape),
                 None if dskip is None else dskip.unsqueeze(1).sum_to_size(skip.shape)]
        return (None,) + tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[1:]))


def run(x, B, C, a, keep, s, initial_state, skip=None):
    """(y (b, L, H, P), final state (b, H, P, N)), or None where the kernels cannot be built. ``a``: the
    log-decay (b, L, H) or (b, L, H, N) (a broadcast of either) or None (no decay), ``keep``: (b, L), 0 where a
    segment starts (None: nowhere), ``s``: the value's scale (b, L, H) or None, ``skip``: D of a skip term
    ``y += D x`` (x unscaled; D broadcastable to x, without b and l) or None. With gradients wanted, through
    `Fused`."""
    kernels = _kernels(x.dtype, x.shape[-1], B.shape[-1])
    if kernels is None:
        return None
    ins = (x, B, C, a, keep, s, initial_state, skip)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ins):
        return Fused.apply(kernels, *ins)
    b, L, H, P = x.shape
    init = None if initial_state is None else initial_state.expand(b, H, P, B.shape[-1]).contiguous()
    return _forward(kernels, (x, B, C, factor(a, keep, b, L, H), s), init, skip)[:2]
