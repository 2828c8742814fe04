"""`Hydra`: the bidirectional quasiseparable layer of goombalab/hydra (hydra/modules/hydra.py) on the
compiled `hydra` spec. Same constructor, parameters (names, shapes, dtypes, init, state_dict order)
and forward; see docs/mixers.md#the-hydra-layer and docs/quasiseparable.md.

    [z | xBC | dt (2h)] = in_proj(u)
    xBC = silu(non-causal depthwise conv(xBC)) -> x (h p), [B_fwd, C_fwd, B_bwd, C_bwd] (g n each)
    y = hydra(x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd, delta = fc_D(x); A_log, dt_bias, D)
      = shift(SS_fwd) x + flip·shift(SS_bwd)·flip x + (D + delta)·x
    out = out_proj(RMSNormGated(y, z))   (norm before gate, over all of d_inner)

Every input goes to the spec in the original time order; the spec does the flips.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import (
    Args, RMSNormGated, UnsupportedError, check_hidden, check_seq_idx, compile_mixer,
    dt_bias_init, same_conv1d,
)


def check_args(given: dict) -> None:
    """Every constructor argument of `Hydra`, before anything is built (``ConfigError`` naming it)."""
    a = Args("Hydra", given)
    a.positive_int("d_model", "d_state", "d_conv", "headdim", "ngroups")
    if given["d_conv"] % 2 == 0:
        a.fail("d_conv", "is even: d_conv must be odd (the non-causal conv is centred)", "e.g. d_conv=7")
    d_inner = a.d_inner()
    a.positive_int("chunk_size", optional=True)
    a.number("dt_min", "dt_max")
    if given["dt_min"] > given["dt_max"]:
        a.fail("dt_min", f"must be <= dt_max={given['dt_max']!r}")
    a.number("dt_init_floor", strict=False)
    a.flag("learnable_init_states", "bias", "conv_bias", "use_mem_eff_path")
    a.choice("activation", ("swish", "silu"))
    if given["learnable_init_states"]:
        a.fail("learnable_init_states", "is not supported: the compiled hydra spec is non-causal and takes no "
               "initial state", "use learnable_init_states=False")
    a.pair("dt_limit", "lo, hi")
    if tuple(given["dt_limit"]) != (0.0, float("inf")):
        a.fail("dt_limit", "is not supported: the compiled hydra spec has no clamp after softplus(dt + dt_bias)",
               "use the default (0.0, inf)")
    a.factory()
    headdim, ngroups = given["headdim"], given["ngroups"]
    if d_inner % headdim:
        a.fail("headdim", f"does not divide d_inner = int(expand * d_model) = {d_inner}, which must be a "
               "multiple of headdim", "pick a headdim that divides it")
    if (d_inner // headdim) % ngroups:
        a.fail("ngroups", f"must divide the number of heads {d_inner // headdim} (d_inner / headdim)")


class Hydra(nn.Module):
    """goombalab/hydra's ``Hydra`` layer, computed by the compiled ``hydra`` spec.

    ``forward(u (b, l, d_model), seq_idx=None, cache=None) -> (b, l, d_model)``. ``seq_idx`` (b, l)
    packs several sequences per row: the conv and both scans stay inside each segment (upstream
    cannot take a seq_idx at all, docs/quasiseparable.md#segments). Non-causal: there is no decode
    ``step`` and no ``cache``;
    ``learnable_init_states=True`` and a non-default ``dt_limit`` raise ``ConfigError``.
    ``use_mem_eff_path`` is accepted and ignored (same math)."""

    def __init__(self, d_model, d_state=64, d_conv=7, expand=2, headdim=64, ngroups=1, dt_min=0.001,
                 dt_max=0.1, dt_init_floor=1e-4, dt_limit=(0.0, float("inf")), learnable_init_states=False,
                 activation="swish", bias=False, conv_bias=True, chunk_size=256, layer_idx=None, device=None,
                 dtype=None, backend="auto", *, use_mem_eff_path=False):
        check_args(locals())
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.headdim = headdim
        self.ngroups = ngroups
        self.dt_limit = tuple(dt_limit)
        self.learnable_init_states = learnable_init_states
        self.activation = activation
        self.chunk_size = chunk_size
        self.layer_idx = layer_idx
        self.use_mem_eff_path = use_mem_eff_path
        self.nheads = self.d_inner // headdim

        d_in_proj = 2 * self.d_inner + 4 * ngroups * d_state + 2 * self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **factory_kwargs)
        conv_dim = self.d_inner + 4 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv // 2,
                                bias=conv_bias, **factory_kwargs)
        self.act = nn.SiLU()

        self.dt_bias = nn.Parameter(dt_bias_init(self.nheads, dt_min, dt_max, dt_init_floor, **factory_kwargs))
        self.dt_bias._no_weight_decay = True
        A = torch.ones(self.nheads, dtype=torch.float32, device=device)  # A_log = 0: A = -1 per head
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.nheads, device=device))
        self.D._no_weight_decay = True
        self.fc_D = nn.Linear(self.d_inner, self.nheads, bias=False, **factory_kwargs)

        self.norm = RMSNormGated(self.d_inner, eps=1e-5, norm_before_gate=True, **factory_kwargs)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

        # no parameters, no buffers: adds nothing to the state_dict
        self.mixer = compile_mixer("hydra", dict(h=self.nheads, p=headdim, n=d_state, g=ngroups),
                                   backend, chunk_size)

    def forward(self, u, seq_idx=None, cache=None):
        if cache is not None:
            raise UnsupportedError("Hydra is bidirectional (non-causal): every output reads future tokens, "
                                   "so there is no decode cache; call it on the whole sequence with cache=None")
        check_hidden("Hydra", u, self.d_model)
        b, l, _ = u.shape
        check_seq_idx("Hydra", seq_idx, b, l)
        gn = self.ngroups * self.d_state
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.d_inner + 4 * gn, 2 * self.nheads], dim=-1)
        xBC = self.act(same_conv1d(xBC.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, seq_idx))
        xBC = xBC.transpose(1, 2)
        x, B_fwd, C_fwd, B_bwd, C_bwd = torch.split(xBC, [self.d_inner, gn, gn, gn, gn], dim=-1)
        groups = (self.ngroups, self.d_state)
        y = self.mixer(params={"A_log": self.A_log, "dt_bias": self.dt_bias, "D": self.D},
                       x=x.unflatten(-1, (self.nheads, self.headdim)),
                       dt_fwd=dt[..., :self.nheads], dt_bwd=dt[..., self.nheads:],
                       B_fwd=B_fwd.unflatten(-1, groups), C_fwd=C_fwd.unflatten(-1, groups),
                       B_bwd=B_bwd.unflatten(-1, groups), C_bwd=C_bwd.unflatten(-1, groups),
                       delta=self.fc_D(x), seq_idx=seq_idx)
        return self.out_proj(self.norm(y.flatten(-2), z))

    def allocate_inference_cache(self, *args, **kwargs):
        raise UnsupportedError("Hydra is bidirectional (non-causal): each output depends on later tokens, "
                               "so it cannot decode token by token; run forward on the whole sequence")

    def step(self, *args, **kwargs):
        raise UnsupportedError("Hydra is bidirectional (non-causal): each output depends on later tokens, "
                               "so it has no decode step; run forward on the whole sequence")
