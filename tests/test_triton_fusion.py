"""The triton lowering on specs that stress what gets fused into its kernels (interpreter lane).

Each spec runs through `mixerc.check.run_check` with the ``triton`` lowering only: forward, final
state, every gradient (inputs, parameters, initial state) and step, in fp64, against the
``reference`` lowering of the same spec (the materialised matrix, itself pinned to the token loops
of tests/ref by test_lowerings.py and test_user_spec.py), with ``seq_idx`` segments and a random
initial state. The shapes are odd on purpose (P = 3 or 5, N = 3 or 5: padded tiles; l = 29 with
chunk 16 or 8: a partial last chunk).
"""

import pytest
import torch

import mixerc as mx
from mixerc.check import run_check
from mixerc.settings import settings

pytestmark = pytest.mark.skipif(not settings().triton_interpret and not torch.cuda.is_available(),
                                reason="needs a GPU or TRITON_INTERPRET=1 (tests/conftest.py sets it)")


@mx.spec
def diag_groups(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n"),
                A_log: mx.Param("h n", init=mx.init.s4d_real()), D: mx.Param("h", init=1.0)):
    """Diagonal decay with g < h and P > 1 (channel blocks inside one group)."""
    delta = mx.softplus(dt)
    M = mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A_log) * delta)
    return M @ (x * delta) + D * x


@mx.spec
def gated_linear(x: mx.Seq("b l p"), B: mx.Seq("b l n"), C: mx.Seq("b l n"), z: mx.Seq("b l p")):
    """No decay, no head dim, a sigmoid gate as the epilogue."""
    M = mx.semiseparable(C=C, B=B)
    return (M @ x) * mx.sigmoid(z)


@mx.spec
def decay_given(x: mx.Seq("b l h p"), la: mx.Seq("b l h"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
    """The log-decay is a plain input: the prologue is empty, the leaf is the decay itself."""
    M = mx.semiseparable(C=C, B=B, log_decay=la)
    return M @ x


@mx.spec
def two_structures(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n"),
                   B2: mx.Seq("b l g n"), C2: mx.Seq("b l g n"), A_log: mx.Param("h", init=0.5),
                   D: mx.Param("h", init=1.0)):
    """Two applications: the first one's output is a leaf of the second one's epilogue."""
    delta = mx.softplus(dt)
    M1 = mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A_log) * delta)
    M2 = mx.semiseparable(C=C2, B=B2, log_decay=-delta)
    return M1 @ (x * delta) + M2 @ x + D * x


@mx.spec
def shared_values(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
    """y used twice in the epilogue, a clamp in the prologue, and a prologue value (delta) that the
    epilogue reads too: torch must still compute it for the kernel to read."""
    delta = mx.clamp(mx.softplus(dt), min=0.01, max=0.4)
    y = mx.semiseparable(C=C, B=B, log_decay=-delta) @ x
    return y * y + mx.silu(y) / (1.0 + delta)


@mx.spec
def diag_decay_given(x: mx.Seq("b l h p"), la: mx.Seq("b l h n"), B: mx.Seq("b l n"), C: mx.Seq("b l n")):
    """Diagonal decay given per position and state: its gradient is stored per position."""
    return mx.semiseparable(C=C, B=B, log_decay=la) @ x


@mx.spec
def diag_mixed_leaves(x: mx.Seq("b l h"), dt: mx.Seq("b l h"), z: mx.Seq("b l"), B: mx.Seq("b l n"),
                      C: mx.Seq("b l n"), An: mx.Param("n", init=0.3), s: mx.Param("", init=0.7)):
    """Diagonal-decay prologue leaves of every kind the scan's backward sums differently: per
    position and head (dt), per position only (z), per state only (An), a scalar (s)."""
    delta = mx.softplus(dt) * mx.sigmoid(z) * s
    return mx.semiseparable(C=C, B=B, log_decay=-mx.exp(An) * delta) @ (x * delta)


@mx.spec
def retnet_param_decay(q: mx.Seq("b l h n"), k: mx.Seq("b l h n"), v: mx.Seq("b l h p"),
                       log_gamma: mx.Param("h", init=-0.1)):
    """RetNet: the log-decay is a parameter itself (no position dim): its adjoint, seeded per
    position, must be summed over every position (it was stored from one row per block)."""
    return mx.semiseparable(C=q, B=k, log_decay=log_gamma) @ v


@mx.spec
def param_only_decay(q: mx.Seq("b l h n"), k: mx.Seq("b l h n"), v: mx.Seq("b l h p"),
                     a_log: mx.Param("h", init=mx.init.log_uniform(0.05, 0.5))):
    """A decay computed from parameters only (-exp(a_log)): a prologue with no position dim."""
    return mx.semiseparable(C=q, B=k, log_decay=-mx.exp(a_log)) @ v


@mx.spec
def diag_param_only_decay(x: mx.Seq("b l h"), B: mx.Seq("b l n"), C: mx.Seq("b l n"),
                          A_log: mx.Param("h n", init=mx.init.s4d_real())):
    """A diagonal decay from parameters only: the scan's backward must sum its adjoint over positions."""
    return mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A_log) * 0.1) @ x


