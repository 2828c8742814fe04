"""`mixerc bench`: every lowering of a spec and the installed peers (`mixerc.peers`) side by side.

Each contender's output (and, with ``backward``, the gradient of every input) is first checked
against the fp64 ``reference`` lowering on the same inputs at a short length and at most
``CHECK_MAX_B`` batch rows (the dense reference's memory grows with both); one that differs, fails
or crashes is rejected, with why, and never timed. Timing interleaves the contenders (the order
rotates every round), takes the median of ``repeats`` rounds after a warm-up call and reports the
spread (min..max), so that a noisy machine shows as a wide spread, not as a lucky winner. At every
timed length the warm-up call's output is also compared with the baseline's (a contender that drifts
away at long lengths is not timed there). With ``contention`` N, N busy processes run beside the
timing (docs/contention.md). ``probes`` (say a plain matmul, for a fraction of the CPU's throughput)
are timed in the same rounds, unchecked. ``extras`` are other implementations of the spec's math that a
caller brings (upstream's way of computing it, a Python loop over sequences): checked and timed as the
peers are. ``inputs`` replaces the standard normal inputs (to pass ``lengths``, say); with ``backward``
a call computes, and the check compares, the gradients of every floating-point input and every parameter.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace

import torch

from .check import default_lowerings, random_inputs
from .compiler import compile as compile_spec
from .compiler import trace
from .ir import InputError
from .peers import peers_of, shape_problem

TOL = {torch.float64: 1e-9, torch.float32: 1e-3, torch.float16: 3e-2, torch.bfloat16: 6e-2}
REFERENCE_MAX_L = 2048  # the dense reference lowering is O(l²): timed only up to this length
CHECK_MAX_B = 2


@dataclass
class Contender:
    name: str
    run: object = None  # inputs -> y
    kind: str = "lowering"  # or "peer", "extra", or "probe" (timed beside the others, never checked)
    params: tuple = ()  # the parameters it reads: with backward, their gradients are computed and checked
    why_not: str | None = None  # rejected or not run: one line
    error: float | None = None  # the check's worst relative error
    times: dict = field(default_factory=dict)  # length -> [seconds]
    skipped: dict = field(default_factory=dict)  # length -> why it was not timed there
    agreement: dict = field(default_factory=dict)  # length -> relative difference from the baseline's output


@dataclass
class BenchResult:
    spec: str
    sizes: dict
    b: int
    lengths: list
    dtype: torch.dtype
    device: str
    backward: bool
    baseline: str
    contenders: list
    contention: int = 0  # busy processes that ran beside the timing
    threads: int = 1  # torch's thread count (what a mixer call may lower, docs/contention.md)

    def median(self, c: Contender, l: int) -> float | None:
        return statistics.median(c.times[l]) if c.times.get(l) else None

    def to_json(self) -> dict:
        """Everything measured, for a JSON file: per contender its check error, why it was not run or
        not timed at a length, its agreement with the baseline and every timed call's seconds."""
        return dict(spec=self.spec, sizes=self.sizes, b=self.b, lengths=self.lengths, dtype=str(self.dtype)[6:],
                    device=self.device, backward=self.backward, baseline=self.baseline, contention=self.contention,
                    threads=self.threads,
                    contenders={c.name: dict(kind=c.kind, check_error=c.error, why_not=c.why_not, skipped=c.skipped,
                                             agreement=c.agreement, times_s=c.times) for c in self.contenders})

    def failures(self) -> list[str]:
        """``"name: why"`` for every contender rejected by the check or at a timed length."""
        return [f"{c.name}: {why}" for c in self.contenders for why in [c.why_not, *c.skipped.values()]
                if why and why.startswith("rejected")]

    def table_rows(self):
        """``[(name, kind, [(median s, min s, max s, speed vs baseline), or why it was not timed there,
        per length], why it was not run at all)]``."""
        base = next(c for c in self.contenders if c.name == self.baseline)
        rows = []
        for c in self.contenders:
            cells = []
            for l in self.lengths:
                ts = c.times.get(l)
                if not ts:
                    cells.append(c.skipped.get(l))
                    continue
                med, ref = statistics.median(ts), self.median(base, l)
                cells.append((med, min(ts), max(ts), ref / med if ref else None))
            rows.append((c.name, c.kind, cells, c.why_not))
        return rows


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _relative(a: torch.Tensor, ref: torch.Tensor) -> float:
    top = ref.abs().max().item()
    err = (a.double() - ref).abs().max().item() / (top if top > 0 else 1.0)
    return err if err == err else float("inf")


