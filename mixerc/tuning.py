"""The tuning cache: which lowering and chunk size (CPU) or which Triton kernel configs (GPU) won
`mixerc autotune` for a spec, dims, device, dtype and length bucket, as readable JSON under
``$MIXERC_CACHE_DIR/tuning/``.

One file per key. The key holds the spec's IR hash, the generator's code hash, the device's name,
torch and Triton versions, the dtype, the dims and the length bucket: every sequence axis rounded up
to a power of two (never the exact length), so l=5000 and l=8192 share an entry. A file names its key
fields and carries a sha256 of its content (`mixerc.cache.digest`); it is written atomically
(`mixerc.cache.write_atomic`). A file that is not JSON, fails its sha256, holds another key, or names
lowerings this spec no longer has is ignored with one `CacheWarning`, never an error.

`CompiledMixer` calls `lookup` for their shape bucket when ``MIXERC_AUTOTUNE`` is ``cached`` (the
default) or ``full``; entries loaded from an exported file with `load_tuning` win over the cache.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from . import cache
from .codegen import lowering_of
from .ir import STRUCTURES, BackendError, InputError

FORMAT = "mixerc-tuning v1"
EXPORT_FORMAT = "mixerc-tuning-export v1"
CHUNKED = ("chunked",)  # the CPU lowerings that take a chunk size
_PINNED: dict[str, dict] = {}  # file name -> entry, from load_tuning: wins over the cache
_WARNED: set[str] = set()  # entries already warned about in this process (one warning each)
TUNING = [False]  # True while the autotuner runs: mixers then never tune on first use (no recursion)
TUNER: list = [None]  # mixerc.autotune.tune, registered by that module (MIXERC_AUTOTUNE=full calls it)
GENERATION = [0]  # bumped by every store/clear/load: mixers re-read what they memoised


@dataclass(frozen=True)
class Choice:
    """What one structure application runs: its lowering and (for ``chunked``/``grid``) chunk size; on
    the ``triton`` lowering, ``kernel``: its kernels' config, ``((key, value), ...)`` sorted by key."""

    node: str
    structure: str
    lowering: str
    chunk: int | None
    kernel: tuple = ()

    def label(self) -> str:
        if self.kernel:
            return "triton[" + ",".join(f"{k}={v}" for k, v in self.kernel) + "]"
        return self.lowering + (f"/{self.chunk}" if self.chunk is not None else "")

    def as_dict(self) -> dict:
        """As JSON (and ``mixer.config``) shows it: ``kernel`` a dict, left out when empty."""
        d = {"node": self.node, "structure": self.structure, "lowering": self.lowering, "chunk": self.chunk}
        return {**d, "kernel": dict(self.kernel)} if self.kernel else d

    @classmethod
    def of(cls, d: dict) -> Choice:
        """The inverse of `as_dict` (raises TypeError, KeyError or AttributeError on a malformed one)."""
        kernel = tuple(sorted(d.get("kernel", {}).items()))
        return cls(d["node"], d["structure"], d["lowering"], d["chunk"], kernel)


def label(config: tuple) -> str:
    """``chunked/64`` (one structure) or ``m1=chunked/64,m2=fft``."""
    if len(config) == 1:
        return config[0].label()
    return ",".join(f"{c.node}={c.label()}" for c in config)


def default_config(plan) -> tuple:
    """The choices of a torch plan (``codegen.plan(graph, "auto")``: each structure's default)."""
    return tuple(Choice(s.node, s.structure, s.lowering, s.chunk_size if s.lowering in CHUNKED else None)
                 for s in plan.structures)


def kernel_choices(plan, configs) -> tuple:
    """The `Choice`s of a triton plan run with ``configs`` (one mapping per structure application)."""
    return tuple(Choice(s.node, s.structure, "triton", int(cfg["chunk"]) if "chunk" in cfg else None,
                        tuple(sorted((k, int(v)) for k, v in cfg.items())))
                 for s, cfg in zip(plan.structures, configs))


def bucket(n: int) -> int:
    """The power of two at or above ``n`` (1 for 0)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu {model} ({torch.get_num_threads()} threads)"


def _triton_version() -> str:
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return "none"


@functools.lru_cache(maxsize=None)
def generator_hash() -> str:
    """The code generators' hash (`codegen.triton_common.code_hash`), once per process."""
    from .codegen.triton_common import code_hash

    return code_hash()


