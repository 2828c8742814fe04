"""The generated torch module is standalone: `mixerc compile SPEC --emit torch` writes a module that
imports torch and the standard library only (the lowerings it calls are copied in), runs without
mixerc installed, and is the very module the runtime executes."""

from __future__ import annotations

import ast
import math
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

import mixerc as mx
from mixerc import codegen
from mixerc.cli import main
from mixerc.compiler import trace
from mixerc.ir import STRUCTURES
from mixerc.loader import list_specs, load_spec

SPECS = list_specs()
WIDTH = 120


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _lowerings(spec: str) -> list[str]:
    """The torch lowerings every structure of the spec supports, and ``materialize``."""
    _, graph, _ = trace(load_spec(spec), load_spec(spec).example_dims)
    lows = [{low for low in STRUCTURES[graph.node(a.args[0]).op].lowerings
             if STRUCTURES[graph.node(a.args[0]).op].supports(low, a.attrs["layout"])} for a in graph.nodes_of("apply")]
    return sorted(set.intersection(*lows) - {"triton"}) + ["materialize"]


CASES = [(s, low) for s in SPECS for low in _lowerings(s)]


def assert_standalone(text: str, where: str):
    """Compiles; no line over WIDTH columns; imports only torch and the standard library, each
    import used."""
    compile(text, where, "exec")
    long = [(i, len(ln)) for i, ln in enumerate(text.splitlines(), 1) if len(ln) > WIDTH]
    assert not long, f"{where}: lines over {WIDTH} columns (line, length): {long}"
    # no import statement of mixerc (comments do name the mixerc files the copies come from)
    assert not re.search(r"^\s*(import|from)\s+mixerc\b", text, re.M), where
    tree = ast.parse(text)
    used = {t.id for t in ast.walk(tree) if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            pairs = [(a.name, a.asname or a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, (where, ast.unparse(node))
            pairs = [(node.module, a.asname or a.name) for a in node.names]
        else:
            continue
        for module, bound in pairs:
            root = module.split(".")[0]
            assert root == "torch" or root in sys.stdlib_module_names, (where, ast.unparse(node))
            assert root == "__future__" or bound in used, f"{where}: unused import {ast.unparse(node)!r}"


@pytest.mark.parametrize("spec,lowering", CASES)
def test_every_generated_torch_module_is_standalone(spec, lowering):
    spec_obj = load_spec(spec)
    _, graph, sizes = trace(spec_obj, spec_obj.example_dims)
    materialize = lowering == "materialize"
    plan = codegen.plan(graph, "reference" if materialize else lowering)
    text = codegen.generate(graph, plan, sizes, materialize=materialize)
    assert_standalone(text, f"{spec} {lowering}")
    # what the plan calls is copied, under the name the call uses, with where it came from
    for s in plan.structures:
        alias = {"semiseparable": "_ss", "quasiseparable": "_qs", "toeplitz": "_tp", "grid2d": "_g2"}[s.structure]
        called = "materialize" if materialize else s.lowering
        assert f"{alias}.{called}(" in text and f"class {alias}:" in text
        assert f"    def {called}(" in text and f": {called}\n    @staticmethod\n" in text


def test_only_what_the_plan_uses_is_copied():
    _, graph, sizes = trace(load_spec("mamba2"), load_spec("mamba2").example_dims)
    rec = codegen.generate(graph, codegen.plan(graph, "recurrent"), sizes)
    assert "def recurrent(" in rec and "def segment_runs(" in rec
    for absent in ("def chunked(", "def reference(", "def _chunked_scalar(", "class _qs", "class _tp", "import math"):
        assert absent not in rec, absent
    chunked = codegen.generate(graph, codegen.plan(graph, "chunked"), sizes)
    assert "def _chunked_scalar(" in chunked and "PASS_GROUP = " in chunked and "def recurrent(" not in chunked
    assert "# from mixerc/codegen/structures/semiseparable/torch_lowering.py: chunked\n" in chunked
    # hydra's chunked calls semiseparable helpers: the qs copies reach them through _ss
    _, graph, sizes = trace(load_spec("hydra"), load_spec("hydra").example_dims)
    hydra = codegen.generate(graph, codegen.plan(graph, "chunked"), sizes)
    assert "class _ss:" in hydra and "class _qs:" in hydra and "_ss.pad_positions(" in hydra and "_ss.chunked" in hydra


def test_the_runtime_runs_the_module_the_cli_writes():
    for spec in SPECS:
        out = run("compile", spec, "--emit", "torch")
        assert out.exit_code == 0, out.output
        m = mx.compile(spec, dims=load_spec(spec).example_dims)
        assert out.output == m.source(), spec  # the default (CPU) lowering: no second emitter
    m = mx.compile("mamba2", dims=load_spec("mamba2").example_dims)
    for backend in ("chunked", "recurrent", "reference"):
        text = m.source(backend)
        assert f"_ss.{backend}(" in text
        assert_standalone(text, backend)
    s4d = mx.compile("s4d", dims=load_spec("s4d").example_dims)
    for backend in ("fft", "direct", "reference"):
        assert f"_tp.{backend}(" in s4d.source(backend)
    assert "lowering fft" in s4d.source()
    with pytest.raises(mx.BackendError, match="toeplitz has no 'chunked' lowering"):
        s4d.source("chunked")


@pytest.mark.parametrize("spec,backend,lowering", [("s4d", "auto", "fft"), ("s4d", "triton", "fft"),
                                                   ("longconv", "auto", "fft"), ("mamba2", "triton", "scan"),
                                                   ("hydra", "auto", "scan"), ("longconv", "direct", "direct")])
def test_compile_backend_auto_picks_each_structures_cpu_default(tmp_path, spec, backend, lowering):
    r = run("compile", spec, "--backend", backend, "-o", str(tmp_path))
    assert r.exit_code == 0, r.output
    text = (tmp_path / f"{spec}_{lowering}.py").read_text()
    assert f"lowering {lowering}" in text


def test_compile_a_backend_the_structure_lacks_is_one_line_exit_2():
    r = run("compile", "s4d", "--backend", "chunked")
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0 and "toeplitz has no 'chunked' lowering" in r.output


def test_wrap_keeps_the_code_and_its_comment():
    from mixerc.codegen.wrap import wrap

    line = ("    _y0, _s0 = _ss.chunked(_x0, B.unsqueeze(2), C.unsqueeze(2), v4, initial_state=None if "
            "initial_states is None else initial_states[0].unsqueeze(2), seq_idx=seq_idx, chunk_size=64, "
            "x_scale=torch.cat([v1, v1, v1, v1, v1, v1, v1, v1, v1, v1, v1, v1, v1, v1, v1, v1, v1, v1, v1, "
            "v1, v1, v1, v1], dim=0))  # (b, l, d)  spec: a_rather_long_spec_file_name.py:123")
    out = wrap(line, 100)
    assert len(out) > 3 and all(len(ln) <= 100 for ln in out), out
    code = lambda t: ast.dump(ast.parse(textwrap.dedent(t)))  # noqa: E731
    assert code("\n".join(out)) == code(line)
    assert out[-1].endswith("# (b, l, d)  spec: a_rather_long_spec_file_name.py:123")


# -- the written module runs without mixerc ---------------------------------------------------------

RUNNER = r"""
import importlib.abc, importlib.util, sys, torch

class NoMixerc(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mixerc", "codegen", "ir", "specs", "templates"):
            raise ImportError(f"the generated module imported {name}")
        return None

sys.meta_path.insert(0, NoMixerc())
cases = torch.load(sys.argv[1])
out = {}
for key, (path, kwargs) in cases.items():
    spec = importlib.util.spec_from_file_location(f"gen_{len(out)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out[key] = module.mixer(**kwargs)
assert not [m for m in sys.modules if m.split(".")[0] == "mixerc"], "mixerc was imported"
torch.save(out, sys.argv[2])
"""


def _inputs(m, b: int, l: int, gen) -> dict:
    out = {}
    for name in m.ir.inputs:
        shape = [b if d == "b" else l if d == "l" else 3 if d in m.ir.seq_axes else m.sizes[d]
                 for d in m.ir.node(name).dims]
        out[name] = torch.randn(*shape, generator=gen, dtype=torch.float64)
    return out


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def test_written_modules_run_without_mixerc_and_match_the_reference(tmp_path):
    """Every built-in spec's `mixerc compile SPEC --emit torch -o DIR` module (and, for the chunked
    ones, with chunks of 16 so that states pass between chunks), imported in a fresh interpreter
    that refuses any mixerc import, against the reference lowering in fp64."""
    gen = torch.Generator().manual_seed(0)
    b, l = 2, 37
    seq_idx = torch.tensor([[0] * 20 + [1] * 17, [0] * 5 + [3] * 30 + [4] * 2])
    cases, expect = {}, {}
    for spec in SPECS:
        for extra in ([], ["--chunk-size", "16"]):
            out_dir = tmp_path / f"{spec}{len(extra)}"
            r = run("compile", spec, "--emit", "torch", "-o", str(out_dir), *extra)
            assert r.exit_code == 0, r.output
            (path,) = out_dir.glob("*.py")
            if extra and "_chunked" not in path.name and "_scan" not in path.name:
                continue
            ref = mx.compile(spec, dims=load_spec(spec).example_dims, backend="reference", dtype=torch.float64)
            params = {k: v.detach() for k, v in ref.named_parameters()}
            ins = _inputs(ref, b, l, gen)
            for seg in (None, seq_idx) if not ref.unsegmented else (None,):
                key = f"{spec} {path.name} {' '.join(extra)} seq_idx={seg is not None}"
                cases[key] = (str(path), {**ins, **params, "seq_idx": seg})
                with torch.no_grad():
                    expect[key] = ref(**ins, seq_idx=seg, return_final_state=True)
    torch.save(cases, tmp_path / "cases.pt")
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(tmp_path / "cases.pt"), str(tmp_path / "out.pt")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = torch.load(tmp_path / "out.pt")
    assert set(got) == set(expect) and len({k.split()[0] for k in got}) == len(SPECS)
    assert {k.split()[0] for k in got if "--chunk-size 16" in k} >= {"mamba2", "mamba", "hydra"}  # 3 chunks
    for key, (y, finals) in got.items():
        y_ref, s_ref = expect[key]
        assert y.dtype == torch.float64 and _rel(y, y_ref) < 1e-10, (key, _rel(y, y_ref))
        if s_ref is None:
            assert finals == (None,), key
        else:  # a spec with several structures (chimera) has one state each
            refs = s_ref if isinstance(s_ref, tuple) else (s_ref,)
            assert len(finals) >= len(refs), key
            for f, s in zip(finals, refs):
                assert _rel(f, s) < 1e-10, (key, _rel(f, s))


def test_copy_qualifies_references_and_refuses_what_a_copy_could_not_run(tmp_path, monkeypatch):
    from mixerc.codegen import copier

    (tmp_path / "fake_lowering_mod.py").write_text(textwrap.dedent('''
        import math

        import torch

        # a constant, explained
        SCALE = 2.0


        def helper(x):
            return x * SCALE


        def ok(x):
            return helper(x) + math.pi


        def shadows(x):
            helper = x
            return helper


        def early(x, s=SCALE):
            return x * s


        class Twice(torch.autograd.Function):
            """A class is copied whole; its methods' bodies read top-level names at call time."""
            @staticmethod
            def forward(ctx, x):
                return helper(x)

            @staticmethod
            def backward(ctx, g):
                return g * SCALE


        def uses_class(x):
            return Twice.apply(x)


        class Based(Twice):
            pass
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    aliases = {"fake_lowering_mod": "_fk"}
    code = "\n".join(copier.copied_lowerings([("fake_lowering_mod", "ok")], aliases))
    assert "class _fk:" in code and "    # from fake_lowering_mod.py: ok\n    @staticmethod\n    def ok(x):" in code
    assert "return _fk.helper(x) + math.pi" in code and "return x * _fk.SCALE" in code
    assert "    # a constant, explained\n    SCALE = 2.0" in code and "def shadows" not in code
    namespace = {}
    exec(compile("\n".join(copier.imports_used(code, aliases) + [code]), "fake", "exec"), namespace)
    assert namespace["_fk"].ok(1.0) == 2.0 + math.pi
    with pytest.raises(ValueError, match="binds 'helper'"):
        copier.copied_lowerings([("fake_lowering_mod", "shadows")], aliases)
    with pytest.raises(ValueError, match="reads 'SCALE' in a signature"):
        copier.copied_lowerings([("fake_lowering_mod", "early")], aliases)
    code = "\n".join(copier.copied_lowerings([("fake_lowering_mod", "uses_class")], aliases))
    assert "    class Twice(torch.autograd.Function):" in code and "return _fk.Twice.apply(x)" in code
    assert "return _fk.helper(x)" in code and "return g * _fk.SCALE" in code
    namespace = {}
    exec(compile("\n".join(copier.imports_used(code, aliases) + [code]), "fake", "exec"), namespace)
    x = torch.tensor(3.0, requires_grad=True)
    y = namespace["_fk"].uses_class(x)
    y.backward()
    assert float(y) == 6.0 and float(x.grad) == 2.0
    with pytest.raises(ValueError, match="reads 'Twice' in a signature, decorator or constant"):
        copier.copied_lowerings([("fake_lowering_mod", "Based")], aliases)
