"""The on-disk cache: generated Triton modules, keyed by IR hash, dims, plan and versions.

Triton reads a kernel's source from its file, so generated Triton code is always imported from a
file here (``$MIXERC_CACHE_DIR/kernels/<key>.py``, default ``~/.cache/mixerc``).

The cache trusts nothing it finds. Every entry ends in one trailer line,

    # mixerc-cache-entry v1 key=<key> sha256=<hex of sha256(key, newline, body)>

written after the body (so the module's line numbers are the body's). An entry is used only when
its trailer is there, names the key of its file name and hashes to the body above it; anything else
(truncated by a killed writer, empty, garbage, another spec's module copied over the key, a file of an
older cache format, unreadable, a directory) is regenerated, with one `CacheWarning` line naming the
file. The module is executed from the very text that was verified (no bytecode cache, so a stale
``.pyc`` can never stand in for it).

Writes go to a temporary file in the same directory, flushed to disk, then ``os.replace``d over the
entry: readers see the old entry or the new one, never half a file, and many processes writing the
same key at once leave one valid entry (the same text: the key fixes the generated code). A cache
directory that cannot be written (under a regular file, read-only, disk full) is replaced, for the
rest of the process, by a fresh temporary directory, with one warning.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

from .settings import setting

FORMAT = "v1"
_TRAILER = re.compile(r"# mixerc-cache-entry (\S+) key=(\S+) sha256=([0-9a-f]{64})")
_LOADED: dict[str, types.ModuleType] = {}
_FALLBACK: dict[str, Path] = {}  # configured dir -> this process's temporary replacement
_WRITTEN: dict[str, Path] = {}  # key -> where this process wrote it, when not at source_path(key)


class CacheWarning(UserWarning):
    """A cache entry or directory that could not be used as it was; mixerc went on without it."""


def _warn(where, message: str):
    """One line, ``<file>:0: CacheWarning: <message>``: ``where`` is the file at fault (no source
    line follows: line 0 has none)."""
    warnings.warn_explicit(" ".join(message.split()), CacheWarning, str(where), 0)


def configured_dir() -> Path:
    """``$MIXERC_CACHE_DIR`` (default ``~/.cache/mixerc``), whether or not it is usable."""
    return setting("cache_dir")


def cache_dir() -> Path:
    """The directory in use: the configured one, or this process's fallback once that has failed."""
    base = configured_dir()
    return _FALLBACK.get(str(base), base)


def kernels_dir() -> Path:
    return cache_dir() / "kernels"


def source_path(key: str) -> Path:
    return kernels_dir() / f"{key}.py"


# -- entries -------------------------------------------------------------------------------------
def digest(key: str, body: str) -> str:
    return hashlib.sha256(f"{key}\n{body}".encode()).hexdigest()


def entry_text(key: str, body: str) -> str:
    """What an entry file holds: the body (newline-terminated) and its trailer line."""
    if not body.endswith("\n"):
        body += "\n"
    return f"{body}# mixerc-cache-entry {FORMAT} key={key} sha256={digest(key, body)}\n"


def parse_entry(data: bytes, key: str) -> tuple[str | None, str]:
    """``(body, "")`` for a valid entry of ``key``, else ``(None, why)``."""
    if not data:
        return None, "is empty"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "is not text (garbage bytes)"
    if not text.endswith("\n"):
        return None, "is truncated (no final newline)"
    head, _, last = text[:-1].rpartition("\n")
    m = _TRAILER.fullmatch(last)
    if m is None:
        return None, "has no mixerc-cache-entry trailer (truncated, or not written by this mixerc)"
    fmt, found, sha = m.groups()
    if fmt != FORMAT:
        return None, f"has cache format {fmt}, this mixerc writes {FORMAT}"
    if found != key:
        return None, f"holds the entry of another key ({found}): a file copied or renamed over it"
    body = head + "\n" if head else ""
    if digest(key, body) != sha:
        return None, "does not match its sha256 (modified or partly written)"
    return body, ""


@dataclass
class Check:
    """The state of one entry file: ``ok``, or ``why`` it is not."""

    path: Path
    ok: bool
    why: str = ""


def check_file(path: Path) -> Check:
    """Verify ``path`` against the key its file name gives (``<key>.py``)."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        return Check(path, False, "is a directory")
    except OSError as e:
        return Check(path, False, f"is unreadable ({type(e).__name__}: {e.strerror or e})")
    body, why = parse_entry(data, path.stem)
    return Check(path, body is not None, why)


def read_entry(key: str) -> tuple[str | None, str]:
    """The verified body of ``key``'s entry, or ``(None, why)`` (``why`` empty when it is absent)."""
    path = source_path(key)
    if not os.path.lexists(path):
        return None, ""
    if path.is_dir():
        return None, "is a directory"
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, f"is unreadable ({type(e).__name__}: {e.strerror or e})"
    return parse_entry(data, key)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


