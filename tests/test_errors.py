"""Typed errors: every error mixerc raises on purpose has a test that checks its type and that its
message carries the facts a user needs (what is wrong, what was expected, where in the spec).

Spec problems are written as small spec files under ``tmp_path`` so that the expected
``file.py:LINE`` can be computed from the text that was written: the offending line carries a
``# HERE`` marker.
"""

import pathlib
import textwrap

import numpy as np
import pytest
import torch

import mixerc as mx

MARK = "# HERE"


def write_spec(tmp_path, body: str, filename: str = "my_spec.py"):
    """Write ``import mixerc as mx`` + ``body`` to ``tmp_path/filename``; return (path, where) with
    ``where`` the ``"filename:LINE"`` of the single line marked ``# HERE`` (None if unmarked)."""
    text = "import mixerc as mx\nimport torch\n\n" + textwrap.dedent(body).lstrip("\n")
    path = tmp_path / filename
    path.write_text(text)
    marked = [i for i, line in enumerate(text.splitlines(), start=1) if MARK in line]
    assert len(marked) <= 1, "a test spec marks at most one line"
    return str(path), (f"{filename}:{marked[0]}" if marked else None)


def raises_with(exc_type, fn, *facts: str) -> str:
    """Run ``fn``; it must raise exactly ``exc_type`` (not a subclass of it) with every fact in
    its message. Returns the message."""
    with pytest.raises(exc_type) as info:
        fn()
    assert type(info.value) is exc_type, f"{type(info.value).__name__}: {info.value}"
    msg = str(info.value)
    for fact in facts:
        assert fact in msg, f"{fact!r} not in message: {msg}"
    return msg


def compile_path(path, dims):
    return mx.compile(mx.load_spec(path), dims=dims)


# -- the error hierarchy -------------------------------------------------------------------------


def test_error_hierarchy():
    assert issubclass(mx.SpecError, mx.MixercError) and issubclass(mx.SpecError, ValueError)
    assert issubclass(mx.InputError, mx.MixercError) and issubclass(mx.InputError, ValueError)
    assert issubclass(mx.ShapeError, mx.InputError)
    assert issubclass(mx.BackendError, mx.MixercError) and issubclass(mx.BackendError, RuntimeError)
    e = mx.SpecError("bad thing", "f.py:3")
    assert str(e) == "f.py:3: bad thing" and e.where == "f.py:3"
    assert str(mx.SpecError("bad thing")) == "bad thing" and mx.SpecError("x").where is None


# -- SpecError raised while compiling a spec file ---------------------------------------------------
# (id, spec body, dims, facts the message must contain). The '# HERE' line is the one the message
# must point at.

