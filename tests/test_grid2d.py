"""The 2-D (Roesser) SSM's lowerings (codegen/structures/grid2d): every lowering against the cell-by-cell
`recurrent` oracle in fp64, forward and the gradient of every input; the lattice-path element
formula against the recurrence unrolled symbolically (sympy); the LTI convolution; decoding by
`step`; the error messages."""

import itertools
import os

import pytest
import sympy
import torch

from mixerc.codegen.structures.grid2d import formula, native
from mixerc.codegen.structures.grid2d import torch_lowering as g2
from mixerc.codegen.structures.grid2d import wave
from mixerc.rt import native as rt_native

F64 = torch.float64
NAMES = ("x", "B1", "C1", "B2", "C2", "log_a1", "a2", "a3", "log_a4", "scale1", "scale2")


def make(b=2, V=3, L=5, H=4, P=3, N=2, G=2, kind="head", scales=True, drop=(), seed=0, lti=False,
         dtype=F64):
    """Inputs by name (``drop``: names set to None); ``lti``: transitions constant over (v, l), given
    with size-1 v and l axes."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, lo=None, hi=None):
        t = torch.randn(*shape, generator=gen, dtype=dtype) if lo is None else \
            lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=dtype)
        return t

    cs = (b, 1, 1, H) if lti else (b, V, L, H)
    if kind == "state":
        cs = cs + (N,)
    a = dict(x=rnd(b, V, L, H, P), B1=rnd(b, V, L, G, N), C1=rnd(b, V, L, G, N), B2=rnd(b, V, L, G, N),
             C2=rnd(b, V, L, G, N), log_a1=rnd(*cs, lo=-1.0, hi=0.0), a2=rnd(*cs, lo=-0.6, hi=0.6),
             a3=rnd(*cs, lo=-0.6, hi=0.6), log_a4=rnd(*cs, lo=-1.0, hi=0.0),
             scale1=rnd(b, V, L, H, lo=0.2, hi=1.5) if scales else None,
             scale2=rnd(b, V, L, H, lo=0.2, hi=1.5) if scales else None)
    for k in drop:
        a[k] = None
    return a


def initial(a, seed=1):
    gen = torch.Generator().manual_seed(seed)
    b, V, L, H, P = a["x"].shape
    N = a["B1"].shape[-1]
    return tuple(torch.randn(b, V, H, P, N, generator=gen, dtype=a["x"].dtype) for _ in range(2))


def run(fn, a, init=None, **kw):
    return fn(*[a[k] for k in NAMES], initial_state=init, **kw)


def forward_and_grads(fn, a, init, seed=2, **kw):
    """(y, final states, gradients of every tensor input and of the initial state) for the loss
    <y, gy> + <h1_L, g1> + <h2_L, g2> with fixed random cotangents."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in a.items() if v is not None}
    init = None if init is None else tuple(s.detach().clone().requires_grad_() for s in init)
    y, (f1, f2) = fn(*[leaves.get(k) for k in NAMES], initial_state=init, **kw)
    gen = torch.Generator().manual_seed(seed)
    cot = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in (y, f1, f2)]
    loss = sum((t * c).sum() for t, c in zip((y, f1, f2), cot))
    wrt = list(leaves.values()) + (list(init) if init is not None else [])
    grads = torch.autograd.grad(loss, wrt, allow_unused=True, materialize_grads=True)  # h2_0 unused without a2
    names = list(leaves) + (["h1_0", "h2_0"] if init is not None else [])
    return y.detach(), (f1.detach(), f2.detach()), dict(zip(names, grads))


def assert_same(got, want, what):
    y, (f1, f2), grads = got
    wy, (w1, w2), wgrads = want
    torch.testing.assert_close(y, wy, rtol=1e-10, atol=1e-10, msg=f"{what}: y")
    torch.testing.assert_close(f1, w1, rtol=1e-10, atol=1e-10, msg=f"{what}: final h1")
    torch.testing.assert_close(f2, w2, rtol=1e-10, atol=1e-10, msg=f"{what}: final h2")
    assert grads.keys() == wgrads.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], wgrads[k], rtol=1e-9, atol=1e-10, msg=f"{what}: d/d{k}")



