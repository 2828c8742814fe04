"""The Toeplitz structure (mx.toeplitz), its lowerings (reference, fft, direct), the S4D kernel
generator (mx.s4d_kernel) and the built-in specs s4d and longconv, against the independent
references of tests/ref/toeplitz.py (double loops and SSM recurrences), in float64."""

import math
import os
import subprocess
import sys

import pytest
import sympy
import torch

import mixerc as mx
from mixerc.check import run_check
from mixerc.codegen.structures.toeplitz import torch_lowering as tp
from mixerc.ir import STRUCTURES
from ref import assert_close
from ref.toeplitz import conv_loop, s4d_inv_imag, s4d_lin_imag, s4d_loop, ssm_impulse_kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWERINGS = ("reference", "fft", "direct")
F64 = torch.float64


def _conv_spec(xdims: str, kdims: str, causal: bool):
    init = mx.init.normal(1.0)
    if causal:
        def conv(x: mx.Seq(xdims), kern: mx.Param(kdims, init=init)):
            return mx.toeplitz(kernel=kern) @ x
    else:
        def conv(x: mx.Seq(xdims), kern: mx.Param(kdims, init=init), kern_rev: mx.Param(kdims, init=init)):
            return mx.toeplitz(kernel=kern, kernel_rev=kern_rev, causal=False) @ x
    return mx.spec(conv)


def _grads(y, leaves, w):
    """Gradients of a fixed random projection of y; an unused leaf (kernel_rev at l = 1) gets zeros."""
    grads = torch.autograd.grad((y * w).sum(), leaves, allow_unused=True)
    return [torch.zeros_like(x) if gr is None else gr for x, gr in zip(leaves, grads)]


def _ref_kernel(param, xdims: str, shared: bool):
    """The spec's kernel parameter viewed to broadcast against x (b, l, h[, p]) in the loop."""
    if not shared and xdims.endswith("p"):
        return param[:, None, :]
    return param


CASES = [(l, K) for l in (1, 13, 37) for K in ((5, 50) if l > 1 else (4,))]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "two-sided"])
@pytest.mark.parametrize("shared,with_p", [(False, True), (True, False), (False, False), (True, True)],
                         ids=["per-head,p", "shared", "per-head", "shared,p"])
@pytest.mark.parametrize("l,K", CASES, ids=[f"l{l}-K{K}" for l, K in CASES])
def test_lowerings_match_the_double_loop(l, K, shared, with_p, causal):
    """y and the gradients of x and every kernel, each lowering against the explicit double loop;
    kernels shorter (K=5) and longer (K=50) than the sequence."""
    xdims = "b l h p" if with_p else "b l h"
    kdims = "k" if shared else "h k"
    spec = _conv_spec(xdims, kdims, causal)
    dims = dict(h=3, k=K, **({"p": 2} if with_p else {}))
    g = torch.Generator().manual_seed(l * 100 + K)
    x = torch.randn(2, l, 3, *([2] if with_p else []), generator=g, dtype=F64)
    w = torch.randn(x.shape, generator=g, dtype=F64)
    ref_mixer = mx.compile(spec, dims=dims, backend="reference", dtype=F64)
    params = dict(ref_mixer.named_parameters())

    xr = x.clone().requires_grad_(True)
    pr = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    kr = _ref_kernel(pr["kern_rev"], xdims, shared) if not causal else None
    y_ref = conv_loop(xr, _ref_kernel(pr["kern"], xdims, shared), kr)
    g_ref = _grads(y_ref, [xr, *pr.values()], w)

    for low in LOWERINGS:
        m = mx.compile(spec, dims=dims, backend=low, dtype=F64)
        m.load_state_dict(ref_mixer.state_dict())
        xm = x.clone().requires_grad_(True)
        y = m(x=xm)
        gm = _grads(y, [xm, *m.parameters()], w)
        assert_close(f"{low} y", y_ref, y)
        for name, a, b in zip(["x", *pr], g_ref, gm):
            assert_close(f"{low} d/d{name}", a, b)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "two-sided"])
