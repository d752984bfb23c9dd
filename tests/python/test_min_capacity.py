"""min_capacity as DeepSpeed defines it (deepspeed/moe/sharded_moe.py, _capacity):
capacity = ceil(T * k / E * capacity_factor), raised to min_capacity when below it. The
drops are computed here from the layer's own routing with that capacity and the
position policy (each expert keeps its earliest tokens), and compared with the layer's."""
import math

import numpy as np
import pytest

import moe


def deepspeed_capacity(T, k, E, factor, min_capacity):
    capacity = math.ceil(T * k / E * factor)
    return max(capacity, min_capacity)


def position_drops(experts, capacity, E):
    taken = np.zeros(E, int)
    dropped = np.zeros(experts.shape, bool)
    for t in range(experts.shape[0]):
        for j in range(experts.shape[1]):
            e = experts[t, j]
            if e < 0:
                continue
            dropped[t, j] = taken[e] >= capacity
            taken[e] += 1
    return dropped


@pytest.mark.parametrize("T,k,E,factor,min_capacity", [(32, 2, 8, 0.25, 5), (32, 2, 8, 1.0, 3),
                                                       (4, 1, 8, 1.0, 4), (64, 1, 16, 0.5, 0)])
def test_capacity_has_deepspeeds_floor(T, k, E, factor, min_capacity):
    rng = np.random.default_rng(T + E)
    layer = moe.Layer(8, 8, E, k, capacity_factor=factor, min_capacity=min_capacity,
                      backend="cpu_ref")
    layer.set_weights(router=rng.standard_normal((8, E)), w1=rng.standard_normal((E, 8, 8)),
                      w2=rng.standard_normal((E, 8, 8)))
    layer.forward(rng.standard_normal((T, 8)))
    routing = layer.routing()
    capacity = deepspeed_capacity(T, k, E, factor, min_capacity)
    assert np.array_equal(routing["dropped"], position_drops(routing["experts"], capacity, E))
    assert layer.telemetry()["capacity"] == capacity


@pytest.mark.parametrize("options,message", [
    (dict(min_capacity=4), "config.min_capacity is a floor under token choice's capacity"),
    (dict(min_capacity=4, capacity_factor=1.0, router="expert_choice"),
     "config.min_capacity is a floor"),
    (dict(min_capacity=2 ** 41, capacity_factor=1.0), "config.min_capacity must be in [0, 2^40]"),
])
def test_min_capacity_without_a_capacity_is_refused(options, message):
    with pytest.raises(moe.MoeError, match=message.replace("[", r"\[").replace("^", r"\^")):
        moe.Layer(8, 8, 8, 2, **options)
