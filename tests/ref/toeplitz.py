"""Independent references for Toeplitz (convolution) mixers and S4D kernels, written from the math
in docs/toeplitz.md (Causal convolution, Two-sided convolution, The S4D kernel) and docs/mixers.md#longconv.

Nothing here imports mixerc. Plain torch, float64, differentiable (autograd runs through them).

* ``conv_loop``: the double loop ``y[i] = sum_j M[i, j] x[j]`` with ``M[i, j] = k[i - j]`` for
  ``0 <= i - j < K`` and (two-sided) ``kr[j - i - 1]`` for ``0 < j - i <= K``; with ``seq_idx`` only
  pairs inside one segment (a maximal run of equal ids) count.
* ``ssm_impulse_kernel``: the S4D kernel as the impulse response of the diagonal complex SSM
  ``h_t = Abar h_{t-1} + Bbar u_t``, ``y_t = 2 Re(C h_t)``, stepped token by token (no Vandermonde
  product, no closed form of ``Abar^t``).
* ``s4d_loop``: the same SSM run on a whole input sequence, plus the ``D x`` skip (the S4D mixer
  without any convolution).
"""

from __future__ import annotations

import math

import torch


def runs(seq_idx: torch.Tensor) -> list[list[int]]:
    """Per batch row, the segment number of every position (+1 where the id changes)."""
    out = []
    for row in seq_idx.tolist():
        r, cur = [], 0
        for t, v in enumerate(row):
            if t and v != row[t - 1]:
                cur += 1
            r.append(cur)
        out.append(r)
    return out


def conv_loop(x, k, kr=None, seq_idx=None, per_row: bool = False):
    """``x (b, l, *C)``; ``k`` / ``kr`` ``(*C', K)`` with ``C'`` broadcasting against ``C`` (numpy
    rules: a per-head kernel of ``x (b, l, h, p)`` is ``(h, 1, K)``), or ``(b, *C', K)`` with
    ``per_row`` (one kernel per batch row). Returns ``y (b, l, *C)``."""
    b, l = x.shape[:2]
    seg = runs(seq_idx) if seq_idx is not None else [[0] * l for _ in range(b)]
    rows = []
    for r in range(b):
        kk = k[r] if per_row else k
        kkr = (kr[r] if per_row else kr) if kr is not None else None
        K = kk.shape[-1]
        Kr = kkr.shape[-1] if kkr is not None else 0
        ys = []
        for i in range(l):
            acc = torch.zeros_like(x[r, 0])
            for j in range(l):
                if seg[r][i] != seg[r][j]:
                    continue
                if 0 <= i - j < K:
                    acc = acc + kk[..., i - j] * x[r, j]
                elif kkr is not None and 0 < j - i <= Kr:
                    acc = acc + kkr[..., j - i - 1] * x[r, j]
            ys.append(acc)
        rows.append(torch.stack(ys, 0))
    return torch.stack(rows, 0)


def _ssm_params(log_dt, A_re_log, A_im, C_re, C_im, disc):
    """Abar, Bbar (B = 1), C: complex tensors of shape (..., n2)."""
    dt = torch.exp(log_dt)[..., None]
    A = torch.complex(-torch.exp(A_re_log), A_im)
    C = torch.complex(C_re, C_im)
    if disc == "zoh":
        Abar = torch.exp(dt * A)
        Bbar = (Abar - 1) / A
    elif disc == "bilinear":
        Abar = (1 + dt * A / 2) / (1 - dt * A / 2)
        Bbar = dt / (1 - dt * A / 2)
    else:
        raise ValueError(disc)
    return Abar, Bbar, C


def ssm_impulse_kernel(log_dt, A_re_log, A_im, C_re, C_im, L: int, disc: str = "zoh"):
    """``K (..., L)``: the output of the SSM driven by a unit impulse at t = 0."""
    Abar, Bbar, C = _ssm_params(log_dt, A_re_log, A_im, C_re, C_im, disc)
    h = torch.zeros_like(Abar)
    out = []
    for t in range(L):
        u = 1.0 if t == 0 else 0.0
        h = Abar * h + Bbar * u
        out.append(2 * (C * h).real.sum(-1))
    return torch.stack(out, -1)


def s4d_loop(x, log_dt, A_re_log, A_im, C_re, C_im, D, disc: str = "zoh"):
    """The S4D mixer as a recurrence: ``x (b, l, h)``, parameters ``(h)`` / ``(h, n2)``."""
    Abar, Bbar, C = _ssm_params(log_dt, A_re_log, A_im, C_re, C_im, disc)
    b, l, H = x.shape
    h = torch.zeros(b, *Abar.shape, dtype=Abar.dtype)
    ys = []
    for t in range(l):
        h = Abar * h + Bbar * x[:, t, :, None]
        ys.append(2 * (C * h).real.sum(-1) + D * x[:, t])
    return torch.stack(ys, 1)


def s4d_lin_imag(n2: int) -> list[float]:
    return [math.pi * n for n in range(n2)]


def s4d_inv_imag(n2: int) -> list[float]:
    N = 2 * n2
    return [N / math.pi * (N / (2 * n + 1) - 1) for n in range(n2)]