def test_seq_idx_segments(causal):
    """Packed sequences: no tap crosses a change of segment id (re-used ids, length-1 segments)."""
    spec = _conv_spec("b l h", "h k", causal)
    dims = dict(h=2, k=6)
    g = torch.Generator().manual_seed(7)
    l = 19
    x = torch.randn(2, l, 2, generator=g, dtype=F64)
    seq = torch.tensor([[0] * 5 + [1] + [2] * 7 + [0] * 6, [3] * 9 + [4] * 10])
    w = torch.randn(x.shape, generator=g, dtype=F64)
    ref_mixer = mx.compile(spec, dims=dims, backend="reference", dtype=F64)
    pr = {n: p.detach().clone().requires_grad_(True) for n, p in ref_mixer.named_parameters()}
    xr = x.clone().requires_grad_(True)
    y_ref = conv_loop(xr, pr["kern"], None if causal else pr["kern_rev"], seq_idx=seq)
    g_ref = _grads(y_ref, [xr, *pr.values()], w)
    for low in LOWERINGS:
        m = mx.compile(spec, dims=dims, backend=low, dtype=F64)
        m.load_state_dict(ref_mixer.state_dict())
        xm = x.clone().requires_grad_(True)
        y = m(x=xm, seq_idx=seq)
        assert_close(f"{low} y", y_ref, y)
        for name, a, b in zip(["x", *pr], g_ref, _grads(y, [xm, *m.parameters()], w)):
            assert_close(f"{low} d/d{name}", a, b)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "two-sided"])
@pytest.mark.parametrize("segments", [False, True])
def test_per_batch_kernel_lowerings(causal, segments):
    """A kernel per batch row (canonical (b, H, K)), called on the lowering functions directly."""
    g = torch.Generator().manual_seed(3)
    b, l, H, P, K = 2, 11, 2, 3, 7
    x = torch.randn(b, l, H, P, generator=g, dtype=F64, requires_grad=True)
    k = torch.randn(b, H, K, generator=g, dtype=F64, requires_grad=True)
    kr = None if causal else torch.randn(b, H, K, generator=g, dtype=F64, requires_grad=True)
    seq = torch.tensor([[0] * 4 + [1] * 7, [2] * 11]) if segments else None
    w = torch.randn(b, l, H, P, generator=g, dtype=F64)
    leaves = [x, k] + ([kr] if kr is not None else [])
    y_ref = conv_loop(x, k[:, :, None, :], None if kr is None else kr[:, :, None, :], seq, per_row=True)
    g_ref = _grads(y_ref, leaves, w)
    for low in LOWERINGS:
        y, s = getattr(tp, low)(x, k, kr, seq_idx=seq)
        assert s is None
        assert_close(f"{low} y", y_ref, y)
        for name, a, bb in zip(["x", "k", "kr"], g_ref, _grads(y, leaves, w)):
            assert_close(f"{low} d/d{name}", a, bb)


