"""Pieces shared by the `mixerc.nn` layers: typed errors, the gated RMSNorm, the depthwise convolutions
(causal, with packed-sequence masking; Hydra's non-causal 'same' one), the dt_bias init and the
compiled-mixer holder.

The math follows docs/mixers.md (The Mamba layer, Gated RMSNorm, The Mamba-2 layer, The Hydra layer).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ..ir import InputError, MixercError, ShapeError
from ..rt.segments import segment_runs

__all__ = [
    "ConfigError", "UnsupportedError", "RMSNormGated", "segment_runs", "causal_conv1d",
    "causal_conv1d_step", "conv_state_from_prompt", "same_conv1d", "dt_bias_init", "compile_mixer", "check_hidden",
    "check_seq_idx", "Args",
]


class ConfigError(MixercError, ValueError):
    """A layer constructor argument that is inconsistent or not supported (the message says which
    and what to pass instead)."""


class UnsupportedError(MixercError, NotImplementedError):
    """An operation the layer cannot do (e.g. a decode step of a bidirectional mixer)."""


# ----------------------------------------------------------------------------------------------
# constructor arguments, checked up front
# ----------------------------------------------------------------------------------------------
class Args:
    """Checks of a layer's constructor arguments, each raising `ConfigError` that names the layer, the
    argument as the user wrote it (``Mamba2: headdim=0``), what is expected and what to pass.

        a = Args("Mamba2", locals())
        a.positive_int("d_model", "d_state", "headdim"); a.flag("rmsnorm")
    """

    def __init__(self, layer: str, given: dict):
        self.layer, self.given = layer, given

    def fail(self, name: str, expected: str, fix: str = ""):
        raise ConfigError(f"{self.layer}: {name}={self.given[name]!r} {expected}" + (f"; {fix}" if fix else ""))

    def as_int(self, name: str) -> int | None:
        v = self.given[name]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            return None
        return int(v)

    def positive_int(self, *names: str, optional: bool = False):
        for name in names:
            if optional and self.given[name] is None:
                continue
            v = self.as_int(name)
            if v is None or v < 1:
                self.fail(name, "must be a positive integer" + (" or None" if optional else ""))

    def number(self, *names: str, low: float = 0.0, strict: bool = True, optional: bool = False):
        """Real, finite and > low (``strict``) or >= low."""
        for name in names:
            v = self.given[name]
            if optional and v is None:
                continue
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or (v <= low if strict else v < low):
                self.fail(name, f"must be a finite number {'>' if strict else '>='} {low:g}")

    def flag(self, *names: str):
        for name in names:
            if not isinstance(self.given[name], bool):
                self.fail(name, "must be True or False")

    def choice(self, name: str, options: tuple):
        if self.given[name] not in options:
            self.fail(name, f"must be one of {', '.join(map(repr, options))}")

    def pair(self, name: str, what: str):
        v = self.given[name]
        if not (isinstance(v, (tuple, list)) and len(v) == 2
                and all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in v)):
            self.fail(name, f"must be a pair of numbers ({what})")

    def factory(self):
        """``device`` (None, a string or torch.device) and ``dtype`` (None or a floating torch.dtype),
        ``backend`` (a string) and ``layer_idx`` (None or an integer >= 0)."""
        dtype = self.given.get("dtype")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point
                                      and not dtype.is_complex):
            self.fail("dtype", "must be None or a floating torch.dtype", "e.g. dtype=torch.float32")
        device = self.given.get("device")
        if device is not None:
            try:
                torch.device(device)
            except (RuntimeError, TypeError):
                self.fail("device", "is not a device", "e.g. device='cpu' or device='cuda:0'")
        if not isinstance(self.given.get("backend"), str):
            self.fail("backend", "must be a string", "e.g. backend='auto'")
        idx = self.given.get("layer_idx")
        if idx is not None and (self.as_int("layer_idx") is None or idx < 0):
            self.fail("layer_idx", "must be None or an integer >= 0")

    def d_inner(self) -> int:
        """int(expand * d_model), at least 1 (``expand`` a finite number > 0, ``d_model`` checked)."""
        self.number("expand")
        d = int(self.given["expand"] * self.given["d_model"])
        if d < 1:
            self.fail("expand", f"gives d_inner = int(expand * d_model) = {d} with d_model="
                      f"{self.given['d_model']}", "pass a larger expand")
        return d


# ----------------------------------------------------------------------------------------------
# gated RMSNorm (mamba-ssm's layernorm_gated.RMSNorm)
# ----------------------------------------------------------------------------------------------
class RMSNormGated(nn.Module):
    """``norm_before_gate=True``: rms_g(x)·w ⊙ silu(z); ``False``: rms_g(x ⊙ silu(z))·w; z=None: rms_g(x)·w.

    rms_g(v) = v / sqrt(mean(v²) + eps), the mean over consecutive groups of ``group_size`` channels
    (None: the whole last dim). Computed in at least fp32; returns x's dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = True, device=None, dtype=None):
        super().__init__()
        if group_size is not None and (group_size <= 0 or hidden_size % group_size):
            raise ConfigError(f"RMSNormGated: group_size={group_size} must divide hidden_size={hidden_size}")
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        width = self.weight.shape[0]
        if x.shape[-1] != width or (z is not None and z.shape != x.shape):
            raise ShapeError(f"RMSNormGated: x {tuple(x.shape)} must end in {width}"
                             + ("" if z is None else f" and z {tuple(z.shape)} must have x's shape"))
        out_dtype = x.dtype
        ct = torch.promote_types(torch.float32, x.dtype)
        v = x.to(ct)
        if z is not None and not self.norm_before_gate:
            v = v * F.silu(z.to(ct))
        group = self.group_size or width
        vg = v.unflatten(-1, (width // group, group))
        vg = vg * torch.rsqrt(vg.square().mean(-1, keepdim=True) + self.eps)
        out = vg.flatten(-2) * self.weight.to(ct)
        if z is not None and self.norm_before_gate:
            out = out * F.silu(z.to(ct))
        return out.to(out_dtype)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}, "
                f"norm_before_gate={self.norm_before_gate}")


