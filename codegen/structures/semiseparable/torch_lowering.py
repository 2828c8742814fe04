"""Semiseparable lowerings in torch ops, on the canonical layout.

    x (b, l, H, P)   B, C (b, l, G, N)   log_a: None | (b, l, H) | (b, l, H, N)
    initial_state (b, H, P, N) or None    seq_idx (b, l) integer segment ids or None
    x_scale (b, l, H) or None: the value is x * x_scale (a fused prologue, e.g. Mamba-2's x * dt)
    returns y (b, l, H, P), final_state (b, H, P, N)

    S_t = exp(log_a_t) * S_{t-1} + x_t (outer) B_t[g(h)],   y_t = S_t . C_t[g(h)],   g(h) = h // (H // G)

Segments (``seq_idx``): a maximal run of equal ids; the state is reset to zero where the id
changes, so nothing crosses a boundary; ``initial_state`` enters at position 0. Every lowering
expresses a reset as a mask (never as ``log_a = -inf``), so gradients stay finite.

- `reference`: materialise M (b, H, l, l) and multiply; the oracle. O(l^2) memory.
- `recurrent`: the token loop; decode and second oracle.
- `scan`: the token loop as fused C loops on the CPU (`native`); `chunked` elsewhere.
- `chunked`: chunks of Q positions. Scalar/no decay: the SSD algorithm (intra-chunk quadratic part
  as batched matmuls, chunk states, a sequential pass over chunk states, state -> output).
  Diagonal decay: a two-level scan (loops over the Q positions of all chunks at once and over the
  chunks; see `_chunked_diagonal`). Every exponent is a sum of log-decays within one chunk or one
  chunk's total, so with log_a <= 0 nothing overflows. Memory O(l * Q) per head, never O(l^2).
"""

from __future__ import annotations

import math

import torch

from mixerc.rt.native import usable
from mixerc.rt.segments import continues, segment_runs

from . import native

# -- shared helpers --------------------------------------------------------------------------


def _decay_per_state(log_a, b, l, H, N, like):
    """log_a as (b, l, H, N), zeros when there is no decay."""
    if log_a is None:
        return like.new_zeros(b, l, H, N)
    if log_a.dim() == 3:
        return log_a.unsqueeze(-1).expand(b, l, H, N)
    return log_a


# -- reference: the materialised matrix ------------------------------------------------------


def matrix(B, C, log_a, seq_idx=None, H: int | None = None) -> torch.Tensor:
    """M (b, H, l, l): M[i, j] = sum_n C_i[n] B_j[n] exp(sum_{k=j+1..i} log_a_k[n]) for i >= j."""
    b, l, G, N = B.shape
    H = H or (log_a.shape[2] if log_a is not None else G)
    rep = H // G
    Bh = B.repeat_interleave(rep, dim=2)  # (b, l, H, N)
    Ch = C.repeat_interleave(rep, dim=2)
    la = _decay_per_state(log_a, b, l, H, N, B)
    cs = la.cumsum(1)  # (b, l, H, N)
    seg = cs[:, :, None] - cs[:, None, :]  # (b, i, j, H, N)
    causal = torch.ones(l, l, dtype=torch.bool, device=B.device).tril()
    seg = seg.masked_fill(~causal[None, :, :, None, None], float("-inf"))
    M = torch.einsum("bihn,bjhn,bijhn->bhij", Ch, Bh, seg.exp())
    runs = segment_runs(seq_idx)
    if runs is not None:
        M = M * (runs[:, None, :, None] == runs[:, None, None, :])
    return M


