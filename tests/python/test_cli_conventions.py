"""The conventions every tool keeps (docs/tools.md, after clig.dev): --version and --help
exit 0; a bad command line, a bad value or a bad --config exits 2 with a message and
never runs; a failure at run time exits 1; --json prints JSON on stdout; no argument is
ever handed to a shell. And moe-train's own first-contact defects: short runs, the
progress line at the start of the final window, quotes in the output path."""
import json
import math
import os
import re
import subprocess

import pytest

BUILD = os.path.join(os.path.dirname(__file__), "..", "..", "build", "tools")
TOOLS = {
    "moe-train": os.environ.get("MOE_TRAIN", os.path.join(BUILD, "moe-train")),
    "moe-stats": os.environ.get("MOE_STATS", os.path.join(BUILD, "moe-stats")),
    "moe-bench": os.environ.get("MOE_BENCH", os.path.join(BUILD, "moe-bench")),
}
# Where moe-bench is not built (no oneDNN) its checks cannot run; say so.
AVAILABLE = {name: os.path.exists(path) for name, path in TOOLS.items()}


def run(tool, *args, cwd=None):
    if not AVAILABLE[tool]:
        pytest.skip(f"{tool} is not built here ({TOOLS[tool]})")
    return subprocess.run([TOOLS[tool], *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_version_and_help_exit_zero(tool):
    version = run(tool, "--version")
    assert version.returncode == 0, version.stderr
    name, number = version.stdout.split()
    assert name == tool and number.count(".") == 2
    helped = run(tool, "--help")
    assert helped.returncode == 0 and "--version" in helped.stdout and "--json" in helped.stdout


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_bad_usage_exits_two_with_a_message(tool):
    for args in (["--no-such-flag"], ["--json=maybe"]):
        result = run(tool, *args)
        assert result.returncode == 2, (args, result.returncode, result.stderr)
        assert result.stderr.startswith(f"{tool}: ") and "--help" in result.stderr


@pytest.mark.parametrize("args", [
    ["--router_noise_type", "bogus"], ["--learning_rate", "-1"], ["--learning_rate", "nan"],
    ["--learning_rate", "inf"], ["--top_k", "9"], ["--top_k", "0"], ["--capacity_factor", "-0.5"],
    ["--router", "sofmax"], ["--activation", "tanh"], ["--backend", "no-such-backend"],
    ["--max_iters", "0"], ["--batch_size", "-3"], ["--router_temp_init", "0"],
    ["--layers", "1.5"], ["--seed", "-1"],
    # Too large for the type: refused, not clamped to its largest value.
    ["--seed", "99999999999999999999"], ["--n_experts", "99999999999999999999"],
    ["--layers", "9223372036854775807"], ["--d_model", "1e3"],
    # Sizes this machine's memory cannot hold: refused up front, not minutes later.
    ["--d_model", "65536", "--n_experts", "1024", "--layers", "64"],
    # Contradictory flags.
    ["--capacity_factor", "1.25", "--dropless"],
])
def test_moe_train_refuses_bad_values(tmp_path, args):
    result = run("moe-train", "--out", str(tmp_path / "never"), *args)
    assert result.returncode == 2, (args, result.stderr)
    assert args[0] in result.stderr
    assert not (tmp_path / "never").exists()  # refused before anything ran


def test_moe_train_names_the_line_of_an_unknown_config_key(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("n_experts = 4\n# a comment\nno_such_key = 1\n")
    result = run("moe-train", "--config", str(config))
    assert result.returncode == 2 and "run.toml:3" in result.stderr and "no_such_key" in result.stderr


@pytest.mark.parametrize("text", [
    "n_experts = 4\nno_such_key = 1\n",              # an unknown key
    "n_experts = 4\nthis line has no equals sign\n",  # not key = value
    "[training]\nn_experts = 4\n",                  # sections mean nothing here
    "router_noise_type = bogus\n",                  # a bad value from the file
])
def test_moe_train_refuses_bad_config_files(tmp_path, text):
    config = tmp_path / "run.toml"
    config.write_text(text)
    result = run("moe-train", "--config", str(config), "--out", str(tmp_path / "never"))
    assert result.returncode == 2, (text, result.stderr)
    assert not (tmp_path / "never").exists()


def test_moe_train_refuses_binary_config(tmp_path):
    config = tmp_path / "garbage.toml"
    config.write_bytes(bytes(range(256)) * 4)
    for flag in (["--config", str(config)], [f"--config={config}"]):
        result = run("moe-train", *flag, "--out", str(tmp_path / "never"))
        assert result.returncode == 2 and "garbage.toml:1" in result.stderr, result.stderr
    missing = run("moe-train", "--config", str(tmp_path / "missing.toml"))
    assert missing.returncode == 2 and "missing.toml" in missing.stderr


def test_runtime_failures_exit_one(tmp_path):
    missing = run("moe-stats", str(tmp_path / "missing.log"))
    assert missing.returncode == 1 and "missing.log" in missing.stderr
    # Nothing to report is a failure too: a directory, an empty file, a header alone.
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("step,layer,e0,e1\n")
    for path in (tmp_path, tmp_path / "empty.csv", tmp_path / "header.csv", "/dev/null"):
        result = run("moe-stats", str(path))
        assert result.returncode == 1 and result.stderr.startswith("moe-stats: "), (path, result)
    blocked = tmp_path / "file"
    blocked.write_text("a file where moe-train wants a folder")
    result = run("moe-train", "--max_iters", "2", "--out", str(blocked / "run"))
    assert result.returncode == 1 and result.stderr.startswith("moe-train: ")


def parse_progress(stderr):
    """The progress lines ("iter 80 | loss 0.2 | lr .. | .. tok/s | r_max 0.2 act_min 8
    col 0") as {name: text}."""
    lines = [l for l in stderr.splitlines() if l.startswith("iter ")]
    return [dict(re.findall(r"\b(iter|loss|lr|r_max|act_min|col) +(\S+)", l)) for l in lines]


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 10, 20, 29, 30])
def test_moe_train_short_runs_report(tmp_path, steps):
    out = tmp_path / "run"
    result = run("moe-train", "--max_iters", str(steps), "--out", str(out), "--no-dashboard")
    assert result.returncode == 0, result.stderr
    assert "nan" not in result.stderr.lower() and "nan" not in result.stdout.lower()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == steps
    for layer in summary["layers"]:
        assert layer["final_window"]["max_frac"] is not None
        assert layer["verdicts"]["balance"]["label"] != "no_data"


def test_moe_train_progress_line_at_the_final_window(tmp_path):
    # 100 steps: the final window starts at step 80, which is also a logged step.
    out = tmp_path / "run"
    result = run("moe-train", "--max_iters", "100", "--out", str(out), "--no-dashboard")
    assert result.returncode == 0, result.stderr
    progress = parse_progress(result.stderr)
    assert [int(p["iter"]) for p in progress if p["iter"] == "80"] == [80]
    assert all({"iter", "loss", "r_max", "act_min"} <= set(p) for p in progress), progress
    for p in progress:
        assert math.isfinite(float(p["r_max"])) and math.isfinite(float(p["act_min"])), p
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        if r.get("kind") == "train":
            assert r["max_frac_max"] is not None and math.isfinite(r["max_frac_max"]), r
        if r.get("split") == "train":  # every logged step has its layers' figures (no gap)
            assert r["max_frac"] is not None, r


def test_moe_train_json_and_quoted_output_path(tmp_path):
    # A quote in the folder name must neither lose the dashboard nor reach a shell.
    out = tmp_path / "Bob's run" / "x'; touch PWNED; echo '"
    result = run("moe-train", "--max_iters", "4", "--log_interval", "2", "--out", str(out),
                 "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # --json: stdout holds the summary alone
    assert summary == json.loads((out / "summary.json").read_text())
    png = (out / "dashboard.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob("PWNED"))
    assert "health report" in result.stderr


def test_moe_train_says_when_the_dashboard_failed(tmp_path):
    out = tmp_path / "run"
    (out / "dashboard.png").mkdir(parents=True)  # matplotlib cannot write here
    result = run("moe-train", "--max_iters", "2", "--out", str(out))
    assert result.returncode == 1
    assert "dashboard was not drawn" in result.stderr
    assert "dashboard.png" not in result.stdout.split("wrote", 1)[-1]
    assert (out / "summary.json").exists()


def test_json_means_json_on_stdout(tmp_path):
    counts = tmp_path / "counts.csv"
    counts.write_text("step,layer,e0,e1\n1,0,3,5\n")
    stats = run("moe-stats", "--json", str(counts))
    assert stats.returncode == 0 and json.loads(stats.stdout)[0]["layer"] == "0"
    bench = run("moe-bench", "--json", "--shape", "decode", "--iters", "1", "--warmup", "0",
                "--no-dense", "--backend", "cpu_ref")
    assert bench.returncode == 0, bench.stderr
    (row,) = json.loads(bench.stdout)
    assert row["shape"] == "decode" and row["forward_ms"] > 0
    assert "decode" in bench.stderr  # the human table moved to stderr


def test_results_that_cannot_be_written_are_a_failure(tmp_path):
    counts = tmp_path / "counts.csv"
    counts.write_text("step,layer,e0,e1\n1,0,3,5\n")
    commands = [("moe-stats", [str(counts)]),
                ("moe-train", ["--max_iters", "2", "--no-dashboard", "--json",
                               "--out", str(tmp_path / "run")]),
                ("moe-bench", ["--gemm-ceiling", "16", "--iters", "1", "--warmup", "0"])]
    for tool, args in commands:
        if not AVAILABLE[tool]:
            continue
        with open("/dev/full", "w") as full:
            result = subprocess.run([TOOLS[tool], *args], stdout=full, stderr=subprocess.PIPE,
                                    text=True, timeout=300)
        assert result.returncode == 1 and "cannot write" in result.stderr, (tool, result.stderr)


def test_moe_bench_refuses_flags_that_would_be_ignored():
    result = run("moe-bench", "--gemm-ceiling", "16", "--shape", "decode")
    assert result.returncode == 2 and "--gemm-ceiling" in result.stderr


def test_moe_train_losses_are_one_measure(tmp_path):
    # The health report's "loss A -> B" compares the same quantity (fit + aux) at the
    # first and the last step: A is the first progress line's loss.
    out = tmp_path / "run"
    result = run("moe-train", "--max_iters", "3", "--out", str(out), "--no-dashboard")
    first = parse_progress(result.stderr)[0]
    summary = json.loads((out / "summary.json").read_text())
    assert f"{summary['initial_loss']:.4f}" == first["loss"]
    assert summary["options"]["backend_resolved"] == "cpu_ref"
