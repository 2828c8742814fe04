"""The `tim4rec` spec and `mixerc.nn.TiM4Rec` against references written here from the math
(docs/tim4rec.md) and from upstream's forward (AlwaysFHao/TiM4Rec tim4rec.py + ssd.py, transcribed with
plain torch ops and a token loop): fp64, forward and the gradient of every input and parameter, odd
lengths; the causal variant's decode against its forward; exact time gaps of real Unix timestamps; the
state_dict names of upstream; the typed errors. CPU, tiny shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mixerc as mx
from mixerc.nn import ConfigError, TiM4Rec, UnsupportedError
from mixerc.nn.tim4rec import time_gaps
from mixerc.settings import settings
from ref import assert_close

F64 = torch.float64
TRITON = bool(settings().triton_interpret)
BACKENDS = ["reference", "recurrent", "chunked"] + (["triton"] if TRITON else [])


# ------------------------------------------------------------------------------------------------
# references (no mixerc)
# ------------------------------------------------------------------------------------------------
def ssd_token_loop(x, dt, tau, B, C, A_log, dt_bias, D):
    """S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t ⊗ B_t, y_t = S_t C_t + D x_t, Δ = softplus(dt·tau + dt_bias),
    A = -exp(A_log); x (b, l, h, p), dt/tau (b, l, h), B/C (b, l, g, n). Returns (y, S_final)."""
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    heads = torch.arange(h) // (h // g)
    delta = F.softplus(dt * tau + dt_bias)
    A = -torch.exp(A_log)
    S = x.new_zeros(b, h, p, n)
    ys = []
    for t in range(l):
        Bt, Ct = B[:, t, heads], C[:, t, heads]                         # (b, h, n)
        dA = torch.exp(delta[:, t] * A)[:, :, None, None]
        S = dA * S + (delta[:, t, :, None] * x[:, t])[..., None] * Bt[:, :, None, :]
        ys.append((S * Ct[:, :, None, :]).sum(-1) + D[:, None] * x[:, t])
    return torch.stack(ys, 1), S


def _lin(v, sd, key):
    return v @ sd[key + ".weight"].t() + sd[key + ".bias"]


def _ln(v, sd, key, eps):
    return F.layer_norm(v, (v.shape[-1],), sd[key + ".weight"], sd[key + ".bias"], eps)


def _conv(v, sd, key):
    """Upstream's causal depthwise conv: Conv1d(padding=W-1), then drop the last W-1 outputs."""
    w = sd[key + ".weight"]
    return F.conv1d(v, w, sd[key + ".bias"], padding=w.shape[-1] - 1, groups=v.shape[1])[..., :-(w.shape[-1] - 1)]


def upstream_forward(sd, cfg, item_seq, item_seq_len, gaps):
    """TiM4Rec.forward of upstream in eval mode, on a state_dict; ``gaps`` (b, l) as float64."""
    d, H, N, eps = cfg["hidden_size"], cfg["n_heads"], cfg["d_state"], cfg["norm_eps"]
    di = 2 * d
    e = _ln(sd["item_embedding.weight"][item_seq], sd, "in_layer_norm", eps)
    tau = None
    if cfg["is_time"]:
        tau = _ln(gaps, sd, "layer_norm_time", eps)[:, None, :].expand(-1, H, -1)
    for i in range(cfg["num_layers"]):
        k = f"ssd_layers.{i}.ssd."
        z, xBC, dt = torch.split(_lin(e, sd, k + "in_proj"), [di, di + 2 * N, H], dim=-1)
        xBC = F.hardswish(_conv(xBC.transpose(1, 2), sd, k + "conv1d")).transpose(1, 2)
        x, B, C = torch.split(xBC, [di, N, N], dim=-1)
        if cfg["is_time"]:
            scale = _lin(F.silu(_lin(tau, sd, k + "mlp4time_scale.1")), sd, k + "mlp4time_scale.3")
            t1 = F.hardswish(_conv(tau * scale, sd, k + "conv1d4time_1"))
            t2 = F.hardswish(_conv(t1, sd, k + "conv1d4time_2"))
            tmul = t2.transpose(1, 2)
        else:
            tmul = torch.ones_like(dt)
        y, _ = ssd_token_loop(x.unflatten(-1, (H, -1)), dt, tmul, B[:, :, None], C[:, :, None],
                              sd[k + "A_log"], sd[k + "dt_bias"], sd[k + "D"])
        v = y.flatten(-2) * F.silu(z)
        v = v * torch.rsqrt(v.square().mean(-1, keepdim=True) + eps) * sd[k + "norm.weight"]
        out = _lin(v, sd, k + "out_proj")
        if cfg["is_time"]:
            gate = torch.sigmoid(_lin(tau, sd, k + "time_gate_residual.1"))
            tau = _ln(gate * tau + (1 - gate) * t2, sd, k + "time_layer_norm", eps)
        kl = f"ssd_layers.{i}."
        hid = _ln(out + (e if cfg["num_layers"] > 1 else 0), sd, kl + "layer_norm", eps)
        f = _lin(F.hardswish(_lin(hid, sd, kl + "ffn.fc1")), sd, kl + "ffn.fc2")
        e = _ln(f + hid, sd, kl + "ffn.layer_norm", 1e-12)
    return e[torch.arange(e.shape[0]), item_seq_len - 1]


