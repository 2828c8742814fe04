"""C kernels that torch lowerings call on the CPU (the 2-D grid's fused loops, grid2d/native.py).

`library(name, source, real, defines)` compiles a kernel's C source with the system C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH) for one element type (``float`` or
``double``) and the source's compile-time sizes (``defines``, ``(("VALUE", 16),)``), with OpenMP when
the compiler has it (else single-threaded), and loads it with ctypes. The shared library is kept in a
private directory of the user's under the system's temporary directory (``mixerc-native-<uid>``, mode
0700), named by a hash of the source, the flags and the compiler, so every process and every generated
module of this machine reuses it: a build takes a fraction of a second once. ``-march=native`` code
belongs to the machine that built it, which a temporary directory never outlives. A directory that is
not private falls back to one of the process's own. No compiler, or a compile that fails: None and one
`NativeWarning`; the caller then runs its torch path, which gives the same numbers more slowly.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings

FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=c11")
_LIBS: dict[tuple, ctypes.CDLL | None] = {}
_LOCK = threading.Lock()
_WARNED: set[str] = set()
_DIR: list[str] = []  # the build directory, found or made at the first build


class NativeWarning(UserWarning):
    """A C kernel could not be built here; the torch lowering runs instead (same results, slower)."""


def find_program(names, path: str | None = None) -> str | None:
    """The first of ``names`` (None entries skipped) found on ``path`` (default: ``$PATH``); None if none is."""
    return next(filter(None, (shutil.which(name, path=path) for name in names if name)), None)


def compiler() -> str | None:
    """``$CC``, else the first of ``cc``, ``gcc``, ``clang`` on the PATH; None when there is none."""
    return find_program((os.environ.get("CC"), "cc", "gcc", "clang"))


def _warn_once(key: str, message: str):
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, NativeWarning, stacklevel=4)


def _build_dir() -> str:
    """``mixerc-native-<uid>`` under the temporary directory when it is ours and private; else a fresh
    directory of this process's, removed at exit."""
    if not _DIR:
        uid = os.getuid()
        path = os.path.join(tempfile.gettempdir(), f"mixerc-native-{uid}")
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            st = os.lstat(path)
            private = os.path.isdir(path) and not os.path.islink(path)
            private = private and st.st_uid == uid and not st.st_mode & 0o077
        except OSError:
            private = False
        if not private:
            path = tempfile.mkdtemp(prefix="mixerc-native-")
            atexit.register(shutil.rmtree, path, True)
        _DIR.append(path)
    return _DIR[0]


def _compile(cc: str, source: str, flags: list[str], stem: str) -> tuple[str | None, str]:
    """Build ``source`` as a shared library: with OpenMP first, then without. (path or None, last error).
    A library already built with the same source, flags and compiler is reused; a new one is written
    under a temporary name and renamed into place, so concurrent builds never load a partial file."""
    st = os.stat(cc)
    parts = [source, cc, str(st.st_size), str(st.st_mtime_ns), *FLAGS, *flags]
    base = os.path.join(_build_dir(), f"{stem}-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:20]}")
    error = ""
    for extra in (("-fopenmp",), ()):
        out = f"{base}{'-omp' if extra else ''}.so"
        if os.path.exists(out):
            return out, ""
        fd, src = tempfile.mkstemp(suffix=".c", dir=_build_dir())
        with os.fdopen(fd, "w") as f:
            f.write(source)
        part = src[:-2] + ".so"
        try:
            run = subprocess.run([cc, *FLAGS, *extra, *flags, src, "-o", part], capture_output=True, text=True)
            if run.returncode == 0:
                os.replace(part, out)
                return out, ""
            error = (run.stderr.strip().splitlines() or ["no message"])[-1]
        finally:
            for leftover in (src, part):
                if os.path.exists(leftover):
                    os.remove(leftover)
    return None, error


def library(name: str, source: str, real: str, defines: tuple = ()) -> ctypes.CDLL | None:
    """Kernel ``name`` (C ``source``) for element type ``real`` (``float``, ``double``) and ``defines``
    (name, value) pairs, built at its first use in this process; None where it cannot be."""
    key = (name, real, tuple(defines))
    with _LOCK:
        if key not in _LIBS:
            _LIBS[key] = _load(name, source, real, tuple(defines))
        return _LIBS[key]


def _load(name: str, source: str, real: str, defines: tuple) -> ctypes.CDLL | None:
    cc = compiler()
    if cc is None:
        message = (f"no C compiler found ($CC, cc, gcc or clang on the PATH): the fused CPU kernel {name} is "
                   "not built and the torch lowering runs instead (same results, several times slower); "
                   "install gcc to get it")
        _warn_once("cc", message)
        return None
    stem = "-".join([name, real] + [f"{k}{v}" for k, v in defines])
    path, error = _compile(cc, source, [f"-DREAL={real}"] + [f"-D{k}={v}" for k, v in defines], stem)
    if path is None:
        message = f"{cc} could not build {name} ({error}): the torch lowering runs instead (same results, slower)"
        _warn_once(f"build {name}", message)
        return None
    return ctypes.CDLL(path)
