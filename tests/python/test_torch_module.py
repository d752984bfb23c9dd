"""moe.torch.MoE against torch's own checks and an independent pure-PyTorch MoE module:
gradcheck in float64 (x, every parameter, the aux and z losses as outputs), 50 Adam steps
from the same initialisation and data with losses equal within float32 tolerance,
micro-batches and gradient accumulation, activation checkpointing through
moe.torch.checkpoint, the state_dict, and the W&B-named metrics."""
import numpy as np
import pytest

import moe  # noqa: E402

torch = pytest.importorskip("torch")
mt = pytest.importorskip("moe.torch")

from torch_reference import moe_forward  # noqa: E402  (tests/python: independent of moe)


def make(dtype=torch.float64, **options):
    options.setdefault("backend", "cpu_ref")
    return mt.MoE(8, 6, 4, 2, dtype=dtype, **options)


@pytest.mark.parametrize("options", [
    dict(load_balance_alpha=0.3, router_z_loss_coef=0.1),
    dict(router="sigmoid", activation="swiglu", expert_bias=True, load_balance_alpha=0.2,
         num_shared_experts=1, shared_expert_gate=True),
    dict(capacity_factor=0.75, load_balance_alpha=0.1, aux_loss_scope="sequence",
         aux_loss_unbiased_topk=True),
])
def test_gradcheck_every_input_and_both_losses(options):
    torch.manual_seed(0)
    m = make(**options)
    m.eval()  # no step, so every call of gradcheck routes alike
    x = torch.randn(3, 4, 8, dtype=torch.float64, requires_grad=True)
    names = m._present

    def f(x, *params):  # the module's autograd node, on gradcheck's own copies
        return mt._Forward.apply(m, x.reshape(-1, 8), None, None, 4, False, *params)

    params = tuple(getattr(m, n).detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


class TorchMoE(torch.nn.Module):
    """The pure-PyTorch MoE of tests/python/torch_reference.py as a module."""

    def __init__(self, source, **options):
        super().__init__()
        for n in ("router", "w1", "w2"):
            self.register_parameter(n, torch.nn.Parameter(getattr(source, n).detach().clone()))
        self.options = options

    def forward(self, x):
        y, aux, z, _, _ = moe_forward(x.reshape(-1, x.shape[-1]), self.router, self.w1, self.w2,
                                      None, None, **self.options)
        return y.reshape(x.shape), aux, z


def test_fifty_adam_steps_match_a_pure_pytorch_module():
    torch.manual_seed(1)
    alpha, z_coef = 0.05, 0.01
    ours = torch.nn.Sequential(torch.nn.Linear(16, 16), mt.MoE(
        16, 32, 4, 2, backend="cpu_ref", load_balance_alpha=alpha, router_z_loss_coef=z_coef))
    ref_moe = TorchMoE(ours[1], router="softmax", activation="gelu", top_k=2)
    ref_lin = torch.nn.Linear(16, 16)
    ref_lin.load_state_dict(ours[0].state_dict())
    opt_a = torch.optim.Adam(ours.parameters(), lr=3e-3)
    opt_b = torch.optim.Adam(list(ref_lin.parameters()) + list(ref_moe.parameters()), lr=3e-3)
    data = torch.Generator().manual_seed(2)
    teacher = torch.randn(16, 16, generator=data) / 4  # a map there is to learn
    losses = []
    for step in range(50):
        x = torch.randn(64, 16, generator=data)
        target = torch.tanh(x @ teacher) * 2
        loss_a = (ours(x) - target).square().mean() + mt.router_losses(ours)
        y, aux, z = ref_moe(ref_lin(x))
        loss_b = (y - target).square().mean() + alpha * aux + z_coef * z
        for opt, loss in ((opt_a, loss_a), (opt_b, loss_b)):
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append((loss_a.item(), loss_b.item()))
    a, b = np.array(losses).T
    np.testing.assert_allclose(a, b, rtol=2e-4)
    assert a[-1] < 0.8 * a[0]  # it learns


def test_micro_batches_and_accumulation_give_the_summed_gradient():
    torch.manual_seed(3)
    m = make(load_balance_alpha=0.2)
    xs = [torch.randn(5, 8, dtype=torch.float64) for _ in range(3)]
    # Three forwards in flight, then their backwards in another order.
    losses = [m(x).square().sum() for x in xs]
    for i in (2, 0, 1):
        losses[i].backward()
    together = {n: p.grad.clone() for n, p in m.named_parameters()}
    for p in m.parameters():
        p.grad = None
    for x in xs:  # one at a time
        m(x).square().sum().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, together[n], rtol=1e-12, atol=1e-12)


