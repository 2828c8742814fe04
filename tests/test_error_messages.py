"""Every typed error names what is wrong, what was expected and how to fix it."""

import textwrap

import numpy as np
import pytest
import torch

import mixerc as mx


def spec_file(tmp_path, body: str, name="bad_spec.py"):
    """Write a spec file and return (path, {marker: line number}) for lines tagged '# <marker>'."""
    text = "import mixerc as mx\n\n" + textwrap.dedent(body)
    path = tmp_path / name
    path.write_text(text)
    lines = {}
    for i, line in enumerate(text.splitlines(), 1):
        if "# <" in line:
            lines[line.split("# <")[1].rstrip(">")] = i
    return str(path), lines


def compile_file(path, dims):
    return mx.compile(mx.load_spec(path), dims=dims)


# -- SpecError: the spec itself -----------------------------------------------------------------

SPEC_CASES = {
    "B and C dims differ": ("""
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l g n"), C: mx.Seq("b l h n")):
            return mx.semiseparable(C=C, B=B) @ x  # <here>
        """, dict(h=2, g=1, p=2, n=2), ["B has dims (b, l, g, n) but C has (b, l, h, n)"]),
    "x lacks the head dim": ("""
        @mx.spec
        def s(x: mx.Seq("b l p"), dt: mx.Seq("b l h"), B: mx.Seq("b l n"), C: mx.Seq("b l n")):
            M = mx.semiseparable(C=C, B=B, log_decay=dt)
            return M @ x  # <here>
        """, dict(h=2, p=2, n=2), ["head dim 'h'", "missing from the applied value (b, l, p)"]),
    "log_decay with two extra dims": ("""
        @mx.spec
        def s(x: mx.Seq("b l h p"), a: mx.Seq("b l h p"), B: mx.Seq("b l n"), C: mx.Seq("b l n")):
            return mx.semiseparable(C=C, B=B, log_decay=a) @ x  # <here>
        """, dict(h=2, p=2, n=2), ["log_decay has dims (b, l, h, p)", "(b, l, h) for a scalar decay"]),
    "g and h mixed": ("""
        @mx.spec
        def s(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n")):
            Bs = B * dt  # <here>
            return mx.semiseparable(C=C, B=Bs) @ x
        """, dict(h=2, g=1, p=2, n=2), ["mixes group dim 'g' and head dim 'h'", "mx.groups_to_heads"]),
    "matrix in arithmetic": ("""
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            M = mx.semiseparable(C=C, B=B)
            return (M * 2.0) @ x  # <here>
        """, dict(h=2, p=2, n=2), ["only be applied with '@'"]),
    "returns a matrix": ("""
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):  # <here>
            return mx.semiseparable(C=C, B=B)
        """, dict(h=2, p=2, n=2), ["returns a structured matrix; return M @ x"]),
    "returns a number": ("""
        @mx.spec
        def s(x: mx.Seq("b l h p")):  # <here>
            return 3
        """, dict(h=2, p=2), ["must return a traced value"]),
    "branches on data": ("""
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            if x:  # <here>
                x = -x
            return mx.semiseparable(C=C, B=B) @ x
        """, dict(h=2, p=2, n=2), ["no truth value", "mx.clamp"]),
    "a python object in an op": ("""
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            return mx.semiseparable(C=C, B=B) @ (x * "2")  # <here>
        """, dict(h=2, p=2, n=2), ["cannot use str '2' in a spec"]),
    "missing annotation": ("""
        @mx.spec
        def s(x: mx.Seq("b l h p"), B):  # <here>
            return x
        """, None, ["argument 'B' needs an annotation"]),
    "Seq not starting with b l": ("""
        @mx.spec
        def s(x: mx.Seq("l b h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):  # <here>
            return mx.semiseparable(C=C, B=B) @ x
        """, dict(h=2, p=2, n=2), ["input 'x' has dims (l, b, h, p)", "must start with 'b l'"]),
    "Param with a batch dim": ("""
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"), D: mx.Param("b h")):  # <here>
            return mx.semiseparable(C=C, B=B) @ (x * D)
        """, dict(h=2, p=2, n=2), ["parameter 'D' has dims (b, h)", "use mx.Seq"]),
    "no structure": ("""
        @mx.spec
        def s(x: mx.Seq("b l h p")):
            return x * 2.0  # <here>
        """, dict(h=2, p=2), ["applies no structured matrix"]),
    "heads not divisible by groups": ("""
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n")):
            return mx.semiseparable(C=C, B=B) @ x  # <here>
        """, dict(h=3, g=2, p=2, n=2), ["h=3 heads are not divisible into g=2 groups"]),
    "a dim without a size": ("""
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):  # <here>
            return mx.semiseparable(C=C, B=B) @ x
        """, dict(h=2, p=2), ["dim 'n'", "has no size", "dims=dict(n=...)"]),
    "bad dims string": ("""
        @mx.spec
        def s(x: mx.Seq("b l h h"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):  # <here>
            return mx.semiseparable(C=C, B=B) @ x
        """, dict(h=2, n=2), ["dim 'h' appears twice"]),
}


