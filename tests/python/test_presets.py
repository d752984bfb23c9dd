"""Each model-family preset against a PyTorch reference of that family's MoE block and
balance loss, written here from the published definitions (not from this library), at
small shapes, in float64 and float32, for the output, the loss and every gradient:

mixtral      Hugging Face MixtralSparseMoeBlock: softmax, top-2, renormalised; SwiGLU
             experts; load_balancing_loss_func * router_aux_loss_coef (0.02).
qwen2_moe    Qwen2MoeSparseMoeBlock: softmax, top-k, not renormalised; a shared expert
             of 4 experts' width behind sigmoid(x @ shared_expert_gate); the same loss
             with coefficient 0.001.
qwen3_moe    Qwen3MoeSparseMoeBlock: softmax, top-k, renormalised; the global-batch loss
             (f from the counts of every micro-batch since the reset), 0.001.
deepseek_v3  DeepseekV3MoE and the technical report: sigmoid affinities; the selection
             bias and groups (top-2 sum per group) for the choice only; gates normalised
             and times 2.5; one shared expert; the sequence-wise loss (alpha 0.0001, f from
             the top-k of the affinities without bias); bias update speed 0.001.
switch       Switch Transformer (Fedus et al. 2021): top-1, the gate is the probability;
             ReLU experts; capacity ceil(1.25 T / E) by position; alpha * E sum f P, 0.01.

Hugging Face's load_balancing_loss_func is E * sum_e (tokens choosing e / T) * Pbar_e,
k times this library's f (a fraction of copies); the presets set alpha = coef * k, so the
layer's aux_loss_scaled is the family's coef * loss."""
import math

import numpy as np
import pytest

import moe
from autograd_check import assert_matches

torch = pytest.importorskip("torch")
F = torch.nn.functional


def swiglu(x, w1, w2):
    half = w1.shape[-1] // 2
    return (F.silu(x @ w1[..., :half]) * (x @ w1[..., half:])) @ w2


def hf_load_balancing_loss(logits, top_k):
    """transformers' load_balancing_loss_func for one layer, no attention mask."""
    E = logits.shape[-1]
    weights = logits.softmax(dim=-1)
    _, selected = torch.topk(weights, top_k, dim=-1)
    mask = F.one_hot(selected, E).double()
    tokens_per_expert = mask.mean(dim=0)
    return (tokens_per_expert * weights.mean(dim=0).unsqueeze(0)).sum() * E


def routed(x, w1, w2, idx, gate, expert):
    y = torch.zeros_like(x)
    for j in range(idx.shape[1]):
        for e in range(w1.shape[0]):
            rows = (idx[:, j] == e).nonzero().squeeze(1)
            if rows.numel():
                y = y.index_add(0, rows, gate[rows, j:j + 1] * expert(x[rows], w1[e], w2[e]))
    return y


def mixtral(t, k, coef, **_):
    logits = t["x"] @ t["router"]
    gate, idx = torch.topk(logits.softmax(dim=-1), k, dim=-1)
    gate = gate / gate.sum(dim=-1, keepdim=True)
    return routed(t["x"], t["w1"], t["w2"], idx, gate, swiglu), coef * hf_load_balancing_loss(
        logits, k), idx


def qwen2_moe(t, k, coef, **_):
    logits = t["x"] @ t["router"]
    gate, idx = torch.topk(logits.softmax(dim=-1), k, dim=-1)
    y = routed(t["x"], t["w1"], t["w2"], idx, gate, swiglu)
    shared = (t["x"] @ t["shared_gate"]).sigmoid() * swiglu(t["x"], t["shared_w1"],
                                                             t["shared_w2"])
    return y + shared, coef * hf_load_balancing_loss(logits, k), idx


def qwen3_moe(t, k, coef, counts, **_):
    logits = t["x"] @ t["router"]
    probs = logits.softmax(dim=-1)
    gate, idx = torch.topk(probs, k, dim=-1)
    gate = gate / gate.sum(dim=-1, keepdim=True)
    E = logits.shape[-1]
    counts += np.bincount(idx.numpy().ravel(), minlength=E)  # the global batch so far
    # Over one micro-batch this is load_balancing_loss_func exactly.
    f = torch.tensor(counts / counts.sum() * k)
    aux = E * (f * probs.mean(dim=0)).sum()
    return routed(t["x"], t["w1"], t["w2"], idx, gate, swiglu), coef * aux, idx


