"""Every torch lowering of the built-in mamba2 and mamba specs against the references of
tests/ref (token loop and materialised matrix, written from the math), in fp64: forward, final
state, gradients of every input, parameter and the initial state, step, seq_idx, odd lengths,
groups, and decays from tiny to huge."""

import pytest
import torch

import mixerc as mx
from conftest import assert_close
from ref import math_ref as R

LOWERINGS = ["reference", "recurrent", "chunked"]
F64 = torch.float64
TOL = 1e-10


def make(name, low, dims, chunk=64):
    torch.manual_seed(7)
    return mx.compile(name, dims=dims, backend=low, dtype=F64, chunk_size=chunk)


def mamba2_inputs(gen, b, l, h, p, n, g, dt_shift=0.0):
    return dict(x=torch.randn(b, l, h, p, generator=gen, dtype=F64),
                dt=torch.randn(b, l, h, generator=gen, dtype=F64) + dt_shift,
                B=torch.randn(b, l, g, n, generator=gen, dtype=F64),
                C=torch.randn(b, l, g, n, generator=gen, dtype=F64))


def mamba_inputs(gen, b, l, d, n, dt_shift=0.0):
    return dict(x=torch.randn(b, l, d, generator=gen, dtype=F64),
                dt=torch.randn(b, l, d, generator=gen, dtype=F64) + dt_shift,
                B=torch.randn(b, l, n, generator=gen, dtype=F64),
                C=torch.randn(b, l, n, generator=gen, dtype=F64))


MODELS = {
    "mamba2": (R.mamba2, lambda gen, b, l, dt_shift=0.0: mamba2_inputs(gen, b, l, 4, 3, 5, 2, dt_shift),
               dict(h=4, p=3, n=5, g=2)),
    "mamba2-g1": (R.mamba2, lambda gen, b, l, dt_shift=0.0: mamba2_inputs(gen, b, l, 4, 3, 5, 1, dt_shift),
                  dict(h=4, p=3, n=5, g=1)),
    "mamba": (R.mamba, lambda gen, b, l, dt_shift=0.0: mamba_inputs(gen, b, l, 3, 4, dt_shift),
              dict(d=3, n=4)),
}


def spec_of(model):
    return model.split("-")[0]


