"""The quasiseparable structure (Hydra): its decomposition checked symbolically, every lowering
against two independent references (fp64, forward and backward), materialize, and its errors."""

from __future__ import annotations

import pytest
import sympy
import torch

import mixerc as mx
from mixerc.ir import STRUCTURES
from mixerc.ir.dims import symbol
from mixerc.settings import settings

from ref import assert_close
from ref.hydra import hydra_doubled, hydra_elementwise

DIMS = dict(h=4, p=3, n=5, g=2)
TRITON = bool(settings().triton_interpret)  # the interpreter lane (tests/conftest.py)
LOWERINGS = ["reference", "recurrent", "chunked"] + ["triton"] * TRITON


def chunk(lowering):
    return 16 if lowering == "triton" else 8  # triton: powers of two from 16


def inputs(m, b, l, seed=0, dt_shift=0.0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in m.ir.inputs:
        shape = [b if d == "b" else l if d == "l" else m.sizes[d] for d in m.ir.node(name).dims]
        out[name] = torch.randn(*shape, generator=g, dtype=torch.float64)
        if name.startswith("dt"):
            out[name] = out[name] + dt_shift
    return out


def params(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g, dtype=torch.float64) * 0.5) for k, v in m.named_parameters()}


def grads(m, ins, seq_idx=None):
    ins = {k: v.clone().requires_grad_(True) for k, v in ins.items()}
    y = m(**ins, seq_idx=seq_idx)
    w = torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)
    leaves = list(ins.values()) + list(m.parameters())
    return y.detach(), _zeros_for_unused(torch.autograd.grad((y * w).sum(), leaves, allow_unused=True), leaves)


def _zeros_for_unused(gs, leaves):  # l = 1: nothing reads B, C or dt
    return [torch.zeros_like(x) if gr is None else gr for gr, x in zip(gs, leaves)]


def ref_grads(fn, ins, prm, seq_idx=None):
    ins = {k: v.clone().requires_grad_(True) for k, v in ins.items()}
    prm = {k: v.clone().requires_grad_(True) for k, v in prm.items()}
    y = fn(**ins, **prm, **({"seq_idx": seq_idx} if seq_idx is not None else {}))
    w = torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)
    leaves = list(ins.values()) + list(prm.values())
    return y.detach(), _zeros_for_unused(torch.autograd.grad((y * w).sum(), leaves, allow_unused=True), leaves)


@pytest.mark.parametrize("l", [1, 2, 13, 37])
@pytest.mark.parametrize("lowering", LOWERINGS)
def test_hydra_matches_the_upstream_procedure(lowering, l):
    m = mx.compile("hydra", dims=DIMS, backend=lowering, dtype=torch.float64, chunk_size=chunk(lowering))
    prm = params(m)
    m.load_state_dict(prm)
    ins = inputs(m, 2, l)
    y, g = grads(m, ins)
    y_ref, g_ref = ref_grads(hydra_doubled, ins, prm)
    assert_close("y", y_ref, y)
    for name, a, r in zip(list(ins) + list(prm), g, g_ref):
        assert_close(f"d{name}", r, a)


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_hydra_segments_match_the_elementwise_matrix(lowering):
    """seq_idx: no entry links two segments (upstream's doubled batch cannot, docs/quasiseparable.md#segments)."""
    m = mx.compile("hydra", dims=DIMS, backend=lowering, dtype=torch.float64, chunk_size=chunk(lowering))
    prm = params(m, 3)
    m.load_state_dict(prm)
    l = 29
    ins = inputs(m, 2, l, seed=4)
    seq = torch.zeros(2, l, dtype=torch.long)
    seq[0, 7:] = 1
    seq[0, 16:] = 2  # a boundary inside a chunk and one on a chunk edge
    seq[1, 8:] = 5
    y, g = grads(m, ins, seq)
    y_ref, g_ref = ref_grads(hydra_elementwise, ins, prm, seq)
    assert_close("y", y_ref, y)
    for name, a, r in zip(list(ins) + list(prm), g, g_ref):
        assert_close(f"d{name}", r, a)