def deepseek_v3(t, k, coef, bias, n_group, topk_group, seq_len, **_):
    x = t["x"]
    T, E = x.shape[0], t["router"].shape[1]
    scores = (x @ t["router"]).sigmoid()
    choice = scores.detach() + bias
    group_scores = choice.view(T, n_group, -1).topk(2, dim=-1)[0].sum(dim=-1)
    keep = torch.zeros_like(group_scores).scatter_(1, group_scores.topk(topk_group, dim=-1)[1], 1)
    allowed = keep.unsqueeze(-1).expand(T, n_group, E // n_group).reshape(T, E).bool()
    idx = torch.topk(choice.masked_fill(~allowed, float("-inf")), k, dim=-1)[1]
    gate = scores.gather(1, idx)
    gate = gate / gate.sum(dim=-1, keepdim=True) * 2.5
    y = routed(x, t["w1"], t["w2"], idx, gate, swiglu) + swiglu(x, t["shared_w1"], t["shared_w2"])
    # Complementary sequence-wise loss (report eq. 17-20), averaged over the sequences.
    losses = []
    for q in range(0, T, seq_len):
        s = scores[q:q + seq_len]
        top = torch.topk(s.detach(), k, dim=-1)[1]
        f = E / (k * seq_len) * F.one_hot(top, E).sum(dim=(0, 1)).double()
        p = (s / s.sum(dim=-1, keepdim=True)).mean(dim=0)
        losses.append((f * p).sum())
    return y, coef * torch.stack(losses).mean(), idx


def switch(t, k, coef, capacity, **_):
    logits = t["x"] @ t["router"]
    probs = logits.softmax(dim=-1)
    gate, idx = torch.topk(probs, 1, dim=-1)
    E = probs.shape[1]
    one_hot = F.one_hot(idx[:, 0], E)
    kept = ((torch.cumsum(one_hot, dim=0) - 1) * one_hot).sum(dim=1) < capacity
    relu = lambda x, w1, w2: F.relu(x @ w1) @ w2
    y = routed(t["x"], t["w1"], t["w2"], idx, gate * kept[:, None], relu)
    f = one_hot.double().mean(dim=0)
    return y, coef * E * (f * probs.mean(dim=0)).sum(), idx


FAMILIES = {
    # reference, small-shape overrides, the family's own coefficient
    "mixtral": (mixtral, dict(), 0.02),
    "qwen2_moe": (qwen2_moe, dict(num_experts=12), 0.001),
    # (alpha is coef * k for Hugging Face's loss: a new top_k needs a new alpha)
    "qwen3_moe": (qwen3_moe, dict(num_experts=16, top_k=4, load_balance_alpha=0.004), 0.001),
    "deepseek_v3": (deepseek_v3, dict(num_experts=16, top_k=4), 0.0001),
    "switch": (switch, dict(num_experts=8), 0.01),
}


def make_weights(rng, layer_config, d, dff, dtype):
    c = layer_config
    E, gated = c["num_experts"], c["activation"] == "swiglu"
    F1 = 2 * dff if gated else dff
    cast = lambda a: np.asarray(a, dtype)
    w = dict(router=cast(rng.standard_normal((d, E)) / np.sqrt(d)),
             w1=cast(rng.standard_normal((E, d, F1)) / np.sqrt(d)),
             w2=cast(rng.standard_normal((E, dff, d)) / np.sqrt(dff)))
    if c["num_shared_experts"]:
        S = c["num_shared_experts"] * c["shared_d_ff"]
        w["shared_w1"] = cast(rng.standard_normal((d, 2 * S)) / np.sqrt(d))
        w["shared_w2"] = cast(rng.standard_normal((S, d)) / np.sqrt(S))
    if c["shared_expert_gate"]:
        w["shared_gate"] = cast(rng.standard_normal((d, 1)) / np.sqrt(d))
    return w


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 3e-4)])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_preset_is_the_familys_block(family, dtype, tol):
    reference, overrides, coef = FAMILIES[family]
    T, seq_len, d, dff = 32, 8, 12, 6
    layer = moe.Layer.from_preset(family, d, dff, backend="cpu_ref", dtype=np.dtype(dtype).name,
                                  **overrides)
    c = layer.config()
    rng = np.random.default_rng(len(family))
    w = make_weights(rng, c, d, dff, dtype)
    layer.set_weights(**w)
    bias = 0.05 * rng.standard_normal(c["num_experts"])
    if family == "deepseek_v3":
        layer.selection_bias = bias
    counts = np.zeros(c["num_experts"])
    for micro_batch in range(2):  # the global loss's second call reads both
        x = np.asarray(rng.standard_normal((T, d)), dtype)
        dy = np.asarray(rng.standard_normal((T, d)), dtype)
        bias_before = layer.selection_bias
        y = layer.forward(x, seq_len=seq_len)
        dx, grads = layer.backward(dy)

        t = {n: torch.tensor(np.asarray(a, np.float64), requires_grad=True)
             for n, a in dict(w, x=x).items()}
        y_ref, loss_ref, idx = reference(
            t, k=c["top_k"], coef=coef, counts=counts, bias=torch.tensor(bias_before),
            n_group=c["n_group"], topk_group=c["topk_group"], seq_len=seq_len,
            capacity=math.ceil(1.25 * T / c["num_experts"]))
        ((y_ref * torch.tensor(np.asarray(dy, np.float64))).sum() + loss_ref).backward()

        assert np.array_equal(np.sort(layer.routing()["experts"], 1), np.sort(idx.numpy(), 1))
        assert abs(layer.losses()["aux_loss_scaled"] - loss_ref.item()) <= tol * loss_ref.item()
        assert_matches(tol, y, dx, grads, y_ref, t["x"], {n: t[n] for n in w})
        if family == "deepseek_v3":  # b_i += 0.001 * sign(mean load - load_i)
            load = np.bincount(idx.numpy().ravel(), minlength=c["num_experts"])
            np.testing.assert_array_equal(layer.selection_bias,
                                          bias_before + 0.001 * np.sign(load.mean() - load))
        if family == "switch":
            assert layer.routing()["dropped"].any()


