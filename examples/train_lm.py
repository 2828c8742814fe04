"""Train two small character-level models built from mixerc's layers on real text, plot the loss,
and generate from the causal one through the layers' one-token ``step``.

    python examples/train_lm.py                 # the default run (about 3.5 minutes on 2 idle CPU cores)
    python examples/train_lm.py --quick         # tiny model, a few steps: a smoke test
    python examples/train_lm.py --device cuda --steps 2000 --d-model 256
    python examples/train_lm.py --readme-figure # the default run, regenerating the README's figure

The loss plot goes to ``out/`` at the repository root (ignored by git) unless ``--out`` says where;
only ``--readme-figure`` writes the tracked ``examples/figures/train_lm_loss.png``.

The text is the English help pages that ship with Python (``pydoc_data.topics``, ~0.47 MB), at
character level; the last 10% of it (cut at a line start) is held out for validation.

- Model A, a causal LM: embedding -> N x [RMSNorm -> Mamba2 -> residual] -> RMSNorm -> tied head,
  trained on next-character prediction.
- Model B, a masked LM: Hydra is bidirectional (every position sees the whole sequence), so it
  cannot predict the next character without seeing it; it is trained BERT-style instead: 15% of the
  characters are replaced by a [MASK] token and predicted from both sides.

Losses are reported in bits per character and compared with the unigram entropy of the training
text (what a model that knows only the character frequencies achieves). The run ends with one
verdict line, PASS or FAIL: it passes when the causal LM's held-out loss is below ``--target``
times the unigram entropy (0.75 by default; 1.0 with ``--quick``, i.e. it merely beats the unigram
model), and the script exits 0 on PASS and 1 on FAIL.
"""

import argparse
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
README_FIGURE = os.path.join(HERE, "figures", "train_lm_loss.png")  # tracked: only --readme-figure writes it
DEFAULTS = dict(steps=300, d_model=128, layers=4, d_state=32, headdim=32, batch=16, seq_len=256, lr=4e-3,
                evals=10, eval_batches=4, target=0.75, out=os.path.join(ROOT, "out", "train_lm_loss.png"))
QUICK = dict(steps=20, d_model=64, layers=2, d_state=16, headdim=32, batch=8, seq_len=64, lr=1e-2,
             evals=2, eval_batches=2, target=1.0, out=os.path.join(ROOT, "out", "train_lm_quick_loss.png"))
IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".eps", ".ps")


def positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def figure_path(path):
    """The file the plot is written to, decided once: ``path`` made absolute, with ``.png`` appended
    unless it already ends in an image suffix matplotlib writes (so ``--out figq`` -> ``figq.png``)."""
    path = os.path.abspath(os.path.expanduser(path))
    return path if path.lower().endswith(IMAGE_SUFFIXES) else path + ".png"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's real default (from DEFAULTS), but not for on/off flags."""

    def _get_help_string(self, action):
        return action.help if action.nargs == 0 else super()._get_help_string(action)


def parse_args(argv=None):
    rel = lambda path: os.path.relpath(path, ROOT)  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=_HelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: a slice of the text and "
                        + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items() if k != "out")
                        + f", plot to {rel(QUICK['out'])} (flags given explicitly still win)")
    p.add_argument("--steps", type=positive_int, help="optimizer steps per model")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, the batches and the sampling")
    p.add_argument("--device", default="cpu", help="torch device")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="PATH",
                       help="where the loss plot is written (.png appended without an image suffix); "
                            "the default directory is ignored by git")
    where.add_argument("--readme-figure", action="store_true",
                       help=f"write the plot to the README's tracked figure {rel(README_FIGURE)} "
                            "(not with --quick)")
    p.add_argument("--target", type=float,
                   help="PASS when the causal LM's held-out loss is below TARGET x the unigram entropy, "
                        f"else FAIL and exit 1 ({QUICK['target']} with --quick)")
    p.add_argument("--d-model", type=positive_int, help="model width")
    p.add_argument("--layers", type=positive_int, help="mixer blocks per model")
    p.add_argument("--d-state", type=positive_int, help="SSM state size")
    p.add_argument("--headdim", type=positive_int, help="SSM head dim")
    p.add_argument("--chunk", type=positive_int, default=64, help="chunk size of the chunked scan")
    p.add_argument("--mlp", type=int, default=0, help="MLP expansion after each mixer (0: none)")
    p.add_argument("--batch", type=positive_int, help="sequences per step")
    p.add_argument("--seq-len", type=positive_int, help="characters per sequence")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--wd", type=float, default=0.1, help="weight decay of the matrices")
    p.add_argument("--mask-frac", type=float, default=0.15, help="masked fraction for the masked LM")
    p.add_argument("--evals", type=positive_int, help="validation points per run")
    p.add_argument("--eval-batches", type=positive_int, help="batches per validation point")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    p.add_argument("--dry-run", action="store_true",
                   help="print the settings this command would run with and exit without training")
    p.set_defaults(**DEFAULTS)
    if p.parse_known_args(argv)[0].quick:  # --quick changes the defaults, not what was given explicitly
        p.set_defaults(**QUICK)
    a = p.parse_args(argv)
    if a.readme_figure:
        if a.quick:
            p.error("--readme-figure is for the default run, not --quick")
        a.out = README_FIGURE
    a.out = figure_path(a.out)
    return a


