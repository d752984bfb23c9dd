"""Group-limited routing and the routed scaling factor against DeepSeek-V3's published
gate (Hugging Face modeling_deepseek.py, MoEGate with topk_method="noaux_tc"), written
here from that definition, in PyTorch, with autograd for every gradient:

    scores = sigmoid(x @ Wr)
    choice = scores + e_score_correction_bias      (the layer's selection bias)
    group_scores = choice.view(T, n_group, -1).topk(2).values.sum(-1)
    keep the topk_group best groups; experts elsewhere leave the race
    idx = topk(choice over the kept groups, top_k)
    w = scores.gather(idx); w /= w.sum() (norm_topk_prob, top_k > 1); w *= routed_scaling_factor
    y = sum_j w_j * expert_{idx_j}(x),  expert_e(x) = act(x W1[e]) W2[e]

The softmax router follows Megatron-Core's grouped top-k without pre-softmax
(moe_utils.topk_softmax_with_capacity): groups and experts are chosen on the logits
(plus the bias, which Megatron applies to sigmoid scores only), the gates are the
softmax of the chosen logits; the group score is still the sum of the two best (Megatron
takes topk // group_topk per group, which is 2 at DeepSeek-V3's 8 of 4 groups).

(The Hugging Face code fills the other groups' scores with 0.0 rather than -inf; vLLM's
grouped_topk and the paper's description exclude them, as the layer does. With sigmoid
scores plus a bias that can be negative, the two differ; the tests use -inf.)
"""
import numpy as np
import pytest

import moe
from autograd_check import assert_matches

torch = pytest.importorskip("torch")


