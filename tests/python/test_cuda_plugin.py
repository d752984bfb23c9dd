"""The cuda backend as a plugin (docs/architecture.md, "The cuda plugin").

libmoe links no CUDA library; libmoe_cuda.so.0 beside it is opened the first time a
layer asks for backend "cuda". Each case runs in its own process, since a process loads
(or fails to load) the plugin once. The libmoe under test is copied into a scratch
folder, alone or with a broken plugin, so that what lies beside it is the test's choice.
"""
import _ctypes
import os
import shutil
import subprocess
import sys

import pytest

LIBMOE = os.environ.get("MOE_LIBRARY", "")
HERE = os.path.dirname(os.path.abspath(__file__))
BINDING = os.path.join(HERE, "..", "..", "bindings", "python")
PLUGIN = "libmoe_cuda.so.0"

pytestmark = pytest.mark.skipif(not os.path.isfile(LIBMOE), reason="MOE_LIBRARY not set")

# Lists the backends, then asks for a cuda layer; prints both outcomes on two lines.
PROBE = r"""
import sys
sys.path.insert(0, sys.argv[1])
import moe
print(",".join(moe.backends()))
try:
    moe.Layer(8, 16, 4, 2, backend="cuda")
    print("created")
except moe.MoeError as e:
    print(e)
"""


def probe(library):
    env = dict(os.environ, MOE_LIBRARY=library)
    out = subprocess.run([sys.executable, "-c", PROBE, BINDING], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    backends, outcome = out.stdout.strip().split("\n")
    return backends.split(","), outcome


def needed_libraries(path):
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True)
    return [line.split("[")[1].rstrip("]") for line in out.stdout.splitlines() if "(NEEDED)" in line]


def lone_copy(tmp_path, plugin_source=None):
    """libmoe copied into a scratch folder, with `plugin_source` beside it as the plugin."""
    shutil.copy(LIBMOE, tmp_path / "libmoe.so.0")
    if plugin_source is not None:
        shutil.copy(plugin_source, tmp_path / PLUGIN)
    return str(tmp_path / "libmoe.so.0")


def test_libmoe_links_no_cuda_library():
    needed = needed_libraries(os.path.realpath(LIBMOE))
    assert not [n for n in needed if "cuda" in n or "cublas" in n], needed


def test_the_build_lists_cuda_exactly_when_its_plugin_is_beside_libmoe():
    plugin = os.path.join(os.path.dirname(os.path.realpath(LIBMOE)), PLUGIN)
    backends, outcome = probe(LIBMOE)
    if not os.path.exists(plugin):
        assert "cuda" not in backends
        return
    assert backends[0] == "cuda" and backends[-1] == "cpu_ref", backends
    needed = needed_libraries(plugin)
    assert any(n.startswith("libcudart") for n in needed), needed
    # Loaded: a layer is created where a GPU is, else refused for this machine's sake.
    # (The runtime's own reason follows in parentheses: no device, or no usable driver.)
    assert outcome == "created" or outcome.startswith(
        "MOE_STATUS_UNSUPPORTED: moe_layer_create: backend 'cuda' does not support this machine: "
        "no usable CUDA device (cudaGetDeviceCount"), outcome


def test_without_the_plugin_cuda_is_not_listed_and_asking_for_it_says_why(tmp_path):
    backends, outcome = probe(lone_copy(tmp_path))
    assert "cuda" not in backends and backends[-1] == "cpu_ref", backends
    assert outcome.startswith("MOE_STATUS_UNSUPPORTED: moe_layer_create: backend 'cuda' is a plugin, "
                              f"{PLUGIN}, and there is none beside libmoe (in "), outcome
    assert os.path.realpath(str(tmp_path)) in outcome and "MOE_WITH_CUDA=ON" in outcome, outcome


def refusal(tmp_path, why):
    return (f"MOE_STATUS_UNSUPPORTED: moe_layer_create: backend 'cuda': its plugin "
            f"{os.path.realpath(str(tmp_path))}/{PLUGIN} {why} (reinstall the plugin built with "
            "this libmoe)")


