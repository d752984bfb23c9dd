"""moe-stats on the expert-load records other frameworks write, each file written here in
the shape the framework's own code writes it (the writers are cited beside each test),
against a numpy recount and the frameworks' own definitions of their balance figures:
balancedness = mean / max (vLLM, SGLang), imbalance ratio = (max - mean) / mean
(TensorRT-LLM), overload factor = max rank load / balanced load (Megatron-Core)."""
import json
import os
import struct
import subprocess

import numpy as np
import pytest
import torch

import moe
from numpy_metrics import load_metrics

BINARY = os.environ.get("MOE_STATS", os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "build", "tools", "moe-stats"))


def run(*args, stdin=None):
    return subprocess.run([BINARY, *map(str, args)], input=stdin, capture_output=True, text=True)


def report(*args, stdin=None):
    result = run("--json", *args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def records(*args):
    result = run("--records", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def rank_figures(load):
    """The frameworks' figures over rank loads, from their definitions."""
    load = np.asarray(load, dtype=np.float64)
    return {"rank_balancedness": load.mean() / load.max(),
            "rank_imbalance_ratio": (load.max() - load.mean()) / load.mean(),
            "overload_factor": load.max() / (load.sum() / len(load))}


def check_counts(layer, steps, rank_load=None):
    """steps: the count vectors of one layer, in order; rank_load: each step's."""
    assert [s["expert_counts"] for s in layer["steps"]] == [list(c) for c in steps]
    for got, counts in zip(layer["steps"], steps):
        want = load_metrics(counts)
        for name in ("load_cv", "gini", "max_frac", "balancedness", "imbalance_ratio"):
            assert got[name] == pytest.approx(want[name], abs=1e-12), name
    assert layer["summed"]["expert_counts"] == np.sum(steps, axis=0).tolist()
    if rank_load is None:
        assert "rank_load" not in layer["summed"]
        return
    for got, load in zip(layer["steps"], rank_load):
        assert got["rank_load"] == list(load)
        for name, value in rank_figures(load).items():
            assert got[name] == pytest.approx(value, abs=1e-12), name
    summed = np.sum(rank_load, axis=0)
    assert layer["summed"]["rank_load"] == summed.tolist()
    for name, value in rank_figures(summed).items():
        assert layer["summed"][name] == pytest.approx(value, abs=1e-12), name


# --- PyTorch prints, as torch itself prints them -------------------------------------

def torch_print(value, linewidth=80):
    torch.set_printoptions(linewidth=linewidth, threshold=100000)
    try:
        return repr(value)
    finally:
        torch.set_printoptions(profile="default")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float32])
def test_torch_prints_wrapped_over_lines(tmp_path, dtype):
    rng = np.random.default_rng(1)
    steps = [rng.integers(0, 5000, size=(3, 64)) for _ in range(2)]
    log = tmp_path / "counts.log"
    with open(log, "w") as f:
        for step in steps:
            pairs = [(layer, torch.tensor(step[layer], dtype=dtype)) for layer in range(3)]
            f.write(torch_print(pairs) + "\n")
    text = log.read_text()
    assert text.count("\n") > 10 and ("dtype=torch.int32" in text) == (dtype == torch.int32)
    layers = report(log)
    assert [l["layer"] for l in layers] == ["0", "1", "2"]
    for layer in range(3):
        check_counts(layers[layer], [s[layer] for s in steps])


def test_torch_prints_of_every_layout(tmp_path):
    rng = np.random.default_rng(2)
    counts = rng.integers(1, 900, size=(4, 2, 16))  # [step][layer][expert]
    t = torch.tensor(counts, dtype=torch.int32)
    device = ", device='cuda:0'"
    prints = [
        torch_print([t[0, 0], t[0, 1]], 60),                               # list of tensors
        torch_print(t[1], 50),                                             # 2-D: a layer a row
        torch_print({"0": t[2, 0], "1": t[2, 1]}, 70),                     # dict of layers
        torch_print([(0, t[3, 0]), (1, t[3, 1])], 40).replace(")),", device + ")),"),
    ]
    log = tmp_path / "layouts.log"
    log.write_text("\n".join(prints) + "\n# a comment between prints\n")
    assert device in log.read_text()
    layers = report(log)
    for layer in range(2):
        check_counts(layers[layer], counts[:, layer, :])
    # A 3-D tensor (vLLM's expert_load_window, SGLang's logical_count): [step][layer][expert].
    window = tmp_path / "window.log"
    window.write_text(torch_print(t, 100) + "\n")
    layers = report(window)
    for layer in range(2):
        check_counts(layers[layer], counts[:, layer, :])
    # NumPy's print of the same counts.
    numpy_log = tmp_path / "numpy.log"
    np.set_printoptions(linewidth=50)
    numpy_log.write_text(repr(counts[0]) + "\n")
    np.set_printoptions(linewidth=75)
    assert report(numpy_log)[1]["summed"]["expert_counts"] == counts[0, 1].tolist()