def test_the_aux_loss_reaches_the_router_only_through_the_loss():
    torch.manual_seed(4)
    m = make(load_balance_alpha=0.5)
    x = torch.randn(6, 8, dtype=torch.float64)
    m(x).sum().backward()
    without = m.router.grad.clone()
    m.router.grad = None
    (m(x).sum() + 3 * mt.router_losses(m)).backward()
    with_aux = m.router.grad.clone()
    m.router.grad = None
    (m(x).sum() + 3 * m.aux_loss).backward()
    assert not torch.allclose(without, with_aux)
    torch.testing.assert_close(m.router.grad, with_aux)
    # The difference is 3 * d(alpha aux)/d router: as the plain layer gives with grad 1.
    layer_grad = {}
    for aux_grad in (0.0, 1.0):
        m.layer.forward(x.numpy(), train=False)
        _, g = m.layer.backward(np.ones((6, 8)), aux_loss_grad=aux_grad)
        layer_grad[aux_grad] = torch.from_numpy(g["router"])
    torch.testing.assert_close(with_aux - without, 3 * (layer_grad[1.0] - layer_grad[0.0]))


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_checkpointing_gives_the_gradients_and_state_of_a_plain_run(use_reentrant):
    """With a selection bias update, noise and a temperature schedule, a second training
    forward would route differently: the recompute must see the first's state."""
    options = dict(router="sigmoid", bias_update_rate=0.05, router_noise_std_init=0.5,
                   router_temp_init=2.0, router_temp_final=0.5, router_temp_anneal_iters=10,
                   load_balance_alpha=0.1)
    runs = {}
    for mode in ("plain", "checkpoint"):
        torch.manual_seed(5)
        block = torch.nn.Sequential(torch.nn.Linear(8, 8, dtype=torch.float64), make(**options))
        x = torch.randn(4, 5, 8, dtype=torch.float64, requires_grad=True)
        for step in range(3):
            if mode == "plain":
                y = block(x)
            else:
                y = mt.checkpoint(block, x, use_reentrant=use_reentrant)
            (y.square().mean() + mt.router_losses(block)).backward()
        runs[mode] = ({n: p.grad.clone() for n, p in block.named_parameters()}, x.grad.clone(),
                      block[1].selection_bias.clone(), int(block[1].step),
                      block[1].layer.telemetry()["tokens"])
    (g1, dx1, b1, s1, t1), (g2, dx2, b2, s2, t2) = runs["plain"], runs["checkpoint"]
    assert s1 == s2 == 3 and torch.equal(b1, b2) and t1 == t2
    torch.testing.assert_close(dx1, dx2, rtol=1e-12, atol=1e-12)
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-12, atol=1e-12)


