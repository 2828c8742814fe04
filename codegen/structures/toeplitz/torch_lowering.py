"""Torch lowerings of Toeplitz matrices (convolutions) and the S4D kernel generator.

Canonical form (see `mixerc.ir.structures.toeplitz`): ``x (b, l, H, P)``, ``kernel`` and
``kernel_rev`` ``(B, Hk, K)`` with ``B`` in (1, b) and ``Hk`` in (1, H). Every lowering returns
``(y (b, l, H, P), None)``: a convolution carries no recurrent state.

- `reference`: M materialised densely, ``(B, Hk, l, l)``, then one matmul per head (the oracle);
- `fft`: ``irfft(rfft(x, n) * rfft(c, n), n)[:l]`` where ``c`` is the first column of an n-point
  circulant holding the lags ``0..K-1`` at the front and (two-sided) the lags ``-1..-K`` at the
  back; ``n >= l + K - 1`` (no wrap-around), rounded up to a fast size (`fast_size`);
- `direct`: one depthwise ``conv1d`` (a multiply-add per tap and position: O(l K), for short kernels).

``seq_idx`` (packed sequences): no tap crosses a change of segment id. `reference` masks M;
`fft` and `direct` scatter every segment into its own zero-padded row (rows = segments, length =
the longest segment) and convolve those rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixerc.rt.segments import segment_runs



# -- helpers ---------------------------------------------------------------------------------


def fast_size(n: int) -> int:
    """An FFT size >= n that the FFT libraries handle fast: the smallest ``m * 2^a`` with ``m`` in
    (1, 3, 5, 9) (even, with a large power-of-two factor: odd or 5-heavy sizes measured ~2x slower
    here; at most 1/3 above n for n >= 16)."""
    n = max(int(n), 1)
    best = None
    for m in (1, 3, 5, 9):
        size = m
        while size < n:
            size *= 2
        best = size if best is None else min(best, size)
    return best


# under torch.compile an FFT size is a multiple of this (an expression of l that needs no guard)
FFT_BLOCK = 64


def _taps(kernel, kernel_rev, l):
    """The kernel truncated to the lags a length-``l`` sequence can see: ``(k, kr)``. While
    torch.compile traces, the whole kernel: truncating at ``l`` would guard on ``l <= K`` (a graph
    for each side); the taps past ``l`` only ever meet zero padding."""
    if torch.compiler.is_compiling():
        return kernel, kernel_rev
    k = kernel[..., :l]
    kr = None
    if kernel_rev is not None and l > 1:
        kr = kernel_rev[..., :l - 1]
    return k, kr


def _fft_size(n):
    """`fast_size` (eager); while torch.compile traces, ``n`` rounded up to a multiple of FFT_BLOCK:
    `fast_size` chooses by comparing n with candidate sizes, which would guard on l, a graph per
    size."""
    if torch.compiler.is_compiling():
        return (n + FFT_BLOCK - 1) // FFT_BLOCK * FFT_BLOCK
    return fast_size(n)


def _segmented(conv, x, kernel, kernel_rev, seq_idx):
    """Run ``conv`` with every segment in a row of its own (zero padded, so taps stop at its
    borders), then gather the rows back to ``(b, l, H, P)``."""
    if seq_idx is None:
        return conv(x, kernel, kernel_rev)
    b, l, H, P = x.shape
    start = torch.ones(b, l, dtype=torch.bool, device=x.device)
    start[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    start = start.reshape(-1)
    seg = start.long().cumsum(0) - 1  # global segment of every (row, position)
    starts = start.nonzero().squeeze(1)  # flat index of every segment's first position
    pos = torch.arange(b * l, device=x.device) - starts[seg]
    S, Lmax = int(starts.numel()), int(pos.max()) + 1
    rows = x.new_zeros(S, Lmax, H, P).index_put((seg, pos), x.reshape(b * l, H, P))
    if kernel.shape[0] > 1:  # one kernel per batch row: every segment takes its row's
        row = starts // l
        kernel = kernel[row]
        kernel_rev = None if kernel_rev is None else kernel_rev[row]
    y = conv(rows, kernel, kernel_rev)
    return y[seg, pos].reshape(b, l, H, P)


# -- reference: the dense matrix ---------------------------------------------------------------


def matrix(kernel, kernel_rev, l: int, seq_idx=None):
    """M ``(B, Hk, l, l)`` (``(b, Hk, l, l)`` with ``seq_idx``): ``M[i, j] = k[i - j]`` for
    ``0 <= i - j < K``, ``kernel_rev[j - i - 1]`` for ``0 < j - i <= K``, else 0."""
    K = kernel.shape[-1]
    pos = torch.arange(l, device=kernel.device)
    lag = pos[:, None] - pos[None, :]  # i - j; gathers, no slicing by l (one traced graph for every l)
    M = torch.where((lag >= 0) & (lag < K), kernel[..., lag.clamp(0, K - 1)], 0.0)
    if kernel_rev is not None:
        Kr = kernel_rev.shape[-1]
        M = M + torch.where((lag < 0) & (lag >= -Kr), kernel_rev[..., (-lag - 1).clamp(0, Kr - 1)], 0.0)
    if seq_idx is not None:
        runs = segment_runs(seq_idx)
        M = M * (runs[:, :, None] == runs[:, None, :]).to(M.dtype)[:, None]
    return M


def reference(x, kernel, kernel_rev=None, seq_idx=None):
    b, l, H, P = x.shape
    M = matrix(kernel, kernel_rev, l, seq_idx)  # (B, Hk, l, l)
    y = torch.matmul(M, x.permute(0, 2, 1, 3))  # (b, H, l, P)
    return y.permute(0, 2, 1, 3), None


def materialize(x, kernel, kernel_rev=None, seq_idx=None):
    """``(M, None)`` with M ``(b, H, l, l)``: ``y = M x`` per head."""
    b, l, H, P = x.shape
    M = matrix(kernel, kernel_rev, l, seq_idx)
    return M.expand(b, H, l, l), None


# -- fft ---------------------------------------------------------------------------------------


def _fft_conv(x, kernel, kernel_rev):
    b, l, H, P = x.shape
    k, kr = _taps(kernel, kernel_rev, l)
    Kc, Kt = k.shape[-1], (0 if kr is None else kr.shape[-1])
    n = _fft_size(l + max(Kc - 1, Kt))
    c = F.pad(k, (0, n - Kc))  # lags 0..Kc-1 at the front ...
    if Kt:
        c = c + F.pad(kr.flip(-1), (n - Kt, 0))  # ... lags -Kt..-1 at the back
    kf = torch.fft.rfft(c, n=n)  # (B, Hk, F)
    xf = torch.fft.rfft(x.permute(0, 2, 3, 1), n=n)  # (b, H, P, F)
    y = torch.fft.irfft(xf * kf.unsqueeze(-2), n=n)[..., :l]  # (b, H, P, l)
    return y.permute(0, 3, 1, 2)


def fft(x, kernel, kernel_rev=None, seq_idx=None):
    return _segmented(_fft_conv, x, kernel, kernel_rev, seq_idx), None


# -- direct --------------------------------------------------------------------------------------


def _direct_conv(x, kernel, kernel_rev):
    b, l, H, P = x.shape
    k, kr = _taps(kernel, kernel_rev, l)
    Kc, Kt = k.shape[-1], (0 if kr is None else kr.shape[-1])
    # cross-correlation weights: w[s] multiplies x[i + s - (Kc - 1)]
    w = k.flip(-1) if not Kt else torch.cat([k.flip(-1), kr], -1)
    B = kernel.shape[0]
    if B == 1:  # (b P, H, l) with one filter per head
        inp = x.permute(0, 3, 2, 1).reshape(b * P, H, l)
        weight = w[0].expand(H, w.shape[-1]).unsqueeze(1)
        y = F.conv1d(F.pad(inp, (Kc - 1, Kt)), weight, groups=H)
        return y.reshape(b, P, H, l).permute(0, 3, 2, 1)
    inp = x.permute(3, 0, 2, 1).reshape(P, b * H, l)  # one filter per (batch row, head)
    weight = w.expand(b, H, w.shape[-1]).reshape(b * H, 1, -1)
    y = F.conv1d(F.pad(inp, (Kc - 1, Kt)), weight, groups=b * H)
    return y.reshape(P, b, H, l).permute(1, 3, 2, 0)


def direct(x, kernel, kernel_rev=None, seq_idx=None):
    return _segmented(_direct_conv, x, kernel, kernel_rev, seq_idx), None


# -- kernel generation ---------------------------------------------------------------------------


def vandermonde(v, z, L: int):
    """``K[..., t] = 2 Re sum_n v[..., n] exp(z[..., n] t)`` for ``t = 0..L-1`` (complex v, z of
    the same shape). In real arithmetic, ``exp(Re z t) (cos(Im z t) + i sin(Im z t))``: real
    exp/cos/sin are vectorised on CPUs, complex exp is ~5x slower."""
    t = torch.arange(L, device=z.device, dtype=z.real.dtype)
    re_t, im_t = z.real.unsqueeze(-1) * t, z.imag.unsqueeze(-1) * t  # (..., n, L)
    mag = torch.exp(re_t)
    k = torch.einsum("...n,...nt->...t", v.real, mag * torch.cos(im_t))
    k = k - torch.einsum("...n,...nt->...t", v.imag, mag * torch.sin(im_t))
    return 2 * k


def _expm1(z):
    """``exp(z) - 1`` for complex z, accurate for small |z| (torch's complex expm1 is not)."""
    a, c = z.real, z.imag
    re = torch.expm1(a) * torch.cos(c) - 2 * torch.sin(c / 2) ** 2
    return torch.complex(re, torch.exp(a) * torch.sin(c))


def s4d_kernel(log_dt, A_re_log, A_im, C_re, C_im, L: int, disc: str = "zoh"):
    """The S4D convolution kernel ``(..., L)`` of a diagonal SSM with conjugate pairs (the last
    dim of ``A_*``, ``C_*``; ``log_dt`` broadcasts against them with that dim of size 1); B = 1."""
    dt = torch.exp(log_dt)
    A = torch.complex(-torch.exp(A_re_log), A_im)
    C = torch.complex(C_re, C_im)
    dtA = dt * A
    if disc == "zoh":
        z, Ct = dtA, C * _expm1(dtA) / A
    elif disc == "bilinear":
        den = 1 - dtA / 2
        z, Ct = torch.log((1 + dtA / 2) / den), C * dt / den
    else:
        raise ValueError(f"s4d_kernel: unknown discretisation {disc!r} (zoh, bilinear)")
    z, Ct = torch.broadcast_tensors(z, Ct)
    return vandermonde(Ct, z, L)
