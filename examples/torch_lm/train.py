"""A small byte-level decoder-only transformer whose FFNs are Mixture-of-Experts layers,
trained on real multilingual text: the fortune cookies of Debian's fortunes packages
(English, German, Spanish, Italian), with a held-out split.

It trains the same model twice, from the same initialisation and data order: once with
moe.torch.MoE, once with an equivalent pure-PyTorch MoE (a loop over experts, as most
PyTorch MoE code is written). Then it compares the loss curves and step times, and shows
with the library's telemetry what the experts learned: per language, the share of
tokens each expert gets and how consistently a sequence stays with its experts.

    python3 examples/torch_lm/train.py [--steps 800] [--out torch_lm-out]

Writes OUT/summary.json, OUT/losses.png and OUT/experts_by_language.png (docs/torch.md)."""
import argparse
import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

import moe
import moe.torch

LANGUAGES = {"en": "", "de": "de", "es": "es", "it": "it"}
SKIP = {"ascii-art", "art", "asciiart"}  # drawings, not language


def read_cookies(root, folder):
    """The cookies of one language: each file's texts between '%' lines, UTF-8 versions
    (name.u8) where the package has them."""
    path = os.path.join(root, folder)
    cookies = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if (name.endswith((".dat", ".u8")) or name in SKIP or os.path.islink(full)
                or not os.path.isfile(full)):
            continue
        if os.path.isfile(full + ".u8"):
            full += ".u8"
        with open(full, "rb") as f:
            text = f.read()
        cookies += [c.strip() for c in text.split(b"\n%\n") if len(c.strip()) > 20]
    return cookies


def load_corpus(root, held_out_every=10):
    """{language: (train bytes, held-out bytes)}: every tenth cookie is held out."""
    corpus = {}
    for language, folder in LANGUAGES.items():
        cookies = read_cookies(root, folder)
        if not cookies:
            raise SystemExit(f"no fortunes for {language} under {root}/{folder}: install "
                             "fortunes fortunes-de fortunes-es fortunes-it (scripts/setup.sh)")
        train = b"\n\n".join(c for i, c in enumerate(cookies) if i % held_out_every)
        held = b"\n\n".join(c for i, c in enumerate(cookies) if i % held_out_every == 0)
        corpus[language] = (np.frombuffer(train, np.uint8), np.frombuffer(held, np.uint8))
    return corpus


def batch(corpus, split, languages, ctx, rng):
    """Windows of ctx+1 bytes, one per requested language."""
    rows = []
    for language in languages:
        data = corpus[language][split]
        start = rng.randrange(0, len(data) - ctx - 1)
        rows.append(data[start:start + ctx + 1])
    t = torch.from_numpy(np.stack(rows).astype(np.int64))
    return t[:, :-1], t[:, 1:]


class TorchMoE(torch.nn.Module):
    """The same MoE in plain PyTorch: softmax router, top-k renormalised, GELU experts,
    the Switch aux loss (E * sum f * Pbar) and the z-loss, a loop over experts."""

    def __init__(self, source, alpha, z_coef):
        super().__init__()
        for n in ("router", "w1", "w2"):
            self.register_parameter(n, torch.nn.Parameter(getattr(source, n).detach().clone()))
        self.top_k, self.alpha, self.z_coef = source.top_k, alpha, z_coef
        self.aux_loss = self.z_loss = None

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = x @ self.router
        probs = logits.softmax(dim=-1)
        gate, idx = torch.topk(probs, self.top_k, dim=-1)
        gate = gate / gate.sum(dim=-1, keepdim=True)
        y = torch.zeros_like(x)
        E = self.w1.shape[0]
        for e in range(E):
            token, slot = (idx == e).nonzero(as_tuple=True)
            if token.numel():
                h = F.gelu(x[token] @ self.w1[e]) @ self.w2[e]
                y = y.index_add(0, token, gate[token, slot, None] * h)
        f = torch.bincount(idx.reshape(-1), minlength=E).to(x.dtype)
        self.aux_loss = self.alpha * E * (f / f.sum() * probs.mean(dim=0)).sum()
        self.z_loss = self.z_coef * torch.logsumexp(logits, dim=-1).square().mean()
        return y.reshape(shape)


