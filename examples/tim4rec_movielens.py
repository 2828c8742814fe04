"""TiM4Rec on MovieLens-100k: next-item recommendation with time gaps, under RecBole's protocol.

    pip install --no-deps recbole==1.2.1      # only for the data file it ships; nothing of recbole is imported
    python examples/tim4rec_movielens.py [--quick] [--seeds 3] [--out /tmp/tim4rec_ml100k.png]

Data: recbole's wheel ships ``dataset_example/ml-100k/ml-100k.inter`` (943 users, 1682 movies, 100,000
ratings with Unix timestamps). It is read from the installed package's folder; it is never downloaded
here and never copied into the repository.

Protocol (RecBole's sequential evaluation): every user's interactions in time order; chronological
leave-one-out (the last item is the test target, the second to last the validation target, the rest
train); full ranking over all 1682 items (no history masking, as RecBole's sequential evaluation);
HR@10 and NDCG@10; the test metrics of the epoch with the best validation NDCG@10.

Training: every model here is causal, so it learns from all positions of a training sequence at once
(next-item cross-entropy over all items at every position; the sequences cut into non-overlapping
windows of ``--max-len`` from their end). RecBole feeds one sample per prefix instead; for a causal
model that is the same sum of per-position losses, windowed differently. Upstream's non-causal time
path can only learn from prefixes (~50x the compute per epoch), which does not fit this budget.

Models, trained identically (same windows, Adam lr 1e-3, batch 128, dropout 0.2, 20 epochs):
  - TiM4Rec (``mixerc.nn.TiM4Rec``, ``causal_time=True``, upstream's 64-d config: 2 layers,
    d_state 32, head_dim 32);
  - TiM4Rec without time (``is_time=False``: plain SSD, the ablation);
  - SASRec (a causal post-LN Transformer of the same width, 2 layers, 2 heads, learned positions);
  - popularity (train counts).
Each of the first three over ``--seeds`` seeds, two runs at a time in separate processes; the
table gives mean ± std, the PNG the bars and validation curves, a JSON beside it the numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

from mixerc.nn import TiM4Rec

console = Console()
K = 10


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def ml100k_path() -> Path:
    spec = importlib.util.find_spec("recbole")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("MovieLens-100k is read from the recbole wheel, which ships it: "
                         "pip install --no-deps recbole==1.2.1   (or pip install -e '.[recsys]')")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k" / "ml-100k.inter"
    if not path.exists():
        raise SystemExit(f"{path} is missing: install recbole==1.2.1, whose wheel ships it")
    return path


def load_sequences(path: Path):
    """Per user, the item ids (1..n_items-1; 0 = padding) and Unix timestamps (int64) in time order
    (ties keep the file order, a stable sort)."""
    raw = np.loadtxt(path, dtype=np.int64, skiprows=1, usecols=(0, 1, 3))
    users, items, ts = raw[:, 0], raw[:, 1], raw[:, 2]
    _, item_ids = np.unique(items, return_inverse=True)
    item_ids = item_ids + 1
    order = np.lexsort((ts, users))  # lexsort is stable: by user, then time, then file order
    users, item_ids, ts = users[order], item_ids[order], ts[order]
    cuts = np.flatnonzero(np.diff(users)) + 1
    return np.split(item_ids, cuts), np.split(ts, cuts), int(item_ids.max()) + 1


def prefixes(seqs, times, targets_at, L):
    """Right-padded prefixes (N, L) of items and timestamps, their lengths and the targets, one per
    (user, target position)."""
    n = sum(len(t) for t in targets_at)
    items, stamps = np.zeros((n, L), np.int64), np.zeros((n, L), np.int64)
    lens, tgt = np.zeros(n, np.int64), np.zeros(n, np.int64)
    row = 0
    for s, tm, ts_ in zip(seqs, times, targets_at):
        for t in ts_:
            lo = max(0, t - L)
            items[row, :t - lo], stamps[row, :t - lo] = s[lo:t], tm[lo:t]
            lens[row], tgt[row] = t - lo, s[t]
            row += 1
    return [torch.from_numpy(a) for a in (items, stamps, lens, tgt)]


def windows(seqs, times, L):
    """The training part of every sequence (all but its last two items) cut into non-overlapping
    windows of L inputs, from its end backwards: items and timestamps (N, L) right-padded, lengths,
    and the next item at every position (0 = no target). Every training target appears once."""
    rows = []
    for s, tm in zip(seqs, times):
        n = len(s) - 2  # s[:n] is the training part; inputs s[0..n-2] predict s[1..n-1]
        for end in range(n - 1, 0, -L):
            lo = max(0, end - L)
            rows.append((s[lo:end], tm[lo:end], s[lo + 1:end + 1]))
    N = len(rows)
    items, stamps, tgt = np.zeros((N, L), np.int64), np.zeros((N, L), np.int64), np.zeros((N, L), np.int64)
    lens = np.zeros(N, np.int64)
    for r, (a, t, y) in enumerate(rows):
        items[r, :len(a)], stamps[r, :len(a)], tgt[r, :len(a)], lens[r] = a, t, y, len(a)
    return [torch.from_numpy(a) for a in (items, stamps, lens, tgt)]


def split(seqs, times, L):
    """Chronological leave-one-out: train on s[:n-2], validate on target n-2, test on n-1 (each with
    the L items before it)."""
    train = windows(seqs, times, L)
    valid = prefixes(seqs, times, [[len(s) - 2] for s in seqs], L)
    test = prefixes(seqs, times, [[len(s) - 1] for s in seqs], L)
    return train, valid, test


# ------------------------------------------------------------------------------------------------
# SASRec: a causal Transformer of the same width
# ------------------------------------------------------------------------------------------------
class SASRec(nn.Module):
    def __init__(self, n_items, hidden_size=64, num_layers=2, n_heads=2, max_seq_length=50, dropout_prob=0.2):
        super().__init__()
        self.item_embedding = nn.Embedding(n_items, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(max_seq_length, hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(dropout_prob)
        layer = nn.TransformerEncoderLayer(hidden_size, n_heads, 4 * hidden_size, dropout_prob, activation="gelu",
                                           batch_first=True, layer_norm_eps=1e-12)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def hidden_states(self, item_seq, time_stamp=None, item_seq_len=None):
        l = item_seq.shape[1]
        h = self.item_embedding(item_seq) + self.position_embedding.weight[:l]
        mask = torch.triu(torch.full((l, l), float("-inf")), diagonal=1)  # causal: padding is never seen
        return self.encoder(self.dropout(self.layer_norm(h)), mask=mask, is_causal=True)

    def forward(self, item_seq, item_seq_len, time_stamp=None):
        h = self.hidden_states(item_seq)
        return h[torch.arange(h.shape[0]), item_seq_len - 1]


# ------------------------------------------------------------------------------------------------
# training and evaluation
# ------------------------------------------------------------------------------------------------
def scores(model, items, stamps, lens):
    out = model(items, lens, stamps)
    s = out @ model.item_embedding.weight.t()
    s[:, 0] = -math.inf  # the padding item is never recommended
    return s


@torch.no_grad()
def evaluate(model, data, batch=512):
    """HR@10 and NDCG@10 of full ranking: rank = number of items scored above the target."""
    model.eval()
    items, stamps, lens, tgt = data
    hr = ndcg = 0.0
    for i in range(0, len(tgt), batch):
        s = scores(model, items[i:i + batch], stamps[i:i + batch], lens[i:i + batch])
        target = s.gather(1, tgt[i:i + batch, None])
        rank = (s > target).sum(1).double()
        hit = rank < K
        hr += float(hit.sum())
        ndcg += float((hit / torch.log2(rank + 2)).sum())
    return hr / len(tgt), ndcg / len(tgt)


def popularity(seqs, valid, test, n_items):
    """Rank every item by its count in the training interactions (each user's all but last two)."""
    counts = torch.bincount(torch.from_numpy(np.concatenate([s[:-2] for s in seqs])), minlength=n_items).double()
    counts[0] = -1
    res = []
    for data in (valid, test):
        s = counts.expand(len(data[3]), -1)
        target = s.gather(1, data[3][:, None])
        rank = (s > target).sum(1).double()  # ties counted in the target's favour, as for the models
        hit = rank < K
        res.append((float(hit.double().mean()), float((hit / torch.log2(rank + 2)).mean())))
    return res


def make_model(kind, n_items, args):
    common = dict(hidden_size=args.hidden, num_layers=args.layers, max_seq_length=args.max_len,
                  dropout_prob=args.dropout)
    if kind == "SASRec":
        return SASRec(n_items, **common)
    return TiM4Rec(n_items, **common, time_drop_out=args.dropout, d_state=32, expand=2, head_dim=32, chunk_size=32,
                   is_time=(kind == "TiM4Rec"), causal_time=True)


def train_one(kind, seed, data, n_items, args, report):
    """One model and seed; ``report(key, total, advance, description)`` drives the progress bar."""
    torch.set_num_threads(args.threads)
    train, valid, test = data
    torch.manual_seed(seed)
    model = make_model(kind, n_items, args)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(train[3])
    per_epoch = min(n, args.samples_per_epoch or n)
    steps = math.ceil(per_epoch / args.batch)
    key = f"{kind} seed {seed}"
    report(key, args.epochs * steps, 0, key)
    best, curve, t0 = (-1.0, None, 0), [], time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)[:per_epoch]
        for i in range(0, per_epoch, args.batch):
            idx = order[i:i + args.batch]
            items, stamps, lens, tgt = (t[idx] for t in train)
            width = int(lens.max())  # causal models: the padding after the longest row is dropped
            items, stamps, tgt = items[:, :width], stamps[:, :width], tgt[:, :width]
            logits = model.hidden_states(items, stamps, lens) @ model.item_embedding.weight.t()
            loss = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=0)  # every position
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            report(key, None, 1, f"{key} ep {epoch + 1} loss {loss.item():.3f}")
        v = evaluate(model, valid)
        curve.append(v[1])
        if v[1] > best[0]:
            best = (v[1], evaluate(model, test), epoch + 1)
    report(key, None, 0, None)
    return dict(test=best[1], best_epoch=best[2], valid_ndcg=curve, seconds=time.perf_counter() - t0)


