"""Forward output, aux and z losses, and every gradient of the library against an
independent PyTorch implementation (tests/python/torch_reference.py), fp32."""
import itertools

import numpy as np
import pytest

from parity import compare

TOLERANCE = 1e-5
ROUTERS = ["softmax", "sigmoid", "expert_choice"]
ACTIVATIONS = ["relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu"]
MODES = [("dropless", 0.0, "position"), ("capacity-position", 1.0, "position"),
         ("capacity-probability", 1.0, "probability")]


def assert_close(errors):
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, f"{worst}: relative error {errors[worst]:.3g}; all {errors}"


@pytest.mark.parametrize("router,activation,mode",
                         list(itertools.product(ROUTERS, ACTIVATIONS, MODES)),
                         ids=lambda v: v if isinstance(v, str) else v[0])
def test_router_activation_mode(router, activation, mode):
    _, factor, policy = mode
    errors = compare(37, 16, 24, 6, 2, router=router, activation=activation,
                     capacity_factor=factor, drop_policy=policy, expert_bias=True,
                     load_balance_alpha=0.05, router_z_loss_coef=0.01, seed=hash(router) % 1000)
    assert_close(errors)


@pytest.mark.parametrize("shape", [
    dict(T=1, d=8, d_ff=8, E=4, k=2),
    dict(T=63, d=12, d_ff=20, E=8, k=3),
    dict(T=129, d=32, d_ff=16, E=5, k=1),
    dict(T=17, d=8, d_ff=16, E=1, k=1),     # E = 1
    dict(T=23, d=8, d_ff=12, E=4, k=4),     # k = E
], ids=lambda s: "T{T}-d{d}-ff{d_ff}-E{E}-k{k}".format(**s))
@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
@pytest.mark.parametrize("capacity_factor", [0.0, 0.75])
def test_shapes(shape, router, capacity_factor):
    errors = compare(shape["T"], shape["d"], shape["d_ff"], shape["E"], shape["k"],
                     router=router, activation="swiglu", capacity_factor=capacity_factor,
                     load_balance_alpha=0.1, router_z_loss_coef=0.001, seed=shape["T"])
    assert_close(errors)


@pytest.mark.parametrize("options", [
    dict(router_temp_init=0.5),
    dict(router_temp_init=2.0, renormalize=False),
    dict(renormalize=True, router_temp_init=1.5),
], ids=["temp0.5", "temp2-norenorm", "renorm-temp1.5"])
def test_router_options(options):
    errors = compare(41, 16, 16, 8, 2, router="softmax", activation="gelu", **options)
    assert_close(errors)


def test_top1_without_renormalisation_keeps_router_gradient():
    # k = 1 defaults to renormalize off: the gate is P itself and the router learns.
    errors = compare(40, 8, 8, 4, 1, router="softmax", activation="relu")
    assert_close(errors)


def test_float64_parity_is_tight():
    errors = compare(33, 8, 12, 4, 2, router="sigmoid", activation="geglu", expert_bias=True,
                     capacity_factor=1.0, load_balance_alpha=0.1, router_z_loss_coef=0.01,
                     dtype=np.float64)
    assert max(errors.values()) <= 1e-12, errors
