"""The aux loss's scopes against references written here from their published
definitions, in PyTorch with autograd for every gradient:

Switch / GShard (batch): aux = E * sum_e f_e * Pbar_e, f_e the fraction of the batch's
    copies on expert e, Pbar_e the batch's mean probability.
DeepSeek-V3's complementary sequence-wise loss (technical report, eq. 17-20): per
    sequence of T tokens, f_i = E / (K T) * sum_t 1(s_i,t in Topk(s_t, K)) and
    P_i = 1/T sum_t s'_i,t with s' = s / sum_j s_j; L = alpha * sum_i f_i P_i, averaged
    over the batch's sequences. The top-K is of the affinities without bias (Megatron-
    Core's compute_routing_scores_for_aux_loss counts the same).
Qwen3 / Megatron-Core's global-batch loss ("Demons in the detail", Qiu et al. 2025): f_i
    from the counts of every micro-batch since the reset (and every data-parallel
    replica), P_i from the micro-batch itself.

The layer adds alpha * aux's gradient to the router's in backward, so the reference's
loss is sum(y * dy) + alpha * aux."""
import numpy as np
import pytest

import moe
from autograd_check import assert_matches, relative_error

torch = pytest.importorskip("torch")
F = torch.nn.functional


def weights(rng, d, dff, E, dtype):
    cast = lambda a: np.asarray(a, dtype)
    return dict(router=cast(rng.standard_normal((d, E)) / np.sqrt(d)),
                w1=cast(rng.standard_normal((E, d, dff)) / np.sqrt(d)),
                w2=cast(rng.standard_normal((E, dff, d)) / np.sqrt(dff)))


def affinities(logits, router):
    """s (the gate base) and s' (the normalised affinities P) of the published routers."""
    if router == "sigmoid":
        s = logits.sigmoid()
        return s, s / s.sum(dim=-1, keepdim=True)
    p = logits.softmax(dim=-1)
    return p, p


def moe_output(x, w1, w2, idx, gate):
    y = torch.zeros_like(x)
    for j in range(idx.shape[1]):
        for e in range(w1.shape[0]):
            rows = (idx[:, j] == e).nonzero().squeeze(1)
            if rows.numel():
                y = y.index_add(0, rows, gate[rows, j:j + 1] * (F.gelu(x[rows] @ w1[e]) @ w2[e]))
    return y


def switch_aux(counted, prob, E):
    """E * sum_e f_e * Pbar_e; counted: [T, k] experts, prob: [T, E] (valid tokens)."""
    f = torch.bincount(counted.reshape(-1), minlength=E).double()
    return E * (f / f.sum() * prob.mean(dim=0)).sum()


def reference(x, wr, w1, w2, *, k, router, bias, scope, seq_len, unbiased, mask):
    T, E = x.shape[0], wr.shape[1]
    s, p = affinities(x @ wr, router)
    idx = torch.topk(s.detach() + bias, k, dim=-1)[1]
    gate = s.gather(1, idx)
    gate = gate / gate.sum(dim=-1, keepdim=True)
    keep = torch.tensor(mask)
    gate = gate * keep[:, None]
    counted = torch.topk(p.detach(), k, dim=-1)[1] if unbiased else idx
    if scope == "batch":
        aux = switch_aux(counted[keep], p[keep], E)
    else:
        losses = [switch_aux(counted[q:q + seq_len][keep[q:q + seq_len]],
                             p[q:q + seq_len][keep[q:q + seq_len]], E)
                  for q in range(0, T, seq_len) if keep[q:q + seq_len].any()]
        aux = torch.stack(losses).mean()
    return moe_output(x, w1, w2, idx, gate), aux, idx


