"""Batch-prioritized routing and random token selection against their published
definitions.

flaxformer (flaxformer/architectures/moe/routing.py, TokensChooseMaskedRouter with
batch_prioritized_routing=True), written here in PyTorch with autograd:
    probs = softmax(logits); gate, index = top_k(probs, k)
    permutation = argsort(-gate[:, 0])           # by top-1 probability, stable
    index = index[permutation]; swap to [k, T]    # every first choice before any second
    priority = cumsum(one_hot(index)) - 1; keep where priority < capacity
    combine = gate * kept                         # no renormalisation
DeepSpeed's random token selection (sharded_moe.top1gating, use_rts=True): each expert
keeps the top-C of mask * uniform noise, a uniformly random C of its tokens. Its draws
are the library's own, so the test checks what any correct implementation must show:
each expert keeps exactly min(demand, C), the kept set is uniform over positions, the
same seed and step give the same set, and the output is the published combine of the
kept copies."""
import math

import numpy as np
import pytest

import moe
from autograd_check import assert_matches

torch = pytest.importorskip("torch")
F = torch.nn.functional


def flaxformer_batch_prioritized(x, wr, w1, w2, k, capacity):
    T, E = x.shape[0], wr.shape[1]
    probs = (x @ wr).softmax(dim=-1)
    gate, index = torch.topk(probs, k, dim=-1)
    permutation = torch.argsort(-gate[:, 0].detach(), stable=True)
    slot_major = index[permutation].T.reshape(-1)  # [k*T]: slot, then permuted token
    one_hot = F.one_hot(slot_major, E)
    priority = ((torch.cumsum(one_hot, dim=0) - 1) * one_hot).sum(dim=1).view(k, T).T
    kept = torch.empty_like(priority, dtype=torch.bool)
    kept[permutation] = priority < capacity  # back to token order
    y = torch.zeros_like(x)
    for j in range(k):
        for e in range(E):
            rows = ((index[:, j] == e) & kept[:, j]).nonzero().squeeze(1)
            if rows.numel():
                y = y.index_add(0, rows, gate[rows, j:j + 1] * (F.gelu(x[rows] @ w1[e]) @ w2[e]))
    return y, index, ~kept


@pytest.mark.parametrize("k,factor", [(1, 0.5), (2, 0.6), (2, 1.0)])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_batch_prioritized_matches_flaxformer(k, factor, dtype, tol):
    T, d, dff, E = 48, 10, 8, 6
    rng = np.random.default_rng(k * 10 + int(factor * 10))
    cast = lambda a: np.asarray(a, dtype)
    x, dy = cast(rng.standard_normal((T, d))), cast(rng.standard_normal((T, d)))
    w = dict(router=cast(rng.standard_normal((d, E))), w1=cast(rng.standard_normal((E, d, dff)) / 3),
             w2=cast(rng.standard_normal((E, dff, d)) / 3))
    layer = moe.Layer(d, dff, E, k, capacity_factor=factor, renormalize=False,
                      capacity_order="batch_prioritized", dtype=np.dtype(dtype).name,
                      backend="cpu_ref")
    layer.set_weights(**w)
    y = layer.forward(x)
    dx, grads = layer.backward(dy)
    routing = layer.routing()

    t = {n: torch.tensor(np.asarray(a, np.float64), requires_grad=True)
         for n, a in dict(w, x=x).items()}
    capacity = math.ceil(factor * T * k / E)
    y_ref, index, dropped = flaxformer_batch_prioritized(t["x"], t["router"], t["w1"], t["w2"], k,
                                                         capacity)
    (y_ref * torch.tensor(np.asarray(dy, np.float64))).sum().backward()

    assert np.array_equal(routing["experts"], index.numpy())
    assert np.array_equal(routing["dropped"], dropped.numpy())
    assert dropped.any()
    assert_matches(tol, y, dx, grads, y_ref, t["x"], {n: t[n] for n in w})