def settings(a):
    """One line: every setting the run uses (what --dry-run prints, and every run prints first)."""
    skip = ("quick", "readme_figure", "dry_run")
    return "settings: " + ", ".join(f"{k} {v}" for k, v in vars(a).items() if k not in skip)


if __name__ == "__main__":
    ARGS = parse_args()  # --help, --dry-run and usage errors answer here, before torch & co. take seconds to import
    if ARGS.dry_run:
        print(settings(ARGS))
        sys.exit(0)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,  # noqa: E402
                           TimeElapsedColumn, TimeRemainingColumn)

from mixerc.nn import Hydra, Mamba2  # noqa: E402

BITS = 1 / math.log(2)  # nats -> bits
console = Console()


# -- data ----------------------------------------------------------------------------------------
class Corpus:
    """Characters of the pydoc help pages; the last ``val_frac`` of the pages held out."""

    def __init__(self, max_chars=None, val_frac=0.1):
        from pydoc_data.topics import topics

        pages = [topics[k] for k in sorted(topics)]
        text = "\n".join(pages)[:max_chars]
        split = text.rfind("\n", 0, int(len(text) * (1 - val_frac)))  # at a line start
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.train = self.encode(text[:split])
        self.val = self.encode(text[split:])

    def encode(self, s):
        return torch.tensor([self.stoi[c] for c in s], dtype=torch.long)

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    def unigram_bits(self):
        p = torch.bincount(self.train, minlength=len(self.chars)).double() / len(self.train)
        p = p[p > 0]
        return float(-(p * p.log2()).sum())

    def windows(self, split, batch, length, gen):
        data = self.train if split == "train" else self.val
        start = torch.randint(0, len(data) - length, (batch,), generator=gen)
        return torch.stack([data[s:s + length] for s in start.tolist()])


# -- models --------------------------------------------------------------------------------------
class Block(nn.Module):
    """Pre-norm residual block around a mixer layer, optionally followed by a pre-norm MLP."""

    def __init__(self, d_model, mixer, mlp_ratio=0):
        super().__init__()
        self.norm, self.mixer = nn.RMSNorm(d_model), mixer
        self.mlp = None
        if mlp_ratio:
            self.norm2 = nn.RMSNorm(d_model)
            self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                     nn.Linear(mlp_ratio * d_model, d_model))

    def _mlp(self, x):
        return x if self.mlp is None else x + self.mlp(self.norm2(x))

    def forward(self, x, **kw):
        return self._mlp(x + self.mixer(self.norm(x), **kw))

    def step(self, x, conv_state, ssm_state):  # x: (b, 1, d)
        y, conv_state, ssm_state = self.mixer.step(self.norm(x), conv_state, ssm_state)
        return self._mlp(x + y)


class LM(nn.Module):
    """Embedding -> blocks -> RMSNorm -> head tied to the embedding."""

    def __init__(self, vocab, d_model, blocks, n_embed=None):
        super().__init__()
        self.embed = nn.Embedding(n_embed or vocab, d_model)
        self.blocks, self.norm, self.vocab = nn.ModuleList(blocks), nn.RMSNorm(d_model), vocab
        nn.init.normal_(self.embed.weight, std=0.02)

    def head(self, x):
        return self.norm(x) @ self.embed.weight[:self.vocab].T

    def forward(self, idx, caches=None):  # caches: one (conv_state, ssm_state) per block, filled
        x = self.embed(idx)
        for i, blk in enumerate(self.blocks):
            x = blk(x) if caches is None else blk(x, cache=caches[i])
        return self.head(x)

    def step(self, tok, caches):  # tok: (b,) -> logits (b, vocab); caches updated in place
        x = self.embed(tok[:, None])
        for blk, (conv, ssm) in zip(self.blocks, caches):
            x = blk.step(x, conv, ssm)
        return self.head(x)[:, 0]