CASES = [
    (diag_groups, dict(h=4, p=3, n=5, g=2), 8),
    (gated_linear, dict(p=5, n=3), 16),
    (decay_given, dict(h=3, p=4, n=6), 16),
    (two_structures, dict(h=4, p=3, n=5, g=2), 16),
    (shared_values, dict(h=2, p=4, n=3), 16),
    (diag_decay_given, dict(h=3, p=2, n=5), 8),
    (diag_mixed_leaves, dict(h=5, n=3), 8),
    (retnet_param_decay, dict(h=2, p=3, n=4), 16),
    (param_only_decay, dict(h=2, p=3, n=4), 16),
    (diag_param_only_decay, dict(h=3, n=4), 8),
]


@pytest.mark.parametrize("spec,dims,chunk", CASES, ids=[c[0].name for c in CASES])
def test_triton_matches_reference(spec, dims, chunk):
    (r,) = run_check(spec, dims, b=2, l=29, lowerings=["triton"], chunk_size=chunk)
    assert r.ok, r


def test_prologue_and_epilogue_are_in_the_kernels():
    src = mx.compile(shared_values, dims=dict(h=2, p=4, n=3), backend="triton").source("triton")
    prologue = src.split("-- hook: prologue", 1)[1].split("-- end hook", 1)[0]
    assert "_softplus(" in prologue and "tl.minimum(" in prologue and "tl.maximum(" in prologue
    epilogue = src.split("-- hook: epilogue", 1)[1].split("-- end hook", 1)[0]
    assert "_sigmoid(" in epilogue and "# spec: test_triton_fusion.py:" in epilogue
    mixer_fn = src.split("def mixer(", 1)[1]
    assert "softplus" in mixer_fn and "silu" not in mixer_fn  # delta is read by the epilogue: torch keeps it


def test_kernel_configs_can_be_listed_and_changed():
    m = mx.compile(decay_given, dims=dict(h=3, p=4, n=6), backend="triton", dtype=torch.float64)
    (cfg,) = m.kernel_configs()
    assert cfg["config"]["chunk"] == 64 and set(cfg["config"]) <= set(cfg["space"])
    g = torch.Generator().manual_seed(3)
    ins = dict(x=torch.randn(2, 41, 3, 4, generator=g, dtype=torch.float64),
               la=-torch.rand(2, 41, 3, generator=g, dtype=torch.float64),
               B=torch.randn(2, 41, 3, 6, generator=g, dtype=torch.float64),
               C=torch.randn(2, 41, 3, 6, generator=g, dtype=torch.float64))
    y64 = m(**ins)
    try:
        m.set_kernel_config(0, chunk=16, BS=256)
        assert m.kernel_configs()[0]["config"]["chunk"] == 16
        torch.testing.assert_close(m(**ins), y64, rtol=1e-12, atol=1e-12)
        with pytest.raises(mx.BackendError, match="outside its space"):
            m.set_kernel_config(0, chunk=24)
        with pytest.raises(mx.BackendError, match="unknown kernel config 'BQ'; tunable: chunk"):
            m.set_kernel_config(0, BQ=16)
        with pytest.raises(mx.BackendError, match="out of range"):
            m.set_kernel_config(1, chunk=16)
    finally:
        m.set_kernel_config(0, chunk=64, BS=1024)


def test_buffers_beyond_32_bit_indexing_are_refused():
    from mixerc.rt import triton as kernel_rt

    kernel_rt.check_indexable("k0_", states=2**31 - 1)  # the largest that fits
    with pytest.raises(mx.BackendError, match=r"k0_: one batch row of states \(2,147,483,648 elements\) is too "
                                              r"large .*32-bit.*split the sequence .* backend='chunked'"):
        kernel_rt.check_indexable("k0_", inputs=10, states=2**31)


def test_a_batch_row_past_32_bit_offsets_is_refused_before_any_launch():
    """Offsets are 64-bit across batch rows and 32-bit inside one: one row of 2^27 positions x 16
    values (stride-0 views, no memory) is refused with a typed error, not run with wrapped offsets."""
    m = mx.compile("mamba2", dims=dict(h=1, p=16, n=16, g=1), backend="triton")
    L = 2**27
    big = dict(x=torch.zeros(1, 1, 1, 16).expand(1, L, 1, 16), dt=torch.zeros(1, 1, 1).expand(1, L, 1),
               B=torch.zeros(1, 1, 1, 16).expand(1, L, 1, 16), C=torch.zeros(1, 1, 1, 16).expand(1, L, 1, 16))
    with pytest.raises(mx.BackendError, match="one batch row of outputs .* split the sequence"):
        m(**big)


def test_plan_shows_the_triton_chunk():
    m = mx.compile(decay_given, dims=dict(h=3, p=4, n=6), backend="triton", chunk_size=32)
    assert "-> triton, chunk 32" in str(m.plan)


def test_torch_compile_with_dynamic_shapes():
    """The fake implementations work with symbolic b and l: one graph serves two shapes."""
    m = mx.compile(gated_linear, dims=dict(p=5, n=3), backend="triton", dtype=torch.float64)
    fn = torch.compile(lambda x, B, C, z: m(x=x, B=B, C=C, z=z).sum(), fullgraph=True, dynamic=True,
                       backend="aot_eager")
    g = torch.Generator().manual_seed(5)
    for b, l in [(1, 20), (2, 37)]:
        args = [torch.randn(b, l, d, generator=g, dtype=torch.float64, requires_grad=True) for d in (5, 3, 3, 5)]
        out = fn(*args)
        grads = torch.autograd.grad(out, args)
        ref = m(x=args[0], B=args[1], C=args[2], z=args[3]).sum()
        torch.testing.assert_close(out, ref)
        for a, r in zip(grads, torch.autograd.grad(ref, args)):
            torch.testing.assert_close(a, r)