_KEPT: list = []  # the weights `_loss_weights` keeps while `loss_weights_kept` runs: one dict per level


@contextlib.contextmanager
def loss_weights_kept():
    """Within it, `_call` makes the loss's weights once per output shape (outside the timed calls: at l = 8192
    the cosines took a sixth of scan's forward + backward); they are freed when it ends. Outside it (the
    autotuner's calls, say) every call makes its own."""
    _KEPT.append({})
    try:
        yield
    finally:
        _KEPT.pop()


def _loss_weights(shape: tuple, dtype, device) -> torch.Tensor:
    """The fixed output gradient ``w`` a backward call starts from: the gradients it computes are those of the
    loss ``(y * w).sum()`` (distinct per element, so no gradient is a plain sum)."""
    key = (shape, dtype, device)
    if _KEPT and key in _KEPT[-1]:
        return _KEPT[-1][key]
    w = torch.cos(torch.arange(math.prod(shape), device=device, dtype=dtype)).view(shape)
    if _KEPT:
        _KEPT[-1][key] = w
    return w


def _call(fn, ins: dict, backward: bool, params=()):
    """The contender on fresh leaves: ``(y, gradients of the inputs and of ``params``, or None)``. A
    forward-only call runs under ``no_grad`` (inference: nothing recorded for a backward)."""
    leaves = {k: v.detach().requires_grad_(backward and v.is_floating_point()) for k, v in ins.items()}
    if not backward:
        with torch.no_grad():
            return fn(leaves), None
    y = fn(leaves)
    w = _loss_weights(tuple(y.shape), y.dtype, y.device)
    wrt = [v for v in leaves.values() if v.requires_grad] + list(params)
    # w handed to the backward as y's gradient, as the layer above a mixer hands it: the product y * w and its
    # sum would be that layer's work, not the contender's (at l = 8192 they took 10 to 16 ms of every one)
    return y, torch.autograd.grad(y, wrt, grad_outputs=w, allow_unused=True)


def check_contender(c: Contender, ins: dict, want, backward: bool, dtype) -> None:
    """Run ``c`` on ``ins`` and compare with ``want`` (the reference's output, and its gradients with
    ``backward``): sets ``c.error``, and ``c.why_not`` (one line) when it crashes, has another shape or
    differs beyond ``TOL[dtype]``. The autotuner checks its candidates with it too."""
    try:
        y, grads = _call(c.run, ins, backward, c.params)
    except Exception as e:  # a contender that crashes is rejected, the others still run
        c.why_not = f"rejected: raised {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
        return
    if tuple(y.shape) != tuple(want[0].shape):
        c.why_not = f"rejected: output has shape {tuple(y.shape)}, the reference {tuple(want[0].shape)}"
        return
    errs = [_relative(y, want[0])]
    if backward:
        errs += [float("inf") if g is None else _relative(g, r) for g, r in zip(grads, want[1])]
    c.error = max(errs)
    if c.error > TOL[dtype]:
        what = "output" if errs[0] == c.error else "a gradient"
        c.why_not = f"rejected: {what} differs from the fp64 reference by {c.error:.1e} (tolerance {TOL[dtype]:.0e})"


def reference_of(run, ins64: dict, backward: bool, params=()):
    """``run``'s output on the fp64 inputs (and the gradients of the inputs and ``params``, with
    ``backward``), detached: the ``want`` of `check_contender`."""
    y, grads = _call(run, ins64, backward, params)
    return y.detach(), None if grads is None else [t.detach() for t in grads]


def _lengths_ok(lengths):
    if not lengths or any(not isinstance(n, int) or n < 1 for n in lengths):
        raise InputError(f"lengths {lengths!r}: give one or more positive integers, e.g. --lengths 1024,2048")
    return sorted(set(lengths))


