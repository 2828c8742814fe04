"""Golden files pin the generated Triton source of the built-in specs (``mixer.source("triton")``),
so that any change to the templates or the generator shows up as a reviewable diff.

    MIXERC_UPDATE_GOLDEN=1 python -m pytest -q tests/test_golden.py    # regenerate (and pass)

Without the flag a drift fails with a unified diff excerpt; accept it by regenerating and committing
tests/golden/.

Normalisation: the op names (``torch.ops.mixerc.<spec>_<12 hex>_k0_fwd``) carry a digest of the cache
key, ``codegen.triton_emit.triton_key``, which hashes the IR, the dims and plan, the generator's code
hash and the torch and Triton versions. Pinning it would make every golden fail on another torch or
Triton version (the GPU machines carry torch 2.11 / Triton 3.6, this CPU torch 2.13 / Triton 3.9) and
on any edit of the generator that leaves the output unchanged, so ``<spec>_<12 hex>`` is replaced by
``<spec>_<KEY>`` before comparing. The IR hash in the module docstring depends on the IR only and is
kept (an IR change is a real change to the generated module).

The goldens use each spec's default chunk size (what a user gets with ``chunk_size=None``).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest

import mixerc as mx
from mixerc.settings import settings

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE = settings().update_golden
MAX_DIFF_LINES = 80

BUILTINS = {
    "mamba2": dict(h=4, p=16, n=16, g=2),
    "mamba": dict(d=8, n=8),
}


def normalise(source: str, spec: str) -> str:
    """The generated source with the version-dependent cache-key digest replaced (see the module
    docstring), and trailing whitespace stripped from every line."""
    source = re.sub(rf"\b{re.escape(spec)}_[0-9a-f]{{12}}(?![0-9a-f])", f"{spec}_<KEY>", source)
    return "\n".join(line.rstrip() for line in source.splitlines()) + "\n"


def generated(spec: str) -> str:
    m = mx.compile(spec, dims=BUILTINS[spec], backend="triton")
    return normalise(m.source("triton"), spec)


def check_golden(name: str, text: str):
    path = GOLDEN_DIR / name
    if UPDATE:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"no golden file {path}; create it with MIXERC_UPDATE_GOLDEN=1 python -m pytest "
                    f"{Path(__file__).name}")
    expected = path.read_text()
    if text == expected:
        return
    diff = list(difflib.unified_diff(expected.splitlines(), text.splitlines(), f"golden/{name}",
                                     "generated", lineterm="", n=2))
    more = len(diff) - MAX_DIFF_LINES
    excerpt = "\n".join(diff[:MAX_DIFF_LINES]) + (f"\n... ({more} more diff lines)" if more > 0 else "")
    pytest.fail(f"the generated Triton source of {name} drifted from tests/golden/{name}; if the change is "
                f"intended, regenerate with MIXERC_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py\n"
                f"{excerpt}", pytrace=False)


def test_normalise_replaces_only_the_key_digest():
    src = ("torch.ops.mixerc.mamba2_8ac203a3551f_k0_fwd(X)  # IR hash: 0923962532e3a058\n"
           '_rt.define_ops("mamba2_8ac203a3551f_k0", ...)\nmamba2_abc\n')
    assert normalise(src, "mamba2") == ("torch.ops.mixerc.mamba2_<KEY>_k0_fwd(X)  # IR hash: 0923962532e3a058\n"
                                        '_rt.define_ops("mamba2_<KEY>_k0", ...)\nmamba2_abc\n')


@pytest.mark.parametrize("spec", list(BUILTINS))
def test_triton_source_golden(spec):
    text = generated(spec)
    assert re.search(rf"\b{spec}_[0-9a-f]{{12}}", text) is None, "a cache-key digest survived normalise()"
    check_golden(f"{spec}.triton.py", text)


@pytest.mark.parametrize("spec", list(BUILTINS))
def test_triton_source_is_deterministic(spec):
    """Two compiles (the second one from the on-disk cache) give the same normalised source, so the
    goldens do not depend on the order tests run in."""
    first = generated(spec)
    assert generated(spec) == first
