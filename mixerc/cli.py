"""The ``mixerc`` command line: list, inspect, compile, check, fuzz, bench, cache.

A SPEC argument is a built-in name (``mamba2``) or a path to a ``.py`` file defining an
``@mx.spec`` function. Errors in what the user typed print one line and exit with status 2.
"""

from __future__ import annotations

import functools
import os
import sys
import time

import click
import sympy
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import codegen
from .compiler import trace
from .ir import STRUCTURES, BackendError, MixercError, cost
from .loader import list_specs, load_spec
from .settings import setting

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def _parse_sizes(text: str | None, option: str) -> dict:
    """``"h=4,p=16"`` -> ``{"h": 4, "p": 16}``; exits 2 with one line when malformed."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        key, eq, value = part.strip().partition("=")
        if not eq or not key.strip().isidentifier() or not value.strip().isdigit() or int(value) < 1:
            example = "b=2,l=64" if option == "--shape" else "h=4,p=16,n=16"
            _fail(f"{option} {text!r}: expected comma-separated name=positive-int pairs such as "
                  f"{example} (bad part {part!r})")
        out[key.strip()] = int(value)
    return out


def _one_line(message: str) -> str:
    """``message`` on one line, escaped so that rich prints it as it is (``[b l h]`` stays)."""
    return escape(" ".join(str(message).split()))


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {_one_line(message)}", soft_wrap=True)
    sys.exit(2)


def _guard(fn):
    """Turn mixerc's typed errors (`MixercError`: what the user gave is wrong) into one line and exit
    status 2. Anything else is a bug in mixerc and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MixercError as e:
            _fail(str(e))

    return wrapper


# the spec's file may register structures with lowerings of their own: --backend is checked after it loads
_BACKEND_HELP = f"auto, or a lowering every structure of the spec has (built in: {', '.join(codegen.backends()[1:])})"


def _check_backend(backend: str) -> str:
    if backend not in codegen.backends():
        raise BackendError(f"--backend {backend!r} is not a lowering; choose one of {', '.join(codegen.backends())}")
    return backend


def _spec_and_dims(spec_arg: str, dims_text: str | None):
    spec = load_spec(spec_arg)
    dims = {**spec.example_dims, **_parse_sizes(dims_text, "--dims")}
    return trace(spec, dims)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mixerc")
def main():
    """mixerc: compile sequence mixers written as structured matrices."""


@main.command("list")
@_guard
def list_cmd():
    """List the built-in specs."""
    table = Table(title="built-in specs", caption="mixerc inspect NAME: a spec's inputs, parameters and IR")
    table.add_column("name", no_wrap=True)
    table.add_column("structures", no_wrap=True)
    table.add_column("summary")
    for name in list_specs():
        spec = load_spec(name)
        structs = sorted({n.op for n in spec.trace().topo() if n.op in STRUCTURES})
        summary = " ".join((spec.doc or "").split("\n\n")[0].split())  # the docstring's first paragraph
        table.add_row(name, ", ".join(structs), summary)
    console.print(table)


def _fmt_expr(e) -> str:
    return str(sympy.factor(sympy.simplify(e)))


def _shape(graph, text: str) -> dict:
    """``--shape``: sizes of b and the spec's sequence axes only."""
    out = _parse_sizes(text, "--shape")
    allowed = graph.lead
    bad = sorted(set(out) - set(allowed))
    if bad:
        _fail(f"--shape names {', '.join(bad)}; it sizes the batch and the sequence axes "
              f"{', '.join(allowed)} (other dims go in --dims)")
    return out


@main.command()
@click.argument("spec")
@click.option("--dims", help="dim sizes, e.g. h=8,p=64,n=64,g=1 (default: the spec's example dims)")
@click.option("--shape", default="b=1,l=4096", show_default=True,
              help="b and l (and a 2-D spec's other sequence axis, default 16) to evaluate costs at")
