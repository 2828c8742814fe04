"""The spec DSL and its tracer.

A spec is a plain Python function whose parameters are annotated with `Seq` (per-position inputs)
and `Param` (learned parameters). `spec` wraps it; tracing calls it once with `Value` proxies that
record every operation into an `ir.Graph`. No torch runs while tracing.
"""

from __future__ import annotations

import inspect
import linecache
import numbers
import os
import sys
import traceback
from typing import Callable

from .init import as_rule
from .located import is_own_code
from .ir import STRUCTURES, Graph, Loc, MixercError, Node, SpecError
from .ir.dims import BATCH, GROUP_OF, parse_dims
from .ir.ops import ELEMENTWISE
from .ir.seqops import AXIS


SEQ_KINDS = ("value", "time")


class Seq:
    """A per-position input: ``mx.Seq("b l h p")``. Dims must start with ``b l``.

    ``kind="time"`` declares timestamps (integer, or float64, e.g. Unix seconds): they are never cast
    to the compute dtype, and a spec reads them only through ``mx.diff(t)``, the gap to the previous
    position, taken exactly in their own dtype before the cast (float32 holds 1.7e9 only to 128 s)."""

    def __init__(self, dims: str, kind: str = "value"):
        if kind not in SEQ_KINDS:
            raise SpecError(f"mx.Seq({dims!r}, kind={kind!r}): kind must be one of {', '.join(SEQ_KINDS)}")
        self.dims_text = dims
        self.kind = kind

    def __repr__(self):
        kind = "" if self.kind == "value" else f", kind={self.kind!r}"
        return f"mx.Seq({self.dims_text!r}{kind})"


class Param:
    """A learned parameter: ``mx.Param("h", init=mx.init.log_uniform(1, 16))``; a number as
    ``init`` means a constant."""

    def __init__(self, dims: str, init=0.0):
        self.dims_text = dims
        self.init = as_rule(init)

    def __repr__(self):
        return f"mx.Param({self.dims_text!r}, init={self.init!r})"


# -- tracing ---------------------------------------------------------------------------------

_ACTIVE: list["_Trace"] = []


class _Trace:
    def __init__(self, graph: Graph, file: str):
        self.graph, self.file = graph, file

    def loc(self) -> Loc | None:
        f = sys._getframe(1)
        while f is not None:
            if os.path.abspath(f.f_code.co_filename) == self.file:
                return Loc(self.file, f.f_lineno, linecache.getline(self.file, f.f_lineno).strip())
            f = f.f_back
        return None


def _trace() -> _Trace:
    if not _ACTIVE:
        raise SpecError("mixerc ops build a spec and only work inside an @mx.spec function while it "
                        "is traced (mx.compile does that); to run a mixer, compile it first")
    return _ACTIVE[-1]


def _emit(op: str, args: tuple, attrs: dict | None = None, name: str | None = None) -> "Value":
    t = _trace()
    node = Node(name or t.graph.fresh(), op, tuple(a.name for a in args), attrs or {}, loc=t.loc())
    t.graph.add(node)
    return Value(node.name)


def _lift(x, op: str) -> "Value":
    _trace()  # ops only build specs
    if isinstance(x, Value):
        return x
    if isinstance(x, Matrix):
        raise SpecError(f"{op}: a structured matrix can only be applied with '@' (M @ x), not used "
                        "in elementwise arithmetic", _where())
    if _is_number(x):
        return _emit("const", (), {"value": float(x)})
    raise SpecError(f"{op}: cannot use {type(x).__name__} {x!r} in a spec; use spec inputs, "
                    "parameters, numbers and mx ops", _where())


