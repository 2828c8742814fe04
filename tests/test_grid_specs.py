"""Sequence grids in the IR (``@mx.spec(seq_axes=("v", "l"))``) and the 2-D structure ``mx.grid2d``
wired through tracing, shape inference, the runtime, ``mixerc check`` / ``inspect`` and the CLI:

- the built-in ``ssm2d`` and a spec with sequence ops along either axis: every torch lowering against
  ``reference`` in fp64 (forward, final state, every gradient) and decode along ``l`` by ``step``;
- ``fft2`` on an LTI grid against ``grid``;
- bad input: axis order, 1-D structures in 2-D specs and the reverse, coefficient dims, sized sequence
  axes, ``seq_idx`` and varlen batches, states without the grid's size; each message tested.

The lowerings themselves are checked against the cell-by-cell recurrence in tests/test_grid2d.py.
"""

from __future__ import annotations

import pytest
import torch

import mixerc as mx
from mixerc.check import random_inputs, run_check


def _spec_file(tmp_path, body: str, axes='("v", "l")', args=None) -> mx.Spec:
    args = args or ("x: mx.Seq('b v l h p'), B: mx.Seq('b v l h n'), C: mx.Seq('b v l h n'), "
                    "a: mx.Seq('b v l h'), w: mx.Param('h', init=0.3)")
    src = ("import mixerc as mx\n\n"
           f"@mx.spec(example_dims=dict(h=2, p=2, n=3), seq_axes={axes})\n"
           f"def grid_spec({args}):\n"
           f"    {body}\n")
    f = tmp_path / "grid_spec.py"
    f.write_text(src)
    return mx.load_spec(f"{f}:grid_spec")


def test_ssm2d_every_lowering_and_step():
    spec = mx.load_spec("ssm2d")
    lows = ("reference", "recurrent", "grid")  # triton: tests/test_grid2d_triton.py; fft2 needs LTI
    for r in run_check(spec, dict(h=2, p=3, n=4, g=1), b=2, l=9, axes={"v": 4}, chunk_size=4, lowerings=lows):
        assert r.ok, r
        assert r.lowering != "recurrent" or r.step is not None  # decode along l ran


@mx.spec(example_dims=dict(h=2, p=2, n=3), seq_axes=("v", "l"))
def shifted(x: mx.Seq("b v l h p"), B: mx.Seq("b v l h n"), C: mx.Seq("b v l h n"), a: mx.Seq("b v l h")):
    """Sequence ops along both axes: along v they read the same time step (no state); along l diff and
    shift carry their past values."""
    la = -mx.softplus(a + mx.diff(a, axis="v"))
    M = mx.grid2d(C1=C, B1=mx.flip(B, axis="v"), C2=mx.shift(C, 1), B2=B, log_a1=la, a2=0.5 * mx.sigmoid(a),
                  a3=mx.shift(mx.sigmoid(a), -1, axis="v"), log_a4=la)
    return M @ x + mx.diff(x)


def test_sequence_ops_along_either_axis():
    results = run_check(shifted, shifted.example_dims, b=1, l=7, axes={"v": 3}, chunk_size=4)
    for r in results:
        assert r.ok, r
    assert any(r.step is not None for r in results)


def test_fft2_on_an_lti_grid(tmp_path):
    spec = _spec_file(tmp_path, "M = mx.grid2d(C1=C, B1=B, C2=B, B2=C, log_a1=-w, a2=0.5 * w, a3=w, "
                                "log_a4=-2.0 * w)\n    return M @ x")
    for r in run_check(spec, spec.example_dims, b=2, l=6, axes={"v": 5}, lowerings=("grid", "fft2")):
        assert r.ok, r
    with pytest.raises(mx.BackendError, match=r"grid2d cannot run its .fft2. lowering here .*log_a1 per head\)"):
        varying = _spec_file(tmp_path, "M = mx.grid2d(C1=C, B1=B, C2=C, B2=B, log_a1=-mx.softplus(a))\n    return M @ x")
        mx.compile(varying, dims=varying.example_dims, backend="fft2")