@click.option("--backend", default="auto", show_default=True, help=_BACKEND_HELP)
@click.option("--chunk-size", type=int, default=None)
@_guard
def inspect(spec, dims, shape, backend, chunk_size):
    """Show the IR, its structures, the chosen lowerings, and FLOPs and bytes."""
    spec_obj, graph, sizes = _spec_and_dims(spec, dims)
    _check_backend(backend)
    at = {**sizes, **{ax: 16 for ax in graph.seq_axes[:-1]}, **_shape(graph, shape)}
    plan = codegen.plan(graph, backend, chunk_size)
    console.rule(f"[bold]{spec_obj.name}[/]  ({spec_obj.file})")
    console.print(graph.to_text(sizes), markup=False)
    console.rule("structures")
    for s in plan.structures:
        sdef = STRUCTURES[s.structure]
        lay = s.layout
        console.print(f"{s.node}: {s.structure}, {sdef.describe(lay)}; state dims {sdef.state_dims(lay)}",
                      markup=False, soft_wrap=True)
        console.print(f"  M[i, j] = {sdef.formula(lay)}" + (f"   ({sdef.support})" if sdef.support else ""),
                      markup=False, soft_wrap=True)
    console.rule("plan")
    console.print(plan.describe(), markup=False, soft_wrap=True)
    console.rule(f"cost at {', '.join(f'{k}={v}' for k, v in at.items())}")
    table = Table()
    for col in ("lowering", "FLOPs", "bytes", "FLOP/byte"):
        table.add_column(col, justify="left" if col == "lowering" else "right")
    sdefs = {s.node: STRUCTURES[s.structure] for s in plan.structures}
    lowerings = [low for low in codegen.backends()[1:] if any(low in sd.lowerings for sd in sdefs.values())]
    formulas = []
    for low in lowerings:
        choice = {node: (low if low in sd.lowerings else sd.lowerings[0]) for node, sd in sdefs.items()}
        flops, nbytes = cost.total(graph, choice)
        chunk = next((s.chunk_size for s in plan.structures), None)
        f_at, b_at = cost.evaluate(flops, at, chunk), cost.evaluate(nbytes, at, chunk)
        chosen = " (chosen)" if all(s.lowering == low for s in plan.structures) else ""
        table.add_row(low + chosen, f"{f_at:.3g}", f"{b_at:.3g}", f"{f_at / b_at:.2f}")
        formulas.append(f"{low}: FLOPs = {_fmt_expr(flops)}\n{' ' * len(low)}  bytes = {_fmt_expr(nbytes)}")
    console.print(table)
    console.print("symbolic (Q = chunk size):\n" + "\n".join(formulas), markup=False, soft_wrap=True)


@main.command("compile")
@click.argument("spec")
@click.option("--dims", help="dim sizes, e.g. h=8,p=64,n=64,g=1 (default: the spec's example dims)")
@click.option("--backend", default="auto", show_default=True, help=_BACKEND_HELP)
@click.option("--emit", type=click.Choice(["ir", "graph", "torch", "triton"]), default="torch",
              show_default=True, help="ir: the IR as text; graph: Graphviz DOT; torch: the generated torch "
              "module (standalone: imports only torch; --backend auto or triton: each structure's CPU "
              "default); triton: the generated Triton kernel module")
@click.option("--chunk-size", type=int, default=None)
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), help="write here instead of stdout")
@_guard
def compile_cmd(spec, dims, backend, emit, chunk_size, out_dir):
    """Emit the IR, its graph or the generated code."""
    spec_obj, graph, sizes = _spec_and_dims(spec, dims)
    _check_backend(backend)
    if emit == "ir":
        text, fname = graph.to_text(sizes) + "\n", f"{spec_obj.name}.ir.txt"
    elif emit == "graph":
        text, fname = graph.to_dot() + "\n", f"{spec_obj.name}.dot"
    elif emit == "triton":
        plan = codegen.plan(graph, "triton", chunk_size)
        text, fname = codegen.generate_triton(graph, plan, sizes), f"{spec_obj.name}_triton.py"
    else:  # the standalone module the runtime runs on CPU tensors; auto/triton: each structure's default
        plan = codegen.plan(graph, "auto" if backend == "triton" else backend, chunk_size)
        low = "-".join(dict.fromkeys(s.lowering for s in plan.structures)) or "torch"
        text, fname = codegen.generate(graph, plan, sizes), f"{spec_obj.name}_{low}.py"
    if out_dir is None:
        click.echo(text, nl=False)
        return
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, fname)
    with open(path, "w") as f:
        f.write(text)
    console.print(f"wrote {path}")


