"""Capacity conventions against DeepSpeed's top-2 gating (deepspeed/moe/sharded_moe.py,
top2gating with drop_tokens=True and no second-expert sampling), written here in PyTorch
from that definition, with autograd for every gradient:

    gates = softmax(logits); i1 = argmax(gates); i2 = argmax(logits, i1 masked)
    locations1 = cumsum(mask1) - 1                  # first choices, in token order
    locations2 = cumsum(mask2) - 1 + sum(mask1)     # then every second choice
    keep where location < capacity, capacity = ceil(2 T / E * capacity_factor)
    g1, g2 = gates at kept choices (0 when dropped); g /= max(g1 + g2, eps)

That is the layer with capacity_order = slot_major and renormalize_after_drops."""
import math

import numpy as np
import pytest

import moe
from autograd_check import assert_matches

torch = pytest.importorskip("torch")


def deepspeed_top2(x, wr, w1, w2, capacity_factor):
    T, E = x.shape[0], wr.shape[1]
    logits = x @ wr
    gates = logits.softmax(dim=1)
    i1 = gates.argmax(dim=1)
    mask1 = torch.nn.functional.one_hot(i1, E)
    i2 = logits.masked_fill(mask1.bool(), float("-inf")).argmax(dim=1)
    mask2 = torch.nn.functional.one_hot(i2, E)
    capacity = math.ceil(2 * T / E * capacity_factor)
    locations1 = torch.cumsum(mask1, dim=0) - 1
    locations2 = torch.cumsum(mask2, dim=0) - 1 + mask1.sum(dim=0, keepdim=True)
    mask1 = mask1 * (locations1 < capacity)
    mask2 = mask2 * (locations2 < capacity)
    g1 = (gates * mask1).sum(dim=1)
    g2 = (gates * mask2).sum(dim=1)
    denom = torch.clamp(g1 + g2, min=torch.finfo(g1.dtype).eps)
    g1, g2 = g1 / denom, g2 / denom
    y = torch.zeros_like(x)
    for idx, g, mask in ((i1, g1, mask1), (i2, g2, mask2)):
        kept = mask.sum(dim=1) > 0
        for e in range(E):
            rows = ((idx == e) & kept).nonzero().squeeze(1)
            if rows.numel():
                h = torch.nn.functional.gelu(x[rows] @ w1[e]) @ w2[e]
                y = y.index_add(0, rows, g[rows, None] * h)
    dropped = torch.stack([mask1.sum(1) == 0, mask2.sum(1) == 0], dim=1)
    return y, torch.stack([i1, i2], dim=1), dropped


@pytest.mark.parametrize("factor", [0.5, 0.75, 1.0, 2.0])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_matches_deepspeeds_top2_gating(factor, dtype, tol):
    T, d, F, E = 48, 12, 10, 6
    rng = np.random.default_rng(int(factor * 100))
    cast = lambda a: np.asarray(a, dtype)
    x, dy = cast(rng.standard_normal((T, d))), cast(rng.standard_normal((T, d)))
    w = dict(router=cast(rng.standard_normal((d, E))), w1=cast(rng.standard_normal((E, d, F)) / 3),
             w2=cast(rng.standard_normal((E, F, d)) / 3))
    layer = moe.Layer(d, F, E, 2, activation="gelu", capacity_factor=factor, renormalize=True,
                      capacity_order="slot_major", renormalize_after_drops=True,
                      dtype=np.dtype(dtype).name, backend="cpu_ref")
    layer.set_weights(**w)
    y = layer.forward(x)
    dx, grads = layer.backward(dy)
    routing = layer.routing()

    t = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=True)
         for k, v in dict(w, x=x).items()}
    y_ref, idx, dropped = deepspeed_top2(t["x"], t["router"], t["w1"], t["w2"], factor)
    (y_ref * torch.tensor(np.asarray(dy, np.float64))).sum().backward()

    assert np.array_equal(routing["experts"], idx.numpy())
    assert np.array_equal(routing["dropped"], dropped.numpy())
    if factor < 1:
        assert dropped.any() and (dropped[:, 1] & ~dropped[:, 0]).any()

    assert_matches(tol, y, dx, grads, y_ref, t["x"], {name: t[name] for name in w})


def test_slot_major_keeps_first_choices_that_token_order_drops():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 8))
    w = dict(router=rng.standard_normal((8, 4)) * 2, w1=rng.standard_normal((4, 8, 8)),
             w2=rng.standard_normal((4, 8, 8)))
    out = {}
    for order in ("token", "slot_major"):
        layer = moe.Layer(8, 8, 4, 2, capacity_factor=0.5, capacity_order=order, backend="cpu_ref")
        layer.set_weights(**w)
        layer.forward(x)
        out[order] = layer.routing()["dropped"]
    # Slot-major drops no first choice while second choices are kept for that expert.
    assert out["slot_major"][:, 0].sum() < out["token"][:, 0].sum()
    assert out["slot_major"].sum() == out["token"].sum()  # the same capacity in all


