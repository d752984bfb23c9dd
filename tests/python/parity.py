"""Runs one configuration through the library and through the PyTorch reference and
returns the relative errors max|lib - ref| / max|ref| of every output and gradient."""
import os

import numpy as np
import torch

import moe
from torch_reference import moe_forward


def relative_error(lib, ref):
    lib = np.asarray(lib, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    scale = np.max(np.abs(ref)) if ref.size else 0.0
    diff = np.max(np.abs(lib - ref)) if ref.size else 0.0
    if not np.all(np.isfinite(lib)):
        return np.inf
    return diff / scale if scale > 0 else diff


def random_case(rng, T, d, d_ff, E, activation, expert_bias, dtype=np.float32):
    F = 2 * d_ff if activation in ("swiglu", "geglu") else d_ff
    w = {
        "router": rng.standard_normal((d, E)) / np.sqrt(d),
        "w1": rng.standard_normal((E, d, F)) / np.sqrt(d),
        "w2": rng.standard_normal((E, d_ff, d)) / np.sqrt(d_ff),
    }
    if expert_bias:
        w["b1"] = 0.1 * rng.standard_normal((E, F))
        w["b2"] = 0.1 * rng.standard_normal((E, d))
    x = rng.standard_normal((T, d))
    dy = rng.standard_normal((T, d))
    cast = lambda a: a.astype(dtype)
    return cast(x), cast(dy), {k: cast(v) for k, v in w.items()}


def compare(T, d, d_ff, E, k, *, router="softmax", activation="gelu", capacity_factor=0.0,
            drop_policy="position", expert_bias=False, seed=0, dtype=np.float32, **options):
    rng = np.random.default_rng(seed)
    x, dy, w = random_case(rng, T, d, d_ff, E, activation, expert_bias, dtype)
    # MOE_TEST_BACKEND (ctest's python_parity_onednn) runs the float32 cases on another
    # backend; float64 is cpu_ref's alone.
    backend = os.environ.get("MOE_TEST_BACKEND", "cpu_ref") if dtype == np.float32 else "cpu_ref"
    layer = moe.Layer(d, d_ff, E, k, activation=activation, router=router,
                      capacity_factor=capacity_factor, drop_policy=drop_policy,
                      expert_bias=expert_bias, dtype=np.dtype(dtype).name, backend=backend,
                      **options)
    layer.set_weights(**w)
    y = layer.forward(x)
    dx, grads = layer.backward(dy)
    routing = layer.routing()
    losses = layer.losses()

    tdt = torch.float32 if dtype == np.float32 else torch.float64
    tw = {n: torch.tensor(v, dtype=tdt, requires_grad=True) for n, v in w.items()}
    tx = torch.tensor(x, dtype=tdt, requires_grad=True)
    ty, aux, zl, experts, kept = moe_forward(
        tx, tw["router"], tw["w1"], tw["w2"], tw.get("b1"), tw.get("b2"), router=router,
        activation=activation, top_k=k, capacity_factor=capacity_factor,
        drop_policy=drop_policy, renormalize=options.get("renormalize"),
        temperature=options.get("router_temp_init", 1.0))
    alpha = options.get("load_balance_alpha", 0.0)
    zcoef = options.get("router_z_loss_coef", 0.0)
    loss = (ty * torch.tensor(dy, dtype=tdt)).sum() + alpha * aux + zcoef * zl
    loss.backward()

    lib_experts = routing["experts"].astype(np.int64)
    ref_experts = experts.numpy()
    if router == "expert_choice":
        assert np.array_equal(lib_experts, ref_experts), "expert-choice selection differs"
    else:
        # Slot order is by descending score in both; compare as sets per token to be safe.
        assert np.array_equal(np.sort(lib_experts, 1), np.sort(ref_experts, 1)), \
            "top-k selection differs"
        assert np.array_equal(~routing["dropped"], kept.numpy()), "drop decisions differ"
    errors = {
        "y": relative_error(y, ty.detach().numpy()),
        "dx": relative_error(dx, tx.grad.numpy()),
        "aux_loss": relative_error([losses["aux_loss"]], [aux.item()]),
        "z_loss": relative_error([losses["z_loss"]], [zl.item()]),
    }
    for name, g in grads.items():
        errors["d" + name] = relative_error(g, tw[name].grad.numpy())
    return errors