def _is_the_program() -> bool:
    """Whether this process is the ``mixerc`` program (its console script or ``python -m
    mixerc.cli``), not a library caller or a test runner, and has not imported Triton yet: then it
    may set ``TRITON_INTERPRET=1`` for itself (Triton reads it when first imported)."""
    top = sys.modules.get("__main__")
    run_as_module = getattr(getattr(top, "__spec__", None), "name", "") == "mixerc.cli"
    ours = getattr(top, "main", None) is main or run_as_module
    return ours and "triton" not in sys.modules


@main.command()
@click.argument("spec")
@click.option("--dims", help="dim sizes, e.g. h=4,p=16,n=16 (default: the spec's example dims)")
@click.option("--shape", default="b=2,l=37", show_default=True,
              help="batch and length of the test inputs (and a 2-D spec's other sequence axis, default 3)")
@click.option("--chunk-size", type=int, default=16, show_default=True)
@click.option("--tol", type=float, default=1e-9, show_default=True, help="max relative error (fp64)")
@click.option("--seed", type=int, default=0, show_default=True)
@_guard
def check(spec, dims, shape, chunk_size, tol, seed):
    """Every lowering against the reference: forward, final state, gradients, step (fp64). The
    triton lowering runs on CPU tensors in Triton's interpreter: TRITON_INTERPRET=1 is set for it
    when unset (in a child process when this one cannot: Triton already imported)."""
    from .check import InterpretedCheck, cli_lowerings, default_lowerings, run_check

    spec_obj, graph, sizes = _spec_and_dims(spec, dims)
    bl = {"b": 2, "l": 37, **_shape(graph, shape)}
    axes = {ax: bl.get(ax, 3) for ax in graph.seq_axes[:-1]}
    args = dict(b=bl["b"], l=bl["l"], chunk_size=chunk_size, tol=tol, seed=seed, **({"axes": axes} if axes else {}))
    interpret = setting("triton_interpret")  # None: unset
    if "triton" in cli_lowerings(graph) and interpret is None and _is_the_program():
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton: run it here, interpreted
    here = default_lowerings(graph)
    missing = [low for low in cli_lowerings(graph) if low not in here]  # triton, outside the interpreter
    child, problem = None, None
    if missing and interpret is False:
        problem = ("skipped", "TRITON_INTERPRET=0 is set (unset it, or set it to 1, to run it in Triton's "
                   "interpreter)")
    elif missing:
        child = InterpretedCheck(spec, sizes, lowerings=missing, **args).start()
    with console.status(f"checking {spec_obj.name} ..."):
        results = run_check(spec_obj, sizes, lowerings=here, **args)
        if child is not None:
            extra, problem = child.finish()
            results += extra
    shown = ", ".join(f"{k}={v}" for k, v in {"b": bl["b"], **axes, "l": bl["l"], **sizes}.items())
    table = Table(title=f"{spec_obj.name}: max relative error vs reference (fp64, {shown})")
    for col in ("lowering", "forward", "final state", "gradients", "step", "result"):
        table.add_column(col, justify="right" if col not in ("lowering", "result") else "left")
    for r in results:
        step = "-" if r.step is None else f"{r.step:.1e}"
        state = "-" if r.state is None else f"{r.state:.1e}"
        table.add_row(r.lowering, f"{r.forward:.1e}", state, f"{r.grads:.1e}", step,
                      "[green]pass[/]" if r.ok else "[bold red]FAIL[/]")
    failed = problem is not None and problem[0] == "error"
    for low in missing if failed else ():
        table.add_row(low, "-", "-", "-", "-", "[bold red]FAIL[/]")
    console.print(table)
    if problem is not None and problem[0] == "skipped":
        err_console.print(f"[bold yellow]warning: the {', '.join(missing)} lowering was NOT checked:[/] "
                          f"{_one_line(problem[1])}", soft_wrap=True)
    elif failed:
        err_console.print(f"[bold red]{', '.join(missing)} failed to run:[/] {_one_line(problem[1])}",
                          soft_wrap=True)
    if "triton" not in cli_lowerings(graph):
        console.print(f"(no triton row: the Triton kernels do not cover {spec_obj.name}'s structures; it "
                      "runs on the torch lowerings)", soft_wrap=True, markup=False)
    if failed or not all(r.ok for r in results):
        sys.exit(1)