@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_spec_errors_name_the_line_and_the_problem(case, tmp_path):
    body, dims, needles = SPEC_CASES[case]
    path, lines = spec_file(tmp_path, body)
    with pytest.raises(mx.SpecError) as e:
        compile_file(path, dims)
    msg = str(e.value)
    assert f"bad_spec.py:{lines['here']}" in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_dims_errors():
    with pytest.raises(mx.SpecError, match=r"'q', not a dim of spec 'mamba2' \(its dims: g, h, n, p\)"):
        mx.compile("mamba2", dims=dict(h=2, p=2, n=2, g=1, q=3))
    with pytest.raises(mx.SpecError, match="'l' is the sequence dim and stays symbolic"):
        mx.compile("mamba2", dims=dict(h=2, p=2, n=2, g=1, l=8))
    with pytest.raises(mx.SpecError, match="h=0 must be a positive integer"):
        mx.compile("mamba2", dims=dict(h=0, p=2, n=2, g=1))


def test_loading_errors(tmp_path):
    with pytest.raises(mx.SpecError, match="spec file 'nowhere/x.py' does not exist"):
        mx.load_spec("nowhere/x.py")
    with pytest.raises(mx.SpecError, match="no built-in spec named 'mamba3'; built-ins: mamba, mamba2"):
        mx.load_spec("mamba3")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(mx.SpecError, match="defines no @mx.spec function"):
        mx.load_spec(str(empty))
    path, _ = spec_file(tmp_path, """
        @mx.spec
        def one(x: mx.Seq("b l h p")):
            return x

        @mx.spec
        def two(x: mx.Seq("b l h p")):
            return x
        """, name="two.py")
    with pytest.raises(mx.SpecError, match=r"defines several specs \(one, two\); pick one"):
        mx.load_spec(path)
    assert mx.load_spec(f"{path}:two").name == "two"
    broken = tmp_path / "broken.py"
    broken.write_text("import mixerc as mx\ndef (:\n")
    with pytest.raises(mx.SpecError, match=r"broken.py:2: spec file has a syntax error"):
        mx.load_spec(str(broken))


def test_ops_outside_a_spec():
    with pytest.raises(mx.SpecError, match="only work inside an @mx.spec function"):
        mx.exp(torch.ones(2))


# -- InputError / ShapeError: calls ------------------------------------------------------------

@pytest.fixture
def mixer():
    return mx.compile("mamba2", dims=dict(h=4, p=3, n=5, g=2))


def inputs(b=2, l=7):
    return dict(x=torch.randn(b, l, 4, 3), dt=torch.randn(b, l, 4), B=torch.randn(b, l, 2, 5),
                C=torch.randn(b, l, 2, 5))


def test_shape_error_names_input_expected_dims_and_shape(mixer):
    bad = inputs()
    bad["x"] = torch.randn(2, 7, 4, 8)
    with pytest.raises(mx.ShapeError) as e:
        mixer(**bad)
    assert str(e.value) == ("input 'x': expected (b, l, h=4, p=3), got shape (2, 7, 4, 8): dim 'p' "
                            "(axis 3) is 8, the mixer was compiled with p=3")