@pytest.fixture(params=["fused", "wavefront"])
def engine(request, monkeypatch):
    """``grid``'s two engines on the CPU: the fused C loops (native.py; strips of 3 columns, narrower than
    the grids here) and the torch wavefront (wave.py)."""
    if request.param == "wavefront":
        monkeypatch.setattr(g2, "usable", lambda *a: False)
    else:
        monkeypatch.setattr(native, "STRIP", 3)
    return request.param

CASES = [  # (kind, dropped inputs, scales, groups)
    ("head", (), True, 2),
    ("state", (), True, 2),
    ("head", ("a2",), False, 1),
    ("state", ("a3",), True, 4),
    ("head", ("a2", "a3"), True, 2),
    ("state", ("a2",), True, 1),
    ("head", ("a3",), False, 4),
    ("head", ("log_a1", "log_a4"), False, 2),
    ("state", ("log_a1", "a3"), True, 2),
]


@pytest.mark.parametrize("kind,drop,scales,G", CASES)
@pytest.mark.parametrize("with_init", [False, True])
def test_lowerings_match_recurrent(kind, drop, scales, G, with_init, engine):
    a = make(kind=kind, drop=drop, scales=scales, G=G, L=5, V=3)
    init = initial(a) if with_init else None
    want = forward_and_grads(g2.recurrent, a, init)
    assert_same(forward_and_grads(g2.reference, a, init), want, "reference")
    assert_same(forward_and_grads(g2.grid, a, init), want, "grid")


@pytest.mark.parametrize("drop", [(), ("a2",), ("a3",)])
@pytest.mark.parametrize("V,L", [(4, 11), (11, 4), (5, 5)])
def test_grid_wavefront_along_either_axis(drop, V, L, engine):
    """The wavefront indexes its steps along the shorter axis (v when V <= L, else l): both ways, odd
    sizes, with an initial state."""
    a = make(kind="state", drop=drop, V=V, L=L, H=2, P=3, N=3, G=1)
    init = initial(a)
    assert_same(forward_and_grads(g2.grid, a, init), forward_and_grads(g2.recurrent, a, init), f"grid {V}x{L}")


@pytest.mark.parametrize("V,L,kind,drop", [(4, 9, "head", ()), (9, 4, "state", ("a3",)),
                                          (5, 5, "head", ("log_a1", "a2"))])
def test_grid_backward_across_checkpoint_blocks(monkeypatch, V, L, kind, drop):
    """The backward recomputes each block of BLOCK steps from the state the forward kept at its start:
    blocks of 3 steps, the last one partial (V + L - 1 steps), an initial state, both wavefront axes."""
    monkeypatch.setattr(wave, "BLOCK", 3)
    monkeypatch.setattr(g2, "usable", lambda *a: False)
    a = make(kind=kind, drop=drop, V=V, L=L, H=2, P=2, N=3, G=1)
    init = initial(a)
    assert_same(forward_and_grads(g2.grid, a, init), forward_and_grads(g2.recurrent, a, init), f"grid {V}x{L}")


def by_segments(fn, seq_idx):
    """``fn`` run on every segment of every batch row on its own (``seq_idx`` (b, L)); the initial state
    enters each row's first segment; the final state is the last segment's."""
    def split(*args, initial_state=None):
        L = args[0].shape[2]
        ys, f1s, f2s = [], [], []
        for r, ids in enumerate(seq_idx.tolist()):
            cuts = [0] + [t for t in range(1, L) if ids[t] != ids[t - 1]] + [L]
            init = None if initial_state is None else tuple(st[r:r + 1] for st in initial_state)
            parts = []
            for s, e in zip(cuts, cuts[1:]):
                y, fin = fn(*[None if a is None else a[r:r + 1, :, s:e] for a in args],
                            initial_state=init if s == 0 else None)
                parts.append(y)
            ys.append(torch.cat(parts, 2))
            f1s.append(fin[0])
            f2s.append(fin[1])
        return torch.cat(ys), (torch.cat(f1s), torch.cat(f2s))

    return split


