"""Varlen batches (mixerc/varlen.py): ``cu_seqlens`` (packed) and ``lengths`` (right-padded) against
running the sequences one by one, in fp64: outputs, one final state per sequence, and the gradients of
every input and parameter; every built-in spec (structures with and without a state) and specs with
sequence ops; the triton lowering in the interpreter lane. Bad varlen inputs: each message tested."""

from __future__ import annotations

import pytest
import torch

import mixerc as mx
from mixerc.check import random_inputs
from test_sequence_ops import flipped, timed

LENS = [5, 1, 8, 3]
SPECS = ["mamba2", "mamba", "hydra", "s4d", "longconv", "tim4rec", timed, flipped]


def _spec(s):
    return mx.load_spec(s) if isinstance(s, str) else s


def _mixer(spec, backend="auto", chunk_size=4):
    sp = _spec(spec)
    return mx.compile(sp, dims=sp.example_dims, dtype=torch.float64, backend=backend, chunk_size=chunk_size)


def _sequences(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [random_inputs(m, 1, n, g) for n in LENS]


def _one_by_one(m, seqs, stateful):
    outs = [m(**s, return_final_state=True) if stateful else (m(**s), None) for s in seqs]
    return [o[0] for o in outs], [o[1] for o in outs]


def _grads(y, inputs, m):
    leaves = [v for v in inputs if v.requires_grad] + list(m.parameters())
    w = torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)
    return torch.autograd.grad((y * w).sum(), leaves, allow_unused=True)


def _leafs(seqs):
    return [{k: v.clone().requires_grad_(v.is_floating_point()) for k, v in s.items()} for s in seqs]


def _states(finals):
    return [f if isinstance(f, tuple) else (f,) for f in finals]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s if isinstance(s, str) else s.name)
