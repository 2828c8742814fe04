"""Every environment variable mixerc reads, in one place.

`Settings` has one field per variable: its name, default, parser and a one-line doc live in the
field's metadata, and the README's "Environment variables" table is `settings_table()`'s text
(tests/test_settings.py checks it). `settings()` reads the environment now (no caching, so a
changed or monkeypatched variable counts at the next read); ``Settings.from_env(environ, **overrides)``
reads any mapping, keyword arguments winning over it. An empty variable counts as unset. A value
the parser refuses raises `BackendError` naming the variable, the value and what is allowed; the
whole environment is parsed at each read, so a bad value shows at the first read of any setting.

Only reads go through here: code that must *set* a variable for a library that reads it itself
(``TRITON_INTERPRET``, before Triton is imported) writes ``os.environ`` directly.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping

from .ir import BackendError


_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")  # as Triton reads its own switches


def _switch(raw: str) -> bool:
    if raw.lower() not in _ON + _OFF:
        raise ValueError("not a switch")
    return raw.lower() in _ON


def _backend(raw: str) -> str:
    if raw not in _names():
        raise ValueError(f"unknown backend {raw!r}")
    return raw


def _names() -> tuple[str, ...]:
    """Every backend= name: the lowerings and ``compiled`` (the compiled CPU path, mixerc/compiled.py)."""
    from .codegen import backends  # imported when needed: no import cycle through cache.py

    return backends() + ("compiled",)


def _backends() -> str:
    return "choose one of " + ", ".join(_names())


def _autotune(raw: str) -> str:
    if raw not in AUTOTUNE_MODES:
        raise ValueError(f"unknown autotune mode {raw!r}")
    return raw


AUTOTUNE_MODES = ("off", "cached", "full")


def _cpu_threads(raw: str):
    if raw in ("auto", "keep"):
        return raw
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"not a thread policy: {raw!r}")
    return int(raw)


def _allocator(raw: str) -> str:
    if raw not in ("retain", "keep"):
        raise ValueError(f"not an allocator policy: {raw!r}")
    return raw


_SWITCH = "set it to 1 or 0 (or true/false, yes/no, on/off), or leave it unset"


def _var(env: str, doc: str, parse: Callable[[str], object] = str, allowed: str | Callable[[], str] = "",
         default=None, factory: Callable[[], object] | None = None):
    """A `Settings` field read from the variable ``env``; ``doc`` is its row of the README table.
    ``parse`` turns the variable's text into the value, raising ValueError for a bad one (``allowed``
    then says what is allowed); unset or empty, the field is ``default`` (or ``factory()``)."""
    meta = dict(env=env, parse=parse, allowed=allowed, doc=doc)
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    backend: str | None = _var(
        "MIXERC_BACKEND",
        "overrides `backend=\"auto\"` for every call (`reference`, `recurrent`, `chunked`, `triton`, `compiled`)",
        _backend, _backends)
    cache_dir: Path = _var(
        "MIXERC_CACHE_DIR", "where generated Triton modules are cached (default `~/.cache/mixerc`)",
        Path, factory=lambda: Path(os.path.expanduser("~"), ".cache", "mixerc"))
    autotune: str = _var(
        "MIXERC_AUTOTUNE",
        "`cached` (default): a mixer without an explicit `backend=`/`chunk_size=` runs the tuning cache's winner "
        "for its shape bucket (`mixerc autotune`), and a triton call (`auto` on CUDA, or `backend=\"triton\"`) its "
        "cached kernel configs unless `set_kernel_config` chose them; `full`: tunes a missing bucket at its first "
        "call; `off`: the defaults", _autotune, "choose one of off, cached, full", default="cached")
    cpu_threads: str | int = _var(
        "MIXERC_CPU_THREADS",
        "torch threads of a mixer call on the CPU: `auto` (default) runs with fewer threads when other processes "
        "already want the CPUs (docs/contention.md), `keep` never changes torch's count, a number fixes it",
        _cpu_threads, "set it to auto, keep or a positive number of threads", default="auto")
    cpu_allocator: str = _var(
        "MIXERC_CPU_ALLOCATOR",
        "`retain` (default): at the first mixer call on the CPU, glibc keeps freed blocks under 1 GiB in the "
        "process's heap for the next call instead of giving them back to the kernel (docs/cpu_memory.md); "
        "`keep` leaves the C allocator alone", _allocator, "set it to retain or keep", default="retain")
    cpu_compile: bool = _var(
        "MIXERC_CPU_COMPILE",
        "`1`: `backend=\"auto\"` on CPU compiles the default lowerings once with inductor's C++ backend "
        "(`compiled`, docs/compiled_cpu.md); `0` (default, while a first compile takes minutes on small "
        "machines): the eager lowerings", _switch, _SWITCH, default=False)
    triton_interpret: bool | None = _var(  # None: unset (the CLI may then set it for itself)
        "TRITON_INTERPRET",
        "`1` (set before `triton` is imported) runs the Triton kernels on CPU tensors in Triton's "
        "interpreter; `tests/conftest.py` sets it when there is no GPU", _switch, _SWITCH)
    update_golden: bool = _var(
        "MIXERC_UPDATE_GOLDEN",
        "`1` rewrites the golden generated sources in `tests/golden/` instead of comparing against them",
        _switch, _SWITCH, default=False)
    test_interpret: bool | None = _var(  # None: unset (the interpreter lane when there is no GPU)
        "MIXERC_TEST_INTERPRET",
        "tests only: `1` forces the interpreter lane even with a GPU, `0` never sets `TRITON_INTERPRET`",
        _switch, _SWITCH)
    keep_launches: Path | None = _var(
        "MIXERC_KEEP_LAUNCHES",
        "tests only: the file where `tests/test_gpu_compile.py` keeps the kernel launches it compiles "
        "for sm_90 (default: a temporary one), for a look at registers and spills by hand", Path)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides) -> "Settings":
        """The settings ``environ`` gives, each keyword argument (a field name) replacing its
        variable's value."""
        unknown = [name for name in overrides if name not in _VARS]
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(unknown)}; the settings are {', '.join(_VARS)}")
        return cls(**{name: overrides[name] if name in overrides else _read(name, environ) for name in _VARS})