SEGMENTS = torch.tensor([[0, 0, 1, 1, 1, 2, 3], [4, 4, 4, 4, 4, 4, 4]])  # a one-position segment; a row of one


@pytest.mark.parametrize("kind,drop,V,with_init", [("head", (), 3, True), ("state", (), 8, True),
                                                   ("head", ("log_a1",), 3, False), ("state", ("a2", "a3"), 2, True),
                                                   ("head", ("a3",), 8, False)])
def test_segments_match_running_each_segment_alone(kind, drop, V, with_init, engine):
    """seq_idx (b, L): a segment start cuts both moves along l into it (h1 from h1 and from h2), for
    every variate; h2 moves along v inside one time step and is untouched. Every lowering that takes
    segments, in fp64, forward, final states and every gradient, against each segment run alone by
    ``recurrent``; V = 8 > L = 7 runs the wavefront along l."""
    a = make(kind=kind, drop=drop, V=V, L=7, H=2, P=2, G=2)
    init = initial(a) if with_init else None
    want = forward_and_grads(by_segments(g2.recurrent, SEGMENTS), a, init)
    for fn in (g2.reference, g2.recurrent, g2.grid):
        assert_same(forward_and_grads(fn, a, init, seq_idx=SEGMENTS), want, f"{fn.__name__} with segments")
    with pytest.raises(ValueError, match="fft2: seq_idx .* use the grid lowering"):
        run(g2.fft2, a, seq_idx=SEGMENTS)


def test_one_variate_and_one_position(engine):
    for V, L in ((1, 6), (4, 1), (1, 1)):
        a = make(V=V, L=L, kind="state")
        want = forward_and_grads(g2.recurrent, a, initial(a))
        for fn in (g2.reference, g2.grid):
            assert_same(forward_and_grads(fn, a, initial(a)), want, f"{fn.__name__} V={V} L={L}")


@pytest.mark.parametrize("kind,drop", [("head", ()), ("state", ()), ("head", ("a2",)), ("state", ("a3", "log_a4"))])
@pytest.mark.parametrize("with_init", [False, True])
def test_fft2_on_lti(kind, drop, with_init):
    """Transitions constant over the grid (given with size-1 v and l axes); B, C and the scales vary."""
    a = make(kind=kind, drop=drop, lti=True, V=3, L=6)
    init = initial(a) if with_init else None
    assert_same(forward_and_grads(g2.fft2, a, init), forward_and_grads(g2.recurrent, a, init), "fft2")


def test_impulse_response_is_the_matrix_column():
    """LTI: the response to a unit input at cell (0, 0) is M's first column when C1 = C2 = B = 1."""
    a = make(kind="head", lti=True, V=3, L=4, H=1, G=1, N=1, P=1, scales=False)
    G = g2.impulse_response(a["x"], a["B1"], a["log_a1"], a["a2"], a["a3"], a["log_a4"])
    ones = torch.ones_like(a["B1"])
    M, _ = g2.materialize(a["x"], ones, ones, torch.zeros_like(ones), ones,
                          a["log_a1"], a["a2"], a["a3"], a["log_a4"])
    # input into h1 only (B2 = 0): column 0 of M is G[a=1, c=1] + G[a=2, c=1] over the grid
    torch.testing.assert_close(M[:, 0, :, 0], (G[:, 0, 0, 0] + G[:, 0, 1, 0]).reshape(2, -1))


@pytest.mark.parametrize("kind,drop", [("head", ()), ("state", ()), ("head", ("a2",)), ("state", ("a3",))])
def test_step_along_l_equals_forward(kind, drop):
    a = make(kind=kind, drop=drop, V=3, L=5)
    init = initial(a)

    def stepped(*args, initial_state=None):
        state, ys = initial_state, []
        for t in range(args[0].shape[2]):
            y, state = g2.step(*[None if v is None else v[:, :, t:t + 1] for v in args], initial_state=state)
            ys.append(y)
        return torch.cat(ys, dim=2), state

    assert_same(forward_and_grads(stepped, a, init), forward_and_grads(g2.recurrent, a, init), "step")
    # and from the zero state
    y, _ = stepped(*[a[k] for k in NAMES])
    torch.testing.assert_close(y, run(g2.recurrent, a)[0])


