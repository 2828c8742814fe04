"""The generated Triton kernels compile for a real GPU (sm_90, H100), checked without one.

The interpreter lane runs the kernels but accepts constructs a GPU compiler would reject (and vice
versa it cannot show shared-memory overflows). Here every kernel launched by a forward, a backward
and a decode step of `mamba2` (at the issue's p=64, n=128 tile sizes), of `mamba`, of `hydra` (both
directions in one grid) and of the 2-D `ssm2d` (grid2d's kernels at h=8, p=64, n=16) is recorded
with the dtypes and constexprs of its arguments, then compiled through Triton's whole pipeline down
to a cubin with the ptxas Triton bundles, in a child process without TRITON_INTERPRET
(tests/aot_compile.py). Half-precision launches are compiled for both fp16 and bf16 operands.
"""

import inspect
import json
import os
import subprocess
import sys

import pytest
import torch

import mixerc as mx
from mixerc.check import random_inputs
from mixerc.rt import triton as triton_rt
from mixerc.settings import settings

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = [pytest.mark.skipif(not settings().triton_interpret,
                                 reason="records launches in the interpreter lane (a GPU runs the kernels instead)"),
              pytest.mark.slow]  # ~90 s of ptxas: `pytest -m slow` (.ci/run runs it)

_PTR = {torch.float32: "*fp32", torch.float64: "*fp64", torch.float16: "*fp16", torch.bfloat16: "*bf16",
        torch.int64: "*i64", torch.int32: "*i32"}


def _describe(value):
    import triton.language as tl

    for name in ("float16", "bfloat16", "float32", "float64"):
        if value == getattr(tl, name):
            return "constexpr", f"tl.{name}"
    if isinstance(value, torch.Tensor):
        return _PTR[value.dtype], None
    if value is None or isinstance(value, (bool, str)):
        return "constexpr", value
    if isinstance(value, int):
        return ("i32" if abs(value) < 2**31 else "i64"), None
    raise TypeError(f"unexpected kernel argument {value!r}")


_LAUNCH = triton_rt.launch


def _record(records: list, what: str):
    real = _LAUNCH

    def launch(template, name, kernel, grid, *args, **kwargs):
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
        sig = inspect.signature(kernel.fn).parameters
        values = dict(zip(sig, args)) | kwargs
        described = []
        for p, param in sig.items():
            kind, value = _describe(values[p])
            if "constexpr" in str(param.annotation):
                kind, value = "constexpr", value if value is not None else values[p]
            described.append((p, kind, value))
        records.append(dict(module=kernel.fn.__code__.co_filename, kernel=kernel.fn.__name__, what=what,
                            options=options, args=described))
        return real(template, name, kernel, grid, *args, **kwargs, **options)

    return launch


def _exercise(spec, dims, chunk, dtype, b, l):
    m = mx.compile(spec, dims=dims, backend="triton", chunk_size=chunk)
    g = torch.Generator().manual_seed(0)
    ins = {}
    for name in m.ir.inputs:
        shape = [b if d == "b" else l if d == "l" else m.sizes[d] for d in m.ir.node(name).dims]
        ins[name] = torch.randn(*shape, generator=g).to(dtype).requires_grad_(True)
    seq_idx = torch.zeros(b, l, dtype=torch.long)
    if m.init_state(b) is None:  # non-causal (hydra): no state, no step
        m(**ins, seq_idx=seq_idx).float().sum().backward()
        return
    s0 = m.init_state(b).requires_grad_(True)
    y, s = m(**ins, initial_state=s0, return_final_state=True, seq_idx=seq_idx)
    (y.float().sum() + s.sum()).backward()
    m.step(m.init_state(b), **{k: v[:, 0].detach() for k, v in ins.items()})


def _as_bf16(rec):
    swap = {"*fp16": "*bf16", "tl.float16": "tl.bfloat16"}
    return dict(rec, what=rec["what"].replace("fp16", "bf16"),
                args=[(p, swap.get(k, k), swap.get(v, v) if isinstance(v, str) else v) for p, k, v in rec["args"]])


def _exercise_grid(spec, dims, dtype, b, v, l):
    """A 2-D spec: forward from an initial state, backward through the output and the final state,
    one decode step (no seq_idx: the grid2d kernels take no segments)."""
    m = mx.compile(spec, dims=dims, backend="triton")
    g = torch.Generator().manual_seed(0)
    ins = {name: t.to(dtype).requires_grad_(True)
           for name, t in random_inputs(m, b, l, g, dtype=torch.float32, axes={"v": v}).items()}
    s0 = m.init_state(b, v=v).requires_grad_(True)
    y, s = m(**ins, initial_state=s0, return_final_state=True)
    (y.float().sum() + s.sum()).backward()
    m.step(m.init_state(b, v=v), **{k: t[:, :, 0].detach() for k, t in ins.items()})


def _compile_recorded(records, tmp_path) -> tuple[int, str]:
    """Compile the recorded launches (fp16 ones also as bf16) in a child without TRITON_INTERPRET:
    (how many unique launches, the child's output)."""
    records = records + [_as_bf16(r) for r in records if "fp16" in r["what"]]
    unique = list({json.dumps({k: v for k, v in r.items() if k != "what"}, sort_keys=True): r
                   for r in records}.values())
    # MIXERC_KEEP_LAUNCHES keeps them, for a look at registers and spills by hand
    path = settings().keep_launches or tmp_path / "launches.json"
    path.write_text(json.dumps(unique))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, os.path.join(HERE, "aot_compile.py"), str(path)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    return len(unique), out.stdout


def test_grid2d_kernels_compile_for_sm90(tmp_path, monkeypatch):
    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton build has no NVIDIA backend")
    records: list = []
    for dtype in (torch.float32, torch.float16):
        monkeypatch.setattr(triton_rt, "launch", _record(records, f"ssm2d {str(dtype)[6:].replace('float', 'fp')}"))
        _exercise_grid(mx.load_spec("ssm2d"), dict(h=8, p=64, n=16, g=1), dtype, b=1, v=2, l=3)
    assert {r["kernel"] for r in records} == {"k0_fwd", "k0_bwd"}
    n, out = _compile_recorded(records, tmp_path)
    assert out.count("ok ") == n


def test_every_kernel_compiles_for_sm90(tmp_path, monkeypatch):
    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton build has no NVIDIA backend")
    records: list = []
    for spec, dims, chunk, l in (("mamba2", dict(h=2, p=64, n=128, g=1), 64, 64), ("mamba", dict(d=32, n=16), 16, 20),
                                 ("hydra", dict(h=2, p=64, n=64, g=1), 64, 64)):
        for dtype in (torch.float32, torch.float16):
            what = f"{spec} {str(dtype)[6:].replace('float', 'fp')}"
            monkeypatch.setattr(triton_rt, "launch", _record(records, what))
            _exercise(spec, dims, chunk, dtype, b=1, l=l)
    n, out = _compile_recorded(records, tmp_path)
    assert out.count("ok ") == n
