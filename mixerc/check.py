"""`check`: every lowering of a spec against its ``reference`` lowering, forward and backward, in fp64.

Used by ``mixerc check`` and by the tests. The reference lowering materialises M densely; the
recurrent and chunked lowerings share no code with it beyond the generated prologue/epilogue.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

import torch

from .codegen import torch_backends
from .compiler import compile as compile_spec
from .ir import STRUCTURES
from .ir.dims import BATCH, LENGTH
from .settings import setting


@dataclass
class CheckResult:
    lowering: str
    forward: float  # max relative error of y
    state: float | None  # of the final state(s); None for a spec without state
    grads: float  # max over inputs, parameters and the initial state
    step: float | None  # of prefill + step() decode vs forward (the first torch row after reference, and triton)
    tol: float
    worst: str = ""  # the tensor with the largest error ("grad A_log", "final state 0", ...)

    @property
    def ok(self) -> bool:
        errs = [self.forward, self.state, self.grads, self.step]
        return all(e <= self.tol for e in errs if e is not None)


def _rel(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-30) -> float:
    """max |a - b| / max |b|, the denominator at least ``floor``. NaN where ``b`` has NaN (a sequence
    op's past holding no position) must be NaN in ``a`` too; elsewhere ``a`` must be finite."""
    gap = b.isnan()
    if gap.any():
        if not torch.equal(a.isnan(), gap):
            return float("inf")
        a, b = a.masked_fill(gap, 0.0), b.masked_fill(gap, 0.0)
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp_min(floor))


def random_inputs(mixer, b: int, l: int, generator=None, dtype=torch.float64, axes: dict | None = None) -> dict:
    """Standard normal values; timestamps (``kind="time"``) are int64 Unix seconds from 1.7e9 with
    gaps of 0 to 1000 s. A 2-D spec's other sequence axis has the size ``axes`` gives (default 3)."""
    out = {}
    sizes = {**mixer.sizes, **{ax: 3 for ax in mixer.ir.seq_axes[:-1]}, **(axes or {}), BATCH: b, LENGTH: l}
    for name in mixer.ir.inputs:
        node = mixer.ir.node(name)
        shape = [sizes[d] for d in node.dims]
        if node.attrs.get("kind") == "time":
            gaps = torch.randint(0, 1001, shape, generator=generator)
            out[name] = 1_700_000_000 + gaps.cumsum(node.dims.index(LENGTH))
        else:
            out[name] = torch.randn(*shape, generator=generator, dtype=dtype)
    return out


def _flat_states(s):
    return [s] if isinstance(s, torch.Tensor) or s is None else list(s)


def _pack(states):
    """The ``initial_state`` argument: None, one tensor, or a tuple (None for stateless ones)."""
    if not states:
        return None
    return states[0] if len(states) == 1 else tuple(states)


def _supported(graph, lows) -> tuple[str, ...]:
    applies = [(STRUCTURES[graph.node(a.args[0]).op], a.attrs["layout"]) for a in graph.nodes_of("apply")]
    return tuple(low for low in lows if all(sd.supports(low, lay) for sd, lay in applies))


def default_lowerings(graph=None) -> tuple[str, ...]:
    """The torch lowerings (those every structure of ``graph`` has), plus ``triton`` when its
    kernels can run on CPU tensors in this process (``TRITON_INTERPRET=1``)."""
    lows = torch_backends() + (("triton",) if setting("triton_interpret") else ())
    return lows if graph is None else _supported(graph, lows)


def cli_lowerings(graph) -> tuple[str, ...]:
    """What ``mixerc check`` runs: every lowering every structure of ``graph`` has, ``triton``
    included (in this process under ``TRITON_INTERPRET=1``, else in a child process that sets it:
    `InterpretedCheck`)."""
    return _supported(graph, torch_backends() + ("triton",))


_MARK = "MIXERC_CHECK_RESULT "


class InterpretedCheck:
    """`run_check` of some lowerings (``triton``) in a child Python with ``TRITON_INTERPRET=1``:
    Triton reads the variable when it is first imported, so a process that did not set it at
    start (or already imported Triton) cannot run the kernels on CPU tensors itself. ``spec`` is
    what `load_spec` takes (a built-in name or a path). `start` launches the child, `finish` waits
    and returns ``(results, problem)``: the child's `CheckResult`s, or ``([], (kind, message))``
    with ``kind`` ``"skipped"`` (Triton cannot run here) or ``"error"`` (the lowering raised)."""

    def __init__(self, spec: str, dims: dict, **kwargs):
        self.payload = json.dumps({"spec": os.fspath(spec), "dims": dims, **kwargs})
        self.proc = None

    def start(self) -> "InterpretedCheck":
        code = "import sys, mixerc.check as c; c.interpreted_child(sys.argv[1])"
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", code, self.payload], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        return self

    def finish(self) -> tuple[list[CheckResult], tuple[str, str] | None]:
        out, err = self.proc.communicate()
        for line in reversed(out.splitlines()):
            if line.startswith(_MARK):
                msg = json.loads(line[len(_MARK):])
                if "results" in msg:
                    return [CheckResult(**r) for r in msg["results"]], None
                return [], (msg["kind"], msg["message"])
        tail = " ".join((err.strip().splitlines() or ["no output"])[-1:])
        return [], ("error", f"the child process exited with status {self.proc.returncode}: {tail}")