def test_state_needs_the_grid_size():
    m = mx.compile(mx.load_spec("ssm2d"), dims=dict(h=2, p=3, n=4, g=1))
    with pytest.raises(mx.InputError, match=r"its states need the size of v \(pass v=...\)"):
        m.init_state(2)
    assert m.init_state(2, v=5).shape == (2, 2, 5, 2, 3, 4)
    ins = random_inputs(m, 2, 6, torch.Generator().manual_seed(0), dtype=torch.float32, axes={"v": 5})
    y, s = m(**ins, return_final_state=True)
    assert y.shape == (2, 5, 6, 2, 3) and s.shape == (2, 2, 5, 2, 3, 4)
    with pytest.raises(mx.ShapeError, match=r"initial_state: expected dims \(b=2, 2, v=5, h=2, p=3, n=4\)"):
        m(**ins, initial_state=torch.zeros(2, 2, 4, 2, 3, 4))


@pytest.mark.parametrize("backend", ["recurrent", "grid"])
def test_segments_along_l_are_separate_grids(backend):
    """seq_idx (b, l) on a grid spec: the mixer equals the segments run one by one (each from a zero
    state, the initial state entering the first), fp64."""
    m = mx.compile(mx.load_spec("ssm2d"), dims=dict(h=2, p=3, n=4, g=1), backend=backend, dtype=torch.float64)
    ins = random_inputs(m, 2, 7, torch.Generator().manual_seed(0), axes={"v": 3})
    s0 = torch.randn(m.init_state(2, v=3).shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 1, 1, 1]])
    y, fin = m(**ins, seq_idx=seq_idx, initial_state=s0, return_final_state=True)
    for r, cuts in enumerate(([0, 3, 5, 7], [0, 1, 7])):
        for s, e in zip(cuts, cuts[1:]):
            part, last = m(**{k: v[r:r + 1, :, s:e] for k, v in ins.items()}, return_final_state=True,
                           initial_state=s0[r:r + 1] if s == 0 else None)
            torch.testing.assert_close(y[r:r + 1, :, s:e], part, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fin[r:r + 1], last, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw,err,msg", [
    (dict(seq_idx=torch.zeros(2, 4, 6, dtype=torch.long)), mx.ShapeError,
     r"seq_idx: expected dims \(b=2, l=6\) \(segments along l, shared by every v\), got shape \(2, 4, 6\)"),
    (dict(seq_idx=torch.zeros(2, 4, dtype=torch.long)), mx.ShapeError, r"seq_idx: expected dims \(b=2, l=6\)"),
    (dict(cu_seqlens=torch.tensor([0, 6])), mx.InputError, r"cu_seqlens: spec 'ssm2d' has sequence axes \('v', "
                                                           r"'l'\); varlen batches are for 1-D specs"),
])
def test_bad_segments_for_grids(kw, err, msg):
    m = mx.compile(mx.load_spec("ssm2d"), dims=dict(h=2, p=3, n=4, g=1))
    ins = random_inputs(m, 2, 6, torch.Generator().manual_seed(0), dtype=torch.float32, axes={"v": 4})
    with pytest.raises(err, match=msg):
        m(**ins, **kw)


def test_segments_refused_by_fft2(tmp_path):
    spec = _spec_file(tmp_path, "M = mx.grid2d(C1=C, B1=B, C2=B, B2=C, log_a1=-w, a2=0.5 * w)\n    return M @ x")
    m = mx.compile(spec, dims=spec.example_dims, backend="fft2")
    ins = random_inputs(m, 2, 6, torch.Generator().manual_seed(0), dtype=torch.float32, axes={"v": 3})
    with pytest.raises(mx.InputError, match=r"seq_idx: spec 'grid_spec' runs grid2d's fft2 lowering, which takes "
                                            r"no segments; pick a backend whose lowerings do \(backend='grid' for "
                                            r"grid2d\)"):
        m(**ins, seq_idx=torch.zeros(2, 6, dtype=torch.long))
    assert m.segment_refusals() == ["grid2d's fft2 lowering"]


