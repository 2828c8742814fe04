"""`TiM4Rec`: the time-aware sequential recommender of AlwaysFHao/TiM4Rec (tim4rec.py, ssd.py) on the
compiled `tim4rec` spec (the plain `mamba2` spec when ``is_time=False``). Same module and parameter
names as upstream, so an upstream state_dict loads with ``strict=True``; the math is in docs/tim4rec.md.

    e   = LayerNorm_d(Dropout(item_embedding(item_seq)))
    τ⁰  = LayerNorm_L(Dropout(gaps)) repeated over the H heads      gaps_i = ts_i - ts_{i-1}, gaps_0 = 0
    per layer (TiSSDLayer): (e, τ) -> TiSSD -> residual + LayerNorm -> FFN
    TiSSD: [z | xBC | dt] = in_proj(e);  xBC = hardswish(causal conv(xBC)) -> x, B, C
           s = mlp4time_scale(τ);  τ₁ = hardswish(conv1d4time_1(τ s));  τ₂ = hardswish(conv1d4time_2(τ₁))
           y = tim4rec(x, dt, τ₂, B, C; A_log, dt_bias, D)      (softplus(dt τ₂ + dt_bias))
           out = out_proj(RMSNormGated(y, z));  g = time_gate_residual(τ);  τ' = LayerNorm_L(g τ + (1-g) τ₂)
    scores = e_last · item_embedding.weightᵀ   (e_last: the hidden state at position item_seq_len - 1)

Upstream's time path is not causal: ``mlp4time_scale``, ``time_gate_residual`` are dense Linear(L, L)
maps over positions and three LayerNorms normalise over positions, so every position's Δ depends on
every other position's time gap (a later interaction changes an earlier output) and the model cannot
stream. ``causal_time=True`` replaces them by per-position maps over the heads (no L×L map, no
normalisation over L, τ⁰ = sign(gap)·log1p(|gap|)); that variant, and ``is_time=False``, decode one
interaction at a time with ``step``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ir import InputError, ShapeError
from .common import (
    ConfigError, RMSNormGated, UnsupportedError, causal_conv1d, causal_conv1d_step, compile_mixer, dt_bias_init,
)

__all__ = ["TiM4Rec", "TiSSDLayer", "TiSSD", "FeedForward", "time_gaps"]


def time_gaps(time_stamp: torch.Tensor, item_seq_len: torch.Tensor | None = None) -> torch.Tensor:
    """Exact gaps ``ts_i - ts_{i-1}`` (0 at i = 0 and at the padding positions i >= item_seq_len),
    taken in int64 for integer timestamps and float64 for floating ones, before any cast. Float
    timestamps of a narrower type are refused above the largest integer they hold exactly (2**24
    for float32: real Unix times ~1.7e9 s there are 128 s apart)."""
    if not isinstance(time_stamp, torch.Tensor) or time_stamp.dim() != 2 or time_stamp.dtype == torch.bool:
        raise InputError("TiM4Rec: time_stamp must be a (b, l) tensor of Unix times (int64 or float64), got "
                         + (f"{time_stamp.dtype} {tuple(time_stamp.shape)}" if isinstance(time_stamp, torch.Tensor)
                            else type(time_stamp).__name__))
    if time_stamp.dtype.is_floating_point:
        if time_stamp.dtype != torch.float64:
            exact = 2.0 ** (_mantissa_bits(time_stamp.dtype) + 1)
            if time_stamp.numel() and float(time_stamp.detach().abs().max()) > exact:
                raise InputError(f"TiM4Rec: time_stamp is {time_stamp.dtype} with values above {exact:.0f}, where "
                                 "that type cannot hold consecutive integers, so its gaps are wrong; pass the "
                                 "timestamps as int64 or float64")
        ts = time_stamp.to(torch.float64)
    else:
        ts = time_stamp.to(torch.int64)
    gaps = torch.zeros_like(ts)
    gaps[:, 1:] = ts[:, 1:] - ts[:, :-1]
    if item_seq_len is not None:
        pos = torch.arange(ts.shape[1], device=ts.device)
        gaps = gaps.masked_fill(pos[None, :] >= item_seq_len.to(ts.device)[:, None], 0)
    return gaps


def _mantissa_bits(dtype: torch.dtype) -> int:
    return {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}[dtype]


class TiSSD(nn.Module):
    """TiM4Rec's time-aware SSD block (upstream ``ssd.TiSSD`` with ``rms_norm=True``, ``ngroups=1``,
    ``d_ssm = d_inner``). ``forward(u (b, l, d_model), time_diff (b, H, l) or None) -> (out, time_diff')``."""

    def __init__(self, d_model, seq_len, d_state=128, d_conv=4, expand=2, head_dim=64, A_init_range=(1, 16),
                 dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, bias=True, conv_bias=True, chunk_size=256,
                 time_drop_out=0.0, is_time=True, p2p_residual=False, norm_eps=1e-12, causal_time=False,
                 backend="auto"):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = self.d_ssm = expand * d_model
        self.head_dim = head_dim
        self.n_heads = self.d_inner // head_dim
        self.chunk_size = chunk_size
        self.is_time, self.causal_time = is_time, causal_time
        H = self.n_heads

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * d_state + H, bias=bias)
        conv_dim = self.d_inner + 2 * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1, bias=conv_bias)
        if is_time:
            self.conv1d4time_1 = nn.Conv1d(H, H, d_conv, groups=H, padding=d_conv - 1, bias=conv_bias)
            self.conv1d4time_2 = nn.Conv1d(H, H, d_conv, groups=H, padding=d_conv - 1, bias=conv_bias)
            width = H if causal_time else seq_len  # causal: maps over the heads of one position
            self.mlp4time_scale = nn.Sequential(nn.Dropout(time_drop_out), nn.Linear(width, width), nn.SiLU(),
                                                nn.Linear(width, width))
            self.time_gate_residual = nn.Sequential(nn.Dropout(time_drop_out),
                                                    nn.Linear(width, width if p2p_residual else 1), nn.Sigmoid())
            if not causal_time:
                self.time_layer_norm = nn.LayerNorm(seq_len, eps=norm_eps)
        self.act = nn.Hardswish()

        self.dt_bias = nn.Parameter(dt_bias_init(H, dt_min, dt_max, dt_init_floor))
        self.dt_bias._no_weight_decay = True
        lo, hi = A_init_range
        if not 0 < lo <= hi:
            raise ConfigError(f"TiSSD: A_init_range must satisfy 0 < lo <= hi, got {A_init_range}")
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(lo, hi)))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(H))
        self.D._no_weight_decay = True
        self.norm = RMSNormGated(self.d_inner, eps=norm_eps, norm_before_gate=False)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        # holds no parameters (this module owns them under upstream's names)
        self.mixer = compile_mixer("tim4rec" if is_time else "mamba2",
                                   dict(h=H, p=head_dim, n=d_state, g=1), backend, chunk_size)

    def _params(self):
        return {"A_log": self.A_log, "dt_bias": self.dt_bias, "D": self.D}

    def _split(self, zxbcdt):
        return torch.split(zxbcdt, [self.d_inner, self.d_inner + 2 * self.d_state, self.n_heads], dim=-1)

    def _heads(self, xBC):
        x, B, C = torch.split(xBC, [self.d_inner, self.d_state, self.d_state], dim=-1)
        return x.unflatten(-1, (self.n_heads, self.head_dim)), B.unsqueeze(-2), C.unsqueeze(-2)

    def _time_map(self, module, tau):
        """A time module on tau (b, H, l): over positions (upstream) or over heads (causal_time)."""
        return module(tau.transpose(1, 2)).transpose(1, 2) if self.causal_time else module(tau)

    def forward(self, u, time_diff=None):
        if self.is_time and time_diff is None:
            raise InputError("TiSSD: is_time=True needs time_diff (b, n_heads, l)")
        z, xBC, dt = self._split(self.in_proj(u))
        xBC = self.act(causal_conv1d(xBC.transpose(1, 2), self.conv1d.weight, self.conv1d.bias)).transpose(1, 2)
        x, B, C = self._heads(xBC)
        if not self.is_time:
            y = self.mixer(params=self._params(), x=x, dt=dt, B=B, C=C)
        else:
            scale = self._time_map(self.mlp4time_scale, time_diff)
            t1 = self.act(causal_conv1d(time_diff * scale, self.conv1d4time_1.weight, self.conv1d4time_1.bias))
            t2 = self.act(causal_conv1d(t1, self.conv1d4time_2.weight, self.conv1d4time_2.bias))
            y = self.mixer(params=self._params(), x=x, dt=dt, tau=t2.transpose(1, 2), B=B, C=C)
        out = self.out_proj(self.norm(y.flatten(-2), z))
        if not self.is_time:
            return out, None
        gate = self._time_map(self.time_gate_residual, time_diff)
        nxt = gate * time_diff + (1 - gate) * t2
        return out, (nxt if self.causal_time else self.time_layer_norm(nxt))

    # ------------------------------------------------------------------------------------------
    def init_state(self, batch, dtype, device):
        H, W = self.n_heads, self.d_conv
        zeros = lambda *s: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
        return [zeros(batch, self.conv1d.weight.shape[0], W), zeros(batch, H, W), zeros(batch, H, W),
                self.mixer.init_state(batch, dtype=dtype, device=device)]

    def step(self, u_t, tau_t, state):
        """One position: u_t (b, d_model), tau_t (b, H) or None -> (out (b, d_model), tau' (b, H)); the conv
        states in ``state`` are updated in place, its SSM state replaced."""
        if self.is_time and not self.causal_time:
            raise UnsupportedError("TiSSD.step: upstream's time path maps over all positions (Linear(L, L), "
                                   "LayerNorm over L) and cannot decode one position at a time; build the model "
                                   "with causal_time=True (or is_time=False) to decode")
        conv, c1, c2, ssm = state
        z, xBC, dt = self._split(self.in_proj(u_t))
        xBC = self.act(causal_conv1d_step(conv, xBC, self.conv1d.weight, self.conv1d.bias))
        x, B, C = self._heads(xBC)
        inputs = dict(x=x, dt=dt, B=B, C=C)
        if self.is_time:
            scale = self.mlp4time_scale(tau_t)
            t1 = self.act(causal_conv1d_step(c1, tau_t * scale, self.conv1d4time_1.weight, self.conv1d4time_1.bias))
            t2 = self.act(causal_conv1d_step(c2, t1, self.conv1d4time_2.weight, self.conv1d4time_2.bias))
            inputs["tau"] = t2
        y, state[3] = self.mixer.step(ssm, params=self._params(), **inputs)
        out = self.out_proj(self.norm(y.flatten(-2), z))
        if not self.is_time:
            return out, None
        gate = self.time_gate_residual(tau_t)
        return out, gate * tau_t + (1 - gate) * t2


