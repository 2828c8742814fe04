"""Check random specs on every lowering, shrink what fails, replay by seed.

`check_case` writes a `Case`'s spec to a file, loads it as a user would (`mixerc.loader`) and runs
`mixerc.check.run_check`: every lowering against ``reference`` in fp64 (output, the gradient of
every input and parameter and of the initial state, final states, prefill + step decode,
``seq_idx`` segments) and, for a case with ``varlen`` lengths, the sequences packed with
``cu_seqlens`` against one by one. `fuzz` drives it with hypothesis, which shrinks a failing spec to a small
one; the report is that spec's source, pasteable into a file for ``mixerc check``.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

from ..ir import SpecError
from .grammar import Case, Draw, build


# inputs are standard normal and values O(1): a tensor whose reference is below this (an exact zero
# a random spec cancels to) is judged by its absolute error, tol * FLOOR (1e-14 at tol 1e-9: the roundoff
# of a few dozen O(1) terms in fp64, as a 2-D FFT leaves on a gradient that is exactly zero; 1e-15 failed it)
FLOOR = 1e-5
# parameters start at their init values times a random factor in [1 - JITTER, 1 + JITTER]: the grammar's
# inits and constants coincide (0.5 - maximum(K, w) with K and w both initialised to 0.5 is exactly zero), and at
# an exact zero under a kink (abs, maximum) the lowerings' roundoff picks different sides: gradients that
# differed by a whole term (seed 123)
JITTER = 0.1


class FuzzFailure(AssertionError):
    """A lowering disagrees with the reference (or crashed) on a random spec."""


class HypothesisDraw(Draw):
    def __init__(self, data):
        self.data = data

    def choice(self, options, name=None):
        from hypothesis import strategies as st

        return self.data.draw(st.sampled_from(tuple(options)))

    def int(self, lo, hi):
        from hypothesis import strategies as st

        return self.data.draw(st.integers(lo, hi))


def lowerings_of(spec, dims: dict, triton: bool) -> list[str]:
    """What a case compares with ``reference``: every torch lowering all its structures have
    (``auto`` when they share none), and ``triton`` for triton cases."""
    from ..check import default_lowerings
    from ..compiler import trace

    _, graph, _ = trace(spec, dims)
    lows = [low for low in default_lowerings(graph) if low not in ("reference", "triton")]
    if not lows:
        lows = ["auto"]
    if triton:
        lows.append("triton")
    return lows


def kernel_configs(seed: int):
    """``configure`` for `run_check`: the triton row's kernels run a config drawn from each application's
    declared space (every knob a random value of its list, from ``seed``), so that the configs the tuner can
    cache (`mixerc autotune`) are fuzzed, not only the defaults. Returns it and the list it fills with what
    was drawn (for the failure report)."""
    drawn: list = []

    def configure(lowering: str, mixer):
        if lowering != "triton":
            return
        rng = random.Random(seed)
        for k, c in enumerate(mixer.kernel_configs()):
            mixer.set_kernel_config(k, **{key: rng.choice(values) for key, values in sorted(c["space"].items())})
            drawn.append(dict(mixer.kernel_configs()[k]["config"]))

    return configure, drawn


def check_case(case: Case, tol: float = 1e-9, workdir: str | None = None, compiled: bool = False) -> list:
    """Run one case; raise `FuzzFailure` with the spec and the worst disagreement. A spec the
    DSL refuses raises `SpecError` (the generator's fault, not a lowering's). ``compiled`` adds the compiled
    CPU path's row (``backend="compiled"``: the default lowerings through inductor); a call of it that fell
    back to the eager lowering (`CompiledMixer.compiled_fallbacks`) fails the case."""
    from ..check import run_check, run_varlen_check
    from ..loader import load_spec

    workdir = workdir or tempfile.mkdtemp(prefix="mixerc-fuzz-")
    path = os.path.join(workdir, "fuzzed.py")
    with open(path, "w") as f:
        f.write(case.source)
    spec = load_spec(path)
    lows = lowerings_of(spec, case.dims, case.triton) + ["compiled"] * compiled  # a refused spec stops here
    configure, drawn = kernel_configs(case.seed)
    mixers = []

    def keep(lowering, mixer):  # the compiled row's mixer, to ask afterwards whether it ran compiled
        configure(lowering, mixer)
        mixers.extend([mixer] * (lowering == "compiled"))

    try:  # past tracing, any error is a lowering's, a SpecError included
        results = run_check(spec, case.dims, b=case.b, l=case.l, lowerings=lows, chunk_size=case.chunk,
                            seed=case.seed, tol=tol, seq_idx=case.seq_idx, floor=FLOOR, axes=case.axes or None,
                            configure=keep, jitter=JITTER)
    except Exception as e:  # noqa: BLE001 - a crash of a lowering is a finding like a wrong number
        raise FuzzFailure(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}\n"
                          + _describe(case) + _configs_line(drawn)) from e
    fallbacks = {kind: why for m in mixers for kind, why in m.compiled_fallbacks().items()}
    if fallbacks:  # right numbers from the eager fallback: still a finding of the compiled path
        raise FuzzFailure(f"compiled fell back to eager: {fallbacks}\n" + _describe(case))
    bad = [r for r in results if not r.ok]
    if bad:
        raise FuzzFailure("; ".join(str(r) for r in bad) + "\n" + _describe(case) + _configs_line(drawn))
    if case.varlen:
        try:
            errors = run_varlen_check(spec, case.dims, case.varlen, lows, chunk_size=case.chunk, seed=case.seed,
                                      floor=FLOOR)
        except Exception as e:  # noqa: BLE001
            raise FuzzFailure(f"cu_seqlens: {type(e).__name__}: {e}\n" + _describe(case)) from e
        bad = {low: err for low, err in errors.items() if not err <= tol}
        if bad:
            raise FuzzFailure(f"cu_seqlens differs from one sequence at a time: {bad}\n" + _describe(case))
    return results


def _describe(case: Case) -> str:
    """The case's spec and its ``# check:`` line, with the judging this module adds (floor, jitter): the
    line's keywords are `run_check`'s, so that a report replays without the fuzzer."""
    return case.describe() + f", floor={FLOOR}, jitter={JITTER}"


def _configs_line(drawn: list) -> str:
    return f"\n# triton kernel configs: {drawn}" if drawn else ""


@dataclass
class Report:
    passed: int = 0
    rejected: Counter = field(default_factory=Counter)  # SpecError messages of invalid specs
    failure: str | None = None
    seconds: float = 0.0
    by_lowering: Counter = field(default_factory=Counter)


def fuzz(examples: int, seed: int, triton: bool = False, tol: float = 1e-9, shrink: bool = True,
         progress=None, compiled: bool = False) -> Report:
    """Check ``examples`` random specs (deterministic for a ``seed``); stops at the first failure,
    shrinks it, and returns a `Report` whose ``failure`` is the minimal spec's report."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    report = Report()
    workdir = tempfile.mkdtemp(prefix="mixerc-fuzz-")
    last: dict = {}
    start = time.perf_counter()

    @settings(max_examples=examples, deadline=None, database=None, print_blob=False, derandomize=False,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False, verbosity=Verbosity.quiet,
              phases=(Phase.generate, Phase.shrink) if shrink else (Phase.generate,))
    @hseed(seed)
    @given(st.data())
    def prop(data):
        case = build(HypothesisDraw(data), triton)
        try:
            results = check_case(case, tol, workdir, compiled)
        except SpecError as e:
            if "failure" not in last:
                report.rejected[str(e).split(";")[0][:100]] += 1
            from hypothesis import reject

            reject()
        except FuzzFailure as e:
            last["failure"] = str(e)
            raise
        if "failure" not in last:
            report.passed += 1
            report.by_lowering.update(r.lowering for r in results)
            if progress:
                progress(report)

    try:
        prop()
    except FuzzFailure:
        report.failure = last["failure"]
    report.seconds = time.perf_counter() - start
    return report