SPEC_FILE_CASES = [
    ("B_and_C_differ", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l g n")):
            return mx.semiseparable(C=C, B=B) @ x  # HERE
        """, dict(h=2, g=1, p=3, n=4),
     ["semiseparable", "B has dims (b, l, h, n)", "C has (b, l, g, n)", "must match"]),
    ("B_and_C_state_names_differ", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h m")):
            return mx.semiseparable(C=C, B=B) @ x  # HERE
        """, dict(h=2, p=3, n=4, m=4),
     ["B has dims (b, l, h, n)", "C has (b, l, h, m)"]),
    ("B_without_b_l", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Param("h n"), C: mx.Seq("b l h n")):
            return mx.semiseparable(C=C, B=B) @ x  # HERE
        """, dict(h=2, p=3, n=4),
     ["B has dims (h, n)", "expected (b, l, n), (b, l, h, n) or (b, l, g, n)"]),
    ("x_missing_head_dim", """
        @mx.spec
        def s(x: mx.Seq("b l p"), dt: mx.Seq("b l h"), B: mx.Seq("b l n"), C: mx.Seq("b l n")):
            M = mx.semiseparable(C=C, B=B, log_decay=dt)
            return M @ x  # HERE
        """, dict(h=2, p=3, n=4),
     ["head dim 'h'", "missing from the applied value (b, l, p)"]),
    ("log_decay_two_extra_dims", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), a: mx.Seq("b l h p"), B: mx.Seq("b l n"), C: mx.Seq("b l n")):
            return mx.semiseparable(C=C, B=B, log_decay=a) @ x  # HERE
        """, dict(h=2, p=3, n=4),
     ["log_decay has dims (b, l, h, p)", "(b, l, h) for a scalar decay per head",
      "(b, l, h, n) for a diagonal decay per state"]),
    ("decay_head_differs_from_B_C_head", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), a: mx.Seq("b l d"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            return mx.semiseparable(C=C, B=B, log_decay=a) @ x  # HERE
        """, dict(h=2, d=2, p=3, n=4),
     ["B/C are per 'h' but log_decay is per 'd'"]),
    ("state_dim_in_x", """
        @mx.spec
        def s(x: mx.Seq("b l h n"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            return mx.semiseparable(C=C, B=B) @ x  # HERE
        """, dict(h=2, n=4),
     ["state dim 'n'", "applied value (b, l, h, n)"]),
    ("x_with_two_value_dims", """
        @mx.spec
        def s(x: mx.Seq("b l h p q"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            return mx.semiseparable(C=C, B=B) @ x  # HERE
        """, dict(h=2, p=3, q=2, n=4),
     ["(b, l, h, p, q)", "at most one dim besides the head"]),
    ("g_and_h_mixed_without_groups_to_heads", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n")):
            Bdt = B * dt  # HERE
            return mx.semiseparable(C=C, B=Bdt) @ x
        """, dict(h=2, g=1, p=3, n=4),
     ["mul", "mixes group dim 'g' and head dim 'h'", "(b, l, g, n) and (b, l, h)",
      "mx.groups_to_heads"]),
    ("groups_to_heads_without_g", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            Bh = mx.groups_to_heads(B)  # HERE
            return mx.semiseparable(C=C, B=Bh) @ x
        """, dict(h=2, p=3, n=4),
     ["groups_to_heads", "(b, l, h, n)", "without the group dim 'g'"]),
    ("groups_to_heads_of_a_head_dim", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            y = mx.groups_to_heads(x, group="h")  # HERE
            return mx.semiseparable(C=C, B=B) @ y
        """, dict(h=2, p=3, n=4),
     ["groups_to_heads", "'h' is not a group dim", "['g']"]),
    ("dim_without_size", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):  # HERE
            return mx.semiseparable(C=C, B=B) @ x
        """, dict(h=2, p=3),
     ["dim 'n'", "'B'", "(b, l, h, n)", "has no size", "dims=dict(n=...)"]),
    ("param_dim_without_size", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"),  # HERE
              W: mx.Param("q")):
            return mx.semiseparable(C=C, B=B) @ x + W
        """, dict(h=2, p=3, n=4),
     ["dim 'q'", "'W'", "has no size", "dims=dict(q=...)"]),
    ("param_with_b", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"),  # HERE
              W: mx.Param("b h")):
            return mx.semiseparable(C=C, B=B) @ x + W
        """, dict(h=2, p=3, n=4),
     ["parameter 'W'", "(b, h)", "cannot have the batch 'b' or length 'l'", "mx.Seq"]),
    ("param_with_l", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"),  # HERE
              W: mx.Param("l h")):
            return mx.semiseparable(C=C, B=B) @ x + W
        """, dict(h=2, p=3, n=4),
     ["parameter 'W'", "(l, h)", "cannot have the batch 'b' or length 'l'"]),
    ("seq_not_starting_with_b_l", """
        @mx.spec
        def s(x: mx.Seq("b h l p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):  # HERE
            return mx.semiseparable(C=C, B=B) @ x
        """, dict(h=2, p=3, n=4),
     ["input 'x'", "(b, h, l, p)", "must start with 'b l'"]),
    ("seq_l_before_b", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("l b h n"), C: mx.Seq("b l h n")):  # HERE
            return mx.semiseparable(C=C, B=B) @ x
        """, dict(h=2, p=3, n=4),
     ["input 'B'", "(l, b, h, n)", "must start with 'b l'"]),
    ("invalid_dim_name", """
        @mx.spec
        def s(x: mx.Seq("b l h-1 p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):  # HERE
            return mx.semiseparable(C=C, B=B) @ x
        """, dict(h=2, p=3, n=4),
     ["x", "dim 'h-1'", "not a valid name"]),
    ("duplicate_dim", """
        @mx.spec
        def s(x: mx.Seq("b l h h"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):  # HERE
            return mx.semiseparable(C=C, B=B) @ x
        """, dict(h=2, n=4),
     ["dim 'h' appears twice", "'b l h h'"]),
    ("returns_a_matrix", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):  # HERE
            return mx.semiseparable(C=C, B=B)
        """, dict(h=2, p=3, n=4),
     ["spec 's' returns a structured matrix", "return M @ x"]),
    ("returns_a_number", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):  # HERE
            y = mx.semiseparable(C=C, B=B) @ x
            return 3
        """, dict(h=2, p=3, n=4),
     ["spec 's' must return a traced value", "got int"]),
    ("returns_nothing", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):  # HERE
            y = mx.semiseparable(C=C, B=B) @ x
        """, dict(h=2, p=3, n=4),
     ["must return a traced value", "got NoneType"]),
    ("returns_a_value_without_b_l", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"), W: mx.Param("h")):
            y = mx.semiseparable(C=C, B=B) @ x
            return mx.exp(W)  # HERE
        """, dict(h=2, p=3, n=4),
     ["returns a value with dims (h)", "must return (b, l, ...)"]),
    ("no_structured_matrix", """
        @mx.spec
        def s(x: mx.Seq("b l h p")):
            return x * 2.0  # HERE
        """, dict(h=2, p=3),
     ["applies no structured matrix", "nothing to compile"]),
    ("matrix_times_number", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            M = mx.semiseparable(C=C, B=B)
            M2 = M * 2.0  # HERE
            return M2 @ x
        """, dict(h=2, p=3, n=4),
     ["structured matrix can only be applied with '@'", "M @ x"]),
    ("number_times_matrix", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            M = mx.semiseparable(C=C, B=B)
            return (0.5 * M) @ x  # HERE
        """, dict(h=2, p=3, n=4),
     ["structured matrix can only be applied with '@'"]),
    ("value_plus_matrix", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            M = mx.semiseparable(C=C, B=B)
            y = x + M  # HERE
            return M @ y
        """, dict(h=2, p=3, n=4),
     ["add", "structured matrix can only be applied with '@'", "not used in elementwise arithmetic"]),
    ("exp_of_matrix", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            M = mx.semiseparable(C=C, B=B)
            return mx.exp(M) @ x  # HERE
        """, dict(h=2, p=3, n=4),
     ["exp", "structured matrix can only be applied with '@'"]),
    ("matrix_at_matrix", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            M = mx.semiseparable(C=C, B=B)
            return M @ M  # HERE
        """, dict(h=2, p=3, n=4),
     ["structured matrix can only be applied with '@'"]),
    ("if_on_traced_value", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            if x:  # HERE
                x = -x
            return mx.semiseparable(C=C, B=B) @ x
        """, dict(h=2, p=3, n=4),
     ["no truth value", "cannot branch on data", "mx.clamp"]),
    ("list_in_an_op", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            y = x * [1.0, 2.0]  # HERE
            return mx.semiseparable(C=C, B=B) @ y
        """, dict(h=2, p=3, n=4),
     ["mul", "cannot use list [1.0, 2.0] in a spec", "numbers and mx ops"]),
    ("string_in_an_op", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            return mx.semiseparable(C=C, B=B) @ (x + "2")  # HERE
        """, dict(h=2, p=3, n=4),
     ["add", "cannot use str '2' in a spec"]),
    ("torch_tensor_in_an_op", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            y = mx.exp(torch.ones(3))  # HERE
            return mx.semiseparable(C=C, B=B) @ (x * y)
        """, dict(h=2, p=3, n=4),
     ["exp", "cannot use Tensor", "in a spec"]),
    ("bool_in_an_op", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            y = x * True  # HERE
            return mx.semiseparable(C=C, B=B) @ y
        """, dict(h=2, p=3, n=4),
     ["cannot use bool True in a spec"]),
    ("python_object_as_structure_role", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            M = mx.semiseparable(C=C, B=B, log_decay="fast")  # HERE
            return M @ x
        """, dict(h=2, p=3, n=4),
     ["semiseparable(log_decay=...)", "cannot use str 'fast'"]),
    ("clamp_without_bounds", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            y = mx.clamp(x)  # HERE
            return mx.semiseparable(C=C, B=B) @ y
        """, dict(h=2, p=3, n=4),
     ["clamp needs min, max or both"]),
    ("undefined_constant_expression", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            inf = mx.div(1.0, 0.0)  # HERE
            return mx.semiseparable(C=C, B=B) @ (x * inf)
        """, dict(h=2, p=3, n=4),
     ["div of constants [1.0, 0.0] is undefined"]),
    ("heads_not_divisible_by_groups", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n")):
            M = mx.semiseparable(C=C, B=B)
            return M @ x  # HERE
        """, dict(h=3, g=2, p=3, n=4),
     ["h=3 heads are not divisible into g=2 groups", "pick g dividing h"]),
]


@pytest.mark.parametrize("body, dims, facts", [c[1:] for c in SPEC_FILE_CASES],
                         ids=[c[0] for c in SPEC_FILE_CASES])
def test_spec_error_names_the_offending_line(tmp_path, body, dims, facts):
    path, where = write_spec(tmp_path, body)
    assert where is not None
    msg = raises_with(mx.SpecError, lambda: compile_path(path, dims), *facts)
    assert msg.startswith(where + ": "), f"expected {where!r} first: {msg}"


# -- SpecError at declaration time (raised by @mx.spec while the file is loaded) --------------------

DECLARATION_CASES = [
    ("missing_annotation", """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B, C: mx.Seq("b l h n")):  # HERE
            return mx.semiseparable(C=C, B=B) @ x
        """, ["spec 's'", "argument 'B' needs an annotation", 'mx.Seq("b l ...")', "got none"]),
    ("wrong_annotation", """
        @mx.spec
        def s(x: mx.Seq("b l h p"),  # HERE
              B: int, C: mx.Seq("b l h n")):
            return mx.semiseparable(C=C, B=B) @ x
        """, ["argument 'B' needs an annotation", "got <class 'int'>"]),
    ("def_line_after_decorator_and_comments", """
        @mx.spec(example_dims=dict(h=2, p=3, n=4))
        # a comment between the decorator and the def
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C):  # HERE
            return mx.semiseparable(C=C, B=B) @ x
        """, ["argument 'C' needs an annotation"]),
    ("no_seq_input", """
        @mx.spec
        def s(D: mx.Param("h")):  # HERE
            return D
        """, ["spec 's' has no mx.Seq input"]),
]


@pytest.mark.parametrize("body, facts", [c[1:] for c in DECLARATION_CASES],
                         ids=[c[0] for c in DECLARATION_CASES])
def test_declaration_errors_name_the_def_line(tmp_path, body, facts):
    path, where = write_spec(tmp_path, body)
    msg = raises_with(mx.SpecError, lambda: mx.load_spec(path), *facts)
    assert msg.startswith(where + ": "), f"expected {where!r} first: {msg}"


def test_syntax_error_in_spec_file(tmp_path):
    path, where = write_spec(tmp_path, """
        @mx.spec
        def s(x: mx.Seq("b l h p"):  # HERE
            return x
        """)
    line = where.split(":")[1]
    msg = raises_with(mx.SpecError, lambda: mx.load_spec(path), "syntax error")
    assert f"my_spec.py:{line}" in msg


# -- SpecError from the compile arguments -----------------------------------------------------------


def test_dims_naming_a_dim_the_spec_does_not_have():
    raises_with(mx.SpecError, lambda: mx.compile("mamba2", dims=dict(h=4, p=3, n=5, g=2, z=7)),
                "dims names 'z'", "not a dim of spec 'mamba2'", "(its dims: g, h, n, p)")


@pytest.mark.parametrize("dim, what", [("b", "batch"), ("l", "sequence")])
def test_reserved_dims_in_dims(dim, what):
    raises_with(mx.SpecError,
                lambda: mx.compile("mamba2", dims={"h": 4, "p": 3, "n": 5, "g": 2, dim: 8}),
                f"dims: {dim!r} is the {what} dim", "stays symbolic", "leave it out of dims")


@pytest.mark.parametrize("value", [0, -2, 2.0, True, "4"])
def test_dims_sizes_must_be_positive_integers(value):
    raises_with(mx.SpecError, lambda: mx.compile("mamba2", dims=dict(h=4, p=3, n=value, g=2)),
                f"dims: n={value!r} must be a positive integer")


def test_dims_must_be_a_dict():
    raises_with(mx.SpecError, lambda: mx.compile("mamba2", dims=[("h", 4)]),
                "dims must be a dict", "got list")


def test_builtin_heads_not_divisible_by_groups_points_into_the_builtin_spec():
    import mixerc.specs.mamba2 as m2

    lines = pathlib.Path(m2.__file__).read_text().splitlines()
    apply_line = next(i for i, t in enumerate(lines, 1) if "return M @" in t)
    raises_with(mx.SpecError, lambda: mx.compile("mamba2", dims=dict(h=4, p=3, n=5, g=3)),
                f"mamba2.py:{apply_line}: ", "h=4 heads are not divisible into g=3 groups")


# -- SpecError from finding a spec ------------------------------------------------------------------


def test_missing_spec_file(tmp_path):
    path = str(tmp_path / "nowhere" / "spec.py")
    raises_with(mx.SpecError, lambda: mx.load_spec(path),
                f"spec file {path!r} does not exist", "mamba2")
    raises_with(mx.SpecError, lambda: mx.compile(path, dims=dict(h=2)), "does not exist")


def test_unknown_builtin_name():
    raises_with(mx.SpecError, lambda: mx.load_spec("mamba3"),
                "no built-in spec named 'mamba3'", f"built-ins: {', '.join(mx.list_specs())}", ".py file")


def test_file_without_a_spec(tmp_path):
    path, _ = write_spec(tmp_path, """
        def s(x):
            return x
        """)
    raises_with(mx.SpecError, lambda: mx.load_spec(path), path, "defines no @mx.spec function")


def test_file_with_two_specs(tmp_path):
    path, _ = write_spec(tmp_path, """
        @mx.spec
        def first(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            return mx.semiseparable(C=C, B=B) @ x


        @mx.spec
        def second(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            return mx.semiseparable(C=C, B=B) @ (x * 2.0)
        """)
    raises_with(mx.SpecError, lambda: mx.load_spec(path), path,
                "defines several specs (first, second)", "name=", "'path.py:name'")
    # the ways out the message offers work
    assert mx.load_spec(path, name="second").name == "second"
    assert mx.load_spec(f"{path}:first").name == "first"
    raises_with(mx.SpecError, lambda: mx.load_spec(path, name="third"),
                "defines no @mx.spec function named 'third'")


# -- SpecError: ops outside tracing -----------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda t: mx.exp(t),
    lambda t: mx.add(t, 1.0),
    lambda t: mx.mul(2.0, 3.0),
    lambda t: mx.softplus(1.0),
    lambda t: mx.clamp(t, min=0.0),
    lambda t: mx.groups_to_heads(t),
    lambda t: mx.semiseparable(C=t, B=t),
], ids=["exp", "add", "mul_numbers", "softplus_number", "clamp", "groups_to_heads", "semiseparable"])
def test_ops_outside_tracing(call):
    raises_with(mx.SpecError, lambda: call(torch.ones(2, 3)),
                "only work inside an @mx.spec function", "compile it first")


def test_value_leaked_out_of_a_trace_cannot_be_used():
    leaked = []

    @mx.spec
    def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
        leaked.append(x)
        return mx.semiseparable(C=C, B=B) @ x

    s.trace()
    (v,) = leaked
    raises_with(mx.SpecError, lambda: v * 2.0, "only work inside an @mx.spec function")


# -- ShapeError --------------------------------------------------------------------------------------

DIMS = dict(h=4, p=3, n=5, g=2)
BATCH, LEN = 2, 6


@pytest.fixture(scope="module")
def mamba2():
    return mx.compile("mamba2", dims=DIMS, dtype=torch.float64)


def inputs(b=BATCH, l=LEN, **override):
    g = torch.Generator().manual_seed(0)
    out = dict(x=torch.randn(b, l, 4, 3, generator=g), dt=torch.randn(b, l, 4, generator=g),
               B=torch.randn(b, l, 2, 5, generator=g), C=torch.randn(b, l, 2, 5, generator=g))
    out.update(override)
    return out


def test_wrong_size_of_a_named_dim(mamba2):
    raises_with(mx.ShapeError, lambda: mamba2(**inputs(C=torch.randn(2, 6, 2, 7))),
                "input 'C'", "expected (b, l, g=2, n=5)", "got shape (2, 6, 2, 7)",
                "dim 'n' (axis 3) is 7", "compiled with n=5")
    raises_with(mx.ShapeError, lambda: mamba2(**inputs(x=torch.randn(2, 6, 3, 3))),
                "input 'x'", "expected (b, l, h=4, p=3)", "got shape (2, 6, 3, 3)",
                "dim 'h' (axis 2) is 3", "h=4")


def test_wrong_number_of_dims(mamba2):
    raises_with(mx.ShapeError, lambda: mamba2(**inputs(dt=torch.randn(2, 6))),
                "input 'dt'", "expected 3 dims (b, l, h=4)", "got shape (2, 6)", "(2 dims)")
    raises_with(mx.ShapeError, lambda: mamba2(**inputs(B=torch.randn(2, 6, 1, 2, 5))),
                "input 'B'", "expected 4 dims (b, l, g=2, n=5)", "got shape (2, 6, 1, 2, 5)")


def test_batch_mismatch_between_inputs(mamba2):
    raises_with(mx.ShapeError, lambda: mamba2(**inputs(B=torch.randn(3, 6, 2, 5))),
                "input 'B'", "dim 'b' (axis 0) is 3", "input 'x' has b=2", "share b and l")


def test_length_mismatch_between_inputs(mamba2):
    raises_with(mx.ShapeError, lambda: mamba2(**inputs(dt=torch.randn(2, 7, 4))),
                "input 'dt'", "dim 'l' (axis 1) is 7", "input 'x' has l=6", "share b and l")


def test_initial_state_with_wrong_shape(mamba2):
    bad = torch.zeros(BATCH, 4, 5, 3)  # p and n swapped
    raises_with(mx.ShapeError, lambda: mamba2(**inputs(), initial_state=bad),
                "initial_state", "expected dims (b=2, h=4, p=3, n=5) = (2, 4, 3, 5)",
                "got (2, 4, 5, 3)", "mixer.init_state(2)")
    # a state for another batch size
    raises_with(mx.ShapeError, lambda: mamba2(**inputs(), initial_state=torch.zeros(3, 4, 3, 5)),
                "initial_state", "(2, 4, 3, 5)", "got (3, 4, 3, 5)")


def test_initial_state_with_wrong_count(mamba2):
    s = mamba2.init_state(BATCH)
    raises_with(mx.InputError, lambda: mamba2(**inputs(), initial_state=(s, s)),
                "initial_state", "expected 1 state tensor(s)", "got 2")


def test_step_inputs_with_the_l_dim_left_in(mamba2):
    state = mamba2.init_state(BATCH)
    raises_with(mx.ShapeError, lambda: mamba2.step(state, **inputs()),
                "input 'x'", "expected 3 dims (b, h=4, p=3)", "got shape (2, 6, 4, 3)")
    one = {k: v[:, 0] for k, v in inputs().items()}
    one["dt"] = inputs()["dt"]  # only dt still carries l
    raises_with(mx.ShapeError, lambda: mamba2.step(state, **one),
                "input 'dt'", "expected 2 dims (b, h=4)", "got shape (2, 6, 4)")


def test_step_state_with_wrong_shape(mamba2):
    one = {k: v[:, 0] for k, v in inputs().items()}
    raises_with(mx.ShapeError, lambda: mamba2.step(torch.zeros(BATCH, 4, 3, 4), **one),
                "state: expected dims (b=2, h=4, p=3, n=5)", "got (2, 4, 3, 4)")


# -- InputError --------------------------------------------------------------------------------------


def test_missing_input(mamba2):
    ins = inputs()
    del ins["C"]
    raises_with(mx.InputError, lambda: mamba2(**ins), "missing input(s): C (b, l, g=2, n=5)")
    # step names the per-position dims without l
    one = {k: v[:, 0] for k, v in inputs().items() if k != "dt"}
    raises_with(mx.InputError, lambda: mamba2.step(None, **one), "missing input(s): dt (b, h=4)")


def test_unknown_input(mamba2):
    raises_with(mx.InputError, lambda: mamba2(**inputs(), z=torch.zeros(1)),
                "unknown input(s) ['z']", "spec 'mamba2' takes x, dt, B, C")
    # parameters are not inputs
    raises_with(mx.InputError, lambda: mamba2(**inputs(), D=torch.zeros(4)),
                "unknown input(s) ['D']", "parameters live in the module")


def test_numpy_array_instead_of_tensor(mamba2):
    raises_with(mx.InputError, lambda: mamba2(**inputs(B=np.zeros((2, 6, 2, 5)))),
                "input 'B' must be a torch.Tensor", "(b, l, g=2, n=5)", "got ndarray")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_non_float_input(mamba2, dtype):
    raises_with(mx.InputError, lambda: mamba2(**inputs(x=torch.ones(2, 6, 4, 3, dtype=dtype))),
                "input 'x'", f"dtype {dtype}", "floating-point")


def test_input_on_another_device_than_the_parameters(mamba2):
    """Without a GPU the other device is ``meta``: the mixer's parameters there, the inputs on cpu (a
    meta *input* is refused first, below)."""
    on_meta = mx.compile("mamba2", dims=DIMS, dtype=torch.float64).to("meta")
    raises_with(mx.InputError, lambda: on_meta(**inputs()),
                "input 'x' is on cpu", "parameters are on meta", "mixer.to('cpu')")


def test_meta_input_refused(mamba2):
    raises_with(mx.InputError, lambda: mamba2(**inputs(dt=torch.empty(2, 6, 4, device="meta"))),
                "input 'dt' is on the meta device", "no data", "cpu or cuda")


def test_inputs_on_different_devices_without_parameters():
    @mx.spec
    def linear_attention(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
        return mx.semiseparable(C=C, B=B) @ x

    m = mx.compile(linear_attention, dims=dict(h=2, p=3, n=4))
    B = torch.randn(2, 5, 2, 4)
    with pytest.raises(mx.InputError, match="device|meta"):
        m(x=torch.empty(2, 5, 2, 3, device="meta"), B=B, C=B)


def test_seq_idx_float(mamba2):
    raises_with(mx.InputError, lambda: mamba2(**inputs(), seq_idx=torch.zeros(BATCH, LEN)),
                "seq_idx must be an integer tensor", "(b, l)")


@pytest.mark.parametrize("bad", [torch.zeros(BATCH, LEN, dtype=torch.bool), [[0] * LEN] * BATCH],
                         ids=["bool", "list"])
def test_seq_idx_not_an_integer_tensor(mamba2, bad):
    raises_with(mx.InputError, lambda: mamba2(**inputs(), seq_idx=bad), "seq_idx must be an integer tensor")


@pytest.mark.parametrize("shape", [(BATCH, LEN - 1), (BATCH,), (1, LEN), (BATCH, LEN, 1)])
def test_seq_idx_wrong_shape(mamba2, shape):
    raises_with(mx.ShapeError,
                lambda: mamba2(**inputs(), seq_idx=torch.zeros(shape, dtype=torch.long)),
                "seq_idx: expected dims (b=2, l=6)", f"got shape {shape}")


# -- BackendError ------------------------------------------------------------------------------------


def test_unknown_backend():
    raises_with(mx.BackendError, lambda: mx.compile("mamba2", dims=DIMS, backend="cuda-magic"),
                "unknown backend 'cuda-magic'", "auto, reference, recurrent, chunked")


def test_unknown_backend_for_source(mamba2):
    raises_with(mx.BackendError, lambda: mamba2.source("cuda-magic"),
                "unknown backend 'cuda-magic'", "from backend=", "chunked")


@pytest.mark.parametrize("chunk", [0, -4, 2.5, "8"])
def test_bad_chunk_size(chunk):
    raises_with(mx.BackendError, lambda: mx.compile("mamba2", dims=DIMS, chunk_size=chunk),
                f"chunk_size must be a positive integer, got {chunk!r}")


def test_mixerc_backend_env_var_garbage_at_call_time(monkeypatch):
    monkeypatch.delenv("MIXERC_BACKEND", raising=False)
    m = mx.compile("mamba2", dims=DIMS)  # backend="auto"
    m(**inputs())
    monkeypatch.setenv("MIXERC_BACKEND", "bogus")
    raises_with(mx.BackendError, lambda: m(**inputs()),
                "unknown backend 'bogus'", "from MIXERC_BACKEND", "auto, reference, recurrent, chunked")


def test_mixerc_backend_env_var_garbage_at_compile_time(monkeypatch):
    monkeypatch.setenv("MIXERC_BACKEND", "bogus")
    raises_with(mx.BackendError, lambda: mx.compile("mamba2", dims=DIMS), "'bogus'", "MIXERC_BACKEND")


def test_mixerc_backend_env_var_does_not_override_an_explicit_backend(monkeypatch):
    monkeypatch.setenv("MIXERC_BACKEND", "bogus")
    m = mx.compile("mamba2", dims=DIMS, backend="reference")
    assert m(**inputs()).shape == (BATCH, LEN, 4, 3)


# -- found while writing these tests: problems to fix --------------------------------------------------


@pytest.mark.parametrize("call", ["mx.semiseparable(C=C, B=B, A=x)", "mx.semiseparable(C=C)"],
                         ids=["unknown_role", "missing_role"])
def test_structure_arguments_are_spec_errors(tmp_path, call):
    path, where = write_spec(tmp_path, f"""
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            M = {call}  # HERE
            return M @ x
        """)
    with pytest.raises(mx.SpecError) as info:
        compile_path(path, dict(h=2, p=3, n=4))
    assert str(info.value).startswith(where + ": ")


@pytest.mark.parametrize("roles, dims", [
    ("C=C, B=B2", dict(h=2, p=3, n=4, m=4)),
    ("C=C, B=B, log_decay=x", dict(h=2, p=3, n=4)),
], ids=["B_C_mismatch", "log_decay_dims"])
def test_structure_role_errors_point_at_the_constructor(tmp_path, roles, dims):
    path, where = write_spec(tmp_path, f"""
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"), B2: mx.Seq("b l h m")):
            M = mx.semiseparable({roles})  # HERE
            y = x * 2.0
            return M @ y
        """)
    with pytest.raises(mx.SpecError) as info:
        compile_path(path, dims)
    assert str(info.value).startswith(where + ": ")


def test_structure_built_but_never_applied(tmp_path):
    path, where = write_spec(tmp_path, """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            M = mx.semiseparable(C=C, B=B)
            forgotten = mx.semiseparable(C=B, B=C)  # HERE
            return M @ x
        """)
    raises_with(mx.SpecError, lambda: compile_path(path, dict(h=2, p=3, n=4)),
                where, "built but never applied")


def test_spec_file_with_postponed_annotations(tmp_path):
    path, _ = write_spec(tmp_path, """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            return mx.semiseparable(C=C, B=B) @ x
        """)
    text = pathlib.Path(path).read_text()
    pathlib.Path(path).write_text("from __future__ import annotations\n" + text)
    assert mx.load_spec(path).inputs.keys() == {"x", "B", "C"}


@pytest.mark.parametrize("backend, b, l", [("recurrent", 2, 0), ("chunked", 2, 0), ("chunked", 0, 6),
                                           ("auto", 0, 6)])
def test_empty_inputs_give_an_empty_output_or_a_typed_error(monkeypatch, backend, b, l):
    monkeypatch.delenv("MIXERC_BACKEND", raising=False)
    m = mx.compile("mamba2", dims=DIMS, backend=backend, dtype=torch.float64)
    try:
        y = m(**inputs(b=b, l=l))
    except mx.MixercError:
        return
    assert y.shape == (b, l, 4, 3)


@pytest.mark.parametrize("backend, b, l", [("reference", 2, 0), ("reference", 0, 6),
                                           ("recurrent", 0, 6)])
def test_empty_inputs_that_work(backend, b, l):
    m = mx.compile("mamba2", dims=DIMS, backend=backend, dtype=torch.float64)
    assert m(**inputs(b=b, l=l)).shape == (b, l, 4, 3)


def test_mixerc_backend_env_var_switches_auto(monkeypatch):
    m = mx.compile("mamba2", dims=DIMS)
    monkeypatch.setenv("MIXERC_BACKEND", "recurrent")
    assert "_ss.recurrent(" in m.source()
    assert "_ss.reference(" in mx.compile("mamba2", dims=DIMS, backend="reference").source()


def test_shape_error_message_in_full(mamba2):
    with pytest.raises(mx.ShapeError) as info:
        mamba2(**inputs(x=torch.randn(2, 6, 4, 8)))
    assert str(info.value) == ("input 'x': expected (b, l, h=4, p=3), got shape (2, 6, 4, 8): dim 'p' "
                               "(axis 3) is 8, the mixer was compiled with p=3")


@pytest.mark.parametrize("expr", ["x > 0.0", "x ** 2", "x @ x", "float(x)"])
def test_unsupported_python_operators_are_spec_errors(tmp_path, expr):
    path, where = write_spec(tmp_path, f"""
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            y = {expr}  # HERE
            return mx.semiseparable(C=C, B=B) @ x
        """)
    raises_with(mx.SpecError, lambda: compile_path(path, dict(h=2, p=3, n=4)), where, "not spec ops")


@pytest.mark.parametrize("state", [5, "zz"])
def test_state_of_the_wrong_type(mamba2, state):
    raises_with(mx.InputError, lambda: mamba2(**inputs(), initial_state=state), "initial_state must be a tensor",
                "init_state(2)")


def test_chunk_size_bool_is_rejected():
    raises_with(mx.BackendError, lambda: mx.compile("mamba2", dims=DIMS, chunk_size=True),
                "chunk_size must be a positive integer, got True")


# -- every Python construct the tracer cannot record is a located SpecError -----------------------
# (the spec body holds `y = <expr>  # HERE`; the message names the construct and what to write instead)

UNSUPPORTED_CONSTRUCTS = [
    ("sum_method", 'x.sum("p")', ["'.sum' on a traced value", "reductions such as sum are not spec ops", "M @ x"]),
    ("exp_method", "x.exp()", ["'.exp' on a traced value", "use mx.exp(...)"]),
    ("shape", "x.shape", ["'.shape' on a traced value", "named dims"]),
    ("pow", "x ** 2", ["'**' on a traced value", "powers are not spec ops", "x * x"]),
    ("matmul_values", "x @ dt", ["'@' between two traced values", "not spec ops", "M @ x", "x * y"]),
    ("value_at_matrix", "x @ mx.semiseparable(C=C, B=B)", ["'x @ M'", "write M @ x"]),
    ("less", "x < dt", ["comparison", "not spec ops", "mx.clamp"]),
    ("equal", "x == 0.0", ["comparison", "not spec ops", "mx.clamp"]),
    ("max_builtin", "max(x, 0.0)", ["comparison", "mx.clamp"]),
    ("len", "len(x)", ["len() of a traced value", "named dims, not Python axes", "broadcasting on dim names"]),
    ("iterate", "[v for v in x]", ["iterating over a traced value", "named dims, not Python axes"]),
    ("unpack", "a, b = x", ["iterating over a traced value"]),
    ("index", "x[0]", ["indexing a traced value ([0])", "named dims, not Python axes"]),
    ("slice", "x[:, 1:]", ["indexing a traced value", "slicing"]),
    ("torch_exp", "torch.exp(x)", ["torch.exp(...) on a traced value", "torch functions are not traced",
                                   "use mx.exp(...)"]),
    ("torch_tanh", "torch.tanh(x)", ["torch.tanh(...) on a traced value", "the spec ops are", "mx.sigmoid"]),
    ("tensor_times_value", "torch.ones(3) * x", ["cannot use Tensor", "mx.Param"]),
    ("math_exp", "math.exp(x)", ["math.*", "conversions to Python numbers are not spec ops", "mx.exp"]),
    ("float", "float(x)", ["float()", "conversions to Python numbers are not spec ops"]),
    ("numpy_exp", "np.exp(x)", ["numpy.exp(...) on a traced value", "use mx.exp(...)"]),
    ("floordiv", "x // 2", ["'//'", "not spec ops"]),
    ("invert", "~x", ["bitwise", "not spec ops"]),
    ("bool", "bool(x)", ["no truth value", "cannot branch on data", "mx.clamp"]),
    ("while", "[0 for _ in iter(int, 1) if x]", ["no truth value"]),
    ("matrix_attribute", "mx.semiseparable(C=C, B=B).T", ["'.T' on a structured matrix", "M @ x"]),
    ("matrix_bool", "1 if mx.semiseparable(C=C, B=B) else 0", ["no truth value"]),
    ("matrix_index", "mx.semiseparable(C=C, B=B)[0]", ["indexing a traced value"]),
    ("clamp_traced_bound", "mx.clamp(x, min=dt)", ["clamp: min=", "must be a Python number"]),
]


@pytest.mark.parametrize("expr, facts", [c[1:] for c in UNSUPPORTED_CONSTRUCTS],
                         ids=[c[0] for c in UNSUPPORTED_CONSTRUCTS])
def test_unsupported_constructs_are_located_spec_errors(tmp_path, expr, facts):
    path, where = write_spec(tmp_path, f"""
        import math
        import numpy as np


        @mx.spec
        def s(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            y = {expr}  # HERE
            return mx.semiseparable(C=C, B=B) @ x
        """)
    msg = raises_with(mx.SpecError, lambda: compile_path(path, dict(h=2, p=3, n=4)), *facts)
    assert msg.startswith(where + ": "), f"expected {where!r} first: {msg}"


def test_numpy_numbers_are_constants(tmp_path):
    path, _ = write_spec(tmp_path, """
        import numpy as np


        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            return mx.semiseparable(C=C, B=B) @ (np.float64(0.5) * x * np.float32(2.0) + +x)
        """)
    compile_path(path, dict(h=2, p=3, n=4))


# -- exceptions raised by the spec body while it is traced ------------------------------------------

BODY_EXCEPTIONS = [
    ("name_error", "y = undefined_name * x  # HERE", NameError,
     ["while tracing spec 's'", "NameError: name 'undefined_name' is not defined", "define or import it"]),
    ("zero_division", "y = x * (1 / 0)  # HERE", ZeroDivisionError, ["ZeroDivisionError: division by zero"]),
    ("raised_by_the_user", "raise RuntimeError('this spec\\nis not done')  # HERE", RuntimeError,
     ["RuntimeError: this spec is not done"]),
    ("wrong_arguments_to_an_op", "y = mx.exp(x, 2)  # HERE", TypeError,
     ["TypeError: exp() takes 1 positional argument but 2 were given", "the spec ops are"]),
    ("unknown_op", "y = mx.gelu(x)  # HERE", AttributeError,
     ["AttributeError: module 'mixerc' has no attribute 'gelu'", "mx.sigmoid"]),
]


@pytest.mark.parametrize("line, cause, facts", [c[1:] for c in BODY_EXCEPTIONS],
                         ids=[c[0] for c in BODY_EXCEPTIONS])
def test_exceptions_in_the_spec_body_are_located_spec_errors(tmp_path, line, cause, facts):
    path, where = write_spec(tmp_path, f"""
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            {line}
            return mx.semiseparable(C=C, B=B) @ x
        """)
    with pytest.raises(mx.SpecError) as info:
        compile_path(path, dict(h=2, p=3, n=4))
    msg = str(info.value)
    assert type(info.value) is mx.SpecError and msg.startswith(where + ": "), msg
    for fact in facts:
        assert fact in msg, f"{fact!r} not in message: {msg}"
    assert "\n" not in msg
    assert type(info.value.__cause__) is cause  # the original is chained


def test_exception_in_a_helper_of_the_spec_file_points_at_the_helper(tmp_path):
    path, where = write_spec(tmp_path, """
        def gate(v):
            return v.mean()  # HERE


        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            return mx.semiseparable(C=C, B=B) @ gate(x)
        """)
    msg = raises_with(mx.SpecError, lambda: compile_path(path, dict(h=2, p=3, n=4)), "'.mean'", "reductions")
    assert msg.startswith(where + ": "), msg


def test_a_bug_inside_mixerc_while_tracing_keeps_its_own_exception(tmp_path, monkeypatch):
    """Only user code's exceptions become SpecErrors: one raised in mixerc's own code is a bug."""
    import mixerc.dsl

    path, _ = write_spec(tmp_path, """
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n")):
            return mx.semiseparable(C=mx.groups_to_heads(C), B=mx.groups_to_heads(B)) @ x
        """)
    monkeypatch.setattr(mixerc.dsl, "GROUP_OF", None)  # breaks groups_to_heads inside dsl.py
    with pytest.raises(TypeError):
        compile_path(path, dict(h=2, g=1, p=3, n=4))


# -- mx.Param(init=...) and mx.init rules: SpecErrors at the line that wrote them ------------------

INIT_CASES = [
    ("tensor", "init=torch.ones(2)", ["mx.Param(init=...)", "got a tensor of shape (2,)", "log_uniform(lo, hi)",
                                      "copy_(values)"]),
    ("callable", "init=lambda shape: torch.zeros(shape)", ["got the callable '<lambda>'", "mx.init.InitRule"]),
    ("torch_init_function", "init=torch.nn.init.normal_", ["got the callable 'normal_'"]),
    ("rule_not_called", "init=mx.init.normal", ["init=mx.init.normal(...)"]),
    ("string", "init='zeros'", ["got str 'zeros'", "a number (constant)"]),
    ("bad_rule_bounds", "init=mx.init.log_uniform(0, 16)", ["mx.init.log_uniform needs 0 < lo <= hi"]),
    ("rule_argument_not_a_number", "init=mx.init.uniform('a', 1)", ["mx.init.uniform: lo='a' must be a number"]),
]


@pytest.mark.parametrize("init, facts", [c[1:] for c in INIT_CASES], ids=[c[0] for c in INIT_CASES])
def test_bad_init_is_a_spec_error_at_its_line(tmp_path, init, facts):
    path, where = write_spec(tmp_path, f"""
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"),
              D: mx.Param("h", {init})):  # HERE
            return mx.semiseparable(C=C, B=B) @ x + D * x
        """)
    msg = raises_with(mx.SpecError, lambda: mx.load_spec(path), *facts)
    assert msg.startswith(where + ": "), msg


def test_bad_init_outside_a_spec_file():
    with pytest.raises(mx.SpecError, match="got a tensor"):
        mx.Param("h", init=torch.zeros(3))
    with pytest.raises(ValueError, match="needs 0 < lo <= hi"):  # still a ValueError, as before
        mx.init.log_uniform(2, 1)


# -- loading a spec file whose top level raises --------------------------------------------------------

IMPORT_CASES = [
    ("name_error", "scale = undefined_scale  # HERE", NameError, ["NameError: name 'undefined_scale' is not defined"]),
    ("missing_module", "import no_such_module_for_mixerc  # HERE", ModuleNotFoundError,
     ["ModuleNotFoundError: No module named 'no_such_module_for_mixerc'"]),
    ("import_error", "from mixerc import no_such_name  # HERE", ImportError,
     ["ImportError: cannot import name 'no_such_name'"]),
    ("runtime_error", "torch.ones(2) @ torch.ones(3)  # HERE", RuntimeError, ["RuntimeError:"]),
]


@pytest.mark.parametrize("line, cause, facts", [c[1:] for c in IMPORT_CASES], ids=[c[0] for c in IMPORT_CASES])
def test_spec_file_that_raises_at_import(tmp_path, line, cause, facts):
    path, where = write_spec(tmp_path, f"""
        {line}


        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n")):
            return mx.semiseparable(C=C, B=B) @ x
        """)
    with pytest.raises(mx.SpecError) as info:
        mx.load_spec(path)
    msg = str(info.value)
    assert type(info.value) is mx.SpecError and f"{path}:{where.split(':')[1]}: " in msg, msg
    assert f"importing spec file {path!r}" in msg
    for fact in facts:
        assert fact in msg, f"{fact!r} not in message: {msg}"
    assert type(info.value.__cause__) is cause


def test_syntax_error_in_a_module_the_spec_file_imports(tmp_path):
    (tmp_path / "helper_mod_with_typo.py").write_text("x = 1\ndef f(:\n    pass\n")
    path, _ = write_spec(tmp_path, """
        import sys, os
        sys.path.insert(0, os.path.dirname(__file__))
        import helper_mod_with_typo
        """)
    raises_with(mx.SpecError, lambda: mx.load_spec(path), "helper_mod_with_typo.py:2", "syntax error")


def test_a_module_stands_for_the_spec_it_defines_and_one_without_is_a_typed_error():
    """Found by new users: ``from mixerc.specs import s4d; mx.compile(s4d, ...)`` raised a bare TypeError
    from os.fspath, later a SpecError; the module names its spec as plainly as the string does."""
    import types

    import mixerc.specs.s4d as module

    assert mx.load_spec(module) is mx.load_spec("s4d")
    assert mx.compile(module, dims=module.s4d.example_dims).spec is mx.load_spec("s4d")
    empty = types.ModuleType("my_specs")
    raises_with(mx.SpecError, lambda: mx.compile(empty, dims={}), "my_specs defines no @mx.spec function")
    empty.a, empty.b = mx.load_spec("s4d"), mx.load_spec("mamba2")
    raises_with(mx.SpecError, lambda: mx.load_spec(empty), "my_specs defines several specs (s4d, mamba2)",
                "pick one with my_specs.<spec> or load_spec(my_specs, name=...)")
    assert mx.load_spec(empty, name="mamba2") is empty.b


# -- entry points: mx.compile's arguments, reserved names, positional calls, states (issue 15) -------


@pytest.mark.parametrize("dtype,hint", [(torch.int32, "torch.float32"), (torch.complex64, "torch.float32"),
                                        ("float32", "dtype=torch.float32"), ("float64", "dtype=torch.float64")])
def test_compile_dtype_must_be_a_floating_torch_dtype(dtype, hint):
    raises_with(mx.InputError, lambda: mx.compile("mamba2", dims=DIMS, dtype=dtype),
                f"mx.compile: dtype={dtype!r}", "must be None or a floating torch.dtype", hint)


def test_compile_backend_parameters_and_spec_types():
    raises_with(mx.InputError, lambda: mx.compile("mamba2", dims=DIMS, backend=None),
                "backend=None must be a string", "'chunked'")
    raises_with(mx.InputError, lambda: mx.compile("mamba2", dims=DIMS, parameters=1),
                "parameters=1 must be True or False")
    raises_with(mx.SpecError, lambda: mx.compile(123, dims=DIMS), "expected a spec", "got int 123")


@pytest.mark.parametrize("name", ["seq_idx", "state", "initial_state", "params", "cu_seqlens", "lengths",
                                  "return_final_state", "initial_states", "configs", "step", "self", "F"])
@pytest.mark.parametrize("kind", ["input", "param"])
def test_spec_names_that_collide_with_call_keywords(tmp_path, name, kind):
    """Found by a new user: an input named seq_idx generated code with a SyntaxError; state,
    initial_state and params collided with the call's own keywords."""
    decl = 'mx.Seq("b l h p")' if kind == "input" else 'mx.Param("h", init=1.0)'
    path, where = write_spec(tmp_path, f"""
        @mx.spec
        def s(x: mx.Seq("b l h p"), B: mx.Seq("b l h n"), C: mx.Seq("b l h n"), {name}: {decl}):  {MARK}
            return mx.semiseparable(C=C, B=B) @ x + {name}
        """)
    raises_with(mx.SpecError, lambda: compile_path(path, dict(h=2, p=3, n=4)), where,
                f"{name!r} cannot name an input or parameter", f"rename it (e.g. {name}_in)")


def test_positional_inputs_name_the_keyword_form(mamba2):
    x = inputs()
    raises_with(mx.InputError, lambda: mamba2(x["x"], x["dt"], x["B"], x["C"]),
                "mixer takes the spec's inputs by keyword, got 4 positional argument(s)",
                "mixer(x=x, dt=dt, B=B, C=C)")
    one = {k: v[:, 0] for k, v in x.items()}
    raises_with(mx.InputError, lambda: mamba2.step(None, one["x"], one["dt"], B=one["B"], C=one["C"]),
                "mixer.step takes the spec's inputs by keyword, got 2 positional argument(s)",
                "mixer.step(state, x=x, dt=dt, B=B, C=C)")


def test_complex_input_and_states_refused(mamba2):
    raises_with(mx.InputError, lambda: mamba2(**inputs(x=torch.randn(BATCH, LEN, 4, 3, dtype=torch.complex128))),
                "input 'x' is complex (torch.complex128)", "t.real")
    s = mamba2.init_state(BATCH).to(torch.complex128)
    raises_with(mx.InputError, lambda: mamba2(**inputs(), initial_state=s),
                "initial_state has dtype torch.complex128", "real floating-point", "mixer.init_state(batch)")
    one = {k: v[:, 0] for k, v in inputs().items()}
    raises_with(mx.InputError, lambda: mamba2.step(mamba2.init_state(BATCH).long(), **one),
                "state has dtype torch.int64", ".float()")
    meta = torch.empty(BATCH, 4, 3, 5, device="meta")
    raises_with(mx.InputError, lambda: mamba2.step(meta, **one), "state is on the meta device")


def test_init_state_batch_and_dtype(mamba2):
    for bad in (-1, 2.0, True, "2"):
        raises_with(mx.InputError, lambda: mamba2.init_state(bad), f"init_state: batch={bad!r}",
                    "an integer >= 0")
    raises_with(mx.InputError, lambda: mamba2.init_state(2, dtype=torch.int64),
                "init_state: dtype=torch.int64", "real floating")
    assert mamba2.init_state(0).shape == (0, 4, 3, 5)


# -- mixerc.nn layer constructors: every argument checked up front (issue 15) -------------------------
LAYER_CASES = [
    ("Mamba2", dict(d_model=32, headdim=0), "Mamba2: headdim=0 must be a positive integer"),
    ("Mamba2", dict(d_model=0), "Mamba2: d_model=0 must be a positive integer"),
    ("Mamba2", dict(d_model=32, d_state=0), "Mamba2: d_state=0 must be a positive integer"),
    ("Mamba2", dict(d_model=32, headdim=8, d_conv=0), "Mamba2: d_conv=0 must be a positive integer"),
    ("Mamba2", dict(d_model=32, headdim=8, ngroups=0), "Mamba2: ngroups=0 must be a positive integer"),
    ("Mamba2", dict(d_model=32, headdim=8, expand=0), "Mamba2: expand=0 must be a finite number > 0"),
    ("Mamba2", dict(d_model=32, headdim=8, d_ssm=0), "Mamba2: d_ssm=0 must be a positive integer or None"),
    ("Mamba2", dict(d_model=32, headdim=8, d_ssm=72), "Mamba2: d_ssm=72 must be <= d_inner"),
    ("Mamba2", dict(d_model=32, headdim=8, d_ssm=36), "Mamba2: d_ssm=36 must be a multiple of headdim=8"),
    ("Mamba2", dict(d_model=32, headdim=24), "Mamba2: headdim=24 does not divide d_inner"),
    ("Mamba2", dict(d_model=32, headdim=8, ngroups=3), "Mamba2: ngroups=3 must divide the number of heads 8"),
    ("Mamba2", dict(d_model=32, headdim=8, chunk_size=0), "Mamba2: chunk_size=0 must be a positive integer"),
    ("Mamba2", dict(d_model=32, headdim=8, dtype="float32"), "Mamba2: dtype='float32' must be None or a floating"),
    ("Mamba2", dict(d_model=32, headdim=8, dtype=torch.int8), "Mamba2: dtype=torch.int8"),
    ("Mamba2", dict(d_model=32, headdim=8, device="gpu7"), "Mamba2: device='gpu7' is not a device"),
    ("Mamba2", dict(d_model=32, headdim=8, A_init_range=(0, 16)), "Mamba2: A_init_range=(0, 16) must satisfy"),
    ("Mamba2", dict(d_model=32, headdim=8, A_init_range=16), "Mamba2: A_init_range=16 must be a pair"),
    ("Mamba2", dict(d_model=32, headdim=8, dt_min=0.0), "Mamba2: dt_min=0.0 must be a finite number > 0"),
    ("Mamba2", dict(d_model=32, headdim=8, dt_max=float("nan")), "Mamba2: dt_max=nan must be a finite number"),
    ("Mamba2", dict(d_model=32, headdim=8, dt_min=0.5), "Mamba2: dt_min=0.5 must be <= dt_max=0.1"),
    ("Mamba2", dict(d_model=32, headdim=8, dt_init_floor=-1), "Mamba2: dt_init_floor=-1 must be a finite number >= 0"),
    ("Mamba2", dict(d_model=32, headdim=8, conv_init=0), "Mamba2: conv_init=0 must be a finite number > 0"),
    ("Mamba2", dict(d_model=32, headdim=8, rmsnorm="yes"), "Mamba2: rmsnorm='yes' must be True or False"),
    ("Mamba2", dict(d_model=32, headdim=8, dt_limit=(0.0, 0.1)), "Mamba2: dt_limit=(0.0, 0.1) is not supported"),
    ("Mamba2", dict(d_model=32, headdim=8, process_group=object()), "Mamba2: process_group=<object"),
    ("Mamba2", dict(d_model=32, headdim=8, layer_idx=-1), "Mamba2: layer_idx=-1 must be None or an integer"),
    ("Mamba2", dict(d_model=32, headdim=8, backend=None), "Mamba2: backend=None must be a string"),
    ("Mamba", dict(d_model=16, dt_rank=0), "Mamba: dt_rank=0 must be 'auto'"),
    ("Mamba", dict(d_model=16, dt_rank="big"), "Mamba: dt_rank='big' must be 'auto'"),
    ("Mamba", dict(d_model=16, expand=0), "Mamba: expand=0 must be a finite number > 0"),
    ("Mamba", dict(d_model=16, expand=0.01), "Mamba: expand=0.01 gives d_inner = int(expand * d_model) = 0"),
    ("Mamba", dict(d_model=16.5), "Mamba: d_model=16.5 must be a positive integer"),
    ("Mamba", dict(d_model=16, d_state=0), "Mamba: d_state=0 must be a positive integer"),
    ("Mamba", dict(d_model=16, dt_scale=-1.0), "Mamba: dt_scale=-1.0 must be a finite number >= 0"),
    ("Mamba", dict(d_model=16, dt_init="xavier"), "Mamba: dt_init='xavier' must be one of 'constant', 'random'"),
    ("Mamba", dict(d_model=16, bias=1), "Mamba: bias=1 must be True or False"),
    ("Hydra", dict(d_model=32, headdim=8, d_conv=4), "Hydra: d_conv=4 is even: d_conv must be odd"),
    ("Hydra", dict(d_model=32, headdim=0), "Hydra: headdim=0 must be a positive integer"),
    ("Hydra", dict(d_model=32, headdim=8, d_state=0), "Hydra: d_state=0 must be a positive integer"),
    ("Hydra", dict(d_model=32, headdim=24), "Hydra: headdim=24 does not divide d_inner"),
    ("Hydra", dict(d_model=32, headdim=8, ngroups=3), "Hydra: ngroups=3 must divide the number of heads 8"),
    ("Hydra", dict(d_model=32, headdim=8, activation="relu"), "Hydra: activation='relu' must be one of"),
    ("Hydra", dict(d_model=32, headdim=8, learnable_init_states=True), "learnable_init_states=True is not"),
    ("Hydra", dict(d_model=32, headdim=8, expand=-2), "Hydra: expand=-2 must be a finite number > 0"),
]


@pytest.mark.parametrize("layer,kwargs,fact", LAYER_CASES, ids=[f"{c[0]}-{'-'.join(c[1])}" for c in LAYER_CASES])
def test_layer_arguments_checked_up_front(layer, kwargs, fact):
    """Found by a new user: Mamba2(headdim=0) raised ZeroDivisionError, Mamba(dt_rank=0) a ValueError
    from inside nn.Linear, Mamba2(d_state=0) answered about a dim n and d_model=0 about d_ssm."""
    import mixerc.nn as mnn

    raises_with(mnn.ConfigError, lambda: getattr(mnn, layer)(**kwargs), fact)