class FeedForward(nn.Module):
    """LayerNorm(Dropout(fc2(Dropout(hardswish(fc1 x)))) + x)."""

    def __init__(self, d_model, inner_size, dropout=0.2, norm_eps=1e-12):
        super().__init__()
        self.fc1 = nn.Linear(d_model, inner_size)
        self.fc2 = nn.Linear(inner_size, d_model)
        self.dropout = nn.Dropout(dropout)
        self.act = nn.Hardswish()
        self.layer_norm = nn.LayerNorm(d_model, eps=norm_eps)

    def forward(self, x):
        return self.layer_norm(self.dropout(self.fc2(self.dropout(self.act(self.fc1(x))))) + x)


class TiSSDLayer(nn.Module):
    """TiSSD, then LayerNorm(Dropout(·) + x) (no residual when num_layers == 1), then the FFN."""

    def __init__(self, d_model, seq_len, d_state, d_conv, expand, num_layers, head_dim, chunk_size, dropout,
                 time_drop_out, is_ffn=True, is_time=True, p2p_residual=False, norm_eps=1e-12, causal_time=False,
                 backend="auto"):
        super().__init__()
        self.num_layers = num_layers
        self.ssd = TiSSD(d_model, seq_len, d_state=d_state, d_conv=d_conv, expand=expand, head_dim=head_dim,
                         chunk_size=chunk_size, bias=True, time_drop_out=time_drop_out, is_time=is_time,
                         p2p_residual=p2p_residual, norm_eps=norm_eps, causal_time=causal_time, backend=backend)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.is_ffn = is_ffn
        if is_ffn:
            self.ffn = FeedForward(d_model, d_model * 4, dropout)

    def _finish(self, hidden, x):
        hidden = self.layer_norm(self.dropout(hidden) + (0 if self.num_layers == 1 else x))
        return self.ffn(hidden) if self.is_ffn else hidden

    def forward(self, x, time_diff):
        hidden, time_diff = self.ssd(x, time_diff)
        return self._finish(hidden, x), time_diff

    def step(self, x_t, tau_t, state):
        hidden, tau_t = self.ssd.step(x_t, tau_t, state)
        return self._finish(hidden, x_t), tau_t


