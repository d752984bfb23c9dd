"""The Python binding's contract (ARCHITECTURE.md): constructor options, set_weights,
forward, backward, routing(), telemetry(), losses(), errors."""
import numpy as np
import pytest

import moe


def make_layer(**kw):
    args = dict(d_model=8, d_ff=12, num_experts=4, top_k=2)
    args.update(kw)
    layer = moe.Layer(**args)
    rng = np.random.default_rng(0)
    F = 2 * args["d_ff"] if kw.get("activation") in ("swiglu", "geglu") else args["d_ff"]
    w = dict(router=rng.standard_normal((8, 4)), w1=rng.standard_normal((4, 8, F)),
             w2=rng.standard_normal((4, args["d_ff"], 8)))
    layer.set_weights(**w)
    return layer, rng


def test_contract_shapes_and_keys():
    layer, rng = make_layer(activation="swiglu", router_z_loss_coef=1e-3, load_balance_alpha=0.01)
    x = rng.standard_normal((10, 8)).astype(np.float32)
    y = layer.forward(x, train=True)
    assert y.shape == (10, 8) and y.dtype == np.float32
    dx, grads = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape
    assert set(grads) == {"router", "w1", "w2"}
    assert grads["w1"].shape == (4, 8, 24)
    r = layer.routing()
    assert set(r) == {"experts", "gates", "dropped"}
    assert r["experts"].shape == (10, 2) and r["gates"].shape == (10, 2)
    losses = layer.losses()
    assert set(losses) == {"aux_loss", "aux_loss_scaled", "z_loss", "z_loss_scaled"}
    assert losses["aux_loss_scaled"] == pytest.approx(0.01 * losses["aux_loss"])
    m = layer.telemetry()
    assert m["tokens"] == 10 and sum(m["expert_counts"]) == 20
    assert layer.step == 1


def test_gates_are_renormalised_softmax_probabilities():
    layer, rng = make_layer()
    x = rng.standard_normal((6, 8))
    layer.forward(x)
    z = x @ layer._weights["router"].astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    r = layer.routing()
    top2 = np.argsort(-p, 1, kind="stable")[:, :2]
    assert np.array_equal(r["experts"], top2)
    chosen = np.take_along_axis(p, top2, 1)
    np.testing.assert_allclose(r["gates"], chosen / chosen.sum(1, keepdims=True), rtol=1e-5)


def test_expert_biases_and_accumulation():
    layer = moe.Layer(8, 8, 4, 1, expert_bias=True)
    rng = np.random.default_rng(1)
    layer.set_weights(router=rng.standard_normal((8, 4)), w1=rng.standard_normal((4, 8, 8)),
                      w2=rng.standard_normal((4, 8, 8)), b1=rng.standard_normal((4, 8)),
                      b2=rng.standard_normal((4, 8)))
    layer.forward(rng.standard_normal((5, 8)))
    _, grads = layer.backward(np.ones((5, 8)))
    assert set(grads) == {"router", "w1", "w2", "b1", "b2"}
    first = {k: v.copy() for k, v in grads.items()}
    layer.backward(np.ones((5, 8)), accumulate_into=grads)
    for k in grads:
        np.testing.assert_allclose(grads[k], 2 * first[k], rtol=1e-6)


def test_expert_choice_routing_has_one_slot_per_expert():
    layer, rng = make_layer(router="expert_choice")
    layer.forward(rng.standard_normal((12, 8)))
    r = layer.routing()
    assert r["experts"].shape == (12, 4)
    for e in range(4):
        column = r["experts"][:, e]
        assert set(column.tolist()) <= {-1, e}
        assert (column == e).sum() == 6  # C = ceil(12 * 2 / 4)


def test_errors_raise_with_status_and_message():
    with pytest.raises(moe.MoeError) as err:
        moe.Layer(8, 8, 4, 5)
    assert err.value.status == "INVALID_ARGUMENT" and "top_k" in str(err.value)
    layer, rng = make_layer()
    with pytest.raises(moe.MoeError) as err:
        layer.forward(rng.standard_normal((3, 7)))
    assert err.value.status == "SHAPE_MISMATCH"
    with pytest.raises(moe.MoeError) as err:
        layer.set_weights(router=np.zeros((8, 4)), w1=np.zeros((4, 8, 12)), w2=np.zeros((4, 8, 8)))
    assert err.value.status == "SHAPE_MISMATCH"
    # Still usable.
    y = layer.forward(rng.standard_normal((3, 8)))
    assert np.all(np.isfinite(y))
    with pytest.raises(ValueError):
        moe.Layer(8, 8, 4, 2, activation="tanh")
    with pytest.raises(TypeError):
        moe.Layer(8, 8, 4, 2, not_an_option=1)


def test_library_metadata():
    assert moe.version() == (0, 1, 0)
    assert moe.backends()[-1] == "cpu_ref"
    layer, _ = make_layer(router_temp_init=2.0, router_temp_final=1.0, router_temp_anneal_iters=10)
    cfg = layer.config()
    assert cfg["router_temp_init"] == 2.0


def test_default_backend_is_auto_as_in_the_c_abi():
    # MOE_LAYER_CONFIG_INIT leaves the backend to "auto", which picks onednn on the CPU
    # where it is built (docs/api.md); the binding's default is the same choice.
    expected = "onednn" if "onednn" in moe.backends() else "cpu_ref"
    assert moe.Layer(8, 8, 4, 2).config()["backend"] == expected
    assert moe.Layer(8, 8, 4, 2, backend="auto").config()["backend"] == expected
    assert moe.Layer(8, 8, 4, 2, backend="cpu_ref").config()["backend"] == "cpu_ref"


