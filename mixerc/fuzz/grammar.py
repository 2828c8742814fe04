"""Random specs from the DSL's grammar, written out as spec source a user can paste.

A `Case` is a complete spec file plus the sizes and shapes to check it at. `build(draw)` makes one
from a stream of choices (`Draw`): which structures (semiseparable with no, scalar or diagonal
decay; quasiseparable with or without decay, scale and diagonal; Toeplitz causal or not, from a
kernel parameter or S4D's kernel), what their operands are made of (sequence inputs, parameters,
constants, values already computed, through random chains of every elementwise op), how the
outputs combine (one matrix applied twice, sums and products of structures, epilogues).
The first option of every choice is the simplest one: a shrinker that prefers early options
(hypothesis does) turns a failure into a small spec.

Values stay bounded on purpose (``exp`` only of bounded values, divisors kept away from zero,
decays negative): the fuzzer looks for wrong code, not for overflow.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

BL = ("b", "l")
UNARY = ("neg", "sigmoid", "softplus", "silu", "exp", "log", "clamp", "ratio", "abs", "tanh", "relu", "square",
         "sqrt", "logsigmoid", "sequence")
BINARY = ("add", "sub", "mul", "div", "rconst", "maximum", "minimum")


class Draw(ABC):
    """The choices a spec is built from (implemented over hypothesis or `random.Random`). The main
    choices have a ``name`` (``kind``, ``decay``, ``decay_source``, ``value_dims``, ``twice``,
    ``epilogue``), which `PinnedDraw` can fix."""

    @abstractmethod
    def choice(self, options, name: str | None = None):
        """One of ``options``; the first is the simplest (where a shrinker goes)."""

    @abstractmethod
    def int(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]``; ``lo`` is the simplest."""

    def flag(self) -> bool:
        return self.choice((False, True))