def test_hydra_large_decays_stay_finite():
    """dt + 8: decays of e^-3000 across a chunk; every lowering stays finite and agrees. The
    reference forms the A_log gradient from differences of cumulative log-decays of size ~1e3, so
    gradients are judged against the largest gradient (as EXTREME_GLOBALLY_SCALED in
    test_lowerings.py)."""
    outs = {}
    for low in LOWERINGS:
        m = mx.compile("hydra", dims=DIMS, backend=low, dtype=torch.float64, chunk_size=chunk(low))
        m.load_state_dict({**params(m), "A_log": torch.full((4,), 1.0, dtype=torch.float64)})
        outs[low] = grads(m, inputs(m, 1, 40, seed=5, dt_shift=8.0))
    for low in LOWERINGS[1:]:
        assert_close(f"{low} y", outs["reference"][0], outs[low][0])
        top = max(float(r.abs().max()) for r in outs["reference"][1])
        for k, (a, r) in enumerate(zip(outs[low][1], outs["reference"][1])):
            assert_close(f"{low} grad {k}", r, a, atol=1e-9 * top)


# -- other layouts: diagonal decay, no decay, no scale, no diagonal, one group ---------------------


@mx.spec
def qs_diagonal(x: mx.Seq("b l h p"), a: mx.Seq("b l h n"), ab: mx.Seq("b l h n"), B: mx.Seq("b l n"),
                C: mx.Seq("b l n"), Bb: mx.Seq("b l n"), Cb: mx.Seq("b l n"), d: mx.Seq("b l h p"),
                s: mx.Seq("b l"), sb: mx.Seq("b l")):
    M = mx.quasiseparable(C=C, B=B, log_decay=-mx.softplus(a), scale=s, C_bwd=Cb, B_bwd=Bb,
                          log_decay_bwd=-mx.softplus(ab), scale_bwd=sb, diag=d)
    return M @ x