def run_with_grads(fn, inputs, params, s0, seq_idx=None):
    """Forward through ``fn(inputs, params, s0)``, then gradients of a loss touching y and the
    final state with respect to every input, parameter and the initial state."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in {**inputs, **params}.items()}
    s0 = s0.detach().clone().requires_grad_(True)
    y, S = fn({k: leaves[k] for k in inputs}, {k: leaves[k] for k in params}, s0)
    w = torch.cos(torch.arange(y.numel(), dtype=F64)).view_as(y)
    loss = (y * w).sum() + (S * S).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()) + [s0], allow_unused=True)
    names = list(leaves) + ["initial_state"]
    return y.detach(), S.detach(), {n: (g if g is not None else torch.zeros_like(v))
                                   for n, g, v in zip(names, grads, list(leaves.values()) + [s0])}


def compare_all(model, low, l, gen, seq_idx_fn=None, dt_shift=0.0, chunk=64, grad_scale=False):
    ref_fn, inputs_fn, dims = MODELS[model]
    m = make(spec_of(model), low, dims, chunk)
    b = 2
    inputs = inputs_fn(gen, b, l, dt_shift)
    params = {k: v.detach() for k, v in m.named_parameters()}
    s0 = torch.randn(m.state_shapes(b)[0], generator=gen, dtype=F64)
    seq_idx = seq_idx_fn(b, l) if seq_idx_fn else None

    def via_mixer(ins, ps, s):  # the public forward, with the leaves standing in for the parameters
        return torch.func.functional_call(
            m, ps, kwargs=dict(**ins, initial_state=s, return_final_state=True, seq_idx=seq_idx))

    def via_loop(ins, ps, s):
        return ref_fn(R.ss_loop, **ins, **ps, initial_state=s, seq_idx=seq_idx)

    def via_matrix(ins, ps, s):
        return ref_fn(R.ss_matrix, **ins, **ps, initial_state=s, seq_idx=seq_idx)

    y, S, g = run_with_grads(via_mixer, inputs, params, s0)
    # the public forward agrees with the generated function called directly
    y_pub, S_pub = m(**inputs, initial_state=s0, return_final_state=True, seq_idx=seq_idx)
    assert_close("public forward", y_pub.detach(), y, 1e-14)
    for ref_name, ref in (("loop", via_loop), ("matrix", via_matrix)):
        y_r, S_r, g_r = run_with_grads(ref, inputs, params, s0)
        assert_close(f"{low} y vs {ref_name}", y, y_r, TOL)
        assert_close(f"{low} final state vs {ref_name}", S, S_r, TOL)
        # the A_log gradient of huge decays is a sum of terms that cancel to ~1e-13 of the others:
        # judge every gradient against the largest gradient there
        scale = max(float(v.abs().max()) for v in g_r.values()) if grad_scale else None
        for k in g_r:
            assert_close(f"{low} d/d{k} vs {ref_name}", g[k], g_r[k], TOL, scale)
    return m, inputs, s0


@pytest.mark.parametrize("low", LOWERINGS)
@pytest.mark.parametrize("l", [1, 63, 200])
@pytest.mark.parametrize("model", ["mamba2", "mamba2-g1", "mamba"])
def test_forward_state_and_gradients(model, low, l, gen):
    compare_all(model, low, l, gen)


def segments(b, l):
    """Row 0: segments of lengths 1, 2, ..., row 1: one segment then a length-1 one at the end."""
    ids = torch.zeros(b, l, dtype=torch.long)
    t, s = 0, 0
    while t < l:
        ids[0, t:t + s + 1] = s + 3
        t, s = t + s + 1, s + 1
    ids[1, -1] = 9
    return ids


@pytest.mark.parametrize("low", LOWERINGS)
@pytest.mark.parametrize("model", ["mamba2", "mamba"])
def test_seq_idx_packed_segments(model, low, gen):
    compare_all(model, low, 70, gen, seq_idx_fn=segments, chunk=16)


@pytest.mark.parametrize("low", LOWERINGS)
@pytest.mark.parametrize("model", ["mamba2", "mamba"])
def test_seq_idx_isolates_sequences(model, low, gen):
    """Packing two sequences with seq_idx gives each exactly what it gives alone."""
    _, inputs_fn, dims = MODELS[model]
    m = make(spec_of(model), low, dims, chunk=16)
    a, b = inputs_fn(gen, 1, 23), inputs_fn(gen, 1, 18)
    packed = {k: torch.cat([a[k], b[k]], 1) for k in a}
    seq_idx = torch.tensor([[0] * 23 + [1] * 18])
    y = m(**packed, seq_idx=seq_idx)
    assert_close("first", y[:, :23], m(**a), 1e-12)
    assert_close("second", y[:, 23:], m(**b), 1e-12)


@pytest.mark.parametrize("low", ["recurrent", "chunked"])
@pytest.mark.parametrize("dt_shift", [-12.0, 12.0, 30.0])
@pytest.mark.parametrize("model", ["mamba2", "mamba"])
def test_extreme_decays(model, low, dt_shift, gen):
    """dt - 12: Δ ~ 1e-6, nearly no decay; dt + 12 / + 30: exp(Δ A) underflows to 0 within a step."""
    compare_all(model, low, 90, gen, dt_shift=dt_shift, chunk=32, grad_scale=True)


@pytest.mark.parametrize("low", LOWERINGS)
@pytest.mark.parametrize("model", ["mamba2", "mamba"])
def test_step_over_a_sequence_equals_forward(model, low, gen):
    _, inputs_fn, dims = MODELS[model]
    m = make(spec_of(model), low, dims, chunk=8)
    inputs = inputs_fn(gen, 2, 19)
    s0 = torch.randn(m.state_shapes(2)[0], generator=gen, dtype=F64)
    y, S = m(**inputs, initial_state=s0, return_final_state=True)
    state, ys = s0, []
    for t in range(19):
        y_t, state = m.step(state, **{k: v[:, t] for k, v in inputs.items()})
        ys.append(y_t)
    assert_close("step outputs", torch.stack(ys, 1), y, 1e-12)
    assert_close("step state", state, S, 1e-12)
    # prefill then decode: forward over a prefix, step the rest
    _, S7 = m(**{k: v[:, :7] for k, v in inputs.items()}, initial_state=s0, return_final_state=True)
    y8, _ = m.step(S7, **{k: v[:, 7] for k, v in inputs.items()})
    assert_close("prefill + step", y8, y[:, 7], 1e-12)


@pytest.mark.parametrize("model", ["mamba2", "mamba"])
def test_chunked_fp32_and_low_precision_inputs(model, gen):
    """fp32 parameters: chunked in fp32 near the fp64 loop; bf16/fp16 inputs return their dtype and
    their error against an fp64 golden stays within 2x that of the reference lowering in the same
    precision."""
    ref_fn, inputs_fn, dims = MODELS[model]
    inputs = inputs_fn(gen, 2, 150)
    torch.manual_seed(3)
    ch = mx.compile(spec_of(model), dims=dims, backend="chunked")
    rf = mx.compile(spec_of(model), dims=dims, backend="reference")
    rf.load_state_dict(ch.state_dict())
    params = {k: v.detach().double() for k, v in ch.named_parameters()}
    golden, _ = ref_fn(R.ss_loop, **inputs, **params)
    y32 = ch(**{k: v.float() for k, v in inputs.items()})
    assert y32.dtype == torch.float32
    assert_close("chunked fp32", y32.double(), golden, 1e-5)
    for dt in (torch.bfloat16, torch.float16):
        low = {k: v.to(dt) for k, v in inputs.items()}
        with torch.no_grad():
            y_ch, y_rf = ch(**low), rf(**low)
        assert y_ch.dtype == dt
        err_ch = float((y_ch.double() - golden).abs().max())
        err_rf = float((y_rf.double() - golden).abs().max())
        assert err_ch <= 2 * err_rf + 1e-6, (dt, err_ch, err_rf)


def test_gradients_flow_to_parameters_through_module():
    m = mx.compile("mamba2", dims=dict(h=2, p=4, n=4, g=1))
    y = m(x=torch.randn(1, 9, 2, 4), dt=torch.randn(1, 9, 2), B=torch.randn(1, 9, 1, 4), C=torch.randn(1, 9, 1, 4))
    y.sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