UPSTREAM_LAYER_KEYS = [
    "ssd.dt_bias", "ssd.A_log", "ssd.D", "ssd.in_proj.weight", "ssd.in_proj.bias", "ssd.conv1d.weight",
    "ssd.conv1d.bias", "ssd.conv1d4time_1.weight", "ssd.conv1d4time_1.bias", "ssd.conv1d4time_2.weight",
    "ssd.conv1d4time_2.bias", "ssd.mlp4time_scale.1.weight", "ssd.mlp4time_scale.1.bias",
    "ssd.mlp4time_scale.3.weight", "ssd.mlp4time_scale.3.bias", "ssd.time_gate_residual.1.weight",
    "ssd.time_gate_residual.1.bias", "ssd.time_layer_norm.weight", "ssd.time_layer_norm.bias", "ssd.norm.weight",
    "ssd.out_proj.weight", "ssd.out_proj.bias", "layer_norm.weight", "layer_norm.bias", "ffn.fc1.weight",
    "ffn.fc1.bias", "ffn.fc2.weight", "ffn.fc2.bias", "ffn.layer_norm.weight", "ffn.layer_norm.bias",
]
TIME_KEYS = ("conv1d4time", "mlp4time", "time_gate", "time_layer_norm")


# ------------------------------------------------------------------------------------------------
# the spec
# ------------------------------------------------------------------------------------------------
def _spec_inputs(b, l, h, p, n, g, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    inputs = dict(x=r(b, l, h, p), dt=r(b, l, h), tau=r(b, l, h), B=r(b, l, g, n), C=r(b, l, g, n))
    params = dict(A_log=torch.log(torch.rand(h, generator=gen, dtype=F64) * 3 + 0.5), dt_bias=r(h) - 1, D=r(h))
    return inputs, params


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("l", [1, 13])
def test_spec_against_token_loop(backend, l):
    dims = dict(h=4, p=3, n=5, g=2)
    mixer = mx.compile("tim4rec", dims=dims, backend=backend, chunk_size=16 if backend == "triton" else 4,
                       parameters=False)
    inputs, params = _spec_inputs(2, l, **dims)
    leaves = {**inputs, **params}
    for v in leaves.values():
        v.requires_grad_(True)
    y_ref, s_ref = ssd_token_loop(**leaves)
    y, s = mixer(params=params, return_final_state=True, **inputs)
    assert_close("y", y_ref, y)
    assert_close("final state", s_ref, s)
    gen = torch.Generator().manual_seed(7)
    wy, ws = torch.randn(y.shape, generator=gen, dtype=F64), torch.randn(s.shape, generator=gen, dtype=F64)
    g_ref = torch.autograd.grad((y_ref * wy).sum() + (s_ref * ws).sum(), list(leaves.values()))
    g_out = torch.autograd.grad((y * wy).sum() + (s * ws).sum(), list(leaves.values()))
    for name, a, c in zip(leaves, g_ref, g_out):  # (at l = 1, d/dA_log is exactly 0: judged absolutely)
        assert_close(f"d/d{name}", a, c, atol=max(1e-9 * float(a.abs().max()), 1e-13))


def test_spec_step_equals_loop():
    dims = dict(h=4, p=3, n=5, g=1)
    mixer = mx.compile("tim4rec", dims=dims, parameters=False)
    inputs, params = _spec_inputs(2, 9, **dims, seed=3)
    y_ref, s_ref = ssd_token_loop(**inputs, **params)
    state = mixer.init_state(2, dtype=F64)
    for t in range(9):
        y_t, state = mixer.step(state, params=params, **{k: v[:, t] for k, v in inputs.items()})
        assert_close(f"step y[{t}]", y_ref[:, t], y_t)
    assert_close("step state", s_ref, state)


def test_spec_is_mamba2_with_dt_times_tau():
    """tau = 1 gives mamba2 exactly; tau = 2 equals mamba2 at 2·dt."""
    dims = dict(h=4, p=3, n=5, g=2)
    t4, m2 = (mx.compile(s, dims=dims, parameters=False, chunk_size=4) for s in ("tim4rec", "mamba2"))
    inputs, params = _spec_inputs(2, 11, **dims, seed=5)
    for k in (1.0, 2.0):
        ours = t4(params=params, **{**inputs, "tau": torch.full_like(inputs["tau"], k)})
        theirs = m2(params=params, **{n: (v * k if n == "dt" else v) for n, v in inputs.items() if n != "tau"})
        assert_close(f"tau={k}", theirs, ours)


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------
CFG = dict(n_items=23, hidden_size=8, num_layers=2, d_state=4, expand=2, head_dim=4, chunk_size=4,
           max_seq_length=7, dropout_prob=0.3, time_drop_out=0.3)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    model = TiM4Rec(**{**CFG, **kw}).to(F64)
    with torch.no_grad():  # move every parameter off its init so that no term hides behind a 0 or 1
        gen = torch.Generator().manual_seed(seed + 100)
        for name, p in model.named_parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=F64))
    return model.eval()


