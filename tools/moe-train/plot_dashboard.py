"""Draws moe-train's dashboard from its metrics.jsonl: loss, per-expert served fractions
per layer, entropy, load CV, max_frac and drop rate over steps, with the verdict
thresholds of docs/metrics.md drawn in.

    python3 plot_dashboard.py DIR/metrics.jsonl DIR/dashboard.png
"""
import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    train, evals, layers = [], [], defaultdict(lambda: defaultdict(list))
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") == "train":
                train.append(r)
            elif r.get("kind") == "eval":
                evals.append(r)
            elif r.get("split") == "train" and "layer" in r:
                series = layers[r["layer"]]
                for key, value in r.items():
                    series[key].append(value)
    return train, evals, layers


def main(source, target):
    train, evals, layers = load(source)
    fig, axes = plt.subplots(3, 3, figsize=(16, 12))
    ax = axes[0][0]
    ax.plot([r["step"] for r in train], [r["mse"] for r in train], label="train mse")
    ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val mse")
    ax.set_yscale("log")
    ax.set_title("loss")
    ax.legend()

    panels = [
        (axes[0][1], "load_entropy_norm", "load entropy (normalised)", [(0.5, "imbalanced <0.5")]),
        (axes[0][2], "router_entropy_norm_mean", "router entropy (normalised)",
         [(0.95, "diffuse >0.95"), (0.2, "peaked <0.2")]),
        (axes[1][0], "load_cv", "load CV", [(0.2, "moderate >0.2"), (0.6, "imbalanced >0.6")]),
        (axes[1][1], "max_frac", "max_frac", [(0.35, "imbalanced >0.35"), (0.9, "collapsed >=0.9")]),
        (axes[1][2], "drop_rate", "drop rate", [(0.02, "pressure >0.02")]),
        (axes[2][2], "gini", "Gini of expert load", [(0.05, "LPR target 0.05")]),
    ]
    for ax, key, title, lines in panels:
        for name, series in sorted(layers.items()):
            ax.plot(series["step"], [v if v is not None else float("nan") for v in series[key]],
                    label=name)
        for value, label in lines:
            ax.axhline(value, color="red", linestyle="--", linewidth=0.8)
            ax.text(ax.get_xlim()[0], value, " " + label, color="red", fontsize=8, va="bottom")
        ax.set_title(title)
        ax.legend(fontsize=8)

    for ax, (name, series) in zip([axes[2][0], axes[2][1]], sorted(layers.items())[:2]):
        per_expert = list(zip(*series["frac_srv"]))
        for e, values in enumerate(per_expert):
            ax.plot(series["step"], values, linewidth=0.8, label=f"e{e}")
        if per_expert:
            ax.axhline(1 / len(per_expert), color="black", linestyle=":", linewidth=0.8)
        ax.set_title(f"{name}: served fraction per expert (dotted: 1/E)")
        ax.legend(fontsize=6, ncol=4)
    for ax in axes.flat:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(target, dpi=80)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
