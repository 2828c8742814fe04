"""Sequence ops (`mx.diff`, `mx.shift`, `mx.flip`; ir/seqops.py, rt/segments.py) and timestamps, checked
by difference:

- each op's torch function against its meaning in the op table, position by position, with and
  without segments, and its adjoint formula against autograd (the transpose, entry by entry);
- specs that use them through every lowering against ``reference`` (fp64, forward, final state,
  every gradient), decode by ``step`` included (the ops that read back carry their past values);
- timestamps: real Unix seconds give exact gaps where float32 could not; bad timestamp inputs.
"""

from __future__ import annotations

import pytest
import sympy
import torch

import mixerc as mx
from mixerc.check import random_inputs, run_check
from mixerc.ir import cost
from mixerc.ir.seqops import SEQUENCE_OPS, op_attrs
from mixerc.rt import segments as S

import toy_shift

CASES = [("diff", {}), ("shift", {"k": 1}), ("shift", {"k": 2}), ("shift", {"k": -1}), ("shift", {"k": -3}),
         ("flip", {})]
SEGMENTS = [None, [0, 0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 1, 1, 2], [0, 1, 2, 3, 4, 5, 6]]


def _bounds(seg, t):
    if seg is None:
        return 0, 6
    s = min(i for i in range(7) if seg[i] == seg[t])
    return s, max(i for i in range(7) if seg[i] == seg[t])


def _dense(entry, seg, attrs) -> torch.Tensor:
    """The 7 x 7 matrix of a linear map given entry by entry (``entry(x, t, s, e, **attrs)``)."""
    xs = sympy.symbols("x0:7")
    out = torch.zeros(7, 7, dtype=torch.float64)
    for t in range(7):
        s, e = _bounds(seg, t)
        expr = sympy.sympify(entry(lambda i: xs[i], t, s, e, **attrs))
        for i in range(7):
            out[t, i] = float(sympy.diff(expr, xs[i]))
    return out


def _call(op, x, attrs, runs):
    fn = getattr(S, op)
    return fn(x, runs=runs, dim=1, **attrs)


@pytest.mark.parametrize("seg", SEGMENTS, ids=["none", "three", "ends", "singletons"])
@pytest.mark.parametrize("op,attrs", CASES, ids=[f"{o}{a.get('k', '')}" for o, a in CASES])
def test_meaning_and_adjoint(op, attrs, seg):
    """y = J x with J from the table's meaning; autograd's x-gradient is J^T g, which the table's
    adjoint gives entry by entry."""
    d = SEQUENCE_OPS[op]
    J = _dense(d.sym, seg, attrs)
    runs = None if seg is None else S.segment_runs(torch.tensor([seg]))
    x = torch.randn(1, 7, 3, dtype=torch.float64, requires_grad=True)
    y = _call(op, x, attrs, runs)
    torch.testing.assert_close(y, torch.einsum("ti,bic->btc", J, x), rtol=0, atol=1e-15)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    adj = _dense(d.adjoint, seg, attrs)
    torch.testing.assert_close(adj, J.T, rtol=0, atol=0)
    torch.testing.assert_close(gx, torch.einsum("ti,bic->btc", adj, g), rtol=0, atol=1e-15)


@pytest.mark.parametrize("op,attrs", [c for c in CASES if SEQUENCE_OPS[c[0]].window(**c[1]) is not None])
def test_past_window_streams(op, attrs):
    """An op that reads back, fed one position at a time with its past, equals the op on the whole row."""
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    w = SEQUENCE_OPS[op].window(**attrs)
    whole = _call(op, x, attrs, None)
    past, ys = None, []
    for t in range(9):
        fn = getattr(S, op)
        y, past = S.past_window(fn, x[:, t:t + 1], w, past, None, 1, **attrs)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), whole, rtol=0, atol=0)
    torch.testing.assert_close(past, x[:, -w:], rtol=0, atol=0)


@mx.spec(example_dims=dict(h=2, p=3, n=4, g=1))
def timed(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), ts: mx.Seq("b l", kind="time"), B: mx.Seq("b l g n"),
          C: mx.Seq("b l g n"), A_log: mx.Param("h", init=mx.init.log_uniform(1, 4)),
          w: mx.Param("h", init=1e-3)):
    delta = mx.softplus(dt + w * mx.diff(ts))
    M = mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A_log) * delta)
    return M @ (mx.shift(x, 2) * delta) + mx.diff(x)


