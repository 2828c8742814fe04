"""The compiled CPU path: a generated torch module's ``mixer`` compiled by inductor into fused C++, once.

``backend="compiled"`` runs a mixer's default torch lowerings (``chunked``; ``fft`` for Toeplitz)
compiled with inductor's C++ backend; with ``MIXERC_CPU_COMPILE=1``, ``backend="auto"`` on CPU does too
(off by default: a first compile takes minutes on 2 cores). The chunked lowerings are shape-polymorphic
(issue 16, item 1), so one compiled entry serves every length: only the batch and sequence sizes are
symbols (the compiled dims are constants), and dynamo's duck sizing is off while tracing, so a call
with ``b == l`` does not tie the two together. The backward is compiled with the forward.

Each entry is compiled ahead of its call with dynamo's precompile (``aot_compile``) and saved under
``$MIXERC_CACHE_DIR/compiled/<context>/``; a new process loads it (no tracing, no compile) when the
entry's guards accept its call. Inductor's C++ libraries live under ``$MIXERC_CACHE_DIR/inductor``.
A compile prints one progress line on stderr and its time. Without a C++ compiler, with
``MIXERC_CPU_COMPILE=0``, or when the compile fails, the eager function runs, after one
`CompiledWarning` per process and reason (never for ``MIXERC_CPU_COMPILE=0``). See docs/compiled_cpu.md.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import operator
import os
import platform
import random
import sys
import time
import warnings
from pathlib import Path

import torch

from .cache import CacheWarning, compiled_dir, write_atomic
from .rt.native import cpu_flags, find_program
from .settings import setting

NAME = "compiled"
# the lowerings with no loop or branch on the length (issue 16, item 1): one graph serves every length.
# `auto` compiles only plans made of these; a recompile per length would cost minutes each time
# `scan` traces as `chunked` (its fused C loops never run inside a trace)
ONE_GRAPH = {("semiseparable", "chunked"), ("quasiseparable", "chunked"), ("toeplitz", "fft"), ("toeplitz", "direct"),
             ("semiseparable", "scan"), ("quasiseparable", "scan")}
MAX_ENTRIES = 8  # compiled variants per mixer and (grad mode, threads): past it, the eager path (one warning)
FORMAT = b"mixerc-compiled v1"  # the first line of an entry file, with the sha256 of the rest
_WARNED: set[str] = set()


class CompiledWarning(UserWarning):
    """The compiled CPU path is unavailable or failed; the eager lowerings run instead."""


def cxx() -> str | None:
    """The C++ compiler inductor would use: ``$CXX``, else ``c++``/``g++``/``clang++`` on the PATH; None
    when there is none. Asked at every compiled call: the search is remembered per ($CXX, $PATH)."""
    return _find_cxx(os.environ.get("CXX"), os.environ.get("PATH"))


@functools.lru_cache(maxsize=8)
def _find_cxx(cxx_var: str | None, search_path: str | None) -> str | None:
    return find_program((cxx_var, "c++", "g++", "clang++"), search_path)


def warn_once(reason: str, message: str):
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(message, CompiledWarning, stacklevel=3)


def wanted(device: torch.device, plan) -> bool:
    """Whether ``backend="auto"`` compiles ``plan`` on ``device``: a CPU call, ``MIXERC_CPU_COMPILE`` on,
    every lowering of the plan in `ONE_GRAPH` and none a ``scan`` (its fused C loops run faster than the
    compiled chunked lowering), not inside someone else's ``torch.compile`` (the eager
    function is then traced into their graph), and a C++ compiler present (else one warning)."""
    if device.type != "cpu" or not setting("cpu_compile") or torch.compiler.is_compiling():
        return False
    if any((s.structure, s.lowering) not in ONE_GRAPH for s in plan.structures):
        return False
    if any(s.lowering == "scan" for s in plan.structures):  # the fused CPU scan beats the compiled chunked pass
        return False
    if cxx() is None:
        warn_once("cxx", "no C++ compiler found ($CXX, c++, g++ or clang++ on the PATH): backend='auto' runs "
                         "the eager chunked lowering on CPU, several times slower; install g++, or set "
                         "MIXERC_CPU_COMPILE=0 to choose the eager path without this warning")
        return False
    return True


def _point_cache():
    """Inductor's on-disk caches under mixerc's cache dir (a TORCHINDUCTOR_CACHE_DIR the user set wins).
    Inductor reads the variable itself, so it is written to os.environ (as settings.py allows). An entry
    of ours holds inductor's wrapper code; the C++ libraries it loads live here (without them a load
    compiles the C++ again: tens of seconds, not minutes)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(setting("cache_dir") / "inductor"))


