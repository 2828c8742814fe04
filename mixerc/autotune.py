"""`mixerc autotune`: search the lowering choices of a spec at one shape and cache the winner.

The space comes from each structure's lowering package: every CPU lowering the structure has and
supports for its layout (``chunked``/``recurrent``, Toeplitz ``fft``/``direct``, 2-D ``grid``/``fft2``),
and for the lowerings that take one (`tuning.CHUNKED`) the chunk size, around the package's
``default_chunk``. Several structure applications multiply their options.

Then, in order:

1. the cost model (`mixerc.ir.cost`) prunes: every candidate's FLOPs and bytes at the shape become a
   roofline estimate (``FLOPS``, ``BANDWIDTH``: a rough CPU); a candidate estimated above ``keep`` times
   the best estimate, or beyond the effort's candidate cap, is never run (the default never pruned);
2. every survivor runs once on fp64-reference inputs at a short length and is compared with the fp64
   ``reference`` lowering (`mixerc.bench.check_contender`): one that differs, crashes or fails to
   compile is rejected, with why, and never timed;
3. timing: a probe call each at the check's length, then a warm-up call each at the shape, which
   is also a probe (a candidate above ``SLOW`` times the default's at either is dropped as too
   slow), interleaved rounds (`mixerc.bench.interleave`), then the leaders
   and the default re-timed in fresh interleaved rounds; their medians decide, and a candidate wins
   over the default only when its median beats the default's by more than ``MARGIN``;
4. the winner is written to the tuning cache (`mixerc.tuning`), keyed by the shape's length bucket,
   unless the budget ran out before every checked candidate was timed (or ``backend`` restricted the
   space): a partial search is shown, never cached.

``budget`` (seconds) bounds the wall time: no new phase or round starts after it runs out (what was
measured so far decides). A second run of the same key is a cache hit: nothing runs.

On ``device="cuda"`` (or ``backend="triton"`` on CPU tensors, in Triton's interpreter) the space is the
Triton kernels' declared config space of each structure application instead (`kernel_space`): the default
and its neighbours (``quick``: one knob changed at a time; ``full``: one or two), pruned before anything
runs, then checked and timed exactly as above (on CUDA, synchronised around every call).
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass, field

import torch

from . import tuning
from .bench import TOL, Contender, check_contender, interleave, reference_of, time_call
from .check import random_inputs
from .compiler import compile as compile_spec
from .compiler import trace
from .ir import STRUCTURES, BackendError, InputError, cost

FLOPS = 2e10  # the roofline of the pruning estimate: ~20 GFLOP/s, ~10 GB/s (a laptop core or two)
BANDWIDTH = 1e10
SLOW = 3.0  # a probe slower than this many times the default's drops the candidate
MARGIN = 0.05  # a candidate must beat the default's median by more than this to replace it
EFFORTS = {  # knobs: how many Triton config knobs a candidate changes at once; kernel_cap: its candidates at most
    "quick": dict(chunks=(32, 64, 128, 256), keep=4.0, cap=8, repeats=3, leaders=2, budget=100.0, knobs=1,
                  kernel_cap=16),
    "full": dict(chunks=(16, 32, 64, 128, 256, 512), keep=32.0, cap=48, repeats=9, leaders=3, budget=900.0,
                 knobs=2, kernel_cap=64),
}
# the Triton knobs that tile a dim: l the length, p the value dim, n the state dim, pn their product; a tile
# above its padded dim is clamped to it by the launchers (CLAMPED: the same kernel again), or (chunk, BS) covers
# the same data as a smaller tile, with more masked lanes
TILES = {"chunk": "l", "BP": "p", "BN": "n", "BN_dbc": "n", "BS": "pn"}
CLAMPED = ("BP", "BN", "BN_dbc")
BACKWARD_KNOBS = ("BN", "BN_dbc")  # read by backward kernels only (as every knob ending in _bwd)
CHECK_MAX_L = 256  # the check's length at most (the reference is O(l²)); it also covers a ragged chunk
# (a 2-D spec's check is shorter along l, its cells v * l at most this: its grid chunks are checked ragged)


@dataclass
class Candidate:
    config: tuple  # tuning.Choice per structure application
    estimate: float | None  # seconds, the cost model's roofline (None: Triton configs, not modelled)
    contender: Contender = None
    default: bool = False
    label: str | None = None  # a Triton candidate's changes to the default ("chunk=32")

    @property
    def name(self) -> str:
        return self.label or tuning.label(self.config)


@dataclass
class TuneResult:
    spec: str
    sizes: dict
    b: int
    lengths: dict
    dtype: torch.dtype
    device: str
    effort: str
    backward: bool = False
    candidates: list = field(default_factory=list)  # run (checked, maybe timed), default first
    pruned: list = field(default_factory=list)  # (label, why): never run
    default: tuple = ()
    winner: tuple | None = None
    hit: bool = False  # found in the cache: nothing ran
    path: str | None = None  # the tuning entry
    entry: dict | None = None
    elapsed: float = 0.0
    out_of_budget: bool = False
    not_cached: str | None = None  # why the winner was not written to the cache
    space_size: int | None = None  # Triton: the declared config space's size (every application's product)

    def final(self, c: Candidate) -> list | None:
        """The times that decide: the re-timing's, else the first rounds', else the warm-up probe's."""
        t = c.contender.times if c.contender else {}
        return t.get("retime") or t.get("rounds") or t.get("probe")

    def median(self, c: Candidate) -> float | None:
        ts = self.final(c)
        return statistics.median(ts) if ts else None

    def ratio(self, c: Candidate) -> float | None:
        """Speed against the default (>1: faster), from the same rounds."""
        d = next(x for x in self.candidates if x.default)
        md, mc = self.median(d), self.median(c)
        return md / mc if md and mc else None