@mx.spec
def qs_plain(x: mx.Seq("b l h"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"), Bb: mx.Seq("b l h n"),
             Cb: mx.Seq("b l h n"), s: mx.Seq("b l"), sb: mx.Seq("b l")):
    return mx.quasiseparable(C=C, B=B, scale=s, C_bwd=Cb, B_bwd=Bb, scale_bwd=sb) @ x


@pytest.mark.parametrize("spec, dims", [(qs_diagonal, dict(h=3, p=2, n=4)), (qs_plain, dict(h=2, n=3))],
                         ids=["diagonal", "no-decay"])
def test_other_layouts_against_the_reference(spec, dims):
    ref = mx.compile(spec, dims=dims, backend="reference", dtype=torch.float64)
    ins = inputs(ref, 2, 21, seed=6)
    seq = torch.zeros(2, 21, dtype=torch.long)
    seq[:, 9:] = 1
    M = ref.materialize(**{k: v for k, v in ins.items()}) if spec is qs_plain else None
    for seg in (None, seq):
        y_ref, g_ref = grads(ref, ins, seg)
        for low in ["recurrent", "chunked"] + ["triton"] * (TRITON and spec is qs_plain):
            m = mx.compile(spec, dims=dims, backend=low, dtype=torch.float64, chunk_size=16 if low == "triton" else 4)
            y, g = grads(m, ins, seg)
            assert_close(f"{low} y", y_ref, y)
            for k, (a, r) in enumerate(zip(g, g_ref)):
                assert_close(f"{low} grad {k}", r, a)
    if M is not None:  # no diagonal, no decay: the entries are C_{i-1}.B_j s_j below, C'_{i+1}.B'_j s'_j above
        x, B, C, Bb, Cb, s, sb = (ins[k] for k in ("x", "B", "C", "Bb", "Cb", "s", "sb"))
        i, j = 5, 2
        assert M[1, 0, i, j].item() == pytest.approx((C[1, i - 1, 0] @ B[1, j, 0]).item() * s[1, j].item())
        assert M[1, 0, j, i].item() == pytest.approx((Cb[1, j + 1, 0] @ Bb[1, i, 0]).item() * sb[1, i].item())
        assert M[1, 0, i, i].item() == 0


def test_materialize_is_the_hydra_matrix():
    m = mx.compile("hydra", dims=DIMS, dtype=torch.float64)
    prm = params(m, 7)
    m.load_state_dict(prm)
    ins = inputs(m, 2, 11, seed=8)
    M = m.materialize(**ins)
    assert M.shape == (2, 4, 11, 11)
    y = torch.einsum("bhij,bjhp->bihp", M, ins["x"])
    assert_close("M x", hydra_elementwise(**ins, **prm), y)
    torch.testing.assert_close(torch.diagonal(M, dim1=-2, dim2=-1), (prm["D"] + ins["delta"]).transpose(1, 2))
    # the mamba2 spec: M of the structure itself, C_i . B_j exp(...) on and below the diagonal
    m2 = mx.compile("mamba2", dims=DIMS, dtype=torch.float64)
    ins2 = inputs(m2, 1, 6)
    M2 = m2.materialize(**ins2)
    assert M2.shape == (1, 4, 6, 6) and torch.all(M2.triu(1) == 0)


# -- the triton lowering (interpreter lane) ---------------------------------------------------------


@pytest.mark.skipif(not TRITON, reason="the triton lowering runs in the interpreter lane")
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 2e-5), (torch.float16, 2e-2)], ids=["fp32", "fp16"])
def test_triton_low_precision_inputs(dtype, rtol):
    """fp32 / fp16 inputs (tl.dot operands in the input dtype, fp32 accumulation) against fp64."""
    ref = mx.compile("hydra", dims=dict(h=2, p=16, n=16, g=1), backend="reference", dtype=torch.float64)
    tri = mx.compile("hydra", dims=dict(h=2, p=16, n=16, g=1), backend="triton", chunk_size=16)
    prm = params(ref, 9)
    ref.load_state_dict(prm)
    ins = inputs(ref, 2, 40, seed=10)
    y = tri(**{k: v.to(dtype) for k, v in ins.items()}, params={k: v.float() for k, v in prm.items()})
    assert y.dtype == dtype
    assert_close("y", ref(**ins), y.double(), rtol=rtol)


@pytest.mark.skipif(not TRITON, reason="the triton lowering runs in the interpreter lane")
def test_triton_refuses_a_diagonal_decay():
    with pytest.raises(mx.BackendError, match="scalar decay per head or none.*use backend='chunked'"):
        mx.compile(qs_diagonal, dims=dict(h=2, p=2, n=4), backend="triton", chunk_size=16)


# -- the symbolic decomposition ------------------------------------------------------------------


