"""examples/torch_lm end to end, short: the byte-level MoE language model trains on
Debian's fortunes with moe.torch.MoE and with its pure-PyTorch twin from the same
initialisation and data order; the two loss curves agree, the loss falls, and the
per-language expert shares and the W&B-named metrics are written."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "torch_lm", "train.py")


def test_the_language_model_trains_alike_through_both_implementations(tmp_path):
    out = tmp_path / "lm"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, EXAMPLE, "--steps", "80", "--eval_every", "40", "--d_model", "32",
         "--d_ff", "64", "--ctx", "32", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    ours, twin = summary["runs"]["moe.torch"], summary["runs"]["pure PyTorch"]
    assert summary["max_relative_loss_difference"] < 1e-4
    assert ours["train_loss"][-1] < 0.8 * ours["train_loss"][0]
    assert [s for s, _ in ours["held_out_loss"]] == [40, 80]
    assert all(n > 10000 for train, held in summary["corpus_bytes"].values() for n in (train, held))
    for layer in summary["experts_by_language"].values():
        assert set(layer) == {"en", "de", "es", "it"}
        for language in layer.values():
            assert abs(sum(language["share"]) - 1) < 1e-9
    assert "router/max_frac_mean" in summary["router_metrics"]
    assert (out / "losses.png").stat().st_size > 10000
    assert (out / "experts_by_language.png").stat().st_size > 10000