def test_the_state_dict_round_trips_what_the_layer_learns():
    torch.manual_seed(6)
    a = make(router="sigmoid", bias_update_rate=0.1)
    for _ in range(4):
        a(torch.randn(10, 8, dtype=torch.float64))
    assert int(a.step) == 4 and a.selection_bias.abs().sum() > 0
    b = make(router="sigmoid", bias_update_rate=0.1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(10, 8, dtype=torch.float64)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert b.layer.step == 4 and np.array_equal(b.layer.selection_bias, a.layer.selection_bias)


def test_the_hash_table_travels_in_the_state_dict():
    torch.manual_seed(8)
    a = mt.MoE(8, 6, 8, 2, router="hash", hash_mode="table", dtype=torch.float64,
               backend="cpu_ref")
    sample = torch.randint(0, 50, (400,)) ** 2 % 50  # a skewed sample
    a.build_hash_table(sample, 50)
    b = mt.MoE(8, 6, 8, 2, router="hash", hash_mode="table", dtype=torch.float64,
               backend="cpu_ref")
    b.load_state_dict(a.state_dict())
    ids = torch.arange(50)
    x = torch.randn(50, 8, dtype=torch.float64)
    a(x, token_ids=ids), b(x, token_ids=ids)
    assert np.array_equal(a.layer.routing()["experts"], b.layer.routing()["experts"])
    c = mt.MoE(8, 6, 8, 2, router="hash", hash_mode="mix", dtype=torch.float64,
               backend="cpu_ref")
    c.load_state_dict(a.state_dict(), strict=False)
    c(x, token_ids=ids)  # mix ignores a table: loads, routes by the mix
    assert not np.array_equal(a.layer.routing()["experts"], c.layer.routing()["experts"])


def test_copies_and_pickles_get_their_own_layer(tmp_path):
    import copy
    torch.manual_seed(10)
    a = make(router="sigmoid", bias_update_rate=0.1)
    for _ in range(3):
        a(torch.randn(10, 8, dtype=torch.float64))
    path = tmp_path / "moe.pt"
    torch.save(a, path)
    a.eval()
    x = torch.randn(10, 8, dtype=torch.float64)
    for b in (copy.deepcopy(a), torch.load(path)):
        assert b.layer is not a.layer and b.layer._handle.value != a.layer._handle.value
        b.eval()
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
        assert b.layer.step == 3 and np.array_equal(b.layer.selection_bias,
                                                    a.layer.selection_bias)
        del b  # its layer goes; a's stays
        a(x)
    for plain in (a.layer, moe.Comm.local(), moe.Group()):
        with pytest.raises(TypeError, match="owns a library handle"):
            copy.deepcopy(plain)


def test_metrics_under_the_names_of_the_seeds_runs():
    torch.manual_seed(7)
    model = torch.nn.Sequential(make(), make())
    model(torch.randn(20, 8, dtype=torch.float64))
    metrics = mt.router_metrics(model)
    for name in ("router/top1_p_mean", "router/max_frac_mean", "router/max_frac_max",
                 "router/frac_srv_e3", "router/frac_dem_e3", "router/entropy_mean",
                 "router/aux_mean", "router/active_min", "router/collapsed",
                 "router/drop_frac_mean"):
        assert name in metrics and np.isfinite(metrics[name]), name
    lines = mt.export(model).splitlines()
    assert len(lines) == 2 and all('"max_frac"' in line for line in lines)
    tel = [m.layer.telemetry() for m in model]
    assert metrics["router/max_frac_max"] == max(t["max_frac"] for t in tel)
    assert metrics["router/frac_dem_e3"] == pytest.approx(np.mean([t["frac_dem"][3] for t in tel]))


def test_bad_input_is_refused_and_the_module_stays_usable():
    m = make()
    with pytest.raises(TypeError, match="torch.float32, torch.float64 or torch.bfloat16"):
        mt.MoE(8, 6, 4, 2, dtype=torch.int32)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        m(np.zeros((3, 8)))
    with pytest.raises(TypeError, match="x is torch.float32"):
        m(torch.zeros(3, 8))
    with pytest.raises(ValueError, match=r"x must be \[..., 8\]"):
        m(torch.zeros(3, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"token_mask must be shaped as x without its last"):
        m(torch.zeros(3, 8, dtype=torch.float64), token_mask=[1, 0])
    with pytest.raises(ValueError, match=r"\(2, 3\), or flat \(6,\); got \(3, 2\)"):
        m(torch.zeros(2, 3, 8, dtype=torch.float64), token_mask=torch.ones(3, 2))
    with pytest.raises(ValueError, match="token_ids are for the hash router"):
        m(torch.zeros(3, 8, dtype=torch.float64), token_ids=[1, 2, 3])
    # The dtype and device are fixed: a cast is refused before anything changes.
    model = torch.nn.Sequential(torch.nn.Linear(8, 8, dtype=torch.float64), m)
    for cast in (lambda: model.float(), lambda: model.half(), lambda: model.to(torch.bfloat16)):
        with pytest.raises(TypeError, match="fixed at construction"):
            cast()
    assert m.w1.dtype == torch.float64 and m.selection_bias.dtype == torch.float64
    model.double()  # its own dtype: fine, and the bias stays float64
    assert m.selection_bias.dtype == torch.float64
    # No second derivative: refused, not silently dropped.
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward"):
        (g.square().sum() + (x * 0).sum()).backward()
    with pytest.raises(TypeError, match="0/1"):
        m(torch.zeros(3, 8, dtype=torch.float64), token_mask=[1, 0, 2])
    y = m(torch.ones(3, 8, dtype=torch.float64), token_mask=[1, 0, 1])
    assert torch.all(y[1] == 0) and torch.isfinite(y).all()
    assert m(torch.zeros(0, 8, dtype=torch.float64)).shape == (0, 8)


def test_torch_compile_is_not_in_this_torch_or_falls_back():
    """Debian's torch 1.13 has no torch.compile; where it exists, the autograd Function
    is opaque to it and runs as a graph break (docs/torch.md)."""
    if not hasattr(torch, "compile"):
        pytest.skip(f"torch {torch.__version__} has no torch.compile")
    m = make()
    compiled = torch.compile(m)
    x = torch.randn(4, 8, dtype=torch.float64)
    m.eval()
    torch.testing.assert_close(compiled(x), m(x))


@pytest.mark.parametrize("backend", ["cpu_ref", "auto"])
def test_bfloat16_follows_float32_within_bfloat16s_precision(backend):
    torch.manual_seed(9)
    ref = mt.MoE(16, 24, 4, 2, dtype=torch.float32, backend="cpu_ref", load_balance_alpha=0.1)
    low = mt.MoE(16, 24, 4, 2, dtype=torch.bfloat16, backend=backend, load_balance_alpha=0.1)
    with torch.no_grad():
        for n in ref._present:  # the same weights, at bfloat16's precision
            getattr(low, n).copy_(getattr(ref, n))
            getattr(ref, n).copy_(getattr(low, n).float())
    x = torch.randn(32, 16).bfloat16().float()
    outs = {}
    for name, m in (("ref", ref), ("low", low)):
        xi = x.to(getattr(m, "w1").dtype).detach().clone().requires_grad_()
        y = m(xi)
        assert y.dtype == xi.dtype and m.aux_loss.dtype == torch.float32
        (y.float().square().sum() + mt.router_losses(m)).backward()
        outs[name] = (y.float(), xi.grad.float(), m.router.grad.float(), m.w1.grad.float())
    for a, b in zip(outs["ref"], outs["low"]):
        assert (a - b).abs().max() <= 0.05 * a.abs().max()


def test_the_abi_pieces_refuse_bad_values():
    m = make()
    m(torch.zeros(3, 8, dtype=torch.float64))  # binds the parameters
    x = np.zeros((3, 8))
    with pytest.raises(moe.MoeError, match="recompute must be 0, or 1 with train 1"):
        m.layer.forward(x, train=False, recompute=True)
    m.layer.forward(x)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(moe.MoeError, match="must be finite"):
            m.layer.backward(np.ones((3, 8)), aux_loss_grad=bad)
    with pytest.raises(TypeError, match="aux_loss_grad must be a number"):
        m.layer.backward(np.ones((3, 8)), aux_loss_grad="1")
    dx, _ = m.layer.backward(np.ones((3, 8)))  # still usable
    assert np.isfinite(dx).all()
    # A recompute changes no state.
    step, bias = m.layer.step, m.layer.selection_bias
    m.layer.forward(x, recompute=True)
    assert m.layer.step == step and np.array_equal(m.layer.selection_bias, bias)


def test_openmp_runtimes_are_read_from_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0\n"
        "7f02-7f03 r-xp 0 08:01 2 /opt/venv/torch/lib/libgomp-a34b3233.so.1\n"
        "7f04-7f05 r-xp 0 08:01 3 /usr/lib/x86_64-linux-gnu/libm.so.6\n")
    assert len(mt.openmp_runtimes(str(maps))) == 2
    # Debian's torch and this library share one runtime.
    assert len(mt.openmp_runtimes()) == 1
