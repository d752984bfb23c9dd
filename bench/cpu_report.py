"""The CPU benchmark in one run, with fair baselines (docs/benchmarks.md):

- the machine's float32 GEMM ceiling at 4096^3: oneDNN (moe-bench --gemm-ceiling) and
  OpenBLAS (torch.mm, numpy; bench/blas_ceiling.py), the best of them is the ceiling;
- moe-bench (onednn, fp32 and bf16, with its dense oneDNN FFN of the same FLOPs);
- the same layer through the Python binding (bench/python_layer.py);
- PyTorch eager (bench/torch_moe_eager.py, Debian's torch with OpenBLAS).

Every Python baseline runs with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from its
own environment (these machines set them, and they halve OpenBLAS here) and records the
BLAS kernel it ran. The measurements are repeated --repeats times, interleaved, and each
side's best run is compared with the other's best (PyTorch's own forward+backward varies
by nearly 2x from run to run here). Markdown on stdout; --json writes everything.

    /usr/bin/python3 bench/cpu_report.py --threads 2 --json bench/results/cpu.json
"""
import argparse
import json
import os
import platform
import subprocess
import sys

from blas_info import fair_env

SHAPES = {  # name: (T, d, d_ff, E, k, activation), as tools/moe-bench/shapes.hpp
    "mixtral-small": (4096, 512, 1024, 8, 2, "gelu"),
    "fine-grained": (4096, 512, 256, 64, 8, "swiglu"),
    "decode": (64, 512, 1024, 8, 2, "gelu"),
}
HERE = os.path.dirname(os.path.abspath(__file__))


def log(message):
    print(message, file=sys.stderr, flush=True)


def run_json(cmd, env, last_line=False):
    out = subprocess.run(cmd, check=True, env=env, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1] if last_line else out)


def threads_env(threads, fair=False):
    env = fair_env() if fair else dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def shape_args(shape):
    T, d, dff, E, k, act = SHAPES[shape]
    return ["--tokens", str(T), "--d", str(d), "--dff", str(dff), "--experts", str(E),
            "--topk", str(k), "--activation", act]


def run_moe_bench(binary, dtype, threads, iters, shapes):
    cmd = [binary, "--dtype", dtype, "--iters", str(iters), "--json"]
    for s in shapes:
        cmd += ["--shape", s]
    return {r["shape"]: r for r in run_json(cmd, threads_env(threads))}


def run_python_layer(python, shape, threads, iters):
    cmd = [python, os.path.join(HERE, "python_layer.py"), "--iters", str(iters),
           *shape_args(shape)]
    return run_json(cmd, threads_env(threads), last_line=True)


def run_torch(python, shape, threads, iters):
    cmd = [python, os.path.join(HERE, "torch_moe_eager.py"), "--device", "cpu",
           "--dtype", "float32", "--threads", str(threads), "--iters", str(iters),
           *shape_args(shape)]
    return run_json(cmd, threads_env(threads, fair=True), last_line=True)