@main.command()
@click.option("--examples", "-n", type=click.IntRange(min=1), default=200, show_default=True,
              help="random specs to check")
@click.option("--seed", type=int, default=0, show_default=True, help="the same seed replays the same specs")
@click.option("--triton", is_flag=True, help="also the triton lowering (in Triton's interpreter without a GPU; "
              "slow: ~10 s a spec)")
@click.option("--compiled", is_flag=True, help="also the compiled CPU path (inductor's C++; slow: a compile of "
              "minutes per spec)")
@click.option("--tol", type=float, default=1e-9, show_default=True, help="max relative error (fp64)")
@click.option("--no-shrink", is_flag=True, help="report the first failing spec as found, not shrunk")
@_guard
def fuzz(examples, seed, triton, compiled, tol, no_shrink):
    """Differential fuzzing: random specs from the DSL's grammar, every lowering against the
    reference in fp64 (output, every gradient, final states, prefill + step, segments). A failure
    is shrunk to a small spec and printed as source to paste into a file for `mixerc check`."""
    if triton and "triton" not in sys.modules:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"  # read when triton is first imported
    from .fuzz import fuzz as run_fuzz

    what = "torch lowerings" + (" and triton" if triton else "") + (" and compiled" if compiled else "")
    start = time.perf_counter()
    with console.status(f"fuzzing {what} ...") as status:
        def progress(rep):
            status.update(f"fuzzing {what}: {rep.passed}/{examples} specs passed")
            if not console.is_terminal and rep.passed % 10 == 0:  # a log file: a line now and then
                console.print(f"{rep.passed}/{examples} specs passed ({time.perf_counter() - start:.0f} s)",
                              markup=False)

        report = run_fuzz(examples, seed, triton=triton, tol=tol, shrink=not no_shrink, progress=progress,
                          compiled=compiled)
    lows = ", ".join(f"{k} {v}" for k, v in sorted(report.by_lowering.items()))
    console.print(f"{report.passed} random specs passed ({lows}) in {time.perf_counter() - start:.0f} s; "
                  f"{sum(report.rejected.values())} the DSL refused", markup=False, soft_wrap=True)
    for msg, count in report.rejected.most_common(5):
        console.print(f"  refused {count}x: {msg}", markup=False, soft_wrap=True)
    if report.failure:
        console.print("[bold red]FAIL[/] (shrunk):", soft_wrap=True)
        console.print(report.failure, markup=False, soft_wrap=True)
        replay = f"mixerc fuzz --seed {seed} --examples {examples}" + " --triton" * triton + " --compiled" * compiled
        console.print(f"replay: {replay}", markup=False, soft_wrap=True)
        sys.exit(1)


def _cache_problem(path) -> str | None:
    """Why ``path`` (the cache directory) cannot be looked at, or None (absent counts as fine)."""
    from pathlib import Path

    for p in [Path(path), *Path(path).parents]:
        if os.path.lexists(p):
            return None if p.is_dir() else f"{p} is not a directory"
    return None


DTYPES = {"fp32": "float32", "fp64": "float64", "fp16": "float16", "bf16": "bfloat16"}


@main.command()
@click.argument("spec")
@click.option("--dims", help="dim sizes, e.g. h=8,p=64,n=64 (default: the spec's example dims)")
@click.option("--shape", default="b=2,l=1024", show_default=True,
              help="batch and length (and a 2-D spec's other sequence axis, default 3)")
@click.option("--lengths", help="lengths to time, e.g. 1024,2048,4096 (default: the --shape length)")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="fp32", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--backward", is_flag=True,
              help="time forward + backward (and check the gradient of every input and parameter)")