def _batch(b=3, l=7, seed=1, n_items=23):
    gen = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, n_items, (b, l), generator=gen)
    lens = torch.tensor([l, 1, 4, 6, 2][:b])
    steps = torch.randint(0, 200000, (b, l), generator=gen, dtype=torch.int64)
    ts = 1_700_000_000 + steps.cumsum(1)
    pos = torch.arange(l)
    seq = seq.masked_fill(pos >= lens[:, None], 0)
    ts = ts.masked_fill(pos >= lens[:, None], 0)  # RecBole's right padding
    return seq, lens, ts


def _cfg(model):
    return dict(hidden_size=model.hidden_size, n_heads=model.n_heads, d_state=CFG["d_state"], norm_eps=1e-12,
                is_time=model.is_time, num_layers=model.num_layers)


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=1), dict(is_time=False), dict(is_ffn=False)],
                         ids=["time", "one-layer", "no-time", "no-ffn"])
def test_model_against_upstream_forward(kw):
    if kw.get("is_ffn") is False:
        model = _model(**kw)
        assert not any(".ffn." in k for k in model.state_dict())
        return
    model = _model(**kw)
    seq, lens, ts = _batch()
    sd = {k: v.clone().requires_grad_(True) for k, v in model.state_dict().items()}
    gaps = time_gaps(ts, lens).to(F64)
    ref = upstream_forward(sd, _cfg(model), seq, lens, gaps)
    out = model(seq, lens, ts)
    assert_close("seq_output", ref, out)
    w = torch.linspace(-1, 1, out.numel(), dtype=F64).reshape(out.shape)
    (out * w).sum().backward()
    g_ref = torch.autograd.grad((ref * w).sum(), list(sd.values()), allow_unused=True)
    named = dict(model.named_parameters())
    assert set(named) == set(sd), "every state_dict entry is a parameter"
    for (k, _), g in zip(sd.items(), g_ref):
        if g is None:  # e.g. the padding row's embedding: no gradient in either
            assert named[k].grad is None or not named[k].grad.any(), k
            continue
        assert_close(f"d/d{k}", g, named[k].grad)