def reference(x, B, C, log_a=None, initial_state=None, seq_idx=None, chunk_size=None, x_scale=None):
    x = x if x_scale is None else x * x_scale[..., None]
    b, l, H, P = x.shape
    N = B.shape[-1]
    M = matrix(B, C, log_a, seq_idx, H)
    y = torch.einsum("bhij,bjhp->bihp", M, x)
    la = _decay_per_state(log_a, b, l, H, N, x)
    cs = la.cumsum(1)  # (b, l, H, N): log prod_{k<=i} a_k
    runs = segment_runs(seq_idx)
    Bh = B.repeat_interleave(H // B.shape[2], dim=2)
    Ch = C.repeat_interleave(H // C.shape[2], dim=2)
    # final state: sum_j prod_{k=j+1..l-1} a_k x_j B_j  (+ prod_{k<=l-1} a_k S0)
    w = (cs[:, -1:] - cs).exp()  # (b, l, H, N)
    if runs is not None:
        w = w * (runs == runs[:, -1:])[:, :, None, None]
    final = torch.einsum("bjhp,bjhn,bjhn->bhpn", x, Bh, w)
    if initial_state is not None:
        reach = cs.exp()  # (b, l, H, N)
        if runs is not None:
            reach = reach * (runs == 0)[:, :, None, None]
        y = y + torch.einsum("bihn,bihn,bhpn->bihp", Ch, reach, initial_state)
        final = final + reach[:, -1, :, None, :] * initial_state
    return y, final


def materialize(x, B, C, log_a=None, initial_state=None, seq_idx=None, chunk_size=None, x_scale=None):
    """``(M, None)``: M (b, H, l, l) with ``y = M x`` (x_scale folded into the columns; the
    initial state's contribution is not part of M)."""
    M = matrix(B, C, log_a, seq_idx, x.shape[2])
    if x_scale is not None:
        M = M * x_scale.permute(0, 2, 1)[:, :, None, :]
    return M, None


# -- recurrent: the token loop ---------------------------------------------------------------


def recurrent(x, B, C, log_a=None, initial_state=None, seq_idx=None, chunk_size=None, x_scale=None):
    x = x if x_scale is None else x * x_scale[..., None]
    b, l, H, P = x.shape
    G, N = B.shape[2:]
    rep = H // G
    S = x.new_zeros(b, H, P, N) if initial_state is None else initial_state
    runs = segment_runs(seq_idx)
    decay = None if log_a is None else log_a.exp()
    Bh = B.repeat_interleave(rep, dim=2)  # (b, l, H, N)
    Ch = C.repeat_interleave(rep, dim=2)
    ys = []
    for t in range(l):
        if runs is not None and t > 0:
            keep = (runs[:, t] == runs[:, t - 1]).to(x.dtype)
            S = S * keep[:, None, None, None]
        if decay is not None:
            a = decay[:, t]
            S = S * (a[:, :, None, None] if a.dim() == 2 else a[:, :, None, :])
        S = S + x[:, t, :, :, None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Ch[:, t]))
    return torch.stack(ys, dim=1), S


# -- chunked ---------------------------------------------------------------------------------


def pad_positions(t, L):
    """Zeros appended along l up to length ``L`` (symbolic under torch.compile: no branch on it there).
    Each tensor is padded from its own length: traced, every input's length is a symbol of its own, and
    ``t.shape[1] + (L - t.shape[1])`` is exactly ``L``, so the later reshapes into ``(c, Q)`` carry no other
    symbol into inductor's index arithmetic (B padded by ``L - l_x`` had strides divided by a symbolic
    chunk count inside every loop: 2x slower kernels). Eagerly, no padding is no copy (a copy of x at
    l = 65536 is 134 MB of the peak)."""
    if t is None or (not torch.compiler.is_compiling() and t.shape[1] == L):
        return t
    return torch.cat([t, t.new_zeros((t.shape[0], L - t.shape[1]) + tuple(t.shape[2:]))], dim=1)


def _spare() -> int:
    """1 while torch.compile traces, else 0: a spare chunk (or group of chunks) of padding, so that
    no traced size can be 1. Dynamo specialises a size that is 1 (broadcasting differs), which would
    give short sequences (one chunk) a graph of their own, and one group of chunk states another."""
    return 1 if torch.compiler.is_compiling() else 0


def padded_length(l, Q: int):
    """``(c, L)``: chunks and padded length, ``L = c Q >= l``, written so that ``L`` is ``c * Q`` for
    symbolic shapes too (then reshaping to ``(c, Q)`` needs no guard); while tracing, one spare
    chunk (`_spare`)."""
    c = (l + Q - 1 + Q * _spare()) // Q  # one floor division: see `scan_entries`
    return c, c * Q


def pad_runs(runs, L):
    """Segment runs padded to length L with the last position's run (padded positions join the
    last segment, where their zero inputs change nothing)."""
    if runs is None:
        return None
    b, l = runs.shape
    return torch.cat([runs, runs[:, -1:].expand(b, L - l)], dim=1)


def chunked(x, B, C, log_a=None, initial_state=None, seq_idx=None, chunk_size=64, x_scale=None):
    b, l, H, P = x.shape
    if log_a is not None:  # a decay without a head dim (one number, or one per state) is the heads' own
        log_a = log_a.expand(b, l, H, *log_a.shape[3:])
    Q = int(chunk_size)
    c, L = padded_length(l, Q)
    # padded positions: x = B = C = 0 and log_a = 0, so they change neither outputs nor the state;
    # always padded (possibly by nothing), so that one traced graph serves every length
    x, B, C, log_a, x_scale = (pad_positions(t, L) for t in (x, B, C, log_a, x_scale))
    runs = pad_runs(segment_runs(seq_idx), L)
    if log_a is not None and log_a.dim() == 4:
        x = x if x_scale is None else x * x_scale[..., None]
        y, final = _chunked_diagonal(x, B, C, log_a, initial_state, runs, Q)
    else:
        y, final = _chunked_scalar(x, B, C, log_a, initial_state, runs, Q, x_scale)
    return y[:, :l], final


# -- scan: the token loop as fused C loops on the CPU ------------------------------------------


def scan(x, B, C, log_a=None, initial_state=None, seq_idx=None, chunk_size=64, x_scale=None, skip=None):
    """The token loop of `recurrent` as fused C loops (`native`): one state per (batch row, head) kept in
    cache for the whole sequence, the adjoint as its backward. ``skip``: D of a skip term added to the output,
    ``y + D x`` (x unscaled; D broadcastable to x, over heads and values only), fused into the loops. Where they
    cannot run (a tensor not on the CPU, half precision, a torch.compile or jit trace, forward-mode AD, no C
    compiler): `chunked`, then the skip term."""
    H, G = x.shape[2], B.shape[2]  # heads and groups that do not divide: chunked raises the error
    constant = skip is None or skip.is_floating_point() and all(n == 1 for n in skip.shape[:-2])  # over b, l
    if H % G == 0 and C.shape[2] == G and constant and usable(x, B, C, log_a, x_scale, initial_state, skip):
        out = native.run(x, B, C, log_a, continues(seq_idx, x.dtype), x_scale, initial_state, skip)
        if out is not None:
            return out
    y, final = chunked(x, B, C, log_a, initial_state, seq_idx, chunk_size, x_scale)
    return (y if skip is None else torch.addcmul(y, skip, x)), final


def later(t, dim: int):
    """``t`` moved one step later along ``dim`` (zeros first, the last entry dropped). A
    concatenation, then a slice of the original size: a slice of ``size - 1`` entries would be a
    traced size 1 for the shortest inputs, which torch.compile specialises (a graph of their own)."""
    n = t.shape[dim]
    pad = torch.zeros_like(t.narrow(dim, 0, 1))
    return torch.cat([pad, t], dim=dim).narrow(dim, 0, n)


def chunk_runs(runs, b, c, Q):
    """Per chunk: run of every position (b, c, Q) and the run the incoming state belongs to (b, c),
    i.e. the run of the previous chunk's last position (run 0 for chunk 0: the initial state)."""
    r = runs.view(b, c, Q)
    return r, later(r[:, :, -1], 1)


def exp_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """Exponents kept inside ``[lo, hi]``: below ``lo`` exp gives subnormals, which CPUs compute
    ~10x slower (the clamp turns a decay of ~1e-37 in fp32, ~1e-306 in fp64, that underflows
    anyway into that value); above ``hi`` it overflows to inf, which must not meet a zero."""
    info = torch.finfo(dtype)
    return math.log(info.tiny) + 2.0, math.log(info.max) - 2.0


def from_last(cs: torch.Tensor) -> torch.Tensor:
    """``cs_last - cs_j`` along the last dim (in-chunk cumsums), its last entry (an empty product)
    exactly 0 and without a gradient, for the same reason as the diagonal of the intra-chunk decay."""
    d = cs[..., -1:] - cs
    return torch.cat([d[..., :-1], torch.zeros_like(d[..., -1:])], -1)


# entries per group of the chunk-level state pass (`scan_entries`): each group runs its own recurrence
# in T - 1 elementwise steps, and the groups' ends are passed on by the same scan one level up
PASS_GROUP = 16


def scan_entries(V, a, keep=None, depth: int = 2):
    """The chunk-level recurrence ``E_k = d_k E_{k-1} + V_k`` along dim 1 (``E_{-1} = 0``), for every k at
    once, with ``d_k = exp(a_k) keep_k``.

    ``V (b, n, *F)`` (or a list of pieces that concatenate along dim 1 into it: copied once, with the
    padding), ``a (b, n, *Fa)`` log-decays and ``keep (b, n, *Fk)`` 0/1 (None: all 1; a 0 cuts the
    recurrence, e.g. at a segment boundary), each broadcasting against ``F`` (a decay per head shared by
    the head's state entries, say). Returns ``E`` shaped like V.

    No loop whose trip count depends on n: the entries are padded to groups of T = PASS_GROUP; each
    group runs its own recurrence from a zero state in T - 1 elementwise steps (on all groups at once);
    the states at the groups' ends are passed between groups by this same scan one level up (``depth``
    levels, then `_scan_by_matrix`, whose matrix is (n / T^depth)^2); each entry then adds the state
    that entered its group, decayed by ``exp`` of an in-group cumulative sum of at most T log-decays.
    Work and memory O(n F); exponents clamped into ``exp_bounds`` (no subnormals, no overflow)."""
    pieces = [V] if isinstance(V, torch.Tensor) else list(V)
    b, F = pieces[0].shape[0], pieces[0].shape[2:]
    n = a.shape[1]
    if depth == 0:
        return _scan_by_matrix(pieces[0] if len(pieces) == 1 else torch.cat(pieces, 1), a, keep)
    T = PASS_GROUP
    # one floor division (not one plus a spare): inductor cannot simplify strides of (e + 1) ** 2 / (e + 1)
    ng = (n + T - 1 + T * _spare()) // T
    pad = ng * T - n
    lo, hi = exp_bounds(pieces[0].dtype)

    def grouped(t, fill):  # (b, n, *X) padded with ``fill`` -> (b, ng, T, *X)
        return torch.cat([t, t.new_full((b, pad, *t.shape[2:]), fill)], 1).view(b, ng, T, *t.shape[2:])

    V = torch.cat([*pieces, pieces[0].new_zeros(b, pad, *F)], 1).view(b, ng, T, *F)
    a = grouped(a, 0.0)
    d = a.clamp(lo, hi).exp()
    reach = a.cumsum(2).clamp(lo, hi).exp()  # group start -> entry t, inclusive
    keep_g = None
    if keep is not None:
        keep = grouped(keep, 1.0)
        d, reach, keep_g = d * keep, reach * keep.cumprod(2), keep.prod(2)
    # unbind, not indexing: the backward of one unbind stacks the T gradients once, where T index
    # ops would each fill a zero tensor of V's size
    Vt, dt, rt = V.unbind(2), d.unbind(2), reach.unbind(2)
    if torch.is_grad_enabled() and (V.requires_grad or a.requires_grad):
        local = [Vt[0]]  # each group's recurrence from a zero state
        for t in range(1, T):
            local.append(torch.addcmul(Vt[t], dt[t], local[-1]))
        # the full state at each group's end, then shifted: the state entering each group (`later`: never a
        # slice of ng - 1 groups)
        carry = later(scan_entries(local[-1], a.sum(2), keep_g, depth - 1), 1)
        E = torch.stack([torch.addcmul(local[t], rt[t], carry) for t in range(T)], 2)
    else:  # nothing to differentiate: the same steps in place, in V (this function's own padded copy)
        for t in range(1, T):
            Vt[t].addcmul_(dt[t], Vt[t - 1])
        carry = later(scan_entries(Vt[-1], a.sum(2), keep_g, depth - 1), 1)
        E = V.addcmul_(reach, carry.unsqueeze(2))
    # split, not narrow: narrow's backward fills a zero tensor of the padded size, split's concatenates
    return E.view(b, ng * T, *F).split([n, pad], 1)[0]


def _scan_by_matrix(V, a, keep):
    """`scan_entries` for few entries: ``E_k = sum_{z <= k} W[k, z] V_z`` with
    ``W[k, z] = exp(a_{z+1} + ... + a_k) keep_{z+1} ... keep_k`` for ``z <= k``, else 0.

    Each exponent is the paper's ``segsum``: a cumulative sum down the rows of the matrix of ``a``
    with everything on and above the diagonal zeroed, so only the terms in range are added (never the
    difference of two long cumulative sums, which would cancel); with ``a <= 0`` no entry exceeds 1.
    The diagonal (an empty sum) is exactly 0 with no gradient; entries above it are set to 0 after the
    ``exp``. The matmul runs per decay (the dims where ``a`` or ``keep`` vary) over the rest of F."""
    b, n, *F = V.shape
    lo, hi = exp_bounds(V.dtype)
    below = torch.ones(n, n, dtype=torch.bool, device=V.device).tril(-1)

    def rows(t, fill):  # (b, n, *X) -> (b, *X, n, n): [k, z] = t_k below the diagonal, ``fill`` elsewhere
        t = t.movedim(1, -1)
        return t.unsqueeze(-1).expand(*t.shape, n).masked_fill(~below, fill)

    W = rows(a, 0.0).cumsum(-2).clamp(lo, hi).exp().tril()
    if keep is not None:
        W = W * rows(keep, 1.0).cumprod(-2)
    D = W.shape[1:-2]
    per = [i for i in range(len(F)) if D[i] != 1]  # dims with a decay of their own
    cols = [i for i in range(len(F)) if D[i] == 1]  # dims sharing it: the matmul's columns
    order = [0, *[2 + i for i in per], 1, *[2 + i for i in cols]]
    E = W.reshape(b, *[F[i] for i in per], n, n) @ V.permute(order).reshape(b, *[F[i] for i in per], n, -1)
    E = E.view(b, *[F[i] for i in per], n, *[F[i] for i in cols])
    return E.permute([order.index(k) for k in range(len(order))])


def pass_chunks(states, totals, S0, ids):
    """The state entering every chunk and the final state, from each chunk's own state (from a zero
    start) and its log-decay total: ``S_in[0] = S0``, ``S_in[k+1] = exp(totals_k) S_in[k] + states_k``.

    ``states (b, c, G, N, rep*P)``, ``totals (b, c, G, rep)``, ``S0 (b, G, rep, N, P)`` or None,
    ``ids (b, c+1)`` or None: run ids of the initial state and of every chunk's state, monotone
    (a state reaches a later chunk's entry only with an equal id). Returns ``S_in (b, c, G, N, rep*P)``
    and the final state ``(b, G, rep, N, P)``. One `scan_entries` over entries [S0, states_0, ...], in
    the states' own layout (the decay of a head broadcast over its N x P block: no permuted copy)."""
    b, c, G, N, rP = states.shape
    rep = totals.shape[-1]
    P = rP // rep
    V = states.view(b, c, G, N, rep, P)
    V0 = V.new_zeros(b, 1, G, N, rep, P) if S0 is None else S0.to(V.dtype).permute(0, 1, 3, 2, 4)[:, None]
    a = torch.cat([totals.new_zeros(b, 1, G, rep), totals], dim=1)[:, :, :, None, :, None]  # (b, c+1, G, 1, rep, 1)
    keep = None
    if ids is not None:  # entry k continues entry k - 1's state only within one run
        keep = (ids == later(ids, 1)).to(V.dtype)[:, :, None, None, None, None]
    S_in, final = scan_entries([V0, V], a, keep).split([c, 1], 1)  # (b, c+1, G, N, rep, P); see scan_entries
    # the final state copied: a view would keep every chunk's state alive as long as the caller keeps it
    return S_in.reshape(b, c, G, N, rP), final[:, 0].permute(0, 1, 3, 2, 4).clone()  # final (b, G, rep, N, P)


def intra_decays(cs, same):
    """``L_ij = exp(cs_i - cs_j)`` for ``j <= i`` in i's segment, else 0: ``(b, c, G, rep, Q, Q)`` from the in-chunk
    cumulative log-decays ``cs (b, c, G, rep, Q)`` and ``same`` (None or ``(b, c, 1, 1, Q, Q)``). Exponents are
    clamped into the normal range (`exp_bounds`: no subnormal ``exp``, no overflow above the diagonal)."""
    lo, hi = exp_bounds(cs.dtype)
    L = (cs[..., :, None] - cs[..., None, :]).clamp_(lo, hi).exp_().tril_()  # diagonal: exp(0) = 1 exactly
    return L if same is None else L.mul_(same)


class IntraChunk(torch.autograd.Function):
    """Step 1 of the SSD algorithm, ``y_i = sum_{j <= i} CB_ij exp(cs_i - cs_j) x_j`` per head and chunk, with
    its backward written out. ``CB (b, c, G, 1, Q, Q)`` causal; ``cs (b, c, G, rep, Q)`` in-chunk cumulative
    log-decays; ``x (b, c, G, rep, Q, P)``; ``same`` None or ``(b, c, 1, 1, Q, Q)``: j lies in i's segment.

    Autograd of the plain expression ran about a dozen passes over the ``Q x Q`` blocks of every head in
    the backward (the clamp's masks, the masked diagonal, the difference's negation, ...). Written out,
    with ``L = exp(cs_i - cs_j)`` (0 above the diagonal and across segments) and ``gW = dy x^T``:
    ``dCB = sum_heads gW L``, ``g = gW CB L`` with its diagonal zeroed (``cs_i - cs_i`` is exactly 0, no
    function of cs: no rounding noise from a +g - g), ``dcs = rowsum(g) - colsum(g)``, ``dx = (CB L)^T dy``.
    Exponents are clamped (`intra_decays`); a clamped entry keeps its gradient, at most exp(lo) (1e-37 in fp32)
    of an unclamped one.
    Once differentiable (the backward works in place): a double backward raises."""

    @staticmethod
    def forward(ctx, CB, cs, x, same):
        L = intra_decays(cs, same)
        x = x.contiguous()  # the layout both matmuls read (matmul would copy the strided view each time)
        ctx.save_for_backward(CB, x, L)
        return (CB * L) @ x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        CB, x, L = ctx.saved_tensors
        dy = dy.contiguous()  # arrives transposed from the caller's sum; both matmuls would copy it
        dx = (CB * L).transpose(-1, -2) @ dy
        g = (dy @ x.transpose(-1, -2)).mul_(L)  # gW L
        dCB = g.sum(3, keepdim=True)
        g = g.mul_(CB)
        g.diagonal(dim1=-2, dim2=-1).zero_()
        return dCB, g.sum(-1) - g.sum(-2), dx, None


def _chunked_scalar(x, B, C, log_a, S0, runs, Q, x_scale=None):
    b, L, H, P = x.shape
    G, N = B.shape[2:]
    rep, c = H // G, L // Q
    rP = rep * P
    # token-major layout: a chunk of one group is a (Q, rep*P) matrix holding all its heads, so
    # chunk states and state -> output are single matmuls per group; every step runs on all chunks
    # at once (no loop whose trip count depends on l: one traced graph serves every length)
    xb = x.reshape(b, c, Q, G, rep, P)
    if x_scale is not None:  # the fused prologue x * scale
        xb = xb * x_scale.reshape(b, c, Q, G, rep)[..., None]
    Bg = B.reshape(b, c, Q, G, N).transpose(2, 3)  # (b, c, G, Q, N)
    Cg = C.reshape(b, c, Q, G, N).transpose(2, 3)
    if log_a is None:
        cs = x.new_zeros(b, c, G, rep, Q)
    else:
        cs = log_a.reshape(b, c, Q, G, rep).permute(0, 1, 3, 4, 2).cumsum(-1)  # (b, c, G, rep, Q)
    if runs is not None:
        r, prev = chunk_runs(runs, b, c, Q)
        rc = r[:, :, None, None]  # (b, c, 1, 1, Q)

    # 1. intra-chunk: y_i = sum_{j<=i} (C_i . B_j) exp(cs_i - cs_j) x_j
    CB = (Cg @ Bg.transpose(-1, -2)).tril_()  # (b, c, G, Q, Q): causal, once per group
    same = None if runs is None else rc[..., :, None] == rc[..., None, :]  # j in i's segment
    if torch.is_grad_enabled() and (xb.requires_grad or CB.requires_grad or cs.requires_grad):
        y_in = IntraChunk.apply(CB[:, :, :, None], cs, xb.permute(0, 1, 3, 4, 2, 5), same)  # (b, c, G, rep, Q, P)
    else:  # nothing to differentiate: the weights formed in place in L's buffer
        y_in = intra_decays(cs, same).mul_(CB[:, :, :, None]) @ xb.permute(0, 1, 3, 4, 2, 5)

    # 2. chunk states, state-major: S_c^T = sum_j B_j (outer) x_j exp(cs_last - cs_j)
    to_end = from_last(cs).exp()  # (b, c, G, rep, Q)
    if runs is not None:
        to_end = to_end * (rc == rc[..., -1:])
    xw = (xb * to_end.permute(0, 1, 4, 2, 3)[..., None]).reshape(b, c, Q, G, rP).transpose(2, 3)
    states = Bg.transpose(-1, -2) @ xw  # (b, c, G, N, rep*P)
    del xb, xw  # likewise (each as large as x)

    # 3. pass states across chunks, decayed by whole chunks' totals, all chunks at once; run ids: 0
    # for the initial state, then the run of each chunk's last position (the one its state belongs to)
    ids = None
    if runs is not None:
        ids = torch.cat([torch.zeros_like(r[:, :1, 0]), r[:, :, -1]], dim=1)  # (b, c+1)
    S0 = None if S0 is None else S0.reshape(b, G, rep, P, N).transpose(-1, -2)
    S_in, final = pass_chunks(states, cs[..., -1], S0, ids)
    final = final.transpose(-1, -2).reshape(b, H, P, N)

    # 4. state -> output: y_i += exp(cs_i) C_i . S_in
    reach = cs.exp()
    if runs is not None:
        reach = reach * (rc == prev[:, :, None, None, None])
    y = (Cg @ S_in).view(b, c, G, Q, rep, P).mul_(reach.transpose(-1, -2)[..., None])  # in place: no 2nd buffer
    y = y.add_(y_in.transpose(3, 4))  # (b, c, G, Q, rep, P)
    return y.transpose(2, 3).reshape(b, L, H, P), final  # a free view when G == 1


def _chunked_diagonal(x, B, C, log_a, S0, runs, Q):
    """Two-level scan: a loop over the Q positions of all chunks at once (twice: first from a zero
    state for each chunk's own end state, then from the state entering the chunk, emitting outputs)
    and a loop over chunks in between. Q + c + Q steps instead of l; only per-step decays are
    exponentiated, so no exponent ever exceeds one step's log-decay."""
    b, L, H, P = x.shape
    G, N = B.shape[2:]
    rep, c = H // G, L // Q
    xc = x.reshape(b, c, Q, H, P)[..., None]  # (b, c, Q, H, P, 1)
    Bc = B.reshape(b, c, Q, G, N)
    Cc = C.reshape(b, c, Q, G, N)
    lac = log_a.reshape(b, c, Q, H, N)
    lo, _ = exp_bounds(x.dtype)

    def per_head(t):  # (b, c, G, N) -> broadcastable against (b, c, H, P, N)
        return (t if rep == 1 or G == 1 else t.repeat_interleave(rep, dim=2))[:, :, :, None, :]

    def decay(i):  # (b, c, H, 1, N), zero where a segment starts at position i of the chunk
        a = lac[:, :, i].clamp_min(lo).exp()[:, :, :, None, :]
        if runs is None:
            return a
        ok = r[:, :, i] == (r[:, :, i - 1] if i > 0 else prev)
        return a * ok[:, :, None, None, None]

    if runs is not None:
        r, prev = chunk_runs(runs, b, c, Q)
    # 1. every chunk's own contribution to its end state, from a zero state
    S = xc[:, :, 0] * per_head(Bc[:, :, 0])
    for i in range(1, Q):
        S = decay(i) * S + xc[:, :, i] * per_head(Bc[:, :, i])
    # 2. pass states across chunks: S_enter[k+1] = (prod of the chunk's decays) S_enter[k] + own[k],
    # for all chunks at once (`scan_entries`, in the states' own layout, a decay per state component n)
    S0 = S.new_zeros(b, 1, H, P, N) if S0 is None else S0.to(x.dtype)[:, None]
    a = torch.cat([lac.new_zeros(b, 1, H, N), lac.sum(2)], dim=1)[:, :, :, None, :]  # (b, c+1, H, 1, N)
    keep = None
    if runs is not None:
        ids = torch.cat([torch.zeros_like(r[:, :1, 0]), r[:, :, -1]], dim=1)  # (b, c+1)
        keep = (ids == later(ids, 1)).to(x.dtype)[:, :, None, None, None]
    S, final = scan_entries([S0, S], a, keep).split([c, 1], 1)  # (b, c+1, H, P, N) as (b, c, ...), (b, 1, ...)
    final = final[:, 0].clone()  # (b, H, P, N); a copy: a view would keep every chunk's state alive
    # 3. scan every chunk again from the state entering it, reading outputs on the way
    ys = []
    for i in range(Q):
        S = decay(i) * S + xc[:, :, i] * per_head(Bc[:, :, i])
        ys.append((S * per_head(Cc[:, :, i])).sum(-1))  # (b, c, H, P)
    return torch.stack(ys, dim=2).reshape(b, L, H, P), final
