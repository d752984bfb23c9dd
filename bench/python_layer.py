"""The same layer as moe-bench, driven through the Python binding (numpy arrays in and
out, a saved state per forward): what a Python user of the library gets, and how much
the binding costs over the C++ path at the same shape. Median forward (train=True) and
forward+backward (every gradient) after warm-up; one JSON line.

    OMP_NUM_THREADS=2 /usr/bin/python3 bench/python_layer.py --tokens 4096 --d 512 \\
        --dff 1024 --experts 8 --topk 2 --activation gelu
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bindings",
                                "python"))
import moe  # noqa: E402


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--dff", type=int, default=1024)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--topk", type=int, default=2)
    p.add_argument("--activation", default="gelu")
    p.add_argument("--backend", default="onednn")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    rng = np.random.default_rng(1)
    width = 2 * a.dff if a.activation in ("swiglu", "geglu") else a.dff
    layer = moe.Layer(a.d, a.dff, a.experts, a.topk, activation=a.activation,
                      backend=a.backend)
    f32 = np.float32
    layer.set_weights(
        router=(rng.standard_normal((a.d, a.experts)) / np.sqrt(a.d)).astype(f32),
        w1=(rng.standard_normal((a.experts, a.d, width)) / np.sqrt(a.d)).astype(f32),
        w2=(rng.standard_normal((a.experts, a.dff, a.d)) / np.sqrt(a.dff)).astype(f32))
    x = rng.standard_normal((a.tokens, a.d)).astype(f32)
    dy = rng.standard_normal((a.tokens, a.d)).astype(f32)

    def train():
        layer.forward(x, train=True)
        layer.backward(dy)

    forward_ms = timed(lambda: layer.forward(x, train=True), a.warmup, a.iters)
    train_ms = timed(train, a.warmup, a.iters)
    print(json.dumps({"framework": "moe (Python binding)", "backend":
                      layer.config()["backend"], "library": moe.library_path(),
                      "T": a.tokens, "d": a.d, "d_ff": a.dff, "E": a.experts, "k": a.topk,
                      "activation": a.activation, "forward_ms": forward_ms,
                      "train_ms": train_ms}))


if __name__ == "__main__":
    main()