def causal_lm(vocab, a):
    mk = lambda: Mamba2(a.d_model, d_state=a.d_state, headdim=a.headdim, chunk_size=a.chunk)  # noqa: E731
    return LM(vocab, a.d_model, [Block(a.d_model, mk(), a.mlp) for _ in range(a.layers)])


def masked_lm(vocab, a):  # one extra embedding row: the [MASK] token, id = vocab
    mk = lambda: Hydra(a.d_model, d_state=a.d_state, headdim=a.headdim, chunk_size=a.chunk)  # noqa: E731
    return LM(vocab, a.d_model, [Block(a.d_model, mk(), a.mlp) for _ in range(a.layers)], vocab + 1)


def causal_loss(model, corpus, split, a, gen):
    """Next-character cross-entropy (nats) on ``batch`` random windows; returns (loss, tokens)."""
    w = corpus.windows(split, a.batch, a.seq_len + 1, gen).to(a.device)
    logits = model(w[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten()), w[:, 1:].numel()


def masked_loss(model, corpus, split, a, gen):
    """Cross-entropy (nats) of the 15% masked characters, predicted from both sides."""
    w = corpus.windows(split, a.batch, a.seq_len, gen)
    mask = torch.rand(w.shape, generator=gen) < a.mask_frac
    x = w.masked_fill(mask, len(corpus.chars)).to(a.device)
    logits = model(x)
    return F.cross_entropy(logits[mask.to(a.device)], w[mask].to(a.device)), w.numel()


# -- training ------------------------------------------------------------------------------------
def optimizer(model, a):
    """AdamW; no weight decay on vectors (norms, biases) nor on what the layer marks
    ``_no_weight_decay`` (the SSM's A_log, D, dt_bias)."""
    decay, keep = [], []
    for p in model.parameters():
        (decay if p.ndim >= 2 and not getattr(p, "_no_weight_decay", False) else keep).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": keep, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))
    warm = max(1, a.steps // 10)

    def lr_scale(s):  # linear warmup over 10% of the steps, then cosine down to 0.1x
        done = min(1.0, max(0, s - warm) / max(1, a.steps - warm))
        return min((s + 1) / warm, 0.1 + 0.45 * (1 + math.cos(math.pi * done)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_scale)


@torch.no_grad()
def evaluate(model, loss_fn, corpus, split, a):
    model.eval()
    gen = torch.Generator().manual_seed(1234)  # the same batches at every evaluation
    loss = sum(loss_fn(model, corpus, split, a, gen)[0].item() for _ in range(a.eval_batches))
    model.train()
    return loss / a.eval_batches * BITS


def train(name, model, loss_fn, corpus, a, progress):
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    opt, sched = optimizer(model, a)
    hist = dict(step=[], train=[], eval_step=[], val=[])
    task = progress.add_task(name, total=a.steps, loss=float("nan"), tps=0.0)
    every, seen, busy = max(1, a.steps // a.evals), 0, 0.0
    for step in range(1, a.steps + 1):
        t0 = time.perf_counter()
        loss, tokens = loss_fn(model, corpus, "train", a, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        hist["step"].append(step)
        hist["train"].append(loss.item() * BITS)
        seen, busy = seen + tokens, busy + time.perf_counter() - t0
        if step % every == 0 or step == a.steps:
            hist["eval_step"].append(step)
            hist["val"].append(evaluate(model, loss_fn, corpus, "val", a))
        progress.update(task, advance=1, loss=hist["train"][-1], tps=seen / busy)
    hist["final_train"] = evaluate(model, loss_fn, corpus, "train", a)
    hist["final_val"], hist["tok_per_s"], hist["train_s"] = hist["val"][-1], seen / busy, busy
    return hist


# -- generation through step ---------------------------------------------------------------------
@torch.no_grad()
def generate(model, corpus, prompt, n, a):
    """Prefill the prompt into each layer's caches, then sample one character at a time with
    ``step``. First checks that prefill(prompt[:-1]) + step(prompt[-1]) gives the full forward's
    logits at the prompt's last position."""
    model.eval()
    ids = corpus.encode(prompt)[None].to(a.device)
    full = model(ids)[:, -1]
    caches = [blk.mixer.allocate_inference_cache(1, ids.shape[1] + n) for blk in model.blocks]
    model(ids[:, :-1], caches=caches)
    logits = model.step(ids[:, -1], caches)
    err = (logits - full).abs().max().item()
    torch.testing.assert_close(logits, full, rtol=1e-3, atol=1e-3)
    gen = torch.Generator(device=a.device).manual_seed(a.seed)
    out = []
    for _ in range(n):
        tok = torch.multinomial(F.softmax(logits / a.temperature, -1), 1, generator=gen)[:, 0]
        out.append(tok.item())
        logits = model.step(tok, caches)
    return corpus.decode(out), err


# -- plot, main ----------------------------------------------------------------------------------
def plot(results, unigram, path):
    """Write the loss curves to ``path`` exactly (already normalised by ``figure_path``)."""
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), sharey=True)
    for ax, (title, h) in zip(axes, results.items()):
        ax.plot(h["step"], h["train"], lw=0.8, alpha=0.6, label="train (per step)")
        ax.plot(h["eval_step"], h["val"], "o-", ms=3, label="val (held-out pages)")
        ax.axhline(unigram, ls="--", c="gray", label=f"unigram entropy {unigram:.2f}")
        ax.set(title=title, xlabel="step", ylim=(0, max(unigram * 1.6, 1)))
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("bits per character")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format=os.path.splitext(path)[1][1:].lower())
    plt.close(fig)


def main(argv=None, args=None):
    a = args if args is not None else parse_args(argv)
    print(settings(a))
    if a.dry_run:
        return 0
    os.makedirs(os.path.dirname(a.out), exist_ok=True)  # an unusable --out fails now, not after training
    t_start = time.perf_counter()
    corpus = Corpus(max_chars=60_000 if a.quick else None)
    unigram = corpus.unigram_bits()
    console.print(f"text: {len(corpus.train):,} train / {len(corpus.val):,} val characters, "
                  f"{len(corpus.chars)} distinct; unigram entropy {unigram:.3f} bits/char")
    torch.manual_seed(a.seed)
    models = {"A: causal LM, Mamba2 blocks": (causal_lm(len(corpus.chars), a).to(a.device), causal_loss),
              "B: masked LM, Hydra blocks": (masked_lm(len(corpus.chars), a).to(a.device), masked_loss)}
    results = {}
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f} bits/char"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as progress:
        for name, (model, loss_fn) in models.items():
            n = sum(p.numel() for p in model.parameters())
            progress.console.print(f"{name}: {a.layers} layers, d_model {a.d_model}, {n / 1e3:.0f}k parameters")
            results[name] = train(name, model, loss_fn, corpus, a, progress)
    plot(results, unigram, a.out)

    prompt = 'The "while" statement\n*********************\n\nThe '
    n_sample = 60 if a.quick else 400
    with console.status(f"decoding {n_sample} characters from A through step ..."):
        sample, err = generate(models["A: causal LM, Mamba2 blocks"][0], corpus, prompt, n_sample, a)
    console.print(f"\nstep-decoded logits vs full forward at the prompt's last position: max |diff| {err:.1e}")
    console.rule("sample (prefill + step, temperature %.1f)" % a.temperature)
    print(prompt + sample)
    console.rule()

    elapsed = time.perf_counter() - t_start
    print(f"unigram entropy (train split): {unigram:.3f} bits/char")
    for name, h in results.items():
        print(f"{name}: train {h['final_train']:.3f}  val {h['final_val']:.3f} bits/char  "
              f"(val = {h['final_val'] / unigram:.2f}x unigram entropy; {a.steps} steps, "
              f"{h['train_s']:.0f} s, {h['tok_per_s']:,.0f} tok/s)")
    print(f"loss curves: {a.out}")
    print(f"total time: {elapsed:.0f} s")
    ratio = results["A: causal LM, Mamba2 blocks"]["final_val"] / unigram
    passed = ratio < a.target  # the one criterion: it decides both the verdict and the exit status
    print(f"{'PASS' if passed else 'FAIL'}: the causal LM's held-out loss is {ratio:.2f}x the unigram entropy "
          f"(target: below {a.target:.2f}x)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(args=ARGS))
