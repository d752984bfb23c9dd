"""Routing telemetry: every metric against an independent numpy recount
(numpy_metrics.py) from routing(), hand-computed cases, windows, EMA, splits, sampling,
exports, verdicts, groups, routing consistency and weight metrics."""
import csv
import io
import json
import math
import shutil
import subprocess

import numpy as np
import pytest

import moe
from numpy_metrics import recount


def close(a, b, what):
    if isinstance(b, list):
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-9,
                                   atol=1e-12, err_msg=what)
    elif isinstance(b, float) and math.isnan(b):
        assert math.isnan(a), f"{what}: {a} should be NaN"
    else:
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), f"{what}: library {a}, numpy {b}"


def random_layer(router="softmax", E=6, k=2, d=12, capacity_factor=1.0, temperature=1.0, **kw):
    layer = moe.Layer(d, 16, E, k, router=router, capacity_factor=capacity_factor,
                      router_temp_init=temperature, dtype="float64", **kw)
    rng = np.random.default_rng(4)
    w = dict(router=rng.standard_normal((d, E)), w1=rng.standard_normal((E, d, 16)),
             w2=rng.standard_normal((E, 16, d)))
    layer.set_weights(**w)
    return layer, w, rng


def probabilities(router, logits, temperature):
    u = logits / temperature
    if router == "sigmoid":
        s = 1 / (1 + np.exp(-u))
        return s / s.sum(1, keepdims=True)
    e = np.exp(u - u.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("router,capacity_factor,k", [
    ("softmax", 1.0, 2), ("softmax", 0.0, 3), ("sigmoid", 0.75, 2), ("expert_choice", 1.0, 2),
    ("softmax", 0.5, 1)])
def test_every_metric_matches_a_numpy_recount(router, capacity_factor, k):
    layer, w, rng = random_layer(router, k=k, capacity_factor=capacity_factor, temperature=1.3,
                                 load_balance_alpha=0.02, router_z_loss_coef=0.001)
    x = rng.standard_normal((96, 12))
    layer.forward(x, seq_len=16)
    logits = x @ w["router"]
    P = probabilities(router, logits, 1.3)
    want = recount(layer.routing(), P, logits, top_k=k, capacity_factor=capacity_factor,
                   alpha=0.02, z_coef=0.001, seq_len=16 if router != "expert_choice" else 0,
                   expert_choice=router == "expert_choice")
    got = layer.telemetry()
    names = {n for n, _, _ in moe.metric_names()}
    assert set(got) == names
    for name, value in want.items():
        close(got[name], value, name)
    assert len(want) >= len(names) - (3 if router == "expert_choice" else 0)


def one_hot_layer(E=4, k=1, capacity_factor=0.0, **kw):
    """Token t goes to the expert its one-hot row names (router weights = 10 I)."""
    layer = moe.Layer(E, 4, E, k, capacity_factor=capacity_factor, **kw)
    layer.set_weights(router=10 * np.eye(E), w1=np.ones((E, E, 4)), w2=np.ones((E, 4, E)))
    return layer


def rows(experts, E=4):
    return np.eye(E)[experts]


def test_hand_computed_uniform():
    layer = one_hot_layer()
    layer.forward(rows([0, 1, 2, 3, 0, 1, 2, 3]))
    m = layer.telemetry()
    assert m["expert_counts"] == [2, 2, 2, 2]
    for name, value in dict(load_cv=0, gini=0, min_max_ratio=1, jain_fairness=1, max_frac=0.25,
                            load_entropy=math.log(4), load_entropy_norm=1, kl_to_uniform=0,
                            dead_experts=0, diversity=1, maxvio=0, drop_rate=0).items():
        assert m[name] == pytest.approx(value, abs=1e-12), name
    assert layer.verdicts()["balance"]["label"] == "balanced"


def test_hand_computed_collapse_and_drops():
    layer = one_hot_layer(capacity_factor=1.0)  # C = ceil(8 * 1 / 4) = 2
    layer.forward(rows([2] * 8))
    m = layer.telemetry()
    assert m["expert_counts"] == [0, 0, 8, 0] and m["expert_served"] == [0, 0, 2, 0]
    assert m["max_frac"] == 1 and m["dead_experts"] == 3 and m["active_experts"] == 1
    assert m["gini"] == pytest.approx(0.75)  # 2 * 3 * 8 / (2 * 4 * 8)
    assert m["min_max_ratio"] == 0 and m["load_entropy"] == 0
    assert m["dropped_total"] == 6 and m["drop_rate"] == 0.75 and m["tokens_fully_dropped"] == 6
    assert m["capacity"] == 2 and m["capacity_utilization"] == pytest.approx(2 / 8)
    v = layer.verdicts()
    assert v["balance"]["label"] == "collapsed" and v["balance"]["metric"] == "max_frac"
    assert "load_balance_alpha" in v["balance"]["hint"]
    assert v["capacity"]["label"] == "pressure" and v["capacity"]["metric"] == "drop_rate"


def test_hand_computed_dead_experts():
    layer = one_hot_layer()
    layer.forward(rows([0, 1, 0, 1, 0, 1, 0, 1]))
    m = layer.telemetry()
    assert m["dead_experts"] == 2 and m["fraction_active"] == 0.5
    assert m["gini"] == pytest.approx(0.5)  # 8 pairs * 4 / (2 * 4 * 8)
    assert m["min_max_ratio"] == 0 and m["max_over_mean"] == 2
    assert m["coactivation"][0][0] == 4 and m["coactivation"][0][1] == 0
    assert layer.verdicts()["balance"]["label"] == "imbalanced"


def test_one_expert_and_no_tokens():
    layer = moe.Layer(4, 4, 1, 1)
    layer.set_weights(router=np.ones((4, 1)), w1=np.ones((1, 4, 4)), w2=np.ones((1, 4, 4)))
    layer.forward(np.ones((5, 4)))
    m = layer.telemetry()
    assert m["load_entropy_norm"] == 1 and m["load_cv"] == 0 and m["gini"] == 0
    assert m["router_entropy_norm_mean"] == 1
    layer.reset_telemetry()
    m = layer.telemetry()
    assert m["tokens"] == 0 and math.isnan(m["load_cv"]) and math.isnan(m["max_frac"])
    layer.forward(np.ones((0, 4)))
    m = layer.telemetry()
    assert m["tokens"] == 0 and math.isnan(m["load_entropy"]) and math.isnan(m["drop_rate"])
    assert layer.verdicts()["balance"]["label"] == "no_data"


def test_windows_ema_splits_and_sampling():
    layer = one_hot_layer(telemetry_ema_decay=0.5)
    layer.forward(rows([0, 0, 0, 1]))          # max_frac 0.75
    layer.forward(rows([0, 1, 2, 3]))          # max_frac 0.25
    layer.forward(rows([3, 3, 3, 3]), train=False)
    assert layer.telemetry("train", "last")["max_frac"] == 0.25
    window = layer.telemetry("train", "window")
    assert window["expert_counts"] == [4, 2, 1, 1] and window["steps"] == 2
    assert window["max_frac"] == 0.5
    assert layer.telemetry("train", "ema")["max_frac"] == pytest.approx(0.5 * 0.75 + 0.5 * 0.25)
    assert layer.telemetry("eval", "window")["expert_counts"] == [0, 0, 0, 4]
    diff = layer.telemetry_compare()["max_frac"]
    assert diff["train"] == 0.5 and diff["eval"] == 1.0 and diff["diff"] == 0.5
    layer.reset_telemetry()
    assert layer.telemetry("train", "window")["steps"] == 0

    every_other = one_hot_layer(telemetry_interval=2)
    for _ in range(5):
        every_other.forward(rows([0, 1, 2, 3]))
    assert every_other.telemetry("train", "window")["steps"] == 3
    off = one_hot_layer(telemetry_interval=0)
    off.forward(rows([0, 1, 2, 3]))
    assert off.telemetry("train", "window")["steps"] == 0


def test_exports_round_trip():
    layer, w, rng = random_layer(capacity_factor=0.75)
    layer.set_name("block.3.moe")
    layer.forward(rng.standard_normal((40, 12)), seq_len=8)
    m = layer.telemetry()
    record = json.loads(layer.export("jsonl"))
    assert record["layer"] == "block.3.moe" and record["split"] == "train" and record["step"] == 0
    for name, value in m.items():
        if isinstance(value, float) and math.isnan(value):
            assert record[name] is None
        elif name == "coactivation":
            assert np.array_equal(np.reshape(record[name], (6, 6)), value)
        else:
            assert record[name] == value, name
    table = list(csv.DictReader(io.StringIO(layer.export("csv"))))
    assert len(table) == 1
    row = table[0]
    assert float(row["load_cv"]) == m["load_cv"]
    assert [float(row[f"expert_counts_e{e}"]) for e in range(6)] == m["expert_counts"]
    assert float(row["coactivation_2_3"]) == m["coactivation"][2][3]


def test_prometheus_export_passes_promtool(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is needed; scripts/setup.sh installs it"
    layer, w, rng = random_layer()
    layer.forward(rng.standard_normal((30, 12)))
    text = layer.export("prometheus", scope="window")
    assert 'moe_load_cv{layer="layer' in text and 'expert="5"' in text
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                            capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_specialisation_verdicts():
    layer, w, rng = random_layer(E=8, k=1)
    layer.forward(rng.standard_normal((50, 12)))
    assert layer.verdicts()["specialization"]["label"] == "warming_up"
    layer.set_verdict_thresholds(specialization_warmup_steps=0)
    v = layer.verdicts()["specialization"]
    m = layer.telemetry()
    expected = ("diffuse" if m["router_entropy_norm_mean"] > 0.95 or m["top1_p_mean"] < 1.2 / 8
                else "peaked" if m["top1_p_mean"] > 0.8 or m["router_entropy_norm_mean"] < 0.2
                else "healthy")
    assert v["label"] == expected
    sharp = one_hot_layer()
    sharp.set_verdict_thresholds(specialization_warmup_steps=0)
    sharp.forward(rows([0, 1, 2, 3]))
    assert sharp.verdicts()["specialization"]["label"] == "peaked"
    hashed = moe.Layer(4, 4, 4, 1, router="hash")
    hashed.set_weights(w1=np.ones((4, 4, 4)), w2=np.ones((4, 4, 4)))
    hashed.forward(np.eye(4))
    assert hashed.verdicts()["specialization"]["label"] == "not_applicable"


def test_group_metrics():
    healthy, collapsed = one_hot_layer(), one_hot_layer()
    healthy.forward(rows([0, 1, 2, 3]))
    collapsed.forward(rows([1, 1, 1, 1]))
    g = moe.Group([healthy, collapsed]).metrics()
    assert g["layers"] == 2 and g["max_frac_mean"] == pytest.approx(0.625)
    assert g["max_frac_max"] == 1.0 and g["active_min"] == 1 and g["collapsed"] == 1
    assert moe.Group([healthy]).metrics()["collapsed"] == 0


def test_routing_consistency_between_checkpoints():
    layer, w, rng = random_layer(k=2)
    probe = rng.standard_normal((64, 12))
    layer.forward(probe, train=False)
    first = layer.keep_context()
    layer.forward(probe, train=False)
    same = moe.compare_routing(first, layer.keep_context())
    assert same == {"routing_consistency": 1.0, "routing_topk_consistency": 1.0}
    w2 = dict(w, router=w["router"] + 0.5 * rng.standard_normal(w["router"].shape))
    layer.set_weights(**w2)
    layer.forward(probe, train=False)
    later = layer.keep_context()
    moved = moe.compare_routing(first, later)
    # Recount from routing() of fresh runs at both checkpoints.
    layer.set_weights(**w)
    layer.forward(probe, train=False)
    ra = layer.routing()["experts"]
    layer.set_weights(**w2)
    layer.forward(probe, train=False)
    rb = layer.routing()["experts"]
    assert moved["routing_consistency"] == pytest.approx(np.mean(ra[:, 0] == rb[:, 0]))
    assert moved["routing_topk_consistency"] == pytest.approx(
        np.mean([len(set(x) & set(y)) / 2 for x, y in zip(ra, rb)]))
    assert moved["routing_consistency"] < 1.0


def test_weight_metrics():
    layer = moe.Layer(4, 3, 4, 1)
    w1 = np.random.default_rng(0).standard_normal((4, 4, 3))
    layer.set_weights(router=np.eye(4), w1=w1, w2=np.ones((4, 3, 4)))
    m = layer.weight_metrics()
    assert m["router_gram_orthogonality"] == pytest.approx(1.0)
    flat = w1.reshape(4, -1)
    cos = [flat[i] @ flat[j] / np.linalg.norm(flat[i]) / np.linalg.norm(flat[j])
           for i in range(4) for j in range(i + 1, 4)]
    assert m["expert_similarity_mean"] == pytest.approx(np.mean(cos))
    assert m["expert_similarity_std"] == pytest.approx(np.std(cos))
    same = moe.Layer(4, 3, 4, 1)
    same.set_weights(router=np.ones((4, 4)), w1=np.ones((4, 4, 3)), w2=np.ones((4, 3, 4)))
    m = same.weight_metrics()
    assert m["router_gram_orthogonality"] == pytest.approx(0.0)
    assert m["expert_similarity_mean"] == pytest.approx(1.0)


def test_routing_consistency_uses_the_first_choice_when_k_equals_e():
    # With k = E every token takes every expert with the same gates whatever the
    # selection bias; only the order of choices, and so the top-1, follows the bias.
    layer, w, rng = random_layer(E=4, k=4)
    probe = rng.standard_normal((32, 12))
    layer.selection_bias = [0, 0, 0, 100.0]
    layer.forward(probe, train=False)
    to_three = layer.keep_context()
    layer.selection_bias = [100.0, 0, 0, 0]
    layer.forward(probe, train=False)
    to_zero = layer.keep_context()
    got = moe.compare_routing(to_three, to_zero)
    assert got == {"routing_consistency": 0.0, "routing_topk_consistency": 1.0}
