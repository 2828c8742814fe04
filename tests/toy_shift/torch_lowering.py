"""Torch lowerings of the toy shift, on (b, l, H, P) values and (b, l, H) coefficients."""

from __future__ import annotations

import torch


def starts(seq_idx, b, l, device):
    """(b, l) True where a new segment starts (never at position 0: the initial state enters there)."""
    out = torch.zeros(b, l, dtype=torch.bool, device=device)
    if seq_idx is not None:
        out[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return out


def materialize(x, a, initial_state=None, seq_idx=None):
    b, l = x.shape[:2]
    i = torch.arange(l, device=x.device)
    sub = (i[:, None] - 1 == i[None, :]).expand(b, l, l)  # (b, i, j): j = i - 1
    sub = sub & ~starts(seq_idx, b, l, x.device)[:, :, None]
    return a.permute(0, 2, 1)[..., None] * sub[:, None].to(a.dtype), None


def reference(x, a, initial_state=None, seq_idx=None):
    M, _ = materialize(x, a, initial_state, seq_idx)
    y = torch.einsum("bhij,bjhp->bihp", M, x)
    if initial_state is not None:  # x_{-1} reaches position 0
        y = torch.cat([y[:, :1] + a[:, :1, :, None] * initial_state[:, None], y[:, 1:]], dim=1)
    return y, x[:, -1]


def recurrent(x, a, initial_state=None, seq_idx=None):
    prev = torch.zeros_like(x[:, 0]) if initial_state is None else initial_state
    new = starts(seq_idx, x.shape[0], x.shape[1], x.device)
    ys = []
    for t in range(x.shape[1]):
        prev = torch.where(new[:, t, None, None], torch.zeros_like(prev), prev)
        ys.append(a[:, t, :, None] * prev)
        prev = x[:, t]
    return torch.stack(ys, dim=1), prev


def chunked(x, a, initial_state=None, seq_idx=None):
    first = torch.zeros_like(x[:, :1]) if initial_state is None else initial_state[:, None]
    prev = torch.cat([first, x[:, :-1]], dim=1)
    prev = torch.where(starts(seq_idx, x.shape[0], x.shape[1], x.device)[..., None, None], 0.0, prev)
    return a[..., None] * prev, x[:, -1]
