"""Fault injection at the runtime's entry points: bad calls give typed errors and leave every tensor
the caller passed untouched; empty batches and sequences (b = 0, l = 0) give empty outputs that
backpropagate and final states that are copies of the initial states, on every lowering."""

import pytest
import torch

import mixerc as mx
from mixerc.nn import Hydra, Mamba, Mamba2

DIMS = dict(h=2, p=3, n=4, g=1)
LOWERINGS = ["reference", "recurrent", "chunked", "triton"]


def mamba2_inputs(b, l, dtype=torch.float64, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = dict(x=(b, l, 2, 3), dt=(b, l, 2), B=(b, l, 1, 4), C=(b, l, 1, 4))
    return {k: torch.randn(*s, generator=g, dtype=dtype).requires_grad_(grad) for k, s in shapes.items()}


def snapshot(*objs):
    """Every tensor in ``objs`` (dicts, tuples, tensors), cloned, with its identity."""
    out = []
    for o in objs:
        vals = o.values() if isinstance(o, dict) else o if isinstance(o, (tuple, list)) else [o]
        out += [(t, t.detach().clone()) for t in vals if isinstance(t, torch.Tensor) and t.device.type != "meta"]
    return out


def unchanged(snap):
    return all(torch.equal(t.detach(), copy) for t, copy in snap)


@pytest.fixture(scope="module")
def mixers():
    return {low: mx.compile("mamba2", dims=DIMS, backend=low, dtype=torch.float32 if low == "triton" else
                            torch.float64) for low in LOWERINGS}


@pytest.mark.parametrize("low", LOWERINGS)
@pytest.mark.parametrize("b,l", [(0, 5), (2, 0), (0, 0)])
def test_empty_batch_or_sequence(mixers, low, b, l):
    """Found by a new user: b = 0 or l = 0 returned outputs without grad_fn (backward failed) and at
    l = 0 the final state was the caller's initial_state object."""
    m = mixers[low]
    dtype = torch.float32 if low == "triton" else torch.float64
    inputs = mamba2_inputs(b, l, dtype, grad=True)
    s0 = torch.randn(b, 2, 3, 4, dtype=dtype, requires_grad=True)
    snap = snapshot(inputs, s0, dict(m.named_parameters()))
    y, final = m(**inputs, initial_state=s0, return_final_state=True)
    assert y.shape == (b, l, 2, 3) and y.dtype == dtype and y.grad_fn is not None
    assert final is not s0 and final.shape == s0.shape and (final.numel() == 0 or final.data_ptr() != s0.data_ptr())
    if l == 0:
        assert torch.equal(final, s0.detach())
    (y.sum() + final.sum()).backward()
    for k, t in inputs.items():
        assert t.grad is not None and t.grad.shape == t.shape, k
    for name, p in m.named_parameters():  # nothing was computed from them: zero, not None
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)), name
    if l == 0:
        assert torch.equal(s0.grad, torch.ones_like(s0))  # final = initial: the gradient passes through
    m.zero_grad()
    assert unchanged(snap)


@pytest.mark.parametrize("low", ["chunked", "triton"])
def test_in_place_step_after_an_empty_prompt_leaves_the_callers_state(mixers, low):
    """The final state of l = 0 is a copy: the in-place triton step on it must not change the
    caller's initial state."""
    m = mixers[low]
    dtype = torch.float32 if low == "triton" else torch.float64
    s0 = torch.randn(2, 2, 3, 4, dtype=dtype)
    keep = s0.clone()
    with torch.no_grad():
        _, state = m(**mamba2_inputs(2, 0, dtype), initial_state=s0, return_final_state=True)
        one = {k: v[:, 0] for k, v in mamba2_inputs(2, 1, dtype).items()}
        y, new = m.step(state, **one)
        y_ref, new_ref = m.step(keep.clone(), **one)
    assert torch.equal(s0, keep)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(new, new_ref)


def test_empty_step_batch(mixers):
    m = mixers["chunked"]
    one = {k: v[:, 0] for k, v in mamba2_inputs(0, 1).items()}
    y, state = m.step(None, **one)
    assert y.shape == (0, 2, 3) and state.shape == (0, 2, 3, 4)


