"""`Chimera`: a Chimera layer over a (variate x time) grid on the compiled `chimera` spec (the math and the
reconstructed choices: docs/chimera.md, specs/chimera.py). No code of the authors is public; this block
follows the Mamba layer's shape around the paper's mixer.

    u (b, v, l, d_model)
    [x | z] = in_proj(u)                                  x, z: d_inner = expand * d_model each
    x = silu(causal depthwise conv along l (x))           per variate, kernel d_conv
    [dt1, dt2, B1, C1, B2, C2 for tf, tb, sf, sb] = x_proj(x)       (every cell's own features)
    y = chimera(x, z, ...)      two 2-D SSM heads (trend, season) x two directions along v, + D x, * silu(z)
    out = out_proj(RMSNorm(y))

Decoding runs along l: ``step`` takes one time step of every variate, ``(b, v, 1, d_model)``, and carries
per variate the conv's last inputs and the four 2-D SSMs' last column ``(h1, h2)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ir import InputError, ShapeError
from .common import Args, RMSNormGated, causal_conv1d, causal_conv1d_step, conv_state_from_prompt

__all__ = ["Chimera", "MODULES"]

MODULES = ("tf", "tb", "sf", "sb")  # trend / season, forward / backward along the variates


def check_args(given: dict) -> None:
    """Every constructor argument of `Chimera`, before anything is built (``ConfigError`` naming it)."""
    a = Args("Chimera", given)
    a.positive_int("d_model", "d_state", "d_conv", "headdim", "ngroups")
    d_inner = a.d_inner()
    a.positive_int("chunk_size", optional=True)
    a.flag("bias", "conv_bias")
    a.number("norm_eps")
    a.factory()
    headdim, ngroups = given["headdim"], given["ngroups"]
    if d_inner % headdim:
        a.fail("headdim", f"does not divide d_inner = int(expand * d_model) = {d_inner}",
               "pick a headdim that divides it (the heads split d_inner into d_inner / headdim)")
    nheads = d_inner // headdim
    if nheads % ngroups:
        a.fail("ngroups", f"must divide the number of heads {nheads} (d_inner / headdim = {d_inner} / {headdim})",
               "pick ngroups dividing it (B and C are shared by the heads of a group)")


def _check_grid(what: str, u, d_model: int, length: int | None = None) -> None:
    if not isinstance(u, torch.Tensor) or not u.dtype.is_floating_point:
        got = f"{u.dtype} tensor" if isinstance(u, torch.Tensor) else type(u).__name__
        raise InputError(f"{what}: u must be a floating torch.Tensor (b, v, l, d_model={d_model}), got {got}")
    if u.dim() != 4 or u.shape[-1] != d_model or (length is not None and u.shape[2] != length):
        want = f"(b, v, {'l' if length is None else length}, d_model={d_model})"
        hint = "; the grid is batch, variates, time, features" if u.dim() != 4 else ""
        raise ShapeError(f"{what}: u must be {want}, got shape {tuple(u.shape)}{hint}")


class Chimera(nn.Module):
    """A Chimera layer: ``forward(u (b, v, l, d_model), cache=None) -> (b, v, l, d_model)``.

    With ``cache=(conv_state, ssm_state)`` from `allocate_inference_cache` the prompt's final states
    are written into it (prefill); ``step(u_t (b, v, 1, d_model), conv_state, ssm_state)`` decodes one
    time step of every variate, updating both in place. The mixer's parameters (``A1_log_tf``, ...,
    ``D``: one per head) live in ``self.mixer``, initialised by the spec's rules.
    """

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, headdim=16, ngroups=1, bias=False,
                 conv_bias=True, norm_eps=1e-5, chunk_size=None, layer_idx=None, device=None, dtype=None,
                 backend="auto"):
        check_args(locals())
        super().__init__()
        import mixerc as mx

        factory_kwargs = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.headdim, self.ngroups = headdim, ngroups
        self.nheads = self.d_inner // headdim
        self.layer_idx = layer_idx
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory_kwargs)
        gn = ngroups * d_state
        self._widths = [self.nheads, self.nheads, gn, gn, gn, gn] * len(MODULES)
        self.x_proj = nn.Linear(self.d_inner, sum(self._widths), bias=False, **factory_kwargs)
        self.norm = RMSNormGated(self.d_inner, eps=norm_eps, **factory_kwargs)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)
        self.mixer = mx.compile("chimera", dims=dict(h=self.nheads, p=headdim, n=d_state, g=ngroups),
                                backend=backend, chunk_size=chunk_size)
        self.mixer.to(**{k: v for k, v in factory_kwargs.items() if v is not None})
        for name, p in self.mixer.named_parameters():
            if not name.startswith(("B", "C")):
                p._no_weight_decay = True

    # ------------------------------------------------------------------------------------------
    def _inputs(self, x, z):
        """x (after the conv), z (…, d_inner) -> the spec's keyword inputs (…, h, p), (…, h), (…, g, n)."""
        out = {"x": x.unflatten(-1, (self.nheads, self.headdim)), "z": z.unflatten(-1, (self.nheads, self.headdim))}
        parts = iter(torch.split(self.x_proj(x), self._widths, dim=-1))
        for k in MODULES:
            out[f"dt1_{k}"], out[f"dt2_{k}"] = next(parts), next(parts)
            for role in ("B1", "C1", "B2", "C2"):
                out[f"{role}_{k}"] = next(parts).unflatten(-1, (self.ngroups, self.d_state))
        return out

    def _finish(self, y):
        return self.out_proj(self.norm(y.flatten(-2)))

    def forward(self, u, cache=None):
        _check_grid("Chimera", u, self.d_model)
        b, v, l, _ = u.shape
        conv_state = ssm_state = None
        if cache is not None:
            conv_state, ssm_state = self._check_cache("Chimera", cache, b, v)
        x, z = self.in_proj(u).chunk(2, dim=-1)
        xc = x.reshape(b * v, l, self.d_inner).transpose(1, 2)
        if conv_state is not None:
            conv_state.copy_(conv_state_from_prompt(xc, self.d_conv, None).reshape(conv_state.shape))
        xc = F.silu(causal_conv1d(xc, self.conv1d.weight, self.conv1d.bias))
        x = xc.transpose(1, 2).reshape(b, v, l, self.d_inner)
        inputs = self._inputs(x, z)
        if ssm_state is None:
            return self._finish(self.mixer(**inputs))
        y, finals = self.mixer(**inputs, return_final_state=True)
        ssm_state.copy_(torch.stack(finals, dim=1))
        return self._finish(y)

    # ------------------------------------------------------------------------------------------
    def _cache_shapes(self, b, v):
        return [(b, v, self.d_inner, self.d_conv),
                (b, len(MODULES), 2, v, self.nheads, self.headdim, self.d_state)]

    def _check_cache(self, what, cache, b, v):
        if not isinstance(cache, (tuple, list)) or len(cache) != 2:
            raise InputError(f"{what}: cache must be (conv_state, ssm_state) from allocate_inference_cache, "
                             f"got {type(cache).__name__}")
        for name, t, shape in zip(("conv_state", "ssm_state"), cache, self._cache_shapes(b, v)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ShapeError(f"{what}: {name} must have shape {shape} for b={b}, v={v} "
                                 f"(allocate_inference_cache(b, v)), got {got}")
            if not t.is_contiguous():
                raise InputError(f"{what}: {name} must be contiguous (it is updated in place); pass the tensors "
                                 "allocate_inference_cache returns, or .contiguous() copies")
        return tuple(cache)

    def allocate_inference_cache(self, batch_size, n_variates, dtype=None):
        """Zero ``(conv_state (b, v, d_inner, d_conv), ssm_state (b, 4, 2, v, h, p, n))``: per variate the
        conv's last inputs, and the last column (h1, h2) of each 2-D SSM module (order tf, tb, sf, sb)."""
        for name, n in (("batch_size", batch_size), ("n_variates", n_variates)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise InputError(f"Chimera.allocate_inference_cache: {name}={n!r} must be a positive integer")
        w = self.in_proj.weight
        conv_shape, ssm_shape = self._cache_shapes(batch_size, n_variates)
        state_dtype = dtype or torch.promote_types(torch.float32, w.dtype)
        return (torch.zeros(conv_shape, device=w.device, dtype=dtype or w.dtype),
                torch.zeros(ssm_shape, device=w.device, dtype=state_dtype))

    def step(self, u_t, conv_state, ssm_state):
        """One time step of every variate: u_t (b, v, 1, d_model) -> (out (b, v, 1, d_model), conv_state,
        ssm_state), both states updated in place."""
        _check_grid("Chimera.step", u_t, self.d_model, length=1)
        b, v = u_t.shape[:2]
        conv_state, ssm_state = self._check_cache("Chimera.step", (conv_state, ssm_state), b, v)
        x, z = self.in_proj(u_t.squeeze(2)).chunk(2, dim=-1)
        xc = causal_conv1d_step(conv_state.view(b * v, self.d_inner, self.d_conv), x.reshape(b * v, self.d_inner),
                                self.conv1d.weight, self.conv1d.bias)
        x = F.silu(xc).reshape(b, v, self.d_inner)
        y, finals = self.mixer.step(tuple(ssm_state.unbind(1)), **self._inputs(x, z))
        ssm_state.copy_(torch.stack(finals, dim=1))
        return self._finish(y).unsqueeze(2), conv_state, ssm_state
