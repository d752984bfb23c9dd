"""moe-stats on hand-made logs of each format, against a numpy recount; errors name the
file and line; --lenient; --compare; stdin; the library's own JSONL export."""
import json
import os
import subprocess

import numpy as np
import pytest

import moe
from numpy_metrics import load_metrics

BINARY = os.environ.get("MOE_STATS", os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "build", "tools", "moe-stats"))
LOGS = os.path.join(os.path.dirname(__file__), "..", "moe_stats")


def run(*args, stdin=None):
    return subprocess.run([BINARY, *args], input=stdin, capture_output=True, text=True)


def report(*args, stdin=None):
    result = run("--json", *args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def check_layer(layer, steps):
    """steps: the count vectors of one layer, in order."""
    for got, counts in zip(layer["steps"], steps):
        want = load_metrics(counts)
        for name in ("load_cv", "gini", "max_frac", "min_max_ratio", "load_entropy_norm",
                     "kl_to_uniform", "jain_fairness", "dead_experts"):
            assert got[name] == pytest.approx(want[name], abs=1e-12), name
    summed = np.sum(steps, axis=0)
    want = load_metrics(summed)
    assert layer["summed"]["expert_counts"] == summed.tolist()
    for name in ("load_cv", "gini", "max_over_mean", "diversity"):
        assert layer["summed"][name] == pytest.approx(want[name], abs=1e-12), name


def test_torch_print():
    layers = report(os.path.join(LOGS, "torch_print.log"))[0:2]
    assert [l["layer"] for l in layers] == ["1", "2"]
    check_layer(layers[0], [[5295, 4616, 4998, 5647, 5638, 4526], [5301, 4610, 5004, 5650, 5600, 4560]])
    check_layer(layers[1], [[5514, 4496, 5069, 5121, 5486, 5034], [9000, 100, 5069, 5121, 5486, 5034]])


def test_csv_and_verdicts():
    layers = report(os.path.join(LOGS, "counts.csv"))
    check_layer(layers[0], [[10, 10, 10, 10], [12, 8, 10, 10]])
    check_layer(layers[1], [[40, 0, 0, 0], [38, 2, 0, 0]])
    assert layers[0]["verdicts"]["balance"]["label"] == "balanced"
    collapsed = layers[1]["verdicts"]["balance"]
    assert collapsed["label"] == "collapsed" and collapsed["metric"] == "max_frac"


def test_jsonl_from_stdin_and_text_output():
    with open(os.path.join(LOGS, "counts.jsonl")) as f:
        text = f.read()
    layers = report("-", stdin=text)
    check_layer(layers[0], [[3, 3, 3, 3], [6, 0, 3, 3]])
    plain = run("-", stdin=text)
    assert plain.returncode == 0 and "layer blk0" in plain.stdout and "balance:" in plain.stdout
    assert plain.stderr == ""


def test_library_jsonl_round_trip(tmp_path):
    layer = moe.Layer(8, 8, 4, 1, capacity_factor=1.0)
    layer.set_weights(router=10 * np.eye(8)[:, :4], w1=np.ones((4, 8, 8)), w2=np.ones((4, 8, 8)))
    path = tmp_path / "metrics.jsonl"
    with open(path, "w") as f:
        for experts in ([0, 1, 2, 3] * 2, [0, 0, 0, 1, 2, 3, 3, 3]):
            layer.forward(np.eye(8)[experts])
            f.write(layer.export("jsonl"))
    layers = report(str(path))
    lib = layer.telemetry()
    last = layers[0]["steps"][-1]
    assert last["load_cv"] == pytest.approx(lib["load_cv"])
    assert last["drop_rate"] == pytest.approx(lib["drop_rate"])
    assert layers[0]["split"] == "train"
    assert "capacity" in layers[0]["verdicts"]


def test_library_csv_export_reads_as_its_jsonl(tmp_path):
    """The library's CSV export (a header naming expert_counts_e* and expert_served_e*)
    gives the report its JSONL export gives, counts recounted from the routing."""
    layer = moe.Layer(8, 8, 4, 2, capacity_factor=0.5)
    rng = np.random.default_rng(3)
    layer.set_weights(router=rng.standard_normal((8, 4)) * 3, w1=np.ones((4, 8, 8)),
                      w2=np.ones((4, 8, 8)))
    csv, jsonl = tmp_path / "m.csv", tmp_path / "m.jsonl"
    demand, served = [], []
    with open(csv, "w") as c, open(jsonl, "w") as j:
        c.write(layer.export("csv_header"))
        for _ in range(3):
            layer.forward(rng.standard_normal((24, 8)))
            r = layer.routing()
            demand.append(np.bincount(r["experts"].ravel(), minlength=4))
            served.append(np.bincount(r["experts"][~r["dropped"]], minlength=4))
            c.write(layer.export("csv_row"))
            j.write(layer.export("jsonl"))
    from_csv, from_jsonl = report(str(csv)), report(str(jsonl))
    assert from_csv == from_jsonl
    assert from_csv[0]["summed"]["expert_counts"] == np.sum(demand, 0).tolist()
    assert sum(served[-1]) < sum(demand[-1])  # there were drops to carry
    assert from_csv[0]["steps"][-1]["drop_rate"] == pytest.approx(
        1 - served[-1].sum() / demand[-1].sum())


def test_moe_train_metrics_jsonl_reads_without_lenient(tmp_path):
    """moe-train's metrics.jsonl holds step summaries ("kind") beside the layers'
    records: the summaries are not count records, and no --lenient is needed."""
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"kind": "train", "step": 1, "loss": 2.0}),
             json.dumps({"step": 1, "layer": "layer0", "split": "train",
                         "expert_counts": [3, 1], "tokens": 2}),
             json.dumps({"kind": "eval", "step": 1, "val_loss": 1.5})]
    path.write_text("\n".join(lines) + "\n")
    layers = report(str(path))
    assert len(layers) == 1 and layers[0]["summed"]["expert_counts"] == [3, 1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")  # no kind, no counts
    assert "no 'counts' or 'expert_counts' key" in run(str(bad)).stderr


@pytest.mark.parametrize("header,message", [
    ("step,layer,expert_counts_e0,expert_counts_e2", "skip expert 1"),
    ("step,layer,expert_counts_e0,expert_counts_e1,expert_served_e0",
     "1 expert_served_e columns for 2 expert_counts_e columns"),
])
def test_a_library_csv_header_that_does_not_hold_is_refused(tmp_path, header, message):
    path = tmp_path / "m.csv"
    path.write_text(header + "\n0,l,1,2,3\n")
    result = run(str(path))
    assert result.returncode != 0 and f"{path}:1: " in result.stderr and message in result.stderr


def test_malformed_lines_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("step,layer,e0,e1\n1,0,5,5\n2,0,5,x\n3,0,-1,5\n")
    result = run(str(bad))
    assert result.returncode == 1
    assert f"{bad}:3: not an integer count: 'x'" in result.stderr
    lenient = run("--lenient", "--json", str(bad))
    assert lenient.returncode == 0
    assert "2 malformed lines skipped" in lenient.stderr and ":4: negative count" in lenient.stderr
    assert len(json.loads(lenient.stdout)[0]["steps"]) == 1
    for text, message in [("[(1, tensor([1, 2)]\n", "not closed"), ('{"counts": "x"}\n', "counts"),
                          ("{nope\n", "not valid JSON"), ("[1, 'a']\n", "not a print of counts"),
                              ("[(1, tensor([1, 2]))]]\n", "trailing text"),
                          ("[(1, tensor([]))]\n", "no counts")]:
        result = run("-", stdin=text)
        assert result.returncode == 1 and "<stdin>:1:" in result.stderr and message in result.stderr
    width = run("-", stdin='{"counts":[1,2]}\n{"counts":[1,2,3]}\n')
    assert width.returncode == 1 and "changes its number of experts" in width.stderr


def test_compare_train_and_validation():
    out = report("--compare", os.path.join(LOGS, "counts.jsonl"), os.path.join(LOGS, "validation.jsonl"))
    assert len(out) == 1 and out[0]["layer"] == "blk0"
    cv = out[0]["metrics"]["load_cv"]
    a, b = load_metrics([9, 3, 6, 6])["load_cv"], load_metrics([35, 15, 15, 15])["load_cv"]
    assert cv["a"] == pytest.approx(a) and cv["b"] == pytest.approx(b)
    assert cv["diff"] == pytest.approx(b - a)
    text = run("--compare", os.path.join(LOGS, "counts.jsonl"), os.path.join(LOGS, "validation.jsonl"))
    assert text.returncode == 0 and "load_cv" in text.stdout and "diff" in text.stdout


def test_help_and_usage():
    assert run("--help").returncode == 0
    usage = run()
    assert usage.returncode == 2 and "--help" in usage.stderr


def test_layer_names_that_are_not_utf8():
    # Found by the fuzzer: a non-UTF-8 layer name used to abort the JSON output.
    result = subprocess.run([BINARY, "--json", "-"], input=b"1,\xb0\xb0,4,4\n", capture_output=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["layer"] == "\ufffd\ufffd"


# Under AddressSanitizer (the suite's second run preloads it) memory holds shadow bytes
# and a quarantine of freed blocks: the peak sizes below are asserted in the release run.
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")


def peak_rss_mib(args, path):
    """Runs moe-stats in a child that reports its own peak resident memory (ru_maxrss
    of the exec'd program)."""
    probe = ("import resource, subprocess, sys; "
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024);"
             "sys.stderr.write(r.stderr)")
    out = subprocess.run(["/usr/bin/python3", "-c", probe, BINARY, *args, str(path)],
                         capture_output=True, text=True)
    code, mib = map(int, out.stdout.split())
    return code, mib, out.stderr


def test_wide_records_use_memory_linear_in_experts(tmp_path):
    # 20,000 experts: one record once took 9.4 GB (an E x E co-activation matrix per record).
    E = 20000
    log = tmp_path / "wide.csv"
    rows = [",".join(["0", "a"] + [str((e * 7 + s) % 13) for e in range(E)]) for s in range(3)]
    log.write_text("\n".join(rows) + "\n")
    code, mib, stderr = peak_rss_mib(["--json", "--summary"], log)
    assert code == 0, stderr
    assert SANITIZED or mib < 200, f"{mib} MiB for {E} experts"


def test_records_past_the_limits_are_refused_by_line(tmp_path):
    # More counts than a layer can have experts (2^20), and a line past 64 MiB, are
    # refused with the line named; the long line is never held whole in memory.
    too_many = tmp_path / "too_many.csv"
    too_many.write_text("0,a," + ",".join(["1"] * ((1 << 20) + 1)) + "\n")
    result = run(str(too_many))
    assert result.returncode == 1 and "too_many.csv:1" in result.stderr and "2^20" in result.stderr
    long_line = tmp_path / "long.log"
    with open(long_line, "wb") as f:
        f.write(b"0,a,1,2\n[" + b" " * (150 << 20) + b"]\n0,a,3,4\n")
    code, mib, stderr = peak_rss_mib([], long_line)
    assert code == 1 and "long.log:2" in stderr and "64 MiB" in stderr, stderr
    # At most the 64 MiB kept (in a string that grows by doubling), not the 150 MiB line.
    assert SANITIZED or mib < 140, f"{mib} MiB to skip a 150 MiB line"
    code, _, stderr = peak_rss_mib(["--lenient", "--json"], long_line)
    assert code == 0 and "1 malformed lines skipped" in stderr, stderr


def test_served_above_demand_is_refused(tmp_path):
    # A drop rate of -99 with "capacity: ok" was reported for such a record.
    log = tmp_path / "served.jsonl"
    log.write_text(json.dumps({"step": 1, "layer": "a", "expert_counts": [1, 2],
                               "expert_served": [100, 2]}) + "\n")
    result = run(str(log))
    assert result.returncode == 1 and "served.jsonl:1" in result.stderr
    assert "exceed" in result.stderr


def test_records_the_report_cannot_take_are_line_errors(tmp_path):
    # Counts that overflow 64 bits once summed, and a layer changing its expert count,
    # are errors of their line (file:line), skipped under --lenient like any other.
    overflow = tmp_path / "overflow.csv"
    overflow.write_text("1,0,1,2\n2,0,9223372036854775807,9223372036854775807\n3,0,4,5\n")
    result = run(str(overflow))
    assert result.returncode == 1 and "overflow.csv:2" in result.stderr
    layer = report("--lenient", str(overflow))[0]
    assert layer["summed"]["expert_counts"] == [5, 7]
    widths = tmp_path / "widths.csv"
    widths.write_text("1,a,1,2\n2,a,1,2,3\n3,a,4,5\n")
    result = run(str(widths))
    assert result.returncode == 1 and "widths.csv:2" in result.stderr
    assert report("--lenient", str(widths))[0]["summed"]["expert_counts"] == [5, 7]


def test_quoted_csv_names_float_prints_and_json_errors(tmp_path):
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('step,layer,e0,e1\n1,"a,b",1,2\n2,"say ""hi""",3,4\n')
    assert [l["layer"] for l in report(str(quoted))] == ["a,b", 'say "hi"']
    floats = tmp_path / "floats.log"
    floats.write_text("[(0, tensor([5295., 4616.])), (1, tensor([1.0000e+05, 2.0000e+00]))]\n")
    layers = report(str(floats))
    assert [l["summed"]["expert_counts"] for l in layers] == [[5295, 4616], [100000, 2]]
    fractional = tmp_path / "fractional.log"
    fractional.write_text("[(0, tensor([1.5, 2.0]))]\n")
    assert run(str(fractional)).returncode == 1
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_bytes(b'{"step": 1, "layer": "\xff", "counts": [1, 2]}\n')
    result = run(str(bad_json))
    assert result.returncode == 1 and "bad.jsonl:1: not valid JSON" in result.stderr


def records(*args, stdin=None):
    result = run("--records", *args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_records_prints_every_record_normalised(tmp_path):
    # One JSON line per record, in the log's order, whatever the format (moe-epmodel reads them).
    assert records(os.path.join(LOGS, "counts.csv")) == [
        {"step": 1, "layer": "0", "split": "", "counts": [10, 10, 10, 10], "served": [],
         "tokens": None},
        {"step": 1, "layer": "1", "split": "", "counts": [40, 0, 0, 0], "served": [], "tokens": None},
        {"step": 2, "layer": "0", "split": "", "counts": [12, 8, 10, 10], "served": [],
         "tokens": None},
        {"step": 2, "layer": "1", "split": "", "counts": [38, 2, 0, 0], "served": [], "tokens": None}]
    torch = records(os.path.join(LOGS, "torch_print.log"))
    assert [(r["step"], r["layer"]) for r in torch][:3] == [(1, "1"), (1, "2"), (2, "1")]
    assert torch[0]["counts"] == [5295, 4616, 4998, 5647, 5638, 4526]
    with open(os.path.join(LOGS, "counts.jsonl")) as f:
        assert [r["counts"] for r in records("-", stdin=f.read())] == [[3, 3, 3, 3], [6, 0, 3, 3]]
    # The library's exports: split, served counts and tokens carried; CSV and JSONL alike.
    layer = moe.Layer(8, 8, 4, 2, capacity_factor=0.5)
    rng = np.random.default_rng(5)
    layer.set_weights(router=rng.standard_normal((8, 4)) * 3, w1=np.ones((4, 8, 8)),
                      w2=np.ones((4, 8, 8)))
    csv, jsonl = tmp_path / "m.csv", tmp_path / "m.jsonl"
    with open(csv, "w") as c, open(jsonl, "w") as j:
        c.write(layer.export("csv_header"))
        for _ in range(2):
            layer.forward(rng.standard_normal((24, 8)))
            r = layer.routing()
            c.write(layer.export("csv_row"))
            j.write(layer.export("jsonl"))
    from_jsonl, from_csv = records(str(jsonl)), records(str(csv))
    assert from_jsonl == from_csv
    last = from_jsonl[-1]
    assert last["split"] == "train" and last["tokens"] == 24 and sum(last["counts"]) == 48
    assert last["counts"] == np.bincount(r["experts"].ravel(), minlength=4).tolist()
    assert last["served"] == np.bincount(r["experts"][~r["dropped"]], minlength=4).tolist()
    # --lenient skips what the report would skip; a layer changing width is refused.
    mixed = '{"counts": [1, 2], "tokens": 3}\nnot json\n{"counts": [1, 2, 3]}\n{"counts": [5, 6]}\n'
    strict = run("--records", "-", stdin=mixed)
    assert strict.returncode == 1 and "<stdin>:2" in strict.stderr
    lenient = records("--lenient", "-", stdin=mixed)
    assert [r["counts"] for r in lenient] == [[1, 2], [5, 6]] and lenient[0]["tokens"] == 3
    assert run("--records", "--summary", "x").returncode == 2
    assert run("--records", "--compare", "a", "b").returncode == 2
    empty = tmp_path / "empty.csv"
    empty.write_text("step,layer,e0\n")
    result = run("--records", str(empty))
    assert result.returncode == 1 and "no records" in result.stderr