@pytest.mark.parametrize("body,axes,args,msg", [
    ("return mx.semiseparable(C=C, B=B) @ x", None, None,
     r"mx.semiseparable is a 1-D structure \(it mixes along one sequence axis\), but spec 'grid_spec' declares "
     r"seq_axes=\('v', 'l'\); a 2-D spec mixes with a 2-D structure \(mx.grid2d\)"),
    ("return mx.grid2d(C1=C, B1=B, C2=C, B2=B) @ x", '("l",)',
     "x: mx.Seq('b l h p'), B: mx.Seq('b l h n'), C: mx.Seq('b l h n')",
     r"mx.grid2d is a 2-D structure .* declares seq_axes=\('l',\); declare @mx.spec\(seq_axes=\('v', 'l'\)\)"),
    ("return mx.grid2d(C1=C, B1=B, C2=C, B2=B) @ x", None,
     "x: mx.Seq('b l v h p'), B: mx.Seq('b v l h n'), C: mx.Seq('b v l h n')",
     r"input 'x' has dims \(b, l, v, h, p\); a per-position input \(mx.Seq\) must start with 'b v l'; the "
     r"sequence axes come in the declared order"),
    ("return mx.grid2d(C1=C, B1=B, C2=C, B2=B, log_a1=w * x) @ x", None, None,
     r"grid2d: log_a1 has dims \(b, v, l, h, p\); expected per head \(b, v, l, h\) or per state \(b, v, l, h, n\)"),
    ("return mx.grid2d(C1=C, B1=B, C2=C, B2=a) @ x", None, None,
     r"grid2d: B2 has dims \(b, v, l, h\); expected \(b, v, l, h, n\) or \(b, v, l, g, n\)"),
    ("return mx.grid2d(C1=C, B1=B, C2=C, B2=B) @ mx.diff(x, axis='t')", None, None,
     r"mx.diff: axis='t' is not a sequence axis of spec 'grid_spec' \(its sequence axes: 'v', 'l'"),
    ("return mx.grid2d(C1=C, B1=B, C2=C, B2=B) @ x", '("l", "v")', None,
     r"seq_axes=\('l', 'v'\); the last axis is the time axis 'l'"),
    ("return mx.grid2d(C1=C, B1=B, C2=C, B2=B) @ x", '"v l"', None, r"pass a tuple of one or two axis names"),
])
def test_grid_spec_errors(tmp_path, body, axes, args, msg):
    with pytest.raises(mx.SpecError, match=msg):
        spec = _spec_file(tmp_path, body, axes or '("v", "l")', args)
        mx.compile(spec, dims=spec.example_dims)


def test_sequence_axes_stay_symbolic():
    with pytest.raises(mx.SpecError, match=r"dims: 'v' is a sequence axis of spec 'ssm2d' and stays symbolic"):
        mx.compile(mx.load_spec("ssm2d"), dims=dict(h=2, p=3, n=4, g=1, v=3))


def test_cli_shape_reads_the_axes(capsys):
    from mixerc.cli import main

    with pytest.raises(SystemExit) as e:
        main(["check", "ssm2d", "--dims", "h=2,p=2,n=2", "--shape", "b=1,l=5,v=2"], standalone_mode=True)
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # the table's title may wrap
    assert "(fp64, b=1, v=2, l=5, h=2, p=2, n=2" in out
    with pytest.raises(SystemExit) as e:
        main(["inspect", "ssm2d", "--dims", "h=2,p=2,n=2", "--shape", "b=1,l=64,v=3"], standalone_mode=True)
    assert e.value.code == 0
    assert "cost at h=2, p=2, n=2, g=1, v=3, b=1, l=64" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["inspect", "ssm2d", "--shape", "b=1,l=64,w=3"], standalone_mode=True)
    assert e.value.code == 2
    assert "--shape names w; it sizes the batch and the sequence axes b, v, l" in capsys.readouterr().err


@mx.spec(example_dims=dict(h=1, n=2, p=2), seq_axes=("v", "l"))
def shift_back_two(x: mx.Seq("b v l h p"), C1: mx.Seq("b v l h n"), B1: mx.Seq("b v l h n"),
                   C2: mx.Seq("b v l h n"), B2: mx.Seq("b v l h n")):
    """Found by the fuzzer: a sequence op reading two positions back along l, whose past sits at axis 2
    of a grid (the past window took the sequence axis to be axis 1)."""
    M = mx.grid2d(C1=mx.shift(-C1, 2), B1=B1, C2=C2, B2=B2)
    return M @ x


@pytest.mark.parametrize("l,v", [(1, 1), (5, 3), (6, 2)])
def test_a_past_window_along_l_of_a_grid(l, v):
    results = run_check(shift_back_two, shift_back_two.example_dims, b=2, l=l, axes={"v": v}, chunk_size=4)
    for r in results:
        assert r.ok, r
    assert any(r.step is not None for r in results) or l == 1
