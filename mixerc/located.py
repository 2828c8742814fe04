"""Where user code is: telling mixerc's own frames from the user's, for located errors.

Used by the DSL (tracing errors), the init rules (a bad ``init=``) and the loader (a spec file that
raises at import); it imports nothing of theirs, so none of them imports another for it.
"""

from __future__ import annotations

import inspect
import os
import sys

from .ir import SpecError

_OWN_DIRS = tuple(os.path.dirname(os.path.abspath(f)) + os.sep
                  for f in (__file__, sys.modules[SpecError.__module__].__file__))


def is_own_code(filename: str) -> bool:
    """Whether ``filename`` is mixerc's own code (the ``mixerc`` and ``mixerc.ir`` packages): an
    exception raised there is a mixerc bug, not a user error, and keeps its traceback."""
    return os.path.abspath(filename).startswith(_OWN_DIRS)


def user_where() -> str | None:
    """"file:line" of the innermost caller outside mixerc's own code (and outside `inspect`'s
    evaluation of postponed annotations): where the user wrote the call being checked."""
    f = sys._getframe(1)
    while f is not None:
        name = f.f_code.co_filename
        if not (is_own_code(name) or name.startswith("<") or name == inspect.__file__):
            return f"{os.path.basename(name)}:{f.f_lineno}"
        f = f.f_back
    return None