def test_summarised_and_broken_prints_are_refused(tmp_path):
    log = tmp_path / "summarised.log"
    log.write_text(repr([(0, torch.arange(2000))]) + "\n")  # PyTorch elides past 1000
    result = run(log)
    assert result.returncode == 1 and "summarised" in result.stderr and "profile='full'" in result.stderr
    # A print cut off by the next record is that print's error; --lenient keeps the next.
    broken = tmp_path / "broken.log"
    broken.write_text("[(0, tensor([1, 2,\n0,a,3,4\n")
    result = run(broken)
    assert result.returncode == 1 and "broken.log:1: the print is not closed" in result.stderr
    result = run("--lenient", "--json", broken)
    assert result.returncode == 0 and "1 malformed lines skipped" in result.stderr
    assert json.loads(result.stdout)[0]["summed"]["expert_counts"] == [3, 4]


# --- Megatron-Core ----------------------------------------------------------------------
# megatron/training/activation_logging.py (save_tpe): {--save}/tokens_per_expert/rank{R}.jsonl,
# one line per layer and saved iteration, json.dumps of {"iter", "block", ["mtp_idx"],
# "layer", "tpe": [[microbatch][local expert]]}.

def megatron_run(tmp_path, ranks=2, local=4, iters=(100, 200), layers=(1, 3)):
    rng = np.random.default_rng(3)
    folder = tmp_path / "tokens_per_expert"
    folder.mkdir()
    tpe = {}  # (iter, layer, rank) -> [microbatch][local expert]
    for r in range(ranks):
        with open(folder / f"rank{r}.jsonl", "a") as f:
            for it in iters:
                for layer in layers:
                    tpe[it, layer, r] = rng.integers(0, 700, size=(2, local))
                    f.write(json.dumps({"iter": it, "block": "decoder", "layer": layer,
                                        "tpe": tpe[it, layer, r].tolist()}) + "\n")
                tpe[it, "mtp", r] = rng.integers(0, 300, size=(2, local))
                f.write(json.dumps({"iter": it, "block": "mtp", "mtp_idx": 0, "layer": 0,
                                    "tpe": tpe[it, "mtp", r].tolist()}) + "\n")
    (folder / "notes.txt").write_text("")  # not a rank's log: refused below
    return folder, tpe


def test_megatron_tokens_per_expert_per_rank(tmp_path):
    folder, tpe = megatron_run(tmp_path)
    os.remove(folder / "notes.txt")
    layers = report(folder)
    assert [l["layer"] for l in layers] == ["1", "3", "mtp0.0"]
    for layer, key in zip(layers, [1, 3, "mtp"]):
        # The layer's experts are rank 0's local experts, then rank 1's (expert
        # ep_rank * num_local_experts + i); a rank's load is its local experts' tokens.
        steps = [np.concatenate([tpe[it, key, r].sum(0) for r in range(2)]) for it in (100, 200)]
        loads = [[int(tpe[it, key, r].sum()) for r in range(2)] for it in (100, 200)]
        check_counts(layer, steps, loads)
        assert [s["step"] for s in layer["steps"]] == [100, 200]


def test_megatron_rank_files_must_agree(tmp_path):
    folder, _ = megatron_run(tmp_path)
    result = run(folder)  # notes.txt names no rank
    assert result.returncode == 1 and "notes.txt: a log among per-rank logs whose name names no rank" in result.stderr
    os.remove(folder / "notes.txt")
    with open(folder / "rank1.jsonl") as f:
        lines = f.readlines()
    with open(folder / "rank1.jsonl", "w") as f:
        f.writelines(lines[:4])  # rank 1 stops after iteration 100
    result = run(folder)
    assert result.returncode == 1 and "no record from rank 1 of 2" in result.stderr


