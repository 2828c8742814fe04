"""`Mamba`: the Mamba-1 layer of mamba-ssm (mamba_ssm/modules/mamba_simple.py) on the compiled `mamba`
spec. Same constructor, same parameters (names, shapes, dtypes, init, state_dict order), same
forward and decode; see docs/mixers.md#the-mamba-layer.

    xz = in_proj(u) -> x, z;  x = silu(causal depthwise conv(x));  [dt_low | B | C] = x_proj(x)
    dt = dt_proj.weight @ dt_low            (dt_proj.bias is the spec's dt_bias, inside the softplus)
    y  = mamba(x, dt, B, C; A_log, dt_bias=dt_proj.bias, D) · silu(z);   out = out_proj(y)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ir import InputError, ShapeError
from .common import (
    Args, causal_conv1d_step, check_hidden, check_seq_idx, compile_mixer, conv_and_prefill,
    dt_bias_init, run_mixer,
)


def check_cache(layer: str, cache, shapes: list[tuple]):
    """``cache`` must be a (conv_state, ssm_state) pair of the given shapes; returns it as a tuple."""
    if not isinstance(cache, (tuple, list)) or len(cache) != 2:
        raise InputError(f"{layer}: cache must be (conv_state, ssm_state) from allocate_inference_cache, "
                         f"got {type(cache).__name__}")
    for name, t, shape in zip(("conv_state", "ssm_state"), cache, shapes):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ShapeError(f"{layer}: {name} must have shape {tuple(shape)} (allocate_inference_cache), got {got}")
    return tuple(cache)


def check_args(given: dict) -> None:
    """Every constructor argument of `Mamba`, before anything is built (``ConfigError`` naming it)."""
    a = Args("Mamba", given)
    a.positive_int("d_model", "d_state", "d_conv")
    a.d_inner()
    if given["dt_rank"] != "auto" and (a.as_int("dt_rank") is None or given["dt_rank"] < 1):
        a.fail("dt_rank", "must be 'auto' (ceil(d_model / 16)) or a positive integer")
    a.number("dt_min", "dt_max")
    if given["dt_min"] > given["dt_max"]:
        a.fail("dt_min", f"must be <= dt_max={given['dt_max']!r}")
    a.number("dt_scale", "dt_init_floor", strict=False)
    a.choice("dt_init", ("constant", "random"))
    a.flag("conv_bias", "bias", "use_fast_path")
    a.positive_int("chunk_size", optional=True)
    a.factory()


class Mamba(nn.Module):
    """mamba-ssm's ``Mamba`` (S6 selective scan) layer, computed by the compiled ``mamba`` spec.

    ``forward(u (b, l, d_model), seq_idx=None, cache=None) -> (b, l, d_model)``; with
    ``cache=(conv_state, ssm_state)`` (from `allocate_inference_cache`) the prompt's final conv and
    SSM states are written into it so that `step` continues the sequence.
    ``step(hidden_states (b, 1, d_model), conv_state, ssm_state) -> (out, conv_state, ssm_state)``,
    the caches updated in place."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1,
                 dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True, bias=False,
                 layer_idx=None, device=None, dtype=None, backend="auto", chunk_size=None, *,
                 use_fast_path=True):
        check_args(locals())
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.layer_idx = layer_idx
        self.use_fast_path = use_fast_path  # accepted for compatibility; the math is the same

        # own parameters first (state_dict order): A_log (fp32, S4D-real), D (fp32)
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory_kwargs)
        self.activation = "silu"
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)
        std = self.dt_rank ** -0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            self.dt_proj.bias.copy_(dt_bias_init(self.d_inner, dt_min, dt_max, dt_init_floor,
                                                 device=device, dtype=dtype))
        self.dt_proj.bias._no_reinit = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

        # no parameters, no buffers: adds nothing to the state_dict
        self.mixer = compile_mixer("mamba", dict(d=self.d_inner, n=d_state), backend, chunk_size)

    # ------------------------------------------------------------------------------------------
    def _params(self):
        return {"A_log": self.A_log, "dt_bias": self.dt_proj.bias, "D": self.D}

    def _ssm_inputs(self, x):
        """x (…, d_inner) after the conv -> the spec's dt, B, C (dt without its bias)."""
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.linear(dt, self.dt_proj.weight), B, C

    def forward(self, hidden_states, seq_idx=None, cache=None):
        u = hidden_states
        check_hidden("Mamba", u, self.d_model)
        b, l, _ = u.shape
        check_seq_idx("Mamba", seq_idx, b, l)
        conv_state = ssm_state = None
        if cache is not None:
            conv_state, ssm_state = check_cache("Mamba", cache, self._cache_shapes(b))
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = F.silu(conv_and_prefill(x.transpose(1, 2), self.conv1d, seq_idx, conv_state)).transpose(1, 2)
        dt, B, C = self._ssm_inputs(x)
        y = run_mixer(self.mixer, self._params(), ssm_state, seq_idx, x=x, dt=dt, B=B, C=C)
        y = self._gate(y, z)
        return self.out_proj(y)

    def _gate(self, y, z):
        ct = torch.promote_types(torch.float32, y.dtype)  # upstream gates in fp32 inside the kernel
        return (y.to(ct) * F.silu(z.to(ct))).to(y.dtype)

    # ------------------------------------------------------------------------------------------
    def _cache_shapes(self, batch_size):
        return [(batch_size, self.d_inner, self.d_conv), (batch_size, self.d_inner, self.d_state)]

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        """Zero ``(conv_state (b, d_inner, d_conv), ssm_state (b, d_inner, d_state))``, in the conv's
        and dt_proj's dtypes unless ``dtype`` is given (as upstream)."""
        device = self.out_proj.weight.device
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device,
                                 dtype=self.conv1d.weight.dtype if dtype is None else dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device,
                                dtype=self.dt_proj.weight.dtype if dtype is None else dtype)
        return conv_state, ssm_state

    def step(self, hidden_states, conv_state, ssm_state):
        """One token: hidden_states (b, 1, d_model) -> (out (b, 1, d_model), conv_state, ssm_state),
        both states updated in place."""
        check_hidden("Mamba.step", hidden_states, self.d_model, length=1)
        b = hidden_states.shape[0]
        conv_state, ssm_state = check_cache("Mamba.step", (conv_state, ssm_state), self._cache_shapes(b))
        x, z = self.in_proj(hidden_states.squeeze(1)).chunk(2, dim=-1)
        x = F.silu(causal_conv1d_step(conv_state, x, self.conv1d.weight, self.conv1d.bias))
        dt, B, C = self._ssm_inputs(x)
        y, new_state = self.mixer.step(ssm_state, params=self._params(), x=x, dt=dt, B=B, C=C)
        if new_state is not ssm_state:
            ssm_state.copy_(new_state)
        out = self.out_proj(self._gate(y, z))
        return out.unsqueeze(1), conv_state, ssm_state