def test_state_dict_names_are_upstreams():
    keys = list(_model().state_dict())
    expected = ["item_embedding.weight", "in_layer_norm.weight", "in_layer_norm.bias", "layer_norm_time.weight",
                "layer_norm_time.bias"]
    expected += [f"ssd_layers.{i}.{k}" for i in range(2) for k in UPSTREAM_LAYER_KEYS]
    assert keys == expected
    no_time = list(_model(is_time=False).state_dict())
    assert no_time == [k for k in expected if "layer_norm_time" not in k and not any(t in k for t in TIME_KEYS)]


def test_shapes_loss_and_training_mode_backward():
    model = _model().train()
    seq, lens, ts = _batch(b=4)
    assert model(seq, lens, ts).shape == (4, 8)
    assert model.full_sort_predict(seq, lens, ts).shape == (4, 23)
    assert model.hidden_states(seq, ts, lens).shape == (4, 7, 8)
    loss = model.calculate_loss(seq, lens, ts, torch.tensor([1, 2, 3, 4]))
    loss.backward()
    # the last layer's next time feature is unused (upstream's too): its gate and norm get no gradient
    unused = {f"ssd_layers.1.ssd.{m}.{w}" for m in ("time_gate_residual.1", "time_layer_norm")
              for w in ("weight", "bias")}
    assert {n for n, p in model.named_parameters() if p.grad is None} == unused


def test_padding_never_reaches_valid_positions():
    model = _model()
    seq, lens, ts = _batch()
    out = model(seq, lens, ts)
    pos = torch.arange(seq.shape[1])
    pad = pos >= lens[:, None]
    junk_seq = torch.where(pad, torch.full_like(seq, 5), seq)
    junk_ts = torch.where(pad, torch.full_like(ts, 123), ts)
    assert_close("with junk in the padding", out, model(junk_seq, lens, junk_ts))
    # a batch shorter than max_seq_length is padded to it: the same result
    short = model(seq[:, :6], lens.clamp(max=6), ts[:, :6])
    assert_close("shorter batch", model(seq, lens.clamp(max=6), ts), short)


def test_upstream_time_path_is_not_causal():
    """A later timestamp changes an earlier output (documented: upstream cannot stream)."""
    model = _model()
    seq, lens, ts = _batch(b=1)
    ts2 = ts.clone()
    ts2[0, -1] += 50_000_000
    h1, h2 = model.hidden_states(seq, ts, lens), model.hidden_states(seq, ts2, lens)
    assert (h1[0, 0] - h2[0, 0]).abs().max() > 1e-9  # fp64 round-off is ~1e-16


@pytest.mark.parametrize("kw", [dict(causal_time=True), dict(is_time=False)], ids=["causal-time", "no-time"])
def test_step_equals_forward(kw):
    model = _model(**kw)
    seq, _, ts = _batch(b=2, seed=4)
    ts = ts.abs() + 1_700_000_000  # no padding here: every position is real
    full = model.hidden_states(seq, ts if model.is_time else None)
    state = model.init_state(2)
    with torch.no_grad():
        for t in range(seq.shape[1]):
            h, state = model.step(seq[:, t], state, ts[:, t] if model.is_time else None)
            assert_close(f"step {t}", full[:, t], h)
    # causal: a later timestamp leaves earlier outputs unchanged
    if model.is_time:
        ts2 = ts.clone()
        ts2[:, -1] += 99
        assert_close("causal", full[:, :-1], model.hidden_states(seq, ts2)[:, :-1])


def test_time_gaps_are_exact_for_real_unix_times():
    ts = torch.tensor([[1_700_000_000, 1_700_000_001, 1_700_000_064, 1_712_345_677, 1_712_345_677]])
    exact = [0, 1, 63, 12_345_613, 0]
    assert time_gaps(ts).tolist() == [exact]
    assert time_gaps(ts.to(F64)).tolist() == [[float(v) for v in exact]]
    # what a float32 difference would give instead (why the gaps are taken before the cast)
    f32 = ts.float()
    assert (f32[:, 1:] - f32[:, :-1]).tolist() != [exact[1:]]
    # the gap the model is fed (the input of layer_norm_time) is the exact difference
    model = _model(max_seq_length=5)
    seen = []
    model.layer_norm_time.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    model(torch.ones(1, 5, dtype=torch.long), torch.tensor([5]), ts)
    assert seen[0].dtype == F64 and seen[0].tolist() == [[float(v) for v in exact]]