@pytest.mark.parametrize("options,message", [
    (dict(capacity_order="slot_major"), "config.capacity_order slot_major orders the position"),
    (dict(capacity_order="slot_major", capacity_factor=1.0, drop_policy="probability"),
     "config.capacity_order slot_major"),
    (dict(renormalize_after_drops=True), "config.renormalize_after_drops must be 0, or 1"),
    (dict(renormalize_after_drops=True, capacity_factor=1.0, renormalize=False),
     "config.renormalize_after_drops must be 0, or 1"),
    (dict(renormalize_after_drops=True, capacity_factor=1.0, router="hash"),
     "config.renormalize_after_drops"),
])
def test_bad_combinations_are_refused(options, message):
    with pytest.raises(moe.MoeError, match=message):
        moe.Layer(8, 8, 4, 2, **options)
    with pytest.raises(ValueError, match="unknown capacity_order"):
        moe.Layer(8, 8, 4, 2, capacity_factor=1.0, capacity_order="fifo")


OPTIONS = {  # every option of the model-family work, each against the plain layer
    "slot_major": dict(capacity_factor=0.6, capacity_order="slot_major"),
    "renormalize_after_drops": dict(capacity_factor=0.6, renormalize_after_drops=True,
                                    renormalize=True),
    "min_capacity": dict(capacity_factor=0.2, min_capacity=7),
    "groups": dict(router="sigmoid", n_group=3, topk_group=2, routed_scaling_factor=1.5),
    "shared": dict(num_shared_experts=2, shared_d_ff=5, shared_expert_gate=True),
    "bias_from_served": dict(capacity_factor=0.6, bias_update_rate=0.01,
                             bias_update_from_served=True),
    "batch_prioritized": dict(capacity_factor=0.6, capacity_order="batch_prioritized"),
    "random": dict(capacity_factor=0.6, capacity_order="random"),
    "sequence_aux": dict(aux_loss_scope="sequence", load_balance_alpha=0.1,
                         aux_loss_unbiased_topk=True, bias_update_rate=0.01),
    "global_aux": dict(aux_loss_scope="global", load_balance_alpha=0.1),
    "everything": dict(aux_loss_scope="sequence", load_balance_alpha=0.1,
                       aux_loss_unbiased_topk=True, router="sigmoid", n_group=3, topk_group=2,
                       routed_scaling_factor=1.5,
                       bias_update_rate=0.01, bias_update_from_served=True,
                       capacity_factor=0.6, capacity_order="slot_major",
                       renormalize_after_drops=True, renormalize=True, min_capacity=3,
                       num_shared_experts=2, shared_d_ff=5, shared_expert_gate=True),
}


@pytest.mark.parametrize("name", OPTIONS)
def test_the_one_rank_expert_parallel_path_gives_the_same_bits(name):
    """Through a communicator (here the local one) the layer takes the expert-parallel
    path (dispatch, exchanges): with a token mask, it must give the same bits."""
    options = OPTIONS[name]
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((40, 8)), rng.standard_normal((40, 8))
    w = dict(router=rng.standard_normal((8, 6)), w1=rng.standard_normal((6, 8, 8)) / 3,
             w2=rng.standard_normal((6, 8, 8)) / 3)
    if options.get("num_shared_experts"):
        w.update(shared_w1=rng.standard_normal((8, 10)) / 3,
                 shared_w2=rng.standard_normal((10, 8)) / 3, shared_gate=rng.standard_normal((8, 1)))
    mask = np.ones(40, bool)
    mask[::7] = False
    out = []
    for attach in (False, True):
        layer = moe.Layer(8, 8, 6, 2, backend="cpu_ref", **options)
        if attach:
            layer.set_comm(moe.Comm.local())
        layer.set_weights(**w)
        y = layer.forward(x, token_mask=mask, seq_len=8)
        dx, grads = layer.backward(dy)
        out.append((y, dx, grads, layer.routing(), layer.telemetry(), layer.selection_bias,
                    layer.losses()))
    (y, dx, grads, routing, telemetry, bias, losses), \
        (y2, dx2, grads2, routing2, telemetry2, bias2, losses2) = out
    assert np.array_equal(bias, bias2) and losses == losses2
    assert np.array_equal(y, y2) and np.array_equal(dx, dx2)
    assert all(np.array_equal(grads[k], grads2[k]) for k in grads)
    assert all(np.array_equal(routing[k], routing2[k]) for k in routing)
    assert telemetry["expert_counts"] == telemetry2["expert_counts"]


@pytest.mark.parametrize("from_served", [False, True])
def test_the_bias_update_counts_demand_or_served_copies(from_served):
    """b_e += rate * sign(mean - n_e), with n_e the copies that chose e, or (served) the
    copies e kept: counted here from the layer's routing and drops."""
    rng = np.random.default_rng(4)
    layer = moe.Layer(8, 8, 6, 2, capacity_factor=0.5, bias_update_rate=0.01,
                      bias_update_from_served=from_served, backend="cpu_ref")
    layer.set_weights(router=rng.standard_normal((8, 6)) * 2, w1=rng.standard_normal((6, 8, 8)),
                      w2=rng.standard_normal((6, 8, 8)))
    layer.forward(rng.standard_normal((60, 8)))
    routing = layer.routing()
    counted = routing["experts"][~routing["dropped"]] if from_served else routing["experts"]
    n = np.bincount(counted.ravel(), minlength=6)
    assert routing["dropped"].any()
    np.testing.assert_array_equal(layer.selection_bias, 0.01 * np.sign(n.mean() - n))


def test_a_bias_count_without_a_bias_rate_is_refused():
    with pytest.raises(moe.MoeError, match="bias_update_from_served must be 0, or 1 with a "
                                           "bias_update_rate > 0"):
        moe.Layer(8, 8, 4, 2, bias_update_from_served=True)
