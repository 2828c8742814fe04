"""The triton lowering of mx.grid2d (codegen/structures/grid2d/triton_lowering.py, templates/grid2d/) in the
interpreter lane: forward, final state and the gradient of every input, parameter and of the initial
state against the cell-by-cell `recurrent` lowering in fp64 (and the fp32 kernels against it), on odd
grids, for every coefficient kind: per head, per state, constant over the grid, absent (a2 = a3 = 0,
factors 1, scales 1), scales per head or per cell, B/C per group, a value without a channel dim;
decoding by the kernels' step; the generated module (absent roles generate no code, 120 columns)."""

from __future__ import annotations

import pytest
import torch

import mixerc as mx
from mixerc import codegen
from mixerc.check import random_inputs
from mixerc.compiler import compile as compile_spec
from mixerc.settings import settings

interpreted = pytest.mark.skipif(not settings().triton_interpret,
                                 reason="the kernels run in the interpreter lane (TRITON_INTERPRET=1)")

F64 = torch.float64


@mx.spec(example_dims=dict(h=2, p=2, n=3, g=1), seq_axes=("v", "l"))
def per_state(x: mx.Seq("b v l h p"), B1: mx.Seq("b v l g n"), C1: mx.Seq("b v l g n"), B2: mx.Seq("b v l g n"),
              C2: mx.Seq("b v l g n"), d: mx.Seq("b v l h n"), c: mx.Seq("b v l h n"), s: mx.Seq("b v l h")):
    """Every transition per state (Mamba's diagonal kind), B/C per group, scales per head."""
    M = mx.grid2d(C1=C1, B1=B1, C2=C2, B2=B2, log_a1=-mx.softplus(d), a2=0.6 * mx.tanh(c), a3=0.5 * mx.sigmoid(d),
                  log_a4=-mx.softplus(c), scale1=mx.sigmoid(s), scale2=mx.softplus(s))
    return M @ x


@mx.spec(example_dims=dict(h=2, p=2, n=3), seq_axes=("v", "l"))
def decoupled(x: mx.Seq("b v l h p"), B: mx.Seq("b v l h n"), C: mx.Seq("b v l h n"), d: mx.Seq("b v l h"),
              s: mx.Seq("b v l")):
    """a2 and a3 absent (two independent 1-D scans), log_a4 absent (factor 1), one scale per cell."""
    M = mx.grid2d(C1=C, B1=B, C2=B, B2=C, log_a1=-mx.softplus(d), scale2=mx.sigmoid(s))
    return M @ x


@mx.spec(example_dims=dict(h=2, n=2), seq_axes=("v", "l"))
def constant(x: mx.Seq("b v l h"), B: mx.Seq("b v l h n"), C: mx.Seq("b v l h n"),
             w: mx.Param("h", init=mx.init.uniform(0.2, 0.8)), u: mx.Param("h n", init=mx.init.uniform(-0.5, 0.5))):
    """Transitions constant over the grid (a per-head and a per-state parameter), a3 absent, no
    value channel dim."""
    M = mx.grid2d(C1=C, B1=B, C2=C, B2=B, log_a1=-w, a2=u, log_a4=-2.0 * w)
    return M @ x


@mx.spec(example_dims=dict(h=2, p=2, n=2), seq_axes=("v", "l"))
def bare(x: mx.Seq("b v l h p"), B: mx.Seq("b v l h n"), C: mx.Seq("b v l h n"), c: mx.Seq("b v l h")):
    """No decay at all (factors 1), only the coupling a3: h1 is a cumulative sum along l."""
    M = mx.grid2d(C1=C, B1=B, C2=C, B2=B, a3=0.5 * mx.tanh(c))
    return M @ x


def _run(m, inputs, state):
    """y, the final state and the gradient of every input, parameter and of the initial state of a
    loss that weighs y and the final state."""
    ins = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    s0 = state.clone().requires_grad_(True)
    y, fin = m(**ins, initial_state=s0, return_final_state=True)
    loss = (y * torch.cos(torch.arange(y.numel(), dtype=y.dtype).view_as(y))).sum() + (fin * fin.detach()).sum()
    named = [*ins.items(), *m.named_parameters(), ("initial state", s0)]
    grads = torch.autograd.grad(loss, [t for _, t in named])
    return y.detach(), fin.detach(), {k: g for (k, _), g in zip(named, grads)}