class TiM4Rec(nn.Module):
    """The TiM4Rec recommender. ``n_items`` counts the padding item 0 (RecBole's ``n_items``).

    ``forward(item_seq (b, l), item_seq_len (b,), time_stamp (b, l)) -> (b, hidden_size)``: the hidden
    state at position ``item_seq_len - 1`` of right-padded sequences. ``full_sort_predict`` gives the
    scores of every item (b, n_items); ``calculate_loss`` the cross-entropy of the next item.
    ``hidden_states`` returns every position (b, l, hidden_size). Timestamps are Unix times, int64 or
    float64 (see `time_gaps`); the gaps are exact and zero at padding positions (upstream takes the
    padding's zero timestamps as real: a gap of -ts at the first padding position).

    Upstream's time path (default) needs ``l == max_seq_length`` (shorter batches are right-padded) and
    has no ``step``. ``causal_time=True`` (see the module docstring) and ``is_time=False`` run any
    ``l <= max_seq_length`` and decode with ``init_state`` / ``step``."""

    def __init__(self, n_items, hidden_size=64, num_layers=2, dropout_prob=0.2, time_drop_out=0.2, d_state=32,
                 d_conv=4, expand=2, head_dim=32, chunk_size=32, max_seq_length=50, is_ffn=True, is_time=True,
                 p2p_residual=False, norm_eps=1e-12, is_kai_ming_init=True, causal_time=False, backend="auto"):
        super().__init__()
        for name, value, lo in (("n_items", n_items, 2), ("hidden_size", hidden_size, 1), ("num_layers", num_layers, 1),
                                ("d_state", d_state, 1), ("d_conv", d_conv, 1), ("expand", expand, 1),
                                ("head_dim", head_dim, 1), ("max_seq_length", max_seq_length, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise ConfigError(f"TiM4Rec: {name} must be an int >= {lo}, got {value!r}")
        for name, value in (("dropout_prob", dropout_prob), ("time_drop_out", time_drop_out)):
            if not 0 <= value < 1:
                raise ConfigError(f"TiM4Rec: {name} must be in [0, 1), got {value!r}")
        if (hidden_size * expand) % head_dim:
            raise ConfigError(f"TiM4Rec: hidden_size * expand = {hidden_size * expand} must be a multiple of "
                              f"head_dim={head_dim} (the SSD heads split d_inner); pick head_dim dividing it")
        self.n_items, self.hidden_size, self.num_layers = n_items, hidden_size, num_layers
        self.max_seq_length = max_seq_length
        self.is_time, self.causal_time = is_time, causal_time
        self.n_heads = hidden_size * expand // head_dim
        self.item_embedding = nn.Embedding(n_items, hidden_size, padding_idx=0)
        self.in_layer_norm = nn.LayerNorm(hidden_size, eps=norm_eps)
        if is_time and not causal_time:
            self.layer_norm_time = nn.LayerNorm(max_seq_length, eps=norm_eps)
        self.dropout = nn.Dropout(dropout_prob)
        self.ssd_layers = nn.ModuleList([
            TiSSDLayer(hidden_size, max_seq_length, d_state, d_conv, expand, num_layers, head_dim, chunk_size,
                       dropout_prob, time_drop_out, is_ffn=is_ffn, is_time=is_time, p2p_residual=p2p_residual,
                       norm_eps=norm_eps, causal_time=causal_time, backend=backend)
            for _ in range(num_layers)])
        self.is_kai_ming_init = is_kai_ming_init
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
        elif isinstance(module, nn.Conv1d) and self.is_kai_ming_init:
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    # ------------------------------------------------------------------------------------------
    def _check(self, item_seq, item_seq_len, time_stamp):
        if not isinstance(item_seq, torch.Tensor) or item_seq.dim() != 2 or item_seq.dtype.is_floating_point:
            raise InputError("TiM4Rec: item_seq must be an integer tensor (b, l) of item ids (0 = padding)")
        b, l = item_seq.shape
        if l > self.max_seq_length or (l < self.max_seq_length and self.is_time and not self.causal_time
                                       and item_seq_len is None):
            raise ShapeError(f"TiM4Rec: item_seq has length {l}; max_seq_length={self.max_seq_length} "
                             + ("is the most" if l > self.max_seq_length else "is needed without item_seq_len"))
        if item_seq_len is not None:
            if not isinstance(item_seq_len, torch.Tensor) or tuple(item_seq_len.shape) != (b,) \
                    or item_seq_len.dtype.is_floating_point:
                raise InputError(f"TiM4Rec: item_seq_len must be an integer tensor (b={b},)")
            if b and (int(item_seq_len.min()) < 1 or int(item_seq_len.max()) > l):
                raise InputError(f"TiM4Rec: item_seq_len must lie in [1, l={l}]")
        if self.is_time:
            if time_stamp is None:
                raise InputError("TiM4Rec: is_time=True needs time_stamp (b, l)")
            if not isinstance(time_stamp, torch.Tensor) or tuple(time_stamp.shape) != (b, l):
                raise ShapeError(f"TiM4Rec: time_stamp must have item_seq's shape {(b, l)}, got "
                                 + (str(tuple(time_stamp.shape)) if isinstance(time_stamp, torch.Tensor)
                                    else type(time_stamp).__name__))

    def _dtype(self):
        return self.item_embedding.weight.dtype

    def _time_feature(self, gaps):
        """Exact gaps (b, l) (int64/float64) -> τ⁰ (b, H, l) in the model's dtype."""
        if self.causal_time:
            g = gaps.to(torch.float64)
            tau = (torch.sign(g) * torch.log1p(g.abs())).to(self._dtype())
            tau = self.dropout(tau)
        else:
            tau = self.layer_norm_time(self.dropout(gaps.to(self._dtype())))
        return tau.unsqueeze(1).expand(-1, self.n_heads, -1)

    def hidden_states(self, item_seq, time_stamp=None, item_seq_len=None):
        """Every position's output (b, l, hidden_size)."""
        self._check(item_seq, item_seq_len, time_stamp)
        l = item_seq.shape[1]
        pad = self.max_seq_length - l if self.is_time and not self.causal_time else 0
        if pad:  # upstream's L x L maps need every row at max_seq_length
            item_seq = F.pad(item_seq, (0, pad))
            time_stamp = F.pad(time_stamp, (0, pad))
        e = self.in_layer_norm(self.dropout(self.item_embedding(item_seq)))
        tau = self._time_feature(time_gaps(time_stamp, item_seq_len)) if self.is_time else None
        for layer in self.ssd_layers:
            e, tau = layer(e, tau)
        return e[:, :l]

    def forward(self, item_seq, item_seq_len, time_stamp=None):
        hidden = self.hidden_states(item_seq, time_stamp, item_seq_len)
        idx = (item_seq_len.long() - 1).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        return hidden.gather(1, idx).squeeze(1)

    def full_sort_predict(self, item_seq, item_seq_len, time_stamp=None):
        """Scores of every item (b, n_items), item 0 (padding) included as upstream."""
        return self.forward(item_seq, item_seq_len, time_stamp) @ self.item_embedding.weight.t()

    def calculate_loss(self, item_seq, item_seq_len, time_stamp, pos_items):
        return F.cross_entropy(self.full_sort_predict(item_seq, item_seq_len, time_stamp), pos_items)

    # ------------------------------------------------------------------------------------------
    def init_state(self, batch: int):
        """The decode state of ``batch`` empty sequences: per layer its conv windows and SSM state, and
        the last timestamp (none yet)."""
        if self.is_time and not self.causal_time:
            raise UnsupportedError("TiM4Rec.init_state: upstream's time path (Linear(L, L) maps, LayerNorm over "
                                   "positions) is not causal and cannot decode; use causal_time=True or is_time=False")
        w = self.item_embedding.weight
        return {"layers": [layer.ssd.init_state(batch, w.dtype, w.device) for layer in self.ssd_layers],
                "last_time": None}

    def step(self, item, state, time_stamp=None):
        """Append one interaction per row: item (b,) ids, time_stamp (b,) Unix times -> (hidden (b,
        hidden_size), state). The hidden state equals ``hidden_states`` at that position."""
        if "layers" not in state:
            raise InputError("TiM4Rec.step: state must come from init_state(batch) or a previous step")
        if self.is_time:
            if time_stamp is None:
                raise InputError("TiM4Rec.step: is_time=True needs time_stamp (b,)")
            ts = time_stamp.view(-1, 1)
            prev = ts if state["last_time"] is None else state["last_time"]
            gaps = time_gaps(torch.cat([prev, ts], dim=1))[:, 1:]
            state["last_time"] = ts
            tau = self._time_feature(gaps)[:, :, 0]
        else:
            tau = None
        e = self.in_layer_norm(self.dropout(self.item_embedding(item)))
        for layer, st in zip(self.ssd_layers, state["layers"]):
            e, tau = layer.step(e, tau, st)
        return e, state
