"""Independent references of the three upstream layers' forward, written from
docs/mixers.md (Mamba and The Mamba layer; Mamba-2, Gated RMSNorm and The Mamba-2 layer; Hydra and
The Hydra layer) and docs/quasiseparable.md. Nothing here imports mixerc.

Each ``Ref*`` module registers its parameters and submodules in the order upstream's constructor
does, under upstream's names, so its ``state_dict`` has upstream's keys in upstream's order (the
module's own parameters first, then the submodules in registration order). The init is only a
placeholder: tests overwrite every parameter with random values (``randomize_``).

The scans are token loops (the recurrences of docs/mixers.md#mamba and #mamba-2, state carried position
by position); the convolutions are F.conv1d; Hydra is the doubled-batch-with-flips procedure of
docs/quasiseparable.md#upstreams-doubled-batch step by step (the flips, the roll by one and the zeroed
first row) inside the layer steps of docs/mixers.md#the-hydra-layer, not the matrix of
docs/quasiseparable.md#the-matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["softplus", "rms_norm_ref", "selective_scan_loop", "ssd_loop", "RefMamba", "RefMamba2", "RefHydra",
           "randomize_"]


def softplus(x):
    """log(1 + e^x), x itself above 20 (every Mamba code path's threshold)."""
    return torch.where(x > 20.0, x, torch.log1p(torch.exp(torch.clamp(x, max=20.0))))


def silu(x):
    return x * torch.sigmoid(x)


def rms_norm_ref(x, weight, z=None, eps=1e-5, group_size=None, norm_before_gate=True):
    """docs/mixers.md#gated-rmsnorm: norm_before_gate: rms_g(x)·w·silu(z); else rms_g(x·silu(z))·w;
    rms over groups of group_size consecutive channels (None: all). In at least fp32, returns x's dtype."""
    dtype = x.dtype
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    x = x.to(ct)
    if z is not None and not norm_before_gate:
        x = x * silu(z.to(ct))
    d = x.shape[-1]
    gs = d if group_size is None else group_size
    parts = []
    for g0 in range(0, d, gs):
        v = x[..., g0:g0 + gs]
        parts.append(v / torch.sqrt((v * v).mean(dim=-1, keepdim=True) + eps))
    out = torch.cat(parts, dim=-1) * weight.to(ct)
    if z is not None and norm_before_gate:
        out = out * silu(z.to(ct))
    return out.to(dtype)


def selective_scan_loop(u, delta, A, B, C, D, delta_bias):
    """docs/mixers.md#mamba in (b, l, d) layout: u, delta (b, l, d); A (d, n); B, C (b, l, n);
    D, delta_bias (d,). Returns y (b, l, d) (no gate) and the final state (b, d, n)."""
    b, l, d = u.shape
    n = A.shape[1]
    state = u.new_zeros(b, d, n)
    ys = []
    for t in range(l):
        dt = softplus(delta[:, t] + delta_bias)                                # (b, d)
        state = torch.exp(dt[:, :, None] * A) * state + (dt * u[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((state * C[:, t, None, :]).sum(-1) + D * u[:, t])
    return torch.stack(ys, dim=1), state


def ssd_loop(x, dt, A, B, C, D=None):
    """docs/mixers.md#mamba-2 per head, state S (b, h, p, n): x (b, l, h, p); dt (b, l, h) already
    softplus'd; A (h,); B, C (b, l, g, n), head i reading group i // (h // g); D (h,), (h, p) or None.
    Returns y (b, l, h, p) and the final state."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    rep = h // g
    Bh = B.repeat_interleave(rep, dim=2)
    Ch = C.repeat_interleave(rep, dim=2)
    S = x.new_zeros(b, h, p, n)
    ys = []
    for t in range(l):
        a = torch.exp(dt[:, t] * A)                                             # (b, h)
        S = a[:, :, None, None] * S + (dt[:, t, :, None] * x[:, t])[:, :, :, None] * Bh[:, t, :, None, :]
        y = torch.einsum("bhpn,bhn->bhp", S, Ch[:, t])
        if D is not None:
            y = y + (D[:, None] if D.dim() == 1 else D) * x[:, t]
        ys.append(y)
    return torch.stack(ys, dim=1), S


def _conv_causal(x, conv):
    """x (b, l, c) -> causal depthwise conv, (b, l, c)."""
    W = conv.weight.shape[-1]
    out = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=W - 1, groups=x.shape[-1])
    return out[..., :x.shape[1]].transpose(1, 2)


class RefMamba(nn.Module):
    """docs/mixers.md#the-mamba-layer, mamba_simple.Mamba: registration order in_proj, conv1d, x_proj,
    dt_proj, A_log, D, out_proj."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", conv_bias=True, bias=False):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                                bias=conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, u, return_state=False):
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = silu(_conv_causal(x, self.conv1d))
        dt_low, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = dt_low @ self.dt_proj.weight.t()                                # no bias here (docs/mixers.md)
        y, S = selective_scan_loop(x, delta, -torch.exp(self.A_log.to(x.dtype)), B, C, self.D.to(x.dtype),
                                   self.dt_proj.bias.to(x.dtype))
        out = self.out_proj(y * silu(z))
        return (out, S) if return_state else out


class RefMamba2(nn.Module):
    """docs/mixers.md#the-mamba-2-layer, mamba2.Mamba2: registration order in_proj, conv1d, dt_bias,
    A_log, D, norm, out_proj."""

    def __init__(self, d_model, d_state=128, d_conv=4, expand=2, headdim=64, d_ssm=None, ngroups=1,
                 D_has_hdim=False, rmsnorm=True, norm_before_gate=False, bias=False, conv_bias=True):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        self.headdim, self.ngroups = headdim, ngroups
        self.nheads = self.d_ssm // headdim
        self.rmsnorm, self.norm_before_gate, self.D_has_hdim = rmsnorm, norm_before_gate, D_has_hdim
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=bias)
        conv_dim = self.d_ssm + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1, bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(self.nheads))
        self.A_log = nn.Parameter(torch.zeros(self.nheads))
        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads))
        if rmsnorm:
            self.norm = nn.Module()
            self.norm.weight = nn.Parameter(torch.ones(self.d_ssm))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, u, return_state=False):
        b, l, _ = u.shape
        d_mlp = self.d_inner - self.d_ssm
        gn = self.ngroups * self.d_state
        z0, x0, z, xBC, dt = torch.split(self.in_proj(u), [d_mlp, d_mlp, self.d_ssm, self.d_ssm + 2 * gn,
                                                           self.nheads], dim=-1)
        xBC = silu(_conv_causal(xBC, self.conv1d))
        x, B, C = torch.split(xBC, [self.d_ssm, gn, gn], dim=-1)
        x = x.reshape(b, l, self.nheads, self.headdim)
        D = self.D.to(x.dtype).reshape(self.nheads, self.headdim) if self.D_has_hdim else self.D.to(x.dtype)
        y, S = ssd_loop(x, softplus(dt + self.dt_bias), -torch.exp(self.A_log.to(x.dtype)),
                        B.reshape(b, l, self.ngroups, self.d_state), C.reshape(b, l, self.ngroups, self.d_state), D)
        y = y.reshape(b, l, self.d_ssm)
        if self.rmsnorm:
            y = rms_norm_ref(y, self.norm.weight, z, eps=1e-5, group_size=self.d_ssm // self.ngroups,
                             norm_before_gate=self.norm_before_gate)
        else:
            y = y * silu(z)
        if d_mlp > 0:
            y = torch.cat([silu(z0) * x0, y], dim=-1)
        out = self.out_proj(y)
        return (out, S) if return_state else out