def best(runs, key):
    """The run with the smallest `key` (best-of-N), and the spread of `key`."""
    values = [r[key] for r in runs]
    return min(runs, key=lambda r: r[key]), (min(values), max(values))


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
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved runs of every side; each side's best is reported")
    p.add_argument("--shape", action="append", choices=list(SHAPES))
    p.add_argument("--python", default="/usr/bin/python3",
                   help="Python with Debian's python3-torch")
    p.add_argument("--json")
    a = p.parse_args()
    shapes = a.shape or list(SHAPES)

    log("GEMM ceiling: oneDNN")
    onednn_gemm = run_json([a.moe_bench, "--gemm-ceiling", "4096", "--iters", "5", "--json"],
                           threads_env(a.threads))
    log("GEMM ceiling: OpenBLAS (torch.mm, numpy), handicaps unset")
    blas_gemm = run_json([a.python, os.path.join(HERE, "blas_ceiling.py"), "--threads",
                          str(a.threads), "--iters", "3"], threads_env(a.threads, fair=True),
                         last_line=True)
    ceilings = {"onednn": onednn_gemm["gflops"], "openblas torch.mm": blas_gemm["torch_mm"]["gflops"],
                "openblas numpy": blas_gemm["numpy_dot"]["gflops"]}
    ceiling_name = max(ceilings, key=ceilings.get)
    ceiling = ceilings[ceiling_name]

    runs = {s: {"f32": [], "python": [], "torch": []} for s in shapes}
    bf16 = {}
    for repeat in range(a.repeats):
        log(f"repeat {repeat + 1}/{a.repeats}: moe-bench f32")
        for s, r in run_moe_bench(a.moe_bench, "f32", a.threads, a.iters, shapes).items():
            runs[s]["f32"].append(r)
        for s in shapes:
            log(f"repeat {repeat + 1}/{a.repeats}: {s}: Python binding, PyTorch eager")
            runs[s]["python"].append(run_python_layer(a.python, s, a.threads, a.iters))
            runs[s]["torch"].append(run_torch(a.python, s, a.threads, a.torch_iters))
        if repeat == 0:
            log("moe-bench bf16")
            bf16 = run_moe_bench(a.moe_bench, "bf16", a.threads, a.iters, shapes)

    rows = []
    for s in shapes:
        r32, r32_spread = best(runs[s]["f32"], "train_ms")
        py, py_spread = best(runs[s]["python"], "train_ms")
        t, t_spread = best(runs[s]["torch"], "train_ms")
        t_fwd, _ = best(runs[s]["torch"], "forward_ms")
        rows.append({
            "shape": s, "f32": r32, "bf16": bf16[s], "python": py, "torch": t,
            "spread_train_ms": {"moe_cpp": r32_spread, "moe_python": py_spread,
                                "torch": t_spread},
            "train_vs_torch": t["train_ms"] / r32["train_ms"],
            "train_vs_torch_python": t["train_ms"] / py["train_ms"],
            "forward_vs_torch": t_fwd["forward_ms"] / r32["forward_ms"],
            "python_overhead_train": py["train_ms"] / r32["train_ms"] - 1,
            "bf16_vs_f32_train": r32["train_ms"] / bf16[s]["train_ms"],
            "f32_train_of_ceiling": r32["train_gflops"] / ceiling,
            "f32_forward_of_ceiling": r32["forward_gflops"] / ceiling,
        })

    blas = blas_gemm["blas"]
    kernel = ", ".join(f"{b['library']} {b['version']} kernel {b['kernel']}" for b in blas) \
        if isinstance(blas, list) else str(blas)
    torch_blas = rows[0]["torch"].get("blas")
    torch_kernel = ", ".join(f"{b['library']} {b['version']} kernel {b['kernel']}"
                             for b in torch_blas) if isinstance(torch_blas, list) else str(torch_blas)
    print(f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs; threads = {a.threads}; "
          f"{rows[0]['torch']['framework']} ({torch_kernel}; OPENBLAS_* unset in the "
          f"baselines' environment: {rows[0]['torch'].get('env')}); moe-bench median of "
          f"{a.iters}, Python binding median of {a.iters}, PyTorch median of {a.torch_iters}; "
          f"best of {a.repeats} interleaved runs each.\n")
    print("GEMM ceiling, float32 4096^3:\n")
    print("| GEMM | GFLOP/s |")
    print("|---|---|")
    print(f"| oneDNN matmul (moe-bench --gemm-ceiling) | {ceilings['onednn']:.0f} |")
    print(f"| OpenBLAS through torch.mm ({kernel}) | {ceilings['openblas torch.mm']:.0f} |")
    print(f"| OpenBLAS through numpy ({kernel}) | {ceilings['openblas numpy']:.0f} |")
    print(f"\nCeiling: {ceiling:.0f} GFLOP/s ({ceiling_name}).\n")
    print("| shape | dtype | forward ms | backward ms | fwd+bwd ms | fwd GFLOP/s | "
          "fwd+bwd GFLOP/s | fwd+bwd of ceiling | fwd vs dense | fwd+bwd vs dense | "
          "non-expert share |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for dt in ("f32", "bf16"):
            x = r[dt]
            of_ceiling = f"{100 * x['train_gflops'] / ceiling:.0f}%" if dt == "f32" else "-"
            print(f"| {r['shape']} | {dt} | {x['forward_ms']:.2f} | {x['backward_ms']:.2f} | "
                  f"{x['train_ms']:.2f} | {x['forward_gflops']:.0f} | {x['train_gflops']:.0f} | "
                  f"{of_ceiling} | {x['forward_vs_dense']:.2f}x | {x['train_vs_dense']:.2f}x | "
                  f"{100 * x['non_expert_share_train']:.1f}% |")
    print("\nfp32 forward+backward, best run of each (range over the runs in brackets):\n")
    print("| shape | moe C++ ms | moe Python ms | Python overhead | PyTorch eager ms | "
          "speed-up (C++) | speed-up (Python) | fwd speed-up (C++) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        sp = r["spread_train_ms"]
        print(f"| {r['shape']} | {r['f32']['train_ms']:.1f} [{sp['moe_cpp'][0]:.0f}-"
              f"{sp['moe_cpp'][1]:.0f}] | {r['python']['train_ms']:.1f} [{sp['moe_python'][0]:.0f}-"
              f"{sp['moe_python'][1]:.0f}] | {100 * r['python_overhead_train']:+.0f}% | "
              f"{r['torch']['train_ms']:.1f} [{sp['torch'][0]:.0f}-{sp['torch'][1]:.0f}] | "
              f"{r['train_vs_torch']:.2f}x | {r['train_vs_torch_python']:.2f}x | "
              f"{r['forward_vs_torch']:.2f}x |")
    print("\nStage shares (fp32; forward | backward):\n")
    for r in rows:
        x = r["f32"]
        fw = ", ".join(f"{k} {100 * v:.1f}%" for k, v in x["forward_stages"].items())
        bw = ", ".join(f"{k} {100 * v:.1f}%" for k, v in x["backward_stages"].items())
        print(f"- {r['shape']}: {fw} | {bw}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"threads": a.threads, "cpu": cpu_name(), "repeats": a.repeats,
                       "ceiling": {"gflops": ceiling, "source": ceiling_name,
                                   "onednn": onednn_gemm, "openblas": blas_gemm},
                       "rows": rows, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    main()
