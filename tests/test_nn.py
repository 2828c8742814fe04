"""`mixerc.nn` layers (Mamba, Mamba2, Hydra) against the independent upstream references of
tests/ref/layers.py: forward and every gradient in fp64, the state_dict table of upstream (keys,
order, shapes, dtypes), loading a reference-made state_dict strictly, decode (prefill + step),
packed sequences (seq_idx), backends, and the typed errors. CPU only, tiny shapes."""

from __future__ import annotations

import io

import pytest
import torch

import mixerc as mx
from mixerc.nn import ConfigError, Hydra, Mamba, Mamba2, RMSNormGated, UnsupportedError
from mixerc.nn import common
from mixerc.settings import settings
from ref import assert_close
from ref.layers import RefHydra, RefMamba, RefMamba2, randomize_, rms_norm_ref

F64 = torch.float64
RTOL = 1e-9

TRITON = bool(settings().triton_interpret)  # the interpreter lane (conftest.py)


def _pair(kind: str, seed: int = 0, backend: str = "auto", chunk_size: int = 8, **kw):
    """(reference, ours) in fp64 with the same random weights, ours loaded from the reference's
    state_dict with strict=True."""
    ref_cls, cls = {"mamba": (RefMamba, Mamba), "mamba2": (RefMamba2, Mamba2), "hydra": (RefHydra, Hydra)}[kind]
    ref_kw = {k: v for k, v in kw.items() if k not in ("dt_rank",) or kind == "mamba"}
    ref = randomize_(ref_cls(**ref_kw), seed).to(F64)
    ours = cls(**kw, backend=backend, chunk_size=chunk_size)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours.to(F64)


def _fwd_bwd(module, u, seq_idx=None):
    u = u.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = module(u) if seq_idx is None else module(u, seq_idx=seq_idx)
    w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)  # a non-symmetric cotangent
    (y * w).sum().backward()
    grads = {n: p.grad for n, p in module.named_parameters()}
    return y.detach(), u.grad, grads


def _compare(what, ref, ours, u, rtol=RTOL):
    y_r, du_r, g_r = _fwd_bwd(ref, u)
    y, du, g = _fwd_bwd(ours, u)
    assert_close(f"{what} y", y_r, y, rtol=rtol)
    assert_close(f"{what} du", du_r, du, rtol=rtol)
    assert list(g) == list(g_r), f"{what}: parameters {list(g)}, expected {list(g_r)}"
    for n in g_r:
        assert g[n] is not None, f"{what}: no gradient reached {n}"
        assert_close(f"{what} d/d{n}", g_r[n], g[n], rtol=rtol)


def _u(b, l, d, seed=1):
    return torch.randn(b, l, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ----------------------------------------------------------------------------------------------
# forward + backward vs the references
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,l", [
    (dict(d_model=16), 13),
    (dict(d_model=24, d_state=8, d_conv=3, dt_rank=5, bias=True, conv_bias=False), 37),
])
def test_mamba_matches_reference(kw, l):
    ref, ours = _pair("mamba", **kw)
    _compare(f"Mamba {kw}", ref, ours, _u(2, l, kw["d_model"]))


MAMBA2_CASES = [
    dict(d_model=16, d_state=8, headdim=8),                                              # g=1, rmsnorm, gate after
    dict(d_model=32, d_state=8, headdim=8, ngroups=2, norm_before_gate=True),           # g<h, norm before gate
    dict(d_model=32, d_state=4, headdim=16, ngroups=4, rmsnorm=False, d_conv=2),        # g=h, z gate in place of norm
    dict(d_model=32, d_state=8, headdim=8, d_ssm=32, ngroups=2, D_has_hdim=True,          # d_mlp > 0, D per channel
         bias=True, conv_bias=False),
]


