"""moe-epmodel (tools/moe-epmodel, docs/ep_model.md): EPLB's replication and packing on hand-made
cases, the dedup estimate against an exact enumeration, the network time of a hand-computed
2-node case, monotonic sanity, traces read through moe-stats, and refusals (exit 2, one line,
no traceback)."""
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOOL_DIR = os.path.join(HERE, "..", "..", "tools", "moe-epmodel")
TOOL = os.path.join(TOOL_DIR, "moe_epmodel.py")
sys.path.insert(0, TOOL_DIR)
import moe_epmodel as ep  # noqa: E402

MOE_STATS = os.environ.get("MOE_STATS", os.path.join(HERE, "..", "..", "build", "tools",
                                                      "moe-stats"))
LOGS = os.path.join(HERE, "..", "moe_stats")


def run(*args, stdin=None):
    return subprocess.run([sys.executable, TOOL, *args], input=stdin, capture_output=True,
                          text=True, timeout=120)


def args_of(*argv):
    a = ep.build_parser().parse_args(list(argv))
    a.control_fwd, a.control_bwd = a.control_rounds
    return a


# ------------------------------------------------------------------------------ placement

def test_replication_rule():
    # Largest load per replica first; an expert never on more ranks than there are.
    assert ep.replicate([10, 3, 1], 6, 3).tolist() == [3, 2, 1]
    assert ep.replicate([10, 3, 1], 6, 2).tolist() == [2, 2, 2]
    assert ep.replicate([2, 2], 3, 2).tolist() == [2, 1]  # a tie: the lower id
    assert ep.replicate([5, 1], 2, 4).tolist() == [1, 1]  # no redundant slot
    with pytest.raises(ep.Refusal, match="cannot be filled"):
        ep.replicate([1, 1], 5, 2)


def test_eplb_packing_hand_case():
    # load [8, 4, 2, 2], 2 ranks, 6 slots: replicas [2, 2, 1, 1] (expert 0 capped at 2
    # ranks); items 4,4,2,2,2,2 heaviest first to the least-loaded rank with room that does
    # not hold the expert: rank 0 {0, 1, 2}, rank 1 {0, 1, 3}, 8 copies each.
    slots = ep.eplb_slots([8, 4, 2, 2], 2, 6)
    assert slots == [0, 1, 2, 0, 1, 3]
    pl = ep.Placement("eplb", ep.holders_of_slots(slots, 4, 2), 2, slots)
    assert pl.rank_load(np.array([8.0, 4, 2, 2])).tolist() == [8.0, 8.0]
    default = ep.Placement("default", ep.contiguous_holders(4, 2), 2)
    assert default.rank_load(np.array([8.0, 4, 2, 2])).tolist() == [12.0, 4.0]


def test_packing_moves_an_expert_when_only_its_holder_has_room():
    # (0,4)->0, (1,3)->1, (2,2)->1 (lighter), (0,1): only rank 0 has room and holds expert 0,
    # so expert 1 moves from full rank 1 to rank 0 and expert 0 takes its place.
    assert ep.pack([(0, 4.0), (1, 3.0), (2, 2.0), (0, 1.0)], 2, 2) == [[0, 1], [0, 2]]


def test_hierarchical_eplb_hand_case():
    # Experts onto 2 nodes first: node 0 {0, 3}, node 1 {1, 2}; then per node 2 ranks of 2
    # slots: every expert twice, one replica per rank.
    assert ep.eplb_slots([8, 4, 2, 2], 4, 8, nodes=2) == [0, 3, 0, 3, 1, 2, 1, 2]