# field name -> (variable, parser, allowed): plain data, as torch.compile traces `settings()` (the
# per-call path reads it) and cannot trace `dataclasses.fields`
_VARS = {f.name: (f.metadata["env"], f.metadata["parse"], f.metadata["allowed"]) for f in fields(Settings)}


def _parse(name: str, raw: str):
    env, parse, allowed = _VARS[name]
    try:
        return parse(raw)
    except ValueError as e:
        allowed = allowed() if callable(allowed) else allowed
        raise BackendError(f"{e.args[0]} (from {env}={raw!r}); {allowed}") from None  # args[0]: dynamo


def setting(name: str):
    """One setting (a `Settings` field name), read now. Only its own variable is parsed, so a
    malformed variable fails only what reads it; the library reads its settings this way."""
    return _read(name, os.environ)


def _read(name: str, environ: Mapping[str, str]):
    raw = environ.get(_VARS[name][0])
    return _parse(name, raw) if raw else _DEFAULTS[name]()  # an empty variable counts as unset


# field name -> its value when the variable is unset (a function: the cache dir follows $HOME)
_DEFAULTS = {f.name: (f.default_factory if f.default_factory is not MISSING else (lambda v=f.default: v))
             for f in fields(Settings)}


def settings(**overrides) -> Settings:
    """The settings of the current environment (``os.environ``, read now), keyword arguments
    winning over it."""
    return Settings.from_env(os.environ, **overrides)


def settings_table() -> str:
    """The README's "Environment variables" table: one row per `Settings` field."""
    rows = [f"| `{f.metadata['env']}` | {f.metadata['doc']} |" for f in fields(Settings)]
    return "\n".join(["| variable | effect |", "|---|---|", *rows]) + "\n"