def _is_number(x) -> bool:
    """A Python or numpy real number (not a bool)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and type(x).__name__ != "bool_"


def _where() -> str | None:
    loc = _trace().loc() if _ACTIVE else None
    return str(loc) if loc else None


# the functions of the op table (ir/ops.py) that have an mx.<name>
_OP_FUNCS = tuple(op.dsl for op in ELEMENTWISE.values() if op.dsl)
SPEC_OPS = ("+ - * /, unary -, abs(), " + ", ".join(f"mx.{f}" for f in _OP_FUNCS)
            + ", mx.clamp(x, min=, max=), mx.groups_to_heads, mx.diff / mx.shift / mx.flip along the "
            "sequence, and structured matrices applied with M @ x")
_MX_FUNCS = _OP_FUNCS + ("clamp", "add", "sub", "mul", "div", "neg", "diff", "flip")
_REDUCTIONS = ("sum", "mean", "max", "min", "amax", "amin", "prod", "cumsum", "cumprod", "std", "var",
               "norm", "logsumexp", "argmax", "argmin", "any", "all")


def _not_supported(construct: str, why: str, advice: str) -> SpecError:
    """The SpecError for a Python construct the tracer cannot record: what was written, why it is
    not a spec op, and what to write instead; located at the spec line."""
    return SpecError(f"{construct}: {why}; {advice}", _where())


def _use_instead(name: str) -> str:
    if name in _MX_FUNCS:
        return f"use mx.{name}(...) (the spec ops are {SPEC_OPS})"
    return f"the spec ops are {SPEC_OPS}"


_CONVERT = ("a traced value has no number until the mixer runs, so conversions to Python numbers are "
            "not spec ops (math.* functions convert their argument)")
_NO_AXES = ("traced values have named dims, not Python axes: len, iteration, unpacking, indexing and "
            "slicing are not spec ops")
_NO_AXES_ADVICE = ("combine values by broadcasting on dim names (e.g. x * dt for 'b l h p' and 'b l h'), "
                   "or declare what you need as a separate mx.Seq / mx.Param")


class _Traced:
    """What traced values and matrices refuse: every Python construct the tracer cannot record
    raises a `SpecError` that names it, says what to write instead and points at the spec line."""

    __slots__ = ()

    def __bool__(self):
        raise _not_supported("if / while / and / or / not / bool() on a traced value",
                             "a traced value has no truth value: specs cannot branch on data (Python "
                             "control flow is not traced)", "use mx.clamp / arithmetic instead of if/else")

    def _compare(self, *a):
        raise _not_supported("a comparison (<, <=, >, >=, ==, !=) of a traced value",
                             "comparisons are not spec ops (a spec cannot mask or branch on data)",
                             "use mx.maximum / mx.minimum / mx.clamp(x, min=..., max=...) to bound a value, "
                             "or mx.sigmoid for a smooth gate")

    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = _compare
    __hash__ = object.__hash__  # __eq__ is refused, identity hashing stays

    def _convert(self, *a):
        raise _not_supported("float() / int() / round() / math.* of a traced value", _CONVERT,
                             "use mx.exp, mx.log, mx.softplus, ... (traced) instead of math.*, and "
                             "Python numbers only for constants")

    __float__ = __int__ = __index__ = __complex__ = __round__ = __trunc__ = __floor__ = __ceil__ = _convert

    def __len__(self):
        raise _not_supported("len() of a traced value", _NO_AXES, _NO_AXES_ADVICE)

    def __iter__(self):
        raise _not_supported("iterating over a traced value (for, list(), unpacking, *x)", _NO_AXES,
                             _NO_AXES_ADVICE)

    __reversed__ = __iter__

    def __getitem__(self, key):
        raise _not_supported(f"indexing a traced value ([{key!r}])", _NO_AXES, _NO_AXES_ADVICE)

    def __setitem__(self, key, value):
        raise _not_supported(f"assigning into a traced value ([{key!r}] = ...)",
                             "traced values are immutable and have no Python axes",
                             "compute a new value with spec ops")

    def __contains__(self, item):
        raise _not_supported("'in' on a traced value", _NO_AXES, _NO_AXES_ADVICE)

    def __abs__(self):
        return OPS["abs"](self)

    def __pow__(self, o):
        raise _not_supported("'**' on a traced value", "powers are not spec ops",
                             "write x * x (or mx.square(x)), mx.sqrt(x), or mx.exp(k * mx.log(x)) for a positive x")

    __rpow__ = __pow__

    def _integer(self, *a):
        raise _not_supported("'//', '%' or divmod() on a traced value",
                             "floor division and modulo are not spec ops", _use_instead(""))

    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __divmod__ = __rdivmod__ = _integer

    def _bitwise(self, *a):
        raise _not_supported("a bitwise operator (~, &, |, ^, <<, >>) on a traced value",
                             "bitwise and logical operators are not spec ops", _use_instead(""))

    __invert__ = __and__ = __rand__ = __or__ = __ror__ = __xor__ = __rxor__ = _bitwise
    __lshift__ = __rlshift__ = __rshift__ = __rrshift__ = _bitwise

    def __call__(self, *a, **k):
        raise _not_supported("calling a traced value", "traced values are not functions",
                             _use_instead(""))

    def __getattr__(self, attr):
        if attr.startswith("_"):  # protocols probed by Python, copy, torch, numpy: absent
            raise AttributeError(attr)
        if attr in _REDUCTIONS:
            why = (f"traced values have no methods, and reductions such as {attr} are not spec ops (a "
                   "mixer combines positions only through its structured matrix)")
            advice = ("reduce over positions with a structured matrix (M @ x), or declare the reduced "
                      "value as an mx.Seq input")
        elif attr in ("shape", "size", "dims", "ndim", "dtype", "device", "T", "mT"):
            why = "traced values carry named dims, not shapes, dtypes or devices"
            advice = ("dims come from mx.Seq / mx.Param and broadcast by name; sizes from dims= at "
                      "compile time")
        else:
            why = "traced values have no methods or attributes (they only record spec ops)"
            advice = _use_instead(attr)
        raise _not_supported(f"'.{attr}' on a traced value", why, advice)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        import torch

        name = getattr(func, "__name__", repr(func))
        flat = list(args) + list((kwargs or {}).values())
        if any(isinstance(a, torch.Tensor) for a in flat):
            raise _not_supported(f"torch: {name} of a torch tensor and a traced value",
                                 "cannot use Tensor values in a spec (no torch runs while tracing)",
                                 "use spec inputs, parameters, numbers and mx ops; a fixed tensor "
                                 "belongs in an mx.Param (copy it in after compiling)")
        raise _not_supported(f"torch.{name}(...) on a traced value",
                             "torch functions are not traced (no torch runs while a spec is traced)",
                             _use_instead(name))

    def __array_ufunc__(self, ufunc, method, *args, **kwargs):
        name = getattr(ufunc, "__name__", "ufunc")
        arith = {"add": add, "subtract": sub, "multiply": mul, "true_divide": div, "divide": div,
                 "negative": neg}
        if method == "__call__" and name in arith and not kwargs and all(
                isinstance(a, _Traced) or _is_number(a) for a in args):  # a numpy number and a value
            return arith[name](*args)
        raise _not_supported(f"numpy.{name}(...) on a traced value",
                             "numpy functions are not traced", _use_instead(name))

    def __array_function__(self, func, types, args, kwargs):
        name = getattr(func, "__name__", "function")
        raise _not_supported(f"numpy.{name}(...) on a traced value",
                             "numpy functions are not traced", _use_instead(name))


class Value(_Traced):
    """A traced tensor: supports ``+ - * /``, unary ``-`` and ``@`` on the right of a matrix."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __add__(self, o): return add(self, o)
    def __radd__(self, o): return add(o, self)
    def __sub__(self, o): return sub(self, o)
    def __rsub__(self, o): return sub(o, self)
    def __mul__(self, o): return mul(self, o)
    def __rmul__(self, o): return mul(o, self)
    def __truediv__(self, o): return div(self, o)
    def __rtruediv__(self, o): return div(o, self)
    def __neg__(self): return neg(self)
    def __pos__(self): return self

    def __matmul__(self, o):
        if isinstance(o, Matrix):
            raise _not_supported("'x @ M' (a value on the left of a structured matrix)",
                                 "a structured matrix is applied from the left",
                                 "write M @ x")
        raise _not_supported("'@' between two traced values",
                             "matrix products of values are not spec ops; '@' applies a structured "
                             "matrix", "build one (M = mx.semiseparable(...), mx.toeplitz(...), ...) "
                             "and write M @ x; for an elementwise product use x * y")

    def __rmatmul__(self, o):
        raise _not_supported(f"'@' between {type(o).__name__} and a traced value",
                             "matrix products are not spec ops; '@' applies a structured matrix",
                             "write M @ x with M = mx.semiseparable(...) or another mx structure")

    def __repr__(self):
        return f"<mx.Value %{self.name}>"