def test_presets_set_the_published_values():
    p = moe.preset("deepseek_v3")
    assert (p["num_experts"], p["top_k"], p["n_group"], p["topk_group"]) == (256, 8, 8, 4)
    assert p["router"] == "sigmoid" and p["routed_scaling_factor"] == 2.5
    assert p["num_shared_experts"] == 1 and p["shared_d_ff"] == 0  # 0: as wide as d_ff
    assert p["aux_loss_scope"] == "sequence" and p["aux_loss_unbiased_topk"]
    assert p["bias_update_rate"] == 0.001 and p["load_balance_alpha"] == 0.0001
    assert moe.preset("mixtral")["load_balance_alpha"] == pytest.approx(0.04)
    q2 = moe.preset("qwen2_moe")
    assert (q2["num_experts"], q2["top_k"], q2["renormalize"]) == (60, 4, False)
    assert moe.preset("qwen3_moe")["aux_loss_scope"] == "global"
    s = moe.preset("switch")
    assert (s["top_k"], s["capacity_factor"], s["activation"]) == (1, 1.25, "relu")
    # A shared expert as wide as 4 routed ones, as Qwen1.5-MoE-A2.7B (5632 = 4 x 1408).
    layer = moe.Layer.from_preset("qwen2_moe", 16, 1408, backend="cpu_ref")
    assert layer.config()["shared_d_ff"] == 1408 and layer.config()["num_shared_experts"] == 4


def test_an_unknown_family_is_refused_and_the_config_untouched():
    with pytest.raises(moe.MoeError, match="unknown model family 'llama'; the presets are"):
        moe.preset("llama")
    cfg = moe._abi.sized(moe._abi.LayerConfig)
    cfg.num_experts = 5
    assert moe._lib.moe_layer_config_preset(moe.C.byref(cfg), b"llama") != 0
    assert cfg.num_experts == 5
    assert moe._lib.moe_layer_config_preset(moe.C.byref(cfg), None) != 0
    small = moe._abi.sized(moe._abi.LayerConfig)
    small.size = 200  # an older moe.h's struct: the preset's fields would not fit
    assert moe._lib.moe_layer_config_preset(moe.C.byref(small), b"mixtral") != 0
    assert "a preset sets fields" in moe._lib.moe_last_error().decode()
    with pytest.raises(TypeError):
        moe.preset(3)
    with pytest.raises(ValueError, match="NUL"):
        moe.preset("mixtral\0x")
