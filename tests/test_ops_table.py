"""Each entry of the op table (ir/ops.py) says what its op means three times: a sympy expression, a
constant-folding function on floats and a torch expression. They must agree: the lowerings all use
the torch expression, so a wrong one would pass every differential test (the Triton expression and
derivative are checked against torch autograd by tests/test_every_op.py)."""

import math

import pytest
import sympy
import torch
import torch.nn.functional as F

from mixerc.ir.ops import ELEMENTWISE

POINTS = [-3.7, -1.0, -0.25, 0.4, 1.3, 2.9]
ATTRS = {"clamp": {"min": -0.5, "max": 1.0}}


@pytest.mark.parametrize("name", [n for n, op in ELEMENTWISE.items() if op.torch])
def test_sympy_fold_and_torch_agree(name):
    op = ELEMENTWISE[name]
    attrs = ATTRS.get(name, {})
    for a in POINTS:
        args = [a, 0.6 - a / 2][:op.arity]
        if name in ("log", "sqrt"):
            args = [abs(x) + 0.1 for x in args]
        syms = sympy.symbols(f"a0:{op.arity}")
        want = float(op.sym(*syms, **attrs).subs(dict(zip(syms, args))))
        assert math.isclose(op.fold(*args, **attrs), want, rel_tol=1e-12, abs_tol=1e-12), (name, args)
        tensors = [torch.tensor(x, dtype=torch.float64) for x in args]
        env = {"torch": torch, "F": F, **{f"t{i}": t for i, t in enumerate(tensors)}}
        got = eval(op.torch_expr([f"t{i}" for i in range(op.arity)], attrs), env)
        assert math.isclose(float(got), want, rel_tol=1e-12, abs_tol=1e-12), (name, args)
