#!/usr/bin/env python
"""CPU benchmark of the mamba2 forward (fp32): a thin caller of `mixerc bench` (mixerc/bench.py).

`mixerc.bench.run_bench` checks and times the contenders: mixerc's ``chunked`` and ``recurrent``
lowerings and the installed peers (the Mamba-2 paper's einsum listing ships with mixerc), each
checked against the fp64 reference lowering before it is timed and against the baseline at the
benchmark shape, in interleaved rounds with two matmul probes. This script adds what belongs to this
benchmark: the allocator regimes (one child process each), the 3 GB peak-RSS check (a child process of
its own), the fraction of the CPU's matmul throughput, the JSON and the headline ratios.

    python benchmarks/bench_cpu.py                # ratios, matmul fraction, 3 GB memory check
    python benchmarks/bench_cpu.py --scaling      # + time vs l (results/scaling_cpu_<regime>.png)
    python benchmarks/bench_cpu.py --contention 1 # with a busy process beside the timing
    python benchmarks/bench_cpu.py --quick        # tiny shapes, a few seconds (smoke test)

This process never imports torch (a child's ru_maxrss starts from its parent's peak). See
benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

FULL = dict(b=2, l=8192, h=8, p=64, n=64, g=1, chunk=64, repeats=5, memory_l=65536,
            scaling=[512, 1024, 2048, 4096, 8192], matmul_size=1024)
QUICK = dict(b=1, l=256, h=2, p=16, n=16, g=1, chunk=32, repeats=2, memory_l=4096, scaling=[128, 256, 512],
             matmul_size=256)
MEMORY_LIMIT_BYTES = 3 * 10**9  # "3 GB"
LISTING = "einsum listing"
# Allocator regimes, each timed in a fresh child process (benchmarks/README.md): glibc as it comes
# (buffers of 32 MiB and more are mmap'ed and page-faulted in again on every call; mixerc's own policy,
# docs/cpu_memory.md, turned off), and a heap that is never returned to the OS (roughly what a caching
# allocator gives, and what mixerc's default policy sets up at its first CPU call).
BIG = str(1 << 40)
REGIMES = {
    "default": dict(env={"MIXERC_CPU_ALLOCATOR": "keep"}, label="glibc default (MIXERC_CPU_ALLOCATOR=keep)"),
    "retained": dict(env={"MALLOC_MMAP_THRESHOLD_": BIG, "MALLOC_TRIM_THRESHOLD_": BIG},
                     label="retained heap (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_=2^40)"),
}
MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_",
               "MALLOC_ARENA_MAX", "LD_PRELOAD")


def useful_flops(b, l, h, p, n, g, chunk) -> int:
    """Matmul FLOPs of the chunked SSD algorithm per forward, 2*m*n*k per product.

    Per chunk of Q positions: C B^T per group (Q x n x Q), scores @ X per head (Q x Q x p),
    chunk state per head (p x Q x n), state -> output per head (Q x n x p). Full Q x Q blocks are
    counted (the causal half is not subtracted); elementwise work and the inter-chunk pass are not.
    """
    Q = chunk
    c = -(-l // Q)
    per_chunk = g * 2 * Q * Q * n + h * (2 * Q * Q * p + 2 * p * Q * n + 2 * Q * n * p)
    return b * c * per_chunk


def vm_hwm_bytes() -> int | None:
    """Peak RSS of this process's own address space (VmHWM), which, unlike ru_maxrss, does not
    carry over the parent's peak across fork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info(threads) -> dict:
    model = platform.processor() or ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return dict(cpu=model, logical_cpus=os.cpu_count(), threads=threads, python=platform.python_version(),
                git_commit=commit, load_average=os.getloadavg() if hasattr(os, "getloadavg") else None)


def _mixer(cfg):
    import torch

    import mixerc as mx

    torch.set_num_threads(cfg["threads"])
    return mx.compile(mx.load_spec("mamba2"), dims={k: cfg[k] for k in "hpng"}, backend="chunked",
                      chunk_size=cfg["chunk"])


