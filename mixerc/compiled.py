"""The compiled CPU path: a generated torch module's ``mixer`` compiled once by inductor into fused C++.

``backend="compiled"`` runs a mixer's default torch lowerings (``chunked``; ``fft`` for Toeplitz)
through ``torch.compile(dynamic=True)`` with inductor's C++ backend; with ``MIXERC_CPU_COMPILE=1``,
``backend="auto"`` on CPU does too (off by default: a first compile takes minutes on 2 cores). Item 1 of issue 16 made the chunked lowerings shape-polymorphic, so one forward graph and
one backward graph serve every sequence length (dynamo's duck sizing is off while tracing, so a call
with ``b == l`` does not tie the two together). The backward is compiled with the forward (not at the
first ``backward()``), so that a compile failure always shows in the forward call, where the eager
function can take over.

Artifacts (inductor's FX graph cache and AOTAutograd cache) live under ``$MIXERC_CACHE_DIR/inductor``
unless ``TORCHINDUCTOR_CACHE_DIR`` is set, so a new process at a length the cache has seen loads the
compiled code instead of compiling it (inductor still compiles again at some other lengths: see the doc).
The first compile in a process prints one progress line on stderr and its time. Without a C++
compiler, with ``MIXERC_CPU_COMPILE=0``, or when the compile fails, the eager function runs, after
one `CompiledWarning` per process and reason (never for ``MIXERC_CPU_COMPILE=0``). See
docs/compiled_cpu.md.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
import time
import warnings

import torch

from .settings import setting

NAME = "compiled"
# the lowerings with no loop or branch on the length (issue 16, item 1): one graph serves every length.
# `auto` compiles only plans made of these; a recompile per length would cost minutes each time
ONE_GRAPH = {("semiseparable", "chunked"), ("quasiseparable", "chunked"), ("toeplitz", "fft"), ("toeplitz", "direct")}
_WARNED: set[str] = set()
_ACTIVE = threading.local()  # .label while one of our compiled calls runs (the compile callbacks read it)


class CompiledWarning(UserWarning):
    """The compiled CPU path is unavailable or failed; the eager lowerings run instead."""


def cxx() -> str | None:
    """The C++ compiler inductor would use: ``$CXX``, else ``c++``/``g++``/``clang++`` on the PATH; None
    when there is none. Asked at every compiled call: the search is remembered per ($CXX, $PATH)."""
    return _find_cxx(os.environ.get("CXX"), os.environ.get("PATH"))


@functools.lru_cache(maxsize=8)
def _find_cxx(cxx_var: str | None, search_path: str | None) -> str | None:
    for name in filter(None, (cxx_var, "c++", "g++", "clang++")):
        found = shutil.which(name, path=search_path)
        if found:
            return found
    return None


def warn_once(reason: str, message: str):
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(message, CompiledWarning, stacklevel=3)


def wanted(device: torch.device, plan) -> bool:
    """Whether ``backend="auto"`` compiles ``plan`` on ``device``: a CPU call, ``MIXERC_CPU_COMPILE`` on,
    every lowering of the plan in `ONE_GRAPH`, not inside someone else's ``torch.compile`` (the eager
    function is then traced into their graph), and a C++ compiler present (else one warning)."""
    if device.type != "cpu" or not setting("cpu_compile") or torch.compiler.is_compiling():
        return False
    if any((s.structure, s.lowering) not in ONE_GRAPH for s in plan.structures):
        return False
    if cxx() is None:
        warn_once("cxx", "no C++ compiler found ($CXX, c++, g++ or clang++ on the PATH): backend='auto' runs "
                         "the eager chunked lowering on CPU, several times slower; install g++, or set "
                         "MIXERC_CPU_COMPILE=0 to choose the eager path without this warning")
        return False
    return True


def _point_cache():
    """Inductor's on-disk caches under mixerc's cache dir (a TORCHINDUCTOR_CACHE_DIR the user set wins).
    Inductor reads the variable itself, so it is written to os.environ (as settings.py allows)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(setting("cache_dir") / "inductor"))


def _on_start(args):
    label = getattr(_ACTIVE, "label", None)
    if label is not None and getattr(_ACTIVE, "started", None) is None:
        _ACTIVE.started = time.perf_counter()
        sys.stderr.write(f"mixerc: compiling {label} for CPU (once; cached on disk) ...")
        sys.stderr.flush()


def _on_end(args):
    started = getattr(_ACTIVE, "started", None)
    if started is not None and getattr(_ACTIVE, "label", None) is not None:
        _ACTIVE.started = None
        sys.stderr.write(f" {time.perf_counter() - started:.1f} s\n")
        sys.stderr.flush()


_HOOKED: list[bool] = []


def _hook():
    """The progress line: dynamo's compile callbacks, registered once, print only for our calls."""
    if not _HOOKED:
        from torch._dynamo.callback import on_compile_end, on_compile_start

        on_compile_start(_on_start)
        on_compile_end(_on_end)
        _HOOKED.append(True)


class CompiledFn:
    """A generated ``mixer`` function and its inductor compilation, made at the first call. A call the
    compile fails on runs ``fn`` eagerly, and so does every later call (one warning)."""

    backend = "inductor"  # torch.compile's backend (tests count graphs with a backend of their own)

    def __init__(self, fn, label: str):
        self.fn, self.label = fn, label
        self._compiled = None
        self.failed: str | None = None

    def __call__(self, **kwargs):
        if self.failed is not None or torch.compiler.is_compiling():
            return self.fn(**kwargs)
        if self._compiled is None:
            _point_cache()
            _hook()
            self._compiled = torch.compile(self.fn, dynamic=True, fullgraph=True, backend=self.backend)
        import torch._functorch.config as functorch_config
        import torch.fx.experimental._config as fx_config

        _ACTIVE.label = self.label
        try:
            with fx_config.patch(use_duck_shape=False), \
                    functorch_config.patch(force_non_lazy_backward_lowering=True):
                return self._compiled(**kwargs)
        except Exception as e:  # noqa: BLE001: whatever inductor raises, the eager function decides
            out = self.fn(**kwargs)  # a genuine error in the inputs raises here, with its own message
            cause = getattr(e, "inner_exception", None) or e  # a backend's own error, inside dynamo's wrapper
            self.failed = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0]}"
            warn_once(f"fail {self.label}", f"compiling {self.label} for CPU failed ({self.failed[:300]}); "
                                            "running the eager lowering instead (set MIXERC_CPU_COMPILE=0 to "
                                            "skip the attempt)")
            return out
        finally:
            _ACTIVE.label = None
            if getattr(_ACTIVE, "started", None) is not None:  # a failed compile: end its progress line
                _ACTIVE.started = None
                sys.stderr.write(" failed\n")
