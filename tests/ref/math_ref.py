"""References written from the math in shared/reference/math-mamba-mamba2-hydra.md (§1.2 Mamba,
§2.1 Mamba-2), sharing no code with mixerc: a plain token loop and the materialised matrix built
from running products (no cumulative sums, no chunks).

Canonical form: x (b, l, h, p); B, C (b, l, h, n) already per head; log_decay None, (b, l, h) or
(b, l, h, n); state S (b, h, p, n):

    S_t = exp(log_decay_t) * S_{t-1} + x_t (outer) B_t,      y_t = S_t . C_t

seq_idx (b, l): the state restarts from zero at every t > 0 where seq_idx[t] != seq_idx[t-1].
"""

import torch


def softplus(v):
    """log(1 + e^v), and v itself above 20 (the threshold every Mamba code path uses)."""
    return torch.where(v > 20, v, torch.log1p(torch.exp(v.clamp(max=20))))


def heads_from_groups(t, h):
    """(b, l, g, n) -> (b, l, h, n): head i reads group i // (h // g)."""
    g = t.shape[2]
    return t[:, :, [i // (h // g) for i in range(h)]]


def _restart(seq_idx, t):
    """(b,) 1.0 where the state survives into position t, 0.0 where a new segment starts there."""
    if seq_idx is None or t == 0:
        return None
    return (seq_idx[:, t] == seq_idx[:, t - 1]).double()


def _decay_at(log_decay, t, shape):
    """exp(log_decay_t) broadcast to the state shape (b, h, p, n)."""
    if log_decay is None:
        return torch.ones(shape, dtype=torch.float64)
    a = torch.exp(log_decay[:, t])
    return a[:, :, None, None] if a.dim() == 2 else a[:, :, None, :]


def ss_loop(x, B, C, log_decay=None, initial_state=None, seq_idx=None):
    b, l, h, p = x.shape
    n = B.shape[-1]
    S = torch.zeros(b, h, p, n, dtype=x.dtype) if initial_state is None else initial_state
    ys = []
    for t in range(l):
        keep = _restart(seq_idx, t)
        if keep is not None:
            S = S * keep[:, None, None, None]
        S = _decay_at(log_decay, t, S.shape) * S + x[:, t, :, :, None] * B[:, t, :, None, :]
        ys.append((S * C[:, t, :, None, :]).sum(-1))
    return torch.stack(ys, 1), S


def ss_matrix(x, B, C, log_decay=None, initial_state=None, seq_idx=None):
    """y = M x (+ the initial-state term), with M[b, h, i, j, n] = C_i[n] B_j[n] prod_{k=j+1..i} a_k[n]
    built row by row from running products; returns (y, final_state) and never loops over time
    inside the products more than once per row."""
    b, l, h, p = x.shape
    n = B.shape[-1]

    def a(t):  # (b, h, n) multiplicative factor applied when entering position t
        f = torch.ones(b, h, n, dtype=x.dtype) if log_decay is None else torch.exp(log_decay[:, t])
        f = f[..., None].expand(b, h, n) if f.dim() == 2 else f
        keep = _restart(seq_idx, t)
        return f if keep is None else f * keep[:, None, None]

    # P[i, j] = prod_{k=j+1..i} a_k for j <= i (0 above the diagonal), and R[i] = prod_{k=0..i} a_k
    P = torch.zeros(b, h, n, l, l, dtype=x.dtype)
    R = torch.zeros(b, h, n, l, dtype=x.dtype)
    row = torch.zeros(b, h, n, l, dtype=x.dtype)
    reach = torch.ones(b, h, n, dtype=x.dtype)
    for i in range(l):
        ai = a(i)
        row = row * ai[..., None]
        row[..., i] = 1.0
        P[..., i, :] = row
        reach = reach * ai
        R[..., i] = reach
    M = torch.einsum("bihn,bjhn,bhnij->bhij", C, B, P)
    y = torch.einsum("bhij,bjhp->bihp", M, x)
    final = torch.einsum("bhnj,bjhp,bjhn->bhpn", P[..., l - 1, :], x, B)
    if initial_state is not None:
        y = y + torch.einsum("bihn,bhni,bhpn->bihp", C, R, initial_state)
        final = final + R[..., l - 1][:, :, None, :] * initial_state
    return y, final


# -- the built-in mixers, from the formulas of the reference notes ---------------------------

def mamba2_canonical(x, dt, B, C, A_log, dt_bias):
    """§2.1: Δ = softplus(dt + dt_bias), A = -exp(A_log); value x Δ, decay Δ A, B/C per head."""
    h = x.shape[2]
    delta = softplus(dt + dt_bias)
    return x * delta[..., None], heads_from_groups(B, h), heads_from_groups(C, h), -torch.exp(A_log) * delta


def mamba2(ref, x, dt, B, C, A_log, dt_bias, D, initial_state=None, seq_idx=None):
    xv, Bh, Ch, la = mamba2_canonical(x, dt, B, C, A_log, dt_bias)
    y, S = ref(xv, Bh, Ch, la, initial_state, seq_idx)
    return y + D[:, None] * x, S


def mamba(ref, x, dt, B, C, A_log, dt_bias, D, initial_state=None, seq_idx=None):
    """§1.2: one channel d per head, p = 1, diagonal decay exp(Δ A[d, :])."""
    delta = softplus(dt + dt_bias)  # (b, l, d)
    la = -torch.exp(A_log) * delta[..., None]  # (b, l, d, n)
    d = x.shape[2]
    Bh = B[:, :, None, :].expand(-1, -1, d, -1)
    Ch = C[:, :, None, :].expand(-1, -1, d, -1)
    S0 = None if initial_state is None else initial_state[:, :, None, :]
    y, S = ref((x * delta)[..., None], Bh, Ch, la, S0, seq_idx)
    return y[..., 0] + D * x, S[:, :, 0, :]