def key_fields(graph, sizes: dict, dtype: torch.dtype, device: str, lengths: dict, backward: bool = False,
               backend: str = "torch") -> dict:
    """Everything a winner depends on. ``lengths``: the sequence axes' sizes (bucketed here);
    ``backward``: tuned for forward + backward (a training call), else the forward alone; ``backend``:
    ``torch`` (the CPU lowerings) or ``triton`` (the kernels' configs; on ``cpu``, Triton's interpreter)."""
    return {"spec": graph.name, "ir_hash": graph.hash(), "generator": generator_hash(), "device": device_name(device),
            "backend": backend,
            "torch": torch.__version__, "triton": _triton_version(), "dtype": str(dtype).replace("torch.", ""),
            "dims": {k: int(v) for k, v in sorted(sizes.items())},
            "bucket": {ax: bucket(n) for ax, n in sorted(lengths.items())},
            "pass": "forward+backward" if backward else "forward"}


def file_name(fields: dict) -> str:
    text = json.dumps(fields, sort_keys=True)
    safe = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in fields["spec"])
    return f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"


def tuning_dir() -> Path:
    return cache.cache_dir() / "tuning"


def _body(entry: dict) -> str:
    return json.dumps({k: v for k, v in entry.items() if k != "sha256"}, sort_keys=True)


def make_entry(fields: dict, winner: tuple, default: tuple, measured: dict) -> dict:
    entry = {"format": FORMAT, "key": fields, "winner": [c.as_dict() for c in winner],
             "default": [c.as_dict() for c in default], "measured": measured}
    entry["sha256"] = cache.digest(file_name(fields), _body(entry))
    return entry


def store(fields: dict, winner: tuple, default: tuple, measured: dict) -> Path:
    """Write the entry of ``fields`` atomically; returns its path."""
    entry = make_entry(fields, winner, default, measured)
    path = cache.write_atomic(tuning_dir() / file_name(fields), json.dumps(entry, indent=1, sort_keys=True) + "\n")
    GENERATION[0] += 1
    return path


def _why_bad(entry, name: str, fields: dict | None) -> str:
    """Why ``entry`` (parsed JSON) cannot be used for the file ``name`` (and key ``fields``), or ""."""
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        return f"is not a tuning entry of format {FORMAT!r}"
    if entry.get("sha256") != cache.digest(name, _body(entry)):
        return "does not match its sha256 (modified or partly written)"
    if fields is not None and entry.get("key") != fields:
        return "holds the entry of another key (stale: copied or renamed over it)"
    try:
        winner = tuple(Choice.of(c) for c in entry["winner"])
    except (TypeError, KeyError, AttributeError):
        return "has a malformed winner"
    triton = entry.get("key", {}).get("backend") == "triton"
    for c in winner:
        sdef = STRUCTURES.get(c.structure)
        if sdef is None or c.lowering not in sdef.lowerings or c.lowering == "reference" or (
                (c.lowering == "triton") != triton):
            return f"names lowering {c.lowering!r} of {c.structure!r}, which this mixerc cannot tune (stale)"
        if c.chunk is not None and (not isinstance(c.chunk, int) or c.chunk < 1):
            return f"has chunk {c.chunk!r}, not a positive integer"
        if triton and not all(isinstance(k, str) and isinstance(v, int) for k, v in c.kernel):
            return "has a kernel config that is not names and integers"
    return ""


def read(path: Path, fields: dict | None = None) -> tuple[dict | None, str]:
    """``(entry, "")`` when ``path`` holds a valid entry (of ``fields``, when given), else ``(None, why)``
    (``why`` empty when there is no file)."""
    if not os.path.lexists(path):
        return None, ""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        return None, f"is unreadable ({type(e).__name__})"
    except json.JSONDecodeError as e:
        return None, f"is not JSON ({e.msg} at line {e.lineno})"
    why = _why_bad(entry, path.name, fields)
    return (None, why) if why else (entry, "")


def warn_once(path, why: str) -> None:
    if str(path) in _WARNED:
        return
    _WARNED.add(str(path))
    warnings.warn_explicit(" ".join(f"tuning entry {Path(path).name} {why}; ignored it (the default runs): "
                                    "run mixerc autotune again, or mixerc autotune --clear".split()),
                           cache.CacheWarning, str(path), 0)