class RefHydra(nn.Module):
    """docs/mixers.md#the-hydra-layer, goombalab/hydra Hydra: registration order in_proj, conv1d,
    dt_bias, A_log, D, fc_D, norm, out_proj. Forward as coded upstream (non-fused path)."""

    def __init__(self, d_model, d_state=64, d_conv=7, expand=2, headdim=64, ngroups=1, bias=False, conv_bias=True):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.headdim, self.ngroups = headdim, ngroups
        self.nheads = self.d_inner // headdim
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 4 * ngroups * d_state + 2 * self.nheads, bias=bias)
        conv_dim = self.d_inner + 4 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv // 2, bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(self.nheads))
        self.A_log = nn.Parameter(torch.zeros(self.nheads))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.fc_D = nn.Linear(self.d_inner, self.nheads, bias=False)
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, u):
        b, l, _ = u.shape
        H, P, G, N = self.nheads, self.headdim, self.ngroups, self.d_state
        flip = lambda t: torch.flip(t, dims=(1,))  # noqa: E731  (time is dim 1)
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.d_inner + 4 * G * N, 2 * H], dim=-1)
        # layer step 1, doubled-batch step 1: the dt batch, forward half then the time-flipped backward half
        dt = torch.cat([dt[..., :H], flip(dt[..., H:])], dim=0)
        dt = softplus(dt + self.dt_bias)
        # layer step 2: non-causal conv, zero padding d_conv//2 on each side
        xBC = silu(F.conv1d(xBC.transpose(1, 2), self.conv1d.weight, self.conv1d.bias,
                            padding=self.d_conv // 2, groups=xBC.shape[-1]).transpose(1, 2))
        # layer step 3, doubled-batch step 1
        x, BC = torch.split(xBC, [self.d_inner, 4 * G * N], dim=-1)
        x2 = torch.cat([x, flip(x)], dim=0)
        BC2 = torch.cat([BC[..., :2 * G * N], flip(BC[..., 2 * G * N:])], dim=0)
        B, C = torch.split(BC2, [G * N, G * N], dim=-1)
        # doubled-batch step 2: the scan over the doubled batch, no D
        y2, _ = ssd_loop(x2.reshape(2 * b, l, H, P), dt, -torch.exp(self.A_log.to(x.dtype)),
                         B.reshape(2 * b, l, G, N), C.reshape(2 * b, l, G, N), None)
        # doubled-batch step 3: shift
        y2 = torch.roll(y2, shifts=1, dims=1)
        y2[:, 0] = 0
        # doubled-batch step 4
        diag = (self.fc_D(x) + self.D.to(x.dtype)).repeat_interleave(P, dim=-1)      # (b, l, H*P)
        y = y2[:b].reshape(b, l, -1) + flip(y2[b:]).reshape(b, l, -1) + x * diag
        # layer step 5
        y = rms_norm_ref(y, self.norm.weight, z, eps=1e-5, group_size=None, norm_before_gate=True)
        return self.out_proj(y)


@torch.no_grad()
def randomize_(module: nn.Module, seed: int, dt_bias_shift: float = -2.0) -> nn.Module:
    """Random values in every parameter of a reference layer (so that a wrong name, layout or order
    shows): projections N(0, 1/sqrt(fan_in)), A_log in log[1, 8], D and norm weights N(1, 0.3),
    dt_bias N(dt_bias_shift, 0.5)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if name == "A_log":
            v = torch.log(torch.empty(p.shape, dtype=torch.float64).uniform_(1.0, 8.0, generator=g))
        elif name in ("D",) or name == "norm.weight":
            v = 1.0 + 0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64)
        elif name in ("dt_bias", "dt_proj.bias"):
            v = dt_bias_shift + 0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64)
        elif leaf == "bias":
            v = 0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64)
        else:
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            v = torch.randn(p.shape, generator=g, dtype=torch.float64) / math.sqrt(fan_in)
        p.copy_(v.to(p.dtype))
    return module
