"""The binding's hardening (issue 15): backward uses the saved state of the forward it
belongs to, and every array the library writes into is checked before the call (dtype,
shape, C-contiguity, alignment, writability), never written outside its view."""
import numpy as np
import pytest

import moe

D, F, E, K = 8, 12, 4, 2


def weights(seed=0):
    rng = np.random.default_rng(seed)
    return dict(router=rng.standard_normal((D, E)).astype(np.float32),
                w1=rng.standard_normal((E, D, F)).astype(np.float32) * 0.3,
                w2=rng.standard_normal((E, F, D)).astype(np.float32) * 0.3)


def layer(**kw):
    l = moe.Layer(D, F, E, K, backend="cpu_ref", **kw)
    l.set_weights(**weights())
    return l


def batch(seed, T=10):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((T, D)).astype(np.float32),
            rng.standard_normal((T, D)).astype(np.float32))


def reference_backward(x, dy):
    """The gradient of one batch from a layer that saw only that batch (independent of
    any other forward in flight)."""
    alone = layer()
    alone.forward(x)
    return alone.backward(dy)


def test_two_forwards_then_backwards_in_any_order_match_each_alone():
    (x1, dy1), (x2, dy2) = batch(1), batch(2)
    l = layer()
    _, c1 = l.forward(x1, return_context=True)
    _, c2 = l.forward(x2, return_context=True)
    for ctx, x, dy in ((c1, x1, dy1), (c2, x2, dy2)):  # the older one first
        dx, grads = l.backward(dy, ctx=ctx)
        want_dx, want = reference_backward(x, dy)
        np.testing.assert_array_equal(dx, want_dx)
        for name in want:
            np.testing.assert_array_equal(grads[name], want[name])


def test_backward_without_ctx_after_two_forwards_is_refused():
    (x1, dy1), (x2, _) = batch(1), batch(2)
    l = layer()
    l.forward(x1)
    l.forward(x2)
    with pytest.raises(RuntimeError, match="pass ctx="):
        l.backward(dy1)


def test_backward_without_ctx_keeps_working_for_one_forward_at_a_time():
    l = layer()
    for seed in (1, 2, 3):
        x, dy = batch(seed)
        l.forward(x)
        dx, _ = l.backward(dy)
        np.testing.assert_array_equal(dx, reference_backward(x, dy)[0])


def test_a_context_of_another_layer_is_refused():
    x, dy = batch(1)
    a, b = layer(), layer()
    _, ctx = a.forward(x, return_context=True)
    b.forward(x)
    with pytest.raises(ValueError, match="another layer"):
        b.backward(dy, ctx=ctx)


def test_routing_and_losses_of_a_given_forward():
    (x1, _), (x2, _) = batch(1), batch(2, T=7)
    l = layer()
    _, c1 = l.forward(x1, return_context=True)
    l.forward(x2)
    assert l.routing(ctx=c1)["experts"].shape == (10, K)
    assert l.routing()["experts"].shape == (7, K)


def good_grads(l):
    return {k: np.zeros_like(v) for k, v in l._weights.items() if v is not None}


@pytest.mark.parametrize("make_bad", [
    lambda a: np.asfortranarray(a),                         # Fortran order: wrong layout
    lambda a: a[::-1],                                      # reversed view
    lambda a: np.broadcast_to(a.reshape(-1)[:1].reshape((1,) * a.ndim), a.shape),  # stride 0
    lambda a: a.astype(np.float64),                         # wrong dtype
    lambda a: a[..., :-1],                                  # wrong shape
    lambda a: np.frombuffer(bytes(a.nbytes), dtype=a.dtype).reshape(a.shape),  # read-only
    lambda a: np.frombuffer(bytearray(a.nbytes + 1), dtype=np.uint8)[1:].view(
        a.dtype).reshape(a.shape),                          # misaligned
])
def test_accumulate_into_refuses_arrays_it_cannot_write_in_place(make_bad):
    x, dy = batch(1)
    l = layer()
    l.forward(x)
    grads = good_grads(l)
    base = grads["w1"].copy() + 1
    bad = make_bad(base.copy())
    before = np.array(bad, copy=True)
    grads["w1"] = bad
    with pytest.raises((ValueError, TypeError)):
        l.backward(dy, accumulate_into=grads)
    np.testing.assert_array_equal(np.asarray(bad), before)  # nothing written
    # The layer is still usable, and a good dict accumulates.
    good = good_grads(l)
    l.backward(dy, accumulate_into=good)
    l.backward(dy, accumulate_into=good)
    _, once = reference_backward(x, dy)
    np.testing.assert_allclose(good["w1"], 2 * once["w1"], rtol=1e-6, atol=1e-6)


def test_accumulate_into_refuses_unknown_keys_and_non_arrays():
    x, dy = batch(1)
    l = layer()
    l.forward(x)
    with pytest.raises(ValueError, match="unknown keys"):
        l.backward(dy, accumulate_into={"w3": np.zeros(3, np.float32)})
    with pytest.raises(TypeError):
        l.backward(dy, accumulate_into={"w1": [[0.0]]})


def test_backward_after_set_comm_asks_for_weights():
    x, dy = batch(1)
    l = layer()
    l.forward(x)
    l.set_comm(moe.Comm.local())
    with pytest.raises(RuntimeError, match="set_weights"):
        l.backward(dy)


def test_reduce_router_grad_checks_its_array():
    l = layer()
    l.set_comm(moe.Comm.local())
    with pytest.raises(ValueError):
        l.reduce_router_grad(np.zeros((E, D), np.float32))       # transposed shape
    with pytest.raises(ValueError):
        l.reduce_router_grad(np.zeros((D, E), np.float32)[::-1])  # reversed view
    l.reduce_router_grad(np.zeros((D, E), np.float32))
