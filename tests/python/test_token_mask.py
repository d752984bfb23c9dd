"""The token mask (moe_forward_args_t.token_mask, forward(token_mask=)): padding tokens
are routed nowhere, output 0, count in no loss and no metric, and get a zero dx. The
reference is the same layer run on the unmasked rows alone: on those rows every output,
the losses, every metric and every weight gradient must be the same."""
import numpy as np
import pytest

import moe

T, D, F, E = 48, 12, 10, 6

ROUTERS = [
    dict(router="softmax", load_balance_alpha=0.01, router_z_loss_coef=0.001),
    dict(router="sigmoid", load_balance_alpha=0.01, n_group=3, topk_group=2,
         routed_scaling_factor=2.0),
    dict(router="hash", hash_mode="content"),
    dict(router="hash", hash_mode="balanced"),
    dict(router="softmax", num_shared_experts=2, shared_d_ff=4, shared_expert_gate=True),
]


def make_layer(options):
    options = dict(options)
    router = options.pop("router")
    return moe.Layer(D, F, E, 2, router=router, dtype="float64", backend="cpu_ref", **options)


def weights(rng, options=None):
    w = dict(router=rng.standard_normal((D, E)) / np.sqrt(D),
             w1=rng.standard_normal((E, D, F)) / np.sqrt(D),
             w2=rng.standard_normal((E, F, D)) / np.sqrt(F))
    if options and options.get("num_shared_experts"):
        width = options["num_shared_experts"] * options["shared_d_ff"]
        w.update(shared_w1=rng.standard_normal((D, width)) / np.sqrt(D),
                 shared_w2=rng.standard_normal((width, D)) / np.sqrt(width),
                 shared_gate=rng.standard_normal((D, 1)))
    return w


def run(options, x, dy, w, mask=None):
    layer = make_layer(options)
    layer.set_weights(**({k: v for k, v in w.items() if k != "router"}
                         if options["router"] == "hash" else w))
    y = layer.forward(x, token_mask=mask)
    dx, grads = layer.backward(dy)
    return y, dx, grads, layer.losses(), layer.telemetry(), layer.routing()["experts"]


@pytest.mark.parametrize("options", ROUTERS, ids=lambda o: "-".join(map(str, o.values())))
def test_masked_tokens_are_as_if_absent(options):
    rng = np.random.default_rng(len(options))
    x, dy = rng.standard_normal((T, D)), rng.standard_normal((T, D))
    mask = rng.random(T) < 0.7
    x[~mask] = rng.choice([np.nan, 1e308, 0.0], size=((~mask).sum(), 1))  # padding holds anything
    w = weights(rng, options)
    y, dx, grads, losses, metrics, experts = run(options, x, dy, w, mask)
    y_ref, dx_ref, grads_ref, losses_ref, metrics_ref, experts_ref = run(
        options, x[mask], dy[mask], w)

    assert (experts[~mask] == -1).all()
    assert (y[~mask] == 0).all() and (dx[~mask] == 0).all()
    np.testing.assert_allclose(y[mask], y_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx[mask], dx_ref, rtol=1e-12, atol=1e-14)
    assert np.array_equal(experts[mask], experts_ref)
    for name in grads_ref:
        np.testing.assert_allclose(grads[name], grads_ref[name], rtol=1e-11, atol=1e-14)
    for name, value in losses_ref.items():
        assert losses[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
    assert set(metrics) == set(metrics_ref) and len(metrics) > 20
    for name, value in metrics_ref.items():  # every metric of the catalogue
        assert np.allclose(metrics[name], value, rtol=1e-12, atol=1e-15, equal_nan=True), name
    assert metrics["nonfinite_rows"] == 0  # the NaN padding is not counted


def test_nan_rows_keep_their_behaviour_beside_a_mask():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, D))
    x[[2, 5]] = np.nan
    mask = np.ones(T, bool)
    mask[[5, 9]] = False  # 5 is both: masked wins, it is not counted
    layer = make_layer(ROUTERS[0])
    layer.set_weights(**weights(rng))
    y = layer.forward(x, token_mask=mask)
    assert (layer.routing()["experts"][[2, 5, 9]] == -1).all() and np.isfinite(y).all()
    assert layer.telemetry()["nonfinite_rows"] == 1


def test_an_all_padding_call_and_bad_masks():
    rng = np.random.default_rng(2)
    layer = make_layer(ROUTERS[0])
    layer.set_weights(**weights(rng))
    x = rng.standard_normal((8, D))
    y = layer.forward(x, token_mask=np.zeros(8, bool))
    dx, grads = layer.backward(np.ones((8, D)))
    assert (y == 0).all() and (dx == 0).all() and all((g == 0).all() for g in grads.values())
    assert layer.losses()["aux_loss"] == 0
    for bad, error in ((np.ones(7, bool), ValueError), (np.ones((8, 1), bool), ValueError),
                       (np.full(8, 2), TypeError), (np.full(8, 0.5), TypeError)):
        with pytest.raises(error):
            layer.forward(x, token_mask=bad)
    assert layer.forward(x, token_mask=[1] * 8).shape == (8, D)  # still usable
    assert layer.forward(np.zeros((0, D)), token_mask=[]).shape == (0, D)  # T = 0