def options(graph, lengths: dict, effort: str, backend: str | None = None) -> list[list]:
    """Per structure application, its `tuning.Choice`s: CPU lowerings it supports (``backend`` alone
    when given), times the chunk sizes for those that take one."""
    chunks = EFFORTS[effort]["chunks"]
    longest = max(lengths.values())
    out = []
    for a in graph.nodes_of("apply"):
        m = graph.node(a.args[0])
        sdef, layout = STRUCTURES[m.op], a.attrs["layout"]
        lows = [low for low in sdef.lowerings if low not in ("reference", "triton") and sdef.supports(low, layout)]
        if backend is not None:
            lows = [low for low in lows if low == backend]
        opts = []
        for low in lows:
            if tuning.uses_chunk(low):
                dflt = tuning.default_chunk(m.op, layout)
                sizes = sorted({c for c in chunks if c <= max(tuning.bucket(longest), 16)} | {dflt})
                opts += [tuning.Choice(a.name, m.op, low, c) for c in sizes]
            else:
                opts.append(tuning.Choice(a.name, m.op, low, None))
        out.append(opts)
    return out


def estimate(graph, config: tuple, at: dict) -> float:
    """The cost model's roofline seconds of ``config`` at the sizes ``at`` (one chunk size for all:
    the first chunked structure's)."""
    flops, nbytes = cost.total(graph, {c.node: c.lowering for c in config})
    chunk = next((c.chunk for c in config if c.chunk is not None), 64)
    return cost.evaluate(flops, at, chunk) / FLOPS + cost.evaluate(nbytes, at, chunk) / BANDWIDTH