def test_reference_matrix_times_x():
    a = make(kind="state", V=3, L=4)
    M, none = run(g2.materialize, a)
    assert none is None and M.shape == (2, 4, 12, 12)
    b, V, L, H, P = a["x"].shape
    y = torch.einsum("zhij,zjhp->zihp", M, a["x"].reshape(b, V * L, H, P)).reshape(b, V, L, H, P)
    torch.testing.assert_close(y, run(g2.recurrent, a)[0])
    # causal in both axes: nothing reaches an earlier variate or an earlier position
    v = torch.arange(V).repeat_interleave(L)
    t = torch.arange(L).repeat(V)
    later = (v[None, :] > v[:, None]) | (t[None, :] > t[:, None])
    assert (M[..., later] == 0).all() and (M[..., ~later] != 0).all()


def test_fp32_strong_decay_stays_finite():
    """log-decays of -60 per step (exp underflows in fp32): grid stays finite and matches fp64."""
    a = make(kind="state", V=3, L=37, N=3)
    a["log_a1"] = a["log_a1"] * 60
    a["log_a4"] = a["log_a4"] * 60
    want = run(g2.recurrent, a)[0]
    a32 = {k: None if v is None else v.float() for k, v in a.items()}
    leaves = {k: v.requires_grad_() for k, v in a32.items() if v is not None}
    y, (f1, f2) = run(g2.grid, a32)
    (y.sum() + f1.sum() + f2.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves.values())
    torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("T,Q,K,with_h0", [(1, 4, 1, True), (7, 2, 3, True), (16, 4, 1, False), (29, 3, 3, True)])
def test_scan_against_loop(T, Q, K, with_h0):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(2, 5, T, 3, 3, generator=gen, dtype=F64)
    la = -torch.rand(2, 5, T, 1, K, generator=gen, dtype=F64)
    h0 = torch.randn(2, 5, 3, 3, generator=gen, dtype=F64) if with_h0 else None
    h = torch.zeros(2, 5, 3, 3, dtype=F64) if h0 is None else h0
    want = []
    for t in range(T):
        h = la[:, :, t].exp() * h + w[:, :, t]
        want.append(h)
    torch.testing.assert_close(g2.scan(w, la, h0, Q), torch.stack(want, dim=2))


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["log_a1", "a2", "a3", "log_a4"])
def test_fft2_rejects_varying_transitions(name):
    a = make(lti=True)
    a[name] = a[name].expand(2, 3, 5, 4).clone()
    a[name][:, 1, 2] += 0.1
    with pytest.raises(ValueError, match=f"fft2: {name} varies over the \\(v, l\\) grid; fft2 needs every "
                                         "transition coefficient .* or use the grid lowering"):
        run(g2.fft2, a)


def test_step_rejects_several_positions():
    with pytest.raises(ValueError, match="step: decodes one position along l, got x with 5 positions"):
        run(g2.step, make())


# -- the element formula, symbolically --------------------------------------------------------


def unrolled_matrix(V, L):
    """M of a V x L grid with scalar symbols (one state), by running the recurrence on symbolic
    inputs x[v, t] and reading each output's coefficient of each input."""
    S = formula.SYMBOLS
    xs = {(v, t): sympy.Symbol(f"x_{v}_{t}") for v in range(V) for t in range(L)}
    h1, h2, y = {}, {}, {}
    for v in range(V):
        for t in range(L):
            h1[v, t] = S["s1"][v, t] * S["B1"][v, t] * xs[v, t] + (
                S["a1"][v, t] * h1[v, t - 1] + S["a2"][v, t] * h2[v, t - 1] if t > 0 else 0)
            h2[v, t] = S["s2"][v, t] * S["B2"][v, t] * xs[v, t] + (
                S["a3"][v, t] * h1[v - 1, t] + S["a4"][v, t] * h2[v - 1, t] if v > 0 else 0)
            y[v, t] = sympy.expand(S["C1"][v, t] * h1[v, t] + S["C2"][v, t] * h2[v, t])
    cells = list(xs)
    return sympy.Matrix([[y[i].coeff(xs[j]) for j in cells] for i in cells]), cells


