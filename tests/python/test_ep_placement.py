"""The expert-parallel options and load-driven placement through the Python binding, on
the built-in one-rank communicator (docs/distributed.md): one copy per rank and its
chunked forward give the layer's own bits, the traffic counts rows against copies, the
load window equals the demand recounted from the routing, and EPLB's placement matches a
case worked by hand."""
import numpy as np
import pytest

import moe


def make(comm=None, **options):
    layer = moe.Layer(d_model=8, d_ff=16, num_experts=4, top_k=2, backend="cpu_ref", **options)
    rng = np.random.default_rng(5)
    weights = dict(router=rng.standard_normal((8, 4)).astype(np.float32) / 3,
                   w1=rng.standard_normal((4, 8, 16)).astype(np.float32) / 3,
                   w2=rng.standard_normal((4, 16, 8)).astype(np.float32) / 4)
    if comm is not None:
        layer.set_comm(comm)
    layer.set_weights(**weights)
    return layer, weights, rng


def test_placement_from_load_matches_eplb_worked_by_hand():
    # load 8,4,2,2 on 2 ranks, 6 slots: e0 and then e1 get a second replica (e0 may not
    # have a third on 2 ranks); heaviest first onto the least-loaded rank with room.
    table, before, after = moe.placement_from_load([8, 4, 2, 2], world=2, num_slots=6)
    assert table.tolist() == [0, 1, 2, 0, 1, 3]
    assert (before, after) == (1.5, 1.0)
    for bad in (dict(load=[1, -1], world=2, num_slots=2),
                dict(load=[1, 1, 1], world=2, num_slots=5),
                dict(load=[1, 1, 1, 1], world=4, num_slots=4, num_nodes=3)):
        with pytest.raises(moe.MoeError) as e:
            moe.placement_from_load(**bad)
        assert e.value.status == "INVALID_ARGUMENT"
    with pytest.raises(ValueError):
        moe.placement_from_load([], world=1, num_slots=1)


@pytest.mark.parametrize("chunks", [1, 3])
def test_one_copy_per_rank_keeps_the_bits_on_one_rank(chunks):
    plain, _, rng = make(capacity_factor=1.0)
    comm = moe.Comm.local()
    layer, _, _ = make(comm, capacity_factor=1.0)
    layer.set_ep_options(dedup=True, chunks=chunks)
    assert layer.ep_options() == {"dedup": True, "chunks": chunks}
    x = rng.standard_normal((21, 8)).astype(np.float32)
    dy = rng.standard_normal((21, 8)).astype(np.float32)
    np.testing.assert_array_equal(plain.forward(x), layer.forward(x))
    (dx_a, g_a), (dx_b, g_b) = plain.backward(dy), layer.backward(dy)
    np.testing.assert_array_equal(dx_a, dx_b)
    for name in g_a:
        np.testing.assert_array_equal(g_a[name], g_b[name])
    # One rank: each token's kept copies go there as one row, each way, forward and
    # backward, with 32 bytes of metadata per copy.
    r = layer.routing()
    kept = (r["experts"] >= 0) & ~r["dropped"]
    copies, tokens = int(kept.sum()), int(kept.any(axis=1).sum())
    t = layer.traffic()
    assert t["per_copy_row_bytes_sent"] == 4 * copies * 8 * 4
    assert t["row_bytes_sent"] == 4 * tokens * 8 * 4 + 32 * copies
    assert t["row_bytes_sent"] == t["row_bytes_received"]
    # The per-peer entries keep moe_peer_traffic_t's four fields (the totals grew, not they).
    assert sorted(t["peers"][0]) == ["bytes_received", "bytes_sent", "tokens_received",
                                     "tokens_sent"]
    assert t["peers"][0]["tokens_sent"] == copies
    with pytest.raises(moe.MoeError) as e:
        layer.set_ep_options(dedup=False, chunks=2)  # chunks pipeline the dedup path
    assert e.value.status == "INVALID_ARGUMENT"
    with pytest.raises(moe.MoeError) as e:
        plain.set_ep_options(dedup=True)  # no communicator
    assert e.value.status == "INVALID_STATE"


def test_load_window_placement_and_moved_weights():
    comm = moe.Comm.local()
    layer, weights, rng = make(comm)
    x = rng.standard_normal((30, 8)).astype(np.float32)
    expected = np.zeros(4)
    for _ in range(2):
        layer.forward(x)
        e = layer.routing()["experts"]
        expected += np.bincount(e[e >= 0], minlength=4)
    layer.forward(x, train=False)  # evaluation adds nothing
    np.testing.assert_array_equal(layer.expert_load(reset=True), expected)
    assert layer.expert_load().sum() == 0
    # One rank holds every expert once; empty slots are allowed.
    table = [3, -1, 1, 0, 2, -1]
    w1 = layer.move_expert_tensor(table, weights["w1"])
    w2 = layer.move_expert_tensor(table, weights["w2"])
    np.testing.assert_array_equal(w1, weights["w1"])
    layer.set_placement(table)
    assert layer.local_experts().tolist() == [0, 1, 2, 3]
    with pytest.raises(moe.MoeError):  # the placement unbound the weights
        layer.forward(x)
    layer.set_weights(router=weights["router"], w1=w1, w2=w2)
    plain, _, _ = make()
    np.testing.assert_array_equal(plain.forward(x), layer.forward(x))
    with pytest.raises(moe.MoeError) as e:
        layer.set_placement([0, 0, 1, 2, 3])  # expert 0 twice on the one rank
    assert e.value.status == "INVALID_ARGUMENT"
    with pytest.raises(ValueError):
        layer.set_placement([])


def test_bad_python_arguments_are_refused_before_the_library():
    comm = moe.Comm.local()
    layer, weights, _ = make(comm)
    table = [0, 1, 2, 3]
    with pytest.raises(TypeError):  # raw bytes of Python objects would lose their references
        layer.move_expert_tensor(table, np.array([object() for _ in range(4)], dtype=object))
    with pytest.raises(TypeError):
        layer.move_expert_tensor(table, np.array(["a", "b", "c", "d"]))
    for bad in (np.arange(4) + 0.5, "0123", [0, 1, 2, 2 ** 40]):
        with pytest.raises((TypeError, ValueError)):
            layer.set_placement(bad)
    with pytest.raises(TypeError):
        layer.set_ep_options(dedup="False")
    with pytest.raises(TypeError):
        layer.expert_load(reset="x")