def test_time_gaps_refuse_float32_above_2_pow_24():
    ts = torch.tensor([[1.7e9, 1.7e9 + 64]], dtype=torch.float32)
    with pytest.raises(mx.InputError, match=r"float32 with values above 16777216.*int64 or float64"):
        time_gaps(ts)
    assert time_gaps(torch.tensor([[3.0, 10.0]])).tolist() == [[0.0, 7.0]]


def test_decreasing_timestamps_give_negative_gaps():
    assert time_gaps(torch.tensor([[10, 4, 9]])).tolist() == [[0, -6, 5]]


@pytest.mark.parametrize("kw, match", [
    (dict(hidden_size=10, head_dim=8), r"hidden_size \* expand = 20 must be a multiple of head_dim=8"),
    (dict(hidden_size=0), r"hidden_size must be an int >= 1, got 0"),
    (dict(n_items=1), r"n_items must be an int >= 2, got 1"),
    (dict(max_seq_length=0), r"max_seq_length must be an int >= 1"),
    (dict(num_layers=0), r"num_layers must be an int >= 1"),
    (dict(dropout_prob=1.0), r"dropout_prob must be in \[0, 1\), got 1.0"),
    (dict(time_drop_out=-0.1), r"time_drop_out must be in \[0, 1\)"),
])
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        TiM4Rec(**{**CFG, **kw})


def test_input_errors():
    model = _model()
    seq, lens, ts = _batch()
    with pytest.raises(mx.ShapeError, match=r"length 8; max_seq_length=7 is the most"):
        model(torch.ones(3, 8, dtype=torch.long), lens, torch.ones(3, 8, dtype=torch.long))
    with pytest.raises(mx.InputError, match=r"is_time=True needs time_stamp"):
        model(seq, lens)
    with pytest.raises(mx.ShapeError, match=r"time_stamp must have item_seq's shape \(3, 7\), got \(3, 6\)"):
        model(seq, lens, ts[:, :6])
    with pytest.raises(mx.InputError, match=r"item_seq_len must lie in \[1, l=7\]"):
        model(seq, torch.tensor([0, 1, 2]), ts)
    with pytest.raises(mx.InputError, match=r"item_seq must be an integer tensor"):
        model(seq.double(), lens, ts)
    with pytest.raises(UnsupportedError, match=r"not causal.*causal_time=True"):
        model.init_state(2)


def test_no_time_variant_uses_the_mamba2_spec():
    model = _model(is_time=False)
    assert model.ssd_layers[0].ssd.mixer.spec.name == "mamba2"
    assert _model().ssd_layers[0].ssd.mixer.spec.name == "tim4rec"
    seq, lens, _ = _batch()
    assert model(seq, lens).shape == (3, 8)


# ------------------------------------------------------------------------------------------------
# the scripts (smoke runs)
# ------------------------------------------------------------------------------------------------
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.mark.slow  # ~10 s on two idle cores, a minute under load
def test_movielens_example_quick(tmp_path):
    import importlib.util
    import json
    import subprocess
    import sys

    if importlib.util.find_spec("recbole") is None:
        pytest.skip("the example reads ml-100k from the recbole wheel: pip install --no-deps recbole==1.2.1")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "tim4rec_movielens.py"), "--quick",
                          "--out", str(tmp_path / "ml.png")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "ml.json").read_text())
    assert set(summary["runs"]) == {"TiM4Rec", "TiM4Rec (no time)", "SASRec"}
    assert (tmp_path / "ml.png").stat().st_size > 0 and "popularity" in out.stdout


@pytest.mark.slow
def test_bench_quick(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_tim4rec.py"), "--quick", "--out",
                          str(tmp_path / "b.json")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "tim4rec / mamba2:" in out.stdout and (tmp_path / "b.json").exists()
