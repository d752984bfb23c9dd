"""Shared experts against PyTorch transcriptions of two published MoE blocks, written
here from the Hugging Face definitions (not from this library), with autograd for every
gradient:

Qwen2-MoE (modeling_qwen2_moe.Qwen2MoeSparseMoeBlock, norm_topk_prob=False):
    p = softmax(x @ Wr); w, idx = topk(p, k)
    y = sum_j w_j * mlp_{idx_j}(x) + sigmoid(x @ w_shared_gate) * shared_mlp(x)
DeepSeek-V3 (modeling_deepseek.DeepseekV3MoE): the routed output plus the shared experts
    as one MLP of intermediate size moe_intermediate_size * n_shared_experts, ungated.
Every MLP is down(silu(gate(x)) * up(x)) (SwiGLU). The layer's swiglu w1 holds [gate | up]
along its output axis, so gate_proj and up_proj are its two halves.
"""
import numpy as np
import pytest

import moe
from autograd_check import assert_matches

torch = pytest.importorskip("torch")
F = torch.nn.functional


def swiglu_mlp(x, w1, w2):
    half = w1.shape[1] // 2
    return (F.silu(x @ w1[:, :half]) * (x @ w1[:, half:])) @ w2


def reference(x, wr, w1, w2, sw1, sw2, sgate, *, top_k, family, bias=None, groups=None):
    T, E = x.shape[0], wr.shape[1]
    logits = x @ wr
    if family == "qwen2_moe":
        weight, idx = torch.topk(logits.softmax(dim=-1), top_k, dim=-1)
    else:  # deepseek_v3: sigmoid, bias for choice, groups, normalised, scaled by 2.5
        scores = logits.sigmoid()
        choice = scores.detach() + bias
        n_group, topk_group = groups
        gs = choice.view(T, n_group, -1).topk(2, dim=-1)[0].sum(dim=-1)
        keep = torch.zeros_like(gs).scatter_(1, torch.topk(gs, topk_group, dim=-1)[1], 1)
        mask = keep.unsqueeze(-1).expand(T, n_group, E // n_group).reshape(T, -1)
        idx = torch.topk(choice.masked_fill(~mask.bool(), float("-inf")), top_k, dim=-1)[1]
        weight = scores.gather(1, idx)
        weight = weight / weight.sum(dim=-1, keepdim=True) * 2.5
    y = torch.zeros_like(x)
    for j in range(top_k):
        for e in range(E):
            rows = (idx[:, j] == e).nonzero().squeeze(1)
            if rows.numel():
                y = y.index_add(0, rows, weight[rows, j:j + 1] * swiglu_mlp(x[rows], w1[e], w2[e]))
    shared = swiglu_mlp(x, sw1, sw2)
    if sgate is not None:
        shared = (x @ sgate).sigmoid() * shared
    return y + shared, idx


FAMILIES = {
    # d, d_ff, E, k, shared experts, shared d_ff, gated shared output, router options
    "qwen2_moe": (16, 8, 8, 2, 1, 20, True, dict(router="softmax", renormalize=False)),
    "deepseek_v3": (16, 6, 16, 4, 2, 6, False,
                    dict(router="sigmoid", renormalize=True, n_group=4, topk_group=2,
                         routed_scaling_factor=2.5)),
}


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 3e-4)])
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_the_familys_published_block(family, dtype, tol):
    d, dff, E, k, S, sdff, gated, options = FAMILIES[family]
    T = 30
    rng = np.random.default_rng(5)
    cast = lambda a: np.asarray(a, dtype)
    x, dy = cast(rng.standard_normal((T, d))), cast(rng.standard_normal((T, d)))
    w = dict(router=cast(rng.standard_normal((d, E)) / np.sqrt(d)),
             w1=cast(rng.standard_normal((E, d, 2 * dff)) / np.sqrt(d)),
             w2=cast(rng.standard_normal((E, dff, d)) / np.sqrt(dff)),
             shared_w1=cast(rng.standard_normal((d, 2 * S * sdff)) / np.sqrt(d)),
             shared_w2=cast(rng.standard_normal((S * sdff, d)) / np.sqrt(S * sdff)))
    if gated:
        w["shared_gate"] = cast(rng.standard_normal((d, 1)) / np.sqrt(d))
    bias = 0.05 * rng.standard_normal(E)

    layer = moe.Layer(d, dff, E, k, activation="swiglu", dtype=np.dtype(dtype).name,
                      num_shared_experts=S, shared_d_ff=sdff, shared_expert_gate=gated,
                      backend="cpu_ref", **options)
    layer.set_weights(**w)
    if family == "deepseek_v3":
        layer.selection_bias = bias
    y = layer.forward(x)
    dx, grads = layer.backward(dy)

    t = {name: torch.tensor(np.asarray(a, np.float64), requires_grad=True)
         for name, a in dict(w, x=x).items()}
    y_ref, idx = reference(t["x"], t["router"], t["w1"], t["w2"], t["shared_w1"], t["shared_w2"],
                           t.get("shared_gate"), top_k=k, family=family,
                           bias=torch.tensor(bias), groups=(4, 2))
    (y_ref * torch.tensor(np.asarray(dy, np.float64))).sum().backward()

    assert np.array_equal(np.sort(layer.routing()["experts"], 1), np.sort(idx.numpy(), 1))

    assert_matches(tol, y, dx, grads, y_ref, t["x"], {name: t[name] for name in w})