def interpreted_child(payload: str) -> None:
    """The child side of `InterpretedCheck`: one JSON line on stdout."""
    from .loader import load_spec

    args = json.loads(payload)
    try:
        import triton  # noqa: F401
    except Exception as e:  # not installed, or no build for this platform
        print(_MARK + json.dumps({"kind": "skipped", "message": f"Triton cannot be imported here "
                                  f"({type(e).__name__}: {e})"}), flush=True)
        return
    try:
        spec = load_spec(args.pop("spec"))
        results = run_check(spec, args.pop("dims"), **args)
    except Exception as e:
        msg = " ".join(f"{type(e).__name__}: {e}".split())
        print(_MARK + json.dumps({"kind": "error", "message": msg}), flush=True)
        return
    print(_MARK + json.dumps({"results": [asdict(r) for r in results]}), flush=True)


def _prefill_and_decode(m, inputs: dict, states: list, split: int) -> torch.Tensor:
    """The forward over the first ``split`` positions, then `step` one position at a time from its
    final state: the outputs of both, concatenated."""
    ys = []
    ax = len(m.ir.lead) - 1  # l: after b and a 2-D spec's other axis
    st = _pack([s.clone() for s in states])  # triton's step updates the state in place: copies
    with torch.no_grad():
        if split:
            y, st = m(**{k: v.narrow(ax, 0, split) for k, v in inputs.items()}, initial_state=st,
                      return_final_state=True)
            ys.append(y)
        for t in range(split, next(iter(inputs.values())).shape[ax]):
            yt, st = m.step(st, **{k: v.select(ax, t) for k, v in inputs.items()})
            ys.append(yt.unsqueeze(ax))
    return torch.cat(ys, ax)