def search_space(graph, sizes: dict, b: int, lengths: dict, effort: str = "quick", backend: str | None = None):
    """``(candidates, pruned)``: the candidates the cost model keeps, best estimate first with the
    default first of all, and ``[(label, why)]`` of those it prunes."""
    if effort not in EFFORTS:
        raise InputError(f"effort {effort!r}: choose quick or full")
    plan_default = tuning.default_config(_plan(graph))
    configs = list(itertools.product(*options(graph, lengths, effort, backend)))
    if not configs:
        raise BackendError(f"backend {backend!r}: no structure of spec {graph.name!r} has it as a CPU lowering; "
                           f"drop --backend or pick one of {', '.join(_cpu_lowerings(graph))}")
    if backend is None and plan_default not in configs:
        configs.append(plan_default)
    at = {**sizes, "b": b, **lengths}
    est = {cfg: estimate(graph, cfg, at) for cfg in configs}
    best = min(est.values())
    keep, cap = EFFORTS[effort]["keep"], EFFORTS[effort]["cap"]
    ranked = sorted(configs, key=lambda cfg: (cfg != plan_default, est[cfg], tuning.label(cfg)))
    kept, pruned = [], []
    for cfg in ranked:
        if cfg == plan_default:
            kept.append(cfg)
        elif est[cfg] > keep * best:
            pruned.append((tuning.label(cfg), f"cost model: {est[cfg] / best:.1f}x the best estimate (keeps "
                                              f"<= {keep:g}x)"))
        elif len(kept) >= cap:
            pruned.append((tuning.label(cfg), f"beyond the {cap} best estimates ({effort} effort)"))
        else:
            kept.append(cfg)
    return [Candidate(cfg, est[cfg], default=cfg == plan_default) for cfg in kept], pruned


def _plan(graph):
    from .codegen import plan

    return plan(graph, "auto")


def _cpu_lowerings(graph) -> list[str]:
    lows = []
    for a in graph.nodes_of("apply"):
        sdef = STRUCTURES[graph.node(a.args[0]).op]
        lows += [low for low in sdef.lowerings if low not in ("reference", "triton", *lows)
                 and sdef.supports(low, a.attrs["layout"])]
    return lows


def kernel_space(mixer, lengths: dict, effort: str, backward: bool):
    """``(candidates, pruned, size)`` of a triton ``mixer``'s kernel configs: the default first, then every
    change of one knob (``full``: and of two) of one application's default config that survives the rules
    of `_pruned`, the nearest to the default first (a knob's value one step away in its space, then two, ...),
    at most the effort's ``kernel_cap``; ``pruned``: ``[(label, why)]``; ``size``: the declared space's size."""
    kcs, plan = mixer.kernel_configs(), mixer.plan
    longest, size, moves, pruned = max(lengths.values()), 1, [], []
    for k, (kc, s) in enumerate(zip(kcs, plan.structures)):
        dims = _padded(mixer.sizes, s.layout, longest)
        for key, values in kc["space"].items():
            size *= len(values)
            for v in values:
                if v == kc["config"][key]:
                    continue
                move = (k, key, v)
                why = _pruned(key, v, values, dims, backward)
                if why:
                    pruned.append((_move_label([move], len(kcs)), why))
                else:
                    moves.append((abs(values.index(v) - values.index(kc["config"][key])), move))
    combos = [(s, (m,)) for s, m in moves]
    if EFFORTS[effort]["knobs"] >= 2:
        combos += [(s + t, (a, b)) for i, (s, a) in enumerate(moves) for t, b in moves[i + 1:] if a[:2] != b[:2]]
    combos = [c for _, c in sorted(combos, key=lambda sc: sc[0])]  # stable: the space's knob order within a step
    cap = EFFORTS[effort]["kernel_cap"]
    pruned += [(_move_label(c, len(kcs)), f"beyond the {cap} candidates of the {effort} effort") for c in combos[cap:]]
    candidates = [Candidate(tuning.kernel_choices(plan, [k["config"] for k in kcs]), None, default=True,
                            label="default")]
    for combo in combos[:cap]:
        cfgs = [dict(k["config"]) for k in kcs]
        for k, key, v in combo:
            cfgs[k][key] = v
        candidates.append(Candidate(tuning.kernel_choices(plan, cfgs), None, label=_move_label(combo, len(kcs))))
    return candidates, pruned, size


def _move_label(moves, n: int) -> str:
    return ",".join(f"{key}={v}" if n == 1 else f"k{k}.{key}={v}" for k, key, v in moves)


