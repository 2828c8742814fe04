"""Independent references for the semiseparable mixers, written from the math in
docs/semiseparable.md (Definition, Recurrence, Segments) and docs/mixers.md (Mamba; Mamba-2 / SSD).

Nothing here imports mixerc. Everything is plain torch, works in float64 and is differentiable, so a
test can run autograd through both a reference and a compiled module and compare gradients.

Two independent views of the same operator:

* the *loop* view: a Python loop over positions that carries the state, exactly the recurrence;
* the *matrix* view: the l x l lower-triangular matrix M built column by column from running
  products of the per-step decay factors (never from differences of cumulative sums), applied by a
  matmul, plus the initial-state and final-state terms written as explicit products.

Generic structure (``semiseparable_*``), per batch and head, with state S in R^{p x n}:

    S_t = a_t (.) S_{t-1} + x_t (outer) B_t,        y_t = S_t . C_t          (S_{-1} = initial state)

a_t = exp(log_decay_t); log_decay is None (a_t = 1), (b, l, h) (one scalar per head) or (b, l, h, n)
(one factor per state dimension). B and C are (b, l, g, n) and head i reads group i // (h // g);
a (b, l, n) B/C is taken as one group.

seq_idx (b, l) integer segment ids, packed sequences (mamba-ssm's contract): a segment is a maximal
run of equal ids; the state restarts from zero at every t > 0 with seq_idx[t] != seq_idx[t-1]; the
initial state enters at position 0 and so only reaches position 0's segment; the final state is the
state after position l-1. In the matrix view M[i, j] = 0 when i and j lie in different segments.
"""

from __future__ import annotations

import torch

__all__ = [
    "softplus",
    "heads_from_groups",
    "segment_ids",
    "semiseparable_loop",
    "semiseparable_matrix",
    "semiseparable_dense",
    "mamba2_loop",
    "mamba2_dense",
    "mamba_loop",
    "mamba_dense",
]