@pytest.mark.parametrize("decay", ["scalar", "diagonal"])
def test_formula_is_shift_ss_plus_flipped_shift_ss_plus_diag(decay):
    """Quasiseparable.formula == shift(SS_f) + flip shift(SS_b) flip + diag entry by entry, with
    SS from Semiseparable.formula, symbolically at L = 4, N = 2."""
    L, N = 4, 2
    spec = mx.load_spec("hydra") if decay == "scalar" else qs_diagonal
    dims = dict(h=2, p=1, n=N, g=1) if decay == "scalar" else dict(h=2, p=1, n=N)
    lay = mx.trace(spec, dims)[1].nodes_of("apply")[0].attrs["layout"]
    qs = STRUCTURES["quasiseparable"].formula(lay)
    ss = STRUCTURES["semiseparable"].formula(lay)
    i, j = sympy.symbols("i j", integer=True)
    n = symbol("n")
    C, B, a, w = (sympy.IndexedBase(s) for s in ("C", "B", "a", "w"))
    Cb, Bb, ab, wb, d = (sympy.IndexedBase(s) for s in ("Cb", "Bb", "ab", "wb", "d"))
    has_scale = lay["scale_dims"] is not None

    def SS(ii, jj, flipped):
        """SS[ii, jj] (ii >= jj) of the forward generators, or of the backward ones on the reversed
        sequence (position u of the reversed sequence is L-1-u)."""
        e = ss.subs({i: ii, j: jj, n: N}).doit()
        if flipped:
            r = lambda t: L - 1 - t  # noqa: E731
            e = e.replace(lambda x: isinstance(x, sympy.Indexed),
                          lambda x: {C: Cb, B: Bb, a: ab}[x.base][(r(x.indices[0]),) + x.indices[1:]])
            return e * (wb[r(jj)] if has_scale else 1)
        return e * (w[jj] if has_scale else 1)

    for ii in range(L):
        for jj in range(L):
            got = qs.subs({i: ii, j: jj, n: N}).doit()
            lower = SS(ii - 1, jj, False) if ii >= 1 and ii - 1 >= jj else 0
            # flip . shift(SS') . flip at (ii, jj) = shift(SS')[L-1-ii, L-1-jj] = SS'[L-2-ii, L-1-jj]
            u, v = L - 2 - ii, L - 1 - jj
            upper = SS(u, v, True) if u >= 0 and u >= v else 0
            diag = (d[ii] if lay["diag_dims"] else 0) if ii == jj else 0
            assert sympy.simplify(sympy.expand(got - (lower + upper + diag))) == 0, (ii, jj, got)


# -- errors and the non-causal contract ------------------------------------------------------------


def test_one_direction_only_is_a_spec_error():
    @mx.spec
    def half(x: mx.Seq("b l h p"), a: mx.Seq("b l h"), B: mx.Seq("b l n"), C: mx.Seq("b l n")):
        return mx.quasiseparable(C=C, B=B, log_decay=a, C_bwd=C, B_bwd=B) @ x

    with pytest.raises(mx.SpecError, match="log_decay is given but log_decay_bwd is not"):
        mx.compile(half, dims=dict(h=2, p=2, n=2))


def test_mismatched_directions_and_bad_scale_are_spec_errors():
    @mx.spec
    def mixed(x: mx.Seq("b l h p"), B: mx.Seq("b l n"), C: mx.Seq("b l n"), Bh: mx.Seq("b l h n")):
        return mx.quasiseparable(C=C, B=B, C_bwd=Bh, B_bwd=Bh) @ x

    with pytest.raises(mx.SpecError, match="C has dims .* but C_bwd"):
        mx.compile(mixed, dims=dict(h=2, p=2, n=2))

    @mx.spec
    def badscale(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"), s: mx.Seq("b l h p")):
        return mx.quasiseparable(C=C, B=B, C_bwd=C, B_bwd=B, scale=s, scale_bwd=s) @ x

    with pytest.raises(mx.SpecError, match="scale has dims"):
        mx.compile(badscale, dims=dict(h=2, p=2, n=2))


def test_no_step_and_no_initial_state():
    m = mx.compile("hydra", dims=DIMS, dtype=torch.float64)
    ins = inputs(m, 2, 5)
    y, fin = m(**ins, return_final_state=True)
    assert fin is None and m.init_state(2) is None
    with pytest.raises(mx.BackendError, match="has no step: its quasiseparable matrix is not causal"):
        m.step(None, **{k: v[:, 0] for k, v in ins.items()})
    with pytest.raises(mx.InputError, match="no recurrent state"):
        m(**ins, initial_state=torch.zeros(2, 4, 3, 5))


def test_check_passes_for_hydra():
    from mixerc.check import run_check

    for r in run_check("hydra", DIMS, l=23):
        assert r.ok, r