@click.option("--repeats", type=int, default=5, show_default=True, help="timed rounds per length")
@click.option("--chunk-size", type=int, default=None, help="chunk of every lowering and peer (default 64)")
@click.option("--lowerings", help="the lowerings to run, e.g. chunked,recurrent (default: every one here)")
@click.option("--plot", type=click.Path(dir_okay=False), help="write time against length (log-log) to this PNG")
@click.option("--contention", type=int, default=0, show_default=True,
              help="busy processes to run beside the timing (a loaded machine: docs/contention.md)")
@_guard
def bench(spec, dims, shape, lengths, dtype, device, backward, repeats, chunk_size, lowerings, plot, contention):
    """Every lowering of SPEC and the installed peers side by side: each output checked against the
    fp64 reference first (a contender that differs or crashes is rejected, with why), then the median
    of interleaved rounds with its spread, and the speed against what backend='auto' runs."""
    import torch
    from rich.progress import Progress

    from .bench import plot as plot_png
    from .bench import render, run_bench

    spec_obj, graph, sizes = _spec_and_dims(spec, dims)
    bl = {"b": 2, "l": 1024, **_shape(graph, shape)}
    axes = {ax: bl.get(ax, 3) for ax in graph.seq_axes[:-1]}
    try:
        ls = [int(v) for v in lengths.split(",")] if lengths else [bl["l"]]
    except ValueError:
        _fail(f"--lengths {lengths!r}: expected comma-separated integers, e.g. 1024,2048,4096")
    lows = [v.strip() for v in lowerings.split(",")] if lowerings else None
    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("checking against the fp64 reference ...", total=None)

        def step(n, what, total=None):
            bar.update(task, advance=n, description=what, **({"total": total} if total is not None else {}))
        result = run_bench(spec_obj, sizes, bl["b"], ls, dtype=getattr(torch, DTYPES[dtype]), device=device,
                           backward=backward, repeats=repeats, chunk_size=chunk_size, lowerings=lows,
                           axes=axes or None, progress=step, contention=contention)
    render(result, console)
    if plot:
        console.print(f"wrote {plot_png(result, plot)}", markup=False, soft_wrap=True)


@main.command()
@click.argument("spec", required=False)
@click.option("--dims", help="dim sizes, e.g. h=8,p=64,n=64 (default: the spec's example dims)")
@click.option("--shape", default="b=2,l=4096", show_default=True,
              help="batch and length to tune at (and a 2-D spec's other sequence axis, default 3); the winner "
              "serves the length's power-of-two bucket")
@click.option("--dtype", default="fp32", show_default=True, help="fp32, bf16, fp16 or fp64")
@click.option("--device", default="cpu", show_default=True,
              help="cpu (the torch lowerings), or cuda (the Triton kernels' configs, timed on the GPU)")
@click.option("--backend", default=None, help="tune only this lowering's chunk sizes (not cached as the winner); "
              "triton: the Triton kernels' configs (on --device cpu in Triton's interpreter: tiny shapes only)")
@click.option("--effort", default="quick", show_default=True, help="quick or full (a wider space, more rounds)")
@click.option("--budget", default=None, help="seconds of wall time at most (default: quick 100, full 900)")
@click.option("--retune", is_flag=True, help="measure again even when the cache holds this key")
@click.option("--backward", is_flag=True, help="tune forward + backward: the winner of training calls (a call "
              "whose inputs or parameters require grad); without it, of calls that need no gradient")
@click.option("--show", is_flag=True, help="list the tuning cache's entries")
@click.option("--clear", is_flag=True, help="remove every tuning entry")
@click.option("--export", "export_to", type=click.Path(dir_okay=False),
              help="write every valid entry to this JSON file (load it with mx.load_tuning)")
