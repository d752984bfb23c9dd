"""PyTorch eager MoE (the usual loop over experts with index_add_), the baseline that
moe-runtime is compared with. Times forward and forward+backward (median of CUDA-event
or wall-clock timings after warm-up) and prints one JSON line, with the BLAS kernel it
ran (bench/blas_info.py). On the CPU run it with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
unset (bench/cpu_report.py does): these machines set them, and they halve OpenBLAS.

    python3 bench/torch_moe_eager.py --device cuda --dtype bfloat16 \
        --tokens 8192 --d 4096 --dff 14336 --experts 8 --topk 2
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from blas_info import blas_record


def moe_eager(x, wr, w1, w2, k, activation):
    probs = torch.softmax((x @ wr).float(), -1)
    top_p, top_e = probs.topk(k, -1)
    top_p = (top_p / top_p.sum(-1, keepdim=True)).to(x.dtype)
    y = torch.zeros_like(x)
    d_ff = w2.shape[1]
    # One view per expert, taken once: indexing w1[e] inside the loop would make autograd
    # build a zero gradient of the whole [E, d, F] stack for every expert (SelectBackward,
    # E^2 traffic: 94% of a fine-grained step); unbind's backward stacks them once, as
    # per-expert parameters (Hugging Face's ModuleList of experts) would.
    w1, w2 = w1.unbind(0), w2.unbind(0)
    for e in range(len(w1)):
        token, slot = torch.nonzero(top_e == e, as_tuple=True)
        if token.numel() == 0:
            continue
        h = x[token] @ w1[e]
        if activation == "swiglu":
            h = F.silu(h[:, :d_ff]) * h[:, d_ff:]
        else:
            h = F.gelu(h)
        y.index_add_(0, token, (h @ w2[e]) * top_p[token, slot, None])
    return y


def timed(fn, device, iters):
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--d", type=int, default=4096)
    p.add_argument("--dff", type=int, default=14336)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--topk", type=int, default=2)
    p.add_argument("--activation", default="swiglu")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    g = torch.Generator(device="cpu").manual_seed(0)
    F_width = 2 * a.dff if a.activation == "swiglu" else a.dff

    def param(*shape, scale):
        return (torch.randn(*shape, generator=g) * scale).to(a.device, dtype).requires_grad_()

    x = param(a.tokens, a.d, scale=1.0)
    wr = param(a.d, a.experts, scale=a.d ** -0.5)
    w1 = param(a.experts, a.d, F_width, scale=a.d ** -0.5)
    w2 = param(a.experts, a.dff, a.d, scale=a.dff ** -0.5)
    dy = torch.randn(a.tokens, a.d, generator=g).to(a.device, dtype)

    def forward():
        with torch.no_grad():
            moe_eager(x, wr, w1, w2, a.topk, a.activation)

    def train():
        y = moe_eager(x, wr, w1, w2, a.topk, a.activation)
        y.backward(dy)

    fwd = timed(forward, a.device, a.iters)
    both = timed(train, a.device, a.iters)
    print(json.dumps({"framework": f"torch {torch.__version__}", "device": a.device,
                      "dtype": a.dtype, "threads": torch.get_num_threads(), "T": a.tokens,
                      "d": a.d, "d_ff": a.dff, "E": a.experts, "k": a.topk,
                      "activation": a.activation, "forward_ms": fwd, "train_ms": both,
                      **blas_record()}))


if __name__ == "__main__":
    main()
