"""moe-train end to end (short): it trains (the loss falls), writes metrics.jsonl with
every metric of every layer, summary.json with verdicts, and dashboard.png; it is
deterministic; it refuses bad flags."""
import json
import os
import subprocess

import pytest

import moe

BINARY = os.environ.get("MOE_TRAIN", os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "build", "tools", "moe-train"))


def train(tmp_path, name, *flags, iters=60):
    out = tmp_path / name
    result = subprocess.run([BINARY, "--out", str(out), "--max_iters", str(iters),
                             "--log_interval", "10", "--eval_interval", str(iters // 2), *flags],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out, result


def test_trains_reports_and_draws(tmp_path):
    out, result = train(tmp_path, "run")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_loss"] < 0.5 * summary["initial_loss"], summary
    assert len(summary["layers"]) == 2
    assert summary["layers"][0]["verdicts"]["balance"]["label"] in (
        "balanced", "moderate", "imbalanced", "collapsed")
    assert "health report" in result.stdout and "balance" in result.stdout
    assert "iter     60 | loss" in result.stderr and "eval | step 60" in result.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in records if r.get("kind") == "train"]
    assert [r["step"] for r in train_lines] == [1, 10, 20, 30, 40, 50, 60]
    layer_records = [r for r in records if r.get("split") == "train"]
    assert {r["layer"] for r in layer_records} == {"layer0", "layer1"}
    names = {n for n, _, _ in moe.metric_names()}
    assert names <= set(layer_records[-1])
    assert any(r.get("split") == "eval" for r in records)
    png = (out / "dashboard.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000


def test_deterministic(tmp_path):
    a, _ = train(tmp_path, "a", "--router", "sigmoid", "--bias_update_rate", "0.01")
    b, _ = train(tmp_path, "b", "--router", "sigmoid", "--bias_update_rate", "0.01")
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert sa["final_loss"] == sb["final_loss"] and sa["layers"] == sb["layers"]


def test_other_routers_and_capacity(tmp_path):
    for flags in (["--router", "hash"], ["--router", "expert_choice"],
                  ["--capacity_factor", "1.0", "--router_noise_std_init", "0.5"]):
        out, _ = train(tmp_path, flags[1].replace(".", ""), *flags)
        assert (out / "summary.json").exists()


@pytest.mark.parametrize("flags", [["--n_group", "3"], ["--n_group", "4", "--topk_group", "5"],
                                   ["--router", "hash", "--n_group", "4"],
                                   ["--routed_scaling_factor", "1e7"]])
def test_a_config_the_library_refuses_is_a_usage_error(tmp_path, flags):
    out = tmp_path / "refused"
    result = subprocess.run([BINARY, "--out", str(out), *flags], capture_output=True, text=True)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "MOE_STATUS_INVALID_ARGUMENT" in result.stderr and not out.exists(), result.stderr


def test_balanced_hash_mode_evens_every_step(tmp_path):
    out, _ = train(tmp_path, "balanced", "--router", "hash", "--hash_mode", "balanced")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("split") == "train" and "load_cv" in r]
    assert steps and all(r["load_cv"] == 0 for r in steps), [r["load_cv"] for r in steps]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["hash_mode"] == "balanced", summary["options"]


def test_config_file_and_bad_flags(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("n_experts = 4\ntop_k = 1\n")
    out, result = train(tmp_path, "cfg", "--config", str(config))
    assert "E=4 k=1" in result.stderr
    bad = subprocess.run([BINARY, "--top_k", "9", "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "top_k" in bad.stderr
    assert subprocess.run([BINARY, "--help"], capture_output=True).returncode == 0


@pytest.mark.parametrize("family,flags,expected", [
    ("deepseek_v3", ["--n_experts", "16", "--top_k", "4", "--n_group", "4", "--topk_group", "2"],
     dict(router="sigmoid", activation="swiglu", num_shared_experts=1, aux_loss_scope="sequence",
          aux_loss_unbiased_topk=True, bias_update_rate=0.001, n_experts=16, top_k=4)),
    ("qwen2_moe", ["--n_experts", "12", "--load_balance_alpha", "0.5"],
     dict(num_shared_experts=4, shared_expert_gate=True, renormalize="off", top_k=4,
          load_balance_alpha=0.5)),
    ("qwen3_moe", ["--n_experts", "16"], dict(aux_loss_scope="global", top_k=8)),
    ("switch", ["--n_experts", "8", "--dropless"],
     dict(top_k=1, activation="relu", capacity_factor=0.0, capacity_order="token")),
    ("switch", ["--n_experts", "8"], dict(capacity_factor=1.25, capacity_order="slot_major")),
])
def test_a_preset_sets_the_family_and_flags_given_win(tmp_path, family, flags, expected):
    out, _ = train(tmp_path, family, "--preset", family, "--no-dashboard", *flags, iters=4)
    options = json.loads((out / "summary.json").read_text())["options"]
    assert options["preset"] == family
    for key, value in expected.items():
        assert options[key] == value, key


@pytest.mark.parametrize("flags", [
    ["--capacity_order", "batch_prioritized", "--capacity_factor", "1.0"],
    ["--capacity_order", "random", "--capacity_factor", "1.0"],
    ["--aux_loss_scope", "global"],
    ["--router", "sigmoid", "--bias_update_rate", "0.01", "--aux_loss_unbiased_topk"],
    ["--num_shared_experts", "2", "--shared_d_ff", "16", "--shared_expert_gate"],
])
def test_the_model_family_flags_train(tmp_path, flags):
    out, _ = train(tmp_path, "run", "--no-dashboard", *flags, iters=20)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_loss"] < summary["initial_loss"]


@pytest.mark.parametrize("flags,message", [
    (["--aux_loss_scope", "sequence", "--batch_size", "100"], "must be a multiple of 32"),
    (["--preset", "llama"], "--preset"),
    (["--capacity_order", "random"], "config.capacity_order random"),
    (["--shared_expert_gate"], "config.shared_expert_gate"),
])
def test_bad_model_family_flags_are_usage_errors(tmp_path, flags, message):
    result = subprocess.run([BINARY, "--out", str(tmp_path / "x"), *flags], capture_output=True,
                            text=True)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "x").exists()
