"""Initialisation rules for `mx.Param(..., init=...)`.

Each rule is a small callable object ``rule(shape, dtype, generator) -> Tensor`` that also prints
as the Python that builds it (the IR and `mixerc inspect` show it).
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod

import torch

from .ir import SpecError
from .located import user_where


def _error(message: str) -> SpecError:
    """A SpecError located at the user's line that built the rule (`located.user_where`)."""
    return SpecError(message, user_where())


def _reals(rule: str, **args) -> tuple[float, ...]:
    """The arguments of an init rule as floats; anything but a real number is a SpecError."""
    out = []
    for k, v in args.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise _error(f"mx.init.{rule}: {k}={v!r} must be a number")
        out.append(float(v))
    return tuple(out)


class InitRule(ABC):
    def __call__(self, shape, dtype=torch.float32, generator=None) -> torch.Tensor:
        with torch.no_grad():
            return self.sample(tuple(shape), generator).to(dtype)

    @abstractmethod
    def sample(self, shape, generator) -> torch.Tensor:
        """The values in float64; `__call__` casts them."""

    def __repr__(self) -> str:
        args = ", ".join(f"{v!r}" for v in self.__dict__.values())
        return f"mx.init.{type(self).__name__}({args})"


class constant(InitRule):
    """Every element equals ``value``."""

    def __init__(self, value: float):
        (self.value,) = _reals("constant", value=value)

    def sample(self, shape, generator):
        return torch.full(shape, self.value, dtype=torch.float64)


class uniform(InitRule):
    """``U(lo, hi)``."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = _reals("uniform", lo=lo, hi=hi)

    def sample(self, shape, generator):
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        return self.lo + (self.hi - self.lo) * u


class log_uniform(InitRule):
    """``log(U(lo, hi))``: Mamba-2's ``A_log`` (``A = U(1, 16)``, stored as its log)."""

    def __init__(self, lo: float, hi: float):
        lo, hi = _reals("log_uniform", lo=lo, hi=hi)
        if not 0 < lo <= hi:
            raise _error(f"mx.init.log_uniform needs 0 < lo <= hi, got lo={lo}, hi={hi}")
        self.lo, self.hi = float(lo), float(hi)

    def sample(self, shape, generator):
        return torch.log(uniform(self.lo, self.hi).sample(shape, generator))


class inv_softplus_dt(InitRule):
    """Mamba's ``dt_bias``: ``dt = exp(U(log dt_min, log dt_max))`` clamped to ``>= floor``, stored as
    the inverse softplus ``dt + log(-expm1(-dt))`` so that ``softplus(dt_bias) = dt``."""

    def __init__(self, dt_min: float = 1e-3, dt_max: float = 1e-1, floor: float = 1e-4):
        dt_min, dt_max, floor = _reals("inv_softplus_dt", dt_min=dt_min, dt_max=dt_max, floor=floor)
        if not 0 < dt_min <= dt_max:
            raise _error(f"mx.init.inv_softplus_dt needs 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self.dt_min, self.dt_max, self.floor = float(dt_min), float(dt_max), float(floor)

    def sample(self, shape, generator):
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        dt = torch.exp(u * (math.log(self.dt_max) - math.log(self.dt_min)) + math.log(self.dt_min))
        dt = dt.clamp(min=self.floor)
        return dt + torch.log(-torch.expm1(-dt))


class s4d_real(InitRule):
    """S4D-real: ``log(1..n)`` along the last dim, the same in every row (Mamba-1's ``A_log``)."""

    def __init__(self):
        pass

    def sample(self, shape, generator):
        n = shape[-1]
        row = torch.log(torch.arange(1, n + 1, dtype=torch.float64))
        return row.expand(shape).clone()


class normal(InitRule):
    """``N(0, std^2)``."""

    def __init__(self, std: float = 1.0):
        (self.std,) = _reals("normal", std=std)

    def sample(self, shape, generator):
        return self.std * torch.randn(shape, generator=generator, dtype=torch.float64)


class s4d_lin_imag(InitRule):
    """S4D-Lin imaginary parts: ``pi * n`` for ``n = 0 .. n2-1`` along the last dim (the state pairs),
    the same in every row (Gu et al. 2022, "On the Parameterization and Initialization of Diagonal
    State Space Models"; state-spaces/s4 ``diag-lin``). Pair it with a real part ``log(0.5)``."""

    def __init__(self):
        pass

    def sample(self, shape, generator):
        row = math.pi * torch.arange(shape[-1], dtype=torch.float64)
        return row.expand(shape).clone()


class s4d_inv_imag(InitRule):
    """S4D-Inv imaginary parts: ``(N / pi) (N / (2n + 1) - 1)`` with ``N = 2 n2`` the full state
    size, ``n = 0 .. n2-1`` along the last dim (state-spaces/s4 ``diag-inv``)."""

    def __init__(self):
        pass

    def sample(self, shape, generator):
        N = 2 * shape[-1]
        n = torch.arange(shape[-1], dtype=torch.float64)
        row = N / math.pi * (N / (2 * n + 1) - 1)
        return row.expand(shape).clone()


class log_uniform_dt(InitRule):
    """``U(log dt_min, log dt_max)``: S4D's ``log_dt`` (``Delta = exp(log_dt)``)."""

    def __init__(self, dt_min: float = 1e-3, dt_max: float = 1e-1):
        dt_min, dt_max = _reals("log_uniform_dt", dt_min=dt_min, dt_max=dt_max)
        if not 0 < dt_min <= dt_max:
            raise _error(f"mx.init.log_uniform_dt needs 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self.dt_min, self.dt_max = float(dt_min), float(dt_max)

    def sample(self, shape, generator):
        return uniform(math.log(self.dt_min), math.log(self.dt_max)).sample(shape, generator)


RULES = ("a number (constant), mx.init.uniform(lo, hi), log_uniform(lo, hi), inv_softplus_dt(dt_min, "
         "dt_max), s4d_real(), normal(std), s4d_lin_imag(), s4d_inv_imag(), log_uniform_dt(lo, hi)")


def as_rule(init) -> InitRule:
    """A number means `constant`; rules pass through. Anything else is a `SpecError` at the user's line."""
    if isinstance(init, InitRule):
        return init
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        return constant(init)
    if isinstance(init, torch.Tensor):
        raise _error(f"mx.Param(init=...): got a tensor of shape {tuple(init.shape)}; init takes {RULES}. To "
                     "start from given values, compile first and copy them in: with torch.no_grad(): "
                     "mixer.<param>.copy_(values)")
    if isinstance(init, type) and issubclass(init, InitRule):
        raise _error(f"mx.Param(init=mx.init.{init.__name__}): call the rule, e.g. "
                     f"init=mx.init.{init.__name__}(...)")
    if callable(init):
        name = getattr(init, "__qualname__", init)
        raise _error(f"mx.Param(init=...): got the callable {name!r}; init takes {RULES}. For your own "
                     "rule, subclass mx.init.InitRule and implement sample(shape, generator) returning "
                     "float64 values")
    raise _error(f"mx.Param(init=...): got {type(init).__name__} {init!r}; init takes {RULES}")