def test_cu_seqlens_equals_one_by_one(spec):
    m = _mixer(spec)
    stateful = any(s is not None for s in m.state_shapes(1))
    seqs = _sequences(m)
    ones = _leafs(seqs)
    ys, finals = _one_by_one(m, ones, stateful)
    want = torch.cat(ys, 1)
    want_g = _grads(want, [v for s in ones for v in s.values()], m)

    packed_leaf = _leafs([{k: torch.cat([s[k] for s in seqs], 1) for k in seqs[0]}])[0]
    cu = torch.tensor([0] + LENS).cumsum(0).to(torch.int32)
    y = m(**packed_leaf, cu_seqlens=cu)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    # the gradient of a packed input is the sequences' gradients, packed
    got_g = _grads(y, list(packed_leaf.values()), m)
    n_in = sum(v.requires_grad for v in packed_leaf.values())
    for k, (name, v) in enumerate((k, v) for k, v in packed_leaf.items() if v.requires_grad):
        per_seq = [want_g[i * n_in + k] for i in range(len(LENS))]
        torch.testing.assert_close(got_g[k], torch.cat(per_seq, 1), rtol=1e-12, atol=1e-12, msg=name)
    for got, ref in zip(got_g[n_in:], want_g[n_in * len(LENS):]):  # parameters
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    if stateful:
        y2, fin = m(**packed_leaf, cu_seqlens=cu, return_final_state=True)
        torch.testing.assert_close(y2, want, rtol=1e-12, atol=1e-12)
        for k, f in enumerate(_states([fin])[0]):
            if f is not None:
                ref = torch.cat([_states([s])[0][k] for s in finals], 0)
                torch.testing.assert_close(f, ref, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("spec", ["mamba2", "hydra", timed, flipped], ids=lambda s: s if isinstance(s, str) else s.name)
def test_lengths_equal_one_by_one_and_padding_never_leaks(spec):
    """Right-padded rows: valid positions and final states as one by one, whatever the padding holds
    (NaN included); padded outputs are 0."""
    m = _mixer(spec)
    stateful = any(s is not None for s in m.state_shapes(1))
    seqs = _sequences(m)
    ys, finals = _one_by_one(m, seqs, stateful)
    L = max(LENS)
    padded = {}
    for k in seqs[0]:
        rows = []
        for s, n in zip(seqs, LENS):
            row = s[k][0]
            fill = torch.full((L - n, *row.shape[1:]), float("nan") if row.is_floating_point() else 7,
                              dtype=row.dtype)
            rows.append(torch.cat([row, fill]))
        padded[k] = torch.stack(rows)
    out = m(**padded, lengths=torch.tensor(LENS), return_final_state=stateful)
    y, fin = out if stateful else (out, None)
    for i, n in enumerate(LENS):
        torch.testing.assert_close(y[i, :n], ys[i][0], rtol=1e-12, atol=1e-12)
        assert (y[i, n:] == 0).all()
    if stateful:
        for k, f in enumerate(_states([fin])[0]):
            if f is not None:
                ref = torch.cat([_states([s])[0][k] for s in finals], 0)
                torch.testing.assert_close(f, ref, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_cu_seqlens_triton_interpreter():
    """Outputs, final states and the gradients of every input and parameter of a packed batch on the
    triton lowering (interpreter lane) equal the sequences run one by one."""
    m = _mixer("mamba2", backend="triton", chunk_size=16)
    seqs = _sequences(m)
    ones = _leafs(seqs)
    ys, finals = _one_by_one(m, ones, True)
    want_g = _grads(torch.cat(ys, 1), [v for s in ones for v in s.values()], m)
    packed = {k: torch.cat([s[k] for s in seqs], 1).requires_grad_() for k in seqs[0]}
    cu = torch.tensor([0] + LENS).cumsum(0)
    y, fin = m(**packed, cu_seqlens=cu, return_final_state=True)
    torch.testing.assert_close(y, torch.cat(ys, 1).detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fin, torch.cat(finals, 0).detach(), rtol=1e-10, atol=1e-12)
    got_g = _grads(y, list(packed.values()), m)
    n_in = len(packed)
    for k, name in enumerate(packed):  # an input's gradient, packed, is the sequences' gradients concatenated
        want = torch.cat([want_g[i * n_in + k] for i in range(len(LENS))], 1)
        torch.testing.assert_close(got_g[k], want, rtol=1e-9, atol=1e-11, msg=name)
    for k, (name, _) in enumerate(m.named_parameters()):
        torch.testing.assert_close(got_g[n_in + k], want_g[len(LENS) * n_in + k], rtol=1e-9, atol=1e-11, msg=name)
    torch.testing.assert_close(m(**packed, cu_seqlens=cu), y, rtol=1e-10, atol=1e-12)


def test_a_structure_without_segments_refuses_varlen(monkeypatch):
    """A registered structure whose lowerings take no segments would mix the packed sequences: refused."""
    m = _mixer("mamba2")
    monkeypatch.setattr(m, "unsegmented", ["toy"])
    for kw in (dict(cu_seqlens=torch.tensor([0, 4, 17])), dict(lengths=torch.tensor([17]))):
        what = next(iter(kw))
        with pytest.raises(mx.InputError, match=rf"{what}: spec 'mamba2' uses toy, whose lowerings do not take "
                                                r"segments yet; run each sequence as its own batch row"):
            m(**_packed(m), **kw)


def _packed(m, total=17):
    return random_inputs(m, 1, total, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kw,err,msg", [
    (dict(cu_seqlens=torch.tensor([0, 5, 5, 17])), mx.InputError,
     r"cu_seqlens must be strictly increasing \(every sequence at least one position\), but entry 2 is 5 after 5"),
    (dict(cu_seqlens=torch.tensor([0, 9, 4, 17])), mx.InputError, r"strictly increasing.*entry 2 is 4 after 9"),
    (dict(cu_seqlens=torch.tensor([1, 5, 17])), mx.InputError, r"cu_seqlens must start at 0, got 1"),
    (dict(cu_seqlens=torch.tensor([0, 5, 16])), mx.InputError,
     r"cu_seqlens ends at 16 but the packed inputs have l=17 positions"),
    (dict(cu_seqlens=torch.tensor([0])), mx.InputError, r"cu_seqlens has 1 entry; expected the \(N \+ 1,\)"),
    (dict(cu_seqlens=torch.tensor([0.0, 17.0])), mx.InputError, r"cu_seqlens must be a 1-D integer tensor"),
    (dict(cu_seqlens=[0, 17]), mx.InputError, r"cu_seqlens must be a 1-D integer tensor .*got list"),
    (dict(cu_seqlens=torch.tensor([0, 17]), seq_idx=torch.zeros(1, 17, dtype=torch.long)), mx.InputError,
     r"seq_idx and cu_seqlens both say where sequences start; pass one"),
    (dict(cu_seqlens=torch.tensor([0, 17]), lengths=torch.tensor([17])), mx.InputError,
     r"pass cu_seqlens \(a packed batch\) or lengths \(a right-padded batch\), not both"),
    (dict(cu_seqlens=torch.tensor([0, 17]), initial_state=torch.zeros(1, 4, 16, 16)), mx.InputError,
     r"initial_state with cu_seqlens: a varlen batch starts every sequence from a zero state"),
    (dict(lengths=torch.tensor([0])), mx.InputError, r"lengths\[0\] = 0; every length must be in 1..l = 1..17"),
    (dict(lengths=torch.tensor([18])), mx.InputError, r"lengths\[0\] = 18"),
    (dict(lengths=torch.tensor([3, 4])), mx.ShapeError, r"lengths: expected shape \(1,\), one per row"),
])
def test_bad_varlen_inputs(kw, err, msg):
    m = _mixer("mamba2")
    with pytest.raises(err, match=msg):
        m(**_packed(m), **kw)


def test_cu_seqlens_needs_one_packed_row():
    m = _mixer("mamba2")
    two = random_inputs(m, 2, 5, torch.Generator().manual_seed(0))
    with pytest.raises(mx.ShapeError, match=r"cu_seqlens: the inputs have batch b=2; a packed batch is one row"):
        m(**two, cu_seqlens=torch.tensor([0, 2, 5]))


def test_nothing_the_caller_passed_is_modified():
    m = _mixer("mamba2")
    ins = _packed(m)
    before = {k: v.clone() for k, v in ins.items()}
    cu = torch.tensor([0, 4, 17])
    m(**ins, cu_seqlens=cu, return_final_state=True)
    assert all(torch.equal(ins[k], before[k]) for k in ins) and cu.tolist() == [0, 4, 17]
