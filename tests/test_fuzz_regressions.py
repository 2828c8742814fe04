"""Specs the differential fuzzer (`mixerc fuzz`) found failing, shrunk by hand, kept as tests.

Each runs `mixerc.check.run_check`: every lowering (triton in the interpreter, tests/conftest.py
sets it) against ``reference`` in fp64: output, final states, the gradient of every input,
parameter and initial state, and prefill + step decode.
"""

import pytest

import mixerc as mx
from mixerc.check import default_lowerings, run_check
from mixerc.compiler import trace


def _check(spec, dims, l=11, **kw):
    _, graph, _ = trace(spec, dims)
    lows = default_lowerings(graph) or ("auto",)
    results = run_check(spec, dims, b=2, l=l, lowerings=[x for x in lows if x != "reference"] or ["auto"], **kw)
    for r in results:
        assert r.ok, r
    return results


@mx.spec
def constant_log_decay(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
    """The log-decay is a Python number: the lowerings got a float where they index a tensor
    ('float' object has no attribute 'unsqueeze')."""
    return mx.semiseparable(C=C, B=B, log_decay=-0.3) @ x


@mx.spec
def constant_log_decay_qs(x: mx.Seq("b l h"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"),
                          log_gamma: mx.Param("", init=-0.2)):
    """The same for one direction of a quasiseparable matrix."""
    M = mx.quasiseparable(C=C, B=B, C_bwd=C, B_bwd=B, log_decay=log_gamma, log_decay_bwd=-1.0)
    return M @ x


@mx.spec
def diagonal_decay_per_state_only(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"),
                                  a: mx.Param("n", init=0.5)):
    """A diagonal decay with no head dim (the heads come from B and C): the chunked lowering
    reshaped it as if it had one."""
    return mx.semiseparable(C=C, B=B, log_decay=-mx.softplus(a)) @ x


@mx.spec
def headless_diagonal_decay(x: mx.Seq("b l p"), B: mx.Seq("b l n"), C: mx.Seq("b l n"),
                            a: mx.Param("n", init=0.5)):
    """A diagonal decay and no head dim at all: the triton scan's backward did not sum the
    decay's adjoint over the channels (a pointer shape error in the interpreter)."""
    return mx.semiseparable(C=C, B=B, log_decay=-mx.softplus(a)) @ x


@mx.spec
def causal_and_bidirectional(x: mx.Seq("b l h"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"),
                             dt: mx.Seq("b l h")):
    """A semiseparable and a quasiseparable matrix in one spec: the check decoded with `step`,
    which a non-causal matrix does not have ('NoneType' object has no attribute 'clone')."""
    la = -mx.softplus(dt)
    M1 = mx.semiseparable(C=C, B=B, log_decay=la)
    M2 = mx.quasiseparable(C=C, B=B, C_bwd=C, B_bwd=B)
    return M1 @ x + M2 @ x


CASES = [
    (constant_log_decay, dict(h=2, p=3, n=2)),
    (constant_log_decay_qs, dict(h=2, n=3)),
    (diagonal_decay_per_state_only, dict(h=2, p=2, n=3)),
    (headless_diagonal_decay, dict(p=2, n=3)),
    (causal_and_bidirectional, dict(h=2, n=3)),
]


@pytest.mark.parametrize("spec,dims", CASES, ids=[c[0].name for c in CASES])
def test_fuzzer_finding(spec, dims):
    _check(spec, dims, chunk_size=16)


def test_quasiseparable_at_length_one_has_zero_gradients():
    """At l = 1 a quasiseparable matrix without diagonal is zero: the output depends on nothing
    and the check must still compare (zero) gradients instead of failing in autograd."""
    _check(constant_log_decay_qs, dict(h=2, n=3), l=1)
