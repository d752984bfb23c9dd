"""Property tests of the telemetry exports over generated layer names: whatever a name
holds (commas, quotes, line breaks, control bytes, backslashes, invalid UTF-8, any
Unicode), every JSONL line parses as JSON, the CSV parses as exactly one header and one
row per layer with the name in its column, and a whole model's Prometheus text passes
`promtool check metrics`. The parsers are Python's json and csv modules and promtool,
not this library."""
import csv
import io
import json
import random
import shutil
import subprocess

import numpy as np
import pytest

import moe

PIECES = [",", '"', "'", "\n", "\r", "\r\n", "\t", "\\", "\\n", "\x00"[:0], "\x01", "\x1b[31m",
          "\x7f", "{", "}", "=", " ", "layer", "é", "専門家", "🙂", "\u2028", "\ufffd",
          "\udcff", "\udcc3\udca9", "\udced\udca0\udc80", "# HELP", "moe_load_cv{"]


def generated_names(count, seed=11):
    rng = random.Random(seed)
    names = set()
    while len(names) < count:
        names.add("".join(rng.choice(PIECES) for _ in range(rng.randint(1, 6))))
    return sorted(names)


def expected(name):
    """The name as an export must show it: invalid UTF-8 bytes as U+FFFD."""
    raw = name.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "replace")


def layers_named(names, E=4):
    rng = np.random.default_rng(0)
    out = []
    for name in names:
        layer = moe.Layer(8, 8, E, 2, dtype="float64")
        layer.set_weights(router=rng.standard_normal((8, E)), w1=rng.standard_normal((E, 8, 8)),
                          w2=rng.standard_normal((E, 8, 8)))
        layer.set_name(name)
        layer.forward(rng.standard_normal((16, 8)))
        out.append(layer)
    return out


@pytest.fixture(scope="module")
def named_layers():
    names = generated_names(60)
    return names, layers_named(names)


def test_every_jsonl_line_parses_and_keeps_the_name(named_layers):
    names, layers = named_layers
    for name, layer in zip(names, layers):
        text = layer.export("jsonl")
        # One line for every line splitter, str.splitlines (U+2028, NEL, ...) included.
        lines = text.splitlines()
        assert len(lines) == 1 and text.endswith("\n"), repr(text[:200])
        record = json.loads(lines[0])
        assert record["layer"] == expected(name)
    group_text = moe.Group(layers).export("jsonl")
    records = [json.loads(line) for line in group_text.splitlines()]
    assert [r["layer"] for r in records] == [expected(n) for n in names]


def test_every_csv_row_parses_with_the_name_in_its_column(named_layers):
    names, layers = named_layers
    for name, layer in zip(names, layers):
        rows = list(csv.reader(io.StringIO(layer.export("csv"), newline="")))
        assert len(rows) == 2 and len(rows[0]) == len(rows[1]), rows[:1]
        assert rows[0][1] == "layer" and rows[1][1] == expected(name)
    group = moe.Group(layers)
    rows = list(csv.reader(io.StringIO(group.export("csv"), newline="")))
    assert len(rows) == len(names) + 1
    assert {len(r) for r in rows} == {len(rows[0])}
    assert [r[1] for r in rows[1:]] == [expected(n) for n in names]


def test_csv_header_once_then_rows(named_layers, tmp_path):
    names, layers = named_layers
    path = tmp_path / "metrics.csv"
    with open(path, "w", newline="") as f:
        f.write(layers[0].export("csv_header"))
        for _ in range(3):
            for layer in layers[:5]:
                f.write(layer.export("csv_row"))
    rows = list(csv.reader(open(path, newline="")))
    assert len(rows) == 1 + 15 and rows[0][:2] == ["step", "layer"]
    assert sum(1 for r in rows if r[:2] == ["step", "layer"]) == 1
    assert [r[1] for r in rows[1:6]] == [expected(n) for n in names[:5]]
    assert layers[0].export("csv") == layers[0].export("csv_header") + layers[0].export("csv_row")


def test_a_models_prometheus_export_passes_promtool(named_layers):
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is needed; scripts/setup.sh installs it"
    names, layers = named_layers
    for scope in ("last", "window"):
        text = moe.Group(layers).export("prometheus", scope=scope)
        assert text.count("# HELP moe_load_cv ") == 1
        assert text.count("\nmoe_load_cv{") == len(names)
        result = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                                capture_output=True)
        assert result.returncode == 0, (result.stdout + result.stderr).decode()[:2000]
    # Two layers' own exports, concatenated, repeat each HELP line: the model-level
    # export is the one to serve.
    both = layers[0].export("prometheus") + layers[1].export("prometheus")
    assert both.count("# HELP moe_load_cv ") == 2


def test_group_exports_refuse_what_cannot_be_written():
    a, b = layers_named(["same", "same"])
    with pytest.raises(moe.MoeError, match="named 'same'"):
        moe.Group([a, b]).export("prometheus")
    # Names that differ only in invalid bytes are the same once repaired.
    c, d = layers_named(["x\udcff", "x\ufffd"])
    with pytest.raises(moe.MoeError, match="as exported"):
        moe.Group([c, d]).export("jsonl")
    b.set_name("other")
    assert moe.Group([a, b]).export("prometheus")
    wide = layers_named(["wide"], E=6)[0]
    with pytest.raises(moe.MoeError, match="one header"):
        moe.Group([a, wide]).export("csv")
    assert len(moe.Group([a, wide]).export("jsonl").splitlines()) == 2
    assert moe.Group().export("prometheus").count("# HELP") > 10  # no layer: families only
    with pytest.raises(ValueError):
        a.set_name("nul\0inside")
    a.set_name("lone \ud800 surrogate")  # its code units, repaired on export
    assert json.loads(a.export("jsonl"))["layer"] == "lone \ufffd\ufffd\ufffd surrogate"