def isa_record() -> Path:
    """The file that remembers, for this CPU, compiler and torch, that every vector instruction set the
    CPU's flags announce passed inductor's probe (`remember_isa_probe`)."""
    parts = [torch.__version__, platform.machine(), platform.processor(), str(cxx()), cpu_flags()]
    return compiled_dir() / f"vec-isa-{hashlib.sha256(chr(10).join(parts).encode()).hexdigest()[:16]}.txt"


@contextlib.contextmanager
def remember_isa_probe():
    """Inductor checks, once per process, which vector instruction sets (AVX2, AVX-512, ...) it can use: it
    builds a small library per set and loads each in a child Python (about 1.6 s of a warm start here).
    Around a load or a compile: when an earlier process recorded that every set the CPU's flags announce
    passed that probe, inductor is told so (``config.cpp.vec_isa_ok``, which skips the probes and trusts
    the flags); otherwise it probes, and when every set passed, the result is recorded for later processes.
    A ``vec_isa_ok`` the user set (``TORCHINDUCTOR_VEC_ISA_OK``) is left alone; so is a torch without these."""
    try:
        from torch._inductor import config as inductor_config
        from torch._inductor import cpu_vec_isa
        probed = cpu_vec_isa.valid_vec_isa_list
        announced = probed.__wrapped__  # the same list computed without the probes (when vec_isa_ok is set)
    except (ImportError, AttributeError):
        yield
        return
    record = isa_record()
    if inductor_config.cpp.vec_isa_ok is None and record.is_file():
        inductor_config.cpp.vec_isa_ok = True  # for the process: inductor caches its pick once per process
    yield
    if inductor_config.cpp.vec_isa_ok is not None or record.is_file():
        return
    passed = [str(isa) for isa in probed()]  # the probes ran during the load or compile: cached, no cost
    with inductor_config.patch({"cpp.vec_isa_ok": True}):
        flags = [str(isa) for isa in announced()]
    if passed == flags:
        with contextlib.suppress(OSError):  # an unwritable cache costs a later process the probes, no more
            write_atomic(record, f"every vector ISA the CPU announces passed inductor's probe: {passed}\n")


def entry_bytes(blob: bytes) -> bytes:
    return FORMAT + b" sha256=" + hashlib.sha256(blob).hexdigest().encode() + b"\n" + blob


def parse_entry(data: bytes) -> tuple[bytes | None, str]:
    """``(blob, "")`` for an intact entry file, else ``(None, why)``."""
    head, sep, blob = data.partition(b"\n")
    if not sep or not head.startswith(FORMAT + b" sha256="):
        return None, "has no mixerc-compiled header (truncated, or not written by this mixerc)"
    if head[len(FORMAT) + 8:] != hashlib.sha256(blob).hexdigest().encode():
        return None, "does not match its sha256 (modified or partly written)"
    return blob, ""


@contextlib.contextmanager
def one_accumulator():
    """While compiling: inductor's C++ backend sums a float reduction whose size is a symbol with its
    accurate (cascade) accumulator, rather than choosing by size and guarding on the choice. Its own rule
    (``need_use_acc_helper``: the cascade above 4096 elements) guards on ``b*l <= 4096`` for the gradient of a
    per-head parameter, which split every training entry in two: a second compile of minutes at the
    first long call. Without that method (another torch), nothing is changed."""
    try:
        from torch._inductor.codegen.cpp import CppKernel
    except ImportError:
        yield
        return
    rule = getattr(CppKernel, "need_use_acc_helper", None)
    if rule is None:
        yield
        return

    def need(self, reduction_type, dtype, use_scalar):
        if reduction_type == "sum" and dtype == torch.float and self.call_ranges is not None:
            size = functools.reduce(operator.mul, self.call_ranges[self.reduction_depth:])
            if getattr(size, "free_symbols", None):
                return True
        return rule(self, reduction_type, dtype, use_scalar)

    CppKernel.need_use_acc_helper = need
    try:
        yield
    finally:
        CppKernel.need_use_acc_helper = rule


def data_dependent(e: BaseException) -> bool:
    """Whether dynamo refused because a size depends on the data (a Toeplitz matrix's segments): by
    design, not a failure."""
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, GuardOnDataDependentSymNode):
            return True
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def own_random():
    """The global `random` runs from fresh entropy while mixerc compiles, and the caller's state is put back
    after. torch's precompile keys a graph it cannot hash (any with an autograd Function, as the chunked
    lowering's) in AOTAutograd's cache with a nonce drawn from the global `random`: a user who seeds it before
    building each model (``random.seed(0)``) drew the same nonce for two different mixers, and the second
    compile loaded the first one's graph from that cache (in this process or a later one). Found by
    ``mixerc fuzz --compiled``: hypothesis seeds `random` before each example. The compile also no longer
    moves the caller's stream."""
    state = random.getstate()
    random.seed()
    try:
        yield
    finally:
        random.setstate(state)