def test_local_communicator_runs_the_expert_parallel_path_with_the_same_bits():
    plain, rng = make_layer(capacity_factor=0.9, load_balance_alpha=0.01)
    attached, _ = make_layer(capacity_factor=0.9, load_balance_alpha=0.01)
    comm = moe.Comm.local()
    assert (comm.rank, comm.world) == (0, 1)
    weights = dict(attached._weights)
    attached.set_comm(comm)
    assert attached.local_experts().tolist() == [0, 1, 2, 3]
    with pytest.raises(moe.MoeError):  # attaching unbound the weights
        attached.forward(np.zeros((3, 8), dtype=np.float32))
    attached.set_weights(**weights)
    x = rng.standard_normal((19, 8)).astype(np.float32)
    dy = rng.standard_normal((19, 8)).astype(np.float32)
    np.testing.assert_array_equal(plain.forward(x), attached.forward(x))
    (dx_a, g_a), (dx_b, g_b) = plain.backward(dy), attached.backward(dy)
    np.testing.assert_array_equal(dx_a, dx_b)
    for name in g_a:
        np.testing.assert_array_equal(g_a[name], g_b[name])
    router = g_b["router"].copy()
    attached.reduce_router_grad(g_b["router"])  # one rank: the sum is itself
    np.testing.assert_array_equal(router, g_b["router"])
    t = attached.traffic()
    assert (t["rank"], t["world"]) == (0, 1) and t["exchanges"] > 0
    kept = int((~layer_dropped(attached)).sum())
    assert t["peers"][0]["tokens_sent"] == kept == t["tokens_received"]
    assert plain.traffic()["rank"] == -1 and plain.traffic()["peers"] == []
    attached.set_comm(None)


def layer_dropped(layer):
    r = layer.routing()
    return r["dropped"] | (r["experts"] < 0)


def test_integers_out_of_range_are_refused_not_wrapped():
    # ctypes would store 2**64 + 8 as 8, -1 as 2**64 - 1 and 2**70 as 0.
    for kwargs in (dict(d_model=2 ** 64 + 8), dict(d_model=2 ** 70), dict(num_experts=-1),
                   dict(seed=-1), dict(seed=2 ** 64), dict(router_temp_anneal_iters=2 ** 64 + 3)):
        args = dict(d_model=8, d_ff=8, num_experts=4, top_k=2)
        args.update(kwargs)
        with pytest.raises(ValueError):
            moe.Layer(**args)
    with pytest.raises(TypeError):
        moe.Layer(8.5, 8, 4, 2)
    assert moe.Layer(8, 8, 4, 2, seed=2 ** 64 - 1).config()["seed"] == 2 ** 64 - 1


def test_call_arguments_are_checked_not_wrapped_or_cast():
    layer = moe.Layer(4, 4, 2, 1, dtype="float64")
    layer.set_weights(router=np.ones((4, 2)), w1=np.ones((2, 4, 4)), w2=np.ones((2, 4, 4)))
    x = np.ones((3, 4))
    for value in (2 ** 64 + 5, 2 ** 63 + 7, -1):
        with pytest.raises(ValueError):
            layer.step = value  # 2**64 + 5 once set the step to 5
    with pytest.raises(ValueError):
        layer.forward(x, seq_len=2 ** 64 + 1)
    with pytest.raises(TypeError):
        layer.forward(x, train="no")  # a truthy string once ran a training call
    with pytest.raises(TypeError):
        layer.forward(x.astype(np.complex128))  # the imaginary part would be dropped
    assert layer.step == 0
    hashed = moe.Layer(4, 4, 2, 1, router="hash", dtype="float64")
    with pytest.raises(ValueError):
        hashed.build_hash_table([0, 1], 2 ** 64 + 1)  # once a vocabulary of 1
    with pytest.raises(TypeError):
        hashed.build_hash_table([1.5, 2.5], 8)  # once truncated to 1 and 2
    with pytest.raises(ValueError):
        hashed.build_hash_table(np.array([2 ** 63 + 1], dtype=np.uint64), 8)
    hashed.build_hash_table(np.array([0, 1, 1], dtype=np.uint32), 8)


def test_flags_and_types_are_checked():
    with pytest.raises(TypeError):
        moe.Layer(8, 8, 4, 1, expert_bias="no")  # would have been truthy: biases on
    with pytest.raises(ValueError, match="bfloat16"):
        moe.Layer(8, 8, 4, 1, dtype="bfloat16")
    with pytest.raises(TypeError):
        moe.compare_routing(None, None)
    with pytest.raises(TypeError):
        moe.Layer(8, 8, 4, 1, backend=3)
    assert moe.Layer(8, 8, 4, 1, backend=None).config()["backend"] in moe.backends()


def test_config_speaks_the_constructors_names():
    cfg = moe.Layer(8, 8, 4, 2, activation="swiglu", router="sigmoid", backend="cpu_ref",
                    drop_policy="probability", capacity_factor=1.0).config()
    assert (cfg["activation"], cfg["router"], cfg["dtype"], cfg["backend"]) == (
        "swiglu", "sigmoid", "float32", "cpu_ref")
    assert cfg["drop_policy"] == "probability" and cfg["expert_bias"] is False


def test_library_path_names_the_file_loaded():
    import os
    path = moe.library_path()
    assert os.path.isfile(path) and os.path.basename(path).startswith("libmoe.so")


def test_bad_verdict_thresholds_are_refused_and_change_nothing():
    layer, rng = make_layer()
    layer.forward(rng.standard_normal((16, 8)))
    before = layer.verdicts()
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(moe.MoeError) as err:
            layer.set_verdict_thresholds(imbalance_load_cv=bad)
        assert err.value.status == "INVALID_ARGUMENT"
    with pytest.raises(ValueError):
        layer.set_verdict_thresholds(specialization_warmup_steps=-1)
    assert layer.verdicts() == before
