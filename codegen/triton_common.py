"""What every Triton lowering shares: the Jinja environment of `templates/`, tile sizes and limits,
the cache key's hash of the generator, and the sizes of a structure's canonical operands.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
from pathlib import Path

import jinja2

from mixerc.ir import BackendError

VERSION = "1"  # bump when the generated code changes meaning (part of every cache key)
MAX_DIM = 256  # largest padded P or N a kernel tile holds
TEMPLATE_DIR = importlib.resources.files("mixerc.templates")
ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), keep_trailing_newline=True,
                         undefined=jinja2.StrictUndefined)


def code_hash(extra: list[str] = ()) -> str:
    """Hash of the templates, of every module of the code generators and of the run-time helpers
    (folders walked: no hand-kept file list to forget), and of ``extra`` files (a user's registered
    structure): a cache key part that changes whenever the generated code could."""
    h = hashlib.sha256()
    rt = Path(importlib.util.find_spec("mixerc.rt").origin).parent
    roots = [Path(str(TEMPLATE_DIR)), Path(__file__).parent, rt]
    files = [f for root in roots for f in sorted(root.rglob("*")) if f.suffix in (".py", ".j2")]
    for f in files + [Path(x) for x in extra]:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def pow2(n: int, lo: int = 16) -> int:
    v = lo
    while v < n:
        v *= 2
    return v


def structure_dims(sizes: dict, lay: dict) -> tuple[int, int, int, int]:
    head, value_d, state, group = lay["head"], lay["value"], lay["state"], lay["group"]
    H = sizes[head] if head else 1
    P = sizes[value_d] if value_d else 1
    G = sizes[group] if group and group != head else (H if group else 1)
    return H, P, sizes[state], G


def check_limits(lay: dict, P: int, N: int, Q: int, diagonal: bool):
    if pow2(P) > MAX_DIM or pow2(N) > MAX_DIM:
        raise BackendError(f"the triton lowering holds value and state dims up to {MAX_DIM} in one tile "
                           f"({lay['value'] or 'value'}={P}, {lay['state']}={N} given); use backend='chunked'")
    lo = 2 if diagonal else 16  # the diagonal scan has no tl.dot over positions
    if Q & (Q - 1) or not lo <= Q <= 256:
        raise BackendError(f"the triton lowering needs chunk_size a power of two from {lo} to 256, got {Q}")