# ----------------------------------------------------------------------------------------------
# small pieces
# ----------------------------------------------------------------------------------------------
def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)), and x itself when x > 20 (the threshold of every Mamba code path).

    The exp argument is clamped so that the branch torch.where discards never overflows: that keeps
    the backward pass free of inf * 0 = NaN for large x."""
    safe = torch.log1p(torch.exp(torch.clamp(x, max=20.0)))
    return torch.where(x > 20.0, x, safe)


def heads_from_groups(BC: torch.Tensor, h: int) -> torch.Tensor:
    """(b, l, g, n) -> (b, l, h, n), head i reading group i // (h // g). (b, l, n) is one group."""
    if BC.dim() == 3:
        BC = BC.unsqueeze(2)
    g = BC.shape[2]
    if h % g != 0:
        raise ValueError(f"h={h} is not a multiple of g={g}")
    group_of_head = torch.tensor([i // (h // g) for i in range(h)], dtype=torch.long)
    return BC.index_select(2, group_of_head)


def segment_ids(seq_idx: torch.Tensor | None, b: int, l: int) -> torch.Tensor:
    """Run numbers (b, l): 0 for position 0's run, +1 at every change of id. Two positions are in
    the same segment iff their run numbers are equal (a repeated id after another id is a new
    segment: segments are maximal runs)."""
    if seq_idx is None:
        return torch.zeros(b, l, dtype=torch.long)
    seq_idx = torch.as_tensor(seq_idx)
    assert seq_idx.shape == (b, l), f"seq_idx shape {tuple(seq_idx.shape)} != {(b, l)}"
    runs = torch.zeros(b, l, dtype=torch.long)
    for t in range(1, l):
        runs[:, t] = runs[:, t - 1] + (seq_idx[:, t] != seq_idx[:, t - 1]).long()
    return runs


def _decay_factor(log_decay, h, n, b, l, like):
    """a_t as a (b, l, h, n) tensor (broadcast over n for the scalar kind)."""
    if log_decay is None:
        return torch.ones(b, l, h, n, dtype=like.dtype)
    if log_decay.dim() == 3:
        return torch.exp(log_decay).unsqueeze(-1).expand(b, l, h, n)
    assert log_decay.dim() == 4, "log_decay must be (b, l, h) or (b, l, h, n)"
    return torch.exp(log_decay)


# ----------------------------------------------------------------------------------------------
# loop view
# ----------------------------------------------------------------------------------------------
def semiseparable_loop(x, B, C, log_decay=None, initial_state=None, seq_idx=None):
    """Token loop of S_t = a_t (.) S_{t-1} + x_t (outer) B_t, y_t = S_t . C_t.

    x (b, l, h, p); B, C (b, l, g, n); log_decay None | (b, l, h) | (b, l, h, n);
    initial_state (b, h, p, n) or None (zeros). Returns (y (b, l, h, p), final state (b, h, p, n))."""
    b, l, h, p = x.shape
    Bh = heads_from_groups(B, h)
    Ch = heads_from_groups(C, h)
    n = Bh.shape[-1]
    runs = segment_ids(seq_idx, b, l)
    if initial_state is None:
        S = torch.zeros(b, h, p, n, dtype=x.dtype)
    else:
        S = initial_state
    ys = []
    for t in range(l):
        if t > 0 and seq_idx is not None:
            same = (runs[:, t] == runs[:, t - 1]).to(x.dtype)  # 0 where a new segment starts
            S = S * same[:, None, None, None]
        if log_decay is None:
            decayed = S
        elif log_decay.dim() == 3:
            decayed = torch.exp(log_decay[:, t])[:, :, None, None] * S
        else:
            decayed = torch.exp(log_decay[:, t])[:, :, None, :] * S
        S = decayed + x[:, t, :, :, None] * Bh[:, t, :, None, :]
        ys.append((S * Ch[:, t, :, None, :]).sum(-1))
    if l == 0:
        return x.new_zeros(b, 0, h, p), S
    return torch.stack(ys, dim=1), S


# ----------------------------------------------------------------------------------------------
# matrix view
# ----------------------------------------------------------------------------------------------
def semiseparable_matrix(B, C, log_decay=None, seq_idx=None, h=None):
    """The mixing matrix M (b, h, l, l):

        M[i, j] = sum_n C_i[n] B_j[n] prod_{k=j+1..i} a_k[n]    for i >= j,   0 otherwise,

    and 0 when i and j are in different segments of seq_idx. Built one column j at a time from the
    running product (torch.cumprod) of the factors a_{j+1}, a_{j+2}, ...: products only, no
    differences of cumulative sums. ``h`` is needed only when log_decay is None (otherwise it is
    read from log_decay)."""
    if log_decay is not None:
        h = log_decay.shape[2]
    assert h is not None, "give h when there is no log_decay"
    Bh = heads_from_groups(B, h)
    Ch = heads_from_groups(C, h)
    b, l, _, n = Bh.shape
    a = _decay_factor(log_decay, h, n, b, l, Bh)  # (b, l, h, n)
    runs = segment_ids(seq_idx, b, l)
    cols = []
    for j in range(l):
        # P[:, i - j] = prod_{k=j+1..i} a_k for i = j..l-1 (empty product = 1 on the diagonal)
        P = torch.cat([torch.ones(b, 1, h, n, dtype=a.dtype), torch.cumprod(a[:, j + 1:], dim=1)], dim=1)
        vals = (Ch[:, j:] * Bh[:, j:j + 1] * P).sum(-1)  # (b, l - j, h)
        same_seg = (runs[:, j:] == runs[:, j:j + 1]).to(vals.dtype)  # (b, l - j)
        vals = vals * same_seg[:, :, None]
        col = torch.cat([torch.zeros(b, j, h, dtype=vals.dtype), vals], dim=1)  # (b, l, h) rows i
        cols.append(col)
    if l == 0:
        return torch.zeros(b, h, 0, 0, dtype=Bh.dtype)
    M = torch.stack(cols, dim=-1)  # (b, i, h, j)
    return M.permute(0, 2, 1, 3)  # (b, h, i, j)


def semiseparable_dense(x, B, C, log_decay=None, initial_state=None, seq_idx=None):
    """y = M x (+ the initial-state term), final state from the matrix view. Same signature and
    result as semiseparable_loop.

        y_i   += C_i . (prod_{k=0..i} a_k (.) S_init)                    (i in position 0's segment)
        S_fin  = sum_{j in last segment} prod_{k=j+1..l-1} a_k (.) x_j (outer) B_j
                 + prod_{k=0..l-1} a_k (.) S_init                        (only when one segment)
    """
    b, l, h, p = x.shape
    Bh = heads_from_groups(B, h)
    Ch = heads_from_groups(C, h)
    n = Bh.shape[-1]
    M = semiseparable_matrix(B, C, log_decay, seq_idx, h=h)
    y = torch.einsum("bhij,bjhp->bihp", M, x)
    a = _decay_factor(log_decay, h, n, b, l, x)  # (b, l, h, n)
    runs = segment_ids(seq_idx, b, l)
    # final state: suffix products prod_{k=j+1..l-1} a_k, as a cumprod over the reversed sequence
    if l > 0:
        rev = torch.flip(a[:, 1:], dims=[1])  # a_{l-1}, a_{l-2}, ..., a_1
        suffix_rev = torch.cat([torch.ones(b, 1, h, n, dtype=a.dtype), torch.cumprod(rev, dim=1)], dim=1)
        suffix = torch.flip(suffix_rev, dims=[1])  # suffix[:, j] = prod_{k=j+1..l-1} a_k
        in_last = (runs == runs[:, -1:]).to(x.dtype)  # (b, l)
        w = suffix * in_last[:, :, None, None]  # (b, l, h, n)
        S_fin = torch.einsum("bjhp,bjhn,bjhn->bhpn", x, Bh, w)
    else:
        S_fin = torch.zeros(b, h, p, n, dtype=x.dtype)
    if initial_state is not None and l > 0:
        prefix = torch.cumprod(a, dim=1)  # prefix[:, i] = prod_{k=0..i} a_k   (b, l, h, n)
        in_first = (runs == 0).to(x.dtype)  # (b, l)
        y = y + torch.einsum("bihn,bhpn,bi->bihp", Ch * prefix, initial_state, in_first)
        one_segment = (runs[:, -1] == 0).to(x.dtype)  # (b,)
        S_fin = S_fin + prefix[:, -1, :, None, :] * initial_state * one_segment[:, None, None, None]
    elif initial_state is not None:
        S_fin = S_fin + initial_state
    return y, S_fin


# ----------------------------------------------------------------------------------------------
# Mamba-2 (SSD, docs/mixers.md#mamba-2): scalar decay per head
# ----------------------------------------------------------------------------------------------
def mamba2_loop(x, dt, B, C, A_log, dt_bias, D, initial_state=None, seq_idx=None):
    """Token loop of Mamba-2, written directly from docs/mixers.md#mamba-2 (not via semiseparable_loop).

    x (b, l, h, p), dt (b, l, h), B, C (b, l, g, n), A_log, dt_bias, D (h,); state (b, h, p, n).
        Δ_t = softplus(dt_t + dt_bias), A = -exp(A_log)
        S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t (outer) B_t[g(h)],   y_t = S_t . C_t[g(h)] + D x_t"""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    assert h % g == 0
    heads_per_group = h // g
    A = -torch.exp(A_log)
    delta = softplus(dt + dt_bias)  # (b, l, h)
    S = torch.zeros(b, h, p, n, dtype=x.dtype) if initial_state is None else initial_state
    runs = segment_ids(seq_idx, b, l)
    ys = []
    for t in range(l):
        if t > 0 and seq_idx is not None:
            keep = (runs[:, t] == runs[:, t - 1]).to(x.dtype)
            S = S * keep[:, None, None, None]
        heads = []
        for hh in range(h):
            gg = hh // heads_per_group
            d_t = delta[:, t, hh]  # (b,)
            s_h = torch.exp(d_t * A[hh])[:, None, None] * S[:, hh] \
                + d_t[:, None, None] * x[:, t, hh, :, None] * B[:, t, gg, None, :]
            heads.append(s_h)
        S = torch.stack(heads, dim=1)  # (b, h, p, n)
        Cg = torch.stack([C[:, t, hh // heads_per_group] for hh in range(h)], dim=1)  # (b, h, n)
        ys.append((S * Cg[:, :, None, :]).sum(-1) + D[None, :, None] * x[:, t])
    y = torch.stack(ys, dim=1) if l > 0 else x.new_zeros(b, 0, h, p)
    return y, S


def mamba2_dense(x, dt, B, C, A_log, dt_bias, D, initial_state=None, seq_idx=None):
    """Mamba-2 through the matrix view: y = M (x Δ) + D x with log_decay = Δ A (scalar per head)."""
    delta = softplus(dt + dt_bias)
    log_decay = -torch.exp(A_log) * delta  # (b, l, h)
    y, S = semiseparable_dense(x * delta[..., None], B, C, log_decay, initial_state, seq_idx)
    return y + D[:, None] * x, S


# ----------------------------------------------------------------------------------------------
# Mamba-1 (selective scan, docs/mixers.md#mamba): diagonal decay per state
# ----------------------------------------------------------------------------------------------
def mamba_loop(x, dt, B, C, A_log, dt_bias, D, initial_state=None, seq_idx=None):
    """Token loop of the selective scan, written directly from docs/mixers.md#mamba.

    x, dt (b, l, d); B, C (b, l, n); A_log (d, n); dt_bias, D (d,); state (b, d, n).
        Δ_t = softplus(dt_t + dt_bias), A = -exp(A_log)
        S_t = exp(Δ_t A) (.) S_{t-1} + Δ_t B_t u_t,    y_t = Σ_n C_t[n] S_t[n] + D u_t"""
    b, l, d = x.shape
    n = A_log.shape[1]
    A = -torch.exp(A_log)  # (d, n)
    delta = softplus(dt + dt_bias)  # (b, l, d)
    S = torch.zeros(b, d, n, dtype=x.dtype) if initial_state is None else initial_state
    runs = segment_ids(seq_idx, b, l)
    ys = []
    for t in range(l):
        if t > 0 and seq_idx is not None:
            keep = (runs[:, t] == runs[:, t - 1]).to(x.dtype)
            S = S * keep[:, None, None]
        dA = torch.exp(delta[:, t, :, None] * A[None])  # (b, d, n)
        dBu = delta[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]  # (b, d, n)
        S = dA * S + dBu
        ys.append((S * C[:, t, None, :]).sum(-1) + D * x[:, t])
    y = torch.stack(ys, dim=1) if l > 0 else x.new_zeros(b, 0, d)
    return y, S


def mamba_dense(x, dt, B, C, A_log, dt_bias, D, initial_state=None, seq_idx=None):
    """Mamba through the matrix view: channels as heads with p = 1, B/C one group, diagonal decay
    log_decay[b, l, d, n] = Δ[b, l, d] A[d, n] (docs/mixers.md#mamba)."""
    delta = softplus(dt + dt_bias)  # (b, l, d)
    log_decay = -torch.exp(A_log)[None, None] * delta[..., None]  # (b, l, d, n)
    S0 = None if initial_state is None else initial_state[:, :, None, :]  # (b, d, 1, n)
    y, S = semiseparable_dense((x * delta)[..., None], B, C, log_decay, S0, seq_idx)
    return y[..., 0] + D * x, S[:, :, 0, :]
