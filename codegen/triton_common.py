"""What every Triton lowering shares: the Jinja environment of `templates/`, tile sizes and limits,
and the cache key's hash of the generator.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
from pathlib import Path

import jinja2


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


def join_parts(parts: list[str]) -> str:
    """The kernels' module text from its parts (rendered templates, kernels): two blank lines between
    parts, one newline around the whole."""
    return "\n" + "\n\n\n".join(part.strip("\n") for part in parts) + "\n"


def render_parts(templates: list[str], ctx: dict) -> str:
    """`join_parts` of ``templates`` (names under templates/) each rendered with ``ctx``."""
    return join_parts([ENV.get_template(name).render(**ctx) for name in templates])


def pow2(n: int, lo: int = 16) -> int:
    v = lo
    while v < n:
        v *= 2
    return v