def test_megatron_older_text_log(tmp_path):
    # The older save_tpe: one shared tokens_per_expert.log, a line per microbatch, ranks
    # interleaved: f"Rank={rank} iter={iteration} layer={layer} tokens_per_expert={inp}".
    lines = ["Rank=0 iter=100 layer=3 tokens_per_expert=[128, 64]",
             "Rank=1 iter=100 layer=3 tokens_per_expert=[70, 138]",
             "Rank=0 iter=100 layer=3 tokens_per_expert=[96, 80]",
             "Rank=1 iter=100 layer=3 tokens_per_expert=[60, 2]",
             "Rank=1 iter=200 layer=3 tokens_per_expert=[5, 5]",
             "Rank=0 iter=200 layer=3 tokens_per_expert=[1, 9]"]
    log = tmp_path / "tokens_per_expert.log"
    log.write_text("\n".join(lines) + "\n")
    layer = report(log)[0]
    check_counts(layer, [[224, 144, 130, 140], [1, 9, 5, 5]], [[368, 270], [10, 10]])
    # Megatron's own test vector of MoEOverloadFactorTracker: a rank that received 14
    # tokens where 8 were balanced has an overload factor of 1.75.
    single = tmp_path / "one_rank.log"
    single.write_text("Rank=0 iter=1 layer=1 tokens_per_expert=[14]\n"
                      "Rank=1 iter=1 layer=1 tokens_per_expert=[2]\n")
    assert report(single)[0]["summed"]["overload_factor"] == pytest.approx(14 / 8)


# --- SGLang -----------------------------------------------------------------------------

def test_sglang_stat_dump(tmp_path):
    # eplb/expert_distribution.py (_StatAccumulator.dump): rank 0 torch.saves
    # {"rank", "logical_count": int32 [buffer, layers, logical experts], ...}; rows never
    # written (the rest of the ring) and dense layers are zero.
    counts = np.zeros((4, 3, 8), dtype=np.int32)
    rng = np.random.default_rng(4)
    counts[:2, 0] = rng.integers(0, 50, size=(2, 8))
    counts[:2, 2] = rng.integers(0, 50, size=(2, 8))  # layer 1 is dense: all zero
    path = tmp_path / "expert_distribution_recorder_1718000000.123.pt"
    torch.save({"rank": 0, "logical_count": torch.tensor(counts),
                "average_utilization_rate_over_window": None}, path)
    layers = report("--ep-ranks", 2, path)
    assert [l["layer"] for l in layers] == ["0", "2"]
    for layer, index in zip(layers, (0, 2)):
        loads = [[int(c[:4].sum()), int(c[4:].sum())] for c in counts[:2, index]]
        check_counts(layer, counts[:2, index], loads)
    # SGLang's balancedness of a pass: (mean + 1e-5) / (max + 1e-5) over GPUs.
    load = np.array(layers[0]["steps"][0]["rank_load"], dtype=np.float64)
    sglang = (load.mean() + 1e-5) / (load.max() + 1e-5)
    assert layers[0]["steps"][0]["rank_balancedness"] == pytest.approx(sglang, rel=1e-6)


def test_sglang_per_pass_dumps_of_every_rank(tmp_path):
    # _DetailAccumulator.dump: every rank saves expert_distribution_recorder_{ts}_{rank}.pt
    # with "records": [{"forward_pass_id", "rank", "gatherer_key",
    # "global_physical_count": int32 [layers, physical experts]}] of its own tokens.
    rng = np.random.default_rng(5)
    physical = {(p, r): rng.integers(0, 40, size=(2, 6)).astype(np.int32)
                for p in (7, 8) for r in range(3)}
    folder = tmp_path / "dump"
    folder.mkdir()
    for r in range(3):
        records_of_rank = [{"forward_pass_id": p, "rank": r, "gatherer_key": "primary",
                            "global_physical_count": torch.tensor(physical[p, r])}
                           for p in (7, 8)]
        torch.save({"records": records_of_rank,
                    "last_physical_to_logical_map": torch.arange(6).repeat(2, 1)},
                   folder / f"expert_distribution_recorder_1718000000.5_{r}.pt")
    layers = report(folder)
    for layer in range(2):
        steps = [sum(physical[p, r][layer] for r in range(3)) for p in (7, 8)]
        # Three ranks of two physical experts each, in contiguous blocks.
        loads = [[int(s[2 * q:2 * q + 2].sum()) for q in range(3)] for s in steps]
        check_counts(layers[layer], steps, loads)