def _worker(job):
    kind, seed, data, n_items, args, queue = job
    return kind, seed, train_one(kind, seed, data, n_items, args, lambda *msg: queue.put(msg))


def run_all(jobs, data, n_items, args):
    """Every (model, seed) run, ``--workers`` at a time in separate processes (small models use one
    core each better than two threads share one), the progress bars drawn here."""
    import multiprocessing as mp

    results, tasks = {}, {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        def report(key, total, advance, description):
            if description is None:
                progress.remove_task(tasks.pop(key))
            elif key not in tasks:
                tasks[key] = progress.add_task(description, total=total)
            else:
                progress.update(tasks[key], advance=advance, description=description)

        def done(kind, seed, r):
            results.setdefault(kind, {})[seed] = r
            console.print(f"  {kind:18s} seed {seed}: HR@10 {r['test'][0]:.4f}  NDCG@10 {r['test'][1]:.4f}  "
                          f"(best valid epoch {r['best_epoch']}, {r['seconds']:.0f} s)")

        if args.workers <= 1:
            for kind, seed in jobs:
                done(kind, seed, train_one(kind, seed, data, n_items, args, report))
        else:
            ctx = mp.get_context("spawn")
            with ctx.Manager() as manager, ctx.Pool(args.workers) as pool:
                queue = manager.Queue()
                pending = pool.imap_unordered(_worker, [(k, s, data, n_items, args, queue) for k, s in jobs])
                finished = 0
                while finished < len(jobs):
                    while not queue.empty():
                        report(*queue.get())
                    try:
                        done(*pending.next(timeout=0.2))
                        finished += 1
                    except mp.TimeoutError:
                        pass
                while not queue.empty():
                    report(*queue.get())
    return {kind: [runs[s] for s in sorted(runs)] for kind, runs in results.items()}


def fmt(vals):
    a = np.array(vals)
    return f"{a.mean():.4f} ± {a.std():.4f}" if len(a) > 1 else f"{a.mean():.4f}"


def plot(results, pop, out: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results) + ["popularity"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, j, metric in ((axes[0], 0, "HR@10"), (axes[1], 1, "NDCG@10")):
        means = [np.mean([r["test"][j] for r in results[m]]) for m in results] + [pop[1][j]]
        stds = [np.std([r["test"][j] for r in results[m]]) for m in results] + [0.0]
        ax.bar(names, means, yerr=stds, capsize=4, color=["C0", "C1", "C2", "C7"][:len(names)])
        ax.axhline(0.13 if j == 0 else 0.062, ls="--", c="k", lw=0.8, label="target (RecBole SASRec)")
        ax.set_title(f"test {metric} (mean ± std)")
        ax.legend(fontsize=8)
    for i, (m, runs) in enumerate(results.items()):
        for r in runs:
            axes[2].plot(range(1, len(r["valid_ndcg"]) + 1), r["valid_ndcg"], c=f"C{i}", alpha=0.7,
                         label=m if r is runs[0] else None)
    axes[2].set_xlabel("epoch")
    axes[2].set_title("validation NDCG@10")
    axes[2].legend(fontsize=8)
    fig.suptitle("MovieLens-100k, leave-one-out, full ranking")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, a few hundred samples")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--samples-per-epoch", type=int, default=0, help="0: every training prefix")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--workers", type=int, default=2, help="runs in parallel (processes)")
    ap.add_argument("--models", default="TiM4Rec,TiM4Rec (no time),SASRec")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mixerc-examples" / "tim4rec_ml100k.png",
                    help="the PNG (a JSON of the numbers is written beside it)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.samples_per_epoch, args.batch, args.workers = 1, 1, 256, 128, 1
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    seqs, times, n_items = load_sequences(ml100k_path())
    data = split(seqs, times, args.max_len)
    if args.quick:  # evaluate on a slice of the users
        data = (data[0], *[[t[:100] for t in d] for d in data[1:]])
    console.print(f"ml-100k: {len(seqs)} users, {n_items - 1} items, {sum(map(len, seqs))} interactions; "
                  f"{len(data[0][3])} training windows of up to {args.max_len} items")
    pop = popularity(seqs, data[1], data[2], n_items)

    models = [m.strip() for m in args.models.split(",")]
    jobs = [(kind, seed) for seed in range(args.seeds) for kind in models]
    results = run_all(jobs, data, n_items, args)
    results = {kind: results[kind] for kind in models}

    table = Table(title=f"MovieLens-100k, test, {args.seeds} seed(s), mean ± std")
    for col in ("model", "HR@10", "NDCG@10", "train s / run"):
        table.add_column(col)
    for kind, runs in results.items():
        table.add_row(kind, fmt([r["test"][0] for r in runs]), fmt([r["test"][1] for r in runs]),
                      f"{np.mean([r['seconds'] for r in runs]):.0f}")
    table.add_row("popularity", f"{pop[1][0]:.4f}", f"{pop[1][1]:.4f}", "-")
    console.print(table)
    wall = time.perf_counter() - t_start
    console.print(f"wall time {wall:.0f} s ({args.workers} worker(s) x {args.threads} thread(s))")
    plot(results, pop, args.out)
    summary = dict(args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, wall_s=wall,
                   popularity=dict(valid=pop[0], test=pop[1]), runs=results)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return summary


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
