"""Independent references of Hydra's mixer (no mixerc imports), from
docs/quasiseparable.md (The matrix; Upstream's doubled batch).

- `hydra_elementwise`: the matrix of docs/quasiseparable.md#the-matrix, entry by entry (a double loop
  over t, s).
- `hydra_doubled`: the upstream procedure of docs/quasiseparable.md#upstreams-doubled-batch: backward
  halves flipped and concatenated along the batch, one causal SSD scan on the doubled batch, roll by
  one and zero row 0, flip back, add.
"""

from __future__ import annotations

import torch

from .ssm import heads_from_groups, segment_ids, semiseparable_loop, softplus


def hydra_elementwise(x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd, delta, A_log, dt_bias, D,
                      seq_idx=None):
    """y_t = Σ_{s<t} Mᶠ[t,s] x_s + Σ_{s>t} Mᵇ[t,s] x_s + (D + delta_t) x_t, entries of
    docs/quasiseparable.md#the-matrix; no entry links positions of different segments."""
    b, l, h, p = x.shape
    A = -torch.exp(A_log)  # (h,)
    df, db = softplus(dt_fwd + dt_bias), softplus(dt_bwd + dt_bias)  # (b, l, h)
    Bf, Cf, Bb, Cb = (heads_from_groups(t, h) for t in (B_fwd, C_fwd, B_bwd, C_bwd))
    runs = segment_ids(seq_idx, b, l)
    y = (D + delta)[..., None] * x
    for t in range(l):
        acc = torch.zeros(b, h, p, dtype=x.dtype)
        for s in range(l):
            if s == t:
                continue
            if s < t:
                cb = (Cf[:, t - 1] * Bf[:, s]).sum(-1)  # (b, h)
                decay = torch.exp(A * df[:, s + 1:t].sum(1))
                w = cb * decay * df[:, s]
            else:
                cb = (Cb[:, t + 1] * Bb[:, s]).sum(-1)
                decay = torch.exp(A * db[:, t + 1:s].sum(1))
                w = cb * decay * db[:, s]
            w = w * (runs[:, t] == runs[:, s]).to(x.dtype)[:, None]
            acc = acc + w[..., None] * x[:, s]
        y = torch.cat([y[:, :t], (y[:, t] + acc)[:, None], y[:, t + 1:]], 1)
    return y


def hydra_doubled(x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd, delta, A_log, dt_bias, D):
    """The upstream non-fused path (docs/quasiseparable.md#upstreams-doubled-batch, steps 1-4) with a
    token-loop SSD as the scan."""
    b = x.shape[0]
    flip = lambda t: t.flip(1)  # noqa: E731
    dt = softplus(torch.cat([dt_fwd, flip(dt_bwd)], 0) + dt_bias)
    x2 = torch.cat([x, flip(x)], 0)
    B2, C2 = torch.cat([B_fwd, flip(B_bwd)], 0), torch.cat([C_fwd, flip(C_bwd)], 0)
    A = -torch.exp(A_log)
    y2, _ = semiseparable_loop(x2 * dt[..., None], B2, C2, log_decay=A * dt)
    y2 = torch.roll(y2, 1, dims=1)
    y2 = torch.cat([torch.zeros_like(y2[:, :1]), y2[:, 1:]], 1)
    return y2[:b] + flip(y2[b:]) + x * (delta + D)[..., None]
