"""The float32 GEMM rate of the Python stack's BLAS at n x n x n (default 4096): torch.mm
and numpy's dot, median of --iters after one warm-up, with the BLAS kernel each ran.
One JSON line. Run it with the OpenBLAS handicaps unset (bench/cpu_report.py does):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 \\
        /usr/bin/python3 bench/blas_ceiling.py --threads 2
"""
import argparse
import json
import statistics
import time

import numpy as np
import torch

from blas_info import blas_record


def rate(fn, n, iters):
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"ms": seconds * 1e3, "gflops": 2.0 * n ** 3 / seconds / 1e9}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((a.n, a.n), dtype=np.float32)
    B = rng.standard_normal((a.n, a.n), dtype=np.float32)
    tA, tB = torch.from_numpy(A), torch.from_numpy(B)
    out = {"n": a.n, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "torch_mm": rate(lambda: torch.mm(tA, tB), a.n, a.iters),
           "numpy_dot": rate(lambda: A @ B, a.n, a.iters)}
    out.update(blas_record())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
