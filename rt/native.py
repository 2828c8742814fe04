"""C kernels that torch lowerings call on the CPU (the semiseparable scan's and the 2-D grid's fused loops,
semiseparable/native.py and grid2d/native.py): `usable`, whether tensors may go to one, and building them.

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
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
import warnings

import torch
from torch.autograd import forward_ad

FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=c11")
BUILD_TIMEOUT = 300  # seconds for one compile
_LIBS: dict[tuple, ctypes.CDLL | None] = {}
_LOCK = threading.Lock()
_WARNED: set[str] = set()
_DIR: list[str] = []  # the build directory, found or made at the first build


REALS = {torch.float32: "float", torch.float64: "double"}  # the C element type of each dtype the kernels take


def usable(*tensors) -> bool:
    """Whether a C kernel may run on these tensors (None entries skipped; the first one is the value):
    non-empty plain CPU tensors, the floating ones of one dtype in `REALS`, no forward-mode tangent, not
    inside a torch.compile or jit trace or a dispatch mode (none of which would see the C call)."""
    x, ts = tensors[0], [t for t in tensors if t is not None]
    if x.device.type != "cpu" or x.dtype not in REALS or x.numel() == 0:
        return False
    # torch.jit.is_tracing() is this call after is_scripting(), which warns of its deprecation at every call
    if torch.compiler.is_compiling() or torch._C._is_tracing():
        return False
    # a dispatch mode (fake tensors, make_fx's proxies) or a tensor subclass would not see the C call either
    if torch.utils._python_dispatch._get_current_dispatch_mode() is not None:
        return False
    if any(type(t) not in (torch.Tensor, torch.nn.Parameter) for t in ts):
        return False
    if any(t.device != x.device or t.is_floating_point() and t.dtype != x.dtype for t in ts):
        return False
    return all(forward_ad.unpack_dual(t).tangent is None for t in ts)


_OPERANDS: dict[int, type] = {}  # rank D -> the ctypes struct of an operand with D strides


def _operand_struct(d: int) -> type:
    if d not in _OPERANDS:
        fields = [("p", ctypes.c_void_p), ("s", ctypes.c_long * d)]
        _OPERANDS[d] = type(f"Operand{d}", (ctypes.Structure,), {"_fields_": fields})
    return _OPERANDS[d]


def operand_type(d: int):
    """The C argument type of an operand array of rank ``d`` (`operands`)."""
    return ctypes.POINTER(_operand_struct(d))


def operands(ts):
    """Tensors of one rank D as a C array of ``{const real *p; long s[D];}``: each one's data and strides, so
    the kernels read broadcast views (stride 0) without copies. ``ts`` must outlive the call."""
    d = ts[0].dim()
    struct = _operand_struct(d)
    return (struct * len(ts))(*[struct(t.data_ptr(), (ctypes.c_long * d)(*t.stride())) for t in ts])


def ptr(t):
    """A tensor's data pointer for a C call; None (NULL) for an absent one."""
    return None if t is None else t.data_ptr()


def function(lib: ctypes.CDLL, name: str, argtypes: list):
    """C function ``name`` of ``lib``, returning int, with ``argtypes`` (set once: ctypes keeps them on the
    library's function object)."""
    fn = getattr(lib, name)
    if fn.argtypes is None:
        fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn


_HUGE = 1 << 21  # bytes of a transparent huge page (x86-64, arm64 with 4 KB pages)
_MADV_HUGEPAGE = 14
_LIBC: list = []