@mx.spec(example_dims=dict(h=2, p=3, n=4))
def flipped(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
    """A backward scan written with flips: flip(M flip(x)) with the coefficients flipped too."""
    M = mx.semiseparable(C=mx.flip(C), B=mx.flip(B), log_decay=-mx.softplus(mx.flip(dt)))
    return mx.flip(M @ mx.flip(x)) + mx.shift(x, -1)


@pytest.mark.parametrize("spec", [timed, flipped], ids=["timed", "flipped"])
def test_specs_every_lowering(spec):
    """Forward, final state, every gradient and (``timed``: its ops read back) decode by step, with
    three segments, against ``reference``; the triton row runs in the interpreter lane."""
    results = run_check(spec, spec.example_dims, b=2, l=19, lowerings=("recurrent", "chunked", "triton"))
    for r in results:
        assert r.ok, r
    assert (results[0].step is not None) == (spec is timed)


def test_flip_spec_is_the_backward_scan():
    """flip(M flip(x)) with flipped coefficients is the anti-causal scan: against a direct loop."""
    m = mx.compile(flipped, dims=flipped.example_dims, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    b, l, h, p, n = 1, 6, 2, 3, 4
    x, dt = torch.randn(b, l, h, p, generator=g, dtype=torch.float64), torch.randn(b, l, h, generator=g,
                                                                                 dtype=torch.float64)
    B, C = (torch.randn(b, l, h, n, generator=g, dtype=torch.float64) for _ in range(2))
    y = m(x=x, dt=dt, B=B, C=C)
    a = torch.exp(-torch.nn.functional.softplus(dt))
    S_, want = torch.zeros(b, h, p, n, dtype=torch.float64), torch.zeros_like(x)
    for t in reversed(range(l)):  # S_t = a_t S_{t+1} + x_t B_t, y_t = S_t C_t
        S_ = a[:, t, :, None, None] * S_ + x[:, t, :, :, None] * B[:, t, :, None, :]
        want[:, t] = (S_ * C[:, t, :, None, :]).sum(-1)
    want[:, :-1] += x[:, 1:]
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


def test_step_refused_when_an_op_reads_ahead():
    m = mx.compile(flipped, dims=flipped.example_dims)
    with pytest.raises(mx.BackendError, match=r"has no step: mx.flip, mx.shift read\(s\) later positions"):
        m.step(m.init_state(1), x=torch.zeros(1, 2, 3), dt=torch.zeros(1, 2), B=torch.zeros(1, 2, 4),
               C=torch.zeros(1, 2, 4))


# -- timestamps -------------------------------------------------------------------------------

@mx.spec(example_dims=dict(h=1, p=1, n=1))
def gaps(x: mx.Seq("b l h p"), ts: mx.Seq("b l", kind="time"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
    """y_t = x_t * (t_t - t_{t-1}) (with B = C = 0 the structure adds nothing)."""
    M = mx.semiseparable(C=C, B=B, log_decay=-mx.exp(B))
    return M @ x + x * mx.diff(ts)


def test_unix_timestamps_give_exact_gaps():
    """At 1.7e9 s float32 is 128 s apart: the gaps come from int64 (and float64) timestamps exactly,
    in a float32 mixer."""
    ts = torch.tensor([[1_700_000_000, 1_700_000_001, 1_700_000_004, 1_700_000_004, 1_700_086_400]])
    want = torch.tensor([0.0, 1.0, 3.0, 0.0, 86396.0])
    assert (ts.float().diff() != want[1:]).any()  # what a float32 cast first would give
    m = mx.compile(gaps, dims=gaps.example_dims)
    zeros = torch.zeros(1, 5, 1, 1)
    for t in (ts, ts.double()):
        y = m(x=torch.ones(1, 5, 1, 1), ts=t, B=zeros, C=zeros)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y[0, :, 0, 0], want, rtol=0, atol=0)
    # segments restart the gaps; decreasing timestamps are allowed and give negative gaps
    seg = torch.tensor([[0, 0, 1, 1, 1]])
    back = torch.tensor([[1_700_000_009, 1_700_000_002, 1_700_000_000, 1_700_000_005, 1_699_999_999]])
    y = m(x=torch.ones(1, 5, 1, 1), ts=back, B=zeros, C=zeros, seq_idx=seg)
    torch.testing.assert_close(y[0, :, 0, 0], torch.tensor([0.0, -7.0, 0.0, 5.0, -6.0]), rtol=0, atol=0)


def test_timestamps_stream_exactly():
    """Decoding one position at a time carries the last timestamp exactly (float64 past), in float32."""
    m = mx.compile(gaps, dims=gaps.example_dims)
    ts = 1_700_000_000 + torch.tensor([[0, 7, 9, 100, 101]])
    zeros = torch.zeros(1, 1, 1)
    state, ys = m.init_state(1), []
    assert state[1].dtype == torch.float64 and state[1].isnan().all()
    for t in range(5):
        y, state = m.step(state, x=torch.ones(1, 1, 1), ts=ts[:, t], B=zeros, C=zeros)
        ys.append(float(y))
    assert ys == [0.0, 7.0, 2.0, 91.0, 1.0]


@pytest.mark.parametrize("ts,msg", [
    (torch.full((1, 3), 1.7e9), r"float32 timestamps above 2\*\*24 = 16777216.*gaps are wrong"),
    (torch.zeros(1, 3, dtype=torch.float16), r"holds timestamps and has dtype torch.float16; pass int64"),
    (torch.zeros(1, 3, dtype=torch.bool), r"holds timestamps and has dtype torch.bool"),
    (torch.tensor([[0.0, float("nan"), 1.0]]), r"holds NaN or infinite timestamps"),
    (torch.tensor([[0.0, float("inf"), 1.0]], dtype=torch.float64), r"holds NaN or infinite timestamps"),
    (torch.full((1, 3), 1_700_000_000_000_000_000), r"above 2\*\*53 \(Unix nanoseconds\?\).*subtract a reference"),
])
def test_bad_timestamps(ts, msg):
    m = mx.compile(gaps, dims=gaps.example_dims)
    zeros = torch.zeros(1, 3, 1, 1)
    with pytest.raises(mx.InputError, match=msg):
        m(x=zeros, ts=ts, B=zeros, C=zeros)
    m(x=zeros, ts=torch.full((1, 3), 1.6e7), B=zeros, C=zeros)  # float32 below 2**24 is exact: fine


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_small_integer_timestamps_do_not_wrap(dtype):
    """Gaps of narrow or unsigned integer timestamps are taken in int64: a decrease is negative, and a
    gap wider than the dtype is exact; the same when decoding one position at a time."""
    m = mx.compile(gaps, dims=gaps.example_dims, dtype=torch.float64)
    ts = torch.tensor([[10, 3, 200, 200, 0]], dtype=dtype)
    want = torch.tensor([0.0, -7.0, 197.0, 0.0, -200.0], dtype=torch.float64)
    zeros = torch.zeros(1, 5, 1, 1, dtype=torch.float64)
    y = m(x=torch.ones_like(zeros), ts=ts, B=zeros, C=zeros)
    torch.testing.assert_close(y[0, :, 0, 0], want, rtol=0, atol=0)
    state, ys = m.init_state(1), []
    for t in range(5):
        y_t, state = m.step(state, x=torch.ones(1, 1, 1, dtype=torch.float64), ts=ts[:, t], B=zeros[:, 0],
                            C=zeros[:, 0])
        ys.append(float(y_t))
    assert ys == want.tolist()


def test_timestamp_pasts_are_float64_whatever_the_timestamps():
    """float32 timestamps (exact below 2**24) leave a float64 past, as init_state makes; a past of
    another dtype is refused with the way to make one."""
    m = mx.compile(gaps, dims=gaps.example_dims)
    zeros = torch.zeros(1, 3, 1, 1)
    ts = torch.tensor([[1.0, 5.0, 6.0]])
    _, state = m(x=zeros, ts=ts, B=zeros, C=zeros, return_final_state=True)
    assert state[1].dtype == torch.float64 and float(state[1][0, 0]) == 6.0
    with pytest.raises(mx.InputError, match=r"state: entry 1 holds past timestamps, kept exact in float64, got "
                                            r"torch.float32; .*mixer.init_state\(1\)"):
        m.step((state[0], state[1].float()), x=zeros[:, 0], ts=ts[:, 0], B=zeros[:, 0], C=zeros[:, 0])


def test_a_nan_in_some_channels_of_a_past_is_data():
    """A past position is absent only where every channel is NaN: a NaN in one channel of the data
    streams exactly as in the whole row, and the other channels are untouched by it."""
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    x[0, 2, 1] = float("nan")
    for op, attrs in [("shift", {"k": 1}), ("shift", {"k": 2}), ("diff", {})]:
        whole = _call(op, x, attrs, None)
        w = SEQUENCE_OPS[op].window(**attrs)
        past, ys = None, []
        for t0, t1 in [(0, 3), (3, 4), (4, 6)]:
            y, past = S.past_window(getattr(S, op), x[:, t0:t1], w, past, None, 1, **attrs)
            ys.append(y)
        torch.testing.assert_close(torch.cat(ys, 1), whole, rtol=0, atol=0, equal_nan=True)
        assert not whole[:, :, [0, 2]].isnan().any()


@pytest.mark.parametrize("body,msg", [
    ("return M @ (x * ts)", r"input 'ts' holds timestamps .* used by mx.mul; a spec reads timestamps only "
                            r"through mx.diff\(ts\)"),
    ("return M @ x + mx.shift(ts, 1)", r"used by mx.shift"),
    ("return M @ x + mx.diff(A)", r"mx.diff: value has dims \(h\) without the sequence axis 'l'"),
    ("return M @ mx.diff(x, axis='v')", r"mx.diff: axis='v' is not a sequence axis of spec 'bad' \(its sequence axes: 'l'; declare more"),
    ("return M @ mx.shift(x, 1.5)", r"mx.shift: k=1.5 must be a Python int"),
    ("return mx.flip(M) @ x", r"flip: a structured matrix can only be applied with '@'"),
])
def test_spec_errors(tmp_path, body, msg):
    src = ("import mixerc as mx\n\n"
           "@mx.spec(example_dims=dict(h=2, p=2, n=2))\n"
           "def bad(x: mx.Seq('b l h p'), ts: mx.Seq('b l', kind='time'), B: mx.Seq('b l h n'),\n"
           "        C: mx.Seq('b l h n'), A: mx.Param('h')):\n"
           "    M = mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A) + 0 * B)\n"
           f"    {body}\n")
    f = tmp_path / "bad.py"
    f.write_text(src)
    with pytest.raises(mx.SpecError, match=msg) as e:
        mx.compile(mx.load_spec(f"{f}:bad"), dims=dict(h=2, p=2, n=2))
    assert e.value.where == "bad.py:7"


def test_seq_kind_checked():
    with pytest.raises(mx.SpecError, match=r"kind='clock'\): kind must be one of value, time"):
        mx.Seq("b l", kind="clock")


def test_segment_runs_in_generated_code_once():
    src = mx.compile(timed, dims=timed.example_dims).source()
    body = src[src.index("def mixer"):]
    assert body.count("segment_runs(") == 1
    assert all(len(line) <= 120 for line in src.splitlines())


def test_materialize_computes_only_what_the_matrices_read():
    """mixer.materialize builds the matrices: no pasts (it takes no state) and nothing of the output path
    (timed's ``+ mx.diff(x)``); the matrix equals the reference lowering's action on x."""
    m = mx.compile(timed, dims=timed.example_dims, dtype=torch.float64)
    ins = random_inputs(m, 1, 7, torch.Generator().manual_seed(0))
    M = m.materialize(**ins)
    body = m._compiled["materialize"][1].split("def mixer", 1)[1]
    assert "past_window" not in body and "_h0" not in body and "diff(x" not in body
    delta = torch.nn.functional.softplus(ins["dt"] + m.w * S.diff(ins["ts"], like=ins["x"])[..., None])
    value = S.shift(ins["x"], 2) * delta[..., None]
    y = torch.einsum("bhij,bjhp->bihp", M, value) + S.diff(ins["x"])
    torch.testing.assert_close(y, m(**ins), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", [timed, flipped], ids=["timed", "flipped"])
def test_generated_triton_lines_fit(spec):
    """Long spec lines quoted in the kernels wrap onto continuation comments within 120 columns."""
    src = mx.compile(spec, dims=spec.example_dims, backend="triton").source("triton")
    assert [ln for ln in src.splitlines() if len(ln) > 120] == []
    assert ("#     log_decay=-mx.softplus(mx.flip(dt)))" in src) == (spec is flipped)  # a long quoted line wraps


def test_ops_cost_and_table_names_are_free():
    """Every sequence op of a spec has a cost row of its table's flops per output element, and no
    structure can be registered under a sequence op's name."""
    _, g, _ = mx.trace(timed, dims=timed.example_dims)
    rows = {name: (op, flops) for name, op, flops, _ in
            cost.node_costs(g, {n.name: "chunked" for n in g.nodes_of("apply")})}
    seq = {name: row for name, row in rows.items() if row[0] in SEQUENCE_OPS}
    assert sorted(op for op, _ in seq.values()) == ["diff", "diff", "shift"]
    for name, (op, flops) in seq.items():
        assert flops == SEQUENCE_OPS[op].flops * cost.numel(g.node(name).dims), name
    assert SEQUENCE_OPS["diff"].flops == 1 and SEQUENCE_OPS["flip"].flops == 0
    for name in SEQUENCE_OPS:
        assert SEQUENCE_OPS[name].doc and op_attrs({"axis": "l"}) == {}
        taken = type("Taken", (toy_shift.Shift,), {"name": name})()
        lowering = mx.StructureLowering(node=taken, torch_module="toy_shift.torch_lowering", alias="_taken",
                                        emit_apply=toy_shift.emit_apply)
        with pytest.raises(mx.BackendError, match=rf"structure name {name!r} is taken: mx.{name} already exists"):
            mx.register_structure(lowering)
