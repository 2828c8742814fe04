"""Classify UEA multivariate series (JapaneseVowels, BasicMotions) with `mixerc.nn.Chimera` over the
(variate x time) grid, against a 1-D baseline of about the same size: a `mixerc.nn.Mamba2` stack over
time with the variates as channels. Same data, optimiser, schedule, epochs and seeds for both.

    pip install --no-deps aeon==1.6.0    # or pip install -e ".[uea]": the datasets ship in the aeon wheel
    python examples/chimera_uea.py                        # both datasets, 3 seeds, plot to --out
    python examples/chimera_uea.py --dataset BasicMotions --seeds 1
    python examples/chimera_uea.py --quick                # seconds: a smoke run (1 seed, a few steps)
    python examples/chimera_uea.py --validation 0.25      # score on a split of the training set, not the test set

Data: the ``.ts`` files inside the installed aeon package (found with importlib, never imported, never
downloaded), read by a small parser here. JapaneseVowels has unequal lengths (7 to 29): the series are
right-padded with zeros and a mask keeps the padding out of the pooling. Both models are causal along
time, so padding after a series never reaches its valid positions. Each variate is standardised with
the training set's mean and standard deviation.

Models (per cell of the grid, or per time step for the baseline):

- Chimera: ``x[v, t] w_v + e_v + W x[:, t]`` (a value and an offset embedding per variate, plus a projection
  of the whole time step shared by its cells), ``layers`` x [x + Chimera(RMSNorm(x))], masked mean over time
  per variate, RMSNorm, a linear head on the variates' features side by side;
- Mamba-2: Linear(variates -> d_model) per time step, ``layers`` x [x + Mamba2(RMSNorm(x))], masked mean
  over time, RMSNorm, linear head; its d_model is picked so that its parameter count is closest to the
  Chimera model's.

Both use the same dropout (``--dropout``) on the embedding, on each layer's output before the residual sum
and before the head.

The test accuracy reported is the one after the last epoch (no selection on the test set), with the
cross-entropy on the same series (no label smoothing). Settings are chosen with ``--validation 0.25``: a
quarter of each class's training series held out (a fixed draw), the model trained on the rest and scored
on it; the test file is then not read.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

from mixerc.nn import Chimera, Mamba2

DATASETS = {  # name: (default epochs, target test accuracy, mean of the seeds)
    "JapaneseVowels": (12, 0.98),
    "BasicMotions": (12, 0.95),
}


# ---------------------------------------------------------------------------------------------- data
def data_dir(name: str) -> Path:
    """aeon's bundled copy of a dataset, located without importing aeon."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or spec.origin is None:
        raise SystemExit("aeon is not installed; the UEA files ship inside its wheel: "
                         "pip install --no-deps aeon==1.6.0 (or pip install -e '.[uea]')")
    path = Path(spec.origin).parent / "datasets" / "data" / name
    if not (path / f"{name}_TRAIN.ts").is_file():
        raise SystemExit(f"{path / (name + '_TRAIN.ts')} not found in the installed aeon; use aeon 1.6.0")
    return path


def read_ts(path: Path, classes: list | None = None):
    """A UEA ``.ts`` file: (list of (V, L_i) float tensors, class indices, class names). Each data line is
    ``v1,v1,...:v2,v2,...:...:label``; ``?`` is a missing value (NaN)."""
    series, labels, names, in_data = [], [], classes, False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            low = line.lower()
            if low.startswith("@classlabel") and names is None:
                names = line.split()[2:]
            in_data = low.startswith("@data")
            continue
        *dims, label = line.split(":")
        rows = [[float("nan") if v == "?" else float(v) for v in d.split(",")] for d in dims]
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"{path}: a series whose variates differ in length")
        series.append(torch.tensor(rows, dtype=torch.float32))
        labels.append(names.index(label.strip()))
    return series, torch.tensor(labels), names


def padded(series):
    """(N, V, L_max) zero right-padded, (N, L_max) bool mask of the valid steps."""
    L = max(s.shape[1] for s in series)
    X = torch.zeros(len(series), series[0].shape[0], L)
    mask = torch.zeros(len(series), L, dtype=torch.bool)
    for i, s in enumerate(series):
        X[i, :, :s.shape[1]] = torch.nan_to_num(s)
        mask[i, :s.shape[1]] = True
    return X, mask


def validation_split(y, fraction):
    """Indices (train, validation): ``fraction`` of each class's training series held out (a fixed draw)."""
    gen = torch.Generator().manual_seed(1234)
    held = []
    for c in y.unique().tolist():
        idx = (y == c).nonzero().flatten()
        held += idx[torch.randperm(len(idx), generator=gen)[:round(fraction * len(idx))]].tolist()
    keep = sorted(set(range(len(y))) - set(held))
    return keep, sorted(held)