def test_contiguous_blocks_and_replica_split():
    assert [h[0] for h in ep.contiguous_holders(8, 4)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [h[0] for h in ep.contiguous_holders(2, 4)] == [0, 2]  # ranks 1 and 3 hold none
    # Expert 0 on ranks 0 and 2 (blocks of the batch in rank order), expert 1 on rank 1, over
    # 4 source ranks: sources 0 and 1 send expert 0's copies to rank 0, sources 2, 3 to rank 2.
    pl = ep.Placement("x", [[0, 2], [1], [3]], 4)
    Q = pl.destination(np.array([0.5, 0.25, 0.25]))
    assert np.allclose(Q[0], [0.5, 0.25, 0, 0.25]) and np.allclose(Q[3], [0, 0.25, 0.5, 0.25])
    # 3 sources, 2 replicas: source 1 straddles the block boundary, half to each.
    pl3 = ep.Placement("x", [[0, 2], [1]], 3)
    assert np.allclose(pl3.destination(np.array([1.0, 0.0]))[1], [0.5, 0, 0.5])


# ------------------------------------------------------------------------------ dedup

def enumerate_cps(model, E):
    """Every k-subset with its probability under the conditional Poisson token model."""
    k = model.k
    forced = set(np.nonzero(model.forced)[0])
    subsets, probs = [], []
    for S in itertools.combinations(range(E), k):
        if not forced <= set(S):
            continue
        w = np.prod([model.w[e] for e in S if e not in forced])
        subsets.append(S)
        probs.append(w)
    probs = np.array(probs) / np.sum(probs)
    return subsets, probs


def test_dedup_estimate_against_exact_enumeration():
    counts = np.array([6.0, 5, 4, 3, 2, 1])
    p, k, N = counts / counts.sum(), 3, 3
    model = ep.TokenModel(p, k)
    subsets, probs = enumerate_cps(model, 6)
    marginal = np.zeros(6)
    for S, pr in zip(subsets, probs):
        marginal[list(S)] += pr
    assert np.allclose(marginal, k * p, atol=1e-9)  # the counts' shares, as promised
    pl = ep.Placement("default", ep.contiguous_holders(6, N), N)
    owner = np.array([h[0] for h in pl.holders])
    exact = sum(pr * len(set(owner[list(S)])) for S, pr in zip(subsets, probs))
    closed = (1 - ep.miss_matrix(model, pl, np.arange(N), N)).sum(1)
    assert np.allclose(closed, exact, rtol=1e-9)
    mc, _ = ep.monte_carlo_rows(model, pl, 1.0, 200000, 7)
    assert mc.sum(1).mean() == pytest.approx(exact, rel=0.01)
    # 1-(1-q)^k draws with replacement: it counts an expert twice, so it is low (here 11%).
    Q = pl.destination(p)
    independent = (1 - (1 - Q[0]) ** k).sum()
    assert independent < exact and independent == pytest.approx(exact, rel=0.12)
    # Uniform counts: the hypergeometric case, E[distinct] = N (1 - C(E-m, k) / C(E, k)).
    uniform = ep.TokenModel(np.full(6, 1 / 6), k)
    hyper = N * (1 - 4 * 3 * 2 / (6 * 5 * 4))
    assert (1 - ep.miss_matrix(uniform, pl, np.arange(N), N)).sum(1) == pytest.approx(
        [hyper] * N, rel=1e-9)


def test_dedup_with_replicas_against_exact_enumeration():
    # A replicated expert's copies are split at its block boundaries (i/m of the batch);
    # the tokens of a source rank that straddles a boundary go to either replica, and two
    # experts replicated on the same ranks go to the same one together: exact per segment.
    counts = np.array([5.0, 3, 2, 2])
    p, k = counts / counts.sum(), 2
    model = ep.TokenModel(p, k)
    subsets, probs = enumerate_cps(model, 4)
    for N, holders in ((2, [[0, 1], [0], [1], [1]]), (3, [[0, 2], [0], [1], [2]]),
                       (3, [[0, 2], [0, 2], [1], [1]]), (3, [[0, 1], [1, 2], [2], [0]])):
        pl = ep.Placement("x", holders, N)
        closed = (1 - ep.miss_matrix(model, pl, np.arange(N), N)).sum(1)
        exact = []
        for s in range(N):  # integrate the batch position over the source's share
            cuts = sorted({s / N, (s + 1) / N} | {i / len(h) for h in holders
                                                  for i in range(len(h))
                                                  if s / N < i / len(h) < (s + 1) / N})
            total = 0.0
            for lo, hi in zip(cuts, cuts[1:]):
                u = (lo + hi) / 2
                ranks = lambda S: {holders[e][int(u * len(holders[e]))] for e in S}  # noqa
                total += (hi - lo) * N * sum(pr * len(ranks(S)) for S, pr in zip(subsets, probs))
            exact.append(total)
        assert np.allclose(closed, exact, rtol=1e-9), (N, holders, closed, exact)
        mc, _ = ep.monte_carlo_rows(model, pl, 1.0, 300000, 3)
        assert np.allclose(mc.sum(1), exact, rtol=0.02), (N, mc.sum(1), exact)
    # Per node (the hierarchical all-to-all): 4 ranks in 2 nodes, expert 0 on ranks 1 and 2.
    holders = [[1, 2], [0], [3], [2]]
    pl = ep.Placement("x", holders, 4)
    nodes = np.array([0, 0, 1, 1])
    closed = (1 - ep.miss_matrix(model, pl, nodes, 2)).sum(1)
    exact = [sum(pr * len({nodes[holders[e][int((s + 0.5) / 4 * len(holders[e]))]] for e in S})
                 for S, pr in zip(subsets, probs)) for s in range(4)]
    assert np.allclose(closed, exact, rtol=1e-9)


def test_dedup_never_sends_more_than_per_copy():
    recs = ep.synthetic_records("zipf:1.2", 64, 6, 1, 1, 4096, 5)
    a = args_of("--records-file", "x", "--d-model", "16", "--tokens-per-rank", "512",
                "--top-k", "6", "--ranks", "8,32", "--gpus-per-node", "8", "--a2a", "both")
    out = ep.model(recs, a)
    by = {(r["ranks"], r["exchange"], r["placement"], r["all_to_all"]): r for r in out["results"]}
    for (N, ex, pl, a2a), r in by.items():
        if ex == "dedup":
            per_copy = by[(N, "per-copy", pl, a2a)]
            assert r["rows_sent_per_rank"] <= per_copy["rows_sent_per_rank"] + 1e-9
            assert r["imbalance"] == pytest.approx(per_copy["imbalance"])
    # EPLB lowers the imbalance of a skewed trace.
    assert by[(32, "per-copy", "eplb", "flat")]["imbalance"] < \
        by[(32, "per-copy", "default", "flat")]["imbalance"]


# ------------------------------------------------------------------------------ network

def test_network_time_two_nodes_by_hand():
    # 4 ranks, 2 per node, 1 MB from every rank to every other rank. Intra 100 GB/s, 1 us;
    # inter 10 GB/s, 2 us.
    a = args_of("--records-file", "x", "--d-model", "1", "--gpus-per-node", "2",
                "--intra-bw", "100", "--intra-latency", "1", "--inter-bw", "10",
                "--inter-latency", "2")
    net, topo = ep.Network(a), ep.Topology(4, 2)
    B = np.full((4, 4), 1e6)
    np.fill_diagonal(B, 0)
    # flat: 1 MB intra (10 us + 1 us) beside 2 MB inter in 2 messages (200 us + 2 x 2 us).
    assert ep.flat_round(B, net, topo) == pytest.approx([204e-6] * 4)
    net.links = "serial"
    assert ep.flat_round(B, net, topo) == pytest.approx([215e-6] * 4)
    net.links, net.latency = "parallel", "per-round"
    assert ep.flat_round(B, net, topo) == pytest.approx([202e-6] * 4)
    net.latency = "per-message"
    # hierarchical: 2 MB to the other node in one message through the same-index rank
    # (200 + 2 us); it forwards 1 MB and sends its own 1 MB to its node peer: 2 MB in one
    # message (20 + 1 us). Pipelined: the slower stage; sequential: both.
    BN = ep.by_node(B, topo)
    assert ep.hierarchical_round(B, BN, net, topo) == pytest.approx([202e-6] * 4)
    net.stages = "sequential"
    assert ep.hierarchical_round(B, BN, net, topo) == pytest.approx([223e-6] * 4)
    # The slowest rank decides: rank 3 receives 3 MB more from rank 0 over the inter link.
    net.stages = "pipelined"
    B2 = B.copy()
    B2[0, 3] += 3e6
    t = ep.flat_round(B2, net, topo)
    assert t[3] == pytest.approx(504e-6) and t[1] == pytest.approx(204e-6)


def test_replica_gradient_sum_by_hand():
    # Expert 0 on ranks 0 and 1 (1000 parameters, f32): each sends the other 4000 bytes in
    # backward, at 1 GB/s with 2 us a message: 6 us; forward is unchanged.
    rec = ep.Record(1, "l", "", np.array([4.0, 4.0]), np.array([4.0, 4.0]), 4.0)
    a = args_of("--records-file", "x", "--d-model", "1", "--dtype", "f32", "--top-k", "2",
                "--gpus-per-node", "2", "--intra-bw", "1", "--intra-latency", "2",
                "--control-rounds", "0,0", "--expert-params", "1000")
    pl = ep.Placement("x", [[0, 1], [1]], 2)
    net, topo = ep.Network(a), ep.Topology(2, 2)
    with_grads = ep.predict_record(rec, 2, pl, "dedup", "flat", net, topo, a, 2)
    assert with_grads["replica_grad_ms"] == pytest.approx(6e-3)
    a.expert_params = 0
    without = ep.predict_record(rec, 2, pl, "dedup", "flat", net, topo, a, 2)
    assert without["replica_grad_ms"] == 0.0
    assert with_grads["backward_ms"] - without["backward_ms"] == pytest.approx(6e-3)
    assert with_grads["forward_ms"] == pytest.approx(without["forward_ms"])


def test_per_copy_rows_by_hand():
    # 4 ranks, 8 experts in blocks of 2, uniform, top-2, 100 tokens per rank: 200 copies,
    # 150 to the 3 other ranks (50 each); dedup: P(a rank is missed) = C(6,2)/C(8,2) = 15/28.
    recs = ep.synthetic_records("uniform", 8, 2, 1, 1, 400, 1)
    a = args_of("--records-file", "x", "--d-model", "4", "--dtype", "f32", "--ranks", "4",
                "--gpus-per-node", "4", "--placement", "default", "--control-rounds", "0,0",
                "--intra-bw", "1", "--intra-latency", "0")
    out = {r["exchange"]: r for r in ep.model(recs, a)["results"]}
    assert out["per-copy"]["rows_sent_per_rank"] == pytest.approx(150)
    assert out["per-copy"]["bytes_sent_per_rank"] == pytest.approx(150 * 16)
    assert out["per-copy"]["dispatch_ms"] == pytest.approx(150 * 16 / 1e9 * 1e3)
    assert out["per-copy"]["forward_ms"] == pytest.approx(2 * out["per-copy"]["dispatch_ms"])
    assert out["per-copy"]["imbalance"] == pytest.approx(1.0)
    assert out["dedup"]["rows_sent_per_rank"] == pytest.approx(3 * 100 * (1 - 15 / 28))


def test_more_bandwidth_is_never_slower():
    recs = ep.synthetic_records("zipf:1.0", 32, 4, 1, 2, 2048, 2)
    base = ["--records-file", "x", "--d-model", "256", "--top-k", "4", "--tokens-per-rank",
            "256", "--ranks", "8,16", "--gpus-per-node", "4", "--a2a", "both"]
    last = None
    for scale in (1, 2, 4):
        a = args_of(*base, "--intra-bw", str(100 * scale), "--inter-bw", str(10 * scale))
        times = [r["total_ms"] for r in ep.model(recs, a)["results"]]
        if last is not None:
            assert all(t <= l + 1e-12 for t, l in zip(times, last))
            assert any(t < l for t, l in zip(times, last))
        last = times
    slow = args_of(*base, "--intra-latency", "30", "--inter-latency", "50")
    fast = args_of(*base)
    for s, f in zip(ep.model(recs, slow)["results"], ep.model(recs, fast)["results"]):
        assert s["total_ms"] >= f["total_ms"]


# ------------------------------------------------------------------------------ the CLI

def test_synthetic_trace_round_trip_and_json(tmp_path):
    trace = tmp_path / "t.jsonl"
    made = run("--synthetic", "zipf:1.2", "--experts", "16", "--top-k", "2", "--synthetic-tokens",
               "512", "--synthetic-steps", "2", "--write-trace", str(trace), "--d-model", "64",
               "--ranks", "2,4", "--json")
    assert made.returncode == 0, made.stderr
    again = run("--records-file", str(trace), "--d-model", "64", "--ranks", "2,4", "--json")
    assert again.returncode == 0, again.stderr
    first, second = json.loads(made.stdout), json.loads(again.stdout)
    assert second["top_k"] == 2  # inferred from the records' tokens
    assert first["results"] == second["results"]
    assert len(first["results"]) == 2 * 4 and first["layer_steps"] == 2


@pytest.mark.skipif(not os.path.exists(MOE_STATS), reason="moe-stats is not built")
def test_logs_through_moe_stats_equal_its_records(tmp_path):
    log = os.path.join(LOGS, "torch_print.log")
    direct = run("--moe-stats", MOE_STATS, log, "--top-k", "2", "--d-model", "32", "--ranks",
                 "2,4", "--json")
    assert direct.returncode == 0, direct.stderr
    records = subprocess.run([MOE_STATS, "--records", log], capture_output=True, text=True)
    path = tmp_path / "records.jsonl"
    path.write_text(records.stdout)
    via_file = run("--records-file", str(path), "--top-k", "2", "--d-model", "32", "--ranks",
                   "2,4", "--json")
    assert json.loads(direct.stdout) == json.loads(via_file.stdout)
    assert json.loads(direct.stdout)["layer_steps"] == 4
    # A malformed log: moe-stats' message, then the refusal.
    bad = tmp_path / "bad.csv"
    bad.write_text("1,0,5,x\n")
    result = run("--moe-stats", MOE_STATS, str(bad), "--top-k", "1", "--d-model", "8")
    assert result.returncode == 1 and "bad.csv:1" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv", [
    ["no/such/trace.jsonl", "--top-k", "2", "--d-model", "8"],
    ["--records-file", "no/such.jsonl", "--d-model", "8", "--top-k", "2"],
])
def test_a_missing_trace_is_a_runtime_failure_exit_one(argv):
    result = run(*argv)
    assert result.returncode == 1 and "no such file" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("argv,message", [
    (["--synthetic", "uniform", "--top-k", "2", "--d-model", "8", "--ranks", "-2"], "ranks"),
    (["--synthetic", "uniform", "--top-k", "2", "--d-model", "8", "--ranks", "0"], "ranks"),
    (["--synthetic", "uniform", "--experts", "8", "--top-k", "2", "--d-model", "8", "--ranks",
      "4", "--redundant-slots", "3"], "not a multiple of 4 ranks"),
    (["--synthetic", "uniform", "--top-k", "2", "--d-model", "8", "--ranks", "12"],
     "do not fill nodes"),
    (["--synthetic", "uniform", "--top-k", "2"], "--d-model"),
    (["--synthetic", "zipf:x", "--top-k", "2", "--d-model", "8"], "zipf"),
    (["--synthetic", "uniform", "--top-k", "2", "--d-model", "8", "--intra-bw", "0"], "> 0"),
    (["--synthetic", "uniform", "--top-k", "2", "--d-model", "8", "--intra-bw", "nan"], "finite"),
    (["--d-model", "8", "--top-k", "2"], "one trace source"),
    (["--no-such-flag", "--d-model", "8"], "unrecognized"),
    (["--json=maybe"], "ignored explicit argument"),
])
def test_bad_input_is_refused_with_exit_two(argv, message):
    result = run(*argv)
    assert result.returncode == 2, (argv, result.stderr)
    assert result.stderr.startswith("moe-epmodel: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("text,message", [
    ("", "no records"),
    ("# only a comment\n\n", "no records"),
    ('{"step": 1, "counts": [1, 2]\n', "not valid JSON"),
    ('{"step": 1, "counts": [1, -2]}\n', "not a count"),
    ('{"step": 1, "counts": []}\n', "empty"),
    ('{"step": 1, "layer": "a", "counts": [0, 0]}\n', "zero copies"),
    ('[1, 2]\n', "not a JSON object"),
    ('{"step": 1, "counts": [1, 2]}\n{"step": 2, "counts": [1, 2, 3]}\n', "changes its number"),
])
def test_bad_records_fail_with_exit_one(tmp_path, text, message):
    path = tmp_path / "records.jsonl"
    path.write_text(text)
    result = run("--records-file", str(path), "--top-k", "1", "--d-model", "8", "--ranks", "2")
    assert result.returncode == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    if "JSON" in message:
        assert "records.jsonl:1" in result.stderr


def test_top_k_needed_without_token_counts(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"step": 1, "counts": [4, 4]}\n')
    result = run("--records-file", str(path), "--d-model", "8", "--ranks", "2")
    assert result.returncode == 2 and "--top-k" in result.stderr
    inferred = run("--records-file", str(path), "--d-model", "8", "--ranks", "2",
                   "--tokens-per-rank", "4", "--json")
    assert inferred.returncode == 0 and json.loads(inferred.stdout)["top_k"] == 2
    assert "inferred" in inferred.stderr


def test_version_and_help():
    version = run("--version")
    assert version.returncode == 0 and version.stdout.split() == ["moe-epmodel", ep.VERSION]
    helped = run("--help")
    assert helped.returncode == 0 and "--json" in helped.stdout and "--version" in helped.stdout
