"""The element formula of the 2-D (Roesser) SSM's matrix in sympy: M over the flattened grid as a sum
over monotone lattice paths (docs/grid2d.md).

Symbols (sympy ``IndexedBase``), indexed by a cell ``(v, t)``, or ``(v, t, n)`` with a state index:
``a1`` = exp(log_a1), ``a2``, ``a3``, ``a4`` = exp(log_a4) (the transition factors, read at the
cell a step lands on), ``B1``, ``B2``, ``C1``, ``C2``, ``s1``, ``s2`` (the scales).
"""

from __future__ import annotations

import itertools

import sympy

SYMBOLS = {k: sympy.IndexedBase(k) for k in ("a1", "a2", "a3", "a4", "B1", "B2", "C1", "C2", "s1", "s2")}

# the factor of a step: (direction, state it leaves) -> (coefficient, state it lands in);
# "t" moves one position along l and lands in h1, "v" moves one variate along v and lands in h2
STEP = {("t", 1): ("a1", 1), ("t", 2): ("a2", 1), ("v", 1): ("a3", 2), ("v", 2): ("a4", 2)}


def words(dv: int, dt: int):
    """Every monotone lattice path with ``dv`` steps along v and ``dt`` along t, as a string of
    ``"v"``/``"t"``; none when a count is negative."""
    if dv < 0 or dt < 0:
        return
    for pos in itertools.combinations(range(dv + dt), dv):
        yield "".join("v" if k in pos else "t" for k in range(dv + dt))


def path_weight(word: str, src: tuple, state: int, n=None):
    """(product of the step factors of ``word`` from cell ``src`` leaving state ``state``, the state
    it lands in)."""
    A = SYMBOLS
    v, t = src
    w = sympy.Integer(1)
    for step in word:
        v, t = (v + 1, t) if step == "v" else (v, t + 1)
        coef, state = STEP[(step, state)]
        w = w * A[coef][(v, t) if n is None else (v, t, n)]
    return w, state


def transfer(dst: tuple, src: tuple, land: int, leave: int, n=None):
    """G[(land, dst), (leave, src)]: the sum over the lattice paths from ``src`` to ``dst`` that leave
    state ``leave`` and land in state ``land`` (the empty path: 1 when the states agree)."""
    total = sympy.Integer(0)
    for word in words(dst[0] - src[0], dst[1] - src[1]):
        w, state = path_weight(word, src, leave, n)
        if state == land:
            total += w
    return total


def element(dst: tuple, src: tuple, n=None):
    """M[(v, t), (v', t')] for ``dst`` = (v, t), ``src`` = (v', t'): the sum over the state each
    path leaves (it reads s_c B_c at the source) and the state it lands in (C_a at the target).
    With ``n`` (a sympy symbol or int) the per-state term of that state (M sums it over n)."""
    A = SYMBOLS

    def at(name, cell):
        return A[name][cell if n is None else cell + (n,)]

    return sympy.Add(*[at(f"C{a}", dst) * transfer(dst, src, a, c, n) * at(f"s{c}", src) * at(f"B{c}", src)
                       for a in (1, 2) for c in (1, 2)])