def test_batch_prioritized_keeps_the_confident_tokens_token_order_drops():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 8))
    w = dict(router=rng.standard_normal((8, 4)) * 2, w1=rng.standard_normal((4, 8, 8)),
             w2=rng.standard_normal((4, 8, 8)))
    kept_confidence = {}
    for order in ("token", "batch_prioritized"):
        layer = moe.Layer(8, 8, 4, 1, capacity_factor=0.5, capacity_order=order,
                          backend="cpu_ref")
        layer.set_weights(**w)
        layer.forward(x)
        r = layer.routing()
        kept_confidence[order] = r["gates"][~r["dropped"]].mean()
    assert kept_confidence["batch_prioritized"] > kept_confidence["token"]


def random_selection_layer(seed=0, **options):
    rng = np.random.default_rng(5)
    layer = moe.Layer(8, 6, 4, 1, capacity_factor=0.5, capacity_order="random", seed=seed,
                      backend="cpu_ref", dtype="float64", **options)
    w = dict(router=rng.standard_normal((8, 4)) * 0.1, w1=rng.standard_normal((4, 8, 6)) / 3,
             w2=rng.standard_normal((4, 6, 8)) / 3)
    layer.set_weights(**w)
    return layer, w


def test_random_selection_keeps_a_uniform_subset_of_each_experts_tokens():
    T = 64
    layer, w = random_selection_layer()
    x = np.random.default_rng(6).standard_normal((T, 8))
    kept = np.zeros(T)
    steps = 300
    for _ in range(steps):
        layer.forward(x)  # training calls: each step draws anew
        r = layer.routing()
        demand = np.bincount(r["experts"].ravel(), minlength=4)
        served = np.bincount(r["experts"][~r["dropped"]], minlength=4)
        assert np.array_equal(served, np.minimum(demand, math.ceil(0.5 * T / 4)))
        kept += ~r["dropped"][:, 0]
    # Each token's chance is C / demand of its expert: the observed frequency must agree
    # for early and late tokens alike (token order would keep the early ones only).
    demand = np.bincount(r["experts"].ravel(), minlength=4)
    expected = np.minimum(1.0, 8 / demand[r["experts"][:, 0]])
    sigma = np.sqrt(expected * (1 - expected) / steps)
    assert np.all(np.abs(kept / steps - expected) <= 5 * sigma + 1e-12)
    first, last = kept[:T // 2].sum(), kept[T // 2:].sum()
    assert abs(first - last) < 0.15 * (first + last)


def test_random_selection_is_reproducible_and_combines_the_kept_copies():
    x = np.random.default_rng(6).standard_normal((64, 8))
    runs = []
    for seed in (0, 0, 1):
        layer, w = random_selection_layer(seed)
        layer.step = 7
        y = layer.forward(x, train=False)
        runs.append((y, layer.routing()["dropped"]))
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][1], runs[2][1])

    layer, w = random_selection_layer(0)
    layer.step = 7
    y = layer.forward(x, train=False)
    r = layer.routing()
    p = np.exp(x @ w["router"])
    p /= p.sum(1, keepdims=True)
    ref = np.zeros_like(x)
    for t in range(64):
        e = r["experts"][t, 0]
        if not r["dropped"][t, 0]:
            h = x[t] @ w["w1"][e]
            h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
            ref[t] = p[t, e] * (h @ w["w2"][e])
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("options,message", [
    (dict(capacity_order="random"), "config.capacity_order random orders the position"),
    (dict(capacity_order="batch_prioritized", capacity_factor=1.0, drop_policy="probability"),
     "config.capacity_order batch_prioritized"),
    (dict(capacity_order="batch_prioritized", capacity_factor=1.0, router="hash"),
     "top-1 probability, which the hash router does not have"),
])
def test_bad_orders_are_refused(options, message):
    with pytest.raises(moe.MoeError, match=message):
        moe.Layer(8, 8, 4, 2, **options)


def test_orders_other_than_token_order_are_refused_over_several_ranks_only():
    for order in ("batch_prioritized", "random"):
        layer = moe.Layer(8, 8, 4, 2, capacity_factor=1.0, capacity_order=order,
                          backend="cpu_ref")
        layer.set_comm(moe.Comm.local())  # one rank: accepted