def load(name: str, limit: int = 0, validation: float = 0.0):
    """Train and test sets, standardised with the training part's statistics. With ``validation > 0`` the
    test set is replaced by a split of the training set (for choosing settings without the test set)."""
    d = data_dir(name)
    tr, y_tr, classes = read_ts(d / f"{name}_TRAIN.ts")
    if validation:
        keep, held = validation_split(y_tr, validation)
        tr, y_tr, te, y_te = [tr[i] for i in keep], y_tr[keep], [tr[i] for i in held], y_tr[held]
    else:
        te, y_te, _ = read_ts(d / f"{name}_TEST.ts", classes)
    if limit:
        tr, y_tr, te, y_te = tr[:limit], y_tr[:limit], te[:limit], y_te[:limit]
    X_tr, m_tr = padded(tr)
    X_te, m_te = padded(te)
    w = m_tr[:, None, :].float()
    mean = (X_tr * w).sum((0, 2)) / w.sum((0, 2))
    std = (((X_tr - mean[:, None]) * w).square().sum((0, 2)) / w.sum((0, 2))).sqrt().clamp_min(1e-6)
    norm = lambda X, m: (X - mean[:, None]) / std[:, None] * m[:, None, :]  # noqa: E731
    return dict(train=(norm(X_tr, m_tr), m_tr, y_tr), eval=(norm(X_te, m_te), m_te, y_te), classes=classes,
                split="validation" if validation else "test")


# ---------------------------------------------------------------------------------------------- models
def masked_mean(h, mask, dims):
    w = mask.to(h.dtype)
    while w.dim() < h.dim():
        w = w.unsqueeze(-1)
    w = w.expand_as(h[..., :1])
    return (h * w).sum(dims) / w.sum(dims).clamp_min(1.0)


class ChimeraNet(nn.Module):
    def __init__(self, n_var, n_cls, d_model, layers, d_state, headdim, dropout):
        super().__init__()
        self.value = nn.Parameter(torch.randn(n_var, d_model))  # a value embedding per variate
        self.variate = nn.Parameter(0.02 * torch.randn(n_var, d_model))
        self.step = nn.Linear(n_var, d_model)  # the whole time step, added to each of its cells
        self.drop = nn.Dropout(dropout)
        self.norms = nn.ModuleList(nn.RMSNorm(d_model) for _ in range(layers))
        self.layers = nn.ModuleList(Chimera(d_model, d_state=d_state, headdim=headdim) for _ in range(layers))
        self.norm_f = nn.RMSNorm(d_model)
        self.head = nn.Linear(n_var * d_model, n_cls)  # reads every variate's features (the variates are not alike)

    def forward(self, x, mask):  # x (b, V, L), mask (b, L)
        h = x.unsqueeze(-1) * self.value[:, None, :] + self.variate[:, None, :] + self.step(x.transpose(1, 2))[:, None]
        h = self.drop(h)
        for norm, layer in zip(self.norms, self.layers):
            h = h + self.drop(layer(norm(h)))
        m = mask[:, None, :].expand(x.shape)
        return self.head(self.drop(self.norm_f(masked_mean(h, m, 2)).flatten(1)))  # mean over time per variate