# -- writing -------------------------------------------------------------------------------------
def write_atomic(path: Path, text: str | bytes) -> Path:
    """Write ``text`` (or bytes) to ``path``: a temporary file beside it, flushed to disk, then renamed
    over it. The temporary file is removed when anything fails (a failing write, a full disk); OSError
    propagates."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if isinstance(text, bytes) else os.fdopen(fd, "w", encoding="utf-8")) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _fall_back(reason: str) -> Path:
    """Switch this process to a fresh temporary cache directory (warned once)."""
    base = configured_dir()
    tmp = Path(tempfile.mkdtemp(prefix="mixerc-cache-"))
    _FALLBACK[str(base)] = tmp
    _warn(base, f"cache directory {base} cannot be used ({reason}); this process caches generated "
                f"modules in {tmp} instead: fix the directory's permissions or point MIXERC_CACHE_DIR "
                "at a writable directory")
    return tmp


def _describe(e: OSError) -> str:
    return f"{type(e).__name__}: {e.strerror or e}"


def store(key: str, body: str) -> Path:
    """Write ``key``'s entry and return its path. Where the cache directory cannot take it, this
    process falls back to a temporary directory (one warning); where only the entry's own path cannot
    be replaced (a directory sits there), the entry goes to a private temporary directory. Raises
    `BackendError` only when nothing can be written at all."""
    from .ir import BackendError

    text, path = entry_text(key, body), source_path(key)
    if path.is_dir() and not path.is_symlink():  # not ours to delete: write this one entry elsewhere
        path = Path(tempfile.mkdtemp(prefix="mixerc-entry-")) / path.name
    try:
        written = write_atomic(path, text)
    except OSError as e:
        if str(configured_dir()) in _FALLBACK or path != source_path(key):
            raise BackendError(f"cannot write the generated module {path} ({_describe(e)}); "
                               "free disk space or set MIXERC_CACHE_DIR to a writable directory") from e
        _fall_back(f"writing {path.name} failed: {_describe(e)}")
        try:
            written = write_atomic(source_path(key), text)
        except OSError as e2:
            raise BackendError(f"cannot write the generated module {source_path(key)} ({_describe(e2)}), "
                               "neither in the cache directory nor in a temporary one; free disk space or "
                               "set MIXERC_CACHE_DIR to a writable directory") from e2
    if written == source_path(key):
        _WRITTEN.pop(key, None)
    else:
        _WRITTEN[key] = written
    return written


def cached_source(key: str, make) -> str:
    """The cached source for ``key``; generated with ``make()`` and written when absent or when the
    entry found fails verification (one `CacheWarning` naming the file)."""
    if key in _WRITTEN:  # this process already put it elsewhere
        body = parse_entry(_read(_WRITTEN[key]), key)[0]
        if body is not None:
            return body
    body, why = read_entry(key)
    if body is not None:
        return body
    bad = source_path(key)
    body = make()
    if not body.endswith("\n"):
        body += "\n"
    if why:
        written = store(key, body)
        where = "" if written == bad else f" in {written}"
        _warn(bad, f"cache entry {bad.name} {why}; regenerated it{where}")
    else:
        store(key, body)
    return body


def load_module(key: str, source: str) -> types.ModuleType:
    """Import the generated module (once per process) from its cache file, (re)written first unless
    it holds exactly ``source``. The module runs the verified text, not whatever the file holds by
    the time Python would read it again."""
    if key in _LOADED:
        return _LOADED[key]
    if not source.endswith("\n"):
        source += "\n"
    path = _WRITTEN.get(key)
    if path is None or parse_entry(_read(path), key)[0] != source:
        body, _ = read_entry(key)
        path = source_path(key) if body == source else store(key, source)
    name = f"mixerc_generated_{key}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    _LOADED[key] = module
    return module


# -- for the command line --------------------------------------------------------------------------
def entries() -> list[Path]:
    """Every entry file (``kernels/*.py``), sorted."""
    d = kernels_dir()
    return sorted(p for p in d.glob("*.py")) if d.is_dir() else []


def leftovers() -> list[Path]:
    """Temporary files of writers that died before their rename, and bytecode of older mixercs."""
    d = kernels_dir()
    if not d.is_dir():
        return []
    return sorted([*d.glob(".*.tmp"), *d.glob("__pycache__")])


def compiled_dir() -> Path:
    """The compiled CPU path's saved entries (mixerc/compiled.py): ``compiled/<context>/*.bin``."""
    return cache_dir() / "compiled"


def compiled_entries() -> list[Path]:
    d = compiled_dir()
    return sorted(d.rglob("*.bin")) if d.is_dir() else []


def clear() -> int:
    """Remove every entry and leftover, the compiled path's entries too; the number of paths removed.
    Other files are left alone."""
    n = 0
    for p in [*entries(), *leftovers(), *compiled_entries()]:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        n += 1
    return n