def test_sglang_legacy_csv_of_every_rank(tmp_path):
    # managers/expert_distribution.py (dump_record): every rank writes
    # expert_distribution_rank{rank}_timestamp{time}.csv, layer_id,expert_id,count, only
    # the experts chosen, in the order first seen.
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "expert_distribution_rank0_timestamp1718000000.1234567.csv").write_text(
        "layer_id,expert_id,count\n1,5,12\n1,0,9\n1,7,3\n2,3,20\n2,5,4\n")
    (folder / "expert_distribution_rank1_timestamp1718000000.1234999.csv").write_text(
        "layer_id,expert_id,count\n2,1,6\n1,0,1\n1,2,2\n2,0,8\n")
    layers = report(folder)
    assert [l["layer"] for l in layers] == ["1", "2"]
    # Eight experts (the largest id seen), in blocks of four on the two ranks.
    check_counts(layers[0], [[10, 0, 2, 0, 0, 12, 0, 3]], [[12, 15]])
    check_counts(layers[1], [[8, 6, 0, 20, 0, 4, 0, 0]], [[34, 4]])


# --- vLLM -------------------------------------------------------------------------------

def test_vllm_eplb_load(tmp_path):
    # vllm/distributed/eplb/eplb_state.py: expert_load_window int32 [window, layers,
    # physical experts], expert_load_pass [layers, physical experts]; balancedness over
    # ranks (physical experts in contiguous blocks of num_physical / ep_size).
    rng = np.random.default_rng(6)
    window = rng.integers(0, 100, size=(3, 2, 8)).astype(np.int32)
    path = tmp_path / "eplb.pt"
    torch.save({"expert_load_window": torch.tensor(window),
                "physical_to_logical_map": torch.arange(8).repeat(2, 1)}, path)
    layers = report("--ep-ranks", 4, path)
    for layer in range(2):
        loads = [window[s, layer].reshape(4, 2).sum(1).tolist() for s in range(3)]
        check_counts(layers[layer], window[:, layer], loads)
    # vLLM's logged balancedness of a step: sum over layers of the mean over ranks, over
    # the sum over layers of the max.
    T = np.stack([window[0, l].reshape(4, 2).sum(1) for l in range(2)])
    vllm = T.mean(1).sum() / T.max(1).sum()
    per_layer = [l["steps"][0] for l in layers]
    ratio = sum(np.mean(s["rank_load"]) for s in per_layer) / sum(max(s["rank_load"]) for s in per_layer)
    assert ratio == pytest.approx(vllm)
    # A bare [layers, physical] tensor (expert_load_pass).
    torch.save(torch.tensor(window[0]), tmp_path / "pass.pt")
    assert report(tmp_path / "pass.pt")[1]["summed"]["expert_counts"] == window[0, 1].tolist()


def test_vllm_step_metrics_jsonl(tmp_path):
    # The per-layer step metrics: layer_{LLL:03d}.jsonl, compact JSON, sparse
    # [logical expert, count] pairs of one engine's step.
    log = tmp_path / "layer_000.jsonl"
    lines = [{"engine": 0, "step": 17, "layer": 0, "num_logical_experts": 4, "counts": [[1, 2], [3, 5]]},
             {"engine": 1, "step": 17, "layer": 0, "num_logical_experts": 4, "counts": [[0, 4]]},
             {"engine": 0, "step": 18, "layer": 0, "num_logical_experts": 4, "counts": [[2, 1]]},
             {"engine": 1, "step": 18, "layer": 0, "num_logical_experts": 4, "counts": [[2, 3]]}]
    log.write_text("".join(json.dumps(l, separators=(",", ":")) + "\n" for l in lines))
    check_counts(report(log)[0], [[4, 2, 0, 5], [0, 0, 4, 0]], [[6, 5], [0, 4]])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step":1,"layer":0,"num_logical_experts":4,"counts":[[4,1]]}\n')
    result = run(bad)
    assert result.returncode == 1 and "bad.jsonl:1: expert 4 is past num_logical_experts" in result.stderr


# --- TensorRT-LLM -----------------------------------------------------------------------