class Matrix(_Traced):
    """A traced structured matrix; apply it with ``M @ x``."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __matmul__(self, x):
        return _emit("apply", (self, _lift(x, "@")))

    def __rmatmul__(self, x):
        raise _not_supported("'x @ M' (a value on the left of a structured matrix)",
                             "a structured matrix is applied from the left", "write M @ x")

    def __repr__(self):
        return f"<mx.Matrix %{self.name}>"

    def _bad(self, *a):
        raise SpecError("a structured matrix can only be applied with '@' (M @ x)", _where())

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _bad
    __neg__ = __pos__ = __abs__ = __pow__ = __rpow__ = _bad

    def __getattr__(self, attr):
        if attr.startswith("_"):
            raise AttributeError(attr)
        raise SpecError(f"'.{attr}' on a structured matrix: it has no methods or attributes; a "
                        "structured matrix can only be applied with '@' (M @ x)", _where())


def _elementwise(op: str):
    d = ELEMENTWISE[op]

    if d.arity == 2:
        def f(a, b):
            return _emit(op, (_lift(a, op), _lift(b, op)))
    else:
        def f(a):
            return _emit(op, (_lift(a, op),))
    f.__name__ = f.__qualname__ = op
    f.__doc__ = f"Elementwise ``{op}`` of traced values (named-dim broadcasting)."
    return f


add, sub, mul, div, neg = (_elementwise(o) for o in ("add", "sub", "mul", "div", "neg"))
# every op of the table with a DSL name is an mx.<name> function (mx.exp, mx.tanh, mx.maximum, ...)
OPS = {op.dsl: _elementwise(name) for name, op in ELEMENTWISE.items() if op.dsl}
globals().update(OPS)


def clamp(x, min: float | None = None, max: float | None = None) -> Value:
    """Elementwise clamp to ``[min, max]`` (either bound may be None)."""
    if min is None and max is None:
        raise SpecError("clamp needs min, max or both", _where())
    for bound, v in (("min", min), ("max", max)):
        if v is not None and not _is_number(v):
            raise SpecError(f"clamp: {bound}={v!r} must be a Python number (bounds are constants; "
                            "a traced bound is not a spec op)", _where())
        if v is not None and v != v:
            raise SpecError(f"clamp: {bound}=nan is not a bound; pass a number or None", _where())
    # an infinite bound bounds nothing: clamp(x, max=inf) is clamp(x) on that side
    min = None if min is not None and min == -float("inf") else min
    max = None if max is not None and max == float("inf") else max
    if min is None and max is None:
        return _lift(x, "clamp")
    return _emit("clamp", (_lift(x, "clamp"),), {"min": min, "max": max})


def groups_to_heads(x, group: str = "g") -> Value:
    """Broadcast a per-group value to heads: dim ``g`` becomes ``h`` (head i reads group
    ``i // (h // g)``, as mamba-ssm's ngroups)."""
    if not isinstance(group, str) or group not in GROUP_OF:
        raise SpecError(f"groups_to_heads: {group!r} is not a group dim; known: {sorted(GROUP_OF)}",
                        _where())
    return _emit("groups_to_heads", (_lift(x, "groups_to_heads"),), {"group": group})


def _axis(op: str, axis) -> str:
    """A sequence axis by name (checked against the spec's ``seq_axes`` when shapes are inferred)."""
    if not isinstance(axis, str) or not axis.isidentifier():
        raise SpecError(f"mx.{op}: axis={axis!r} must name a sequence axis, e.g. axis={AXIS!r}", _where())
    return axis


def diff(x, axis: str = AXIS) -> Value:
    """First difference along the sequence: ``y[t] = x[t] - x[t-1]``, 0 at the first position of
    every segment (sequence of a packed batch). Of a timestamp input (``mx.Seq(..., kind="time")``)
    the gap is taken exactly before the cast to the compute dtype."""
    return _emit("diff", (_lift(x, "diff"),), {"axis": _axis("diff", axis)})


def shift(x, k: int, axis: str = AXIS) -> Value:
    """The value ``k`` positions back along the sequence (``k < 0``: ahead), 0 where that position
    is outside the segment: ``y[t] = x[t-k]``."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise SpecError(f"mx.shift: k={k!r} must be a Python int (positions back; negative: ahead)", _where())
    value = _lift(x, "shift")
    _axis("shift", axis)
    return value if k == 0 else _emit("shift", (value,), {"axis": axis, "k": int(k)})


def flip(x, axis: str = AXIS) -> Value:
    """Every segment reversed along the sequence: ``y[t] = x[s + e - t]`` for ``t`` in ``[s, e]``.
    It reads ahead, so a spec using it has no step."""
    return _emit("flip", (_lift(x, "flip"),), {"axis": _axis("flip", axis)})


def _structure(kind: str, **roles) -> Matrix:
    sdef = STRUCTURES[kind]
    unknown = set(roles) - set(sdef.roles) - set(sdef.attrs)
    if unknown:
        raise SpecError(f"mx.{kind}: unknown argument(s) {sorted(unknown)}; it takes "
                        f"{', '.join(sdef.roles + tuple(sdef.attrs))}", _where())
    consts = {}  # Python constants (``causal=True``) become node attrs
    for a, default in sdef.attrs.items():
        v = roles.pop(a, default)
        if type(v) is not type(default):
            raise SpecError(f"mx.{kind}: {a}={v!r} must be a Python {type(default).__name__} "
                            f"constant (default {default!r}), not a traced value", _where())
        consts[a] = v
    present = [r for r in sdef.roles if roles.get(r) is not None]
    missing = [r for r in sdef.roles if r not in present and r not in sdef.optional]
    if missing:
        raise SpecError(f"mx.{kind}: missing argument(s) {missing}", _where())
    args = tuple(_lift(roles[r], f"{kind}({r}=...)") for r in present)
    node = _emit(kind, args, {"roles": tuple(present), **consts}, name=_trace().graph.fresh("M"))
    return Matrix(node.name)


def structure_constructor(sdef) -> Callable:
    """``mx.<name>(role=..., ...)`` of a structure kind: keyword arguments only, its roles (absent:
    None) and its constant attributes (with their defaults), documented by the IR node's docstring."""
    kind = sdef.name

    def make(*args, **roles) -> Matrix:
        if args:
            call = ", ".join(f"{r}=..." for r in sdef.roles if r not in sdef.optional)
            raise SpecError(f"mx.{kind} takes keyword arguments only, e.g. mx.{kind}({call})", _where())
        return _structure(kind, **roles)

    kw = inspect.Parameter.KEYWORD_ONLY
    make.__signature__ = inspect.Signature(
        [inspect.Parameter(r, kw, default=None) for r in sdef.roles]
        + [inspect.Parameter(a, kw, default=d) for a, d in sdef.attrs.items()], return_annotation=Matrix)
    make.__name__ = make.__qualname__ = kind
    make.__doc__ = inspect.getdoc(type(sdef))
    make.__module__ = "mixerc"
    return make


# one constructor per structure kind known when the DSL loads (the built-ins); a structure registered
# later (`mixerc.register_structure`) gets its own then
STRUCTURE_CONSTRUCTORS = {name: structure_constructor(sdef) for name, sdef in STRUCTURES.items()}
globals().update(STRUCTURE_CONSTRUCTORS)


def s4d_kernel(log_dt, A_re_log, A_im, C_re, C_im, *, length: str = "k", disc: str = "zoh") -> Value:
    """The S4D convolution kernel of a diagonal complex SSM kept as conjugate pairs (B = 1):
    ``K[..., t] = 2 Re sum_n Ct_n exp(t log Abar_n)``, ``t = 0 .. length-1``, with
    ``A = -exp(A_re_log) + i A_im``, ``Delta = exp(log_dt)`` and ``disc`` ``"zoh"``
    (``log Abar = Delta A``, ``Ct = C (exp(Delta A) - 1) / A``) or ``"bilinear"``
    (``log Abar = log((1 + Delta A/2) / (1 - Delta A/2))``, ``Ct = C Delta / (1 - Delta A/2)``).

    ``log_dt``: ``(h)``; ``A_re_log, A_im, C_re, C_im``: ``(h, n2)`` (the state pairs last).
    Returns a value of dims ``(h, length)``; ``length`` names a dim sized at compile time
    (``dims=dict(k=4096)``, typically the longest sequence). Feed it to ``mx.toeplitz(kernel=...)``.
    """
    from .ir.kernels import DISCRETISATIONS, check_length_name

    check_length_name(length, _where())
    if not isinstance(disc, str) or disc not in DISCRETISATIONS:
        raise SpecError(f"s4d_kernel: disc={disc!r}; choose one of {', '.join(DISCRETISATIONS)}", _where())
    args = tuple(_lift(a, f"s4d_kernel({r}=...)") for a, r in zip(
        (log_dt, A_re_log, A_im, C_re, C_im), ("log_dt", "A_re_log", "A_im", "C_re", "C_im")))
    return _emit("s4d_kernel", args, {"length": length, "disc": disc})


# -- specs -----------------------------------------------------------------------------------

def user_code_error(e: BaseException, file: str, what: str, shown: str | None = None,
                    tracing: bool = False) -> SpecError | None:
    """The `SpecError` for an exception ``e`` raised by user code while ``what`` ran (importing a spec
    file; ``tracing`` a spec body): its type and message, located at the deepest line of ``file`` in
    the traceback (shown as ``shown``, default its base name). None when ``e`` is mixerc's own: a
    typed error, or one raised in mixerc's code (a bug, which keeps its traceback)."""
    if isinstance(e, MixercError):
        return None
    frames = list(traceback.walk_tb(e.__traceback__))
    if frames and is_own_code(frames[-1][0].f_code.co_filename):
        return None
    file = os.path.abspath(file)
    lines = [ln for f, ln in frames if os.path.abspath(f.f_code.co_filename) == file]
    where = f"{shown or os.path.basename(file)}:{lines[-1]}" if lines else None
    msg = " ".join(str(e).split()) or "(no message)"
    hint = ""
    if (tracing and isinstance(e, (AttributeError, TypeError))) or "module 'mixerc' has no" in msg:
        hint = f"; the spec ops are {SPEC_OPS}"
    elif isinstance(e, NameError):
        hint = "; define or import it in the spec file"
    return SpecError(f"{what}: {type(e).__name__}: {msg}{hint}", where)



def _def_line(fn: Callable) -> int:
    """The line of ``def`` (``co_firstlineno`` is the first decorator's)."""
    try:
        lines, start = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        return fn.__code__.co_firstlineno
    return start + next((i for i, t in enumerate(lines) if t.lstrip().startswith("def ")), 0)


class Spec:
    """A traced-on-demand mixer definition. ``inputs`` / ``params`` map names to `Seq` / `Param`."""

    def __init__(self, fn: Callable, name: str | None = None, example_dims: dict | None = None,
                 seq_axes: tuple = (AXIS,)):
        self.fn = fn
        self.name = name or fn.__name__
        self.file = os.path.abspath(inspect.getsourcefile(fn) or "<unknown>")
        self.line = _def_line(fn)
        self.doc = inspect.getdoc(fn) or inspect.getdoc(sys.modules.get(fn.__module__)) or ""
        self.example_dims = dict(example_dims or {})
        self.seq_axes = _check_seq_axes(seq_axes, self.name, f"{os.path.basename(self.file)}:{self.line}")
        self.inputs: dict[str, Seq] = {}
        self.params: dict[str, Param] = {}
        where = f"{os.path.basename(self.file)}:{self.line}"
        try:  # eval_str: a spec file may use `from __future__ import annotations`
            params = inspect.signature(fn, eval_str=True).parameters
        except SpecError as e:  # e.g. an mx.Param with a bad init
            if e.where is not None:
                raise
            raise SpecError(str(e), where) from None
        except Exception as e:  # an annotation that does not evaluate
            raise SpecError(f"spec {self.name!r}: its annotations do not evaluate ({e}); annotate "
                            "arguments with mx.Seq(\"b l ...\") or mx.Param(\"...\")", where) from None
        for pname, p in params.items():
            ann = p.annotation
            if isinstance(ann, Seq):
                self.inputs[pname] = ann
            elif isinstance(ann, Param):
                self.params[pname] = ann
            else:
                raise SpecError(f"spec {self.name!r}: argument {pname!r} needs an annotation "
                                "mx.Seq(\"b l ...\") or mx.Param(\"...\"), got "
                                f"{'none' if ann is inspect.Parameter.empty else repr(ann)}", where)
        if not self.inputs:
            raise SpecError(f"spec {self.name!r} has no mx.Seq input", where)

    def _check_names(self):
        """No input or parameter named like a keyword of the mixer call or a name of the generated code."""
        from .validate import reserved_name

        for pname in [*self.inputs, *self.params]:
            why = reserved_name(pname)
            if why:
                raise SpecError(f"spec {self.name!r}: {pname!r} cannot name an input or parameter: it is {why}; "
                                f"rename it (e.g. {pname}_in)", f"{os.path.basename(self.file)}:{self.line}")

    def trace(self) -> Graph:
        """A fresh IR graph of this spec (shape inference etc. are run by the compiler)."""
        self._check_names()
        graph = Graph(self.name, self.file, self.seq_axes)
        _ACTIVE.append(_Trace(graph, self.file))
        try:
            where = f"{os.path.basename(self.file)}:{self.line}"
            args = {}
            for pname, decl in list(self.inputs.items()) + list(self.params.items()):
                op = "seq" if isinstance(decl, Seq) else "param"
                attrs = {"dims": parse_dims(decl.dims_text, f"{self.name}: {pname}", where)}
                if op == "seq" and decl.kind != "value":
                    attrs["kind"] = decl.kind
                if op == "param":
                    attrs["init"] = decl.init
                graph.add(Node(pname, op, (), attrs, loc=Loc(self.file, self.line)))
                args[pname] = Value(pname)
            try:
                out = self.fn(**args)
            except Exception as e:
                err = user_code_error(e, self.file, f"while tracing spec {self.name!r}", tracing=True)
                if err is None:
                    raise
                raise err from e
        finally:
            _ACTIVE.pop()
        if isinstance(out, Matrix):
            raise SpecError(f"spec {self.name!r} returns a structured matrix; return M @ x", where)
        if not isinstance(out, Value):
            raise SpecError(f"spec {self.name!r} must return a traced value (e.g. M @ x + D * x), "
                            f"got {type(out).__name__}", where)
        graph.output = out.name
        return graph

    def __repr__(self):
        return f"<mx.spec {self.name} ({os.path.basename(self.file)}:{self.line})>"


def spec(fn: Callable | None = None, *, name: str | None = None, example_dims: dict | None = None,
         seq_axes: tuple = (AXIS,)):
    """Declare a spec: ``@mx.spec`` or ``@mx.spec(example_dims=dict(h=4, p=16, n=16))``.
    ``example_dims`` are the sizes `mixerc check` and `mixerc inspect` use by default.
    ``seq_axes`` are the sequence axes in layout order, ``("l",)`` by default; a 2-D spec over a
    grid of variates and time declares ``seq_axes=("v", "l")`` and lays its inputs out as
    ``(b, v, l, ...)``. Every sequence axis stays symbolic (never in ``dims``); ``l`` comes last
    (segments, varlen batches and ``step`` run along it)."""
    if fn is None:
        return lambda f: Spec(f, name=name, example_dims=example_dims, seq_axes=seq_axes)
    return Spec(fn, name=name, example_dims=example_dims, seq_axes=seq_axes)


def _check_seq_axes(axes, name: str, where: str) -> tuple:
    bad = f"spec {name!r}: seq_axes={axes!r}; "
    if isinstance(axes, str) or not isinstance(axes, (tuple, list)) or not 1 <= len(axes) <= 2:
        raise SpecError(bad + "pass a tuple of one or two axis names ending with 'l', e.g. ('l',) or "
                        "('v', 'l')", where)
    axes = tuple(axes)
    for a in axes:
        if not isinstance(a, str) or not a.isidentifier() or a == BATCH:
            raise SpecError(bad + f"{a!r} is not an axis name (identifiers other than 'b')", where)
    if axes[-1] != AXIS or len(set(axes)) != len(axes):
        raise SpecError(bad + "the last axis is the time axis 'l' (segments and step run along it), and "
                        "each axis appears once, e.g. seq_axes=('v', 'l')", where)
    return axes