def _padded(sizes: dict, layout: dict, longest: int) -> dict:
    """The dims a tile knob covers (`TILES`), each rounded up to a power of two as the kernels pad them."""
    p = sizes.get(layout.get("value"), 1)
    n = sizes.get(layout.get("state"), 1)
    return {"l": tuning.bucket(longest), "p": tuning.bucket(p), "n": tuning.bucket(n), "pn": tuning.bucket(p * n)}


def _pruned(key: str, v: int, values: list, dims: dict, backward: bool) -> str | None:
    """Why the change ``key=v`` never runs, or None: a knob only backward kernels read, in a forward search;
    a tile above its padded dim (and above the space's smallest tile), see `TILES`."""
    if not backward and (key.endswith("_bwd") or key in BACKWARD_KNOBS):
        return "read by the backward kernels only; this search times the forward (--backward tunes it)"
    dim = TILES.get(key)
    if dim is None or v <= max(dims[dim], min(values)):
        return None
    if key in CLAMPED:
        return f"tile larger than the padded {dim} ({dims[dim]}): the launcher clamps it, the same kernel again"
    return f"tile larger than the padded {dim} ({dims[dim]}): the same data as a smaller tile, more masked lanes"


def _triton_mixer(spec, graph, sizes: dict, device: str, dtype):
    """The triton mixer the search runs (on ``device``), or a typed error saying why there is none here."""
    from .settings import setting

    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError("--device cuda: no CUDA device is visible here; tune the CPU lowerings with --device cpu, "
                           "or the Triton configs in Triton's interpreter with --device cpu --backend triton "
                           "(TRITON_INTERPRET=1; tiny shapes only: it is slow)")
    if device == "cpu" and not setting("triton_interpret"):
        raise BackendError("--backend triton on --device cpu runs Triton's interpreter: set TRITON_INTERPRET=1 "
                           "(tiny shapes only), or tune on a GPU with --device cuda")
    if device == "cpu" and dtype == torch.bfloat16:
        raise InputError("--dtype bf16 with --backend triton on --device cpu: Triton's interpreter computes bf16 "
                         "wrongly; pass fp32 or fp16 (or tune bf16 on a GPU with --device cuda)")
    try:
        return compile_spec(spec, dims=sizes, backend="triton", dtype=dtype).to(device)
    except BackendError as e:
        raise BackendError(f"spec {graph.name!r} has no Triton lowering here ({e}); tune its CPU lowerings with "
                           "--device cpu and no --backend") from None