class Block(torch.nn.Module):
    def __init__(self, d, heads, ffn):
        super().__init__()
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.attn = torch.nn.MultiheadAttention(d, heads, batch_first=True)
        self.ffn = ffn

    def forward(self, x, causal):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + self.ffn(self.ln2(x))


class LM(torch.nn.Module):
    def __init__(self, args, make_ffn):
        super().__init__()
        d = args.d_model
        self.embed = torch.nn.Embedding(256, d)
        torch.nn.init.normal_(self.embed.weight, std=0.02)  # tied head: small logits at first
        self.pos = torch.nn.Parameter(torch.randn(args.ctx, d) * 0.02)
        self.blocks = torch.nn.ModuleList(
            Block(d, args.heads, make_ffn(i)) for i in range(args.layers))
        self.ln = torch.nn.LayerNorm(d)
        self.register_buffer("causal", torch.triu(torch.full((args.ctx, args.ctx),
                                                             float("-inf")), diagonal=1))

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos[:tokens.shape[1]]
        for block in self.blocks:
            x = block(x, self.causal[:tokens.shape[1], :tokens.shape[1]])
        return self.ln(x) @ self.embed.weight.T  # tied output head

    def router_losses(self):
        return sum(b.ffn.aux_loss + b.ffn.z_loss for b in self.blocks)


def build(args):
    """The library's model and a pure-PyTorch twin with the same initial weights."""
    torch.manual_seed(args.seed)
    backend = "onednn" if "onednn" in moe.backends() else "cpu_ref"
    ours = LM(args, lambda i: moe.torch.MoE(
        args.d_model, args.d_ff, args.experts, args.top_k, activation="gelu", backend=backend,
        load_balance_alpha=args.alpha, router_z_loss_coef=args.z_coef, name=f"layer{i}"))
    twin = LM(args, lambda i: TorchMoE(ours.blocks[i].ffn, args.alpha, args.z_coef))
    twin.load_state_dict(ours.state_dict(), strict=False)  # the MoE buffers are ours only
    for a, b in zip(ours.blocks, twin.blocks):
        for n in ("router", "w1", "w2"):
            getattr(b.ffn, n).data.copy_(getattr(a.ffn, n).data)
    return ours, twin, backend


def evaluate(model, corpus, args, batches=8):
    rng = random.Random(1234)
    model.eval()
    with torch.no_grad():
        total = 0.0
        for _ in range(batches):
            x, y = batch(corpus, 1, list(LANGUAGES) * (args.batch // len(LANGUAGES)), args.ctx,
                         rng)
            total += F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1)).item()
    model.train()
    return total / batches


def train(model, corpus, args):
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    rng = random.Random(args.seed)
    languages = list(LANGUAGES) * (args.batch // len(LANGUAGES))
    curve, held, times = [], [], []
    for step in range(1, args.steps + 1):
        x, y = batch(corpus, 0, languages, args.ctx, rng)
        start = time.perf_counter()
        lr = args.lr * min(1.0, step / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        opt.zero_grad()
        (loss + model.router_losses()).backward()
        opt.step()
        times.append(time.perf_counter() - start)
        curve.append(loss.item())
        if step % args.eval_every == 0 or step == args.steps:
            held.append((step, evaluate(model, corpus, args)))
    return curve, held, times


def experts_by_language(model, corpus, args):
    """Per layer and language: the share of routed copies each expert takes and the
    sequence routing consistency (the library's seq_consistency), on held-out text."""
    rng = random.Random(99)
    out = {}
    model.eval()
    with torch.no_grad():
        for language in LANGUAGES:
            x, _ = batch(corpus, 1, [language] * args.batch, args.ctx, rng)
            model(x)
            for i, b in enumerate(model.blocks):
                experts = b.ffn.layer.routing()["experts"].ravel()
                share = np.bincount(experts[experts >= 0], minlength=args.experts)
                telemetry = b.ffn.layer.telemetry("eval")
                out.setdefault(f"layer{i}", {})[language] = {
                    "share": (share / share.sum()).tolist(),
                    "seq_consistency": telemetry["seq_consistency"],
                    "top1_p_mean": telemetry["top1_p_mean"]}
    model.train()
    return out


def draw(summary, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run in summary["runs"].items():
        curve = np.convolve(run["train_loss"], np.ones(20) / 20, mode="valid")
        ax.plot(np.arange(len(curve)) + 20, curve, label=f"{name}: train (20-step mean)")
        steps, held = zip(*run["held_out_loss"])
        ax.plot(steps, held, "o--", label=f"{name}: held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/byte)")
    ax.set_title("byte-level MoE LM on Debian's fortunes (en, de, es, it)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "losses.png"), dpi=110)

    layers = summary["experts_by_language"]
    fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 3.2))
    axes = np.atleast_1d(axes)
    for ax, (layer, by_language) in zip(axes, layers.items()):
        share = np.array([by_language[lang]["share"] for lang in LANGUAGES])
        image = ax.imshow(share, cmap="viridis", vmin=0, aspect="auto")
        ax.set_yticks(range(len(LANGUAGES)))
        ax.set_yticklabels([f"{lang} (cons. {by_language[lang]['seq_consistency']:.2f})"
                            for lang in LANGUAGES])
        ax.set_xticks(range(share.shape[1]))
        ax.set_xlabel("expert")
        ax.set_title(f"{layer}: share of each language's tokens")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "experts_by_language.png"), dpi=110)


