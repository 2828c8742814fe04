"""Typed errors. Every message says what was wrong, what was expected, and how to fix it.

They live in the IR package (the bottom layer) so that every layer can raise them; `mixerc`
re-exports them as `mixerc.SpecError`, `mixerc.ShapeError`, ...
"""

from __future__ import annotations


class MixercError(Exception):
    """Base class of every error mixerc raises on purpose."""


class SpecError(MixercError, ValueError):
    """A spec is malformed: unknown or mismatched dims, an unsupported op, a bad structure.

    `where` is "file:line" of the spec line the problem comes from, when known.
    """

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class InputError(MixercError, ValueError):
    """A call got a missing, unknown, wrongly typed or misplaced input."""


class ShapeError(InputError):
    """An input's shape does not match the named dims the spec declares for it."""


class BackendError(MixercError, RuntimeError):
    """A backend cannot run here (missing package, device, unsupported case); says what to use instead."""
