"""Named dims.

Every tensor in a spec carries named dims, einops style: ``"b l h p"``. Two names are reserved:
``b`` (batch) and ``l`` (sequence length); both stay symbolic forever (mixerc never specialises on
the sequence length). Every other dim gets a size when the spec is compiled (``dims=dict(h=8, ...)``).

A dim named ``g`` is a *group* dim of the heads ``h``: head ``i`` reads group ``i // (h // g)``,
as mamba-ssm's ``ngroups`` does.
"""

from __future__ import annotations

import keyword
from functools import lru_cache

import sympy

from .errors import SpecError

BATCH = "b"
LENGTH = "l"
RESERVED = (BATCH, LENGTH)  # the symbolic dims of a 1-D spec; a 2-D spec adds its other sequence axis
GROUP_OF = {"g": "h"}  # group dim -> the head dim it groups

Dims = tuple  # tuple[str, ...]


def parse_dims(text: str, what: str, where: str | None = None) -> Dims:
    """``"b l h p"`` -> ``("b", "l", "h", "p")``, checking that every name is an identifier, once."""
    if not isinstance(text, str):
        raise SpecError(f"{what}: dims must be a string such as \"b l h p\", got {text!r}", where)
    names = tuple(text.split())
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise SpecError(f"{what}: dim {name!r} in {text!r} is not a valid name; use letters, "
                            "digits and underscores, e.g. \"b l h p\"", where)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SpecError(f"{what}: dim {dup[0]!r} appears twice in {text!r}; each dim once", where)
    return names


@lru_cache(maxsize=None)
def symbol(name: str) -> sympy.Symbol:
    """The sympy size of a dim (positive integer symbol of the same name)."""
    return sympy.Symbol(name, positive=True, integer=True)


def broadcast(*dims_list: Dims, lead: Dims = RESERVED) -> Dims:
    """Union of named dims: the ``lead`` dims first (when present: ``b`` and the sequence axes,
    ``b l`` by default), then the rest in order of first appearance. ``("d", "n")`` with
    ``("b", "l", "d")`` gives ``("b", "l", "d", "n")``."""
    seen: list[str] = []
    for dims in dims_list:
        for d in dims:
            if d not in seen:
                seen.append(d)
    head = [d for d in lead if d in seen]
    return tuple(head + [d for d in seen if d not in lead])


def fmt(dims: Dims, sizes: dict | None = None) -> str:
    """``("b", "l", "h")`` -> ``"(b, l, h=8)"`` when sizes binds h."""
    sizes = sizes or {}
    parts = [f"{d}={sizes[d]}" if d in sizes else d for d in dims]
    return "(" + ", ".join(parts) + ")"