def test_lattice_path_formula_equals_unrolled_recurrence():
    V, L = 2, 3
    M, cells = unrolled_matrix(V, L)
    for (i, dst), (j, src) in itertools.product(enumerate(cells), repeat=2):
        assert sympy.expand(formula.element(dst, src) - M[i, j]) == 0, (dst, src)
    # not trivially equal: (1, 2) <- (0, 0) has 3 paths; each, leaving h1 or h2, lands in one state: 6 terms
    assert len(list(formula.words(1, 2))) == 3
    assert len(sympy.expand(formula.element((1, 2), (0, 0))).args) == 6
    assert formula.element((0, 2), (1, 0)) == 0  # no path goes back along v


def test_materialize_equals_the_formula_numerically():
    """The torch reference (powers of the one-step matrix) against the sympy path sum, per state."""
    a = make(kind="state", V=2, L=3, H=1, G=1, N=2, b=1)
    M, _ = run(g2.materialize, a)
    S = formula.SYMBOLS
    n = sympy.Symbol("n")
    cells = [(v, t) for v in range(2) for t in range(3)]
    values = {}
    for v, t in cells:
        for k in range(2):
            values.update({S["a1"][v, t, k]: a["log_a1"][0, v, t, 0, k].exp().item(),
                           S["a2"][v, t, k]: a["a2"][0, v, t, 0, k].item(),
                           S["a3"][v, t, k]: a["a3"][0, v, t, 0, k].item(),
                           S["a4"][v, t, k]: a["log_a4"][0, v, t, 0, k].exp().item(),
                           S["B1"][v, t, k]: a["B1"][0, v, t, 0, k].item(),
                           S["B2"][v, t, k]: a["B2"][0, v, t, 0, k].item(),
                           S["C1"][v, t, k]: a["C1"][0, v, t, 0, k].item(),
                           S["C2"][v, t, k]: a["C2"][0, v, t, 0, k].item(),
                           S["s1"][v, t, k]: a["scale1"][0, v, t, 0].item(),
                           S["s2"][v, t, k]: a["scale2"][0, v, t, 0].item()})
    for (i, dst), (j, src) in itertools.product(enumerate(cells), repeat=2):
        want = sum(float(formula.element(dst, src, n).subs(n, k).subs(values)) for k in range(2))
        assert abs(M[0, 0, i, j].item() - want) < 1e-12, (dst, src)


# -- grid's fused C loops (native.py, native_c.py): the CPU engine, forward and backward ------------


NEEDS_CC = pytest.mark.skipif(rt_native.compiler() is None, reason="no C compiler: the fused loops cannot be built")


def fresh_process(monkeypatch):
    """rt.native as in a process that has loaded no kernel and given no warning yet."""
    monkeypatch.setattr(rt_native, "_LIBS", {})
    monkeypatch.setattr(rt_native, "_WARNED", set())


def fused(monkeypatch):
    """A list that records every call of the fused forward (and its result) while ``grid`` runs."""
    calls, real = [], native.run

    def spy(*args):
        calls.append(real(*args))
        return calls[-1]

    monkeypatch.setattr(native, "run", spy)
    return calls


def no_grad_run(fn, a, init=None, **kw):
    with torch.no_grad():
        y, (f1, f2) = run(fn, a, init, **kw)
    return y, (f1, f2), {}


FUSED = CASES + [("cell", (), True, 2), ("cell", ("a2", "log_a4"), False, 4)]


