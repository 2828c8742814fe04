"""The `mixerc` command line, through click's runner and once through the installed script."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import mixerc as mx
from mixerc.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_list_shows_builtins():
    r = run("list")
    assert r.exit_code == 0
    assert "mamba2" in r.output and "mamba" in r.output and "semiseparab" in r.output


def test_inspect_shows_ir_structures_plan_and_costs():
    r = run("inspect", "mamba2", "--dims", "h=8,p=64,n=64,g=1", "--shape", "b=2,l=8192")
    assert r.exit_code == 0, r.output
    for needle in ("graph mamba2", "softplus", "semiseparable, scalar decay", "M[i, j] = Sum(",
                   "-> chunked, chunk 64", "reference", "recurrent", "chunked (chosen)", "FLOPs ="):
        assert needle in r.output, needle


@pytest.mark.parametrize("emit,needle", [("ir", "graph mamba"), ("graph", "digraph"), ("torch", "def mixer(")])
def test_compile_emits_to_stdout(emit, needle):
    r = run("compile", "mamba", "--emit", emit)
    assert r.exit_code == 0 and needle in r.output


def test_compile_emits_the_triton_module(tmp_path):
    r = run("compile", "mamba2", "--emit", "triton", "--chunk-size", "32", "-o", str(tmp_path))
    assert r.exit_code == 0, r.output
    src = (tmp_path / "mamba2_triton.py").read_text()
    assert "@triton.jit" in src and "def k0_chunk_scan(" in src and "-- hook: prologue" in src
    assert "k0_CONFIG = {'chunk': 32" in src and "def mixer(" in src
    r = run("compile", "mamba2", "--emit", "triton", "--chunk-size", "24")
    assert r.exit_code == 2 and "power of two" in r.output


def test_compile_writes_code_that_runs(tmp_path):
    r = run("compile", "mamba2", "--dims", "h=2,p=4,n=4,g=1", "--backend", "recurrent", "-o", str(tmp_path))
    assert r.exit_code == 0, r.output
    path = tmp_path / "mamba2_recurrent.py"
    namespace = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    m = mx.compile("mamba2", dims=dict(h=2, p=4, n=4, g=1), backend="recurrent", dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    ins = dict(x=torch.randn(1, 5, 2, 4, generator=g, dtype=torch.float64),
               dt=torch.randn(1, 5, 2, generator=g, dtype=torch.float64),
               B=torch.randn(1, 5, 1, 4, generator=g, dtype=torch.float64),
               C=torch.randn(1, 5, 1, 4, generator=g, dtype=torch.float64))
    y, (state,) = namespace["mixer"](**ins, **dict(m.named_parameters()))
    y_mod, state_mod = m(**ins, return_final_state=True)
    torch.testing.assert_close(y, y_mod)
    torch.testing.assert_close(state, state_mod)


def test_check_passes_and_fails_with_exit_codes(tmp_path):
    r = run("check", "mamba2", "--dims", "h=4,p=4,n=4,g=2", "--shape", "b=1,l=21")
    assert r.exit_code == 0, r.output
    from mixerc.check import default_lowerings

    graph = mx.trace("mamba2", dims=dict(h=4, p=4, n=4, g=2))[1]  # the lowerings mamba2 has
    assert r.output.count("pass") == len(default_lowerings(graph))  # + triton under TRITON_INTERPRET=1
    # an impossible tolerance: the lowerings differ from the reference by rounding, so check fails
    r = run("check", "mamba", "--shape", "b=1,l=9", "--tol", "0")
    assert r.exit_code == 1 and "FAIL" in r.output


def test_check_a_user_spec_file(tmp_path):
    path = tmp_path / "linattn.py"
    path.write_text(
        "import mixerc as mx\n\n"
        "@mx.spec(example_dims=dict(h=2, p=3, n=4))\n"
        "def linattn(q: mx.Seq('b l h n'), k: mx.Seq('b l h n'), v: mx.Seq('b l h p')):\n"
        "    return mx.semiseparable(C=q, B=k) @ v\n")
    r = run("check", str(path))
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args,needle", [
    (("check", "no/such/spec.py"), "does not exist"),
    (("check", "mamba7"), "no built-in spec named 'mamba7'"),
    (("inspect", "mamba2", "--dims", "h=four"), "--dims 'h=four'"),
    (("check", "mamba2", "--shape", "b=2;l=3"), "--shape"),
    (("compile", "mamba2", "--dims", "h=3,g=2"), "not divisible"),
    (("inspect", "mamba2", "--dims", "q=3"), "'q', not a dim of spec 'mamba2'"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle):
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_spec_error_points_at_the_spec_line(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(
        "import mixerc as mx\n\n"
        "@mx.spec(example_dims=dict(h=2, p=3, n=4, g=1))\n"
        "def bad(x: mx.Seq('b l h p'), B: mx.Seq('b l g n'), C: mx.Seq('b l h n')):\n"
        "    return mx.semiseparable(C=C, B=B) @ x\n")
    r = CliRunner().invoke(main, ["check", str(path)])
    assert r.exit_code == 2
    assert "bad.py:5" in r.output and "B has dims (b, l, g, n) but C has (b, l, h, n)" in r.output


@pytest.mark.skipif(shutil.which("mixerc") is None, reason="console script not installed")
def test_installed_console_script():
    out = subprocess.run(["mixerc", "list"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0 and "mamba2" in out.stdout
    out = subprocess.run([sys.executable, "-m", "mixerc.cli", "check", "missing.py"], capture_output=True, text=True)
    assert out.returncode == 2 and "error:" in out.stderr and len(out.stderr.strip().splitlines()) == 1
