"""Compile recorded Triton launches ahead of time for a GPU target, without a GPU.

Run as a script in a process WITHOUT ``TRITON_INTERPRET`` (the interpreter replaces ``@triton.jit``
functions by objects the compiler cannot take):

    python tests/aot_compile.py launches.json [--arch 90] [--regs]

``launches.json`` (written by tests/test_gpu_compile.py) lists kernels by generated-module path
and name with the dtypes and values of their arguments. Each one is compiled through Triton's
whole pipeline down to a cubin with the bundled ptxas; one line per kernel is printed, and the exit
code is 1 if any failed. ``--regs`` adds each kernel's registers and spills (``ptxas -v``), the
closest thing to a performance check without a GPU (spills are what to avoid):

    MIXERC_CACHE_DIR=/tmp/mxc MIXERC_KEEP_LAUNCHES=/tmp/launches.json python -m pytest tests/test_gpu_compile.py
    python tests/aot_compile.py /tmp/launches.json --regs
"""

import importlib.util
import json
import subprocess
import sys
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def _module(path: str, cache: dict):
    if path not in cache:
        spec = importlib.util.spec_from_file_location(f"aot_{len(cache)}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        cache[path] = mod
    return cache[path]


def ptxas_report(ptx: str, arch: int) -> str:
    """Registers and spills of a kernel's PTX, from the newest ptxas Triton ships."""
    import triton.knobs as knobs

    for tool in (knobs.nvidia.ptxas_blackwell, knobs.nvidia.ptxas):
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(ptx)
        out = subprocess.run([tool.path, "-v", "--gpu-name", f"sm_{arch}a", f.name, "-o", "/dev/null"],
                             capture_output=True, text=True)
        text = out.stdout + out.stderr
        if out.returncode == 0:
            return " ".join(line.split("info    : ")[-1].strip() for line in text.splitlines()
                            if "registers" in line or "spill" in line)
    return "ptxas -v failed: " + text.strip().splitlines()[-1]


def main(argv):
    records = json.load(open(argv[0]))
    arch = int(argv[argv.index("--arch") + 1]) if "--arch" in argv else 90
    target = GPUTarget("cuda", arch, 32)
    modules, failed = {}, 0
    for rec in records:
        kernel = getattr(_module(rec["module"], modules), rec["kernel"])
        signature, constexprs = {}, {}
        for name, kind, value in rec["args"]:
            if kind == "constexpr":
                constexprs[name] = getattr(tl, value[3:]) if isinstance(value, str) and value.startswith("tl.") else value
                signature[name] = "constexpr"
            else:
                signature[name] = kind
        try:
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                                      target=target, options=rec["options"])
            regs = "  " + ptxas_report(compiled.asm["ptx"], arch) if "--regs" in argv else ""
            print(f"ok   {rec['kernel']:28s} shared={compiled.metadata.shared} B  {rec['what']}{regs}")
        except Exception as e:  # noqa: BLE001 - report every kernel, then fail
            failed += 1
            print(f"FAIL {rec['kernel']:28s} {rec['what']}: {type(e).__name__}: {str(e)[:2000]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