CASES = {
    # router, scope, unbiased top-k, with a selection bias, with a mask
    "switch_batch": ("softmax", "batch", False, False, False),
    "sequence_softmax": ("softmax", "sequence", False, False, False),
    "deepseek_v3_sequence": ("sigmoid", "sequence", True, True, False),
    "sequence_masked": ("sigmoid", "sequence", False, True, True),
    "batch_unbiased": ("sigmoid", "batch", True, True, True),
}


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 3e-4)])
@pytest.mark.parametrize("case", CASES)
def test_matches_the_published_loss(case, dtype, tol):
    router, scope, unbiased, biased, masked = CASES[case]
    T, seq_len, d, dff, E, k, alpha = 48, 12, 10, 6, 8, 2, 0.3
    rng = np.random.default_rng(11)
    x = np.asarray(rng.standard_normal((T, d)), dtype)
    dy = np.asarray(rng.standard_normal((T, d)), dtype)
    w = weights(rng, d, dff, E, dtype)
    bias = 0.4 * rng.standard_normal(E) if biased else np.zeros(E)
    mask = np.ones(T, bool)
    if masked:
        mask[5:9] = False
        mask[24:36] = False  # one whole sequence of padding: out of the average
    layer = moe.Layer(d, dff, E, k, router=router, renormalize=True, load_balance_alpha=alpha,
                      aux_loss_scope=scope, aux_loss_unbiased_topk=unbiased,
                      dtype=np.dtype(dtype).name, backend="cpu_ref")
    layer.set_weights(**w)
    layer.selection_bias = bias
    y = layer.forward(x, seq_len=seq_len, token_mask=mask if masked else None)
    dx, grads = layer.backward(dy)

    t = {n: torch.tensor(np.asarray(a, np.float64), requires_grad=True)
         for n, a in dict(w, x=x).items()}
    y_ref, aux_ref, idx = reference(t["x"], t["router"], t["w1"], t["w2"], k=k, router=router,
                                    bias=torch.tensor(bias), scope=scope, seq_len=seq_len,
                                    unbiased=unbiased, mask=mask)
    ((y_ref * torch.tensor(np.asarray(dy, np.float64))).sum() + alpha * aux_ref).backward()

    assert np.array_equal(layer.routing()["experts"][mask], idx.numpy()[mask])
    assert abs(layer.losses()["aux_loss"] - aux_ref.item()) < tol * aux_ref.item()
    assert_matches(tol, y, dx, grads, y_ref, t["x"], {n: t[n] for n in w})


