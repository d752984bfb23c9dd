"""moe-stats --html, opened in a real browser (Debian's headless Chromium, which
scripts/setup.sh installs): the page loads with no console message and no script
error, draws every chart, holds nothing from the network, survives a hostile layer
name, and renders a screenshot that is not blank."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

BINARY = os.environ.get("MOE_STATS", os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "build", "tools", "moe-stats"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(tmp_path, *args):
    # Without the sanitizer preload of the suite's second run: Chromium is not ours.
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    env["HOME"] = str(tmp_path)
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                           "--enable-logging=stderr", "--v=0", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_html_report_opens_cleanly_in_headless_chromium(tmp_path):
    assert CHROMIUM, "chromium is missing: scripts/setup.sh installs it"
    rng = np.random.default_rng(9)
    hostile = "</script><script>document.title='owned'</script>"
    log = tmp_path / "run.csv"
    with open(log, "w") as f:
        for step in range(300):  # past 256 steps: windows of steps
            for layer, skew in (("0", 0.0), ('"' + hostile.replace('"', '""') + '"', 3.0)):
                p = np.exp(skew * np.linspace(0, 1, 16))
                counts = rng.multinomial(4096, p / p.sum())
                f.write(f"{step},{layer}," + ",".join(map(str, counts)) + "\n")
    page = tmp_path / "report.html"
    result = subprocess.run([BINARY, "--ep-ranks", "4", "--html", page, log],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    html = page.read_text()
    # Self-contained: no URL, no external resource, one inline script.
    assert not re.search(r"(src|href)\s*=|https?://|@import|url\(", html)
    assert html.count("<script>") == 1 and html.count("</script>") == 1

    shot = tmp_path / "shot.png"
    loaded = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1800",
                      page.as_uri())
    assert loaded.returncode == 0, loaded.stderr
    console = [l for l in loaded.stderr.splitlines() if "CONSOLE" in l or "Uncaught" in l]
    assert console == [], console

    dom = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    assert 'data-rendered="1"' in body and "data-errors" not in body, body
    assert "owned" not in re.search(r"<title>(.*)</title>", dom.stdout).group(1)
    # The verdict table, a layer x expert map, and each layer's curves and heat map.
    assert dom.stdout.count('data-kind="curves"') == 2
    assert dom.stdout.count('data-kind="heat"') == 3
    assert "collapsed" in dom.stdout or "imbalanced" in dom.stdout or "moderate" in dom.stdout
    assert "balanced" in dom.stdout
    assert "Load by rank" in dom.stdout
    assert hostile.replace("<", "&lt;").replace(">", "&gt;") in dom.stdout

    import matplotlib.image
    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[:2] == (1800, 1280)
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50, "the screenshot is (nearly) blank"
    # The skewed layer's heat map holds strong reds and blues.
    rgb = (pixels[..., :3] * 255).astype(int)
    assert ((rgb[..., 0] > 200) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)).sum() > 100
    assert ((rgb[..., 2] > 200) & (rgb[..., 0] < 80) & (rgb[..., 1] < 80)).sum() > 100


def test_html_needs_one_log(tmp_path):
    result = subprocess.run([BINARY, "--html", tmp_path / "x.html", "a", "b"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--html reports on one log" in result.stderr
    log = tmp_path / "counts.csv"
    log.write_text("1,a,1,2\n")
    result = subprocess.run([BINARY, "--html", tmp_path / "no" / "such" / "dir.html", log],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "cannot write" in result.stderr
