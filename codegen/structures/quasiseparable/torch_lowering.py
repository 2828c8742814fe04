"""Quasiseparable lowerings in torch ops, on the canonical layout (see
`mixerc.ir.structures.quasiseparable` for the matrix).

    x (b, l, H, P)     B, C, B_bwd, C_bwd (b, l, G, N)     log_a, log_a_bwd: None | (b, l, H) | (b, l, H, N)
    scale, scale_bwd: None | (b, l, H)     diag: None | broadcastable to (b, l, H, P)
    seq_idx (b, l) or None: no entry of M links two segments.     returns (y (b, l, H, P), None)

    y_i = C_{i-1} . S_{i-1}  +  C'_{i+1} . R_{i+1}  +  diag_i x_i
    S_t = a_t S_{t-1} + s_t x_t (outer) B_t         (causal state, forward in time)
    R_t = a'_t R_{t+1} + s'_t x_t (outer) B'_t      (anti-causal state, backward in time)

- `reference`: materialise M (b, H, l, l) from the semiseparable oracle of each direction; the oracle.
- `recurrent`: the two token loops.
- `scan`: two semiseparable `scan`s (fused C loops on the CPU), one on the reversed sequence.
- `chunked`: scalar or no decay: both directions in one pass over chunks of Q positions, sharing
  the intra-chunk product (lower + upper scores) @ x_chunk and reading x, the output and the
  segment masks once; the chunk states of the two directions are passed left-to-right and
  right-to-left between. Diagonal decay: two semiseparable two-level scans on the reversed and the
  original sequence. No batch doubling, no concatenated copies of x.
"""

from __future__ import annotations

import torch

from mixerc.rt.native import usable
from mixerc.rt.segments import segment_runs


from ..semiseparable import torch_lowering as _ss
from ..semiseparable.torch_lowering import chunk_runs, exp_bounds, from_last, pad_positions, padded_length, pad_runs, \
    pass_chunks, later



def _flip(t):
    return None if t is None else t.flip(1)


def _shift_down(t):
    """Rows moved one position later along l (position 0 gets zeros)."""
    return later(t, 1)


def _scaled(x, scale):
    return x if scale is None else x * scale[..., None]


def _with_diag(y, x, diag):
    return y if diag is None else y + diag * x


# -- reference: the materialised matrix ------------------------------------------------------


def materialize(x, B, C, log_a, scale, B_bwd, C_bwd, log_a_bwd, scale_bwd, diag=None,
                initial_state=None, seq_idx=None, chunk_size=None):
    """M (b, H, l, l) with ``y = M x`` per head (``x`` gives only the shapes). ``diag`` must not
    vary along P (one matrix per head)."""
    b, l, H, P = x.shape
    lower = _ss.matrix(B, C, log_a, seq_idx, H)  # (b, H, l, l): SS[i, j], i >= j
    upper = _ss.matrix(_flip(B_bwd), _flip(C_bwd), _flip(log_a_bwd), _flip(seq_idx), H)
    if scale is not None:
        lower = lower * scale.permute(0, 2, 1)[:, :, None, :]
        upper = upper * scale_bwd.flip(1).permute(0, 2, 1)[:, :, None, :]
    # shift(SS)[i, j] = SS[i - 1, j]; flip . shift(SS') . flip on the reversed sequence's matrix
    M = _shift_down(lower.transpose(1, 2)).transpose(1, 2)
    M = M + _shift_down(upper.transpose(1, 2)).transpose(1, 2).flip(-1, -2)
    runs = segment_runs(seq_idx)
    if runs is not None:  # the shift may carry a row across a boundary: mask by the row's own run
        M = M * (runs[:, None, :, None] == runs[:, None, None, :])
    if diag is not None:
        d = diag.expand(b, l, H, P)
        if P > 1 and not torch.equal(d, d[..., :1].expand_as(d)):
            raise ValueError("materialize: the diagonal varies along the value dim, so M is not one "
                             "matrix per head")
        M = M + torch.diag_embed(d[..., 0].permute(0, 2, 1))
    return M, None


def reference(x, B, C, log_a, scale, B_bwd, C_bwd, log_a_bwd, scale_bwd, diag=None,
              initial_state=None, seq_idx=None, chunk_size=None):
    M, _ = materialize(x, B, C, log_a, scale, B_bwd, C_bwd, log_a_bwd, scale_bwd, None, seq_idx=seq_idx)
    y = torch.einsum("bhij,bjhp->bihp", M, x)
    return _with_diag(y, x, diag), None


