"""An independent PyTorch implementation of the MoE layer (the usual loop over experts
with index_add_), used as the parity oracle. It shares no code with the library: it
follows the definitions in docs/ and ARCHITECTURE.md directly."""

import torch
import torch.nn.functional as F

from capacity import capacity

GATED = {"swiglu": F.silu, "geglu": lambda v: F.gelu(v)}
PLAIN = {"relu": F.relu, "gelu": lambda v: F.gelu(v), "silu": F.silu,
         "gelu_tanh": lambda v: F.gelu(v, approximate="tanh")}


def expert_mlp(xe, w1, w2, b1, b2, activation, d_ff):
    h = xe @ w1
    if b1 is not None:
        h = h + b1
    if activation in GATED:
        h = GATED[activation](h[:, :d_ff]) * h[:, d_ff:]
    else:
        h = PLAIN[activation](h)
    out = h @ w2
    if b2 is not None:
        out = out + b2
    return out


def select_kept(experts, gates, num_experts, capacity, policy):
    """kept[t, j] under capacity, visiting copies in token order (position) or by gate."""
    T, k = experts.shape
    kept = torch.zeros(T, k, dtype=torch.bool)
    copies = [(t, j) for t in range(T) for j in range(k)]
    if policy == "probability":
        copies.sort(key=lambda c: (-float(gates[c[0], c[1]]), c[0] * k + c[1]))
    taken = [0] * num_experts
    for t, j in copies:
        e = int(experts[t, j])
        if taken[e] < capacity:
            taken[e] += 1
            kept[t, j] = True
    return kept


def moe_forward(x, wr, w1, w2, b1, b2, *, router, activation, top_k, capacity_factor=0.0,
                drop_policy="position", renormalize=None, temperature=1.0, selection_bias=None):
    """Returns y, aux_loss, z_loss, experts [T,k], kept [T,k]. All differentiable."""
    T, d = x.shape
    E = w1.shape[0]
    d_ff = w2.shape[1]
    z = x @ wr
    u = z / temperature
    if router == "sigmoid":
        s = torch.sigmoid(u)
        P = s / s.sum(-1, keepdim=True)
        base = s
    else:
        P = torch.softmax(u, -1)
        base = P
    y = torch.zeros_like(x)
    if router == "expert_choice":
        factor = capacity_factor if capacity_factor > 0 else 1.0
        C = min(T, capacity(factor, T * top_k, E))
        demand = torch.full((E,), float(C))
        experts = torch.full((T, E), -1, dtype=torch.long)
        for e in range(E):
            if C == 0:
                continue
            tokens = torch.topk(P[:, e].detach(), C).indices
            experts[tokens, e] = e
            out = expert_mlp(x[tokens], w1[e], w2[e], b1[e] if b1 is not None else None,
                             b2[e] if b2 is not None else None, activation, d_ff)
            y = y.index_add(0, tokens, out * P[tokens, e][:, None])
        kept = experts >= 0
    else:
        key = (u if router == "softmax" else base).detach()
        if selection_bias is not None:
            key = key + selection_bias
        experts = torch.topk(key, top_k, dim=-1).indices
        gates = base.gather(1, experts)
        renorm = top_k > 1 if renormalize is None else renormalize
        if renorm:
            gates = gates / gates.sum(-1, keepdim=True)
        demand = torch.bincount(experts.flatten(), minlength=E).to(x.dtype)
        if capacity_factor > 0:
            C = capacity(capacity_factor, T * top_k, E)
        else:
            C = int(demand.max()) if T else 0
        kept = select_kept(experts, gates.detach(), E, C, drop_policy)
        for e in range(E):
            t_idx, j_idx = torch.nonzero((experts == e) & kept, as_tuple=True)
            if t_idx.numel() == 0:
                continue
            out = expert_mlp(x[t_idx], w1[e], w2[e], b1[e] if b1 is not None else None,
                             b2[e] if b2 is not None else None, activation, d_ff)
            y = y.index_add(0, t_idx, out * gates[t_idx, j_idx][:, None])
    f = demand / demand.sum()
    aux = E * (f * P.mean(0)).sum()
    zl = torch.logsumexp(z, -1).pow(2).mean()
    return y, aux, zl, experts, kept