def deepseek_v3_moe(x, wr, w1, w2, bias, *, router, n_group, topk_group, top_k, norm, scaling):
    T, E = x.shape[0], wr.shape[1]
    logits = x @ wr
    if router == "sigmoid":
        scores = logits.sigmoid()
        choice = scores.detach() + bias
    else:
        choice = logits.detach() + bias
    group_scores = choice.view(T, n_group, -1).topk(min(2, E // n_group), dim=-1)[0].sum(dim=-1)
    group_idx = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
    score_mask = group_mask.unsqueeze(-1).expand(T, n_group, E // n_group).reshape(T, -1)
    masked = choice.masked_fill(~score_mask.bool(), float("-inf"))
    idx = torch.topk(masked, k=top_k, dim=-1, sorted=False)[1]
    if router == "sigmoid":
        weight = scores.gather(1, idx)
        if top_k > 1 and norm:
            weight = weight / (weight.sum(dim=-1, keepdim=True) + 1e-20)
    else:  # the softmax of the chosen logits: P renormalised over them
        weight = logits.gather(1, idx).softmax(dim=-1)
    weight = weight * scaling
    y = torch.zeros_like(x)
    for j in range(top_k):
        for e in range(E):
            rows = idx[:, j] == e
            if rows.any():
                h = torch.nn.functional.gelu(x[rows] @ w1[e]) @ w2[e]
                y = y.index_add(0, rows.nonzero().squeeze(1), weight[rows, j:j + 1] * h)
    return y, idx


CASES = [  # (router, E, n_group, topk_group, top_k, scaling)
    ("sigmoid", 16, 4, 2, 4, 2.5),   # DeepSeek-V3's shape, scaled down
    ("sigmoid", 8, 8, 3, 2, 1.0),    # groups of one expert
    ("sigmoid", 12, 3, 1, 3, 1.0),   # one group kept: top-k inside it
    ("softmax", 16, 4, 2, 2, 16.0),  # softmax scores, V2-style
    ("softmax", 8, 2, 2, 2, 1.0),    # every group kept: plain top-k
]


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("router,E,n_group,topk_group,top_k,scaling", CASES)
def test_matches_deepseek_v3s_gate(router, E, n_group, topk_group, top_k, scaling, dtype, tol):
    T, d, F = 40, 12, 10
    rng = np.random.default_rng(E * 100 + n_group * 10 + topk_group)
    x = rng.standard_normal((T, d)).astype(dtype)
    dy = rng.standard_normal((T, d)).astype(dtype)
    wr = (rng.standard_normal((d, E)) / np.sqrt(d)).astype(dtype)
    w1 = (rng.standard_normal((E, d, F)) / np.sqrt(d)).astype(dtype)
    w2 = (rng.standard_normal((E, F, d)) / np.sqrt(F)).astype(dtype)
    bias = 0.05 * rng.standard_normal(E)

    layer = moe.Layer(d, F, E, top_k, router=router, activation="gelu", dtype=np.dtype(dtype).name,
                      renormalize=True, n_group=n_group, topk_group=topk_group,
                      routed_scaling_factor=scaling, backend="cpu_ref")
    layer.set_weights(router=wr, w1=w1, w2=w2)
    layer.selection_bias = bias
    y = layer.forward(x)
    dx, grads = layer.backward(dy)
    experts = layer.routing()["experts"]

    t = {name: torch.tensor(a.astype(np.float64), requires_grad=True)
         for name, a in (("x", x), ("wr", wr), ("w1", w1), ("w2", w2))}
    y_ref, idx = deepseek_v3_moe(t["x"], t["wr"], t["w1"], t["w2"], torch.tensor(bias),
                                 router=router, n_group=n_group, topk_group=topk_group,
                                 top_k=top_k, norm=True, scaling=scaling)
    (y_ref * torch.tensor(dy.astype(np.float64))).sum().backward()

    assert np.array_equal(np.sort(experts, axis=1), np.sort(idx.numpy(), axis=1))
    # Every chosen expert lies in one of the token's topk_group groups.
    assert all(len({e // (E // n_group) for e in row}) <= topk_group for row in experts.tolist())
    assert_matches(tol, y, dx, grads, y_ref, t["x"],
                   {"router": t["wr"], "w1": t["w1"], "w2": t["w2"]})


def test_the_onednn_backend_routes_the_same():
    if "onednn" not in moe.backends():
        pytest.skip("built without onednn")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 16)).astype(np.float32)
    router = (0.5 * rng.standard_normal((16, 16))).astype(np.float32)
    out = {}
    for backend in ("cpu_ref", "onednn"):
        layer = moe.Layer(16, 8, 16, 4, router="sigmoid", n_group=4, topk_group=2,
                          routed_scaling_factor=2.5, backend=backend, seed=3)
        layer.set_weights(router=router,
                          w1=np.full((16, 16, 8), 0.05, np.float32),
                          w2=np.full((16, 8, 16), 0.05, np.float32))
        out[backend] = (layer.forward(x), layer.routing()["experts"])
    assert np.array_equal(out["cpu_ref"][1], out["onednn"][1])
    assert np.allclose(out["cpu_ref"][0], out["onednn"][0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options,message", [
    (dict(n_group=3), "config.n_group must be 0 or 1 (no groups) or divide num_experts=8, got 3"),
    (dict(n_group=16), "config.n_group must be 0 or 1"),
    (dict(n_group=4, topk_group=5), "config.topk_group must be in [0, n_group=4] (0 = all groups; "
                                    "groups need n_group > 1), got 5"),
    (dict(topk_group=2), "config.topk_group must be in [0, n_group=0]"),
    (dict(n_group=4, topk_group=1, top_k=3), "config.topk_group=1 groups of 2 experts hold fewer "
                                              "than top_k=3 experts"),
    (dict(n_group=2, router="hash"), "config.n_group > 1 needs a learned token-choice router"),
    (dict(n_group=2, router="expert_choice"), "config.n_group > 1 needs a learned token-choice"),
    (dict(routed_scaling_factor=0.0), "config.routed_scaling_factor must be finite, > 0"),
    (dict(routed_scaling_factor=float("nan")), "config.routed_scaling_factor must be finite"),
    (dict(routed_scaling_factor=-2.0), "config.routed_scaling_factor must be finite, > 0"),
    (dict(routed_scaling_factor=2.0, router="expert_choice"), "expert choice takes none"),
])
def test_bad_combinations_are_refused_with_a_message(options, message):
    options = dict(options)
    top_k = options.pop("top_k", 2)
    router = options.pop("router", "sigmoid")
    with pytest.raises(moe.MoeError) as error:
        moe.Layer(8, 8, 8, top_k, router=router, **options)
    assert message in str(error.value) and error.value.status == "INVALID_ARGUMENT", error.value


@pytest.mark.parametrize("value", ["2.5", None, True])
def test_the_binding_names_a_scaling_factor_of_the_wrong_type(value):
    with pytest.raises(TypeError, match="routed_scaling_factor must be a number"):
        moe.Layer(8, 8, 8, 2, router="sigmoid", routed_scaling_factor=value)


def test_the_binding_sends_the_versions_of_moe_h():
    """Each struct the binding fills says the version moe.h's *_INIT gives it, and has
    the header's fields (its size is the C struct's, read from the library's sizeof)."""
    import os
    import re

    import moe._abi as abi
    header = open(os.path.join(os.path.dirname(__file__), "..", "..", "include", "moe",
                               "moe.h")).read()
    versions = dict(re.findall(r"#define (MOE_\w+)_VERSION (\d+)", header))
    for cls, name in ((abi.LayerConfig, "MOE_LAYER_CONFIG"), (abi.ForwardArgs, "MOE_FORWARD_ARGS"),
                      (abi.BackwardArgs, "MOE_BACKWARD_ARGS"), (abi.Weights, "MOE_WEIGHTS")):
        assert abi.sized(cls).version == int(versions[name]), name


@pytest.mark.parametrize("field", ["n_group", "topk_group"])
def test_the_binding_refuses_negative_counts(field):
    with pytest.raises(ValueError, match=f"{field} must be in"):
        moe.Layer(8, 8, 8, 2, router="sigmoid", **{"n_group": 4, field: -1})


def test_the_config_reports_the_resolved_groups():
    config = moe.Layer(8, 8, 8, 2, router="sigmoid", n_group=4).config()
    assert (config["n_group"], config["topk_group"], config["routed_scaling_factor"]) == (4, 4, 1.0)
    config = moe.Layer(8, 8, 8, 2).config()
    assert (config["n_group"], config["topk_group"]) == (1, 1)