def run_bench(spec, dims: dict, b: int, lengths: list, *, dtype=torch.float32, device: str = "cpu",
              backward: bool = False, repeats: int = 5, chunk_size: int | None = None, lowerings=None,
              seed: int = 0, axes: dict | None = None, progress=None, contention: int = 0,
              probes: dict | None = None, extras: dict | None = None, inputs=None,
              reference_max_l: int = REFERENCE_MAX_L, peers: bool = True) -> BenchResult:
    """Check, then time every contender at every length, with ``contention`` busy processes running
    beside the timing and ``probes`` (name -> a function of no argument) timed in the same rounds.
    ``extras``: name -> ``make(mixer, chunk)`` returning a function of the inputs (as a peer's), reading
    ``mixer``'s parameters; ``peers=False`` leaves the spec's peers out (inputs they do not read, say).
    ``inputs(mixer, b, l, generator, dtype)`` returns the inputs of one call
    (default: `mixerc.check.random_inputs`). ``seed`` draws the inputs and the mixers' parameters (torch's
    global generator is left as it was). The ``reference`` lowering is timed up to ``reference_max_l``.
    ``progress(advance, description, total=None)`` is called once with the number of timed calls, then
    after each (the CLI draws a bar with it)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda': no CUDA device is visible here; use --device cpu")
    if dtype not in TOL:
        raise InputError(f"dtype {dtype}: pass fp32, fp64, fp16 or bf16")
    if not isinstance(repeats, int) or repeats < 1:
        raise InputError(f"repeats={repeats!r} must be a positive integer")
    if not isinstance(contention, int) or contention < 0:
        raise InputError(f"contention={contention!r}: give the number of busy processes, 0 or more")
    lengths = _lengths_ok(lengths)
    _, graph, sizes = trace(spec, dims)
    everything = default_lowerings(graph)  # triton on CPU tensors (the interpreter) runs only when asked for
    here = tuple(low for low in everything if low != "triton") + (("triton",) if device == "cuda" else ())
    if lowerings is not None:
        possible = tuple(dict.fromkeys(here + everything + ("compiled",)))  # compiled: the CPU default, inductor
        unknown = [low for low in lowerings if low not in possible]
        if unknown:
            raise InputError(f"lowering(s) {', '.join(unknown)} cannot run spec {graph.name!r} on {device}; "
                             f"choose among {', '.join(possible)}")
        here = tuple(lowerings)
    mixers = {}
    with torch.random.fork_rng(devices=[]):  # the parameters from `seed` too (a run's check is reproducible),
        torch.default_generator.manual_seed(seed)  # the CPU's only (built there): the caller's left as it was
        for low in here:
            mixers[low] = compile_spec(spec, dims=sizes, backend=low, dtype=dtype, chunk_size=chunk_size).to(device)
        ref = compile_spec(spec, dims=sizes, backend="reference", dtype=torch.float64).to(device)
        # the baseline is what backend="auto" runs: triton on CUDA, else the structures' CPU default
        auto = compile_spec(spec, dims=sizes, dtype=dtype, chunk_size=chunk_size).plan.structures
    first = next(iter(mixers.values()))
    for m in mixers.values():
        m.load_state_dict(first.state_dict())
    ref.load_state_dict({k: v.double() for k, v in first.state_dict().items()})
    chunk = chunk_size or next((s.chunk_size for s in auto if s.chunk_size), 64)  # the peers' chunk too
    picked = {s.lowering for s in auto}
    baseline = "triton" if device == "cuda" else picked.pop() if len(picked) == 1 else ""
    baseline = baseline if baseline in mixers else next(iter(mixers))

    shared = tuple(first.parameters())  # what peers and extras read
    contenders = [Contender(low, run=(lambda m: lambda ins: m(**ins))(m), params=tuple(m.parameters()))
                  for low, m in mixers.items()]
    for peer in peers_of(graph.name) if peers else []:
        c = Contender(peer.name, kind="peer", params=shared)
        c.why_not = peer.available() or (None if device in peer.devices else f"runs on {', '.join(peer.devices)} only")
        if c.why_not is None:
            c.run = peer.make(first, chunk)
        contenders.append(c)
    contenders += [Contender(name, run=make(first, chunk), kind="extra", params=shared)
                   for name, make in (extras or {}).items()]
    if inputs is None:
        def inputs(mixer, b, l, generator, dtype):
            return random_inputs(mixer, b, l, generator, dtype=dtype, axes=axes)

    # the check: a short length, a multiple of the chunk, a few rows, against fp64 reference
    lc = max(chunk, min(lengths[0], 4 * chunk) // chunk * chunk)
    g = torch.Generator().manual_seed(seed)
    ins64 = {k: v.to(device) for k, v in inputs(first, min(b, CHECK_MAX_B), lc, g, torch.float64).items()}
    want = reference_of(lambda ins: ref(**ins), ins64, backward, tuple(ref.parameters()))
    ins = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ins64.items()}
    for c in contenders:
        if c.why_not is None:
            problem = shape_problem_of(c, graph.name, {**sizes, "l": lc}, chunk)
            if problem is None:
                check_contender(c, ins, want, backward, dtype)

    contenders += [Contender(name, run=(lambda f: lambda ins: f())(f), kind="probe")
                   for name, f in (probes or {}).items()]
    # the timing: interleaved rounds
    if progress is not None:
        total = len(lengths) * repeats * sum(c.why_not is None for c in contenders)
        progress(0, "timing ...", total=total)
    with busy_processes(contention), loss_weights_kept():
        for l in lengths:
            _time_length(contenders, baseline, graph.name, sizes, chunk, first, b, l, dtype, device, backward,
                         repeats, seed, inputs, progress, reference_max_l)
    return BenchResult(graph.name, sizes, b, lengths, dtype, device, backward, baseline, contenders, contention,
                       torch.get_num_threads())


def _time_length(contenders, baseline, spec_name, sizes, chunk, first, b, l, dtype, device, backward, repeats, seed,
                 inputs, progress, reference_max_l):
    """One length: inputs, the contenders that can run it, a warm-up call each (its output compared with
    the baseline's, or the first lowering's), interleaved rounds."""
    g = torch.Generator().manual_seed(seed + l)
    ins = {k: (v.to(dtype) if v.is_floating_point() else v).to(device)
           for k, v in inputs(first, b, l, g, torch.float32).items()}
    live = []
    for c in contenders:
        if c.why_not is not None:
            continue
        problem = shape_problem_of(c, spec_name, {**sizes, "l": l}, chunk)
        if c.name == "reference" and l > reference_max_l:
            problem = f"O(l²): not timed above l={reference_max_l}"
        if problem:
            c.skipped[l] = problem
            continue
        live.append(c)
    checked = sorted((c for c in live if c.kind != "probe"), key=lambda c: (c.name != baseline, c.kind != "lowering"))
    want = None
    for c in checked + [c for c in live if c.kind == "probe"]:  # warm-up: compiles, allocator, caches
        y = _warm_up(c, ins, backward)
        if c.kind == "probe":
            continue
        if want is None:
            want, by = y.double(), c.name
        c.agreement[l] = _relative(y, want)
        if c.agreement[l] > TOL[dtype]:
            c.skipped[l] = f"rejected: output differs from {by}'s by {c.agreement[l]:.1e} at this length"
            live.remove(c)
    del want
    interleave(live, ins, repeats, l, backward=backward, device=device, progress=progress,
               label=f"l={l} ")


def _warm_up(c: Contender, ins: dict, backward: bool):
    """One untimed call; its output, detached."""
    if backward and c.kind != "probe":
        return _call(c.run, ins, True, c.params)[0].detach()
    with torch.no_grad():
        return c.run(ins)


# a busy process: spins until killed, or until its parent is gone (it never outlives the bench)
SPIN = "import os, sys\nparent = int(sys.argv[1])\nwhile os.getppid() == parent:\n    pass\n"


@contextlib.contextmanager
def busy_processes(n: int):
    """``n`` processes that each keep a CPU busy, started on entry and killed on exit (also on an
    error or Ctrl-C); one whose parent dies (killed with SIGKILL, say) stops by itself."""
    procs = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", SPIN, str(os.getpid())],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        yield [q.pid for q in procs]
    finally:
        for q in procs:
            q.kill()
        for q in procs:
            q.wait()


def shape_problem_of(c: Contender, spec_name: str, sizes: dict, chunk: int) -> str | None:
    if c.kind != "peer":
        return None
    peer = next(p for p in peers_of(spec_name) if p.name == c.name)
    return shape_problem(peer, sizes, chunk)


def interleave(live: list, ins: dict, repeats: int, key, *, backward: bool = False, device: str = "cpu",
               progress=None, label: str = "", deadline: float | None = None) -> None:
    """``repeats`` rounds over ``live`` (the order rotates every round, so that no contender always runs
    first or after the same neighbour), each call's seconds appended to ``c.times[key]``. With
    ``deadline`` (a `time.perf_counter` value) no round starts after it."""
    for r in range(repeats):
        if deadline is not None and time.perf_counter() > deadline:
            return
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for c in order:
            c.times.setdefault(key, []).append(time_call(c, ins, backward, device))
            if progress is not None:
                progress(1, f"{label}round {r + 1}/{repeats}: {c.name}")


def time_call(c: Contender, ins: dict, backward: bool, device: str) -> float:
    """Seconds of one call of ``c`` (forward, or forward + backward), synchronised on CUDA."""
    _sync(device)
    start = time.perf_counter()
    if backward and c.kind != "probe":
        _call(c.run, ins, True, c.params)
    else:
        with torch.no_grad():
            c.run(ins)
    _sync(device)
    return time.perf_counter() - start


def join(results: list) -> BenchResult:
    """Runs of one spec at other lengths (with a dim that follows the length, say) as one result, for
    one table and one plot: each contender's cells from every run (at a length whose run left it out,
    "not run"); a dim that differs between the runs shows as "varies"."""
    first, lengths = results[0], sorted({l for r in results for l in r.lengths})
    sizes = {k: v if all(r.sizes.get(k) == v for r in results) else "varies" for k, v in first.sizes.items()}
    joined = {}
    for r in results:
        for c in r.contenders:
            j = joined.setdefault(c.name, Contender(c.name, kind=c.kind, skipped={l: "not run" for l in lengths}))
            if c.error is not None:
                j.error = max(j.error or 0.0, c.error)
            for l in r.lengths:
                j.skipped.pop(l, None)
                if c.why_not:
                    j.skipped[l] = c.why_not
            j.times.update(c.times)
            j.skipped.update(c.skipped)
            j.agreement.update(c.agreement)
    return replace(first, sizes=sizes, lengths=lengths, contenders=list(joined.values()))


def plot(result: BenchResult, path: str) -> str:
    """Time against length, log-log, one line per timed contender; returns the path written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise InputError("--plot needs matplotlib: pip install matplotlib") from e
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in result.contenders:
        pts = [(l, statistics.median(c.times[l])) for l in result.lengths if c.times.get(l)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], marker="o", label=c.name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length l")
    ax.set_ylabel(f"median ms ({'forward + backward' if result.backward else 'forward'})")
    dims = ", ".join(f"{k}={v}" for k, v in result.sizes.items())
    ax.set_title(f"{result.spec} ({dims}, b={result.b}, {str(result.dtype)[6:]}, {result.device})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def render(result: BenchResult, console) -> None:
    """The table: per contender and length the median (spread) and the speed against the baseline."""
    from rich.table import Table

    dims = ", ".join(f"{k}={v}" for k, v in result.sizes.items())
    what = "forward + backward" if result.backward else "forward"
    beside = f", {result.contention} busy process{'es' * (result.contention != 1)} beside" if result.contention else ""
    table = Table(title=f"{result.spec}: {what}, {str(result.dtype)[6:]}, {result.device}, b={result.b}, {dims}; "
                        f"{result.threads} torch thread{'s' * (result.threads != 1)}{beside}; "
                        f"median ms (min..max), speed vs {result.baseline}")
    table.add_column("contender")
    table.add_column("check", justify="right")
    for l in result.lengths:
        table.add_column(f"l={l}", justify="right")
    for (name, kind, cells, why_not), c in zip(result.table_rows(), result.contenders):
        label = name + (f" ({kind})" if kind != "lowering" else "")
        if why_not:
            table.add_row(label, "-", *[why_not] + [""] * (len(cells) - 1))
            continue
        out = []
        for cell in cells:
            if cell is None or isinstance(cell, str):
                out.append(cell or "-")
            else:
                med, lo, hi, speed = cell
                ratio = "" if speed is None else f"{speed:.2f}x" if speed >= 0.1 else f"{speed:.2g}x"  # not 0.00x
                out.append(f"{med * 1e3:.3g} ({lo * 1e3:.3g}..{hi * 1e3:.3g}) {ratio}")
        table.add_row(label, f"{c.error:.1e}" if c.error is not None else "-", *out)
    console.print(table)
