"""The ``scan`` lowering: the semiseparable token loop as fused C loops on the CPU (forward, and the adjoint as
its backward), checked against `recurrent` and `reference` in fp64, values and every gradient; its fallback to
`chunked`; the quasiseparable scan (two of them); what a mixer's ``auto`` runs on the CPU."""

from __future__ import annotations

import itertools
import subprocess

import pytest
import torch

import mixerc as mx
from mixerc.check import random_inputs
from mixerc.codegen.structures.quasiseparable import torch_lowering as qs
from mixerc.codegen.structures.semiseparable import native
from mixerc.codegen.structures.semiseparable import torch_lowering as ss
from mixerc.rt import native as rt_native

NEEDS_CC = pytest.mark.skipif(rt_native.compiler() is None, reason="no C compiler: the fused loops cannot be built")
F64 = torch.float64


def make(b=2, l=37, H=4, P=3, N=5, G=2, decay="scalar", segments=False, init=True, scale=True, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    a = dict(x=rnd(b, l, H, P), B=rnd(b, l, G, N), C=rnd(b, l, G, N), log_a=None, initial_state=None,
             x_scale=None, seq_idx=None)
    if decay == "scalar":
        a["log_a"] = -torch.rand(b, l, H, generator=g, dtype=dtype)
    elif decay == "diagonal":
        a["log_a"] = -torch.rand(b, l, H, N, generator=g, dtype=dtype)
    if init:
        a["initial_state"] = rnd(b, H, P, N)
    if scale:
        a["x_scale"] = torch.rand(b, l, H, generator=g, dtype=dtype) + 0.5
    if segments:  # row 0: three segments (one starts at a strip boundary), row 1: one
        ids = torch.zeros(b, l, dtype=torch.long)
        ids[0, 10:] = 1
        ids[0, min(32, l - 1):] = 2
        a["seq_idx"] = ids
    return a


FLOATS = ("x", "B", "C", "log_a", "initial_state", "x_scale")
LEAVES = FLOATS + ("skip",)  # with a skip term's D (`plus_skip`)


def outputs_and_grads(fn, a, want=FLOATS, use_final=True, **kw):
    """(y, final state, gradients of every input named in ``want`` that is given) of a weighted loss."""
    leaves = {k: (t.detach().clone().requires_grad_(k in want) if k in LEAVES and t is not None else t)
              for k, t in a.items()}
    extra = {"skip": leaves["skip"]} if a.get("skip") is not None else {}
    y, final = fn(leaves["x"], leaves["B"], leaves["C"], leaves["log_a"], leaves["initial_state"], leaves["seq_idx"],
                  x_scale=leaves["x_scale"], **extra, **kw)
    g = torch.Generator().manual_seed(1)  # the weights drawn in fp64 whatever the dtype: the same numbers

    def weights(t):
        return torch.randn(t.shape, generator=g, dtype=F64).to(t.dtype)

    loss = (y * weights(y)).sum()
    if use_final:
        loss = loss + (final * weights(final)).sum()
    inputs = [leaves[k] for k in want if leaves.get(k) is not None]
    return [y, final] + list(torch.autograd.grad(loss, inputs))


def spy(monkeypatch):
    """A list recording every result of `native.run` (None: the kernels could not be built)."""
    calls, real = [], native.run
    monkeypatch.setattr(native, "run", lambda *args: calls.append(real(*args)) or calls[-1])
    return calls


def assert_close(got, want, tol=1e-12, what=""):
    for i, (a, b) in enumerate(zip(got, want)):
        err = float((a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1e-300))
        assert err < tol, f"{what}: output {i} differs by {err:.1e}"


@NEEDS_CC
@pytest.mark.parametrize("decay,segments,init,scale", list(itertools.product(
    ("none", "scalar", "diagonal"), (False, True), (False, True), (False, True))))
def test_scan_equals_the_token_loop_values_and_every_gradient(monkeypatch, decay, segments, init, scale):
    a = make(decay=decay, segments=segments, init=init, scale=scale)
    calls = spy(monkeypatch)
    got = outputs_and_grads(ss.scan, a)
    assert calls and calls[0] is not None, "the fused loops did not run"
    assert_close(got, outputs_and_grads(ss.recurrent, a), what=f"{decay} segments={segments}")


@NEEDS_CC
@pytest.mark.parametrize("l", [1, 2, 8, 9, 31, 32, 33, 65, 100])
@pytest.mark.parametrize("P,N,dtype", [(1, 16, F64), (3, 5, F64), (8, 1, F64), (17, 9, torch.float32)])
def test_scan_at_checkpoint_and_vector_boundaries(monkeypatch, l, P, N, dtype):
    """Lengths around the decay gradient's checkpoints (every `CHECKPOINT`, 32 here) and the prefetch distance
    (8); P odd and even (the adjoint takes rows four at a time, then pairs, then one), N off the vector width
    (the backward pads N to two vectors); fp32 against the fp64 loop."""
    monkeypatch.setattr(native, "CHECKPOINT", 32)
    a = make(b=2, l=l, H=2, P=P, N=N, G=1, decay="diagonal", segments=l > 32, dtype=dtype)
    got = outputs_and_grads(ss.scan, a)
    want = outputs_and_grads(ss.recurrent, {k: (t.double() if t is not None and t.is_floating_point() else t)
                                           for k, t in a.items()})
    assert_close([t.double() for t in got], want, 1e-12 if dtype == F64 else 2e-5, what=f"l={l} P={P} N={N}")


@NEEDS_CC
@pytest.mark.parametrize("N,dtype", [(40, F64), (64, F64), (64, torch.float32), (80, torch.float32),
                                     (130, torch.float32)])
@pytest.mark.parametrize("decay", ["scalar", "diagonal"])
def test_scan_across_the_second_sweeps_strips(monkeypatch, N, dtype, decay):
    """State sizes that fill the dC sweep's wide strips (8 vectors with AVX-512, else 4) exactly, with a
    narrower strip left over, and with a padded one: fp64 and fp32 against the fp64 loop, every gradient."""
    monkeypatch.setattr(native, "CHECKPOINT", 32)
    a = make(b=2, l=41, H=2, P=3, N=N, G=1, decay=decay, segments=True, dtype=dtype)
    calls = spy(monkeypatch)
    got = outputs_and_grads(ss.scan, a)
    assert calls and calls[0] is not None, "the fused loops did not run"
    want = outputs_and_grads(ss.recurrent, {k: (t.double() if t is not None and t.is_floating_point() else t)
                                           for k, t in a.items()})
    assert_close([t.double() for t in got], want, 1e-12 if dtype == F64 else 2e-5, what=f"N={N} {decay}")


@NEEDS_CC
@pytest.mark.parametrize("P,dtype", [(8, F64), (11, F64), (16, torch.float32), (19, torch.float32)])
@pytest.mark.parametrize("skip", [None, "head", "value"])
def test_scan_forms_dx_a_vector_of_rows_at_a_time(monkeypatch, P, dtype, skip):
    """The adjoint adds du's sums up for a vector of rows at once (4 in fp64, 8 in fp32), the rows left over one
    by one: values P around the vector width, x a strided view, with and without a skip term per head or per
    value; y's gradient reaching the loops as a strided view too; fp64 and fp32 against the fp64 token loop plus
    the term, every gradient."""
    monkeypatch.setattr(native, "CHECKPOINT", 32)
    a = make(b=2, l=23, H=2, P=P, N=9, G=1, decay="scalar", segments=True, dtype=dtype)
    if skip:
        a["skip"] = torch.randn(1, 1, 2, P if skip == "value" else 1, generator=torch.Generator().manual_seed(3),
                                dtype=dtype)

    class StridedGradient(torch.autograd.Function):  # y as it is; its gradient as every other element: stride 2
        @staticmethod
        def forward(ctx, y):
            return y.view_as(y)

        @staticmethod
        def backward(ctx, dy):
            return torch.stack([dy, dy], -1)[..., 0]

    def strided(fn):  # x as every other element of a row twice its width: stride 2
        def run(x, *args, **kw):
            y, final = fn(torch.stack([x, x], -1).flatten(-2)[..., ::2], *args, **kw)
            return StridedGradient.apply(y), final
        return run

    calls = spy(monkeypatch)
    got = outputs_and_grads(strided(ss.scan), a)
    assert calls and calls[0] is not None, "the fused loops did not run"
    want = outputs_and_grads(strided(plus_skip(ss.recurrent) if skip else ss.recurrent),
                             {k: (t.double() if t is not None and t.is_floating_point() else t) for k, t in a.items()})
    assert_close([t.double() for t in got], want, 1e-12 if dtype == F64 else 2e-5, what=f"P={P} skip={skip}")


@NEEDS_CC
@pytest.mark.parametrize("l", [63, 64, 65, 129, 200])
@pytest.mark.parametrize("regime", ["mild", "strong", "growing", "mixed"])
def test_a_per_head_decay_kept_apart_from_the_state_in_stretches(monkeypatch, l, regime):
    """A per-head factor is multiplied into the state only where a stretch ends (every 64 positions, every
    checkpoint, and before the running product leaves [2^-20, 2^20]): strong decays end stretches after a few
    positions, growing ones on the upper bound, a mixed walk on both; segments end them with f = 0. fp64 against
    the token loop, values and every gradient, with the checkpoints (40 here) off the stretches."""
    monkeypatch.setattr(native, "CHECKPOINT", 40)
    a = make(b=2, l=l, H=2, P=5, N=6, G=1, decay="scalar", segments=True)
    u = torch.rand(a["log_a"].shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    a["log_a"] = {"mild": -0.1 * u, "strong": -1 - 2 * u, "growing": 0.5 + 0.4 * u, "mixed": 8 * u - 4}[regime]
    calls = spy(monkeypatch)
    got = outputs_and_grads(ss.scan, a)
    assert calls and calls[0] is not None, "the fused loops did not run"
    assert_close(got, outputs_and_grads(ss.recurrent, a), what=f"{regime} l={l}")


@NEEDS_CC
def test_a_per_head_decay_in_fp32_stays_finite_for_large_values():
    """The stretches scale the rows by up to 2^20: values of 1e27 (inf within a stretch when the bound was 2^40, a
    review's find) stay finite in fp32 and match the fp64 token loop, values and every gradient."""
    a = make(b=1, l=140, H=1, P=4, N=4, G=1, decay="scalar", init=False, scale=False)
    a["x"] = a["x"] * 1e27
    a["log_a"] = torch.full_like(a["log_a"], -3.0)
    want = outputs_and_grads(ss.recurrent, a)
    got = outputs_and_grads(ss.scan, {k: (t.float() if t is not None and t.is_floating_point() else t)
                                      for k, t in a.items()})
    assert all(bool(t.isfinite().all()) for t in got), "an output or gradient is not finite"
    assert_close([t.double() for t in got], want, 2e-5, what="fp32, values of 1e27")


@NEEDS_CC
def test_a_strong_per_head_decay_in_fp32_keeps_its_precision():
    """fp32 with stretches ended on the lower bound mid-way (log-decays down to -3): against fp64, values and every
    gradient."""
    a = make(b=1, l=300, H=2, P=16, N=16, G=1, decay="scalar")
    a["log_a"] = -3 * torch.rand(a["log_a"].shape, generator=torch.Generator().manual_seed(4), dtype=F64)
    want = outputs_and_grads(ss.recurrent, a)
    got = outputs_and_grads(ss.scan, {k: (t.float() if t is not None and t.is_floating_point() else t)
                                      for k, t in a.items()})
    assert_close([t.double() for t in got], want, 2e-5, what="fp32, strong per-head decay")


@NEEDS_CC
def test_scan_against_the_materialised_matrix():
    a = make(decay="scalar", segments=True, init=False)
    assert_close(outputs_and_grads(ss.scan, a), outputs_and_grads(ss.reference, a), what="reference")


@NEEDS_CC
@pytest.mark.parametrize("want,use_final", [(("x",), False), (("B", "log_a"), True), (("initial_state",), True),
                                            (("x_scale", "C"), False), ((), True)])
def test_scan_gradient_of_part_of_the_inputs_and_outputs(want, use_final):
    """Some inputs requiring grad, the final state unused (its gradient None), broadcast and strided inputs."""
    a = make(decay="scalar", segments=True)
    a["x"] = a["x"].transpose(2, 3).contiguous().transpose(2, 3)  # strided along p
    a["B"] = a["B"][:1].expand(2, -1, -1, -1)  # broadcast along b
    a["log_a"] = a["log_a"][:, :, :1]  # one decay for every head
    a["initial_state"] = a["initial_state"][:1]
    if not want:
        with torch.no_grad():
            assert_close(ss.scan(**a), ss.recurrent(**a), what="no grad")
        return
    assert_close(outputs_and_grads(ss.scan, a, want, use_final), outputs_and_grads(ss.recurrent, a, want, use_final),
                 what=str(want))


@NEEDS_CC
def plus_skip(fn):
    """``fn`` (a lowering without a skip term), then ``y + D x`` in torch: the reference of a fused skip."""
    def run(x, B, C, log_a, initial_state, seq_idx, x_scale=None, skip=None):
        y, final = fn(x, B, C, log_a, initial_state, seq_idx, x_scale=x_scale)
        return y + skip * x, final
    return run


@NEEDS_CC
@pytest.mark.parametrize("decay,per_value,want,l", [
    ("scalar", False, LEAVES, 37), ("diagonal", True, LEAVES, 37), ("none", False, ("skip",), 9),
    ("scalar", True, ("x",), 9), ("scalar", False, ("B", "skip"), 70)])
def test_scan_adds_a_skip_term_in_its_loops(monkeypatch, decay, per_value, want, l):
    """``y + D x`` (Mamba's skip, D per head or per head and value) added by the C loops, its gradients (dx
    gains D dy, dD = sum of dy x) against the token loop plus the term in torch, in fp64, with segments and some
    inputs only requiring grad; and where the loops cannot run, `chunked` then the term."""
    monkeypatch.setattr(native, "CHECKPOINT", 32)
    a = make(l=l, decay=decay, segments=True)
    H, P = a["x"].shape[2:]
    a["skip"] = torch.randn(1, 1, H, P if per_value else 1, generator=torch.Generator().manual_seed(3), dtype=F64)
    want_ = outputs_and_grads(plus_skip(ss.recurrent), a, want)
    calls = spy(monkeypatch)
    assert_close(outputs_and_grads(ss.scan, a, want), want_, what=f"{decay} per_value={per_value} {want}")
    assert calls and calls[0] is not None, "the fused loops did not run"
    with torch.no_grad():
        assert_close(ss.scan(**a), want_[:2], what="no grad")
    calls.clear()
    varying = dict(a, skip=a["skip"].expand(1, l, H, -1).contiguous())  # a term over l: chunked, then the term
    assert_close(outputs_and_grads(ss.scan, varying, want), outputs_and_grads(plus_skip(ss.recurrent), varying, want),
                 what="a skip over l")
    assert calls == [], "the loops take a skip term constant over b and l only"
    monkeypatch.setattr(native, "run", lambda *args: None)  # no kernels: chunked, then the term
    assert_close(outputs_and_grads(ss.scan, a, want), want_, what="chunked")


@NEEDS_CC
def test_the_writer_fuses_the_skip_term_into_scan_only_where_it_may():
    """``M @ v + D * x`` becomes ``scan(..., skip=D)`` when the product and the apply are used only there and
    ``x`` is what the structure reads; elsewhere (another lowering, the product reused, another tensor) the
    addcmul stays. Values and every gradient equal the reference's in fp64."""
    def emitted(spec, backend="scan"):  # the generated mixer function (the lowerings' copies follow it)
        return mx.compile(spec, dims=dict(h=2, p=3, n=4, g=1), backend=backend).source().split("def mixer(")[1]

    assert "skip=" in emitted("mamba2") and "addcmul" not in emitted("mamba2")
    assert "skip=" not in emitted("mamba2", "chunked") and "addcmul" in emitted("mamba2", "chunked")

    @mx.spec
    def reused(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n"),
               D: mx.Param("h", init=1.0)):
        M = mx.semiseparable(C=C, B=B, log_decay=-mx.softplus(dt))
        skip = D * x
        return M @ x + skip + skip * skip

    @mx.spec
    def other(x: mx.Seq("b l h p"), z: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l g n"),
              C: mx.Seq("b l g n"), D: mx.Param("h", init=1.0)):
        M = mx.semiseparable(C=C, B=B, log_decay=-mx.softplus(dt))
        return M @ x + D * z

    @mx.spec
    def later(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n"),
              D_log: mx.Param("h", init=0.0)):
        M = mx.semiseparable(C=C, B=B, log_decay=-mx.softplus(dt))
        y = M @ (x * mx.softplus(dt))
        return y + mx.exp(D_log) * x  # D computed after the apply: the call could not read it

    for spec in (reused, other, later):
        assert "skip=" not in emitted(spec), spec.name
    g = torch.Generator().manual_seed(6)
    for spec, dims in (("mamba2", dict(h=2, p=3, n=4, g=1)), ("mamba", dict(d=3, n=4)), (reused, None),
                       (later, None)):
        dims = dims or dict(h=2, p=3, n=4, g=1)
        m = mx.compile(spec, dims=dims, dtype=F64, backend="scan")
        with torch.no_grad():  # D differs per head: a term broadcast along the wrong axis would show
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        ref = mx.compile(spec, dims=dims, dtype=F64, backend="reference")
        ref.load_state_dict(m.state_dict())
        ins = random_inputs(m, 2, 21, torch.Generator().manual_seed(5), dtype=F64)
        out = []
        for mixer in (m, ref):
            mixer.zero_grad()
            leaves = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in ins.items()}
            y = mixer(**leaves)
            y.pow(2).sum().backward()
            out.append([y] + [v.grad for v in leaves.values() if v.requires_grad]
                       + [p.grad for p in mixer.parameters()])
        assert_close(*out, 1e-11, what=str(spec))


@NEEDS_CC
def test_scan_backward_is_once_differentiable():
    a = make()
    x = a["x"].requires_grad_()
    y, _ = ss.scan(x, a["B"], a["C"], a["log_a"])
    (gx,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


def test_where_the_fused_loops_cannot_run_scan_is_chunked(monkeypatch):
    """Half precision, forward-mode tangents, traces and empty inputs go to `chunked` (same numbers); the
    kernels are never asked for."""
    a = make(l=9)
    calls = spy(monkeypatch)
    with torch.no_grad():
        half = {k: (t.bfloat16() if t is not None and t.is_floating_point() else t) for k, t in a.items()}
        ss.scan(**half)
        ss.scan(**dict(a, x=a["x"][:, :0], B=a["B"][:, :0], C=a["C"][:, :0], log_a=a["log_a"][:, :0],
                       x_scale=a["x_scale"][:, :0]))
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(a["x"], torch.ones_like(a["x"]))
        y, _ = ss.scan(**dict(a, x=dual))
        assert torch.autograd.forward_ad.unpack_dual(y).tangent is not None
    monkeypatch.setattr(torch._C, "_is_tracing", lambda: True)
    with torch.no_grad():
        assert_close(ss.scan(**a), ss.chunked(**a), what="traced")
    assert calls == []


def test_no_c_compiler_warns_once_and_runs_chunked(monkeypatch):
    monkeypatch.setattr(rt_native, "_LIBS", {})
    monkeypatch.setattr(rt_native, "_WARNED", set())
    monkeypatch.setattr(rt_native, "compiler", lambda: None)
    a = make(l=9)
    calls = spy(monkeypatch)
    with pytest.warns(rt_native.NativeWarning, match="no C compiler found .* fused CPU kernel scan .* install gcc"):
        got = outputs_and_grads(ss.scan, a)
    assert calls == [None]
    assert_close(got, outputs_and_grads(ss.recurrent, a), what="chunked without a compiler")


@NEEDS_CC
@pytest.mark.parametrize("decay", ["none", "scalar", "diagonal"])
@pytest.mark.parametrize("segments", [False, True])
def test_quasiseparable_scan_equals_its_token_loops(monkeypatch, decay, segments):
    """Two fused scans (one on the reversed sequence) with their own coefficients, and the diagonal."""
    f, r = make(decay=decay, segments=segments, init=False, seed=2), make(decay=decay, init=False, seed=3)
    ins = dict(x=f["x"], B=f["B"], C=f["C"], log_a=f["log_a"], scale=f["x_scale"], B_bwd=r["B"], C_bwd=r["C"],
               log_a_bwd=r["log_a"], scale_bwd=r["x_scale"], diag=torch.rand(4, 1, dtype=F64), seq_idx=f["seq_idx"])
    calls = spy(monkeypatch)
    out = {}
    for fn in (qs.scan, qs.recurrent):
        leaves = {k: (t.detach().clone().requires_grad_() if k != "seq_idx" and t is not None else t)
                  for k, t in ins.items()}
        y, _ = fn(**leaves)
        names = [k for k, t in leaves.items() if t is not None and k != "seq_idx"]
        out[fn] = [y] + list(torch.autograd.grad(y.square().sum(), [leaves[k] for k in names]))
    assert len(calls) == 2 and None not in calls
    assert_close(out[qs.scan], out[qs.recurrent], what=f"quasiseparable {decay}")


@NEEDS_CC
@pytest.mark.parametrize("spec,dims", [("mamba2", dict(h=4, p=8, n=8, g=2)), ("mamba", dict(d=6, n=4)),
                                       ("hydra", dict(h=2, p=4, n=4, g=1))])
def test_auto_on_the_cpu_runs_the_fused_scan_and_matches_the_reference(spec, dims):
    """``auto`` plans ``scan``; with the parameters' gradients against the reference lowering in fp64."""
    m = mx.compile(spec, dims=dims, dtype=F64)
    assert {s.lowering for s in m.plan.structures} == {"scan"}
    ref = mx.compile(spec, dims=dims, dtype=F64, backend="reference")
    ref.load_state_dict(m.state_dict())
    ins = random_inputs(m, 2, 23, torch.Generator().manual_seed(4), dtype=F64)
    grads = {}
    for mixer in (m, ref):
        leaves = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in ins.items()}
        y = mixer(**leaves)
        params = list(mixer.parameters())
        floats = [v for v in leaves.values() if v.requires_grad]
        grads[mixer] = [y] + list(torch.autograd.grad(y.square().sum(), floats + params))
        if mixer is m:  # the generated module's copy of `native.Fused` is in the graph: the fused loops ran
            assert "FusedBackward" in graph_names(y.grad_fn), spec
    assert_close(grads[m], grads[ref], 1e-11, what=spec)


def graph_names(fn, seen=None) -> set[str]:
    """The names of every node of an autograd graph."""
    seen = set() if seen is None else seen
    if fn is not None and fn not in seen:
        seen.add(fn)
        for nxt, _ in fn.next_functions:
            graph_names(nxt, seen)
    return {type(f).__name__ for f in seen}


def test_fake_tensors_and_proxy_traces_run_chunked():
    """A dispatch mode would not see the C call (fake tensors have no data; make_fx would record a graph
    without the kernel): both go to `chunked`."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    a = make(l=9, segments=False)
    with FakeTensorMode() as mode:
        fake = {k: (mode.from_tensor(t) if t is not None else None) for k, t in a.items()}
        y, final = ss.scan(**fake)
        assert y.shape == a["x"].shape and final.shape == a["initial_state"].shape
    args = [a[k] for k in ("x", "B", "C", "log_a", "initial_state")]
    traced = make_fx(lambda *t: ss.scan(*t, x_scale=a["x_scale"]), tracing_mode="real")(*args)
    assert_close(traced(*args), ss.recurrent(*args, x_scale=a["x_scale"]), what="make_fx")


def test_heads_that_groups_do_not_divide_raise_as_chunked_does():
    a = make(l=5, H=3, G=2)
    with pytest.raises(RuntimeError):
        ss.chunked(**a)
    with pytest.raises(RuntimeError):
        ss.scan(**a)


@NEEDS_CC
@pytest.mark.parametrize("checkpoint", [1, 7, 128])
def test_the_decay_gradient_from_checkpoints_and_a_broadcast_output_gradient(monkeypatch, checkpoint):
    """The log-decay's gradient summed from the forward's states every ``checkpoint`` positions (1: every one
    exact, 7: not dividing the length, 128: past it) and ``y.sum()``'s gradient, a broadcast the backward reads
    through its strides; per head and per state, with segments."""
    monkeypatch.setattr(native, "CHECKPOINT", checkpoint)
    for decay in ("scalar", "diagonal"):
        a = make(l=40, decay=decay, segments=True)
        leaves = {k: (t.detach().clone().requires_grad_() if k in FLOATS and t is not None else t)
                  for k, t in a.items()}
        grads = []
        for fn in (ss.scan, ss.recurrent):
            y, final = fn(**leaves)
            grads.append(torch.autograd.grad(y.sum() + final.sum(), [leaves[k] for k in FLOATS]))
        assert_close(*grads, what=f"{decay}, checkpoint {checkpoint}")


@NEEDS_CC
def test_the_decay_gradient_in_fp32_does_not_drift_with_the_length():
    """fp32 at l = 10000 with strong decays (where the per-position terms cancel most) against fp64: the
    checkpoints keep the error of at most `CHECKPOINT` summed terms (1.1e-6 of the largest here; without them,
    a sum over the whole sequence, 5.3e-6, growing like the root of the length)."""
    a = make(b=1, l=10000, H=2, P=16, N=16, G=1, init=False, scale=False)
    a["log_a"] = a["log_a"] * 2 - 1
    want = outputs_and_grads(ss.recurrent, a, want=("log_a",))[2]
    got = outputs_and_grads(ss.scan, {k: (t.float() if t is not None and t.is_floating_point() else t)
                                      for k, t in a.items()}, want=("log_a",))[2]
    assert_close([got.double()], [want], 3e-6, what="fp32 log-decay gradient")


@NEEDS_CC
@pytest.mark.parametrize("real, P, N", [("float", 64, 64), ("double", 17, 13), ("float", 1, 16), ("double", 3, 130)])
def test_fused_loops_build_without_a_warning(tmp_path, real, P, N):
    """The C of both fused-loop kernels (this scan and the 2-D grid's) under -Wall -Wextra with the build's own
    flags, across vector widths, remainders and padding: a warning is a defect a user sees when building by
    hand (GCC once warned of undefined behaviour in a loop left dead for N divisible by 4)."""
    from mixerc.codegen.structures.grid2d import native_c as grid_c
    from mixerc.codegen.structures.semiseparable import native_c as scan_c

    for name, source in (("scan", scan_c.SOURCE), ("grid2d", grid_c.SOURCE)):
        src = tmp_path / f"{name}.c"
        src.write_text(source)
        # as the build does: with OpenMP, else without (its pragmas then unknown, by design)
        for extra in (["-fopenmp"], ["-Wno-unknown-pragmas"]):
            command = [rt_native.compiler(), *rt_native.FLAGS, *extra, "-Wall", "-Wextra", f"-DREAL={real}",
                       f"-DVALUE={P}", f"-DSTATE={N}", str(src), "-o", str(tmp_path / f"{name}.so")]
            run = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if run.returncode == 0:
                break
        assert run.returncode == 0 and "warning" not in run.stderr, (name, run.stderr)