def test_the_unbiased_count_differs_from_the_selection_under_a_bias():
    """A bias that moves the selection must not move the aux loss's counts."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 8))
    w = weights(rng, 8, 6, 4, np.float64)
    out = {}
    for unbiased in (False, True):
        layer = moe.Layer(8, 6, 4, 1, router="sigmoid", aux_loss_unbiased_topk=unbiased,
                          dtype="float64", backend="cpu_ref")
        layer.set_weights(**w)
        layer.selection_bias = [5.0, 0, 0, 0]  # every token chooses expert 0
        layer.forward(x)
        out[unbiased] = layer.losses()["aux_loss"]
        assert (layer.routing()["experts"] == 0).all()
    s = 1 / (1 + np.exp(-(x @ w["router"])))
    p = s / s.sum(1, keepdims=True)
    f = np.bincount(p.argmax(1), minlength=4) / 40
    assert out[False] == pytest.approx(4 * p.mean(0)[0])  # f = (1, 0, 0, 0)
    assert out[True] == pytest.approx(4 * (f * p.mean(0)).sum())


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 3e-4)])
def test_the_global_loss_accumulates_over_micro_batches(dtype, tol):
    T, d, dff, E, k, alpha = 30, 10, 6, 8, 2, 0.5
    rng = np.random.default_rng(7)
    w = weights(rng, d, dff, E, dtype)
    layer = moe.Layer(d, dff, E, k, load_balance_alpha=alpha, aux_loss_scope="global",
                      dtype=np.dtype(dtype).name, backend="cpu_ref")
    layer.set_weights(**w)
    counts = np.zeros(E)
    for step in range(5):
        if step == 3:  # an optimizer step: a new global batch
            layer.reset_aux_counts()
            counts[:] = 0
            assert layer.aux_counts()[1] == 0
        x = np.asarray(rng.standard_normal((T, d)) * (1 + step), dtype)
        dy = np.asarray(rng.standard_normal((T, d)), dtype)
        y = layer.forward(x)
        dx, grads = layer.backward(dy)

        t = {n: torch.tensor(np.asarray(a, np.float64), requires_grad=True)
             for n, a in dict(w, x=x).items()}
        p = (t["x"] @ t["router"]).softmax(dim=-1)
        gate, idx = torch.topk(p, k, dim=-1)
        y_ref = moe_output(t["x"], t["w1"], t["w2"], idx, gate / gate.sum(-1, keepdim=True))
        counts += np.bincount(idx.numpy().ravel(), minlength=E)
        f = torch.tensor(counts / counts.sum())
        aux_ref = E * (f * p.mean(dim=0)).sum()
        ((y_ref * torch.tensor(np.asarray(dy, np.float64))).sum() + alpha * aux_ref).backward()

        assert np.array_equal(layer.aux_counts()[0], counts)
        assert layer.aux_counts()[1] == (step + 1 if step < 3 else step - 2)
        assert relative_error(layer.losses()["aux_loss"], aux_ref.detach()) < tol
        assert_matches(tol, y, dx, grads, y_ref, t["x"], {n: t[n] for n in w})
    # An evaluation call reads its own batch and adds nothing.
    before = layer.aux_counts()
    layer.forward(np.asarray(rng.standard_normal((T, d)), dtype), train=False)
    assert np.array_equal(layer.aux_counts()[0], before[0]) and layer.aux_counts()[1] == before[1]


def test_the_global_loss_sums_over_the_aux_communicator():
    """Through the local communicator (one replica) the counts are the layer's own; a
    detached layer accumulates the same. A held communicator cannot be destroyed."""
    rng = np.random.default_rng(3)
    w = weights(rng, 8, 6, 4, np.float32)
    xs = [rng.standard_normal((20, 8)).astype(np.float32) for _ in range(3)]
    out = []
    for attach in (False, True):
        layer = moe.Layer(8, 6, 4, 2, aux_loss_scope="global", load_balance_alpha=0.1,
                          backend="cpu_ref")
        layer.set_weights(**w)
        if attach:
            comm = moe.Comm.local()
            layer.set_aux_comm(comm)
            assert moe._lib.moe_comm_destroy(comm._handle) != 0
            assert "still use this communicator" in moe._lib.moe_last_error().decode()
        losses = []
        for x in xs:
            layer.forward(x)
            losses.append(layer.losses()["aux_loss"])
        out.append((losses, layer.aux_counts()))
        if attach:
            layer.set_aux_comm(None)
    assert out[0][0] == out[1][0]
    assert np.array_equal(out[0][1][0], out[1][1][0])


@pytest.mark.parametrize("options,message", [
    (dict(aux_loss_scope="sequence", router="hash"), "config.aux_loss_scope sequence and global"),
    (dict(aux_loss_scope="global", router="expert_choice"), "need a learned token-choice"),
    (dict(aux_loss_unbiased_topk=True, router="hash"), "config.aux_loss_unbiased_topk must be"),
])
def test_bad_aux_configs_are_refused(options, message):
    with pytest.raises(moe.MoeError, match=message):
        moe.Layer(8, 8, 4, 2, **options)
    with pytest.raises(ValueError, match="unknown aux_loss_scope"):
        moe.Layer(8, 8, 4, 2, aux_loss_scope="sequences")


def test_bad_aux_calls_are_refused_and_the_layer_stays_usable():
    rng = np.random.default_rng(0)
    w = weights(rng, 8, 6, 4, np.float32)
    seq = moe.Layer(8, 6, 4, 2, aux_loss_scope="sequence", backend="cpu_ref")
    seq.set_weights(**w)
    x = rng.standard_normal((12, 8))
    for bad in (None, 5, 24):
        with pytest.raises(moe.MoeError, match="aux_loss_scope sequence averages over sequences"):
            seq.forward(x, seq_len=bad)
    seq.forward(x, seq_len=4)
    # Evaluation may leave seq_len unset: the call is then one sequence, the batch loss.
    seq.forward(x, train=False)
    batch = moe.Layer(8, 6, 4, 2, backend="cpu_ref")
    batch.set_weights(**w)
    batch.forward(x, train=False)
    assert seq.losses()["aux_loss"] == batch.losses()["aux_loss"]
    for call in (seq.reset_aux_counts, seq.aux_counts, lambda: seq.set_aux_comm(None)):
        with pytest.raises(moe.MoeError, match="aux_loss_scope is not global"):
            call()
    glob = moe.Layer(8, 6, 4, 2, aux_loss_scope="global", backend="cpu_ref")
    for bad in ("local", 0, glob):
        with pytest.raises(TypeError, match="expected a moe.Comm or None"):
            glob.set_aux_comm(bad)
    with pytest.raises(moe.MoeError, match="count is 3, the layer has 4 experts"):
        moe._check(moe._lib.moe_layer_get_aux_counts(
            glob._handle, np.zeros(3).ctypes.data_as(moe.C.POINTER(moe.C.c_double)), 3, None))
    assert glob.aux_counts()[1] == 0
