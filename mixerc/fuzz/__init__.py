"""Differential fuzzing: random specs from the DSL's grammar, every lowering against the reference.

``mixerc fuzz`` (or ``python -m mixerc.fuzz``) runs it; `grammar.build` makes the specs,
`run.check_case` checks one, `run.fuzz` drives many with hypothesis and shrinks a failure.
"""

from .grammar import Case, Draw, build
from .run import FuzzFailure, Report, check_case, fuzz

__all__ = ["Case", "Draw", "FuzzFailure", "Report", "build", "check_case", "fuzz"]
