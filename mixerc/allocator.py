"""How the C library's allocator serves the large CPU tensors of mixer calls (docs/cpu_memory.md).

torch takes CPU tensors from ``malloc``. glibc serves a request above its mmap threshold (128 KiB at
first, raised as such blocks are freed, never above 32 MiB) with fresh pages from the kernel and gives
them back at ``free``: the large temporaries of every call fault their pages in again, each page
zero-filled by the kernel. At the sizes where CPU time matters this costs more than the arithmetic
(`mamba2`'s `chunked`, fp32, ``b=2, l=8192, h=8, p=n=64``: half of a forward went to page faults;
docs/cpu_memory.md has the figures and the commands).

`MIXERC_CPU_ALLOCATOR` (`Settings.cpu_allocator`): ``retain`` (the default) sets glibc's mmap threshold and
trim threshold to `RETAIN_BYTES` (``mallopt``) at the first mixer call on the CPU, so freed blocks stay in the
process's heap and the next call reuses them: the process keeps the memory of its largest call, as torch's
caching allocator does on a GPU. ``keep`` leaves the allocator alone. Nothing is changed where the C library
is not glibc, where another allocator is preloaded (``LD_PRELOAD``), where the user tuned glibc's malloc
already (its ``MALLOC_*_`` variables or ``GLIBC_TUNABLES``), or while torch.compile traces.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Mapping

import torch

from .settings import setting

RETAIN_BYTES = 1 << 30  # a freed block below this stays in the heap; glibc's heap keeps up to this much free
# glibc 2.33 and older refuse an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit): then this one
FALLBACK_BYTES = 32 << 20
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_state = {"decided": False, "applied": False}


def why_not(want: str, environ: Mapping[str, str], libc: str) -> str:
    """Why the policy leaves the allocator alone ('' when it applies). ``want``: the setting; ``libc``: the C
    library's name as `platform.libc_ver` gives it."""
    if want == "keep":
        return "MIXERC_CPU_ALLOCATOR=keep"
    if libc != "glibc":
        return f"the C library is {libc or 'unknown'}, not glibc"
    preload = environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return f"another allocator is preloaded (LD_PRELOAD={preload})"
    tuned = [v for v in USER_VARIABLES if environ.get(v)]
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        tuned.append("GLIBC_TUNABLES")
    if tuned:
        return f"glibc's malloc is tuned already ({', '.join(tuned)})"
    return ""


def retain(environ: Mapping[str, str] = os.environ) -> bool:
    """Applies the policy once per process (later calls return the first answer): True when glibc now
    keeps freed blocks below `RETAIN_BYTES` (or `FALLBACK_BYTES`, where glibc refuses more) in its heap.
    The mmap threshold is set first: where glibc refuses both values, nothing is changed (a trim threshold
    set alone would fix glibc's adaptive mmap threshold at its starting 128 KiB: worse than its defaults)."""
    if not _state["decided"]:
        why = why_not(setting("cpu_allocator"), environ, platform.libc_ver()[0])  # a bad setting raises here
        _state["decided"] = True
        if not why:
            libc = ctypes.CDLL(None)
            ok = any(libc.mallopt(M_MMAP_THRESHOLD, v) == 1 for v in (RETAIN_BYTES, FALLBACK_BYTES))
            _state["applied"] = ok and libc.mallopt(M_TRIM_THRESHOLD, RETAIN_BYTES) == 1
    return _state["applied"]


def before_call(device: torch.device) -> None:
    """The hook of every mixer call: the policy at the first one on the CPU (never while tracing)."""
    # is_compiling first: traced, it is a constant and the trace never reads (nor guards on) the state
    if torch.compiler.is_compiling() or device.type != "cpu" or _state["decided"]:
        return
    retain()
