"""Generated Triton modules are code a user reads: for every built-in spec, no line over 120
columns, no unused import, no undefined name (pyflakes), and the spec's lines quoted where its code
lands."""

import pyflakes.api
import pyflakes.messages
import pyflakes.reporter
import pytest

import mixerc as mx
from mixerc.check import cli_lowerings
from mixerc.loader import list_specs, load_spec

TRITON_SPECS = [s for s in list_specs() if "triton" in cli_lowerings(mx.trace(s, load_spec(s).example_dims)[1])]


class _Collect(pyflakes.reporter.Reporter):
    def __init__(self):
        self.messages = []

    def flake(self, message):
        self.messages.append(message)

    def syntaxError(self, *a):  # noqa: N802 - pyflakes' interface
        self.messages.append(a)

    def unexpectedError(self, *a):  # noqa: N802
        self.messages.append(a)


@pytest.mark.parametrize("name", TRITON_SPECS)
def test_triton_module_is_clean(name):
    spec = load_spec(name)
    src = mx.compile(spec, dims=spec.example_dims, backend="triton").source("triton")
    long = [line for line in src.splitlines() if len(line) > 120]
    assert not long, long[:3]
    assert "if True else" not in src and "if False else" not in src
    rep = _Collect()
    pyflakes.api.check(src, f"{name}_triton.py", rep)
    bad = [m for m in rep.messages if isinstance(m, (pyflakes.messages.UnusedImport, pyflakes.messages.UndefinedName,
                                                     tuple))]
    assert not bad, [str(m) for m in bad]
    assert f"spec: {name}.py:" in src


def test_dropping_unused_imports_leaves_text_and_used_names():
    from mixerc.codegen.wrap import drop_unused_imports

    src = '"""Doc\nimport json\n"""\nimport os\nimport re\nimport torch.nn.functional as F\nre.compile("x")\n'
    assert drop_unused_imports(src) == '"""Doc\nimport json\n"""\nimport re\nre.compile("x")\n'