def safetensors_bytes(tensors, dtype="I64"):
    """safetensors' layout: u64 header length, the JSON header padded with spaces to a
    multiple of 8, then the data; tensors ordered by name as text (safetensors' own)."""
    header, data = {}, b""
    fmt = {"I64": "<q", "I32": "<i"}[dtype]
    for name in sorted(tensors):
        raw = b"".join(struct.pack(fmt, v) for v in tensors[name])
        header[name] = {"dtype": dtype, "shape": [len(tensors[name])],
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def test_tensorrt_llm_expert_statistics(tmp_path):
    # tensorrt_llm/_torch/expert_statistic.py: {EXPERT_STATISTIC_PATH}/meta_info.json and
    # rank{r}.safetensors, one bincount per slot named "{iter}_{layer}" of that rank's
    # tokens. The sample and the figures of report_load_statistics.py below were worked by
    # hand from its code (sum over rank files, contiguous slots per rank).
    folder = tmp_path / "expert_statistic"
    folder.mkdir()
    (folder / "meta_info.json").write_text('{"num_experts": 4, "num_experts_per_token": 2}')
    ranks = [{"5_3": [10, 0, 3, 3], "5_4": [2, 8, 2, 4], "6_3": [7, 1, 4, 4], "6_4": [5, 5, 5, 1]},
             {"5_3": [6, 2, 1, 7], "5_4": [4, 4, 4, 4], "6_3": [9, 3, 0, 4], "6_4": [3, 7, 2, 4]}]
    for r, tensors in enumerate(ranks):
        (folder / f"rank{r}.safetensors").write_bytes(safetensors_bytes(tensors, ("I64", "I32")[r]))
    assert len((folder / "rank0.safetensors").read_bytes()) == 368
    layers = report(folder)
    assert [l["layer"] for l in layers] == ["3", "4"]
    check_counts(layers[0], [[16, 2, 4, 10], [16, 4, 4, 8]], [[18, 14], [20, 12]])
    # report_load_statistics.py: imbalance-ratio 0.1875 per rank for both layers (the mean
    # over iterations), 1.0 and 0.5 per expert (--per_expert).
    for layer in layers:
        per_step = [s["rank_imbalance_ratio"] for s in layer["steps"]]
        assert np.mean(per_step) == pytest.approx(0.1875)
    assert np.mean([s["imbalance_ratio"] for s in layers[0]["steps"]]) == pytest.approx(1.0)
    assert np.mean([s["imbalance_ratio"] for s in layers[1]["steps"]]) == pytest.approx(0.5)


@pytest.mark.parametrize("header,message", [
    (b'{"5_3":{"dtype":"I64","shape":[4],"data_offsets":[0,64]}}', "do not hold"),
    (b'{"a_b":{"dtype":"I64","shape":[4],"data_offsets":[0,32]}}', "<iteration>_<layer>"),
    (b'{"5_3":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}}', "not of counts"),
    (b'{"5_3":[1]}', "lacks dtype"),
])
def test_broken_safetensors_are_refused(tmp_path, header, message):
    path = tmp_path / "rank0.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(32))
    result = run(path)
    assert result.returncode == 1 and message in result.stderr, result.stderr


def test_broken_torch_saves_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(3)}, path)
    result = run(path)
    assert result.returncode == 1 and "without logical_count" in result.stderr
    torch.save(torch.tensor([[0.5, 1.0]]), path)
    result = run(path)
    assert result.returncode == 1 and "not a count" in result.stderr
    data = bytearray(open(tmp_path / "other.pt", "rb").read())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(bytes(data[: len(data) // 2]))
    result = run(truncated)
    assert result.returncode == 1 and "truncated.pt" in result.stderr
    # A pickle that would run code is never run: its global is not a tensor.
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))
    torch.save({"logical_count": Evil()}, path)
    result = run(path)
    assert result.returncode == 1 and not (tmp_path / "ran").exists()


# --- per-rank load of any log, and windows of steps -------------------------------------

def test_ep_ranks_split_any_log(tmp_path):
    log = tmp_path / "counts.csv"
    log.write_text("1,a,10,0,5,5\n2,a,4,4,4,4\n")
    check_counts(report("--ep-ranks", 2, log)[0], [[10, 0, 5, 5], [4, 4, 4, 4]], [[10, 10], [8, 8]])
    result = run("--ep-ranks", 3, log)
    assert result.returncode == 1 and "do not split over 3 ranks" in result.stderr


def test_long_logs_are_shown_in_windows_of_steps(tmp_path):
    rng = np.random.default_rng(7)
    steps = rng.integers(0, 100, size=(1000, 8))
    log = tmp_path / "long.csv"
    log.write_text("".join(f"{s},a," + ",".join(map(str, c)) + "\n" for s, c in enumerate(steps)))
    layer = report(log)[0]
    windows = layer["steps"]
    assert layer["records"] == 1000 and len(windows) <= 256
    assert windows[0]["step"] == 0 and windows[-1]["last_step"] == 999
    assert sum(w["records"] for w in windows) == 1000
    first = 0
    for w in windows:  # each window's figures are those of its summed counts
        summed = steps[first:first + w["records"]].sum(0)
        assert w["expert_counts"] == summed.tolist()
        assert w["load_cv"] == pytest.approx(load_metrics(summed)["load_cv"], abs=1e-12)
        first += w["records"]
    assert layer["summed"]["expert_counts"] == steps.sum(0).tolist()


# Under AddressSanitizer (the suite's second run preloads it) the address space holds
# shadow memory, so the bound is set in the release run only, and the log is smaller.
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")


def test_a_log_larger_than_the_memory_it_may_use(tmp_path):
    # 500 MB of records (6.4 MB repeated) streamed through a pipe into a process whose address space is
    # held to 128 MiB: the report keeps each layer's sums and at most 256 windows.
    rng = np.random.default_rng(8)
    chunk = "".join(f"{s},layer{s % 4}," + ",".join(map(str, rng.integers(0, 5000, 64))) + "\n"
                    for s in range(20000)).encode()
    repeats, limit = (8, None) if SANITIZED else (80, 128 << 20)

    def bound():
        if limit:
            import resource
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    out_path, err_path = tmp_path / "out.json", tmp_path / "err.txt"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        child = subprocess.Popen([BINARY, "--json", "-"], stdin=subprocess.PIPE, stdout=out,
                                 stderr=err, preexec_fn=bound)
        for _ in range(repeats):
            child.stdin.write(chunk)
        child.stdin.close()
        child.wait()
    out, err = out_path.read_bytes(), err_path.read_bytes()
    assert child.returncode == 0, err.decode()
    assert len(chunk) * repeats > (limit or 0) * 3
    layers = json.loads(out)
    assert [l["records"] for l in layers] == [5000 * repeats] * 4
    assert all(len(l["steps"]) <= 256 for l in layers)


# --- found by a new user's trial --------------------------------------------------------

def test_hostile_and_inconsistent_dumps_are_refused_clearly(tmp_path):
    import zipfile
    # 200,000 nested lists in a pickle: values live in an arena, nothing frees recursively.
    n = 200000
    deep = tmp_path / "deep.pt"
    with zipfile.ZipFile(deep, "w") as z:
        z.writestr("a/data.pkl", b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b".")
        z.writestr("a/version", "3\n")
    result = run(deep)
    assert result.returncode == 1 and "deep.pt" in result.stderr
    # The legacy (non-zip) torch.save format, and dumps on stdin (which cannot seek).
    legacy = tmp_path / "legacy.pt"
    torch.save({"logical_count": torch.ones(1, 2, 4, dtype=torch.int32)}, legacy,
               _use_new_zipfile_serialization=False)
    result = run(legacy)
    assert result.returncode == 1 and "before PyTorch 1.6" in result.stderr
    with open(deep, "rb") as f:
        result = subprocess.run([BINARY, "--lenient", "-"], stdin=f, capture_output=True)
    assert result.returncode == 1 and b"give its path" in result.stderr
    # TensorRT-LLM ranks of different widths; a rank missing from a later step.
    folder = tmp_path / "widths"
    folder.mkdir()
    (folder / "rank0.safetensors").write_bytes(safetensors_bytes({"1_0": [1, 1, 1, 1]}))
    (folder / "rank1.safetensors").write_bytes(safetensors_bytes({"1_0": [4, 4, 4, 4, 5, 6]}))
    result = run(folder)
    assert result.returncode == 1 and "differ in their number of experts" in result.stderr
    log = tmp_path / "engines.jsonl"
    lines = [{"engine": 0, "step": 1, "layer": 0, "num_logical_experts": 2, "counts": [[0, 1]]},
             {"engine": 1, "step": 1, "layer": 0, "num_logical_experts": 2, "counts": [[1, 1]]},
             {"engine": 0, "step": 2, "layer": 0, "num_logical_experts": 2, "counts": [[0, 1]]}]
    log.write_text("".join(json.dumps(l) + "\n" for l in lines))
    result = run(log)
    assert result.returncode == 1 and "no record from rank 1 of 2" in result.stderr
    # Engine by engine instead of step by step: named with its file and line.
    log.write_text("".join(json.dumps(l) + "\n" for l in [lines[0], lines[2], lines[1]]))
    result = run(log)
    assert result.returncode == 1 and "engines.jsonl:3: records of step 1 come after step 2" in result.stderr
    # A pass given twice by one rank (not a microbatch part) is refused, not summed.
    folder = tmp_path / "dup"
    folder.mkdir()
    record = {"forward_pass_id": 1, "rank": 0, "global_physical_count": torch.ones(1, 2, dtype=torch.int32)}
    torch.save({"records": [record, record]}, folder / "expert_distribution_recorder_1.0_0.pt")
    result = run(folder)
    assert result.returncode == 1 and "gives layer 0 of step 1 twice" in result.stderr
    # Rank files with a gap.
    folder = tmp_path / "gap"
    folder.mkdir()
    for r in (0, 2):
        (folder / f"rank{r}.jsonl").write_text('{"iter": 1, "layer": 0, "tpe": [[1, 2]]}\n')
    result = run(folder)
    assert result.returncode == 1 and "rank 2 where rank 1 has no log" in result.stderr


def test_prints_and_lines_a_new_user_wrote(tmp_path):
    def report_of(text):
        return report("-", stdin=text)
    # grad_fn annotations, a BOM and CRLF line ends.
    assert report_of("tensor([3, 4], grad_fn=<SumBackward1>)\n")[0]["summed"]["expert_counts"] == [3, 4]
    assert report_of("\ufeffstep,layer,e0,e1\r\n1,a,5,6\r\n")[0]["summed"]["expert_counts"] == [5, 6]
    for text, message in [("tensor([[[1, 2]], [[3, 4], [5, 6]]])\n", "ragged"),
                          ("{0: tensor([1, 2]), 0: tensor([3, 4])}\n", "twice in one print"),
                          ("1,a,9223372036854775808\n", "past 2^63 - 1"),
                          ('{"counts": [1, 2], "served": [2, 2]}\n', "served can never exceed"),
                          ("tensor([1, 2, 3,\n[(0, tensor([4, 5]))]\n", "not closed before line 2")]:
        result = run("-", stdin=text)
        assert result.returncode == 1 and message in result.stderr, (text, result.stderr)
    # The line that interrupted an open print is read again, under its own number.
    result = run("--lenient", "--json", "-", stdin="tensor([1, 2, 3,\n[(0, tensor([4, 5]))]\n")
    assert result.returncode == 0 and json.loads(result.stdout)[0]["summed"]["expert_counts"] == [4, 5]
    result = run("-", stdin="1,a,1\n1,a,2\n1,a,3\ntensor([1, 2,\nxx yy\n")
    assert "<stdin>:4: the print is not closed before line 5" in result.stderr
    # Megatron's MTP layers are named apart whatever the block says.
    tpe = [{"iter": 1, "block": "decoder", "layer": 1, "tpe": [[10, 20]]},
           {"iter": 1, "block": 0, "mtp_idx": 1, "layer": 1, "tpe": [[3, 4]]}]
    layers = report_of("".join(json.dumps(t) + "\n" for t in tpe))
    assert [l["layer"] for l in layers] == ["1", "mtp1.1"]
    # served as moe-stats --records writes it reads back.
    text = '{"step": 1, "layer": "a", "counts": [4, 2], "served": [3, 2], "tokens": 6}\n'
    assert report_of(text)[0]["summed"]["drop_rate"] == pytest.approx(1 / 6)


def test_ep_ranks_and_compare_say_when_they_cannot_apply(tmp_path):
    folder, _ = megatron_run(tmp_path)
    os.remove(folder / "notes.txt")
    result = run("--ep-ranks", 4, folder)
    assert result.returncode == 1 and "the log names 2 ranks, --ep-ranks 4" in result.stderr
    log = tmp_path / "c.csv"
    log.write_text("1,a,1,2,3,4\n")
    recs = records("--ep-ranks", 2, log)
    assert recs[0]["rank_load"] == [3, 7]
    other = tmp_path / "d.csv"
    other.write_text("1,b,1,2,3,4\n")
    result = run("--compare", log, other)
    assert result.returncode == 1 and "no layer in common" in result.stderr


# --- found by a review of the code --------------------------------------------------------

def zip_pickle(path, pickle, storages=None):
    import zipfile
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle)
        for key, data in (storages or {}).items():
            z.writestr("archive/data/" + key, data)