def memory_child(cfg) -> int:
    """One chunked forward under no_grad at b=1, l=memory_l; prints its peak RSS as a JSON line."""
    import torch

    from mixerc.check import random_inputs

    m = _mixer(cfg)
    ins = random_inputs(m, 1, cfg["memory_l"], torch.Generator().manual_seed(3), dtype=torch.float32)
    before_kb, hwm_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, vm_hwm_bytes()
    t0 = time.perf_counter()
    with torch.no_grad():
        y = m(**ins)
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps(dict(peak_rss_bytes=peak_kb * 1024, rss_before_forward_bytes=before_kb * 1024,
                          vm_hwm_bytes=vm_hwm_bytes(), vm_hwm_before_forward_bytes=hwm_before, forward_s=seconds,
                          finite=bool(torch.isfinite(y).all()))))
    return 0


def _probes(cfg, l):
    """Two matmuls timed in the same rounds, writing into out= buffers (arithmetic, not page faults): a
    square one (about the CPU's peak) and the chunked algorithm's main product, batched (b·c·h)
    (Q×Q @ Q×p). name -> (function, FLOPs)."""
    import torch

    s, q = cfg["matmul_size"], cfg["chunk"]
    nb = cfg["b"] * (l // q) * cfg["h"]
    gen = torch.Generator().manual_seed(1)
    sq = torch.randn(s, s, generator=gen), torch.randn(s, s, generator=gen)
    bt = torch.randn(nb, q, q, generator=gen), torch.randn(nb, q, cfg["p"], generator=gen)
    sq_out, bt_out = torch.matmul(*sq), torch.matmul(*bt)
    return {f"matmul {s}^2": (lambda: torch.matmul(*sq, out=sq_out), 2 * s**3),
            f"batched matmul {q}x{q}": (lambda: torch.matmul(*bt, out=bt_out), 2 * nb * q * q * cfg["p"])}


def time_regime(cfg, lengths, console, png=None) -> dict:
    """`mixerc.bench.run_bench` at ``lengths``; its table (and with ``png`` its plot), and per length the
    medians, ratios and the chunked forward's fraction of the probes' matmul throughput."""
    import mixerc as mx
    from mixerc.bench import plot, render, run_bench

    m = _mixer(cfg)  # sets the thread count
    probes = _probes(cfg, lengths[-1])
    r = run_bench(mx.load_spec("mamba2"), dict(m.sizes), cfg["b"], lengths, lowerings=["chunked", "recurrent"],
                  chunk_size=cfg["chunk"], repeats=cfg["repeats"], contention=cfg["contention"],
                  probes={k: f for k, (f, _) in probes.items()})
    render(r, console)
    if png:
        console.print(f"wrote {plot(r, png)}")
    out = dict(r.to_json(), per_length={}, failed=r.failures())
    med = {c.name: {l: statistics.median(ts) for l, ts in c.times.items()} for c in r.contenders}
    if not med.get(LISTING):
        out["failed"].append(f"{LISTING}: not timed")
    for l in lengths:
        if l not in med["chunked"]:
            continue
        row = dict(median_s={k: v[l] for k, v in med.items() if l in v})
        row["ratios"] = {f"chunked_vs_{k.replace(' ', '_')}": v / med["chunked"][l]
                         for k, v in row["median_s"].items() if k != "chunked" and k not in probes}
        if l == lengths[-1]:
            flops = useful_flops(cfg["b"], l, cfg["h"], cfg["p"], cfg["n"], cfg["g"], cfg["chunk"])
            row["matmul_fraction"] = {k: flops / med["chunked"][l] / (f / med[k][l]) for k, (_, f) in probes.items()}
        out["per_length"][str(l)] = row  # JSON's keys are strings
    return out


def regime_child(cfg) -> int:
    """Timing (and scaling) under the allocator regime this process was started with; writes its
    results to cfg["child_json"]."""
    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.rule(f"regime: {REGIMES[cfg['regime']]['label']}")
    out = dict(regime=cfg["regime"], malloc_env={k: os.environ[k] for k in MALLOC_VARS if k in os.environ})
    if cfg["timing"]:
        out["timing"] = time_regime(cfg, [cfg["l"]], console)
    if cfg["scaling"]:
        png = RESULTS / f"scaling_cpu_{cfg['regime']}{cfg['suffix']}.png"
        out["scaling"] = dict(time_regime(cfg, cfg["scaling_l"], console, png), png=str(png))
    Path(cfg["child_json"]).write_text(json.dumps(out, indent=2))
    return 0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="CPU benchmark of mixerc's mamba2 lowerings (forward, fp32).")
    for dim, desc in [("l", "sequence length"), ("b", "batch"), ("h", "heads"), ("p", "head dim"),
                      ("n", "state size"), ("g", "B/C groups (the listing needs g == 1 or g == h)")]:
        ap.add_argument(f"--{dim}", type=int, default=None, help=f"{desc} (default {FULL[dim]}; --quick: {QUICK[dim]})")
    ap.add_argument("--chunk", type=int, default=None, help="chunk size of chunked and of the listing (default 64)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds; medians are reported (default 5)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--contention", type=int, default=0, help="busy processes beside the timing (default 0)")
    ap.add_argument("--scaling", action="store_true", help="also time l in {512..8192}: results/scaling_cpu_*.png")
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                    help="peak-RSS check of chunked at l=65536, b=1 in a child process (default: on)")
    ap.add_argument("--memory-l", type=int, default=None, help="length of the memory check (default 65536)")
    ap.add_argument("--timing", action=argparse.BooleanOptionalAction, default=True,
                    help="checks, timings and matmul fraction at the benchmark shape (default: on)")
    ap.add_argument("--regimes", default="default,retained",
                    help="allocator regimes to time under, comma separated (default: default,retained)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes: the whole script runs in seconds (smoke test)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON results (default results/cpu.json; --quick: results/cpu_quick.json)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # a child's configuration (JSON)
    args = ap.parse_args(argv)
    base = QUICK if args.quick else FULL
    for key in ("l", "b", "h", "p", "n", "g", "chunk", "repeats", "memory_l"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    return args


def child_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_VARS or k == "LD_PRELOAD"}
    env.update(extra)
    return env


def run_child(cfg, env, capture=False, script=__file__):
    """``script --child JSON(cfg)`` in a fresh process whose environment is ours with ``env`` (an
    allocator regime's variables) instead of any ``MALLOC_*`` ones."""
    cmd = [sys.executable, str(Path(script).resolve()), "--child", json.dumps(cfg)]
    sys.stdout.flush()
    return subprocess.run(cmd, env=child_env(env), capture_output=capture, text=True)


def memory_check(cfg, console) -> dict:
    parent_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with console.status(f"memory check: chunked forward at b=1 l={cfg['memory_l']} in a child process"):
        proc = run_child(dict(cfg, kind="memory"), {}, capture=True)
    if proc.returncode != 0:
        return dict(ok=False, error=(proc.stderr or proc.stdout)[-3000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(limit_bytes=MEMORY_LIMIT_BYTES, parent_peak_rss_at_spawn_bytes=parent_kb * 1024,
               ok=res["peak_rss_bytes"] < MEMORY_LIMIT_BYTES and res["finite"])
    return res


def ratio_line(fast, slow, ratio) -> str:
    return f"{fast} is {ratio:.2f}x faster than {slow}" if ratio >= 1 else \
        f"{fast} is {1 / ratio:.2f}x SLOWER than {slow}"


def headline(console, cfg, regime, timing):
    row = timing["per_length"].get(str(cfg["l"]))
    if not row:
        return None
    console.print(f"[bold]\\[{REGIMES[regime]['label']}][/bold]")
    for key, ratio in row["ratios"].items():
        other = key.split("_vs_", 1)[1].replace("_", " ")
        console.print(f"  {ratio_line('chunked', 'the ' + other if other == LISTING else other, ratio)}")
    for probe, frac in row["matmul_fraction"].items():
        console.print(f"  chunked reaches {frac:.1%} of the throughput of {probe}")
    return dict(row["ratios"], **{f"matmul_fraction {k}": v for k, v in row["matmul_fraction"].items()})


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        cfg = json.loads(args.child)
        return memory_child(cfg) if cfg["kind"] == "memory" else regime_child(cfg)

    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=160)
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    problems = [f"--regimes: unknown {r!r}; choose from {', '.join(REGIMES)}" for r in regimes if r not in REGIMES]
    if args.l % args.chunk:
        problems.append(f"--l {args.l} is not a multiple of --chunk {args.chunk}; the listing needs it")
    if args.g not in (1, args.h):
        problems.append(f"--g {args.g}: the listing broadcasts B/C with einsum, so g must be 1 or h")
    problems += [f"--contention {args.contention}: give 0 or more busy processes"] * (args.contention < 0)
    if problems or not regimes:
        console.print("[red]" + ("; ".join(problems) or "--regimes: give at least one") + "[/red]")
        return 2
    suffix = "_quick" if args.quick else ""
    base = QUICK if args.quick else FULL
    cfg = dict(b=args.b, l=args.l, h=args.h, p=args.p, n=args.n, g=args.g, chunk=args.chunk, repeats=args.repeats,
               threads=args.threads, contention=args.contention, memory_l=args.memory_l, timing=args.timing,
               scaling=args.scaling, scaling_l=base["scaling"], matmul_size=base["matmul_size"], suffix=suffix)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = args.out or RESULTS / f"cpu{suffix}.json"
    info = machine_info(args.threads)
    console.rule(f"mixerc mamba2 forward, fp32, {args.threads} threads, {args.contention} busy processes beside")
    console.print(f"cpu: {info['cpu']} ({info['logical_cpus']} logical), load average {info['load_average']}, "
                  f"python {info['python']}, mixerc git {info['git_commit'] or '?'}")
    results = dict(config=cfg, machine=info, regimes={})
    failed = []
    if args.memory:  # first: this process is still small, and a child's ru_maxrss starts from its peak
        mem = results["memory"] = memory_check(cfg, console)
        if "error" in mem:
            failed.append("memory (child failed)")
            console.print(f"[red]memory check: the child process failed:[/red]\n{mem['error']}")
        else:
            console.print(f"memory: chunked forward under no_grad at b=1 l={args.memory_l}: peak RSS "
                          f"{mem['peak_rss_bytes'] / 1e6:.0f} MB (own VmHWM {(mem['vm_hwm_bytes'] or 0) / 1e6:.0f} MB) "
                          f"of {MEMORY_LIMIT_BYTES / 1e6:.0f} MB: {'PASS' if mem['ok'] else 'FAIL'}")
            failed += ["memory"] * (not mem["ok"])
    for regime in regimes if args.timing or args.scaling else []:
        child_json = RESULTS / f".child_{regime}{suffix}.json"
        child_json.unlink(missing_ok=True)
        proc = run_child(dict(cfg, kind="regime", regime=regime, child_json=str(child_json)), REGIMES[regime]["env"])
        if proc.returncode != 0 or not child_json.exists():
            failed.append(f"{regime}: child failed (exit {proc.returncode})")
            continue
        res = results["regimes"][regime] = json.loads(child_json.read_text())
        child_json.unlink()
        failed += [f"{regime}: {f}" for part in ("timing", "scaling") for f in res.get(part, {}).get("failed", [])]
    console.rule("headline: ratios of medians over interleaved rounds (spreads in the tables above)")
    results["headline"] = {regime: headline(console, cfg, regime, r["timing"])
                           for regime, r in results["regimes"].items() if "timing" in r}
    results.update(failed=failed, ok=not failed)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {out_path}")
    if failed:
        console.print(f"[red]FAILED: {'; '.join(failed)}[/red]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