def _errors(spec, dims, dtype=F64, b=2, l=5, v=3, seed=0):
    """Relative errors (max |a - b| / max |b|) of the triton lowering in ``dtype`` against `recurrent`
    in fp64, by what is compared."""
    ref = compile_spec(spec, dims=dims, backend="recurrent", dtype=F64)
    tri = compile_spec(spec, dims=dims, backend="triton", dtype=dtype)
    tri.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(seed)
    inputs = random_inputs(ref, b, l, g, axes={"v": v})
    state = torch.randn(ref.state_shapes(b, v=v)[0], generator=g, dtype=F64)
    want, got = _run(ref, inputs, state), _run(tri, {k: t.to(dtype) for k, t in inputs.items()}, state.to(dtype))

    def rel(a, r):
        return float((a.double() - r).abs().max() / r.abs().max().clamp_min(1e-30))

    errs = {"y": rel(got[0], want[0]), "final state": rel(got[1], want[1])}
    errs.update({f"grad {k}": rel(got[2][k], r) for k, r in want[2].items()})
    return errs


@interpreted
@pytest.mark.parametrize("spec,dims,b", [
    ("ssm2d", dict(h=2, p=3, n=4, g=1), 2),  # per head: every role, scales per head
    (per_state, per_state.example_dims, 1),
    (decoupled, decoupled.example_dims, 1),
    (constant, constant.example_dims, 1),
    (bare, bare.example_dims, 1),
])
def test_against_recurrent_fp64(spec, dims, b):
    spec = mx.load_spec(spec) if isinstance(spec, str) else spec
    errs = _errors(spec, dims, b=b)
    assert len(errs) > 4  # y, the final state, and the gradients of the inputs, parameters and state
    bad = {k: e for k, e in errs.items() if not e < 1e-12}
    assert not bad, bad


@interpreted
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float16, 1e-2)])
def test_fp32_and_fp16_inputs(dtype, tol):
    """The kernels accumulate in fp32 for fp32 and fp16 inputs (fp16 rounds the inputs and the output)."""
    errs = _errors(mx.load_spec("ssm2d"), dict(h=2, p=3, n=4, g=1), dtype=dtype, b=1, l=5, v=3)
    bad = {k: e for k, e in errs.items() if not e < tol}
    assert not bad, bad


@interpreted
@pytest.mark.slow
def test_a_larger_grid_and_value_blocks():
    """Several value blocks per head (p = 20 > BP), heads in two groups, a longer grid, per-state
    coefficients."""
    errs = _errors(per_state, dict(h=4, p=20, n=5, g=2), b=1, l=9, v=7, seed=3)
    bad = {k: e for k, e in errs.items() if not e < 1e-12}
    assert not bad, bad


@interpreted
def test_decode_by_the_kernels_step():
    """Prefill the first positions, then step one position at a time on the triton backend (the
    state updated in place): the outputs of one forward over the whole grid."""
    spec = mx.load_spec("ssm2d")
    m = compile_spec(spec, dims=dict(h=2, p=3, n=4, g=1), backend="triton", dtype=F64)
    inputs = random_inputs(m, 2, 5, torch.Generator().manual_seed(1), axes={"v": 3})
    with torch.no_grad():
        want, want_state = m(**inputs, return_final_state=True)
        y, state = m(**{k: t[:, :, :2] for k, t in inputs.items()}, return_final_state=True)
        state = state.to(F64).contiguous()
        ys = [y]
        for t in range(2, 5):
            yt, new = m.step(state, **{k: u[:, :, t] for k, u in inputs.items()})
            assert new is state  # updated in place
            ys.append(yt.unsqueeze(2))
    torch.testing.assert_close(torch.cat(ys, 2), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, want_state.to(F64), rtol=1e-12, atol=1e-12)


@interpreted
def test_generated_module():
    """Absent roles generate no parameter and no load; every line within 120 columns; the planner
    lists the triton lowering for the structure."""
    m = compile_spec(decoupled, dims=decoupled.example_dims, backend="triton")
    src = m.source("triton")
    assert "k0_fwd" in src and "k0_bwd" in src and "LA1_ptr" in src and "S2_ptr" in src
    for absent in ("A2_ptr", "A3_ptr", "LA4_ptr", "S1_ptr"):
        assert absent not in src, absent
    assert max(len(line) for line in src.splitlines()) <= 120
    assert "-> triton" in str(m.plan)


def test_auto_picks_triton_on_cuda():
    """``backend="auto"`` resolves to the kernels for CUDA tensors now that grid2d has them (every
    coefficient kind); the planner then plans the triton lowering for the structure."""
    for spec, dims in ((mx.load_spec("ssm2d"), dict(h=2, p=3, n=4, g=1)), (per_state, per_state.example_dims),
                       (decoupled, decoupled.example_dims), (constant, constant.example_dims)):
        m = mx.compile(spec, dims=dims)
        assert m._resolve("auto", torch.device("cuda")) == "triton"  # what a call on CUDA tensors runs
        assert "-> triton" in str(codegen.plan(m.ir, "triton"))