@NEEDS_CC
@pytest.mark.parametrize("kind,drop,scales,G", FUSED)
@pytest.mark.parametrize("V,L,strip", [(3, 5, 32), (4, 11, 3), (7, 2, 4)])
def test_fused_loops_match_recurrent(monkeypatch, kind, drop, scales, G, V, L, strip):
    """``grid`` runs the C loops: in fp64 equal to ``recurrent``, output, both final states and (with
    gradients) the gradient of every input and of the initial state, per-head, per-state and per-cell (no
    head axis) coefficients, absent ones, groups, and strips narrower than the grid (the last one partial)
    or wider."""
    monkeypatch.setattr(native, "STRIP", strip)
    a = make(kind="head" if kind == "cell" else kind, drop=drop, scales=scales, G=G, V=V, L=L, N=3)
    if kind == "cell":
        a.update({k: a[k][..., :1] for k in ("log_a1", "a2", "a3", "log_a4") if a[k] is not None})
    calls = fused(monkeypatch)
    for init in (None, initial(a)):
        assert_same(no_grad_run(g2.grid, a, init), no_grad_run(g2.recurrent, a, init), f"fused {kind} {drop}")
        assert_same(forward_and_grads(g2.grid, a, init), forward_and_grads(g2.recurrent, a, init),
                    f"fused {kind} {drop}, gradients")
    assert len(calls) == 4 and all(c is not None for c in calls)


@NEEDS_CC
@pytest.mark.parametrize("V", [3, 8])
def test_fused_forward_with_segments(monkeypatch, V):
    """Without gradients (test_segments_match_running_each_segment_alone covers them)."""
    monkeypatch.setattr(native, "STRIP", 3)
    a = make(kind="state", V=V, L=7, H=2, P=2, G=2)
    init = initial(a)
    calls = fused(monkeypatch)
    want = no_grad_run(by_segments(g2.recurrent, SEGMENTS), a, init)
    assert_same(no_grad_run(g2.grid, a, init, seq_idx=SEGMENTS), want, "fused with segments")
    assert calls and calls[0] is not None


@NEEDS_CC
def test_fused_forward_fp32_strided_and_broadcast_inputs(monkeypatch):
    """fp32 within fp32 rounding of the fp64 oracle; x a strided view, B1 broadcast along v, scale2 along l."""
    a = make(kind="head", V=4, L=9, H=4, P=5, N=3, G=2)
    a["x"] = a["x"].transpose(3, 4).contiguous().transpose(3, 4)
    a["B1"] = a["B1"][:, :1]
    a["scale2"] = a["scale2"][:, :, :1]
    want = no_grad_run(g2.recurrent, a)
    calls = fused(monkeypatch)
    y, (f1, f2), _ = no_grad_run(g2.grid, {k: None if t is None else t.float() for k, t in a.items()})
    assert calls and calls[0] is not None
    for got, ref in ((y, want[0]), (f1, want[1][0]), (f2, want[1][1])):
        assert float((got.double() - ref).abs().max() / ref.abs().max()) < 1e-5


