"""Hand-written specs that together use every elementwise op and every structure kind, checked on
every lowering (triton in the interpreter) against ``reference`` in fp64 to 1e-10 relative:
output, final states, prefill + step, and the gradient of every input, parameter and initial state.
"""

import pytest

import mixerc as mx
from mixerc.check import run_check
from mixerc.ir.ops import ELEMENTWISE


@mx.spec
def ss_every_op(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n"),
                z: mx.Seq("b l h p"), A_log: mx.Param("h", init=mx.init.log_uniform(0.5, 2.0)),
                A_diag: mx.Param("h n", init=mx.init.s4d_real()), dt_bias: mx.Param("h", init=0.3),
                D: mx.Param("h", init=1.0), w: mx.Param("p", init=mx.init.uniform(0.5, 1.5))):
    """Scalar decay (Mamba-2) and diagonal decay (Mamba) on the same value, params and inputs mixed."""
    delta = mx.clamp(mx.softplus(dt + dt_bias), min=1e-3, max=2.0)
    Ch = mx.groups_to_heads(C)
    M1 = mx.semiseparable(C=C, B=mx.sigmoid(B) - 0.5, log_decay=-mx.exp(A_log) * delta)
    M2 = mx.semiseparable(C=Ch, B=mx.groups_to_heads(B), log_decay=-mx.exp(A_diag) * delta / (1.0 + delta))
    y = M1 @ (x * delta) + M2 @ (x / w)
    return (y + D * x) * mx.silu(z) - mx.log(mx.softplus(-y) + 1.0)


@mx.spec
def qs_every_op(x: mx.Seq("b l h p"), dt_f: mx.Seq("b l h"), dt_b: mx.Seq("b l h"), B: mx.Seq("b l h n"),
                C: mx.Seq("b l h n"), Bb: mx.Seq("b l h n"), Cb: mx.Seq("b l h n"), d: mx.Seq("b l h"),
                A_log: mx.Param("h", init=0.2), D: mx.Param("h", init=0.5)):
    """Hydra-like: scale, decay and a data-dependent diagonal."""
    df, db = mx.softplus(dt_f), mx.softplus(dt_b)
    M = mx.quasiseparable(C=C, B=B, log_decay=-mx.exp(A_log) * df, scale=df, C_bwd=Cb, B_bwd=Bb,
                          log_decay_bwd=-mx.exp(A_log) * db, scale_bwd=db, diag=mx.sigmoid(d) + D)
    return M @ x


@mx.spec
def toeplitz_every_op(x: mx.Seq("b l h"), log_dt: mx.Param("h", init=mx.init.log_uniform_dt(1e-3, 1e-1)),
                      A_re_log: mx.Param("h n2", init=-0.7), A_im: mx.Param("h n2", init=mx.init.s4d_lin_imag()),
                      C_re: mx.Param("h n2", init=mx.init.normal(0.5)),
                      C_im: mx.Param("h n2", init=mx.init.normal(0.5)),
                      K_rev: mx.Param("h k", init=mx.init.normal(0.3))):
    """A bidirectional convolution: S4D's kernel below the diagonal, an explicit one above."""
    K = mx.s4d_kernel(log_dt, A_re_log, A_im, C_re, C_im, disc="zoh")
    return mx.toeplitz(kernel=K, kernel_rev=mx.sigmoid(K_rev) * 0.5, causal=False) @ x


@mx.spec
def ss_more_ops(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"),
                z: mx.Seq("b l h p"), a: mx.Param("h", init=mx.init.uniform(-1.0, 1.0)),
                A: mx.Param("h n", init=mx.init.uniform(0.5, 1.5)), w: mx.Param("p", init=0.5)):
    """abs, tanh, relu, square, sqrt, logsigmoid, maximum and minimum, in the fused prologue (the
    decay), the epilogue and around both structures (ties included: maximum(z, z), relu at 0)."""
    la = mx.logsigmoid(mx.tanh(dt) + a) - mx.square(mx.minimum(dt, a)) / 4.0
    la_diag = -mx.sqrt(mx.abs(A * dt) + 0.1) * mx.relu(mx.maximum(dt, a) + 0.5)
    y1 = mx.semiseparable(C=C, B=B, log_decay=la) @ x
    y2 = mx.semiseparable(C=C, B=B, log_decay=la_diag) @ (x * w)
    y = y1 + y2
    return mx.maximum(y, w) * mx.tanh(z) + mx.minimum(abs(y), mx.relu(z)) + mx.maximum(z, z) + mx.relu(0.0 * y)


@mx.spec
def ss_infinite_constants(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l n"), C: mx.Seq("b l n"),
                          D: mx.Param("h", init=1.0)):
    """Infinite constants have no Python literal: generated torch and Triton code (here in the fused
    prologue and epilogue) must spell them float("inf"); an infinite clamp bound bounds nothing."""
    delta = mx.minimum(mx.softplus(dt), float("inf"))
    M = mx.semiseparable(C=C, B=B, log_decay=-mx.maximum(delta, float("-inf")))
    return mx.minimum(M @ (x * delta), float("inf")) + mx.clamp(D * x, min=float("-inf"), max=1e30)


CASES = [
    (ss_every_op, dict(h=4, g=2, p=3, n=3)),
    (qs_every_op, dict(h=2, p=3, n=2)),
    (toeplitz_every_op, dict(h=3, n2=2, k=9)),
    (ss_more_ops, dict(h=2, p=3, n=2)),
    (ss_infinite_constants, dict(h=2, p=3, n=2)),
]


def test_the_specs_use_every_op_and_structure():
    ops = set()
    for spec, _ in CASES:
        ops |= {n.op for n in spec.trace().topo()}
    assert set(ELEMENTWISE) <= ops, sorted(set(ELEMENTWISE) - ops)
    assert {"semiseparable", "quasiseparable", "toeplitz", "s4d_kernel"} <= ops


@pytest.mark.parametrize("spec,dims", CASES, ids=[c[0].name for c in CASES])
def test_every_lowering_to_1e_10(spec, dims):
    for r in run_check(spec, dims, b=2, l=13, chunk_size=16, tol=1e-10):
        assert r.ok, r
