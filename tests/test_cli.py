"""The `mixerc` command line, through click's runner and once through the installed script."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

import mixerc as mx
from mixerc import cli
from mixerc.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_list_shows_builtins(monkeypatch):
    monkeypatch.setattr(cli, "console", Console(width=200, highlight=False))  # (xdist's workers pin COLUMNS=80)
    r = run("list")
    assert r.exit_code == 0
    assert "mamba2" in r.output and "mamba" in r.output and "semiseparab" in r.output
    # a summary is the docstring's whole first paragraph (its first line was cut mid-sentence), and
    # the caption says where the inputs and parameters are
    assert "whose step sizes depend on the input, one per axis, discretised as Mamba does" in r.output
    assert "mixerc inspect NAME" in r.output


def test_inspect_shows_ir_structures_plan_and_costs():
    r = run("inspect", "mamba2", "--dims", "h=8,p=64,n=64,g=1", "--shape", "b=2,l=8192")
    assert r.exit_code == 0, r.output
    for needle in ("graph mamba2", "softplus", "semiseparable, scalar decay", "M[i, j] = Sum(",
                   "-> scan", "reference", "recurrent", "chunked", "scan (chosen)", "FLOPs ="):
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
    assert 'k0_DEFAULT = _rt.config(k0_SPACE, {\n    "chunk": 32,' in src and "def mixer(" in src
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
    from mixerc.check import cli_lowerings

    graph = mx.trace("mamba2", dims=dict(h=4, p=4, n=4, g=2))[1]  # the lowerings mamba2 has
    assert r.output.count("pass") == len(cli_lowerings(graph))  # triton included, always
    assert "triton" in r.output
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
    (("check", "mamba2", "--shape", "b=2;l=3"), "such as b=2,l=64"),
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


# -- the triton row: mixerc check runs it in Triton's interpreter by itself ----------------------------

TINY_SPEC = ("import mixerc as mx\n\n"
             "@mx.spec(example_dims=dict(h=2, p=3, n=4))\n"
             "def tiny(q: mx.Seq('b l h n'), k: mx.Seq('b l h n'), v: mx.Seq('b l h p'), a: mx.Seq('b l h')):\n"
             "    return mx.semiseparable(C=q, B=k, log_decay=-mx.softplus(a)) @ v\n")


def _triton_row(output: str):
    return next((line for line in output.splitlines() if line.strip("│┃ ").startswith("triton")), None)


@pytest.mark.parametrize("entry", ["console_script", "python_m"])
def test_check_runs_triton_without_triton_interpret_in_the_env(tmp_path, entry):
    """The README's quick start: `mixerc check SPEC` checks every lowering, triton included, in a fresh
    process whose environment has no TRITON_INTERPRET (the program sets it for itself)."""
    if entry == "console_script" and shutil.which("mixerc") is None:
        pytest.skip("console script not installed")
    path = tmp_path / "tiny.py"
    path.write_text(TINY_SPEC)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = ["mixerc"] if entry == "console_script" else [sys.executable, "-m", "mixerc.cli"]
    out = subprocess.run(cmd + ["check", str(path), "--shape", "b=1,l=9"], capture_output=True, text=True,
                         env={**env, "COLUMNS": "200"})
    assert out.returncode == 0, out.stdout + out.stderr
    row = _triton_row(out.stdout)
    assert row is not None and "pass" in row, out.stdout
    assert out.stdout.count("pass") == 5, out.stdout  # reference, recurrent, chunked, scan, triton


def test_check_runs_triton_in_a_child_when_this_process_cannot(tmp_path, monkeypatch):
    """In a process that is not the mixerc program (here: pytest, through click's runner) and whose
    environment lacks TRITON_INTERPRET, the triton row runs in a child process that sets it."""
    path = tmp_path / "tiny.py"
    path.write_text(TINY_SPEC)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    r = run("check", str(path), "--shape", "b=1,l=9")
    assert r.exit_code == 0, r.output
    row = _triton_row(r.output)
    assert row is not None and "pass" in row, r.output
    assert "TRITON_INTERPRET" not in os.environ  # this process is left as it was


def test_check_says_loudly_when_the_triton_row_is_skipped(tmp_path, monkeypatch):
    path = tmp_path / "tiny.py"
    path.write_text(TINY_SPEC)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    r = CliRunner().invoke(main, ["check", str(path), "--shape", "b=1,l=5"])
    assert r.exit_code == 0, r.output
    assert _triton_row(r.output) is None
    assert "the triton lowering was NOT checked" in r.output and "TRITON_INTERPRET=0" in r.output


def test_check_fails_when_the_triton_child_fails(tmp_path, monkeypatch):
    from mixerc import check as check_mod

    path = tmp_path / "tiny.py"
    path.write_text(TINY_SPEC)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(check_mod.InterpretedCheck, "finish", lambda self: ([], ("error", "BackendError: boom")))
    monkeypatch.setattr(check_mod.InterpretedCheck, "start", lambda self: self)
    r = CliRunner().invoke(main, ["check", str(path), "--shape", "b=1,l=5"])
    assert r.exit_code == 1, r.output
    assert "FAIL" in _triton_row(r.output) and "triton failed to run: BackendError: boom" in r.output


# -- errors: one line, exit 2, located; mixerc's own bugs keep their traceback -------------------------


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    for needle in needles:
        assert needle in r.output, (needle, r.output)


@pytest.mark.parametrize("top_line, needle", [
    ("import no_such_module_for_mixerc", "ModuleNotFoundError: No module named 'no_such_module_for_mixerc'"),
    ("scale = undefined_scale", "NameError: name 'undefined_scale' is not defined"),
    ("def broken(:", "syntax error"),
])
def test_spec_file_raising_at_import_is_one_line(tmp_path, top_line, needle):
    path = tmp_path / "broken_spec.py"
    path.write_text("import mixerc as mx\n" + top_line + "\n")
    r = CliRunner().invoke(main, ["check", str(path)])
    _one_line_error(r, f"broken_spec.py:2", needle)


def test_spec_body_error_is_one_line_with_its_line(tmp_path):
    path = tmp_path / "body.py"
    path.write_text("import mixerc as mx\n\n"
                    "@mx.spec(example_dims=dict(h=2, p=3, n=4))\n"
                    "def s(x: mx.Seq('b l h p'), B: mx.Seq('b l h n'), C: mx.Seq('b l h n')):\n"
                    "    y = x ** 2\n"
                    "    return mx.semiseparable(C=C, B=B) @ y\n")
    _one_line_error(CliRunner().invoke(main, ["inspect", str(path)]), "body.py:5", "'**' on a traced value")


def test_error_messages_print_as_they_are(tmp_path):
    """Rich markup in a message ([b l h], [/x]) and line breaks do not garble or crash the one line."""
    path = tmp_path / "markup.py"
    path.write_text("import mixerc as mx\n\n"
                    "@mx.spec(example_dims=dict(h=2, p=3, n=4))\n"
                    "def s(x: mx.Seq('b l h p'), B: mx.Seq('b l h n'), C: mx.Seq('b l h n')):\n"
                    "    raise ValueError('dims [b l h] and [/x]\\nsecond line')\n")
    _one_line_error(CliRunner().invoke(main, ["check", str(path)]), "markup.py:5",
                    "ValueError: dims [b l h] and [/x] second line")


def test_missing_dim_from_the_cli_says_how_to_pass_it(tmp_path):
    path = tmp_path / "nodims.py"
    path.write_text("import mixerc as mx\n\n"
                    "@mx.spec\n"
                    "def s(x: mx.Seq('b l h p'), B: mx.Seq('b l h n'), C: mx.Seq('b l h n')):\n"
                    "    return mx.semiseparable(C=C, B=B) @ x\n")
    r = CliRunner().invoke(main, ["check", str(path), "--dims", "h=2,p=3"])
    _one_line_error(r, "nodims.py:4", "dim 'n'", "has no size", "--dims n=...", "dims=dict(n=...)",
                    "@mx.spec(example_dims=")


def test_internal_bugs_keep_their_traceback(monkeypatch):
    """_guard turns only mixerc's typed errors into one line; anything else is a bug and propagates."""
    import mixerc.cli

    def buggy(*a, **k):
        raise KeyError("a bug in mixerc")

    monkeypatch.setattr(mixerc.cli, "load_spec", buggy)
    r = CliRunner().invoke(main, ["inspect", "mamba2"])
    assert r.exit_code == 1 and isinstance(r.exception, KeyError), r.output
    with pytest.raises(KeyError):
        CliRunner().invoke(main, ["inspect", "mamba2"], catch_exceptions=False)


def test_an_unknown_backend_is_one_line_and_exit_2():
    """--backend is checked once the spec has loaded (its file may register a structure with lowerings
    of its own), as one line naming the choices."""
    for cmd in ("inspect", "compile"):
        r = run(cmd, "mamba2", "--backend", "nope")
        assert r.exit_code == 2, r.output
        assert r.output.strip().count("\n") == 0 and "--backend 'nope'" in r.output and "chunked" in r.output