def blas():
    """Which BLAS torch ran, and the environment that tunes OpenBLAS (a fair baseline
    runs with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset: docs/benchmarks.md)."""
    info = {v: os.environ.get(v) for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    try:
        from threadpoolctl import threadpool_info
        info["pools"] = [{k: p.get(k) for k in ("internal_api", "architecture", "num_threads",
                                                "filepath")} for p in threadpool_info()]
    except ImportError:
        info["pools"] = "threadpoolctl not installed"
    return info


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--eval_every", type=int, default=200)
    p.add_argument("--d_model", type=int, default=96)
    p.add_argument("--d_ff", type=int, default=192)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ctx", type=int, default=96)
    p.add_argument("--batch", type=int, default=16, help="sequences per step (a multiple of 4)")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top_k", type=int, default=2)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--z_coef", type=float, default=1e-3)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fortunes", default="/usr/share/games/fortunes")
    p.add_argument("--out", default="torch_lm-out")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch's threads, which the library shares (docs/torch.md)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(max(1, args.threads))
    if args.batch % len(LANGUAGES) or args.steps < 1 or args.eval_every < 1:
        p.error("--batch must be a multiple of 4; --steps and --eval_every >= 1")
    os.makedirs(args.out, exist_ok=True)
    corpus = load_corpus(args.fortunes)
    ours, twin, backend = build(args)
    runs = {}
    for name, model in (("moe.torch", ours), ("pure PyTorch", twin)):
        curve, held, times = train(model, corpus, args)
        runs[name] = {"train_loss": curve, "held_out_loss": held,
                      "step_ms_median": 1000 * float(np.median(times[len(times) // 10:]))}
        print(f"{name}: loss {curve[0]:.3f} -> {np.mean(curve[-20:]):.3f}, held-out "
              f"{held[-1][1]:.3f}, median step {runs[name]['step_ms_median']:.1f} ms")
    a, b = (np.array(runs[n]["train_loss"]) for n in runs)
    summary = {
        "args": vars(args), "backend": backend, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "blas": blas(),
        "corpus_bytes": {lang: [len(t), len(h)] for lang, (t, h) in corpus.items()},
        "runs": runs,
        "max_relative_loss_difference": float(np.max(np.abs(a - b) / b)),
        "experts_by_language": experts_by_language(ours, corpus, args),
        "router_metrics": moe.torch.router_metrics(ours, split="eval"),
    }
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"largest relative difference of the two loss curves: "
          f"{summary['max_relative_loss_difference']:.2e}")
    if not args.no_plots:
        draw(summary, args.out)
    print(f"wrote {args.out}/summary.json" + ("" if args.no_plots else
                                              ", losses.png, experts_by_language.png"))


if __name__ == "__main__":
    main()
