"""PyTorch's fine-grained MoE baseline: tokens sorted by expert, then one
torch._grouped_mm per matrix (the path VeOmni and torchtitan take), with a SwiGLU between
them, and a dense FFN of the same FLOPs through torch.matmul. Times forward and
forward+backward in bfloat16 on the GPU (median of CUDA-event timings after warm-up) and
prints one JSON line per shape, which bench/gpu/fine_grained.sh sets beside
moe-cuda-bench's figures from the same run.

    python3 bench/torch_grouped_mm.py --tokens 32768 --d 2048 --dff 768 --experts 128 --topk 8
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F


def median_ms(body, iters):
    for _ in range(3):
        body()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        body()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def moe_grouped(x, wr, w1, w2, k):
    """Router, top-k, a sort by expert, two grouped products, combine."""
    T, d = x.shape
    E, _, F2 = w1.shape
    probs = torch.softmax((x @ wr).float(), -1)
    top_p, top_e = probs.topk(k, -1)
    top_p = (top_p / top_p.sum(-1, keepdim=True)).to(x.dtype)
    flat_e = top_e.reshape(-1)
    order = torch.argsort(flat_e, stable=True)
    counts = torch.bincount(flat_e, minlength=E)
    offs = torch.cumsum(counts, 0).to(torch.int32)
    xs = x[order // k]
    h = torch._grouped_mm(xs, w1, offs=offs)
    dff = F2 // 2
    h = F.silu(h[:, :dff]) * h[:, dff:]
    ys = torch._grouped_mm(h, w2, offs=offs)
    y = torch.zeros_like(x)
    weighted = ys * top_p.reshape(-1)[order].unsqueeze(1)
    y.index_add_(0, order // k, weighted)
    return y


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--d", type=int, default=2048)
    p.add_argument("--dff", type=int, default=768)
    p.add_argument("--experts", type=int, default=128)
    p.add_argument("--topk", type=int, default=8)
    p.add_argument("--iters", type=int, default=20)
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("torch_grouped_mm.py needs a CUDA device")
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    T, d, dff, E, k = a.tokens, a.d, a.dff, a.experts, a.topk

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=g) * scale).to(dt)

    x = randn(T, d).requires_grad_()
    wr = randn(d, E, scale=d**-0.5).requires_grad_()
    w1 = randn(E, d, 2 * dff, scale=d**-0.5).requires_grad_()
    w2 = randn(E, dff, d, scale=dff**-0.5).requires_grad_()
    dy = randn(T, d)
    expert_flops = 2.0 * T * k * (d * 2 * dff + dff * d)

    with torch.no_grad():
        fwd = median_ms(lambda: moe_grouped(x, wr, w1, w2, k), a.iters)

    def train():
        for t in (x, wr, w1, w2):
            t.grad = None
        moe_grouped(x, wr, w1, w2, k).backward(dy)

    fwd_bwd = median_ms(train, a.iters)

    # Dense FFN of the same FLOPs: the T*k rows through one SwiGLU of width dff.
    xd = randn(T * k, d).requires_grad_()
    d1 = randn(d, 2 * dff, scale=d**-0.5).requires_grad_()
    d2 = randn(dff, d, scale=dff**-0.5).requires_grad_()
    dyd = randn(T * k, d)

    def dense():
        h = xd @ d1
        return (F.silu(h[:, :dff]) * h[:, dff:]) @ d2

    with torch.no_grad():
        dense_fwd = median_ms(dense, a.iters)

    def dense_train():
        for t in (xd, d1, d2):
            t.grad = None
        dense().backward(dyd)

    dense_fwd_bwd = median_ms(dense_train, a.iters)
    print(json.dumps({
        "what": "torch._grouped_mm MoE", "device": torch.cuda.get_device_name(),
        "torch": torch.__version__, "T": T, "d": d, "d_ff": dff, "E": E, "k": k,
        "forward_ms": round(fwd, 4), "train_ms": round(fwd_bwd, 4),
        "dense_forward_ms": round(dense_fwd, 4), "dense_train_ms": round(dense_fwd_bwd, 4),
        "forward_tflops": round(expert_flops / fwd * 1e-9, 1),
        "train_tflops": round(3 * expert_flops / fwd_bwd * 1e-9, 1),
    }), flush=True)


if __name__ == "__main__":
    main()