@pytest.mark.parametrize("content", [b"", b"\x7fELF not really\n" * 8, b"#!/bin/sh\necho hi\n"])
def test_a_plugin_file_that_is_not_a_library(tmp_path, content):
    junk = tmp_path / "junk"
    junk.write_bytes(content)
    backends, outcome = probe(lone_copy(tmp_path, junk))
    assert backends[0] == "cuda", backends  # listed: its file is there
    assert outcome == refusal(tmp_path, "is not a 64-bit ELF shared library"), outcome


def test_a_truncated_plugin_is_refused_before_the_loader_sees_it(tmp_path):
    # (dlopen itself dies of SIGBUS on a library cut short, as a half-copied install is.)
    truncated = tmp_path / "truncated"
    with open(_ctypes.__file__, "rb") as f:
        truncated.write_bytes(f.read(4096))
    backends, outcome = probe(lone_copy(tmp_path, truncated))
    assert outcome.startswith(refusal(tmp_path, "is truncated (4096 bytes; its headers and "
                                                "segments need ").split(" (reinstall")[0]), outcome
    assert outcome.endswith(" (reinstall the plugin built with this libmoe)"), outcome


def test_a_library_of_another_machine(tmp_path):
    other = bytearray(open(_ctypes.__file__, "rb").read())
    other[18:20] = (183).to_bytes(2, "little")  # e_machine: EM_AARCH64 (or x86-64 on aarch64)
    if os.uname().machine == "aarch64":
        other[18:20] = (62).to_bytes(2, "little")
    (tmp_path / "other").write_bytes(bytes(other))
    backends, outcome = probe(lone_copy(tmp_path, tmp_path / "other"))
    assert "is a shared library for another machine (ELF machine " in outcome, outcome


@pytest.mark.parametrize("kind", ["directory", "fifo", "broken link"])
def test_something_else_where_the_plugin_belongs_is_named_not_missed(tmp_path, kind):
    library = lone_copy(tmp_path)
    where = tmp_path / PLUGIN
    if kind == "directory":
        where.mkdir()
    elif kind == "fifo":
        os.mkfifo(where)  # the loader would block on it
    else:
        where.symlink_to(tmp_path / "gone")
    backends, outcome = probe(library)
    assert "cuda" not in backends, backends
    assert outcome == (f"MOE_STATUS_UNSUPPORTED: moe_layer_create: backend 'cuda': "
                       f"{os.path.realpath(str(tmp_path))}/{PLUGIN}, where its plugin belongs, is "
                       "not a regular file (or a link to one): a directory, device, FIFO or broken "
                       "link is there"), outcome


def test_a_library_that_is_not_a_plugin(tmp_path):
    # A shared library of this interpreter, with no moe entry point.
    backends, outcome = probe(lone_copy(tmp_path, _ctypes.__file__))
    assert outcome.endswith(f"{PLUGIN} is not a moe backend plugin (it has no "
                            "moe_plugin_backend)"), outcome


def test_a_plugin_built_for_another_libmoe(tmp_path):
    mismatched = os.environ.get("MOE_MISMATCHED_PLUGIN")
    if not mismatched:
        pytest.skip("MOE_MISMATCHED_PLUGIN not set (the build's tests/ provides it)")
    backends, outcome = probe(lone_copy(tmp_path, mismatched))
    # What differs is spelled out: the stand-in says it is moe 9.9.9 by another compiler.
    assert (f"{PLUGIN} was built for another libmoe: install the plugin built with this libmoe "
            "(the plugin: moe 9.9.9, plugin interface 1, compiler another compiler, sizes "
            "1/2/3/8; this libmoe: moe 0.1.0, plugin interface 1, compiler ") in outcome, outcome


def test_every_refusal_repeats_and_leaves_the_library_usable(tmp_path):
    code = PROBE + r"""
for _ in range(2):
    try:
        moe.Layer(8, 16, 4, 2, backend="cuda")
    except moe.MoeError as e:
        print(e)
layer = moe.Layer(8, 16, 4, 2, backend="cpu_ref")
print(layer.config()["backend"])
"""
    env = dict(os.environ, MOE_LIBRARY=lone_copy(tmp_path))
    out = subprocess.run([sys.executable, "-c", code, BINDING], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().split("\n")
    assert lines[2] == lines[3] and "none beside libmoe" in lines[2], lines
    assert lines[4] == "cpu_ref", lines