@pytest.mark.parametrize("kw", MAMBA2_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("l", [13, 37])
def test_mamba2_matches_reference(kw, l):
    ref, ours = _pair("mamba2", **kw)
    _compare(f"Mamba2 {kw} l={l}", ref, ours, _u(2, l, kw["d_model"]))


@pytest.mark.parametrize("kw,l", [
    (dict(d_model=16, d_state=8, headdim=8), 13),
    (dict(d_model=32, d_state=8, headdim=8, ngroups=2, d_conv=5, bias=True), 37),
    (dict(d_model=16, d_state=4, headdim=8, ngroups=4, d_conv=1, conv_bias=False), 1),
])
def test_hydra_matches_reference(kw, l):
    ref, ours = _pair("hydra", **kw)
    _compare(f"Hydra {kw}", ref, ours, _u(2, l, kw["d_model"]))


def test_backends_agree():
    """backend='reference' (dense M) and 'chunked' give the same layer outputs and gradients."""
    cases = [("mamba", dict(d_model=16, d_state=4)), ("mamba2", dict(d_model=32, d_state=8, headdim=8, ngroups=2)),
             ("hydra", dict(d_model=16, d_state=8, headdim=8))]
    for kind, kw in cases:
        _, chunked = _pair(kind, backend="chunked", **kw)
        _, dense = _pair(kind, backend="reference", **kw)
        _compare(f"{kind} reference vs chunked", dense, chunked, _u(2, 21, kw["d_model"]))


@pytest.mark.skipif(not TRITON, reason="the triton kernels run in the interpreter lane")
@pytest.mark.parametrize("kind, kw", [("mamba", dict(d_model=8, d_state=4)),
                                      ("mamba2", dict(d_model=16, d_state=8, headdim=8, ngroups=2)),
                                      ("hydra", dict(d_model=16, d_state=8, headdim=8, ngroups=2))])
def test_layers_on_the_triton_backend(kind, kw):
    ref, ours = _pair(kind, backend="triton", chunk_size=16, **kw)
    _compare(f"{kind} triton", ref, ours, _u(2, 19, kw["d_model"]))


def test_rmsnorm_gated_vs_reference():
    g = torch.Generator().manual_seed(3)
    x, z = torch.randn(2, 5, 24, generator=g, dtype=F64), torch.randn(2, 5, 24, generator=g, dtype=F64)
    for group_size in (None, 8, 24):
        for nbg in (True, False):
            norm = RMSNormGated(24, group_size=group_size, norm_before_gate=nbg, dtype=F64)
            with torch.no_grad():
                norm.weight.copy_(1 + 0.3 * torch.randn(24, generator=g, dtype=F64))
            assert_close(f"norm gs={group_size} nbg={nbg}", rms_norm_ref(x, norm.weight, z, 1e-5, group_size, nbg),
                         norm(x, z))
            assert_close("norm without z", rms_norm_ref(x, norm.weight, None, 1e-5, group_size), norm(x))
    xh = x.to(torch.bfloat16)
    assert RMSNormGated(24)(xh, z.to(torch.bfloat16)).dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------
# parameters: upstream's table
# ----------------------------------------------------------------------------------------------
def _table(module):
    return [(k, tuple(v.shape), v.dtype) for k, v in module.state_dict().items()]


def test_state_dict_tables():
    """Keys, order, shapes and dtypes as in docs/mixers.md (the Mamba, Mamba-2 and Hydra layers), for a bf16 model:
    Mamba's A_log and D fp32; Mamba2's and Hydra's D fp32, A_log and dt_bias in the model dtype."""
    bf = torch.bfloat16
    f32 = torch.float32
    # Mamba(d_model=16, d_state=8, d_conv=4, expand=2): d_inner 32, dt_rank ceil(16/16)=1
    m = Mamba(16, d_state=8, dtype=bf, bias=True)
    assert _table(m) == [
        ("A_log", (32, 8), f32), ("D", (32,), f32),
        ("in_proj.weight", (64, 16), bf), ("in_proj.bias", (64,), bf),
        ("conv1d.weight", (32, 1, 4), bf), ("conv1d.bias", (32,), bf),
        ("x_proj.weight", (1 + 16, 32), bf),
        ("dt_proj.weight", (32, 1), bf), ("dt_proj.bias", (32,), bf),
        ("out_proj.weight", (16, 32), bf), ("out_proj.bias", (16,), bf),
    ]
    assert m.A_log._no_weight_decay and m.D._no_weight_decay and m.dt_proj.bias._no_reinit
    assert torch.equal(m.A_log, torch.log(torch.arange(1, 9, dtype=f32)).repeat(32, 1))
    assert torch.equal(m.D, torch.ones(32))
    dt = torch.nn.functional.softplus(m.dt_proj.bias.float())
    assert (dt >= 1e-3 * 0.99).all() and (dt <= 0.1 * 1.01).all()
    # Mamba2(d_model=32, d_state=8, headdim=8, ngroups=2): d_inner 64, H 8, conv_dim 64+32, in_proj 2*64+32+8
    m2 = Mamba2(32, d_state=8, headdim=8, ngroups=2, dtype=bf)
    assert _table(m2) == [
        ("dt_bias", (8,), bf), ("A_log", (8,), bf), ("D", (8,), f32),
        ("in_proj.weight", (168, 32), bf),
        ("conv1d.weight", (96, 1, 4), bf), ("conv1d.bias", (96,), bf),
        ("norm.weight", (64,), bf),
        ("out_proj.weight", (32, 64), bf),
    ]
    assert all(getattr(m2, n)._no_weight_decay for n in ("dt_bias", "A_log", "D"))
    A = torch.exp(m2.A_log.float())
    assert (A >= 0.99).all() and (A <= 16.1).all()
    assert m2.norm.group_size == 32 and m2.norm.norm_before_gate is False
    # no rmsnorm, D per channel, d_ssm < d_inner: in_proj still 2*d_inner + 2GN + H, out_proj from d_inner
    m3 = Mamba2(32, d_state=8, headdim=8, d_ssm=32, D_has_hdim=True, rmsnorm=False)
    assert _table(m3) == [
        ("dt_bias", (4,), f32), ("A_log", (4,), f32), ("D", (32,), f32),
        ("in_proj.weight", (2 * 64 + 16 + 4, 32), f32),
        ("conv1d.weight", (48, 1, 4), f32), ("conv1d.bias", (48,), f32),
        ("out_proj.weight", (32, 64), f32),
    ]
    # Hydra(d_model=16, d_state=8, headdim=8, ngroups=2): d_inner 32, H 4, conv_dim 32+64
    h = Hydra(16, d_state=8, headdim=8, ngroups=2, dtype=bf)
    assert _table(h) == [
        ("dt_bias", (4,), bf), ("A_log", (4,), bf), ("D", (4,), f32),
        ("in_proj.weight", (2 * 32 + 64 + 8, 16), bf),
        ("conv1d.weight", (96, 1, 7), bf), ("conv1d.bias", (96,), bf),
        ("fc_D.weight", (4, 32), bf),
        ("norm.weight", (32,), bf),
        ("out_proj.weight", (16, 32), bf),
    ]
    assert torch.equal(h.A_log.float(), torch.zeros(4))
    assert h.conv1d.padding == (3,)


@pytest.mark.parametrize("kind,kw", [
    ("mamba", dict(d_model=16, d_state=4)),
    ("mamba2", dict(d_model=32, d_state=8, headdim=8, ngroups=2)),
    ("hydra", dict(d_model=16, d_state=8, headdim=8, ngroups=2)),
])
def test_reference_state_dict_loads_and_round_trips(kind, kw):
    """A state_dict with upstream names (made by the reference module) loads strictly through
    torch.save/torch.load and gives the reference's outputs; ours saves and reloads likewise."""
    ref_cls, cls = {"mamba": (RefMamba, Mamba), "mamba2": (RefMamba2, Mamba2), "hydra": (RefHydra, Hydra)}[kind]
    ref = randomize_(ref_cls(**kw), 5).to(F64)
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    buf.seek(0)
    ours = cls(**kw, chunk_size=8, dtype=F64)
    ours.load_state_dict(torch.load(buf), strict=True)
    ours = ours.to(F64)
    u = _u(1, 11, kw["d_model"])
    with torch.no_grad():
        assert_close(f"{kind} loaded", ref(u), ours(u))
        buf = io.BytesIO()
        torch.save(ours.state_dict(), buf)
        buf.seek(0)
        again = cls(**kw, chunk_size=8, dtype=F64)
        again.load_state_dict(torch.load(buf), strict=True)
        assert_close(f"{kind} reloaded", ours(u), again.to(F64)(u), rtol=0)
    assert dict(ours.mixer.named_parameters()) == {} and dict(ours.mixer.named_buffers()) == {}


# ----------------------------------------------------------------------------------------------
# decode
# ----------------------------------------------------------------------------------------------
DECODE_CASES = [
    ("mamba", dict(d_model=16, d_state=4)),
    ("mamba2", dict(d_model=32, d_state=8, headdim=8, ngroups=2)),
    ("mamba2", dict(d_model=32, d_state=8, headdim=8, d_ssm=32, ngroups=2, D_has_hdim=True, rmsnorm=False)),
]


@pytest.mark.parametrize("kind,kw", DECODE_CASES)
@pytest.mark.parametrize("prompt", [0, 2, 9])
def test_prefill_then_step_equals_forward(kind, kw, prompt):
    """forward(prompt, cache=...) then step token by token == the full forward; prompt 0 steps from
    a fresh allocate_inference_cache; prompt 2 < d_conv fills the conv state partially."""
    ref, ours = _pair(kind, **kw)
    l = 13
    u = _u(2, l, kw["d_model"])
    with torch.no_grad():
        y_full = ours(u)
        assert_close("forward vs reference", ref(u), y_full)
        conv_state, ssm_state = ours.allocate_inference_cache(2, l)
        ids = (conv_state.data_ptr(), ssm_state.data_ptr())
        outs = []
        if prompt:
            outs.append(ours(u[:, :prompt], cache=(conv_state, ssm_state)))
            _, S_ref = ref(u[:, :prompt], return_state=True)
            assert_close("prefill ssm_state vs reference final state", S_ref, ssm_state)
        for t in range(prompt, l):
            y_t, c2, s2 = ours.step(u[:, t:t + 1], conv_state, ssm_state)
            assert c2 is conv_state and s2 is ssm_state
            assert y_t.shape == (2, 1, kw["d_model"])
            outs.append(y_t)
        assert (conv_state.data_ptr(), ssm_state.data_ptr()) == ids  # updated in place
        assert_close(f"{kind} prefill {prompt} + step", y_full, torch.cat(outs, 1))
        _, S_ref = ref(u, return_state=True)
        assert_close("final ssm_state", S_ref, ssm_state)


def test_inference_cache_shapes():
    m = Mamba(16, d_state=4, d_conv=3)
    c, s = m.allocate_inference_cache(3, 100)
    assert c.shape == (3, 32, 3) and s.shape == (3, 32, 4) and s.dtype == torch.float32
    m2 = Mamba2(32, d_state=8, headdim=8, ngroups=2)
    c, s = m2.allocate_inference_cache(3, 100, dtype=torch.float64)
    assert c.shape == (3, 96, 4) and s.shape == (3, 8, 8, 8) and s.dtype == torch.float64
    assert c.stride(1) == 1  # channels-last in memory, as upstream


# ----------------------------------------------------------------------------------------------
# packed sequences
# ----------------------------------------------------------------------------------------------
SEQ_CASES = [
    ("mamba", dict(d_model=16, d_state=4)),
    ("mamba2", dict(d_model=32, d_state=8, headdim=8, ngroups=2)),
    ("hydra", dict(d_model=16, d_state=8, headdim=8, ngroups=2, d_conv=5)),
]


@pytest.mark.parametrize("kind,kw", SEQ_CASES)
def test_seq_idx_packed_equals_separate(kind, kw):
    """Two rows, each packing sequences (lengths 5+1+11 and 9+8, one of length 1, boundaries inside
    chunks and on a chunk edge): outputs and input gradients equal running each sequence alone."""
    _, ours = _pair(kind, **kw)
    lens = [[5, 1, 11], [9, 8]]
    l = 17
    u = _u(2, l, kw["d_model"]).requires_grad_(True)
    seq_idx = torch.tensor([sum(([i] * n for i, n in enumerate(row)), []) for row in lens], dtype=torch.int32)
    y = ours(u, seq_idx=seq_idx)
    (y * y).sum().backward()
    for r, row in enumerate(lens):
        start = 0
        for n in row:
            piece = u.detach()[r:r + 1, start:start + n].clone().requires_grad_(True)
            y_s = ours(piece)
            (y_s * y_s).sum().backward()
            assert_close(f"{kind} row {r} segment at {start}", y_s.detach(), y.detach()[r:r + 1, start:start + n])
            assert_close(f"{kind} row {r} segment at {start} du", piece.grad, u.grad[r:r + 1, start:start + n])
            start += n


@pytest.mark.parametrize("kind,kw", DECODE_CASES[:2])
def test_prefill_packed_then_step_continues_last_segment(kind, kw):
    """Prefill a packed row (a 6-token sequence, then 2 tokens of the next) with a cache; stepping on
    continues the last sequence as if it had been run alone."""
    _, ours = _pair(kind, **kw)
    u = _u(1, 14, kw["d_model"])
    seq_idx = torch.tensor([[0] * 6 + [1] * 2], dtype=torch.int32)
    with torch.no_grad():
        cache = ours.allocate_inference_cache(1, 14)
        ours(u[:, :8], seq_idx=seq_idx, cache=cache)
        outs = [ours.step(u[:, t:t + 1], *cache)[0] for t in range(8, 14)]
        assert_close(f"{kind} continue", ours(u[:, 6:])[:, 2:], torch.cat(outs, 1))


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------
def test_errors():
    with pytest.raises(ConfigError, match="odd d_conv"):
        common.same_conv1d(torch.zeros(1, 2, 5), torch.zeros(2, 1, 4), None)
    with pytest.raises(ConfigError, match="d_conv must be odd"):
        Hydra(16, d_state=8, headdim=8, d_conv=4)
    with pytest.raises(ConfigError, match="learnable_init_states"):
        Hydra(16, d_state=8, headdim=8, learnable_init_states=True)
    with pytest.raises(ConfigError, match="dt_limit"):
        Hydra(16, d_state=8, headdim=8, dt_limit=(0.0, 0.1))
    with pytest.raises(ConfigError, match="dt_limit"):
        Mamba2(32, d_state=8, headdim=8, dt_limit=(0.001, 0.1))
    with pytest.raises(ConfigError, match="multiple of headdim"):
        Mamba2(32, d_state=8, headdim=24)
    with pytest.raises(ConfigError, match="ngroups=3"):
        Mamba2(32, d_state=8, headdim=8, ngroups=3)
    with pytest.raises(ConfigError, match="dt_init"):
        Mamba(16, dt_init="xavier")
    assert issubclass(ConfigError, mx.MixercError) and issubclass(ConfigError, ValueError)

    m2 = Mamba2(32, d_state=8, headdim=8, chunk_size=8)
    with pytest.raises(mx.ShapeError, match=r"d_model=32\), got shape \(2, 5, 16\)"):
        m2(torch.randn(2, 5, 16))
    with pytest.raises(mx.ShapeError, match="seq_idx"):
        m2(torch.randn(2, 5, 32), seq_idx=torch.zeros(2, 4, dtype=torch.int32))
    with pytest.raises(mx.InputError, match="integer"):
        m2(torch.randn(2, 5, 32), seq_idx=torch.zeros(2, 5))
    cache = m2.allocate_inference_cache(2, 5)
    with pytest.raises(mx.ShapeError, match=r"\(b, 1, d_model=32\)"):
        m2.step(torch.randn(2, 3, 32), *cache)
    with pytest.raises(mx.ShapeError, match="ssm_state must have shape"):
        m2.step(torch.randn(2, 1, 32), cache[0], cache[1][:1])
    with pytest.raises(mx.ShapeError, match="conv_state must have shape"):
        m2(torch.randn(3, 5, 32), cache=cache)
    with pytest.raises(mx.InputError, match="cache must be"):
        Mamba(16)(torch.randn(1, 3, 16), cache=torch.zeros(1))
    h = Hydra(16, d_state=8, headdim=8)
    with pytest.raises(UnsupportedError, match="bidirectional"):
        h.step(torch.randn(1, 1, 16), None, None)
    with pytest.raises(UnsupportedError, match="bidirectional"):
        h(torch.randn(1, 3, 16), cache=(None, None))
    with pytest.raises(UnsupportedError, match="bidirectional"):
        h.allocate_inference_cache(1, 3)


@pytest.mark.parametrize("kind,kw", DECODE_CASES[:2] + SEQ_CASES[2:])
def test_bf16_model_close_to_fp64(kind, kw):
    """A bf16 model returns bf16, within bf16 rounding of the same weights in fp64."""
    cls = {"mamba": Mamba, "mamba2": Mamba2, "hydra": Hydra}[kind]
    m = cls(**kw, chunk_size=8, dtype=torch.bfloat16)
    u = _u(2, 13, kw["d_model"]).to(torch.bfloat16)
    with torch.no_grad():
        y = m(u)
        y64 = m.to(F64)(u.to(F64))
    assert y.dtype == torch.bfloat16
    assert float((y.to(F64) - y64).abs().max()) <= 0.05 * float(y64.abs().max())