# -- recurrent: the two token loops ----------------------------------------------------------


def _states_after(x, B, log_a, runs, order):
    """The state after each position, visiting positions in ``order`` and resetting where the
    segment changes: a list over positions of (b, H, P, N)."""
    b, l, H, P = x.shape
    G, N = B.shape[2:]
    Bh = B.repeat_interleave(H // G, dim=2)
    S, prev, out = x.new_zeros(b, H, P, N), None, [None] * l
    for t in order:
        if runs is not None and prev is not None:
            S = S * (runs[:, t] == runs[:, prev]).to(x.dtype)[:, None, None, None]
        if log_a is not None:
            a = log_a[:, t].exp()
            S = S * (a[:, :, None, None] if a.dim() == 2 else a[:, :, None, :])
        S = S + x[:, t, :, :, None] * Bh[:, t, :, None, :]
        out[t], prev = S, t
    return out


def recurrent(x, B, C, log_a, scale, B_bwd, C_bwd, log_a_bwd, scale_bwd, diag=None,
              initial_state=None, seq_idx=None, chunk_size=None):
    b, l, H, P = x.shape
    rep = H // B.shape[2]
    runs = segment_runs(seq_idx)
    fwd = _states_after(_scaled(x, scale), B, log_a, runs, range(l))
    bwd = _states_after(_scaled(x, scale_bwd), B_bwd, log_a_bwd, runs, range(l - 1, -1, -1))
    Ch, Cbh = (t.repeat_interleave(rep, dim=2) for t in (C, C_bwd))

    def read(S, Cn, u, t):  # state after position u, read by row t (zero across a boundary)
        y = torch.einsum("bhpn,bhn->bhp", S[u], Cn[:, u])
        return y if runs is None else y * (runs[:, u] == runs[:, t]).to(x.dtype)[:, None, None]

    ys = []
    for t in range(l):
        y = x.new_zeros(b, H, P)
        if t > 0:
            y = y + read(fwd, Ch, t - 1, t)
        if t < l - 1:
            y = y + read(bwd, Cbh, t + 1, t)
        ys.append(y)
    return _with_diag(torch.stack(ys, dim=1), x, diag), None


# -- chunked -----------------------------------------------------------------------------------


def chunked(x, B, C, log_a, scale, B_bwd, C_bwd, log_a_bwd, scale_bwd, diag=None,
            initial_state=None, seq_idx=None, chunk_size=64):
    b, l, H, P = x.shape
    runs = segment_runs(seq_idx)
    scale, scale_bwd = (None if t is None else t.expand(b, l, H) for t in (scale, scale_bwd))
    # a decay without a head dim (one number, or one per state) is the heads' own
    log_a, log_a_bwd = (None if t is None else t.expand(b, l, H, *t.shape[3:]) for t in (log_a, log_a_bwd))
    if log_a is not None and log_a.dim() == 4:  # diagonal: two semiseparable scans
        return _two_directions(_ss.chunked, x, B, C, log_a, scale, B_bwd, C_bwd, log_a_bwd, scale_bwd, diag,
                               seq_idx, chunk_size)
    Q = int(chunk_size)
    c, L = padded_length(l, Q)  # always padded (possibly by nothing): one traced graph for every l
    # C read one row away: C_{i-1} for the lower part, C'_{i+1} for the upper one
    Cs = _shift_down(C)
    Cbs = _shift_down(C_bwd.flip(1)).flip(1)
    ins = [pad_positions(t, L) for t in (x, B, Cs, log_a, scale, B_bwd, Cbs, log_a_bwd, scale_bwd)]
    y = _chunked_scalar(*ins, pad_runs(runs, L), Q)[:, :l]
    return _with_diag(y, x, diag), None


def _two_directions(one, x, B, C, log_a, scale, B_bwd, C_bwd, log_a_bwd, scale_bwd, diag, seq_idx, chunk_size):
    """y from two semiseparable lowerings ``one`` (`_ss.chunked`, `_ss.scan`): the causal one on the sequence,
    the anti-causal one on the reversed sequence, each shifted one row (the diagonal is ``diag``'s)."""
    runs = segment_runs(seq_idx)
    y_f, _ = one(x, B, C, log_a, seq_idx=seq_idx, chunk_size=chunk_size, x_scale=scale)
    y_b, _ = one(x.flip(1), B_bwd.flip(1), C_bwd.flip(1), _flip(log_a_bwd), seq_idx=_flip(seq_idx),
                 chunk_size=chunk_size, x_scale=_flip(scale_bwd))
    lower, upper = _shift_down(y_f), _shift_down(y_b).flip(1)
    if runs is not None:  # a row reads its neighbour's state only within its own segment
        # (row 0 of lower and row l - 1 of upper are zero whatever the mask says there)
        lower = lower * (runs == later(runs, 1)).to(x.dtype)[:, :, None, None]
        upper = upper * (runs == later(runs.flip(1), 1).flip(1)).to(x.dtype)[:, :, None, None]
    return _with_diag(lower + upper, x, diag), None


# -- scan: two fused CPU scans ----------------------------------------------------------------


def scan(x, B, C, log_a, scale, B_bwd, C_bwd, log_a_bwd, scale_bwd, diag=None,
         initial_state=None, seq_idx=None, chunk_size=64):
    """Two semiseparable `scan`s (the token loop as fused C loops on the CPU), the causal one and the
    anti-causal one on the reversed sequence; `chunked` where the fused loops cannot run (another device, a
    torch.compile or jit trace, forward-mode AD, half precision, no C compiler)."""
    b, l, H, P = x.shape
    if not usable(x, B, C, log_a, scale, B_bwd, C_bwd, log_a_bwd, scale_bwd):
        return chunked(x, B, C, log_a, scale, B_bwd, C_bwd, log_a_bwd, scale_bwd, diag, initial_state, seq_idx,
                       chunk_size)
    scale, scale_bwd = (None if t is None else t.expand(b, l, H) for t in (scale, scale_bwd))
    log_a, log_a_bwd = (None if t is None else t.expand(b, l, H, *t.shape[3:]) for t in (log_a, log_a_bwd))
    return _two_directions(_ss.scan, x, B, C, log_a, scale, B_bwd, C_bwd, log_a_bwd, scale_bwd, diag, seq_idx,
                           chunk_size)


def _chunk_cumsums(la, b, c, Q, G, rep, like):
    """Inclusive and exclusive in-chunk cumsums of a (b, L, H) log-decay: (b, c, G, rep, Q) each."""
    if la is None:
        z = like.new_zeros(b, c, G, rep, Q)
        return z, z
    la = la.reshape(b, c, Q, G, rep).permute(0, 1, 3, 4, 2)
    cs = la.cumsum(-1)
    # exclusive = the inclusive one shifted, not cs - la: then ex_i - cs_{i-1} (the empty product
    # of neighbours) is exactly 0, as its gradient is; cs - la rounds (by eps |cs|: 1e-4 at a
    # chunk of decays -80), and that error entered every output and the decay's gradient
    return cs, torch.nn.functional.pad(cs[..., :-1], (1, 0))


def _next_to(Q: int, offset: int, device) -> torch.Tensor:
    """(Q, Q) bool: True on the diagonal ``offset`` (-1: j = i - 1, 1: j = i + 1)."""
    return torch.ones(Q - 1, dtype=torch.bool, device=device).diag(offset)


def _chunked_scalar(x, B, Cs, la, s, Bb, Cbs, lab, sb, runs, Q):
    """Both directions over chunks. Per chunk (positions i, j; cs inclusive, ex exclusive in-chunk
    cumsums of the log-decays):

        lower[i, j] = (Cs_i . B_j)  exp(ex_i - cs_j)   s_j      j < i
        upper[i, j] = (Cbs_i . Bb_j) exp(exb_j - csb_i) sb_j    j > i
        y_i = (lower + upper)_i @ x  +  exp(ex_i) Cs_i . S_in  +  exp(totb - csb_i) Cbs_i . R_in

    with S_in the causal state entering the chunk and R_in the anti-causal one entering from its
    right end. Three steps, each on all chunks at once (no loop whose trip count depends on l):
    chunk states, the two state passes (`pass_chunks`, the anti-causal one on the chunks in
    reverse order), outputs."""
    b, L, H, P = x.shape
    G, N = B.shape[2:]
    rep, c = H // G, L // Q
    rP = rep * P
    xb = x.reshape(b, c, Q, G, rep, P)
    Bc, Csc, Bbc, Cbsc = (t.reshape(b, c, Q, G, N) for t in (B, Cs, Bb, Cbs))
    s5, sb5 = (None if t is None else t.reshape(b, c, Q, G, rep) for t in (s, sb))
    cs, ex = _chunk_cumsums(la, b, c, Q, G, rep, x)
    csb, exb = _chunk_cumsums(lab, b, c, Q, G, rep, x)
    lo, hi = exp_bounds(x.dtype)
    if runs is not None:
        r, prev = chunk_runs(runs, b, c, Q)  # prev: run of the previous chunk's last position
        nxt = torch.cat([r[:, :, 0], torch.full_like(r[:, :1, 0], -1)], dim=1).narrow(1, 1, c)  # next chunk's first
        rc = r[:, :, None, None]  # (b, c, 1, 1, Q)

    def weighted(s_, w):  # x_j s_j w_j as (b, c, G, Q, rep*P)
        if s_ is not None:
            w = w * s_.permute(0, 1, 3, 4, 2)
        return (xb * w.permute(0, 1, 4, 2, 3)[..., None]).reshape(b, c, Q, G, rP).transpose(2, 3)

    # 1. each chunk's own contribution: at its end (forward) and at its start (backward)
    to_end = from_last(cs).exp()  # (b, c, G, rep, Q)
    from_start = exb.clamp(lo, hi).exp()
    if runs is not None:
        to_end = to_end * (rc == rc[..., -1:])
        from_start = from_start * (rc == rc[..., :1])
    own_f = Bc.permute(0, 1, 3, 4, 2) @ weighted(s5, to_end)  # (b, c, G, N, rP)
    own_b = Bbc.permute(0, 1, 3, 4, 2) @ weighted(sb5, from_start)

    # 2. state passes over chunks (decays of whole chunks, cut across a boundary): the causal one left
    # to right from a zero state; the anti-causal one right to left, i.e. on the chunks reversed
    # (its run ids, the runs of the chunks' first positions, are then non-increasing: still monotone)
    ids_f = ids_b = None
    if runs is not None:
        ids_f = torch.cat([torch.zeros_like(r[:, :1, 0]), r[:, :, -1]], dim=1)  # (b, c+1)
        ids_b = torch.cat([r[:, -1:, 0], r[:, :, 0].flip(1)], dim=1)
    S_in, _ = pass_chunks(own_f, cs[..., -1], None, ids_f)
    R_in, _ = pass_chunks(own_b.flip(1), csb[..., -1].flip(1), None, ids_b)
    R_in = R_in.flip(1)  # (b, c, G, N, rP): the state entering each chunk from its right end

    # 3. outputs
    Bg, Cg = Bc.transpose(2, 3), Csc.transpose(2, 3)  # (b, c, G, Q, N)
    Bbg, Cbg = Bbc.transpose(2, 3), Cbsc.transpose(2, 3)
    # exponents clamped into the normal range; the masked triangle's zeros of CB hide the rest
    # neighbours (j = i - 1 below, j = i + 1 above) are linked by an empty product: exponent 0 and
    # no gradient (a gradient +g - g would only add rounding noise to the decay's, O(1) where the
    # true one is exp(log_a) small)
    low = (Cg @ Bg.transpose(-1, -2)).tril_(-1)[:, :, :, None] * (ex[..., :, None] - cs[..., None, :]) \
        .masked_fill_(_next_to(Q, -1, x.device), 0.0).clamp_(lo, hi).exp_()  # (b, c, G, rep, Q, Q)
    up = (Cbg @ Bbg.transpose(-1, -2)).triu_(1)[:, :, :, None] * (exb[..., None, :] - csb[..., :, None]) \
        .masked_fill_(_next_to(Q, 1, x.device), 0.0).clamp_(lo, hi).exp_()
    if s5 is not None:
        low = low * s5.permute(0, 1, 3, 4, 2)[..., None, :]
    if sb5 is not None:
        up = up * sb5.permute(0, 1, 3, 4, 2)[..., None, :]
    scores = low.add_(up)
    reach_f = ex.clamp(lo, hi).exp()  # (b, c, G, rep, Q)
    reach_b = from_last(csb).exp()
    if runs is not None:
        scores = scores * (rc[..., :, None] == rc[..., None, :])
        reach_f = reach_f * (rc == prev[:, :, None, None, None])
        reach_b = reach_b * (rc == nxt[:, :, None, None, None])
    y_in = scores @ xb.permute(0, 1, 3, 4, 2, 5)  # (b, c, G, rep, Q, P)
    y = (Cg @ S_in).view(b, c, G, Q, rep, P) * reach_f.transpose(-1, -2)[..., None]
    y = y + (Cbg @ R_in).view(b, c, G, Q, rep, P) * reach_b.transpose(-1, -2)[..., None]
    y = y.add_(y_in.transpose(3, 4))
    return y.transpose(2, 3).reshape(b, L, H, P)