class RandomDraw(Draw):
    """Choices from `random.Random(seed)`."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def choice(self, options, name=None):
        return self.rng.choice(list(options))

    def int(self, lo, hi):
        return self.rng.randint(lo, hi)


class PinnedDraw(Draw):
    """Another `Draw` with some named choices fixed (``pins={"decay": "scalar"}``): a fixed subset
    that is sure to cover what matters (the CI's triton cases)."""

    def __init__(self, base: Draw, pins: dict):
        self.base, self.pins = base, pins

    def choice(self, options, name=None):
        if name in self.pins and self.pins[name] in tuple(options):
            return self.pins[name]
        return self.base.choice(options, name)

    def int(self, lo, hi):
        return self.base.int(lo, hi)


@dataclass(frozen=True)
class Case:
    """One random spec and where to check it."""

    source: str  # a complete spec file
    dims: dict
    b: int
    l: int
    chunk: int
    seq_idx: bool
    seed: int  # of the random inputs
    triton: bool  # also compare the triton lowering (interpreter on CPU)
    varlen: tuple = ()  # sequence lengths: also run them packed (cu_seqlens) against one by one
    axes: dict = field(default_factory=dict)  # a 2-D spec's other sequence axis: {"v": size}

    def describe(self) -> str:
        dims = ", ".join(f"{k}={v}" for k, v in sorted(self.dims.items()))
        return (f"{self.source}\n# check: dims=dict({dims}), b={self.b}, l={self.l}, chunk_size={self.chunk}, "
                f"seq_idx={self.seq_idx}, seed={self.seed}" + (f", varlen={list(self.varlen)}" if self.varlen else "")
                + (f", axes={self.axes}" if self.axes else ""))

    def __repr__(self) -> str:
        return "Case(\n" + self.describe() + "\n)"


@dataclass
class _Val:
    expr: str  # a name or a short expression
    dims: tuple
    mag: float  # a rough bound of |value| (inputs are standard normal: ~4)


@dataclass
class _Spec:
    d: Draw
    triton: bool
    sizes: dict = field(default_factory=dict)
    args: dict = field(default_factory=dict)  # name -> annotation
    lines: list = field(default_factory=list)
    pool: list = field(default_factory=list)  # named values a later leaf may reuse
    count: dict = field(default_factory=dict)
    lead: tuple = BL  # b and the sequence axes: ("b", "v", "l") in a 2-D spec

    def fresh(self, stem: str) -> str:
        self.count[stem] = self.count.get(stem, 0) + 1
        return f"{stem}{self.count[stem]}"

    def let(self, v: _Val, stem: str) -> _Val:
        if v.expr.isidentifier():
            return v
        name = self.fresh(stem)
        self.lines.append(f"{name} = {v.expr}")
        out = _Val(name, v.dims, v.mag)
        self.pool.append(out)
        return out

    # -- leaves ---------------------------------------------------------------------------------
    def seq(self, dims: tuple, stem: str = "x") -> _Val:
        name = self.fresh(stem)
        self.args[name] = f'mx.Seq("{" ".join(dims)}")'
        return _Val(name, dims, 4.0)

    def param(self, dims: tuple, stem: str = "w", positive: bool = False) -> _Val:
        name = self.fresh(stem)
        init = self.d.choice(("1.0", "0.5", "mx.init.uniform(0.5, 1.5)", "mx.init.normal(0.5)",
                              "mx.init.log_uniform(0.1, 1.0)") if positive else
                             ("0.5", "mx.init.normal(0.5)", "mx.init.uniform(-1.0, 1.0)", "-0.25"))
        self.args[name] = f'mx.Param("{" ".join(dims)}", init={init})'
        return _Val(name, dims, 1.5)

    def leaf(self, target: tuple, source: str) -> _Val:
        """A leaf whose dims lie inside ``target``: a new input (``seqs``; target has b, l), a new
        parameter over some of target's other dims (``params``), a constant, or a value computed
        before (reuse)."""
        kinds = {"seqs": ("seq", "reuse", "const", "time"), "params": ("param", "reuse", "const"),
                 "both": ("seq", "param", "reuse", "const", "time"), "const": ("const",)}[source]
        kind = self.d.choice(kinds, "leaf")
        if kind == "time" and set(self.lead) <= set(target):  # gaps of timestamps (0 to 1000 s apart): O(1)
            name = self.fresh("ts")
            self.args[name] = f'mx.Seq("{" ".join(self.lead)}", kind="time")'
            return _Val(f"1e-3 * mx.diff({name})", self.lead, 1.0)
        kind = "seq" if kind == "time" else kind
        if kind == "reuse":
            fits = [v for v in self.pool if set(v.dims) <= set(target) and v.mag <= 20]
            if not fits:
                kind = kinds[0]
            else:
                return self.d.choice(fits)
        if kind == "seq" and set(self.lead) <= set(target):
            return self.seq(target, "u")
        if kind in ("seq", "param"):
            rest = [x for x in target if x not in self.lead]
            keep = tuple(x for x in rest if self.d.flag()) if rest else ()
            return self.param(keep)
        c = self.d.choice(("0.5", "2.0", "-1.5", "0.25"))
        return _Val(c, (), abs(float(c)))

    # -- elementwise chains ---------------------------------------------------------------------
    def chain(self, v: _Val, target: tuple, source: str, depth: int) -> _Val:
        """``v`` through ``depth`` random elementwise steps whose other operands lie in ``target``."""
        for _ in range(depth):
            if self.d.flag():
                v = self.unary(v)
            else:
                v = self.binary(v, self.leaf(target, source))
        return v

    def unary(self, v: _Val) -> _Val:
        op = self.d.choice(UNARY, "unary")
        e = v.expr
        if op == "sequence":  # a sequence op along l (of a value that has l; else tanh)
            if "l" not in v.dims:
                return _Val(f"mx.tanh({e})", v.dims, 1.0)
            seq = self.d.choice(("diff", "shift", "flip"), "sequence")
            axis = "" if self.lead == BL or self.d.flag() else ', axis="v"'  # a grid: along either axis
            if seq == "diff":
                return _Val(f"mx.diff({e}{axis})", v.dims, 2 * v.mag)
            if seq == "shift":
                return _Val(f"mx.shift({e}, {self.d.choice((1, 2, -1))}{axis})", v.dims, v.mag)
            return _Val(f"mx.flip({e}{axis})", v.dims, v.mag)
        if op == "neg":
            return _Val(f"-{_wrap(e)}", v.dims, v.mag)
        if op == "sigmoid":
            return _Val(f"mx.sigmoid({e})", v.dims, 1.0)
        if op == "softplus":
            return _Val(f"mx.softplus({e})", v.dims, v.mag + 1.0)
        if op == "silu":
            return _Val(f"mx.silu({e})", v.dims, v.mag + 0.3)
        if op == "exp":
            if v.mag > 3.0:
                e = f"mx.clamp({e}, max=2.0)"
            return _Val(f"mx.exp({e})", v.dims, 8.0 if v.mag > 3.0 else 2.72 ** v.mag)
        if op == "log":  # of something positive, away from zero
            return _Val(f"mx.log(mx.softplus({e}) + 0.5)", v.dims, v.mag + 1.0)
        if op == "clamp":
            lo, hi = self.d.choice(((-1.0, 1.0), (None, 0.5), (-0.5, None)))
            kw = ", ".join(f"{k}={x}" for k, x in (("min", lo), ("max", hi)) if x is not None)
            return _Val(f"mx.clamp({e}, {kw})", v.dims, min(v.mag, 1.0) if lo and hi else v.mag)
        if op == "abs":
            return _Val(f"abs({e})" if self.d.flag() else f"mx.abs({e})", v.dims, v.mag)
        if op == "tanh":
            return _Val(f"mx.tanh({e})", v.dims, 1.0)
        if op == "relu":
            return _Val(f"mx.relu({e})", v.dims, v.mag)
        if op == "square":
            return _Val(f"mx.square({e})", v.dims, v.mag * v.mag) if v.mag <= 5 else _Val(f"mx.tanh({e})", v.dims, 1.0)
        if op == "sqrt":  # of something positive, away from zero
            return _Val(f"mx.sqrt(mx.softplus({e}) + 0.1)", v.dims, (v.mag + 1.1) ** 0.5)
        if op == "logsigmoid":
            return _Val(f"mx.logsigmoid({e})", v.dims, v.mag + 1.0)
        # a ratio: x / (1 + sigmoid(x)), bounded by |x|
        return _Val(f"{_wrap(e)} / (1.0 + mx.sigmoid({e}))", v.dims, v.mag)

    def binary(self, a: _Val, b: _Val) -> _Val:
        op = self.d.choice(BINARY)
        dims = _union(a.dims, b.dims)
        if op == "add":
            return _Val(f"{_wrap(a.expr)} + {_wrap(b.expr)}", dims, a.mag + b.mag)
        if op == "sub":
            return _Val(f"{_wrap(a.expr)} - {_wrap(b.expr)}", dims, a.mag + b.mag)
        if op == "mul":
            return _Val(f"{_wrap(a.expr)} * {_wrap(b.expr)}", dims, a.mag * b.mag)
        if op in ("maximum", "minimum"):
            return _Val(f"mx.{op}({a.expr}, {b.expr})", dims, max(a.mag, b.mag))
        if op == "div":  # a divisor in [0.5, 1.5]
            return _Val(f"{_wrap(a.expr)} / (mx.sigmoid({b.expr}) + 0.5)", dims, 2 * a.mag)
        c = self.d.choice(("1.0", "0.5", "3.0"))
        form = self.d.choice(("{c} - {e}", "{c} * {e}", "{e} / {c}", "{c} / (1.0 + mx.exp(-{e}))"))
        mag = a.mag + 3.0 if "exp" not in form else 3.0
        if "exp" in form and a.mag > 3.0:
            return _Val(f"{c} * mx.sigmoid({a.expr})", a.dims, 3.0)
        return _Val(form.format(c=c, e=_wrap(a.expr)), a.dims, mag)

    def operand(self, dims: tuple, source: str, stem: str, anchor: str = "any") -> _Val:
        """A value over exactly ``dims`` built from ``source`` through a chain of 0-2 steps."""
        if anchor == "seq" or (anchor == "any" and set(self.lead) <= set(dims) and source != "params"):
            base = self.seq(dims, stem)
        elif dims or source != "const":
            base = self.param(tuple(x for x in dims if x not in self.lead), stem)
        else:
            base = _Val(self.d.choice(("0.5", "-0.3")), (), 0.5)
        v = self.chain(base, dims, source, self.d.int(0, 2))
        return self.let(v, stem) if v.expr != base.expr else v

    def log_decay(self, dims: tuple, source: str) -> _Val:
        """A negative log-decay over ``dims`` (its anchor leaf has all of them)."""
        if not dims:
            form = self.d.choice(("const", "param"))
            if form == "const":
                return _Val(self.d.choice(("-0.3", "-1.0")), (), 1.0)
            name = self.fresh("log_gamma")
            self.args[name] = 'mx.Param("", init=mx.init.uniform(-0.8, -0.05))'
            return _Val(name, (), 0.8)
        form = self.d.choice(("softplus", "param", "exp", "logsigmoid", "mamba"))
        has_bl = set(self.lead) <= set(dims)
        if form == "param" and not has_bl:
            name = self.fresh("log_gamma")
            self.args[name] = f'mx.Param("{" ".join(dims)}", init=mx.init.uniform(-0.8, -0.05))'
            return _Val(name, dims, 0.8)
        if form == "mamba" and has_bl:  # -exp(A_log) * softplus(dt + dt_bias), as Mamba and Mamba-2
            a_dims = tuple(x for x in dims if x not in self.lead)
            a = self.param(a_dims, "A_log")
            dt = self.operand(dims, source, "dt")
            delta = self.let(_Val(f"mx.softplus({dt.expr})", dt.dims, 5.0), "delta")
            return self.let(_Val(f"-mx.exp({a.expr}) * {delta.expr}", _union(a.dims, dt.dims), 25.0), "la")
        e = self.operand(dims, source, "dt")
        if form == "exp":
            inner = e.expr if e.mag <= 3.0 else f"mx.clamp({e.expr}, max=1.5)"
            return self.let(_Val(f"-mx.exp({inner})", e.dims, 5.0), "la")
        if form == "logsigmoid":
            return self.let(_Val(f"mx.log(mx.sigmoid({e.expr}))", e.dims, e.mag + 1.0), "la")
        return self.let(_Val(f"-mx.softplus({e.expr})", e.dims, e.mag + 1.0), "la")


def _union(a: tuple, b: tuple) -> tuple:
    return tuple(dict.fromkeys(a + b))


def _wrap(e: str) -> str:
    return e if e.replace(".", "").replace("_", "").isalnum() or e.startswith("mx.") and _balanced(e) else f"({e})"


def _balanced(e: str) -> bool:
    """``mx.f(...)`` whose outer parentheses close at its end (no operator outside them)."""
    depth = 0
    for i, ch in enumerate(e):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and ch == ")" and i != len(e) - 1:
            return False
    return True


# -- structures ----------------------------------------------------------------------------------


def _sources(s: _Spec) -> str:
    return s.d.choice(("seqs", "params", "both", "const"), "decay_source")


def _semiseparable(s: _Spec, x: _Val, kind: str) -> str:
    """``mx.semiseparable(...)`` for the value ``x``; returns the matrix name."""
    d = s.d
    headed = len(x.dims) > 2 and x.dims[2] == "h"
    if kind == "qs":
        decay = d.choice(("none", "scalar") if s.triton else ("none", "scalar", "diagonal"), "decay")
    else:
        decay = d.choice(("none", "scalar", "diagonal"), "decay")
    bc_options = [("b", "l", "n")]
    if headed:
        bc_options = [("b", "l", "h", "n"), ("b", "l", "g", "n")] + ([("b", "l", "n")] if decay != "none" else [])
    bc = d.choice(bc_options)
    if decay == "scalar":
        opts = ([("b", "l", "h"), ("h",)] + ([()] if bc != ("b", "l", "n") else [])) if headed \
            else [("b", "l"), ()]
    else:
        opts = ([("b", "l", "h", "n"), ("h", "n")] + ([("b", "l", "n"), ("n",)] if bc != ("b", "l", "n") else [])
                if headed else [("b", "l", "n"), ("n",)])
    src = _sources(s)
    roles = {}
    for role in (("C", "B", "C_bwd", "B_bwd") if kind == "qs" else ("C", "B")):
        roles[role] = s.operand(bc, "seqs" if d.flag() else "both", role, anchor="seq").expr
    if decay != "none":
        dd = d.choice(opts)
        la = s.log_decay(dd, src)
        roles["log_decay"] = la.expr
        if kind == "qs":  # both directions need the same dims
            la_bwd = s.log_decay(dd, src)
            roles["log_decay_bwd"] = la_bwd.expr if set(la_bwd.dims) == set(la.dims) else f"0.5 * {_wrap(la.expr)}"
    if kind == "qs":
        if d.flag():
            sd = ("b", "l", "h") if headed and d.flag() else BL
            roles["scale"] = s.let(_Val(f"mx.softplus({s.operand(sd, 'both', 'dt', anchor='seq').expr})",
                                        sd, 5.0), "scale").expr
            roles["scale_bwd"] = s.let(_Val(f"mx.softplus({s.operand(sd, 'both', 'dt', anchor='seq').expr})",
                                            sd, 5.0), "scale").expr
        if d.flag():
            ddims = d.choice((x.dims, tuple(v for v in x.dims if v not in BL)))
            roles["diag"] = s.operand(ddims, "both", "diag").expr
    name = s.fresh("M")
    fn = "quasiseparable" if kind == "qs" else "semiseparable"
    s.lines.append(_call(f"{name} = mx.{fn}(", roles))
    return name


def _toeplitz(s: _Spec, x: _Val) -> str:
    d = s.d
    chan = x.dims[2] if len(x.dims) > 2 and d.flag() else None  # a kernel per channel, or shared
    kdims = (chan, "k") if chan else ("k",)
    causal = not d.flag()

    def kernel(stem):
        if chan and d.flag():
            args = [s.param((chan,), "log_dt")]
            args += [s.param((chan, "n2"), f"{stem}_{r}") for r in ("A", "Ai", "Cr", "Ci")]
            disc = d.choice(('"zoh"', '"bilinear"'))
            return s.let(_Val(f"mx.s4d_kernel({', '.join(a.expr for a in args)}, disc={disc})", kdims, 10.0), stem)
        return s.operand(kdims, "params", stem)

    roles = {"kernel": kernel("K").expr}
    if not causal:
        roles["kernel_rev"] = kernel("K_rev").expr
        roles["causal"] = "False"
    name = s.fresh("M")
    s.lines.append(_call(f"{name} = mx.toeplitz(", roles))
    return name


def _grid2d(s: _Spec, x: _Val) -> str:
    """``mx.grid2d(...)`` for the value ``x`` (b v l h [p]): B/C per head or group, each transition
    absent, per head, per state or constant over the grid, scales absent or per cell."""
    d = s.d
    lead = s.lead
    bc = lead + (d.choice(("h", "g")), "n")
    roles = {r: s.operand(bc, "seqs" if d.flag() else "both", r, anchor="seq").expr for r in ("C1", "B1", "C2", "B2")}
    src = _sources(s)
    for r in ("log_a1", "a2", "a3", "log_a4"):
        kind = d.choice(("absent", "head", "state", "constant"), "transition")
        if kind == "absent":
            continue
        dims = {"head": lead + ("h",), "state": lead + ("h", "n"), "constant": d.choice((("h",), ("h", "n")))}[kind]
        if r.startswith("log"):
            roles[r] = s.log_decay(dims, "params" if kind == "constant" else src).expr
        else:  # a coupling of either sign, |a| < 0.5
            v = s.operand(dims, "params" if kind == "constant" else "both", "cpl")
            roles[r] = s.let(_Val(f"0.5 * mx.tanh({v.expr})", dims, 0.5), "cpl").expr
    for r in ("scale1", "scale2"):
        if d.flag():
            sd = d.choice((lead + ("h",), lead))
            roles[r] = s.let(_Val(f"mx.softplus({s.operand(sd, 'both', 'dt', anchor='seq').expr})", sd, 5.0),
                             "scale").expr
    name = s.fresh("M")
    s.lines.append(_call(f"{name} = mx.grid2d(", roles))
    return name


def _call(head: str, kwargs: dict) -> str:
    """``head k=v, ...)``, one argument per line when it would not fit in 100 columns."""
    args = [f"{k}={v}" for k, v in kwargs.items()]
    one = head + ", ".join(args) + ")"
    if len(one) <= 100:
        return one
    pad = "\n" + " " * (len(head) + 4)
    return head + ("," + pad).join(args) + ")"


def _value_dims(s: _Spec, kind: str) -> tuple:
    options = [("b", "l", "h", "p"), ("b", "l", "h"), ("b", "l", "p"), ("b", "l")]
    return s.d.choice(options, "value_dims")


def _apply(s: _Spec, kind: str, dims: tuple) -> _Val:
    """One structure applied to a value of ``dims`` (sometimes twice): its output."""
    d = s.d
    x = s.seq(dims, "x")
    if kind not in ("toeplitz", "grid") and len(dims) > 2 and dims[2] == "h" and d.flag():  # fusable x * Δ
        dt = s.operand(BL + ("h",), "both", "dt", anchor="seq")
        delta = s.let(_Val(f"mx.softplus({dt.expr})", BL + ("h",), 5.0), "delta")
        value = _Val(f"{x.expr} * {delta.expr}", dims, 20.0)
    elif d.flag():
        value = s.chain(x, dims, "both", 1)
    else:
        value = x
    m = _toeplitz(s, x) if kind == "toeplitz" else _grid2d(s, x) if kind == "grid" else _semiseparable(s, x, kind)
    y = s.let(_Val(f"{m} @ {_wrap(value.expr)}", dims, 50.0), "y")
    twice = d.choice(("once", "sum", "nested"), "twice")
    if twice == "sum":
        z = s.seq(dims, "z")
        y = s.let(_Val(f"{y.expr} + {m} @ {z.expr}", dims, 100.0), "y")
    elif twice == "nested":
        y = s.let(_Val(f"{m} @ ({y.expr} / 10.0)", dims, 100.0), "y")
    return y


def build(d: Draw, triton: bool = False) -> Case:
    """A random spec (and its sizes, shapes and seeds) from the choices ``d`` makes."""
    s = _Spec(d, triton)
    grid = d.choice((False, False, True), "grid")  # a 2-D spec: seq_axes=("v", "l"); grid2d has kernels too
    kinds = ("grid",) if grid else ("ss", "qs") if triton else ("ss", "qs", "toeplitz")
    if grid:
        s.lead = ("b", "v", "l")
        dims = d.choice((s.lead + ("h", "p"), s.lead + ("h",)), "value_dims")
    else:
        dims = _value_dims(s, kinds[0])
    first = d.choice(kinds, "kind")
    y = _apply(s, first, dims)
    if d.choice((False, False, True)):  # a second structure on the same dims: sum or product
        other = d.choice(kinds)
        y2 = _apply(s, other, dims)
        op = d.choice(("+", "*", "-"))
        y = s.let(_Val(f"{y.expr} {op} {y2.expr}", dims, 100.0), "y")
    epi = d.choice(("none", "skip", "gate", "chain"), "epilogue")
    if epi == "skip":  # + D * x
        D = s.param(tuple(x for x in dims if x not in s.lead and d.flag()), "D")
        x0 = next(v for v in s.args if v.startswith("x"))
        y = _Val(f"{y.expr} + {D.expr} * {x0}", dims, 0.0)
    elif epi == "gate":
        z = s.seq(dims, "gate")
        y = _Val(f"{y.expr} * mx.silu({z.expr})", dims, 0.0)
    elif epi == "chain":
        y = s.chain(y, dims, "both", d.int(1, 2))
    s.lines.append(f"return {y.expr}")

    sizes = {"h": d.int(1, 3), "p": d.int(1, 3), "n": d.int(1, 3)}
    sizes["g"] = d.choice(tuple(g for g in (1, 2, 3) if sizes["h"] % g == 0))
    used = {x for a in s.args.values() for x in a.split('"')[1].split()} | set(dims)
    if any("mx.toeplitz(" in line for line in s.lines):
        used.add("k")  # also s4d_kernel's length dim
    if "k" in used:
        sizes["k"] = d.choice((3, 1, 5, 9))
    if "n2" in used:
        sizes["n2"] = d.int(1, 2)
    sizes = {k: v for k, v in sizes.items() if k in used}
    length = d.int(1, 40 if triton else 13)
    chunk = d.choice((16, 32)) if triton else d.choice((4, 1, 2, 3, 8, 16))
    seq_idx = d.flag()  # a grid: segments along l, shared by every variate
    seed = d.int(0, 3)
    varlen = ()
    if not grid and d.choice((False, True), "varlen"):  # 1 to 3 sequences, at least one position each
        cuts = sorted({d.int(1, length - 1) for _ in range(d.int(0, 2))} if length > 1 else set())
        varlen = tuple(b - a for a, b in zip([0] + cuts, cuts + [length]))
    sig = ",\n           ".join(f"{k}: {v}" for k, v in s.args.items())
    dims_text = ", ".join(f"{k}={v}" for k, v in sorted(sizes.items()))
    axes = ', seq_axes=("v", "l")' if grid else ""
    source = (f"import mixerc as mx\n\n\n@mx.spec(example_dims=dict({dims_text}){axes})\n"
              f"def fuzzed({sig}):\n" + "\n".join("    " + line for line in s.lines) + "\n")
    return Case(source, sizes, d.int(1, 2), length, chunk, seq_idx, seed, triton, varlen,
                {"v": d.int(1, 4)} if grid else {})