@_guard
def autotune(spec, dims, shape, dtype, device, backend, effort, budget, retune, backward, show, clear, export_to):
    """Tune SPEC's lowering and chunk size (CPU) or its Triton kernels' configs (--device cuda) at one
    shape on this machine and cache the winner ($MIXERC_CACHE_DIR/tuning): the space is pruned before
    anything runs, every candidate is checked against the fp64 reference before it is timed, timing
    interleaves the candidates and re-times the leaders.
    With --show, --clear or --export: the cache instead (no SPEC)."""
    from . import tuning

    given = [f"--{a}" for a, on in (("show", show), ("clear", clear), ("export", export_to)) if on]
    if len(given) > 1:
        raise BackendError(f"mixerc autotune takes one of --show, --clear, --export, got {' and '.join(given)}")
    if given and spec:
        raise BackendError(f"mixerc autotune {given[0]} works on the whole tuning cache: drop the SPEC {spec!r}")
    root = tuning.tuning_dir()
    problem = _cache_problem(root)
    if problem:
        raise BackendError(f"tuning directory {root} (under MIXERC_CACHE_DIR) cannot be used: {problem}; point "
                           "MIXERC_CACHE_DIR at a directory")
    if clear:
        console.print(f"removed {tuning.clear()} file(s) from {root}", markup=False, soft_wrap=True)
        return
    if export_to:
        try:
            n = tuning.export(export_to)
        except OSError as e:
            raise BackendError(f"--export {export_to!r}: cannot write it ({type(e).__name__}: "
                               f"{e.strerror or e}); pick a writable path") from None
        console.print(f"wrote {n} entr{'y' if n == 1 else 'ies'} to {export_to}; load them with "
                      f"mx.load_tuning({export_to!r})", markup=False, soft_wrap=True)
        return
    if show:
        _show_tuning(tuning, root)
        return
    if not spec:
        raise BackendError("mixerc autotune needs a SPEC (e.g. mixerc autotune mamba2 --shape b=2,l=4096), "
                           "or one of --show, --clear, --export FILE")
    _run_autotune(spec, dims, shape, dtype, device, backend, effort, budget, retune, backward)


def _show_tuning(tuning, root):
    rows = tuning.entries()
    console.print(f"tuning cache: {root} ({len(rows)} entr{'y' if len(rows) == 1 else 'ies'}, "
                  f"{sum(e is None for _, e, _ in rows)} unusable)", markup=False, soft_wrap=True)
    if not rows:
        return
    cols = ("spec", "dims", "dtype", "bucket", "pass", "backend", "winner", "vs default", "file")
    cells = []
    for path, entry, why in rows:
        if entry is None:
            cells.append(("?", "", "", "", "", "", f"unusable: {why}", "", path.name))
            continue
        k, m = entry["key"], entry["measured"]
        winner = tuning.label(tuple(tuning.Choice.of(c) for c in entry["winner"]))
        ratio = (f"{m['default_median_s'] / m['median_s']:.2f}x"
                 if m.get("default_median_s") and m.get("median_s") else "-")
        bucket = ",".join(f"{a}<={v}" for a, v in k["bucket"].items())
        cells.append((k["spec"], ",".join(f"{a}={v}" for a, v in k["dims"].items()), k["dtype"], bucket, k["pass"],
                      k.get("backend", "torch"), winner, ratio, path.name))
    table = Table()
    for col in cols:
        table.add_column(col, no_wrap=True)
    for row in cells:
        table.add_row(*row)
    if console.measure(table, options=console.options.update_width(10_000)).maximum <= console.width:
        console.print(table)
        return
    # a terminal too narrow for the table (rich would cut every cell to "…"): one entry per line
    for row in cells:
        console.print("  " + ", ".join(f"{c}: {v}" for c, v in zip(cols, row) if v), markup=False, soft_wrap=True)