# ----------------------------------------------------------------------------------------------
# depthwise convolutions, channel-major (b, d, l) as nn.Conv1d
# ----------------------------------------------------------------------------------------------
def _conv_masked(x, weight, bias, runs, left: int):
    """out[t] = bias + Σ_k w[k]·x[t - left + k], a tap counting only when its position is inside
    [0, l) and in t's segment."""
    b, d, l = x.shape
    W = weight.shape[-1]
    w = weight.reshape(d, W)
    out = x.new_zeros(b, d, l) if bias is None else bias.to(x.dtype).view(1, d, 1).expand(b, d, l).clone()
    for k in range(W):
        s = k - left  # tap k reads position t + s
        lo, hi = max(0, -s), min(l, l - s)
        if lo >= hi:
            continue
        same = (runs[:, lo + s:hi + s] == runs[:, lo:hi]).unsqueeze(1).to(x.dtype)
        out[:, :, lo:hi] = out[:, :, lo:hi] + w[:, k].view(1, d, 1) * x[:, :, lo + s:hi + s] * same
    return out


def _empty_conv(x, weight, bias):
    """The conv of a length-0 input: (b, d, 0), still a function of x, weight and bias so that a
    backward runs (F.conv1d refuses a length shorter than its kernel)."""
    d = x.shape[1]
    out = x * weight.reshape(d, -1)[:, -1].view(1, d, 1).to(x.dtype)
    return out if bias is None else out + bias.to(x.dtype).view(1, d, 1)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Causal depthwise conv of x (b, d, l) with weight (d, 1, W): out[t] = bias + Σ_k w[k]·x[t-(W-1)+k],
    zero left padding (nn.Conv1d with padding W-1, first l outputs). With seq_idx (b, l) a tap from
    another segment counts as zero, so packed sequences do not mix (causal_conv1d_fn's contract)."""
    W = weight.shape[-1]
    if x.shape[-1] == 0:
        return _empty_conv(x, weight, bias)
    if seq_idx is None:
        return F.conv1d(x, weight, bias, padding=W - 1, groups=x.shape[1])[..., :x.shape[-1]]
    return _conv_masked(x, weight, bias, segment_runs(seq_idx), W - 1)


def same_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Hydra's non-causal depthwise conv: out[t] = bias + Σ_k w[k]·x[t-W//2+k], zero padding on both
    sides (F.conv1d padding='same'). W must be odd (an even one gives l+1 outputs upstream). With
    seq_idx (b, l), taps outside t's segment count as zero."""
    W = weight.shape[-1]
    if W % 2 == 0:
        raise ConfigError(f"the non-causal conv needs an odd d_conv (kernel width), got {W}: an even "
                          "width has no centre tap ('same' padding would be lopsided)")
    if x.shape[-1] == 0:
        return _empty_conv(x, weight, bias)
    if seq_idx is None:
        return F.conv1d(x, weight, bias, padding=W // 2, groups=x.shape[1])
    return _conv_masked(x, weight, bias, segment_runs(seq_idx), W // 2)


def conv_state_from_prompt(x: torch.Tensor, W: int, seq_idx: torch.Tensor | None) -> torch.Tensor:
    """The conv decode state after a prompt x (b, d, l): its last W inputs, zero left-padded when
    l < W; with seq_idx, inputs outside the last position's segment are zeroed (the decode continues
    the last segment)."""
    l = x.shape[-1]
    if seq_idx is not None:
        runs = segment_runs(seq_idx)
        x = x * (runs == runs[:, -1:]).unsqueeze(1).to(x.dtype)
    return F.pad(x, (W - l, 0)) if l < W else x[..., l - W:]


def causal_conv1d_step(conv_state: torch.Tensor, x_t: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
    """One decode position: shift conv_state (b, d, W) left in place, write x_t (b, d) in the last slot,
    return Σ_k w[k]·state[k] + bias (b, d)."""
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x_t.to(conv_state.dtype)
    out = (conv_state * weight.reshape(weight.shape[0], -1).to(conv_state.dtype)).sum(-1)
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.to(x_t.dtype)


# ----------------------------------------------------------------------------------------------
# init
# ----------------------------------------------------------------------------------------------
def dt_bias_init(n: int, dt_min: float, dt_max: float, dt_init_floor: float, device=None,
                 dtype=None) -> torch.Tensor:
    """softplus⁻¹(dt) with dt = exp(U(log dt_min, log dt_max)) clamped to >= dt_init_floor
    (softplus⁻¹(y) = y + log(-expm1(-y)))."""
    if not 0 < dt_min <= dt_max:
        raise ConfigError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    dt = torch.exp(torch.rand(n, device=device, dtype=dtype) * (math.log(dt_max) - math.log(dt_min))
                   + math.log(dt_min)).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


# ----------------------------------------------------------------------------------------------
# glue
# ----------------------------------------------------------------------------------------------
def compile_mixer(spec: str, dims: dict, backend: str, chunk_size: int | None):
    """The compiled spec, holding no parameters (the layer owns them under upstream's names)."""
    import mixerc as mx
    return mx.compile(spec, dims=dims, backend=backend, chunk_size=chunk_size, parameters=False)


def check_hidden(layer: str, u, d_model: int, length: int | None = None) -> None:
    if not isinstance(u, torch.Tensor):
        raise InputError(f"{layer}: hidden_states must be a torch.Tensor (b, l, d_model), got {type(u).__name__}")
    if u.dim() != 3 or u.shape[-1] != d_model or (length is not None and u.shape[1] != length):
        want = f"(b, {length if length is not None else 'l'}, d_model={d_model})"
        raise ShapeError(f"{layer}: hidden_states must be {want}, got shape {tuple(u.shape)}")


def check_seq_idx(layer: str, seq_idx, b: int, l: int) -> None:
    if seq_idx is None:
        return
    if not isinstance(seq_idx, torch.Tensor) or seq_idx.dtype.is_floating_point or seq_idx.dtype == torch.bool:
        raise InputError(f"{layer}: seq_idx must be an integer tensor (b, l) of segment ids")
    if tuple(seq_idx.shape) != (b, l):
        raise ShapeError(f"{layer}: seq_idx must be (b={b}, l={l}), got shape {tuple(seq_idx.shape)}")


def conv_and_prefill(xc: torch.Tensor, conv: nn.Conv1d, seq_idx, conv_state=None) -> torch.Tensor:
    """The causal depthwise conv of ``xc`` (b, channels, l), before its activation; with a decode
    cache (``conv_state`` not None) the prompt's last inputs are written there (prefill)."""
    if conv_state is not None:
        conv_state.copy_(conv_state_from_prompt(xc, conv.weight.shape[-1], seq_idx))
    return causal_conv1d(xc, conv.weight, conv.bias, seq_idx)


def run_mixer(mixer, params: dict, ssm_state, seq_idx, **inputs):
    """The compiled mixer's output; with a decode cache (``ssm_state`` not None) its final state is
    written there (prefill)."""
    if ssm_state is None:
        return mixer(params=params, seq_idx=seq_idx, **inputs)
    y, final = mixer(params=params, seq_idx=seq_idx, return_final_state=True, **inputs)
    ssm_state.copy_(final)
    return y