def test_non_causal_spec_at_l0():
    m = mx.compile("hydra", dims=dict(h=2, p=3, n=4, g=1), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    shapes = dict(x=(2, 0, 2, 3), dt_fwd=(2, 0, 2), dt_bwd=(2, 0, 2), delta=(2, 0, 2), B_fwd=(2, 0, 1, 4),
                  C_fwd=(2, 0, 1, 4), B_bwd=(2, 0, 1, 4), C_bwd=(2, 0, 1, 4))
    inputs = {k: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for k, s in shapes.items()}
    y = m(**inputs)
    y.sum().backward()
    assert y.shape == (2, 0, 2, 3) and inputs["x"].grad.shape == (2, 0, 2, 3)


BAD_CALLS = {
    "positional": lambda m, i, s: m(*i.values()),
    "positional step": lambda m, i, s: m.step(s, *[v[:, 0] for v in i.values()]),
    "complex state": lambda m, i, s: m(**i, initial_state=s.to(torch.complex128)),
    "int state on step": lambda m, i, s: m.step(s.long(), **{k: v[:, 0] for k, v in i.items()}),
    "meta input": lambda m, i, s: m(**{**i, "x": i["x"].to("meta")}),
    "complex input": lambda m, i, s: m(**{**i, "x": i["x"].to(torch.complex128)}),
    "state of another batch": lambda m, i, s: m(**i, initial_state=s[:1]),
    "float seq_idx": lambda m, i, s: m(**i, seq_idx=torch.zeros(2, 5)),
    "unknown input": lambda m, i, s: m(**i, y=i["x"]),
    "negative init_state": lambda m, i, s: m.init_state(-1),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_calls_are_typed_and_modify_nothing(mixers, case):
    m = mixers["chunked"]
    inputs = mamba2_inputs(2, 5, grad=True)
    s0 = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    snap = snapshot(inputs, s0, dict(m.named_parameters()))
    with pytest.raises(mx.InputError):
        BAD_CALLS[case](m, inputs, s0)
    assert unchanged(snap)
    assert all(t.grad is None for t in inputs.values())


def test_torch_compile_traces_through_the_checks(mixers):
    """The checks read metadata only: fake tensors (which report their real device) pass, and
    fullgraph tracing does not break on them."""
    m = mixers["chunked"]
    inputs = mamba2_inputs(2, 7)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(**inputs), m(**inputs))


# -- layers ----------------------------------------------------------------------------------------------
LAYERS = [(Mamba, dict(d_model=16, d_state=4)), (Mamba2, dict(d_model=32, headdim=16, d_state=8, chunk_size=16))]


@pytest.mark.parametrize("cls,kw", LAYERS, ids=["Mamba", "Mamba2"])
def test_layer_empty_prompt_prefill_then_step(cls, kw):
    """Found by a new user: an empty prompt (l = 0) to prefill crashed in the convolution. Now it
    fills the cache with the state of an empty prompt (zeros: a prefill starts from scratch), so
    stepping from there equals stepping from a fresh cache."""
    torch.manual_seed(0)
    layer = cls(**kw).double()
    u = torch.randn(2, 0, kw["d_model"], dtype=torch.float64, requires_grad=True)
    cache = [torch.randn_like(t) for t in layer.allocate_inference_cache(2, 8, dtype=torch.float64)]
    y = layer(u, cache=cache)
    y.sum().backward()
    assert y.shape == (2, 0, kw["d_model"]) and u.grad.shape == u.shape
    assert all(torch.equal(t, torch.zeros_like(t)) for t in cache)
    fresh = layer.allocate_inference_cache(2, 8, dtype=torch.float64)
    u_t = torch.randn(2, 1, kw["d_model"], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer.step(u_t, *cache)[0], layer.step(u_t, *fresh)[0])
        torch.testing.assert_close(layer.step(u_t, *cache)[0], layer(torch.cat([u_t, u_t], 1))[:, 1:])


@pytest.mark.parametrize("cls,kw", [*LAYERS, (Hydra, dict(d_model=32, headdim=16, d_state=8, chunk_size=16))],
                         ids=["Mamba", "Mamba2", "Hydra"])
@pytest.mark.parametrize("b,l", [(2, 0), (0, 3)])
def test_layer_empty_batch_or_sequence_backpropagates(cls, kw, b, l):
    layer = cls(**kw).double()
    u = torch.randn(b, l, kw["d_model"], dtype=torch.float64, requires_grad=True)
    y = layer(u)
    y.sum().backward()
    assert y.shape == (b, l, kw["d_model"]) and u.grad.shape == u.shape
    assert all(p.grad is not None and not p.grad.abs().sum() for p in layer.parameters())