def tune(spec, dims: dict, b: int, l: int, *, dtype=torch.float32, device: str = "cpu", backend: str | None = None,
         effort: str = "quick", budget: float | None = None, axes: dict | None = None, seed: int = 0,
         retune: bool = False, backward: bool = False, progress=None) -> TuneResult:
    """Tune ``spec`` at batch ``b``, length ``l`` (and a 2-D spec's other axes ``axes``); the winner
    is cached for the length bucket. ``backward``: time (and check the gradients of) forward + backward,
    the winner a training call uses. ``device="cuda"``, or ``backend="triton"`` (on ``cpu``: CPU tensors in
    Triton's interpreter), searches the Triton kernels' configs (`kernel_space`) instead of the CPU
    lowerings. ``progress(advance, description, total=None)`` as in `run_bench`."""
    start = time.perf_counter()
    if effort not in EFFORTS:
        raise InputError(f"effort {effort!r}: choose quick or full")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0):
        raise InputError(f"budget {budget!r}: give a positive number of seconds, e.g. --budget 60")
    if not isinstance(b, int) or b < 1 or not isinstance(l, int) or l < 1:
        raise InputError(f"shape b={b!r}, l={l!r}: give positive integers, e.g. --shape b=2,l=4096")
    if dtype not in TOL:
        raise InputError(f"dtype {dtype}: pass fp32, fp64, fp16 or bf16")
    spec_obj, graph, sizes = trace(spec, dims)
    if device not in ("cpu", "cuda"):
        raise InputError(f"device {device!r}: choose cpu or cuda")
    triton = device == "cuda" or backend == "triton"
    if device == "cuda" and backend not in (None, "triton"):
        raise BackendError(f"--backend {backend!r} with --device cuda: on a GPU the tuner searches the Triton "
                           "kernels' configs; drop --backend (or tune the CPU lowerings with --device cpu)")
    if triton:
        mixer = _triton_mixer(spec_obj, graph, sizes, device, dtype)
    elif backend is not None and backend not in _cpu_lowerings(graph):
        raise BackendError(f"--backend {backend!r} cannot run spec {graph.name!r} on the CPU; choose one of "
                           f"{', '.join(_cpu_lowerings(graph))}, or drop --backend to tune them all")
    lengths = {ax: (axes or {}).get(ax, 3) for ax in graph.seq_axes[:-1]}
    lengths[graph.seq_axes[-1]] = l
    budget = EFFORTS[effort]["budget"] if budget is None else float(budget)
    deadline = start + budget
    fields = tuning.key_fields(graph, sizes, dtype, device, lengths, backward=backward,
                               backend="triton" if triton else "torch")
    where = f"{device} (Triton interpreter)" if triton and device == "cpu" else device
    result = TuneResult(graph.name, sizes, b, lengths, dtype, where, effort, backward=backward)
    if triton:
        candidates, result.pruned, result.space_size = kernel_space(mixer, lengths, effort, backward)
        result.default = candidates[0].config
    else:
        result.default = tuning.default_config(_plan(graph))
    if not retune and (backend is None or triton):
        path = tuning.tuning_dir() / tuning.file_name(fields)
        entry, why = tuning.read(path, fields)
        if entry is not None:
            result.hit, result.path, result.entry = True, str(path), entry
            result.winner = tuple(tuning.Choice.of(c) for c in entry["winner"])
            result.elapsed = time.perf_counter() - start
            return result
        if why:
            tuning.warn_once(path, why)
    if not triton:
        candidates, result.pruned = search_space(graph, sizes, b, lengths, effort, backend)
        mixer = compile_spec(spec_obj, dims=sizes, dtype=dtype)
    result.candidates = candidates
    was, tuning.TUNING[0] = tuning.TUNING[0], True
    try:
        _measure(result, mixer, b, l, lengths, dtype, seed, deadline, progress, backward, device)
    finally:
        tuning.TUNING[0] = was
    timed = [c for c in candidates if c.contender.why_not is None and result.median(c) is not None]
    default = next((c for c in candidates if c.default), None)
    if timed:
        best = min(timed, key=lambda c: (result.median(c), not c.default))
        if default is not None and result.median(default) is not None and not best.default:
            if result.median(best) > (1 - MARGIN) * result.median(default):
                best = default  # within noise of the default: keep the default
        result.winner = best.config
        measured = {"b": b, "lengths": lengths, "effort": effort, "backward": backward, "median_s": result.median(best),
                    "default_median_s": result.median(default) if default else None,
                    "candidates": {c.name: result.median(c) for c in timed}}
        untimed = [c.name for c in candidates if (c.contender.why_not or "").startswith("not ")
                   or (c.contender.why_not is None and not c.contender.times.get("rounds"))]
        subset = backend is not None and not triton
        result.not_cached = ("--backend measured a subset, not the bucket's winner" if subset else
                             f"the budget ran out before {', '.join(untimed)} ran; raise --budget" if untimed else
                             None)
        if result.not_cached is None:
            result.path = str(tuning.store(fields, best.config, result.default, measured))
    result.out_of_budget = time.perf_counter() > deadline
    result.elapsed = time.perf_counter() - start
    return result