@NEEDS_CC
def test_fused_backward_gradient_of_part_of_the_outputs(monkeypatch):
    """Only y used (the final states get no gradient), only some inputs requiring grad, x non-contiguous,
    B1 broadcast along v; a double backward refuses (the backward works in place)."""
    monkeypatch.setattr(native, "STRIP", 4)
    a = make(kind="state", V=3, L=9, H=4, P=3, N=2, G=2)
    a["x"] = a["x"].transpose(3, 4).contiguous().transpose(3, 4)
    a["B1"] = a["B1"][:, :1]
    calls = fused(monkeypatch)
    grads = {}
    for fn in (g2.grid, g2.recurrent):
        leaves = {k: t.detach().clone().requires_grad_(k in ("x", "B1", "a3")) for k, t in a.items()}
        y, _ = fn(*[leaves[k] for k in NAMES])
        grads[fn] = torch.autograd.grad((y * y).sum(), [leaves[k] for k in ("x", "B1", "a3")])
    for got, want in zip(grads[g2.grid], grads[g2.recurrent]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert calls and calls[0] is not None
    leaves = {k: t.detach().clone().requires_grad_() for k, t in a.items()}
    y, _ = g2.grid(*[leaves[k] for k in NAMES])
    (gx,) = torch.autograd.grad(y.square().sum(), [leaves["x"]], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


def test_mixed_dtypes_run_the_wavefront(monkeypatch):
    a = make(V=3, L=4)
    calls = fused(monkeypatch)
    with torch.no_grad():
        run(g2.grid, dict(a, B1=a["B1"].float()))
    assert calls == []


def test_no_c_compiler_warns_once_and_runs_the_wavefront(monkeypatch):
    fresh_process(monkeypatch)
    monkeypatch.setattr(rt_native, "compiler", lambda: None)
    a = make(V=3, L=4)
    calls = fused(monkeypatch)
    with pytest.warns(rt_native.NativeWarning, match="no C compiler found .* install gcc"):
        got = no_grad_run(g2.grid, a)
    assert_same(got, no_grad_run(g2.recurrent, a), "wavefront without a compiler")
    assert calls == [None]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        no_grad_run(g2.grid, a)


def test_a_failed_build_names_the_compiler_and_runs_the_wavefront(monkeypatch):
    fresh_process(monkeypatch)
    monkeypatch.setattr(rt_native, "compiler", lambda: "/bin/false")
    a = make(V=3, L=4)
    with pytest.warns(rt_native.NativeWarning, match="/bin/false could not build or load grid2d "):
        got = no_grad_run(g2.grid, a)
    assert_same(got, no_grad_run(g2.recurrent, a), "wavefront after a failed build")


@NEEDS_CC
def test_a_built_kernel_is_reused_by_other_modules_and_processes(monkeypatch, tmp_path):
    """The library lands in the build directory under a name hashed from the source, flags and compiler;
    a copy of the module with an empty table (a generated module's, another process's) loads it without
    compiling. The default build directory is the user's, private."""
    monkeypatch.setattr(rt_native, "_DIR", [])
    directory = rt_native._build_dir()
    assert os.stat(directory).st_uid == os.getuid() and os.stat(directory).st_mode & 0o777 == 0o700
    monkeypatch.setattr(rt_native, "_DIR", [str(tmp_path)])
    builds = []
    real_run = rt_native.subprocess.run
    monkeypatch.setattr(rt_native.subprocess, "run", lambda *a, **k: builds.append(a) or real_run(*a, **k))
    a = make(V=3, L=4)
    for _ in range(2):
        monkeypatch.setattr(rt_native, "_LIBS", {})
        assert_same(no_grad_run(g2.grid, a), no_grad_run(g2.recurrent, a), "reused library")
        assert len(builds) == 1
    assert [p.suffix for p in tmp_path.iterdir()] == [".so"]


def test_a_library_that_will_not_load_is_removed_and_the_wavefront_runs(monkeypatch, tmp_path):
    """A damaged cached file or a temporary directory mounted noexec: one warning, the file removed (a later
    process builds it again), the wavefront's numbers."""
    monkeypatch.setattr(rt_native, "_DIR", [str(tmp_path)])
    fresh_process(monkeypatch)

    def refuse(path):
        raise OSError(f"{path}: failed to map segment from shared object")

    monkeypatch.setattr(rt_native.ctypes, "CDLL", refuse)
    a = make(V=3, L=4)
    with pytest.warns(rt_native.NativeWarning, match="could not build or load grid2d .*failed to map segment"):
        got = no_grad_run(g2.grid, a)
    assert_same(got, no_grad_run(g2.recurrent, a), "wavefront after a failed load")
    assert list(tmp_path.iterdir()) == []


def test_what_the_fused_loops_cannot_see_runs_the_wavefront(monkeypatch):
    """Forward-mode tangents and jit traces would not see the C call (a zero tangent, a constant output),
    an empty grid has no work: none of them is given to the fused loops."""
    a = make(V=3, L=4)
    x = a["x"]
    assert rt_native.usable(x, a["B1"])
    assert not rt_native.usable(x[:, :, :0], a["B1"])
    with torch.autograd.forward_ad.dual_level():
        assert not rt_native.usable(x, torch.autograd.forward_ad.make_dual(a["B1"], torch.ones_like(a["B1"])))
    monkeypatch.setattr(torch._C, "_is_tracing", lambda: True)
    assert not rt_native.usable(x, a["B1"])