def _run_autotune(spec, dims, shape, dtype, device, backend, effort, budget, retune, backward):
    if device == "cpu" and backend == "triton" and setting("triton_interpret") is None and _is_the_program():
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton: the kernels run interpreted
    import torch
    from rich.progress import Progress

    from .autotune import EFFORTS, render, tune

    if dtype not in DTYPES:
        raise BackendError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if device not in ("cpu", "cuda"):
        raise BackendError(f"--device {device!r}: choose cpu or cuda")
    if effort not in EFFORTS:
        raise BackendError(f"--effort {effort!r}: choose one of {', '.join(EFFORTS)}")
    seconds = None
    if budget is not None:
        try:
            seconds = float(budget)
        except ValueError:
            seconds = -1.0
        if not seconds > 0 or seconds != seconds or seconds == float("inf"):
            raise BackendError(f"--budget {budget!r}: give a positive number of seconds, e.g. --budget 60")
    spec_obj, graph, sizes = _spec_and_dims(spec, dims)
    bl = {"b": 2, "l": 4096, **_shape(graph, shape)}
    axes = {ax: bl.get(ax, 3) for ax in graph.seq_axes[:-1]}
    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("tuning ...", total=None)

        def step(n, what, total=None):
            bar.update(task, advance=n, description=what, **({"total": total} if total is not None else {}))
        result = tune(spec_obj, sizes, bl["b"], bl["l"], dtype=getattr(torch, DTYPES[dtype]), device=device,
                      backend=backend, effort=effort, budget=seconds, axes=axes or None, retune=retune,
                      backward=backward, progress=step)
    render(result, console)


@main.command("cache")
@click.option("--show", is_flag=True, help="where the cache is and what it holds (the default)")
@click.option("--verify", is_flag=True, help="check every entry's key and sha256; exit 1 when one is damaged")
@click.option("--clear", is_flag=True, help="remove every entry (and leftover temporary files)")
@_guard
def cache_cmd(show, verify, clear):
    """The kernel cache ($MIXERC_CACHE_DIR/kernels) and the compiled CPU path's entries
    ($MIXERC_CACHE_DIR/compiled): show, verify (kernels) or clear its entries. A damaged
    entry is regenerated by itself at its next use (with a warning); --verify finds them now."""
    from . import cache

    given = [f"--{a}" for a, on in (("show", show), ("verify", verify), ("clear", clear)) if on]
    if len(given) > 1:
        raise BackendError(f"mixerc cache takes one of --show, --verify, --clear, got {' and '.join(given)}")
    action = "verify" if verify else "clear" if clear else "show"
    root = cache.configured_dir()
    problem = _cache_problem(root)
    if problem:
        raise BackendError(f"cache directory {root} (MIXERC_CACHE_DIR) cannot be used: {problem}; point "
                           "MIXERC_CACHE_DIR at a directory")
    try:
        if action == "clear":
            console.print(f"removed {cache.clear()} file(s) from {cache.kernels_dir()} and {cache.compiled_dir()}",
                          markup=False, soft_wrap=True)
            return
        checks = [cache.check_file(p) for p in cache.entries()]
        leftovers = cache.leftovers()
    except OSError as e:
        raise BackendError(f"cache directory {root}: {type(e).__name__}: {e.strerror or e}") from None
    bad = [c for c in checks if not c.ok]
    size = sum(c.path.stat().st_size for c in checks if c.path.is_file())
    console.print(f"cache: {cache.kernels_dir()} ({len(checks)} entr{'y' if len(checks) == 1 else 'ies'}, "
                  f"{size / 1024:.0f} KiB, {len(bad)} damaged, {len(leftovers)} leftover file(s))",
                  markup=False, soft_wrap=True)
    if action == "verify":
        for c in checks:
            console.print(f"{'ok' if c.ok else 'DAMAGED'}  {c.path.name}{'' if c.ok else ': ' + c.why}",
                          markup=False, soft_wrap=True)
    else:
        for c in checks:
            console.print(f"  {c.path.name}" + ("" if c.ok else f"  (damaged: {c.why})"), markup=False,
                          soft_wrap=True)
    for p in leftovers:
        console.print(f"  leftover {p.name} (mixerc cache --clear removes it)", markup=False, soft_wrap=True)
    saved = cache.compiled_entries()
    console.print(f"compiled CPU entries: {cache.compiled_dir()} ({len(saved)} file(s), "
                  f"{sum(p.stat().st_size for p in saved) / 1024:.0f} KiB; --clear removes them)", markup=False,
                  soft_wrap=True)
    if action == "verify" and bad:
        err_console.print(f"[bold red]{len(bad)} damaged entr{'y' if len(bad) == 1 else 'ies'}[/]: mixerc "
                          "regenerates each at its next use, or run mixerc cache --clear", soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
