"""The CPU benchmark in one run: moe-bench (onednn, fp32 and bf16, with its dense
oneDNN FFN baseline) and PyTorch eager (bench/torch_moe_eager.py, Debian's torch with
OpenBLAS) on the same shapes and thread count, then the ratios and the goals of the
onednn backend, as a markdown report (stdout) and JSON (--json).

    python3 bench/cpu_report.py --moe-bench build/tools/moe-bench --threads 2
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

SHAPES = {  # name: (T, d, d_ff, E, k, activation), as tools/moe-bench/shapes.hpp
    "mixtral-small": (4096, 512, 1024, 8, 2, "gelu"),
    "fine-grained": (4096, 512, 256, 64, 8, "swiglu"),
    "decode": (64, 512, 1024, 8, 2, "gelu"),
}
HERE = os.path.dirname(os.path.abspath(__file__))


def run_moe_bench(binary, dtype, threads, iters, shapes):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [binary, "--dtype", dtype, "--iters", str(iters), "--json", out.name]
        for s in shapes:
            cmd += ["--shape", s]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run(cmd, check=True, env=env, stdout=sys.stderr)
        with open(out.name) as f:
            return {r["shape"]: r for r in json.load(f)}


def run_torch(python, shape, threads, iters):
    T, d, dff, E, k, act = SHAPES[shape]
    cmd = [python, os.path.join(HERE, "torch_moe_eager.py"), "--device", "cpu",
           "--dtype", "float32", "--threads", str(threads), "--iters", str(iters),
           "--tokens", str(T), "--d", str(d), "--dff", str(dff), "--experts", str(E),
           "--topk", str(k), "--activation", act]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--moe-bench", default="build/tools/moe-bench")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--torch-iters", type=int, default=3)
    p.add_argument("--shape", action="append", choices=list(SHAPES))
    p.add_argument("--python", default="/usr/bin/python3",
                   help="Python with Debian's python3-torch")
    p.add_argument("--json")
    a = p.parse_args()
    shapes = a.shape or list(SHAPES)

    f32 = run_moe_bench(a.moe_bench, "f32", a.threads, a.iters, shapes)
    bf16 = run_moe_bench(a.moe_bench, "bf16", a.threads, a.iters, shapes)
    torch = {s: run_torch(a.python, s, a.threads, a.torch_iters) for s in shapes}

    rows, goals = [], []
    for s in shapes:
        r32, r16, t = f32[s], bf16[s], torch[s]
        torch_train = t["train_ms"]
        rows.append({
            "shape": s, "f32": r32, "bf16": r16, "torch": t,
            "train_vs_torch": torch_train / r32["train_ms"],
            "forward_vs_torch": t["forward_ms"] / r32["forward_ms"],
            "bf16_vs_f32_train": r32["train_ms"] / r16["train_ms"],
        })
    by = {r["shape"]: r for r in rows}
    if "mixtral-small" in by:
        m = by["mixtral-small"]
        goals += [
            ("mixtral-small fp32 forward vs dense FFN", m["f32"]["forward_vs_dense"], 0.80),
            ("mixtral-small fp32 forward+backward vs PyTorch eager", m["train_vs_torch"], 2.5),
            ("mixtral-small non-expert share of layer time (at most)",
             m["f32"]["non_expert_share_train"], 0.10),
            ("mixtral-small bf16 vs fp32 throughput (forward+backward)",
             m["bf16_vs_f32_train"], 1.5),
        ]
    for s in ("fine-grained", "decode"):
        if s in by:
            goals.append((f"{s} fp32 forward+backward vs PyTorch eager",
                          by[s]["train_vs_torch"], 3.0))

    print(f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs; threads = {a.threads}; "
          f"{torch[shapes[0]]['framework']}; moe-bench median of {a.iters}, "
          f"PyTorch median of {a.torch_iters}.\n")
    print("| shape | dtype | forward ms | backward ms | fwd+bwd ms | fwd GFLOP/s | "
          "fwd+bwd GFLOP/s | fwd vs dense | fwd+bwd vs dense | non-expert share |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for dt in ("f32", "bf16"):
            x = r[dt]
            print(f"| {r['shape']} | {dt} | {x['forward_ms']:.2f} | {x['backward_ms']:.2f} | "
                  f"{x['train_ms']:.2f} | {x['forward_gflops']:.0f} | {x['train_gflops']:.0f} | "
                  f"{x['forward_vs_dense']:.2f}x | {x['train_vs_dense']:.2f}x | "
                  f"{100 * x['non_expert_share_train']:.1f}% |")
    print("\n| shape | PyTorch eager fwd ms | PyTorch fwd+bwd ms | onednn fp32 fwd speed-up | "
          "onednn fp32 fwd+bwd speed-up |")
    print("|---|---|---|---|---|")
    for r in rows:
        t = r["torch"]
        print(f"| {r['shape']} | {t['forward_ms']:.1f} | {t['train_ms']:.1f} | "
              f"{r['forward_vs_torch']:.1f}x | {r['train_vs_torch']:.1f}x |")
    print("\nStage shares (fp32; forward | backward):\n")
    for r in rows:
        x = r["f32"]
        fw = ", ".join(f"{k} {100 * v:.1f}%" for k, v in x["forward_stages"].items())
        bw = ", ".join(f"{k} {100 * v:.1f}%" for k, v in x["backward_stages"].items())
        print(f"- {r['shape']}: {fw} | {bw}")
    print("\n| goal | measured | target | met |")
    print("|---|---|---|---|")
    results = []
    for name, value, target in goals:
        at_most = "(at most)" in name
        met = value <= target if at_most else value >= target
        results.append({"goal": name, "measured": value, "target": target, "met": met})
        shown = f"{100 * value:.1f}%" if at_most else f"{value:.2f}x"
        target_shown = f"{100 * target:.0f}%" if at_most else f"{target}x"
        print(f"| {name} | {shown} | {target_shown} | {'yes' if met else 'NO'} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"threads": a.threads, "cpu": cpu_name(), "rows": rows, "goals": results},
                      f, indent=2)


if __name__ == "__main__":
    main()