def test_fp32_fft_matches_fp64():
    """fp32 inputs compute in fp32: the fft lowering stays close to the fp64 dense result."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3000, 2, generator=g, dtype=F64)
    k = torch.randn(1, 2, 3000, generator=g, dtype=F64) / 30
    y64, _ = tp.reference(x[..., None], k)
    y32, _ = tp.fft(x[..., None].float(), k.float())
    assert y32.dtype == torch.float32
    assert float((y32.double() - y64).abs().max() / y64.abs().max()) < 1e-5


def test_fast_size():
    for n in (1, 2, 7, 73, 1000, 4097, 16447, 32769):
        m = tp.fast_size(n)
        assert n <= m <= max(2 * n, 2) and (n < 16 or m <= n * 4 / 3)
        r = m
        while r % 2 == 0:
            r //= 2
        assert r in (1, 3, 5, 9)
    assert tp.fast_size(16447) == 18432 and tp.fast_size(1100) == 1152


# -- S4D kernels ---------------------------------------------------------------------------------


def _s4d_params(g, H, n2, init):
    log_dt = torch.empty(H, dtype=F64).uniform_(math.log(1e-3), math.log(1e-1), generator=g)
    A_re_log = torch.full((H, n2), math.log(0.5), dtype=F64) + 0.1 * torch.randn(H, n2, generator=g, dtype=F64)
    imag = s4d_lin_imag(n2) if init == "lin" else s4d_inv_imag(n2)
    A_im = torch.tensor(imag, dtype=F64).expand(H, n2).clone()
    C_re = torch.randn(H, n2, generator=g, dtype=F64)
    C_im = torch.randn(H, n2, generator=g, dtype=F64)
    return [log_dt, A_re_log, A_im, C_re, C_im]


@pytest.mark.parametrize("init", ["lin", "inv"])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_s4d_kernel_matches_the_recurrence(disc, init):
    """The Vandermonde kernel against the SSM's impulse response, values and gradients; a larger
    step size too, so that the kernel decays visibly within L."""
    g = torch.Generator().manual_seed(1)
    H, n2, L = 3, 6, 50
    params = _s4d_params(g, H, n2, init)
    params[0] = params[0] + torch.tensor([0.0, 1.0, 3.0], dtype=F64)  # Δ up to ~2
    leaves = [p.clone().requires_grad_(True) for p in params]
    w = torch.randn(H, L, generator=g, dtype=F64)
    K_ref = ssm_impulse_kernel(*leaves, L, disc)
    g_ref = _grads(K_ref, leaves, w)
    K = tp.s4d_kernel(leaves[0][:, None], *leaves[1:], L, disc)
    assert_close(f"{disc} kernel", K_ref, K)
    for name, a, b in zip(["log_dt", "A_re_log", "A_im", "C_re", "C_im"], g_ref, _grads(K, leaves, w)):
        assert_close(f"{disc} d/d{name}", a, b)


def test_s4d_init_rules():
    lin = mx.init.s4d_lin_imag()((2, 5), F64)
    inv = mx.init.s4d_inv_imag()((2, 5), F64)
    assert torch.allclose(lin, torch.tensor(s4d_lin_imag(5), dtype=F64).expand(2, 5))
    assert torch.allclose(inv, torch.tensor(s4d_inv_imag(5), dtype=F64).expand(2, 5))
    dt = mx.init.log_uniform_dt(1e-3, 1e-1)((1000,), F64, torch.Generator().manual_seed(0))
    assert math.log(1e-3) <= float(dt.min()) and float(dt.max()) <= math.log(1e-1)
    assert "s4d_lin_imag" in repr(mx.init.s4d_lin_imag())


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_s4d_spec_matches_the_ssm_recurrence(disc):
    """The whole mixer (kernel generation, convolution, D skip) against the SSM run token by token
    on the input, gradients of x and of every parameter; k >= l so no truncation."""
    @mx.spec
    def s4d_test(x: mx.Seq("b l h"), log_dt: mx.Param("h", init=mx.init.log_uniform_dt(1e-2, 1.0)),
                 A_re_log: mx.Param("h n2", init=math.log(0.5)),
                 A_im: mx.Param("h n2", init=mx.init.s4d_inv_imag()),
                 C_re: mx.Param("h n2", init=mx.init.normal(0.5 ** 0.5)),
                 C_im: mx.Param("h n2", init=mx.init.normal(0.5 ** 0.5)),
                 D: mx.Param("h", init=mx.init.normal(1.0))):
        K = mx.s4d_kernel(log_dt, A_re_log, A_im, C_re, C_im, length="k", disc=disc)
        return mx.toeplitz(kernel=K) @ x + D * x

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 29, 3, generator=g, dtype=F64)
    w = torch.randn(x.shape, generator=g, dtype=F64)
    m0 = mx.compile(s4d_test, dims=dict(h=3, n2=4, k=32), backend="reference", dtype=F64)
    pr = {n: p.detach().clone().requires_grad_(True) for n, p in m0.named_parameters()}
    xr = x.clone().requires_grad_(True)
    y_ref = s4d_loop(xr, *pr.values(), disc=disc)
    g_ref = _grads(y_ref, [xr, *pr.values()], w)
    for low in LOWERINGS:
        m = mx.compile(s4d_test, dims=dict(h=3, n2=4, k=32), backend=low, dtype=F64)
        m.load_state_dict(m0.state_dict())
        xm = x.clone().requires_grad_(True)
        y = m(x=xm)
        assert_close(f"{low} y", y_ref, y)
        for name, a, b in zip(["x", *pr], g_ref, _grads(y, [xm, *m.parameters()], w)):
            assert_close(f"{low} d/d{name}", a, b)


# -- formula, builtins, runtime ---------------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
def test_formula_matches_the_materialised_matrix(causal):
    layout = {"x": ("b", "l", "h"), "kernel": ("h", "k"), "klen": "k", "head": "h", "value": None,
              "shared": False, "batched": False, "causal": causal}
    f = STRUCTURES["toeplitz"].formula(layout)
    g = torch.Generator().manual_seed(2)
    for L, K in ((6, 3), (4, 7)):
        k = torch.randn(1, 1, K, generator=g, dtype=F64)
        kr = None if causal else torch.randn(1, 1, K, generator=g, dtype=F64)
        M = tp.matrix(k, kr, L)[0, 0]
        i, j = sympy.symbols("i j", integer=True)
        kb, krb = sympy.IndexedBase("kernel"), sympy.IndexedBase("kernel_rev")
        subs = {sympy.Symbol("k", positive=True, integer=True): K}
        for a in range(L):
            for c in range(L):
                e = f.subs(subs).subs({i: a, j: c})
                e = e.subs({kb[t]: float(k[0, 0, t]) for t in range(K)})
                if kr is not None:
                    e = e.subs({krb[t]: float(kr[0, 0, t]) for t in range(K)})
                assert abs(float(e) - float(M[a, c])) < 1e-12, (a, c, e, M[a, c])


@pytest.mark.parametrize("name", ["s4d", "longconv"])
def test_builtin_specs_check(name):
    spec = mx.load_spec(name)
    assert name in mx.list_specs()
    for r in run_check(spec, spec.example_dims):
        assert r.ok, r
    for r in run_check(spec, {**spec.example_dims, "k": 5}, l=23):  # a kernel shorter than l
        assert r.ok, r


def test_runtime_is_stateless():
    m = mx.compile("s4d", dims=dict(h=4, n2=8, k=64))
    assert m.plan.structures[0].lowering == "fft"
    x = torch.randn(2, 10, 4)
    y, s = m(x=x, return_final_state=True)
    assert y.shape == (2, 10, 4) and s is None
    assert m.state_shapes(2) == [None] and m.init_state(2) is None
    with pytest.raises(mx.BackendError, match="has no step: its toeplitz matrix is a convolution"):
        m.step(None, x=x[:, 0])
    with pytest.raises(mx.InputError, match="no recurrent state"):
        m(x=x, initial_state=torch.zeros(2, 4))
    M = m.materialize(x=x)  # (b, h, l, l): y = M x + D x
    assert M.shape == (2, 4, 10, 10)
    y2 = torch.einsum("bhij,bjh->bih", M, x) + m.D * x
    assert torch.allclose(y, y2, atol=1e-5)
    with pytest.raises(mx.BackendError, match="toeplitz has no 'chunked' lowering"):
        mx.compile("longconv", dims=dict(h=4, k=8), backend="chunked")
    assert "toeplitz" in m.source() or "_tp.fft" in m.source()


# -- errors -------------------------------------------------------------------------------------


def _compile_bad(body: str, dims, tmp_path):
    src = ("import mixerc as mx\n\n@mx.spec\n"
           "def bad(x: mx.Seq('b l h'), y: mx.Seq('b l h p'), kern: mx.Param('h k'), kern2: mx.Param('h k'),\n"
           "        kq: mx.Param('h q'), flat: mx.Param('h'), two: mx.Param('h p k'), dt: mx.Param('h'),\n"
           "        A: mx.Param('h n'), Aq: mx.Param('h q')):\n"
           f"    {body}\n")
    path = tmp_path / "bad.py"
    path.write_text(src)
    return mx.compile(str(path), dims=dims)


@pytest.mark.parametrize("body,match", [
    ("return mx.toeplitz(kernel=kern, causal=False) @ x", "causal=False needs kernel_rev"),
    ("return mx.toeplitz(kernel=kern, kernel_rev=kern2) @ x", "kernel_rev is given but causal=True"),
    ("return mx.toeplitz(kernel=kern, kernel_rev=kq, causal=False) @ x", "kernel_rev has dims"),
    ("return mx.toeplitz(kernel=flat) @ y", "kernel-length dim 'h' also appears"),
    ("return mx.toeplitz(kernel=two) @ y", "kernel has dims \\(h, p, k\\)"),
    ("return mx.toeplitz(kernel=kern, causal=1) @ x", "causal=1 must be a Python bool"),
    ("return mx.toeplitz(kernel=kern, kernal_rev=kern2) @ x", "unknown argument"),
    ("return mx.toeplitz(kernel=x) @ x", "kernel has dims \\(b, l, h\\)"),
    ("return mx.toeplitz(kernel=mx.s4d_kernel(dt, A, A, A, Aq)) @ x", "C_im has dims"),
    ("return mx.toeplitz(kernel=mx.s4d_kernel(A, A, A, A, A)) @ x", "log_dt has dims"),
    ("return mx.toeplitz(kernel=mx.s4d_kernel(dt, A, A, A, A, length='l')) @ x", "length='l'"),
    ("return mx.toeplitz(kernel=mx.s4d_kernel(dt, A, A, A, A, disc='foh')) @ x", "disc='foh'"),
    ("return mx.toeplitz(kernel=mx.s4d_kernel(dt, A, A, A, A, length='n')) @ x", "length='n' is already"),
])
def test_spec_errors(body, match, tmp_path):
    dims = dict(h=2, p=2, k=4, q=3, n=2)
    with pytest.raises(mx.SpecError, match=match) as e:
        _compile_bad(body, dims, tmp_path)
    assert "bad.py:" in str(e.value)  # names the spec line


def test_kernel_dim_without_size(tmp_path):
    with pytest.raises(mx.SpecError, match="dim 'k'.*has no size"):
        _compile_bad("return mx.toeplitz(kernel=kern) @ x", dict(h=2, p=2, q=3, n=2), tmp_path)


# -- benchmark script ------------------------------------------------------------------------------


@pytest.mark.slow  # ~25 s of benchmark
def test_bench_toeplitz_quick(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_toeplitz.py"), "--quick",
         "--out", str(tmp_path / "toeplitz.json"), "--plot", str(tmp_path / "toeplitz.png")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "160"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "fft vs dense" in out.stdout
    assert (tmp_path / "toeplitz.json").exists() and (tmp_path / "toeplitz.png").exists()