@contextlib.contextmanager
def seeded(seed: int):
    """torch's global generator seeded with ``seed`` inside the block, and the caller's state put back after
    it (random parameter inits are drawn from the global generator)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def run_check(spec, dims: dict, b: int = 2, l: int = 37, lowerings=None, chunk_size: int = 16,
              seed: int = 0, tol: float = 1e-9, seq_idx: bool = True, floor: float = 1e-30,
              axes: dict | None = None, configure=None, jitter: float = 0.0) -> list[CheckResult]:
    """Compare every lowering with ``reference`` on random fp64 inputs, a random initial state and
    (with ``seq_idx``) three packed segments, all drawn from ``seed`` (so are random parameter inits; the
    caller's global generator is left as it was). Errors are relative to the largest reference value, or to
    ``floor`` when that is smaller (the fuzzer's random specs can cancel to an exact zero,
    against which any roundoff is infinitely wrong). ``configure(lowering, mixer)`` runs on each
    compiled mixer before it is checked (the fuzzer sets the triton kernels' configs with it). ``jitter``:
    every parameter element is its init value times a factor drawn from [1 - jitter, 1 + jitter] (from
    ``seed``), so that parameters with the same init do not tie."""
    g = torch.Generator().manual_seed(seed)
    with seeded(seed):  # random parameter inits from ``seed`` too: a call's numbers are its arguments'
        ref = compile_spec(spec, dims=dims, backend="reference", dtype=torch.float64)
    if jitter:
        gj = torch.Generator().manual_seed(seed + 1)  # apart from g: the inputs stay those of the seed
        with torch.no_grad():
            for p in ref.parameters():
                p.mul_(1 + jitter * (2 * torch.rand(p.shape, generator=gj, dtype=p.dtype) - 1))
    inputs = random_inputs(ref, b, l, g, axes=axes)
    states = [None if s is None else torch.randn(s, generator=g, dtype=torch.float64)
              for s in ref.state_shapes(b, **ref.axes_of(inputs))]
    times = [v for k, v in inputs.items() if ref.ir.node(k).attrs.get("kind") == "time"]
    ax = len(ref.ir.lead) - 1  # l (a timestamp's past replaces it with its window)
    for k, exact in enumerate(ref.exact_states):  # a timestamp's past: earlier timestamps
        if exact:
            first = times[0].narrow(ax, 0, 1).double()
            first = first.reshape(*first.shape, *[1] * (states[k].dim() - first.dim()))
            gaps = torch.randint(1, 1000, states[k].shape, generator=g).double()
            states[k] = first - gaps.flip(ax).cumsum(ax).flip(ax)
    stateful = any(s is not None for s in states)
    if not stateful:
        states = []
    seg = None
    if seq_idx and l >= 3 and not ref.unsegmented:
        seg = torch.zeros(b, l, dtype=torch.long)
        seg[:, l // 3:] = 1
        seg[:, (2 * l) // 3:] = 2

    def run(m, seg):
        ins = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
        s0 = [None if s is None else s.clone().requires_grad_(True) for s in states]
        y, fin = m(**ins, initial_state=_pack(s0), return_final_state=True, seq_idx=seg)
        fins = [f for f in _flat_states(fin) if f is not None]
        loss = (y * torch.cos(torch.arange(y.numel(), dtype=y.dtype).view_as(y))).sum()
        loss = loss + sum((f * f).sum() for f in fins)
        named = [*((k, v) for k, v in ins.items() if v.requires_grad), *m.named_parameters(),
                 *((f"initial state {i}", s) for i, s in enumerate(s0) if s is not None)]
        # a loss that depends on nothing (a quasiseparable matrix at l = 1 is zero) has zero gradients
        grads = torch.autograd.grad(loss, [x for _, x in named], allow_unused=True) if loss.requires_grad \
            else [None] * len(named)
        grads = {f"grad {k}": torch.zeros_like(x) if gr is None else gr for (k, x), gr in zip(named, grads)}
        return y.detach(), [f.detach() for f in fins], grads

    refs = {seg is None: run(ref, seg)}  # keyed by "unsegmented": a row whose lowering refuses seq_idx runs without
    # step() knows no segments: prefill + decode is compared with an unsegmented forward
    # a non-causal structure has no step, nor has a sequence op that reads ahead
    decodes = stateful and all(s is not None for s in states) and not ref.reads_ahead
    with torch.no_grad():
        y_plain = ref(**inputs, initial_state=_pack(states))
    results = []
    lows = lowerings or default_lowerings(ref.ir)
    decode_row = next((low for low in lows if low not in ("reference", "triton")), None)  # one torch row
    for low in lows:
        with seeded(seed):  # (its inits are the reference's: drawn here only to leave the caller's stream alone)
            m = compile_spec(spec, dims=dims, backend=low, dtype=torch.float64, chunk_size=chunk_size)
        m.load_state_dict(ref.state_dict())
        if configure is not None:
            configure(low, m)
        plain = seg is None or bool(m.segment_refusals())
        if plain not in refs:
            refs[plain] = run(ref, None)
        y_ref, s_ref, g_ref = refs[plain]
        y, s, grads = run(m, None if plain else seg)
        errs = {"grad " + k[5:]: _rel(a, g_ref[k], floor) for k, a in grads.items()}
        errs.update({f"final state {i}": _rel(a, r, floor) for i, (a, r) in enumerate(zip(s, s_ref))})
        step_err = None
        if low in (decode_row, "triton") and decodes:
            step_err = _rel(_prefill_and_decode(m, inputs, states, l // 2), y_plain, floor)
            errs["step"] = step_err
        errs["y"] = _rel(y, y_ref, floor)
        results.append(CheckResult(
            low, errs["y"], max((errs[f"final state {i}"] for i in range(len(s))), default=None),
            max((e for k, e in errs.items() if k.startswith("grad ")), default=0.0), step_err, tol,
            worst=max(errs, key=errs.get)))
    return results


def run_varlen_check(spec, dims: dict, lengths, lowerings, chunk_size: int = 16, seed: int = 0,
                     floor: float = 1e-30) -> dict[str, float]:
    """Per lowering, the worst relative error of the sequences of ``lengths`` run packed
    (``cu_seqlens``: the outputs, and the outputs and one final state per sequence) against the
    same lowering run on them one by one, in fp64."""
    g = torch.Generator().manual_seed(seed)
    errors = {}
    for low in lowerings:
        with seeded(seed):  # every lowering's random parameter inits the same, from ``seed``
            m = compile_spec(spec, dims=dims, backend=low, dtype=torch.float64, chunk_size=chunk_size)
        if not errors:
            seqs = [random_inputs(m, 1, n, g) for n in lengths]
        stateful = any(s is not None for s in m.state_shapes(1))
        with torch.no_grad():
            ones = [m(**s, return_final_state=True) for s in seqs]
            packed = {k: torch.cat([s[k] for s in seqs], 1) for k in seqs[0]}
            cu = torch.tensor([0, *lengths]).cumsum(0)
            want = torch.cat([y for y, _ in ones], 1)
            errs = [_rel(m(**packed, cu_seqlens=cu), want, floor)]
            if stateful:
                y, fin = m(**packed, cu_seqlens=cu, return_final_state=True)
                errs.append(_rel(y, want, floor))
                for k, f in enumerate(_flat_states(fin)):
                    if f is not None:
                        ref = torch.cat([_flat_states(s)[k] for _, s in ones], 0)
                        errs.append(_rel(f, ref, floor))
        errors[low] = max(errs)
    return errors