class Mamba2Net(nn.Module):
    def __init__(self, n_var, n_cls, d_model, layers, d_state, headdim, dropout):
        super().__init__()
        self.inp = nn.Linear(n_var, d_model)
        self.drop = nn.Dropout(dropout)
        self.norms = nn.ModuleList(nn.RMSNorm(d_model) for _ in range(layers))
        self.layers = nn.ModuleList(Mamba2(d_model, d_state=d_state, headdim=headdim, chunk_size=32)
                                    for _ in range(layers))
        self.norm_f = nn.RMSNorm(d_model)
        self.head = nn.Linear(d_model, n_cls)

    def forward(self, x, mask):
        h = self.drop(self.inp(x.transpose(1, 2)))
        for norm, layer in zip(self.norms, self.layers):
            h = h + self.drop(layer(norm(h)))
        return self.head(self.drop(self.norm_f(masked_mean(h, mask, 1))))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def build(kind, n_var, n_cls, args):
    chimera = ChimeraNet(n_var, n_cls, args.d_model, args.layers, args.d_state, args.headdim, args.dropout)
    if kind == "Chimera":
        return chimera
    hd = args.baseline_headdim
    sizes = [d for d in range(hd // 2, 16 * args.d_model + 1, hd // 2) if (2 * d) % hd == 0]
    mamba = lambda d: Mamba2Net(n_var, n_cls, d, args.layers, args.baseline_d_state, hd, args.dropout)  # noqa: E731
    return mamba(min(sizes, key=lambda d: abs(n_params(mamba(d)) - n_params(chimera))))


# ---------------------------------------------------------------------------------------------- training
def batches(lengths, size, gen):
    """Random batches of series of similar length (less padding to compute): shuffle, sort groups of
    8 batches by length, cut them into batches, shuffle the batches."""
    order = torch.randperm(len(lengths), generator=gen)
    out = []
    for i in range(0, len(order), 8 * size):
        group = order[i:i + 8 * size]
        group = group[torch.sort(lengths[group], stable=True).indices]
        out += [group[j:j + size] for j in range(0, len(group), size)]
    return [out[k] for k in torch.randperm(len(out), generator=gen).tolist()]


def trim(X, mask):
    """Cut the padding every sequence of the batch has (causal models: nothing else changes)."""
    L = int(mask.sum(1).max())
    return X[..., :L], mask[:, :L]


@torch.no_grad()
def evaluate(model, X, mask, y, size=64):
    """(accuracy, mean cross-entropy without label smoothing): the loss tells settings apart where the
    accuracy moves by whole series."""
    model.eval()
    right, loss = 0, 0.0
    order = torch.sort(mask.sum(1), stable=True).indices  # batches of similar length
    for i in range(0, len(y), size):
        idx = order[i:i + size]
        xb, mb = trim(X[idx], mask[idx])
        logits = model(xb, mb)
        right += int((logits.argmax(-1) == y[idx]).sum())
        loss += float(F.cross_entropy(logits, y[idx], reduction="sum"))
    model.train()
    return right / max(len(y), 1), loss / max(len(y), 1)


def run(kind, data, seed, args, progress, task):
    torch.manual_seed(seed)
    X, mask, y = data["train"]
    model = build(kind, X.shape[1], len(data["classes"]), args)
    decay = [p for p in model.parameters() if p.dim() >= 2 and not getattr(p, "_no_weight_decay", False)]
    rest = [p for p in model.parameters() if p.dim() < 2 or getattr(p, "_no_weight_decay", False)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(len(y) / args.batch)
    total = args.epochs * per_epoch if not args.max_steps else min(args.max_steps, args.epochs * per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 10)) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    curve, step, t0, c0 = [], 0, time.perf_counter(), time.process_time()
    for epoch in range(args.epochs):
        losses = []
        for idx in batches(mask.sum(1), args.batch, gen):
            if step >= total:
                break
            xb, mb = trim(X[idx], mask[idx])
            loss = F.cross_entropy(model(xb, mb), y[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step += 1
            progress.advance(task)
        if not losses:
            break
        acc, eval_loss = evaluate(model, *data["eval"])
        curve.append(dict(epoch=epoch + 1, loss=sum(losses) / len(losses), acc=acc, eval_loss=eval_loss))
        progress.update(task, description=f"{task_name(kind, seed)} epoch {epoch + 1} {data['split']} acc {acc:.3f}")
        if not progress.console.is_terminal:  # a log file: one line per epoch
            progress.console.print(f"{task_name(kind, seed)} epoch {epoch + 1}: loss {curve[-1]['loss']:.4f}, "
                                   f"{data['split']} acc {acc:.4f}, loss {eval_loss:.4f}, "
                                   f"{time.perf_counter() - t0:.0f} s")
    return dict(model=kind, seed=seed, params=n_params(model), acc=curve[-1]["acc"], eval_loss=curve[-1]["eval_loss"],
                seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0, curve=curve,
                d_model=model.layers[0].d_model)


def task_name(kind, seed):
    return f"{kind:8s} seed {seed}"


def stats(xs):
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0


def plot(results, split, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 3.4 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        for kind, color in (("Chimera", "tab:red"), ("Mamba2", "tab:blue")):
            runs = [r for r in results[name] if r["model"] == kind]
            if not runs:
                continue
            n = min(len(r["curve"]) for r in runs)
            ep = [runs[0]["curve"][i]["epoch"] for i in range(n)]
            for ax, key in zip(row, ("loss", "acc")):
                vals = torch.tensor([[r["curve"][i][key] for i in range(n)] for r in runs])
                mean, std = vals.mean(0), vals.std(0) if len(runs) > 1 else torch.zeros(n)
                acc = stats([r["acc"] for r in runs])[0]
                label = f"{kind} ({runs[0]['params'] / 1e3:.1f}k params"
                label += f", final {acc:.3f})" if key != "loss" else ")"
                ax.plot(ep, mean, color=color, label=label)
                ax.fill_between(ep, mean - std, mean + std, color=color, alpha=0.2)
        row[0].set(title=f"{name}: training loss (mean ± std over seeds)", xlabel="epoch", ylabel="cross-entropy")
        row[1].set(title=f"{name}: {split} accuracy", xlabel="epoch", ylabel="accuracy")
        for ax in row:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=[*DATASETS, "all"], default="all")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 16 series, a few steps, tiny models")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=0,
                    help="0: the dataset's default (12 for both)")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many optimiser steps (0: no limit)")
    ap.add_argument("--validation", type=float, default=0.0,
                    help="hold out this fraction of each class's training series and report accuracy on it "
                         "instead of the test set (for choosing settings; the test set is then not read)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.3,
                    help="dropout on the embedding, on each layer's residual branch and before the head (both models)")
    ap.add_argument("--d-model", type=int, default=16, help="Chimera's d_model")
    ap.add_argument("--d-state", type=int, default=8, help="Chimera's d_state")
    ap.add_argument("--headdim", type=int, default=4, help="Chimera's headdim (8 heads at d_model=16)")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--baseline-d-state", type=int, default=16)
    ap.add_argument("--baseline-headdim", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on 2 cores shared with other jobs one thread ran ~10x faster than two)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mixerc-examples" / "chimera_uea.png",
                    help="the learning-curve PNG (a .json with every number is written beside it)")
    args = ap.parse_args(argv)
    if args.out.suffix.lower() not in (".png",):
        args.out = args.out.with_name(args.out.name + ".png")
    torch.set_num_threads(args.threads)
    console = Console()
    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    seeds = 1 if args.quick else args.seeds
    if args.quick:
        args.max_steps = args.max_steps or 3
        args.d_model, args.d_state, args.headdim = 8, 2, 8
    results, timing, t_all = {}, {}, time.perf_counter()
    for name in names:
        t0, c0 = time.perf_counter(), time.process_time()
        data = load(name, limit=16 if args.quick else 0, validation=args.validation)
        epochs = args.epochs or (1 if args.quick else DATASETS[name][0])
        run_args = argparse.Namespace(**{**vars(args), "epochs": epochs})
        X = data["train"][0]
        console.print(f"[bold]{name}[/bold]: {len(data['train'][2])} train / {len(data['eval'][2])} {data['split']} "
                      f"series, {X.shape[1]} variates, length <= {X.shape[2]}, {len(data['classes'])} classes; "
                      f"{epochs} epochs, batch {args.batch}")
        per_epoch = math.ceil(len(data["train"][2]) / args.batch)
        steps = per_epoch * epochs if not args.max_steps else min(args.max_steps, per_epoch * epochs)
        results[name] = []
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            for seed in range(seeds):
                for kind in ("Chimera", "Mamba2"):
                    task = progress.add_task(task_name(kind, seed), total=steps)
                    results[name].append(run(kind, data, seed, run_args, progress, task))
        timing[name] = dict(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0,
                            loadavg=os.getloadavg())
        console.print(f"{name}: {timing[name]['wall_s']:.0f} s wall, {timing[name]['cpu_s']:.0f} s CPU; load average "
                      f"{' '.join(f'{x:.1f}' for x in timing[name]['loadavg'])} (1, 5, 15 min)")
    split = "validation" if args.validation else "test"
    table = Table(title=f"{split} accuracy after the last epoch, mean ± std over {seeds} seed(s)")
    for col in ("dataset", "model", "params", "d_model", f"{split} accuracy", f"{split} loss", "target",
                "time per run (wall / CPU)"):
        table.add_column(col)
    verdicts = []
    for name, runs in results.items():
        for kind in ("Chimera", "Mamba2"):
            rs = [r for r in runs if r["model"] == kind]
            m, s = stats([r["acc"] for r in rs])
            target = DATASETS[name][1]
            if kind == "Chimera":
                verdicts.append((name, m, target))
            wall, cpu, loss = (stats([r[k] for r in rs])[0] for k in ("seconds", "cpu_seconds", "eval_loss"))
            table.add_row(name, kind, str(rs[0]["params"]), str(rs[0]["d_model"]), f"{m:.4f} ± {s:.4f}",
                          f"{loss:.4f}", f">= {target}" if kind == "Chimera" else "", f"{wall:.0f} s / {cpu:.0f} s")
    console.print(table)
    plot(results, split, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(
        dict(args={k: str(v) for k, v in vars(args).items()}, split=split, timing=timing, results=results), indent=1))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.json')}; "
                  f"{time.perf_counter() - t_all:.0f} s in all, torch threads {args.threads}")
    if args.quick or args.validation:
        console.print(f"{'quick run' if args.quick else 'validation run'}: no accuracy target")
        return 0
    ok = all(m >= t for _, m, t in verdicts)
    for name, m, t in verdicts:
        console.print(f"{'PASS' if m >= t else 'FAIL'} {name}: Chimera {m:.4f} (target {t})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