def _mark(t: torch.Tensor, dims) -> torch.Tensor:
    """A view of ``t`` whose ``dims`` dynamo traces as symbols (the user's tensor stays unmarked)."""
    v = t.view(t.shape)
    for d in dims:
        torch._dynamo.maybe_mark_dynamic(v, d)
    return v


class CompiledFn:
    """A generated ``mixer`` function compiled ahead of its calls, saved to disk and loaded by later
    processes (dynamo's precompile: `torch.compile(...).aot_compile`, `torch.compiler.load_compiled_function`).

    Each compiled entry serves every call its guards accept (one entry for every length; inductor adds a
    size guard or two). A call no entry in memory accepts looks on disk (another process may have
    compiled it), then compiles a new entry and saves it. A call that fails to compile runs ``fn``
    eagerly, and so does every later call (one warning)."""

    backend = "inductor"  # torch.compile's backend (tests count graphs with a backend of their own)

    def __init__(self, fn, label: str, source: str, varying: dict[str, tuple[int, ...]], plan=None):
        self.fn, self.label, self.varying = fn, label, varying
        self._source_hash = hashlib.sha256(source.encode()).hexdigest()
        self._entries: dict[Path, list] = {}  # entry folder -> loaded entries
        self._seen: set[Path] = set()  # entry files loaded or refused
        self._keys: dict[tuple, str] = {}  # (grad mode, threads) -> the folder's name (see `folder`)
        self.failed: str | None = None  # why no call of this mixer compiles (its lowerings loop over the sequence)
        self.failures: dict[tuple, str] = {}  # (folder, kind of call) -> why its compile or entry failed
        self.refusals: dict[tuple, str] = {}  # the same where dynamo refuses by design (data-dependent sizes)
        self.compiles = 0  # entries this object compiled (not loaded)
        loops = sorted({f"{s.structure}.{s.lowering}" for s in (plan.structures if plan else ())
                        if (s.structure, s.lowering) not in ONE_GRAPH})
        if loops:  # backend="compiled" asked for them by name (`auto` never compiles such a plan: `wanted`)
            self.failed = f"lowering {', '.join(loops)} loops over the sequence"
            warn_once(f"loops {label}", f"backend='compiled': {label}'s {self.failed}, so each length would be a "
                                        "compile of its own (minutes each, unrolled); running the eager lowering "
                                        "instead (the compiled path covers the chunked and fft lowerings)")

    def folder(self) -> Path:
        """Where the entries for this call's context live: the generated code, the backend, the
        versions, the CPU's vector unit, grad mode and torch's thread count (both global state that
        the saved guards do not check; inductor's loops are compiled for a thread count)."""
        context = (torch.is_grad_enabled(), torch.get_num_threads())
        if context not in self._keys:  # hashed once per context, not on every call
            backend = self.backend if isinstance(self.backend, str) else type(self.backend).__qualname__
            parts = [self._source_hash, backend, torch.__version__, platform.python_version(), platform.machine(),
                     torch.backends.cpu.get_cpu_capability(), *map(str, context)]
            self._keys[context] = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
        return compiled_dir() / self._keys[context]

    def _marked(self, kwargs: dict) -> dict:
        """Only the sizes that vary between calls are symbols: the batch and sequence axes of the inputs,
        the batch of the states and ``seq_idx``; heads, channels and states are the compiled dims."""
        out = {k: _mark(v, self.varying[k]) if k in self.varying and v is not None else v for k, v in kwargs.items()}
        if kwargs.get("seq_idx") is not None:
            out["seq_idx"] = _mark(kwargs["seq_idx"], range(kwargs["seq_idx"].dim()))
        if kwargs.get("initial_states") is not None:
            out["initial_states"] = tuple(None if s is None else _mark(s, (0,)) for s in kwargs["initial_states"])
        return out

    @staticmethod
    def kind(kwargs: dict) -> str:
        """Which optional arguments a call passes. A compile or an entry that fails for one kind of call
        sends only that kind to the eager path: segments of a Toeplitz matrix have data-dependent sizes
        (dynamo refuses them), which must not stop the calls without ``seq_idx`` from running compiled."""
        states = kwargs.get("initial_states")
        given = ["seq_idx"] * (kwargs.get("seq_idx") is not None) + \
            ["initial states"] * (states is not None and any(t is not None for t in states))
        return f"calls with {' and '.join(given)}" if given else "calls without seq_idx or initial states"

    def __call__(self, **kwargs):
        if self.failed is not None or torch.compiler.is_compiling():
            return self.fn(**kwargs)
        folder = self.folder()
        key = (folder, self.kind(kwargs))
        if key in self.failures or key in self.refusals:
            return self.fn(**kwargs)
        try:
            entry = self._entry(kwargs, folder)
            if entry is not None:
                return entry(**kwargs)
        except Exception as e:  # noqa: BLE001: whatever dynamo or inductor raises, the eager function decides
            out = self.fn(**kwargs)  # a genuine error in the inputs raises here, with its own message
            cause = getattr(e, "inner_exception", None) or e  # a backend's own error, inside dynamo's wrapper
            why = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0]}"
            refused = data_dependent(e)
            (self.refusals if refused else self.failures)[key] = why
            what = f"cannot take {key[1]}: dynamo refuses data-dependent sizes" if refused else \
                f"failed for {key[1]}"
            warn_once(f"fail {self.label} {key}", f"the compiled CPU path of {self.label} {what} ({why[:300]}); "
                                                  "running the eager lowering for them instead "
                                                  "(set MIXERC_CPU_COMPILE=0 to skip the attempt)")
            return out
        return self.fn(**kwargs)  # past the entry limit

    def _entry(self, kwargs: dict, folder: Path):
        """The entry whose guards accept ``kwargs``: in memory, on disk, or compiled now (None past
        `MAX_ENTRIES`: the eager path, one warning), among the entries of ``folder``."""
        entries = self._entries.setdefault(folder, [])
        for entry in entries:
            if entry.guard_check(**kwargs):
                return entry
        _point_cache()
        with remember_isa_probe() if self.backend == "inductor" else contextlib.nullcontext():
            return self._load_or_compile(kwargs, folder, entries)

    def _load_or_compile(self, kwargs: dict, folder: Path, entries: list):
        for path in sorted(folder.glob("*.bin")) if folder.is_dir() else ():
            if path not in self._seen:
                self._seen.add(path)
                entry = self._load(path)
                if entry is not None:
                    entries.append(entry)
                    if entry.guard_check(**kwargs):
                        return entry
        if len(entries) >= MAX_ENTRIES:
            warn_once(f"many {self.label}", f"{self.label} has {len(entries)} compiled variants for this context "
                                            "and this call fits none: running the eager lowering for such "
                                            "calls (a new dtype, layout or kind of call compiles one each)")
            return None
        return self._compile(kwargs, folder, entries)

    def _load(self, path: Path):
        try:
            blob, why = parse_entry(path.read_bytes())
        except OSError as e:
            blob, why = None, f"is unreadable ({type(e).__name__}: {e.strerror or e})"
        if blob is not None:
            try:
                entry = torch.compiler.load_compiled_function(io.BytesIO(blob), f_globals=self.fn.__globals__)
                entry.disable_guard_check()  # checked by _entry, once per call
                return entry
            except Exception as e:  # noqa: BLE001: an entry another torch wrote, or broken: compile again
                why = f"could not be loaded ({type(e).__name__}: {str(e).strip()[:200]})"
        warnings.warn_explicit(f"compiled entry {why}; ignoring it and compiling again", CacheWarning, str(path), 0)
        return None

    def _compile(self, kwargs: dict, folder: Path, entries: list):
        import torch._functorch.config as functorch_config
        import torch.fx.experimental._config as fx_config

        sys.stderr.write(f"mixerc: compiling {self.label} for CPU (once; cached on disk) ...")
        sys.stderr.flush()
        started, done = time.perf_counter(), False
        try:
            # duck sizing off: a first call with b == l must not tie the batch to the length
            with fx_config.patch(use_duck_shape=False), \
                    functorch_config.patch(force_non_lazy_backward_lowering=True), one_accumulator(), \
                    own_random(), warnings.catch_warnings():
                # the guards read .grad of the marked views (not leaves): torch's warning about it is noise
                warnings.filterwarnings("ignore", "The .grad attribute of a Tensor that is not a leaf", UserWarning)
                compiler = torch.compile(self.fn, dynamic=False, fullgraph=True, backend=self.backend)
                entry = compiler.aot_compile(((), self._marked(kwargs)))
            done = True
        finally:
            sys.stderr.write(f" {time.perf_counter() - started:.1f} s\n" if done else " failed\n")
            sys.stderr.flush()
        self.compiles += 1
        entries.append(entry)
        self._save(entry, folder / f"{os.getpid()}-{time.time_ns()}.bin")
        entry.disable_guard_check()
        if not entry.guard_check(**kwargs):  # the guards of an entry compiled for these very inputs
            raise RuntimeError(f"the compiled {self.label} does not accept the inputs it was compiled for")
        return entry

    def _save(self, entry, path: Path):
        """Write the entry for later processes; a failure costs them a compile, never this call."""
        try:
            write_atomic(path, entry_bytes(type(entry).serialize(entry).serialized_data))
            self._seen.add(path)
        except Exception as e:  # noqa: BLE001
            warn_once(f"save {self.label}", f"the compiled {self.label} could not be saved to {path} "
                                            f"({type(e).__name__}: {str(e).strip()[:200]}): a new process "
                                            "compiles it again")