def winner_of(entry: dict, plan, spaces=None) -> tuple | None:
    """The entry's winner as `Choice`s, when it fits the structure applications of ``plan`` (and, for
    triton configs, the config ``spaces`` of its kernels, one per application)."""
    winner = tuple(Choice.of(c) for c in entry["winner"])
    if [(c.node, c.structure) for c in winner] != [(s.node, s.structure) for s in plan.structures]:
        return None
    for k, (c, s) in enumerate(zip(winner, plan.structures)):
        if not STRUCTURES[c.structure].supports(c.lowering, s.layout):
            return None
        if c.kernel:
            from .rt.triton import check_config

            try:
                check_config(spaces[k], dict(c.kernel))
            except (BackendError, TypeError, IndexError):
                return None
            if set(dict(c.kernel)) != set(spaces[k]):
                return None
    return winner


def lookup(fields: dict, plan, spaces=None) -> tuple[tuple | None, str, str | None]:
    """``(winner, source, where)`` for ``fields``: a loaded file's entry (source ``"file"``), else the
    cache's (``"cache"``), else ``(None, "default", None)``. A bad entry warns once and counts as none.
    ``spaces``: the kernels' config spaces, for a triton key (a winner outside them is stale)."""
    name = file_name(fields)
    if name in _PINNED:
        entry, where = _PINNED[name], _PINNED[name]["_from"]
        winner = winner_of(entry, plan, spaces)
        if winner is not None:
            return winner, "file", where
        warn_once(where, "does not fit this spec's structure applications")
    path = tuning_dir() / name
    entry, why = read(path, fields)
    if entry is not None:
        winner = winner_of(entry, plan, spaces)
        if winner is not None:
            return winner, "cache", str(path)
        why = "does not fit this spec's structure applications (stale)"
    if why:
        warn_once(path, why)
    return None, "default", None


def entries() -> list[tuple[Path, dict | None, str]]:
    """Every file of the tuning directory: ``(path, entry or None, why not)``, sorted."""
    d = tuning_dir()
    out = []
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        entry, why = read(p)
        out.append((p, entry, why))
    return out


def clear() -> int:
    """Remove every tuning entry (and temporary files of writers that died); the number removed."""
    d = tuning_dir()
    n = 0
    for p in [*d.glob("*.json"), *d.glob(".*.tmp")] if d.is_dir() else []:
        p.unlink()
        n += 1
    GENERATION[0] += 1
    return n


def export(path) -> int:
    """Write every valid entry of the cache to ``path`` (one JSON file to commit beside a deployment);
    the number written. Load it back with `load_tuning`."""
    good = [entry for _, entry, _ in entries() if entry is not None]
    cache.write_atomic(Path(path), json.dumps({"format": EXPORT_FORMAT, "entries": good}, indent=1,
                                              sort_keys=True) + "\n")
    return len(good)


def load_tuning(path) -> int:
    """Pin the winners of an exported file (`mixerc autotune --export`) for this process: they win over
    the tuning cache, and ``mixer.config`` names the file. Returns the number of entries loaded. A file
    that cannot be read, or is not an export, raises `InputError`; an entry inside it that fails its
    checks is skipped with a `CacheWarning`."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"load_tuning({str(path)!r}): cannot read it ({type(e).__name__}: {e.strerror or e}); "
                         "pass the file mixerc autotune --export wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"load_tuning({str(path)!r}): not JSON ({e}); pass the file mixerc autotune "
                         "--export wrote") from None
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT or not isinstance(data.get("entries"), list):
        raise InputError(f"load_tuning({str(path)!r}): not a tuning export (expected format {EXPORT_FORMAT!r}); "
                         "write one with mixerc autotune --export FILE")
    n = 0
    for k, entry in enumerate(data["entries"]):
        fields = entry.get("key") if isinstance(entry, dict) else None
        name = file_name(fields) if isinstance(fields, dict) and "spec" in fields else f"entry {k}"
        why = _why_bad(entry, name, None) if fields else "has no key"
        if why:
            warn_once(f"{p}#{k}", why)
            continue
        _PINNED[name] = {**entry, "_from": str(p)}
        n += 1
    GENERATION[0] += 1
    return n


def unload_tuning() -> None:
    """Forget every file `load_tuning` pinned (the cache decides again)."""
    _PINNED.clear()
    GENERATION[0] += 1


def uses_chunk(lowering: str) -> bool:
    return lowering in CHUNKED


def default_chunk(structure: str, layout: dict) -> int:
    return int(lowering_of(structure).default_chunk(layout))
