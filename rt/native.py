"""C kernels that torch lowerings call on the CPU (the 2-D grid's fused forward, grid2d/native.py).

`library(name, source, real, defines)` compiles a kernel's C source with the system C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH) for one element type (``float`` or
``double``) and the source's compile-time sizes (``defines``, ``(("VALUE", 16),)``), at its first use
in a process (a fraction of a second; with OpenMP when the compiler has it, else single-threaded),
and loads it with ctypes. The shared library lives in a directory of the process's own, removed at
exit: ``-march=native`` code belongs to the machine that built it, and a compile is cheaper than an
on-disk cache's checks. No compiler, or a compile that fails: None and one `NativeWarning`; the
caller then runs its torch path, which gives the same numbers more slowly.
"""

from __future__ import annotations

import atexit
import ctypes
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
_DIR: list[str] = []  # the process's build directory, made at the first compile


class NativeWarning(UserWarning):
    """A C kernel could not be built here; the torch lowering runs instead (same results, slower)."""


def compiler() -> str | None:
    """``$CC``, else the first of ``cc``, ``gcc``, ``clang`` on the PATH; None when there is none."""
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        found = shutil.which(name)
        if found:
            return found
    return None


def _warn_once(key: str, message: str):
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, NativeWarning, stacklevel=4)


def _build_dir() -> str:
    if not _DIR:
        _DIR.append(tempfile.mkdtemp(prefix="mixerc-native-"))
        atexit.register(shutil.rmtree, _DIR[0], True)
    return _DIR[0]


def _compile(cc: str, source: str, flags: list[str], stem: str) -> tuple[str | None, str]:
    """Build ``source`` as a shared library: with OpenMP first, then without. (path or None, last error)."""
    src = os.path.join(_build_dir(), f"{stem}.c")
    with open(src, "w") as f:
        f.write(source)
    error = ""
    for extra in (("-fopenmp",), ()):
        out = os.path.join(_build_dir(), f"{stem}{'-omp' if extra else ''}.so")
        run = subprocess.run([cc, *FLAGS, *extra, *flags, src, "-o", out],
                             capture_output=True, text=True)
        if run.returncode == 0:
            return out, ""
        error = (run.stderr.strip().splitlines() or ["no message"])[-1]
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