def _measure(result: TuneResult, mixer, b, l, lengths, dtype, seed, deadline, progress, backward, device):
    """Check, probe, warm up and time ``result.candidates``, each run by ``mixer.run_config`` on ``device``."""
    candidates = result.candidates
    note = progress or (lambda *a, **k: None)
    ref = compile_spec(mixer.spec, dims=mixer.sizes, backend="reference", dtype=torch.float64)
    ref.load_state_dict({k: v.double() for k, v in mixer.state_dict().items()})
    ref = ref.to(device)
    axes = {ax: n for ax, n in lengths.items() if ax != mixer.ir.seq_axes[-1]} or None
    weights = tuple(mixer.parameters())  # with backward, their gradients are checked too
    for c in candidates:
        c.contender = Contender(c.name, run=(lambda cfg: lambda ins: mixer.run_config(cfg, **ins))(c.config),
                                params=weights)
    # the check: the same inputs for all, fp64 reference; a ragged last chunk included
    others = 1
    for ax, n in lengths.items():
        others *= n if ax != mixer.ir.seq_axes[-1] else 1
    # the reference is O(cells²): a 2-D spec's other axes shorten the check (v * l <= CHECK_MAX_L + 5)
    lc = min(l, max(21, (CHECK_MAX_L + 5) // others))
    g = torch.Generator().manual_seed(seed)
    ins64 = {k: v.to(device) for k, v in random_inputs(mixer, min(b, 2), lc, g, dtype=torch.float64, axes=axes).items()}
    want = reference_of(lambda ins: ref(**ins), ins64, backward, tuple(ref.parameters()))
    ins = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ins64.items()}
    note(0, "checking against the fp64 reference ...", total=len(candidates))
    for c in candidates:
        if time.perf_counter() > deadline and not c.default:
            c.contender.why_not = "not run: the budget ran out"
        else:
            check_contender(c.contender, ins, want, backward, dtype)
        note(1, f"checked {c.name}")
    live = [c for c in candidates if c.contender.why_not is None]
    if not live:
        return
    short = {c.name: [] for c in live}
    for _ in range(3):  # interleaved; the fastest of three: a contention spike does not drop a candidate
        for c in live:
            short[c.name].append(time_call(c.contender, ins, backward, device))
    _drop_slow(live, {name: min(ts) for name, ts in short.items()}, f"at l={lc}")
    live = [c for c in live if c.contender.why_not is None]
    g = torch.Generator().manual_seed(seed + l)
    ins = {k: (v.to(dtype) if v.is_floating_point() else v).to(device)
           for k, v in random_inputs(mixer, b, l, g, dtype=torch.float32, axes=axes).items()}
    repeats, leaders = EFFORTS[result.effort]["repeats"], EFFORTS[result.effort]["leaders"]
    note(0, "warming up ...", total=len(live) * (1 + repeats) + (leaders + 1) * repeats)
    probes = {}
    for c in live:  # warm-up (generates the variant); its time is the probe that drops the far too slow
        if time.perf_counter() > deadline and not c.default:
            c.contender.why_not = "not timed: the budget ran out"
            continue
        probes[c.name] = time_call(c.contender, ins, backward, device)
        note(1, f"warm-up {c.name}: {probes[c.name] * 1e3:.3g} ms")
    if not probes:
        return
    _drop_slow(live, probes, "")
    for c in live:
        if c.name in probes:
            c.contender.times["probe"] = [probes[c.name]]
    live = [c for c in live if c.contender.why_not is None]

    def best_so_far(label):
        def cb(n, what, total=None):
            timed = [c for c in live if c.contender.times.get(label)]
            lead = min(timed, key=lambda c: statistics.median(c.contender.times[label]), default=None)
            best = f"; best so far {lead.name} {statistics.median(lead.contender.times[label]) * 1e3:.3g} ms" \
                if lead else ""
            note(n, what + best, total=total)
        return cb

    interleave([c.contender for c in live], ins, repeats, "rounds", backward=backward, device=device,
               progress=best_so_far("rounds"), label="timing ", deadline=deadline)
    if not all(c.contender.times.get("rounds") for c in live):
        return  # the budget ran out before a round: the probes are all there is
    ranked = sorted(live, key=lambda c: statistics.median(c.contender.times["rounds"]))
    again = ranked[:leaders] + [c for c in live if c.default and c not in ranked[:leaders]]
    if len(again) > 1 and time.perf_counter() < deadline:
        interleave([c.contender for c in again], ins, repeats, "retime", backward=backward, device=device,
                   progress=best_so_far("retime"), label="re-timing the leaders ", deadline=deadline)
        if any(len(c.contender.times.get("retime", [])) < 2 for c in again):
            for c in again:  # too few re-timed rounds to decide on: the first rounds decide
                c.contender.times.pop("retime", None)


def _drop_slow(live: list, probes: dict, where: str) -> None:
    """Drop (``why_not``) every candidate whose probe took more than ``SLOW`` times the default's."""
    base = next((probes[c.name] for c in live if c.default and c.name in probes), min(probes.values()))
    for c in live:
        if c.name in probes and probes[c.name] > SLOW * base and not c.default:
            c.contender.why_not = f"dropped: its probe{' ' + where if where else ''} took " \
                                  f"{probes[c.name] / base:.1f}x the default's"


def render(result: TuneResult, console) -> None:
    """The table: candidate, median (spread), ratio to the default, accuracy, winner; then pruned."""
    from rich.table import Table

    dims = ", ".join(f"{k}={v}" for k, v in result.sizes.items())
    shape = ", ".join(f"{k}={v}" for k, v in {"b": result.b, **result.lengths}.items())
    if result.hit:
        m = result.entry["measured"]
        ratio = (m["default_median_s"] / m["median_s"]) if m.get("default_median_s") and m.get("median_s") else None
        console.print(f"cache hit ({result.path}): {tuning.label(result.winner)}"
                      + (f", {ratio:.2f}x the default when tuned" if ratio else "")
                      + f" ({result.elapsed * 1e3:.0f} ms, nothing ran); --retune measures again",
                      markup=False, soft_wrap=True)
        return
    what = "forward + backward" if result.backward else "forward"
    table = Table(title=f"{result.spec} {what}: {shape}, {dims}, {str(result.dtype)[6:]}, {result.device}, "
                        f"{result.effort}; median ms (min..max) of the deciding rounds")
    for col in ("candidate", "est. ms", "time", "vs default", "accuracy", ""):
        table.add_column(col, justify="left" if col in ("candidate", "") else "right")
    for c in result.candidates:
        ts = result.final(c)
        err = "-" if c.contender.error is None else f"{c.contender.error:.1e}"
        tag = "winner" if c.config == result.winner else ""
        tag = (tag + " (default)").strip() if c.default else tag
        est = "-" if c.estimate is None else f"{c.estimate * 1e3:.3g}"
        if c.contender.why_not:
            table.add_row(c.name, est, c.contender.why_not, "", err, tag)
            continue
        ratio = result.ratio(c)
        table.add_row(c.name, est,
                      f"{statistics.median(ts) * 1e3:.3g} ({min(ts) * 1e3:.3g}..{max(ts) * 1e3:.3g})",
                      f"{ratio:.2f}x" if ratio else "-", err, tag)
    console.print(table)
    if result.space_size is None:
        what = f"{len(result.candidates)} candidate(s) run, {len(result.pruned)} pruned by the cost model before " \
               "running"
    else:
        default = ", ".join(f"{k}={v}" for c in result.default for k, v in c.kernel)
        what = (f"{len(result.candidates)} candidate(s) run of the declared space's {result.space_size} configs "
                f"(the default {default}, and its neighbours); {len(result.pruned)} neighbours pruned before running")
    console.print(f"{what}; {result.elapsed:.1f} s" + (" (budget reached)" if result.out_of_budget else ""),
                  markup=False, soft_wrap=True)
    for name, why in result.pruned:
        console.print(f"  pruned {name}: {why}", markup=False, soft_wrap=True)
    if result.path:
        console.print(f"cached: {result.path}", markup=False, soft_wrap=True)
    elif result.not_cached:
        console.print(f"not cached: {result.not_cached}", markup=False, soft_wrap=True)


tuning.TUNER[0] = tune  # what a mixer calls on a missing bucket under MIXERC_AUTOTUNE=full