def huge_pages(*tensors):
    """``tensors`` (one: itself), their fresh memory advised onto transparent huge pages (Linux; the
    2 MB-aligned interior of each of 4 MB or more): a kernel's first writes into memory the allocator has just
    mapped then fault 2 MB at a time, not 4 KB. On the 2-core VM of docs/semiseparable.md, first writes into
    16 MB took 4 ms instead of 15. Elsewhere, or where the kernel refuses the advice: nothing changes."""
    if platform.system() == "Linux":
        if not _LIBC:
            libc = ctypes.CDLL(None)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            libc.madvise.restype = ctypes.c_int
            _LIBC.append(libc)
        for t in tensors:
            start, size = t.data_ptr(), t.numel() * t.element_size()
            lo, hi = -(-start // _HUGE) * _HUGE, (start + size) // _HUGE * _HUGE
            if size >= 2 * _HUGE and hi > lo:
                _LIBC[0].madvise(lo, hi - lo, _MADV_HUGEPAGE)
    return tensors[0] if len(tensors) == 1 else tensors


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
    """``mixerc-native-<uid>`` under the temporary directory when it is ours and private and its parent
    is sticky or ours (so nobody else can swap it); else a fresh directory of this process's, removed at
    exit."""
    if not _DIR:
        uid = os.getuid()
        path = os.path.join(tempfile.gettempdir(), f"mixerc-native-{uid}")
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            st, parent = os.lstat(path), os.stat(os.path.dirname(path))
            private = stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077
            private = private and (parent.st_mode & stat.S_ISVTX or parent.st_uid == uid)
        except OSError:
            private = False
        if not private:
            path = tempfile.mkdtemp(prefix="mixerc-native-")
            atexit.register(shutil.rmtree, path, True)
        _DIR.append(path)
    return _DIR[0]


def cpu_flags() -> str:
    """The CPU's feature flags line of /proc/cpuinfo ("" where there is none): what ``-march=native`` code,
    and inductor's vector-ISA probe, depend on beside the machine."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.rstrip("\n") for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def _compile(cc: str, source: str, flags: list[str], stem: str) -> tuple[str | None, str]:
    """Build ``source`` as a shared library: with OpenMP first, then without. (path or None, last error).
    A library already built with the same source, flags, compiler and CPU is reused; a new one is written
    under a temporary name and renamed into place, so concurrent builds never load a partial file."""
    st = os.stat(cc)
    parts = [source, cc, str(st.st_size), str(st.st_mtime_ns), platform.machine(), platform.processor(),
             cpu_flags(), *FLAGS, *flags]
    base = os.path.join(_build_dir(), f"{stem}-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:20]}")
    outs = {extra: f"{base}{'-omp' if extra else ''}.so" for extra in (("-fopenmp",), ())}
    for out in outs.values():  # an earlier build, with OpenMP or, where that failed, without
        if os.path.exists(out):
            return out, ""
    error = ""
    for extra, out in outs.items():
        fd, src = tempfile.mkstemp(suffix=".c", dir=_build_dir())
        with os.fdopen(fd, "w") as f:
            f.write(source)
        part = src[:-2] + ".so"
        try:
            command = [cc, *FLAGS, *extra, *flags, src, "-o", part]
            run = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
            if run.returncode == 0:
                os.replace(part, out)
                return out, ""
            lines = run.stderr.strip().splitlines() or ["no message"]
            error = next((line.strip() for line in lines if "error" in line), lines[-1])
        except subprocess.TimeoutExpired:
            error = f"no result after {BUILD_TIMEOUT} s"
        finally:
            for leftover in (src, part):
                if os.path.exists(leftover):
                    os.remove(leftover)
    return None, error


def library(name: str, source: str, real: str, defines: tuple = ()) -> ctypes.CDLL | None:
    """Kernel ``name`` (C ``source``) for element type ``real`` (``float``, ``double``) and ``defines``
    (name, value) pairs, built at its first use in this process; None where it cannot be."""
    key = (name, hash(source), real, tuple(defines))  # a str caches its hash: nothing rehashed per call
    with _LOCK:
        if key not in _LIBS:
            _LIBS[key] = _load(name, source, real, tuple(defines))
        return _LIBS[key]


def _load(name: str, source: str, real: str, defines: tuple) -> ctypes.CDLL | None:
    cc = compiler() if os.name == "posix" else None  # the kernels assume a 64-bit long, the build dir a uid
    if cc is None:
        message = (f"no C compiler found ($CC, cc, gcc or clang on the PATH; POSIX only): the fused CPU kernel "
                   f"{name} is not built and the torch lowering runs instead (same results, several times "
                   "slower); install gcc to get it")
        _warn_once("cc", message)
        return None
    stem = "-".join([name, real] + [f"{k}{v}" for k, v in defines])
    path = None
    try:
        path, error = _compile(cc, source, [f"-DREAL={real}"] + [f"-D{k}={v}" for k, v in defines], stem)
        if path is not None:
            return ctypes.CDLL(path)
    except OSError as e:  # the compiler would not run, or the library would not load (a noexec /tmp)
        error = str(e)
        if path is not None and os.path.exists(path):
            os.remove(path)  # a damaged file would fail every later process too
    message = (f"{cc} could not build or load {name} ({error}): the torch lowering runs instead (same results, "
               "slower)")
    _warn_once(f"build {name}", message)
    return None
