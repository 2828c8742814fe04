"""A structure added from outside mixerc through the public registration (tests/toy_shift/: the IR
node, its lowering package and a spec; nothing in mixerc changes): it traces, compiles on every torch
lowering, decodes, is checked by ``mixerc check``, and its generated module copies its lowerings in."""

import inspect
import os

import pytest
import torch
from click.testing import CliRunner

import mixerc as mx
from mixerc.check import run_check
from mixerc.cli import main

import toy_shift  # registers mx.toy_shift
from toy_shift.spec import toy_mixer

HERE = os.path.dirname(os.path.abspath(__file__))
DIMS = dict(h=2, p=3)


def by_hand(x, gate, w, s0, seq_idx):
    """y_t = sigmoid(gate_t) w x_{t-1} + x_t, x_{-1} = s0, zero across a segment start."""
    a = torch.sigmoid(gate) * w
    y = x.clone()
    for t in range(x.shape[1]):
        prev = s0 if t == 0 else x[:, t - 1] * (seq_idx[:, t] == seq_idx[:, t - 1])[:, None, None]
        y[:, t] += a[:, t, :, None] * prev
    return y


def test_the_dsl_has_its_constructor():
    assert str(inspect.signature(mx.toy_shift)) == "(*, a=None) -> mixerc.dsl.Matrix"
    assert "y_t = a_t x_{t-1}" in mx.toy_shift.__doc__


def test_every_lowering_matches_the_math_with_states_segments_and_decode():
    g = torch.Generator().manual_seed(0)
    b, l = 2, 11
    x = torch.randn(b, l, 2, 3, generator=g, dtype=torch.float64)
    gate = torch.randn(b, l, 2, generator=g, dtype=torch.float64)
    s0 = torch.randn(b, 2, 3, generator=g, dtype=torch.float64)
    seq_idx = torch.tensor([[0] * 4 + [1] * 7, [0] * 6 + [3] * 5])
    for low in ("reference", "recurrent", "chunked"):
        m = mx.compile(toy_mixer, dims=DIMS, backend=low, dtype=torch.float64)
        want = by_hand(x, gate, m.w.detach(), s0, seq_idx)
        y, final = m(x=x, gate=gate, initial_state=s0, seq_idx=seq_idx, return_final_state=True)
        assert torch.allclose(y, want, atol=1e-12), low
        assert torch.equal(final, x[:, -1]), low
    # decode: a prefill of 6 positions, then one step at a time, equals the whole sequence
    m = mx.compile(toy_mixer, dims=DIMS, dtype=torch.float64)
    whole = m(x=x, gate=gate, initial_state=s0)
    _, state = m(x=x[:, :6], gate=gate[:, :6], initial_state=s0, return_final_state=True)
    for t in range(6, l):
        y_t, state = m.step(state, x=x[:, t], gate=gate[:, t])
        assert torch.allclose(y_t, whole[:, t], atol=1e-12), t


def test_run_check_compares_every_lowering_fwd_and_bwd():
    results = run_check(toy_mixer, DIMS, l=13)
    assert [r.lowering for r in results] == ["reference", "recurrent", "chunked"]
    assert all(r.ok for r in results), results
    assert all(r.grads is not None for r in results)


def test_generated_module_copies_the_toy_lowerings():
    src = mx.compile(toy_mixer, dims=DIMS).source()
    assert "class _toy:" in src and "# from toy_shift/torch_lowering.py: chunked" in src
    assert "def recurrent(" not in src and "import toy_shift" not in src  # standalone: copies, no import


def test_the_cli_checks_and_inspects_it():
    spec = os.path.join(HERE, "toy_shift", "spec.py")
    result = CliRunner().invoke(main, ["check", spec])
    assert result.exit_code == 0, result.output
    assert result.output.count("pass") == 3
    result = CliRunner().invoke(main, ["inspect", spec])
    assert result.exit_code == 0, result.output
    assert "toy_shift" in result.output and "Piecewise" in result.output.replace("\n", "")


def test_helper_modules_are_checked_when_registered():
    """``torch_helpers`` (modules the torch module imports from, copied beside it) must import, and their
    aliases must be free: each mistake is a BackendError naming it."""
    def lowering(helpers):
        return mx.StructureLowering(node=toy_shift.Shift(), torch_module="toy_shift.torch_lowering", alias="_toy",
                                    emit_apply=toy_shift.emit_apply, torch_helpers=helpers)

    with pytest.raises(mx.BackendError, match=r"alias '_ss' is taken"):
        mx.register_structure(lowering({"toy_shift.spec": "_ss"}))
    with pytest.raises(mx.BackendError, match=r"alias '_toy' is taken"):
        mx.register_structure(lowering({"toy_shift.spec": "_toy"}))
    with pytest.raises(mx.BackendError, match=r"torch module 'toy_shift.nowhere' does not import"):
        mx.register_structure(lowering({"toy_shift.nowhere": "_toy_more"}))
