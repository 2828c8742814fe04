"""The on-disk cache: generated Triton modules, keyed by IR hash, dims, plan and versions.

Triton reads a kernel's source from its file, so generated Triton code is always imported from a
file here (``$MIXERC_CACHE_DIR``, default ``~/.cache/mixerc``). Writes are atomic (write to a
temporary file, then rename), so concurrent processes never see half a file.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from .settings import setting

_LOADED: dict[str, object] = {}


def cache_dir() -> Path:
    return setting("cache_dir")


def write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def source_path(key: str) -> Path:
    return cache_dir() / "kernels" / f"{key}.py"


def cached_source(key: str, make) -> str:
    """The cached source for ``key``, generated with ``make()`` (and written) when absent."""
    path = source_path(key)
    if path.exists():
        return path.read_text()
    text = make()
    write_atomic(path, text)
    return text


def load_module(key: str, source: str):
    """Import the generated module (once per process): from its cache file, rewritten if it
    differs from ``source``."""
    if key in _LOADED:
        return _LOADED[key]
    path = source_path(key)
    if not path.exists() or path.read_text() != source:
        write_atomic(path, source)
    name = f"mixerc_generated_{key}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    _LOADED[key] = module
    return module
