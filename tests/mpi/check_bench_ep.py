"""moe-bench --ep under mpirun, on the decode shape: it runs, and its figures are the
layer's: each rank dispatches T*k = 128 copies of 512 float32s (dropless), so the
exchange it times moves exactly 262144 bytes per rank; busBw = algBw * (n-1)/n."""
import json
import subprocess
import sys

mpiexec, bench, ranks = sys.argv[1], sys.argv[2], int(sys.argv[3])
result = subprocess.run([mpiexec, "--oversubscribe", "-n", str(ranks), bench, "--ep", "--shape",
                         "decode", "--iters", "2", "--warmup", "1", "--json"], check=True,
                        stdout=subprocess.PIPE, text=True)
(row,) = json.loads(result.stdout)

assert row["shape"] == "decode" and row["ranks"] == ranks, row
assert row["tokens_per_rank"] == 64 and row["experts_per_rank"] == 8 // ranks, row
assert row["dispatch_bytes_per_rank"] == 64 * 2 * 512 * 4, row["dispatch_bytes_per_rank"]
for key in ("forward_ms", "backward_ms", "moe_alltoall_ms", "mpi_alltoallv_ms", "moe_algbw_gbs",
            "mpi_algbw_gbs", "moe_vs_mpi"):
    assert row[key] > 0, (key, row[key])
for side in ("moe", "mpi"):
    alg, bus = row[f"{side}_algbw_gbs"], row[f"{side}_busbw_gbs"]
    assert abs(bus - alg * (ranks - 1) / ranks) <= 1e-12 * alg, (side, alg, bus)
assert 0 < row["exchange_share_forward"] < 1 and 0 < row["exchange_share_backward"] < 1, row
print(f"moe-bench --ep on {ranks} ranks: moe/MPI {row['moe_vs_mpi']:.2f}x")
