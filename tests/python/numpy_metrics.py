"""An independent numpy recount of docs/metrics.md from a layer's routing() output and the
router probabilities, used to check the library's telemetry."""
import math

import numpy as np

from capacity import capacity


def load_metrics(counts):
    c = np.asarray(counts, dtype=np.float64)
    E, total = len(c), c.sum()
    dead = float((c == 0).sum())
    out = {"dead_experts": dead, "active_experts": E - dead, "fraction_active": (E - dead) / E}
    if total <= 0:
        return out
    p = c / total
    H = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    cv = c.std() / c.mean()
    out.update(
        load_entropy=H, load_entropy_norm=H / math.log(E) if E > 1 else 1.0,
        kl_to_uniform=math.log(E) - H, load_std_pct=float(np.std(100 * p)), load_cv=cv,
        load_variance=cv ** 2, std_tokens_per_expert=float(c.std()), max_load_pct=100 * p.max(),
        max_frac=p.max(), min_max_ratio=c.min() / c.max(), max_over_mean=c.max() / c.mean(),
        maxvio=c.max() / c.mean() - 1, gini=np.abs(c[:, None] - c[None, :]).sum() / (2 * E * total),
        jain_fairness=total ** 2 / (E * (c ** 2).sum()), diversity=math.exp(H) / E,
        # vLLM's and SGLang's balancedness (mean over max) and TensorRT-LLM's imbalance
        # ratio ((max - mean) / mean), as those projects define them over their loads.
        balancedness=c.mean() / c.max(), imbalance_ratio=(c.max() - c.mean()) / c.mean())
    return out


def recount(routing, P, logits, *, top_k, capacity_factor, alpha=0.0, z_coef=0.0, seq_len=0,
            expert_choice=False):
    experts, dropped = routing["experts"], routing["dropped"]
    T, slots = experts.shape
    E = P.shape[1]
    d = np.array([(experts == e).sum() for e in range(E)], dtype=np.float64)
    s = np.array([((experts == e) & ~dropped).sum() for e in range(E)], dtype=np.float64)
    Tk = T * top_k
    if expert_choice:
        C = min(T, capacity(capacity_factor if capacity_factor > 0 else 1.0, Tk, E))
    else:
        C = d.max() if capacity_factor <= 0 else capacity(capacity_factor, Tk, E)
    out = {"tokens": T, "steps": 1, "frac_dem_max": d.max() / Tk, "frac_srv_max": s.max() / Tk}
    out.update(load_metrics(d))
    # Without a communicator there are no ranks to compare.
    out.update(rank_balancedness=math.nan, rank_imbalance_ratio=math.nan, overload_factor=math.nan)
    served = load_metrics(s)
    for key in ("load_entropy", "load_entropy_norm", "kl_to_uniform", "load_cv", "max_frac",
                "min_max_ratio", "max_over_mean", "gini", "jain_fairness", "dead_experts"):
        out[key + "_served"] = served.get(key, float("nan"))
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -(np.where(P > 0, P * np.log(P), 0.0)).sum(1)
    srt = np.sort(P, 1)
    chosen_mass = np.array([sum(P[t, e] for e in experts[t] if e >= 0) for t in range(T)])
    imp = P.sum(0)
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    aux = E * ((d / d.sum()) * P.mean(0)).sum()
    out.update(
        router_entropy_mean=ent.mean(), router_entropy_norm_mean=ent.mean() / math.log(E),
        top1_p_mean=P.max(1).mean(), topk_mass_mean=chosen_mass.mean(),
        top1_margin_mean=(srt[:, -1] - srt[:, -2]).mean(), importance_cv=imp.std() / imp.mean(),
        aux_loss=aux, aux_loss_scaled=alpha * aux, z_loss=(lse ** 2).mean(),
        z_loss_scaled=z_coef * (lse ** 2).mean(), logit_max_abs=np.abs(logits).max(),
        nonfinite_rows=0, capacity=C, ideal_capacity=Tk / E, capacity_factor=capacity_factor,
        capacity_usage=d.max() / (Tk / E), capacity_utilization=s.sum() / (E * C),
        dropped_total=d.sum() - s.sum(), drop_rate=(d.sum() - s.sum()) / Tk,
        avg_experts_per_token=s.sum() / T, routing_sparsity=1 - s.sum() / T / E)
    picked = experts >= 0
    out["tokens_fully_dropped"] = float(sum(
        1 for t in range(T) if picked[t].any() and (dropped[t] | ~picked[t]).all()))
    onehot = np.zeros((T, E))
    for t in range(T):
        for e in experts[t]:
            if e >= 0:
                onehot[t, e] = 1
    O = onehot.T @ onehot
    jac = [O[i, j] / (O[i, i] + O[j, j] - O[i, j]) for i in range(E) for j in range(i + 1, E)
           if O[i, i] + O[j, j] - O[i, j] > 0]
    out.update(jaccard_mean=np.mean(jac), jaccard_max=np.max(jac), coactivation=O.tolist())
    if seq_len:
        pairs = [(t, t + 1) for t in range(T - 1) if (t + 1) % seq_len != 0]
        top1 = experts[:, 0]
        out["seq_consistency"] = np.mean([top1[a] == top1[b] for a, b in pairs])
        out["seq_topk_overlap"] = np.mean(
            [len(set(experts[a]) & set(experts[b])) / top_k for a, b in pairs])
        out["routing_locality"] = np.mean(
            [P[a] @ P[b] / np.linalg.norm(P[a]) / np.linalg.norm(P[b]) for a, b in pairs])
    out["expert_counts"], out["expert_served"] = d.tolist(), s.tolist()
    out["frac_dem"], out["frac_srv"] = (d / Tk).tolist(), (s / Tk).tolist()
    out["dropped"] = (d - s).tolist()
    return out