def test_onednn_runs_the_shared_experts_as_cpu_ref():
    if "onednn" not in moe.backends():
        pytest.skip("built without onednn")
    rng = np.random.default_rng(9)
    w = dict(router=rng.standard_normal((16, 8)), w1=rng.standard_normal((8, 16, 12)) * 0.2,
             w2=rng.standard_normal((8, 6, 16)) * 0.2, shared_w1=rng.standard_normal((16, 40)) * 0.2,
             shared_w2=rng.standard_normal((20, 16)) * 0.2, shared_gate=rng.standard_normal((16, 1)))
    x, dy = rng.standard_normal((64, 16)), rng.standard_normal((64, 16))
    out = {}
    for backend in ("cpu_ref", "onednn"):
        layer = moe.Layer(16, 6, 8, 2, activation="swiglu", num_shared_experts=2, shared_d_ff=10,
                          shared_expert_gate=True, backend=backend)
        layer.set_weights(**{k: v.astype(np.float32) for k, v in w.items()})
        y = layer.forward(x.astype(np.float32))
        out[backend] = (y, *layer.backward(dy.astype(np.float32)))
    assert np.allclose(out["cpu_ref"][0], out["onednn"][0], rtol=1e-4, atol=1e-5)
    assert np.allclose(out["cpu_ref"][1], out["onednn"][1], rtol=1e-4, atol=1e-5)
    for name in w:
        assert np.allclose(out["cpu_ref"][2][name], out["onednn"][2][name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("options,message", [
    (dict(shared_d_ff=8), "config.shared_d_ff must be >= 0 with shared experts"),
    (dict(shared_expert_gate=True), "config.shared_expert_gate must be 0, or 1 with "
                                    "num_shared_experts > 0"),
    (dict(num_shared_experts=2 ** 21, shared_d_ff=1), "config.num_shared_experts must be in"),
    (dict(num_shared_experts=2 ** 20, shared_d_ff=2 ** 40), "the shared experts' width"),
])
def test_bad_shared_configs_are_refused(options, message):
    with pytest.raises(moe.MoeError, match=message.replace("^", r"\^")):
        moe.Layer(8, 8, 4, 2, **options)


def test_shared_weights_are_checked():
    layer = moe.Layer(8, 8, 4, 2, num_shared_experts=1, shared_d_ff=6)
    base = dict(router=np.ones((8, 4)), w1=np.ones((4, 8, 8)), w2=np.ones((4, 8, 8)))
    with pytest.raises(moe.MoeError, match="weights.shared_w1 is missing"):
        layer.set_weights(**base)
    with pytest.raises(moe.MoeError, match="shared_w1"):
        layer.set_weights(**base, shared_w1=np.ones((8, 7)), shared_w2=np.ones((6, 8)))
    with pytest.raises(moe.MoeError, match="shared_gate was given, but the layer has no such "
                                           r"parameter \(shared_expert_gate is 0\)"):
        layer.set_weights(**base, shared_w1=np.ones((8, 6)), shared_w2=np.ones((6, 8)),
                          shared_gate=np.ones((8, 1)))
    plain = moe.Layer(8, 8, 4, 2)
    with pytest.raises(moe.MoeError, match=r"\(num_shared_experts is 0\)"):
        plain.set_weights(**base, shared_w1=np.ones((8, 6)))
    layer.set_weights(**base, shared_w1=np.ones((8, 6)) * 0.1, shared_w2=np.ones((6, 8)) * 0.1)
    assert np.isfinite(layer.forward(np.ones((3, 8)))).all()  # still usable
