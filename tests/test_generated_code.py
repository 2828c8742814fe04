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


def test_the_writer_imports_what_the_code_reads_grouped():
    from mixerc.codegen.wrap import imported_name, uses
    from mixerc.codegen.writer import import_block

    code = 're.compile("x")\nF.relu(y)  # json'
    lines = ["import os", "import re", "import torch.nn.functional as F", "import json", "import math"]
    assert [ln for ln in lines if uses(code, imported_name(ln))] == ["import re", "import torch.nn.functional as F",
                                                                     "import json"]
    assert import_block(["import torch", "from mixerc.rt import triton as _rt", "import re", "import triton",
                         "import re"]) == ["import re", "", "import torch", "import triton", "",
                                           "from mixerc.rt import triton as _rt"]


@pytest.mark.parametrize("name", list_specs())
def test_generated_modules_import_no_generator(name):
    """Generated code imports the standard library, torch, triton and mixerc.rt only: never the code
    generators (a module keeps working as the generators change)."""
    import sys

    spec = load_spec(name)
    m = mx.compile(spec, dims=spec.example_dims)
    sources = [m.source()] + ([m.source("triton")] if name in TRITON_SPECS else [])
    for src in sources:
        for line in src.splitlines():
            if line.startswith(("import ", "from ")):
                top = line.split()[1]
                assert top.split(".")[0] in sys.stdlib_module_names or top.split(".")[0] in ("torch", "triton") \
                    or top == "mixerc.rt", line