def tensor_pickle(shape, stride):
    """_rebuild_tensor_v2 of a LongStorage '0', as torch.save pickles it."""
    def ints(xs):
        return b"(" + b"".join(b"\x8a\x08" + struct.pack("<q", x) for x in xs) + b"t"
    storage = (b"(X\x07\x00\x00\x00storagectorch\nLongStorage\nX\x01\x00\x00\x000"
               b"X\x03\x00\x00\x00cpuK\x01tQ")
    return (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"K\x00" + ints(shape)
            + ints(stride) + b"\x89)tR.")


def test_dumps_that_would_hang_or_swell_are_refused(tmp_path):
    cases = {
        # 2^62 steps of no layers: nothing to read, and read at once.
        "hang.pt": (tensor_pickle([1 << 62, 0, 1], [0, 1, 1]), {"0": bytes(8)}, "no records"),
        # A global whose name doubles at every step.
        "double.pt": (b"\x80\x02X\x01\x00\x00\x00aq\x00" + b"h\x00h\x00\x93q\x00" * 45 + b".", {},
                      "not two short names"),
        # Memo entries count as values.
        "memo.pt": (b"\x80\x02N" + b"\x94" * (2 << 20) + b".", {}, "past moe-stats' bounds"),
    }
    for name, (pickle, storages, message) in cases.items():
        zip_pickle(tmp_path / name, pickle, storages)
        result = subprocess.run([BINARY, tmp_path / name], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and message in result.stderr, (name, result.stderr)
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x00")
    result = run(short)
    assert result.returncode == 1 and "shorter than its header size" in result.stderr
    sparse = tmp_path / "sparse.csv"
    sparse.write_text("layer_id,expert_id,count\n0,1048575,1\n" + "".join(f"{i},0,1\n" for i in range(1, 100)))
    result = run(sparse)
    assert result.returncode == 1 and "layers x experts pass 2^24" in result.stderr
    wide = tmp_path / "print.log"
    wide.write_text("[" + "[0]," * (1 << 20) + "[1]]\n")
    result = run(wide)
    assert result.returncode == 1 and "more than 2^20 lists" in result.stderr


def test_windows_of_wide_layers_keep_every_step(tmp_path):
    # 10,000 experts allow 209 windows: an odd limit once lost a window when pairs merged.
    log = tmp_path / "wide.csv"
    log.write_text("".join(f"{s},0," + ",".join(str((s * 7 + e) % 13) for e in range(10000)) + "\n"
                           for s in range(1, 301)))
    layer = report(log)[0]
    assert sum(w["records"] for w in layer["steps"]) == 300
    assert np.sum([w["expert_counts"] for w in layer["steps"]], axis=0).tolist() == \
        layer["summed"]["expert_counts"]


def test_an_idle_rank_and_records_without_ranks(tmp_path):
    # An SGLang rank that routed nothing in a pass writes a zero row: still that rank's.
    folder = tmp_path / "idle"
    folder.mkdir()
    counts = {(p, r): np.full((1, 4), 3 * p + r, dtype=np.int32) for p in (1, 2) for r in (0, 1)}
    counts[2, 1][:] = 0
    for r in (0, 1):
        torch.save({"records": [{"forward_pass_id": p, "rank": r,
                                 "global_physical_count": torch.tensor(counts[p, r])} for p in (1, 2)]},
                   folder / f"expert_distribution_recorder_1.0_{r}.pt")
    layer = report(folder)[0]
    check_counts(layer, [[7] * 4, [6] * 4], [[14, 14], [12, 12]])
    # Records with and without ranks in one layer: no rank figures for the layer.
    log = tmp_path / "mixed.jsonl"
    log.write_text('{"engine": 0, "step": 1, "layer": 0, "num_logical_experts": 2, "counts": [[0, 5]]}\n'
                   '{"step": 2, "layer": 0, "num_logical_experts": 2, "counts": [[1, 5]]}\n')
    layer = report(log)[0]
    assert "rank_load" not in layer["summed"] and "overload_factor" not in layer["summed"]


def test_the_librarys_export_under_a_communicator_carries_rank_load(tmp_path):
    # With a communicator the JSONL export adds "rank_load" (each rank's experts' copies);
    # moe-stats takes it as the ranks of the record. The one-rank local communicator: one
    # rank computes every served copy.
    layer = moe.Layer(8, 8, 4, 1, capacity_factor=1.0)
    layer.set_weights(router=10 * np.eye(8)[:, :4], w1=np.ones((4, 8, 8)), w2=np.ones((4, 8, 8)))
    plain = tmp_path / "plain.jsonl"
    layer.forward(np.eye(8)[[0, 0, 0, 1, 2, 3, 3, 3]])
    plain.write_text(layer.export("jsonl"))
    assert "rank_load" not in json.loads(plain.read_text())
    comm = moe.Comm.local()
    layer.set_comm(comm)  # attaching unbinds the weights
    layer.set_weights(router=10 * np.eye(8)[:, :4], w1=np.ones((4, 8, 8)), w2=np.ones((4, 8, 8)))
    path = tmp_path / "ep.jsonl"
    layer.forward(np.eye(8)[[0, 0, 0, 1, 2, 3, 3, 3]])
    line = json.loads(layer.export("jsonl"))
    assert line["rank_load"] == [sum(line["expert_served"])] == [6]
    assert line["rank_balancedness"] == 1.0 and line["overload_factor"] == pytest.approx(6 / 8)
    path.write_text(json.dumps(line) + "\n")
    got = report(path)[0]
    assert got["summed"]["rank_load"] == [6]
    assert got["summed"]["overload_factor"] == pytest.approx(6 / 8)  # T k: the demand counts
    layer.set_comm(None)
