"""`Mamba2`: the Mamba-2 layer of mamba-ssm (mamba_ssm/modules/mamba2.py) on the compiled `mamba2`
spec. Same constructor, parameters (names, shapes, dtypes, init, state_dict order), forward and
decode; see docs/mixers.md#gated-rmsnorm and docs/mixers.md#the-mamba-2-layer.

    [z0 | x0 | z | xBC | dt] = in_proj(u)        (z0, x0: d_mlp = d_inner - d_ssm each; usually empty)
    xBC = silu(causal depthwise conv(xBC)) -> x (h p), B (g n), C (g n)
    y = mamba2(x, dt, B, C; A_log, dt_bias, D)    (SSD, softplus(dt + dt_bias), A = -exp(A_log))
    y = RMSNormGated(y, z) if rmsnorm else y · silu(z);  y = [silu(z0)·x0, y];  out = out_proj(y)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import (
    Args, RMSNormGated, causal_conv1d_step, check_hidden, check_seq_idx, compile_mixer,
    conv_and_prefill, dt_bias_init, run_mixer,
)
from .mamba import check_cache


def check_args(given: dict) -> None:
    """Every constructor argument of `Mamba2`, before anything is built (``ConfigError`` naming it)."""
    a = Args("Mamba2", given)
    a.positive_int("d_model", "d_state", "d_conv", "headdim", "ngroups")
    d_inner = a.d_inner()
    a.positive_int("d_ssm", optional=True)
    a.positive_int("chunk_size", optional=True)
    a.number("dt_min", "dt_max")
    if given["dt_min"] > given["dt_max"]:
        a.fail("dt_min", f"must be <= dt_max={given['dt_max']!r}")
    a.number("dt_init_floor", strict=False)
    a.number("conv_init", optional=True)
    a.flag("D_has_hdim", "rmsnorm", "norm_before_gate", "bias", "conv_bias", "use_mem_eff_path",
           "sequence_parallel")
    a.pair("A_init_range", "lo, hi")
    lo, hi = given["A_init_range"]
    if not (0 < lo <= hi and math.isfinite(hi)):
        a.fail("A_init_range", "must satisfy 0 < lo <= hi (A = -U(lo, hi))", "e.g. A_init_range=(1, 16)")
    a.pair("dt_limit", "lo, hi")
    if tuple(given["dt_limit"]) != (0.0, float("inf")):
        a.fail("dt_limit", "is not supported: the compiled mamba2 spec has no clamp after softplus(dt + dt_bias)",
               "use the default (0.0, inf)")
    if given["process_group"] is not None:
        a.fail("process_group", "is not supported (tensor parallelism)", "pass None")
    a.factory()
    headdim, ngroups = given["headdim"], given["ngroups"]
    if given["d_ssm"] is None:
        if d_inner % headdim:
            a.fail("headdim", f"does not divide d_inner = int(expand * d_model) = {d_inner}, which must be a "
                   "multiple of headdim (d_ssm defaults to d_inner)", "pick a headdim that divides it, or pass d_ssm")
        d_ssm = d_inner
    else:
        d_ssm = given["d_ssm"]
        if d_ssm > d_inner:
            a.fail("d_ssm", f"must be <= d_inner = int(expand * d_model) = {d_inner}")
        if d_ssm % headdim:
            a.fail("d_ssm", f"must be a multiple of headdim={headdim}")
    nheads = d_ssm // headdim
    if nheads % ngroups:
        a.fail("ngroups", f"must divide the number of heads {nheads} (d_ssm / headdim = {d_ssm} / {headdim})")


class Mamba2(nn.Module):
    """mamba-ssm's ``Mamba2`` layer, computed by the compiled ``mamba2`` spec.

    ``forward(u (b, l, d_model), seq_idx=None, cache=None) -> (b, l, d_model)``: ``seq_idx`` (b, l)
    packs several sequences per row (neither the conv nor the scan mixes them); with
    ``cache=(conv_state, ssm_state)`` (from `allocate_inference_cache`) the prompt's final states are
    written into it. ``step(hidden_states (b, 1, d_model), conv_state, ssm_state)`` decodes one token,
    updating both in place.

    ``D_has_hdim=True`` (D of shape (d_ssm,)) is supported: the layer adds ``D·x`` itself and passes
    zeros as the spec's per-head D. A ``dt_limit`` other than (0, inf) is refused (``ConfigError``):
    the spec has no clamp after the softplus. ``use_mem_eff_path``, ``sequence_parallel`` and
    ``process_group`` are accepted and ignored (they do not change the math; no tensor parallelism).
    """

    def __init__(self, d_model, d_state=128, d_conv=4, expand=2, headdim=64, d_ssm=None, ngroups=1,
                 A_init_range=(1, 16), D_has_hdim=False, rmsnorm=True, norm_before_gate=False,
                 dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, dt_limit=(0.0, float("inf")), bias=False,
                 conv_bias=True, chunk_size=256, layer_idx=None, device=None, dtype=None, backend="auto", *,
                 conv_init=None, use_mem_eff_path=True, process_group=None, sequence_parallel=True):
        check_args(locals())
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.conv_init = conv_init
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.headdim = headdim
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        self.ngroups = ngroups
        self.D_has_hdim = D_has_hdim
        self.rmsnorm = rmsnorm
        self.norm_before_gate = norm_before_gate
        self.dt_limit = tuple(dt_limit)
        self.chunk_size = chunk_size
        self.layer_idx = layer_idx
        self.use_mem_eff_path = use_mem_eff_path
        self.process_group = process_group
        self.sequence_parallel = sequence_parallel
        self.nheads = self.d_ssm // headdim

        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **factory_kwargs)
        conv_dim = self.d_ssm + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv - 1,
                                bias=conv_bias, **factory_kwargs)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.act = nn.SiLU()

        self.dt_bias = nn.Parameter(dt_bias_init(self.nheads, dt_min, dt_max, dt_init_floor, **factory_kwargs))
        self.dt_bias._no_weight_decay = True
        lo, hi = A_init_range
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(lo, hi)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads, device=device))
        self.D._no_weight_decay = True

        if rmsnorm:
            self.norm = RMSNormGated(self.d_ssm, eps=1e-5, norm_before_gate=norm_before_gate,
                                     group_size=self.d_ssm // ngroups, **factory_kwargs)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

        # no parameters, no buffers: adds nothing to the state_dict
        self.mixer = compile_mixer("mamba2", dict(h=self.nheads, p=headdim, n=d_state, g=ngroups),
                                   backend, chunk_size)

    # ------------------------------------------------------------------------------------------
    @property
    def d_mlp(self):
        return self.d_inner - self.d_ssm

    def _params(self):
        D = torch.zeros_like(self.A_log, dtype=self.D.dtype) if self.D_has_hdim else self.D
        return {"A_log": self.A_log, "dt_bias": self.dt_bias, "D": D}

    def _split(self, zxbcdt):
        gn = self.ngroups * self.d_state
        return torch.split(zxbcdt, [self.d_mlp, self.d_mlp, self.d_ssm, self.d_ssm + 2 * gn, self.nheads], dim=-1)

    def _heads(self, xBC):
        """(…, conv_dim) after the conv -> x (…, h, p), B, C (…, g, n)."""
        gn = self.ngroups * self.d_state
        x, B, C = torch.split(xBC, [self.d_ssm, gn, gn], dim=-1)
        return (x.unflatten(-1, (self.nheads, self.headdim)), B.unflatten(-1, (self.ngroups, self.d_state)),
                C.unflatten(-1, (self.ngroups, self.d_state)))

    def _finish(self, y, x, z, z0, x0):
        """From the scan output y (…, h, p): + D·x (D_has_hdim), gate/norm, the MLP half, out_proj."""
        ct = torch.promote_types(torch.float32, y.dtype)
        if self.D_has_hdim:
            y = (y.to(ct) + x.to(ct) * self.D.view(self.nheads, self.headdim).to(ct)).to(y.dtype)
        y = y.flatten(-2)
        if self.rmsnorm:
            y = self.norm(y, z)
        else:  # upstream gates inside the scan kernel, in fp32
            y = (y.to(ct) * F.silu(z.to(ct))).to(y.dtype)
        if self.d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return self.out_proj(y)

    def forward(self, u, seq_idx=None, cache=None):
        check_hidden("Mamba2", u, self.d_model)
        b, l, _ = u.shape
        check_seq_idx("Mamba2", seq_idx, b, l)
        conv_state = ssm_state = None
        if cache is not None:
            conv_state, ssm_state = check_cache("Mamba2", cache, self._cache_shapes(b))
        z0, x0, z, xBC, dt = self._split(self.in_proj(u))
        xBC = self.act(conv_and_prefill(xBC.transpose(1, 2), self.conv1d, seq_idx, conv_state)).transpose(1, 2)
        x, B, C = self._heads(xBC)
        y = run_mixer(self.mixer, self._params(), ssm_state, seq_idx, x=x, dt=dt, B=B, C=C)
        return self._finish(y, x, z, z0, x0)

    # ------------------------------------------------------------------------------------------
    def _cache_shapes(self, batch_size):
        return [(batch_size, self.conv1d.weight.shape[0], self.d_conv),
                (batch_size, self.nheads, self.headdim, self.d_state)]

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        """Zero ``(conv_state (b, conv_dim, d_conv), ssm_state (b, nheads, headdim, d_state))``; the
        conv state is channels-last in memory as upstream; dtypes of conv1d / in_proj unless given."""
        device = self.out_proj.weight.device
        conv_dim = self.conv1d.weight.shape[0]
        conv_state = torch.zeros(batch_size, self.d_conv, conv_dim, device=device,
                                 dtype=self.conv1d.weight.dtype if dtype is None else dtype).transpose(1, 2)
        ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                                dtype=self.in_proj.weight.dtype if dtype is None else dtype)
        return conv_state, ssm_state

    def step(self, hidden_states, conv_state, ssm_state):
        """One token: hidden_states (b, 1, d_model) -> (out (b, 1, d_model), conv_state, ssm_state),
        both states updated in place. No dt clamp, as upstream's decode (dt_limit is default anyway)."""
        check_hidden("Mamba2.step", hidden_states, self.d_model, length=1)
        b = hidden_states.shape[0]
        conv_state, ssm_state = check_cache("Mamba2.step", (conv_state, ssm_state), self._cache_shapes(b))
        z0, x0, z, xBC, dt = self._split(self.in_proj(hidden_states.squeeze(1)))
        xBC = self.act(causal_conv1d_step(conv_state, xBC, self.conv1d.weight, self.conv1d.bias))
        x, B, C = self._heads(xBC)
        y, new_state = self.mixer.step(ssm_state, params=self._params(), x=x, dt=dt, B=B, C=C)
        if new_state is not ssm_state:
            ssm_state.copy_(new_state)
        return self._finish(y, x, z, z0, x0).unsqueeze(1), conv_state, ssm_state
