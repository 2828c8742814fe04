"""Shape polymorphism: under ``torch.compile(dynamic=True, fullgraph=True)`` one graph serves every
sequence length >= 2 on the chunked, fft and direct lowerings (no loop whose trip count depends on
l, no branch on it), forward and backward, with initial and final states and segments; and the
chunk-level state pass (`scan_entries`) equals the sequential recurrence it replaces.

The mamba2 test runs in the default lane; the other structures' (tracing each costs a minute on a
loaded 2-core machine) in the slow one (``pytest -m slow``).

Graphs are counted with a counting backend (AOTAutograd's forward and backward compilers returning
the traced graph: no inductor). Dynamo's duck sizing is off: it would assume ``l == b`` when both
are 2 and recompile once at the next length, which says nothing about the lowerings
(benchmarks/bench_dynamic.py measures the same way).
"""

from __future__ import annotations

import pytest
import torch
import torch.fx.experimental._config as fx_config

import mixerc as mx
from mixerc.check import random_inputs
from mixerc.codegen.structures.semiseparable import torch_lowering as ss
from ref.graphs import Counting


def _close(a, b, what):
    err = float((a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1e-300))
    assert err < 1e-10, f"{what}: compiled differs from eager by {err:.2e} (relative)"


def _run_lengths(m, lengths, *, backward, seq=False, states=False, b=2):
    """Call the compiled mixer at every length; compare y (and final state, gradients) with eager;
    return the counting backend. ``states``: compare the final state (the mixer's initial_state
    is exercised on the lowering itself, `test_chunked_lowering_one_graph_with_initial_state`: the
    runtime's check of it formats the batch size into a message, which dynamo cannot trace with a
    symbolic batch)."""
    counting = Counting()
    params = list(m.parameters())

    def call(ins, init, seq_idx):
        return m(**ins, initial_state=init, seq_idx=seq_idx, return_final_state=True)

    compiled = torch.compile(call, fullgraph=True, dynamic=True, backend=counting.backend)
    with fx_config.patch(use_duck_shape=False):
        for l in lengths:
            g = torch.Generator().manual_seed(l)
            ins = {k: v.requires_grad_(backward) for k, v in random_inputs(m, b, l, generator=g).items()}
            init = None
            seq_idx = None
            if seq:  # three segments of uneven length, the last one running to the end
                seq_idx = (torch.arange(l)[None].expand(b, l) * 3 // max(l, 1) + torch.arange(b)[:, None]) % 5
            outs = [call(ins, init, seq_idx), compiled(ins, init, seq_idx)]
            ys = [y for y, _ in outs]
            _close(ys[1], ys[0], f"y at l={l}")
            if states:
                _close(outs[1][1], outs[0][1], f"final state at l={l}")
            if backward:
                wrt = [*ins.values(), *params]
                loss = [y.square().sum() + (s.sum() if states else 0) for y, s in outs]
                want, got = (torch.autograd.grad(x, wrt) for x in loss)
                for name, a, w in zip([*ins, *dict(m.named_parameters())], got, want):
                    _close(a, w, f"d/d{name} at l={l}")
    return counting


@pytest.mark.slow  # ~35 s of dynamo tracing; the other one-graph tests here stay in the default tier
def test_mamba2_chunked_one_graph_forward_and_backward_with_final_states_and_segments():
    m = mx.compile("mamba2", dims=dict(h=2, p=3, n=4, g=1), backend="chunked", dtype=torch.float64,
                   chunk_size=4)
    # l = 70: 18 chunks, so the state pass runs on two groups of chunks (PASS_GROUP = 16)
    counting = _run_lengths(m, [2, 5, 19, 70], backward=True, seq=True, states=True)
    assert (counting.fw, counting.bw) == (1, 1), f"graphs: {counting.fw} forward, {counting.bw} backward"


@pytest.mark.slow
@pytest.mark.parametrize("spec,dims,lowering,chunk,states", [
    ("mamba", dict(d=3, n=4), "chunked", 2, True),       # diagonal decay (chunk 2: a short loop to trace)
    ("hydra", dict(h=2, p=3, n=4, g=1), "chunked", 2, False),  # quasiseparable
    ("longconv", dict(h=2, k=6), "fft", None, False),    # Toeplitz, kernel longer and shorter than l
    ("longconv", dict(h=2, k=6), "direct", None, False),
    ("mamba2", dict(h=2, p=3, n=4, g=1), "reference", None, True),
])
def test_one_graph_for_every_length(spec, dims, lowering, chunk, states):
    m = mx.compile(spec, dims=dims, backend=lowering, dtype=torch.float64, chunk_size=chunk)
    counting = _run_lengths(m, [2, 19, 70], backward=False, seq=lowering in ("chunked", "reference"),
                            states=states)
    assert counting.fw == 1, f"{spec} {lowering}: {counting.fw} graphs for 3 lengths"


@pytest.mark.slow
def test_linear_attention_without_decay_one_graph():
    @mx.spec
    def linattn(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
        return mx.semiseparable(C=C, B=B) @ x

    m = mx.compile(linattn, dims=dict(h=2, p=3, n=4), backend="chunked", dtype=torch.float64, chunk_size=4)
    counting = _run_lengths(m, [3, 70], backward=True, states=True)
    assert (counting.fw, counting.bw) == (1, 1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["scalar", "diagonal"])
def test_chunked_lowering_one_graph_with_initial_state(kind):
    """The semiseparable chunked lowering itself, compiled with an initial state, segments and a
    fused scale: one forward and one backward graph for lengths 2 .. 70 (chunk 2: up to 35 chunks)."""
    counting = Counting()

    def run(x, B, C, log_a, S0, seq_idx, scale):
        y, final = ss.chunked(x, B, C, log_a, S0, seq_idx, 2, x_scale=scale)
        return y.square().sum() + final.square().sum()

    compiled = torch.compile(run, fullgraph=True, dynamic=True, backend=counting.backend)
    with fx_config.patch(use_duck_shape=False):
        for l in (2, 7, 70):
            g = torch.Generator().manual_seed(l)
            b, H, P, N = 3, 2, 5, 4

            def rnd(*shape):
                return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

            la = -torch.rand(b, l, H, *([N] if kind == "diagonal" else []), generator=g, dtype=torch.float64)
            args = [rnd(b, l, H, P), rnd(b, l, 1, N), rnd(b, l, 1, N), la.requires_grad_(), rnd(b, H, P, N),
                    (torch.arange(l)[None].expand(b, l) * 2 // l), rnd(b, l, H)]
            grads = [torch.autograd.grad(f(*args), [a for a in args if a.requires_grad]) for f in (run, compiled)]
            for a, w in zip(*grads[::-1]):
                _close(a, w, f"{kind} gradient at l={l}")
    assert (counting.fw, counting.bw) == (1, 1), f"graphs: {counting.fw} forward, {counting.bw} backward"


# -- the chunk-level state pass -------------------------------------------------------------------


def _sequential(V, a, keep):
    """E_k = keep_k exp(a_k) E_{k-1} + V_k, E_0 = V_0: the loop `scan_entries` replaces."""
    d = a.exp() if keep is None else a.exp() * keep
    E, out = V[:, 0], [V[:, 0]]
    for k in range(1, V.shape[1]):
        E = d[:, k] * E + V[:, k]
        out.append(E)
    return torch.stack(out, 1)


# n: one entry, one group, two groups, a second level (> 16^2 entries), a third (> 16^3: the matrix)
@pytest.mark.parametrize("n", [1, 2, 16, 17, 40, 300, 4200])
@pytest.mark.parametrize("with_cuts", [False, True])
def test_scan_entries_equals_the_sequential_pass_values_and_gradients(n, with_cuts):
    g = torch.Generator().manual_seed(n)
    V = torch.randn(2, n, 3, 4, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    # a decay per (entry, dim 2, dim 4), shared along dims 3 and 5 (a head's decay over its state block)
    a = (-3 * torch.rand(2, n, 3, 1, 2, 1, generator=g, dtype=torch.float64)).requires_grad_()  # strong decays
    keep = (torch.rand(2, n, 1, 1, 1, 1, generator=g) > 0.1).double() if with_cuts else None
    want, got = _sequential(V, a, keep), ss.scan_entries(V, a, keep)
    assert float(((got - want).abs().max() / want.abs().max()).detach()) < 1e-12
    w = torch.randn(want.shape, generator=g, dtype=torch.float64)
    for gw, gg in zip(torch.autograd.grad((want * w).sum(), (V, a), allow_unused=True),
                      torch.autograd.grad((got * w).sum(), (V, a), allow_unused=True)):
        if gw is None:  # n = 1: no decay is used
            assert gg is None or not gg.any()
        else:
            assert float((gg - gw).abs().max() / gw.abs().max()) < 1e-12


def test_scan_entries_without_gradients_runs_in_its_own_copy():
    g = torch.Generator().manual_seed(3)
    V = torch.randn(2, 4200, 3, 4, generator=g, dtype=torch.float64)  # three levels: groups, groups of groups, matrix
    a = -3 * torch.rand(2, 4200, 3, 1, generator=g, dtype=torch.float64)
    keep = (torch.rand(2, 4200, 1, 1, generator=g) > 0.1).double()
    before = V.clone(), a.clone()
    with torch.no_grad():
        got = ss.scan_entries(V, a, keep)
    assert torch.equal(V, before[0]) and torch.equal(a, before[1])
    want = _sequential(V, a, keep)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-12


def test_scan_by_matrix_has_no_positive_exponent_and_no_gradient_on_the_diagonal():
    """Exponents are sums of in-range terms only (the segsum), so with a <= 0 no entry exceeds 1, and the
    diagonal (an empty product) carries no gradient into a: E_k = V_k + (terms of earlier entries)."""
    a = (-torch.rand(4, 16, 1, dtype=torch.float64) * 50).requires_grad_()
    eye = torch.eye(16, dtype=torch.float64).expand(4, 16, 16)  # V_z = e_z: E holds W itself
    W = ss.scan_entries(eye, a, depth=0)  # (4, k, z)
    assert torch.all(W <= 1) and torch.all(W.diagonal(dim1=-2, dim2=-1) == 1)
    assert torch.all(W.triu(1) == 0)
    (grad,) = torch.autograd.grad(W.diagonal(dim1=-2, dim2=-1).sum(), a)
    assert torch.all(grad == 0)


@pytest.mark.parametrize("decay", ["scalar", "diagonal"])
@pytest.mark.parametrize("segments", [False, True])
@pytest.mark.parametrize("G", [1, 2])  # one group: the final state's reshape would be a free view
def test_chunked_without_gradients_equals_the_differentiable_path_and_leaves_its_inputs(decay, segments, G):
    """With nothing to differentiate `chunked` forms step 1's weights and runs the chunk pass in place, in
    buffers of its own: same values and final state as with gradients, the caller's tensors untouched."""
    g = torch.Generator().manual_seed(5)
    b, l, H, P, N = 2, 70, 4, 3, 5  # chunk 4: 18 chunks, so the pass runs on two groups of chunks
    x, B, C = (torch.randn(*s, generator=g, dtype=torch.float64) for s in [(b, l, H, P), (b, l, G, N), (b, l, G, N)])
    la = -torch.rand(b, l, H, *([N] if decay == "diagonal" else []), generator=g, dtype=torch.float64)
    S0 = torch.randn(b, H, P, N, generator=g, dtype=torch.float64)
    seq_idx = torch.randint(0, 2, (b, l), generator=g).cumsum(1) if segments else None
    ins = dict(x=x, B=B, C=C, log_a=la, initial_state=S0)
    before = {k: v.clone() for k, v in ins.items()}
    with torch.no_grad():
        y0, f0 = ss.chunked(**ins, seq_idx=seq_idx, chunk_size=4)
    for k, v in ins.items():
        assert torch.equal(v, before[k]), f"{k} was written"
    y1, f1 = ss.chunked(**{k: v.clone().requires_grad_() for k, v in ins.items()}, seq_idx=seq_idx, chunk_size=4)
    for f in (f0, f1):  # a copy, not a view that would keep every chunk's state alive with it
        assert f.untyped_storage().nbytes() == f.numel() * f.element_size()
    for got, want, what in ((y0, y1, "output"), (f0, f1, "final state")):
        err = float((got - want.detach()).abs().max() / want.detach().abs().max())
        assert err < 1e-12, f"{what}: without gradients differs by {err:.2e} (relative)"