def test_shape_error_wrong_rank_and_mismatched_b_l(mixer):
    bad = inputs()
    bad["dt"] = torch.randn(2, 7)
    with pytest.raises(mx.ShapeError, match=r"input 'dt': expected 3 dims \(b, l, h=4\), got shape \(2, 7\)"):
        mixer(**bad)
    bad = inputs()
    bad["B"] = torch.randn(3, 7, 2, 5)
    with pytest.raises(mx.ShapeError, match="input 'B': dim 'b' .* is 3 but input 'x' has b=2"):
        mixer(**bad)
    bad = inputs()
    bad["C"] = torch.randn(2, 6, 2, 5)
    with pytest.raises(mx.ShapeError, match="input 'C': dim 'l' .* is 6 but input 'x' has l=7"):
        mixer(**bad)


def test_state_errors(mixer):
    with pytest.raises(mx.ShapeError, match=r"initial_state: expected dims \(b=2, h=4, p=3, n=5\) = "
                                            r"\(2, 4, 3, 5\), got \(2, 4, 5, 3\); make one with mixer.init_state\(2\)"):
        mixer(**inputs(), initial_state=torch.zeros(2, 4, 5, 3))
    with pytest.raises(mx.ShapeError, match=r"input 'x': expected 3 dims \(b, h=4, p=3\)"):
        mixer.step(mixer.init_state(2), **inputs(l=1))  # step takes inputs without l


def test_input_errors(mixer):
    with pytest.raises(mx.InputError, match=r"missing input\(s\): C \(b, l, g=2, n=5\)"):
        mixer(**{k: v for k, v in inputs().items() if k != "C"})
    with pytest.raises(mx.InputError, match=r"unknown input\(s\) \['z'\]; spec 'mamba2' takes x, dt, B, C"):
        mixer(**inputs(), z=torch.zeros(1))
    bad = inputs()
    bad["x"] = np.zeros((2, 7, 4, 3), dtype=np.float32)
    with pytest.raises(mx.InputError, match="input 'x' must be a torch.Tensor .* got ndarray"):
        mixer(**bad)
    bad = inputs()
    bad["dt"] = torch.zeros(2, 7, 4, dtype=torch.long)
    with pytest.raises(mx.InputError, match="input 'dt' has dtype torch.int64; expected a floating-point"):
        mixer(**bad)
    with pytest.raises(mx.InputError, match=r"seq_idx must be an integer tensor of segment ids"):
        mixer(**inputs(), seq_idx=torch.zeros(2, 7))
    with pytest.raises(mx.ShapeError, match=r"seq_idx: expected dims \(b=2, l=7\), got shape \(2, 6\)"):
        mixer(**inputs(), seq_idx=torch.zeros(2, 6, dtype=torch.long))
    assert issubclass(mx.ShapeError, mx.InputError) and issubclass(mx.InputError, mx.MixercError)


def test_input_on_another_device_than_parameters(mixer):
    meta = {k: v.to("meta") for k, v in inputs().items()}
    with pytest.raises(mx.InputError, match="input 'x' is on meta but the mixer's parameters are on cpu"):
        mixer(**meta)


# -- BackendError --------------------------------------------------------------------------------

def test_backend_errors(monkeypatch):
    with pytest.raises(mx.BackendError, match="unknown backend 'cuda-magic'; choose one of auto, reference, "
                                              "recurrent, chunked"):
        mx.compile("mamba2", dims=dict(h=2, p=2, n=2, g=1), backend="cuda-magic")
    with pytest.raises(mx.BackendError, match="chunk_size must be a positive integer, got 0"):
        mx.compile("mamba2", dims=dict(h=2, p=2, n=2, g=1), chunk_size=0)
    m = mx.compile("mamba2", dims=dict(h=2, p=2, n=2, g=1))
    monkeypatch.setenv("MIXERC_BACKEND", "bogus")
    with pytest.raises(mx.BackendError, match="unknown backend 'bogus' \\(from MIXERC_BACKEND\\)"):
        m(x=torch.randn(1, 3, 2, 2), dt=torch.randn(1, 3, 2), B=torch.randn(1, 3, 1, 2), C=torch.randn(1, 3, 1, 2))


def test_mixerc_backend_env_switches_auto(monkeypatch):
    m = mx.compile("mamba2", dims=dict(h=2, p=2, n=2, g=1))
    monkeypatch.setenv("MIXERC_BACKEND", "recurrent")
    assert "_ss.recurrent(" in m.source()
    pinned = mx.compile("mamba2", dims=dict(h=2, p=2, n=2, g=1), backend="reference")
    assert "_ss.reference(" in pinned.source()  # an explicit backend wins over the variable
