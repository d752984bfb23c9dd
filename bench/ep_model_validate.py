#!/usr/bin/python3
"""The analysis half of bench/ep_model_validate.sh: reads the moe-bench --ep --json runs in a
directory, calibrates moe-epmodel's link on this machine from the bare MPI_Alltoallv times,
predicts the layer's exchanges with moe-epmodel, and prints predictions beside measurements
(markdown on stdout; DIR/validation.json).

The machine is one node: a rank's copies to its peers and to itself are made by its own CPU
core, one after the other (--links serial, --self-bw = --intra-bw), and each peer message pays
the latency (--latency per-message). For the uniform traffic of moe-bench's random router the
model's all-to-all then takes t = (N-1) * latency + bytes_per_rank / bandwidth.

Two calibrations, per rank count (4 ranks on 2 cores are oversubscribed, a different link):
- one link: latency and bandwidth fitted to the bare MPI_Alltoallv of every shape and dtype
  (least squares on relative error);
- the size's link: the bandwidth of the bare MPI_Alltoallv of the same bytes (the sweep's
  point), with the fitted latency: shared memory is as fast as the caches the bytes fit in.
A third line predicts 4 ranks from the 2-rank link alone, with a node copy bandwidth of two
cores.

Runs with extra moe-bench flags (var-*.json: --ep-dedup, --ep-redundant R, --ep-skew S) are
predicted with the matching model options; moe-bench reports no bare all-to-all for them, so
the comparison is of the token-row bytes, the ranks' imbalance and the layer's exchange time.
"""
import argparse
import glob
import json
import os
import shlex
import subprocess
import sys

import numpy as np

SHAPES = {  # tools/moe-bench/shapes.hpp
    "mixtral-small": dict(T=4096, d=512, E=8, k=2),
    "fine-grained": dict(T=4096, d=512, E=64, k=8),
    "decode": dict(T=64, d=512, E=8, k=2),
}
TARGET = 0.25  # the "prediction within 25%"


def load_runs(directory, prefix, key):
    """Every (ranks, shape, dtype) measured, its runs sorted by `key` (least disturbed
    first)."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(directory, f"{prefix}-n*-*-rep*.json"))):
        try:
            with open(path) as f:
                rows = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            print(f"ep_model_validate: skipping {path}: {e}", file=sys.stderr)
            continue
        for r in rows:
            runs.setdefault((r["ranks"], r["shape"], r["dtype"]), []).append(r)
    for k in runs:
        runs[k].sort(key=key)
    return runs


def ordered(keys):
    return sorted(keys, key=lambda k: (k[0], list(SHAPES).index(k[1]), k[2] != "bf16"))


def fit_link(points, N):
    """latency (s) and bandwidth (B/s) with t = (N-1) * latency + bytes / bandwidth, least
    squares on relative error; points: (bytes per rank, seconds)."""
    A = np.array([[(N - 1) / t, b / t] for b, t in points])
    (lat, inv_bw), *_ = np.linalg.lstsq(A, np.ones(len(points)), rcond=None)
    if lat < 0:  # no latency visible: bandwidth alone
        lat = 0.0
        inv_bw = float(np.sum([b / t for b, t in points]) /
                       np.sum([(b / t) ** 2 for b, t in points]))
    return float(lat), float(1.0 / inv_bw)


def size_link(N, bytes_per_rank, seconds, latency):
    """The bandwidth of the bare MPI_Alltoallv of these bytes, with the fitted latency."""
    busy = seconds - (N - 1) * latency
    if busy <= 0.2 * seconds:
        return (0.0, bytes_per_rank / seconds)
    return (latency, bytes_per_rank / busy)


def parse_extra(text):
    """What the extra moe-bench flags ask of the layer, in the model's terms."""
    flags = shlex.split(text or "")
    out = {"dedup": False, "redundant": None, "skew": 0.0, "chunks": 1, "flags": text or ""}
    i = 0
    while i < len(flags):
        f, value = flags[i], None
        if "=" in f:
            f, value = f.split("=", 1)
        elif i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            value = flags[i + 1]
        if f == "--ep-dedup":
            out["dedup"] = True
            value = None
        elif f == "--ep-redundant":
            out["redundant"] = int(value)
        elif f == "--ep-skew":
            out["skew"] = float(value)
        elif f == "--ep-chunks":
            out["chunks"] = int(value)
        i += 1 if value is None or "=" in flags[i] else 2
    return out


def predict(model, shape, dtype, N, link, variant=None, node_bw=0.0):
    """moe-epmodel's prediction of one moe-bench configuration."""
    s = SHAPES[shape]
    lat, bw = link
    variant = variant or {"dedup": False, "redundant": None, "skew": 0.0}
    trace = f"router:{variant['skew']:g}" if variant["skew"] > 0 else "uniform"
    exchange = "dedup" if variant["dedup"] or variant["redundant"] is not None else "per-copy"
    args = [sys.executable, model, "--synthetic", trace, "--experts", str(s["E"]),
            "--top-k", str(s["k"]), "--synthetic-tokens", str(s["T"]),
            "--tokens-per-rank", str(s["T"]), "--d-model", str(s["d"]), "--dtype", dtype,
            "--ranks", str(N), "--gpus-per-node", str(N),
            "--intra-bw", f"{bw / 1e9:.6g}", "--intra-latency", f"{lat * 1e6:.6g}",
            "--self-bw", f"{bw / 1e9:.6g}", "--links", "serial", "--latency", "per-message",
            "--exchange", exchange, "--json"]
    if variant["redundant"] is not None:
        per_rank = -(-(s["E"] + variant["redundant"]) // N)
        args += ["--placement", "eplb", "--slots-per-rank", str(per_rank)]
    else:
        args += ["--placement", "default"]
    if node_bw > 0:
        args += ["--node-bw", f"{node_bw / 1e9:.6g}"]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ep_model_validate: moe-epmodel failed: {done.stderr.strip()}\n"
                         f"  {' '.join(args)}")
    out = json.loads(done.stdout)
    r = [x for x in out["results"] if x["exchange"] == exchange][0]
    r["row_bytes"] = out["row_bytes"]
    r["command"] = " ".join(["moe-epmodel"] + args[2:])
    return r


def pct(pred, meas):
    return 100.0 * (pred - meas) / meas if meas > 0 else float("nan")


def mark(err):
    return "" if abs(err) <= 100 * TARGET else " (miss)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--extra", default="", help="the extra moe-bench flags of the var-* runs")
    a = ap.parse_args()
    base = load_runs(a.dir, "ep", key=lambda r: r["mpi_alltoallv_ms"])
    if not base:
        raise SystemExit(f"ep_model_validate: no moe-bench results in {a.dir}")
    ranks = sorted({k[0] for k in base})
    links = {}
    for N in ranks:
        points = [(r[0]["dispatch_bytes_per_rank"], r[0]["mpi_alltoallv_ms"] * 1e-3)
                  for k, r in base.items() if k[0] == N]
        links[N] = fit_link(points, N)
    result = {"links": {str(N): {"latency_us": links[N][0] * 1e6,
                                 "bandwidth_GBps": links[N][1] / 1e9} for N in ranks},
              "rows": [], "variant": None, "variant_rows": []}
    cross = (links[2], 2 * links[2][1]) if 2 in links else None
    sized_links = {}
    for key in ordered(base):
        N, shape, dtype = key
        rs = base[key]
        best = rs[0]
        D = best["dispatch_bytes_per_rank"]
        # Each quantity from its least disturbed run (the smallest time over the runs).
        moe_ms = min(r["moe_alltoall_ms"] for r in rs)
        fwd_x = min(r["exchange_share_forward"] * r["forward_ms"] for r in rs)
        bwd_x = min(r["exchange_share_backward"] * r["backward_ms"] for r in rs)
        sized_links[key] = size_link(N, D, best["mpi_alltoallv_ms"] * 1e-3, links[N][0])
        one = predict(a.model, shape, dtype, N, links[N])
        sized = predict(a.model, shape, dtype, N, sized_links[key])
        row = {"ranks": N, "shape": shape, "dtype": dtype, "runs": len(rs),
               "dispatch_bytes_measured": D,
               "dispatch_bytes_model": (one["rows_sent_per_rank"] + one["rows_local_per_rank"])
               * one["row_bytes"],
               "mpi_alltoallv_ms": best["mpi_alltoallv_ms"],
               "moe_alltoall_ms": moe_ms,
               "moe_alltoall_ms_all_runs": sorted(r["moe_alltoall_ms"] for r in rs),
               "mpi_alltoallv_ms_all_runs": sorted(r["mpi_alltoallv_ms"] for r in rs),
               "model_dispatch_ms": one["dispatch_ms"],
               "error_pct": pct(one["dispatch_ms"], moe_ms),
               "size_link_GBps": sized_links[key][1] / 1e9,
               "model_dispatch_ms_size_link": sized["dispatch_ms"],
               "error_size_link_pct": pct(sized["dispatch_ms"], moe_ms),
               "layer_exchange_forward_ms": fwd_x, "layer_exchange_backward_ms": bwd_x,
               "layer_exchange_forward_ms_all_runs":
                   sorted(r["exchange_share_forward"] * r["forward_ms"] for r in rs),
               "layer_forward_ms": min(r["forward_ms"] for r in rs),
               "layer_backward_ms": min(r["backward_ms"] for r in rs),
               "model_forward_ms": sized["forward_ms"], "model_backward_ms": sized["backward_ms"],
               "model_imbalance": one["imbalance"], "command": sized["command"]}
        if "received_imbalance" in best:
            row["measured_imbalance"] = best["received_imbalance"]
        if cross is not None and N != 2:
            pc = predict(a.model, shape, dtype, N, cross[0], node_bw=cross[1])
            row["cross_model_dispatch_ms"] = pc["dispatch_ms"]
            row["cross_error_pct"] = pct(pc["dispatch_ms"], moe_ms)
        result["rows"].append(row)
    rows = result["rows"]

    print("### moe-epmodel against moe-bench --ep (one row per copy, contiguous placement)\n")
    print("Link calibrated per rank count on the bare `MPI_Alltoallv` of every shape and dtype "
          "(least squares on relative error; every time is the smallest over the runs, the "
          "least disturbed):\n")
    print("| ranks | latency per message | copy bandwidth |")
    print("|---|---|---|")
    for N in ranks:
        print(f"| {N} | {links[N][0] * 1e6:.2f} us | {links[N][1] / 1e9:.2f} GB/s |")
    print("\nThe layer's dispatch all-to-all (`moe_alltoall_ms`: the library's communicator "
          "moving exactly the bytes one forward dispatched), predicted:\n")
    print("| ranks | shape | dtype | MB/rank (meas / model) | MPI_Alltoallv ms | moe all-to-all "
          "ms | model, one link | error | size's link GB/s | model, size's link | error |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ranks']} | {r['shape']} | {r['dtype']} | "
              f"{r['dispatch_bytes_measured'] / 1e6:.3f} / {r['dispatch_bytes_model'] / 1e6:.3f} "
              f"| {r['mpi_alltoallv_ms']:.3f} | {r['moe_alltoall_ms']:.3f} | "
              f"{r['model_dispatch_ms']:.3f} | {r['error_pct']:+.0f}%{mark(r['error_pct'])} | "
              f"{r['size_link_GBps']:.1f} | {r['model_dispatch_ms_size_link']:.3f} | "
              f"{r['error_size_link_pct']:+.0f}%{mark(r['error_size_link_pct'])} |")
    print("\nThe layer's exchange time inside forward and backward (moe-bench's exchange share "
          "times the slowest rank's time: waiting for the other ranks included; the smallest "
          "over the runs), beside the model's 2 row all-to-alls and control rounds (size's "
          "link):\n")
    print("| ranks | shape | dtype | fwd exchange ms | model | error | bwd exchange ms | model | "
          "error | layer fwd / bwd ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ef = pct(r["model_forward_ms"], r["layer_exchange_forward_ms"])
        eb = pct(r["model_backward_ms"], r["layer_exchange_backward_ms"])
        r["error_forward_pct"], r["error_backward_pct"] = ef, eb
        print(f"| {r['ranks']} | {r['shape']} | {r['dtype']} | "
              f"{r['layer_exchange_forward_ms']:.2f} | {r['model_forward_ms']:.2f} | {ef:+.0f}% | "
              f"{r['layer_exchange_backward_ms']:.2f} | {r['model_backward_ms']:.2f} | "
              f"{eb:+.0f}% | {r['layer_forward_ms']:.1f} / {r['layer_backward_ms']:.1f} |")
    if any("cross_error_pct" in r for r in rows):
        print(f"\nOther rank counts from the 2-rank link alone (a node copy bandwidth of 2 x "
              f"{cross[0][1] / 1e9:.2f} GB/s, for the 2 cores):\n")
        print("| ranks | shape | dtype | moe all-to-all ms | model | error |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            if "cross_error_pct" in r:
                print(f"| {r['ranks']} | {r['shape']} | {r['dtype']} | "
                      f"{r['moe_alltoall_ms']:.3f} | {r['cross_model_dispatch_ms']:.3f} | "
                      f"{r['cross_error_pct']:+.0f}% |")
    one = sum(abs(r["error_pct"]) <= 100 * TARGET for r in rows)
    sized = sum(abs(r["error_size_link_pct"]) <= 100 * TARGET for r in rows)
    print(f"\nDispatch all-to-all within {100 * TARGET:.0f}%: {one} of {len(rows)} with one link "
          f"per rank count, {sized} of {len(rows)} with the size's link.")

    var = load_runs(a.dir, "var", key=lambda r: r["train_ms"])
    if var:
        v = parse_extra(a.extra)
        result["variant"] = v
        print(f"\n### With `{v['flags']}`\n")
        print("Predicted with the size's link of the plain run of the same shape and dtype"
              + ("; the pipelining (--ep-chunks) is not modelled" if v["chunks"] > 1 else "")
              + ". Token-row bytes: what a rank sends per forward and backward (rows out, "
              "results back, dy out, dx back, and with dedup the copies' metadata).\n")
        print("| ranks | shape | dtype | row MB/call meas | model | error | per-copy MB meas | "
              "model | imbalance meas | model | fwd exchange ms meas | model | bwd meas | "
              "model |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for key in ordered(var):
            N, shape, dtype = key
            best = var[key][0]
            link = sized_links.get(key, links.get(N))
            if link is None:
                continue
            p = predict(a.model, shape, dtype, N, link, v)
            pc = predict(a.model, shape, dtype, N, link, dict(v, dedup=False, redundant=None))
            per_copy_model = pc["row_bytes_per_layer_step"]
            row = {"ranks": N, "shape": shape, "dtype": dtype, "runs": len(var[key]),
                   "row_bytes_measured": best.get("row_bytes_per_call"),
                   "row_bytes_model": p["row_bytes_per_layer_step"],
                   "per_copy_row_bytes_measured": best.get("per_copy_row_bytes_per_call"),
                   "per_copy_row_bytes_model": per_copy_model,
                   "imbalance_measured": best.get("received_imbalance"),
                   "imbalance_model": p["imbalance"],
                   "imbalance_model_default_placement": pc["imbalance"],
                   "layer_exchange_forward_ms": min(
                       r["exchange_share_forward"] * r["forward_ms"] for r in var[key]),
                   "layer_exchange_backward_ms": min(
                       r["exchange_share_backward"] * r["backward_ms"] for r in var[key]),
                   "model_forward_ms": p["forward_ms"], "model_backward_ms": p["backward_ms"],
                   "placement": best.get("placement"), "command": p["command"]}
            if row["row_bytes_measured"]:
                row["row_bytes_error_pct"] = pct(row["row_bytes_model"], row["row_bytes_measured"])
            result["variant_rows"].append(row)
            meas_rb = row["row_bytes_measured"] or float("nan")
            meas_pc = row["per_copy_row_bytes_measured"] or float("nan")
            imb = row["imbalance_measured"] if row["imbalance_measured"] else float("nan")
            print(f"| {N} | {shape} | {dtype} | {meas_rb / 1e6:.3f} | "
                  f"{row['row_bytes_model'] / 1e6:.3f} | {pct(row['row_bytes_model'], meas_rb):+.1f}% | "
                  f"{meas_pc / 1e6:.3f} | {per_copy_model / 1e6:.3f} | {imb:.3f} | "
                  f"{p['imbalance']:.3f} | {row['layer_exchange_forward_ms']:.2f} | "
                  f"{p['forward_ms']:.2f} | {row['layer_exchange_backward_ms']:.2f} | "
                  f"{p['backward_ms']:.2f} |")
        placed = [r for r in result["variant_rows"] if r["placement"]]
        if placed:
            print("\nPlacement from load (moe-bench's own prediction and measurement, beside "
                  "the model's):\n")
            print("| ranks | shape | dtype | slots | max/mean before: moe-bench predicted / "
                  "measured | model | after: moe-bench predicted / measured | model |")
            print("|---|---|---|---|---|---|---|---|")
            for r in placed:
                pl = r["placement"]
                print(f"| {r['ranks']} | {r['shape']} | {r['dtype']} | {pl['slots']} | "
                      f"{pl['predicted_imbalance_before']:.3f} / "
                      f"{pl['measured_imbalance_before']:.3f} | "
                      f"{r['imbalance_model_default_placement']:.3f} | "
                      f"{pl['predicted_imbalance_after']:.3f} / "
                      f"{pl['measured_imbalance_after']:.3f} | {r['imbalance_model']:.3f} |")
    with open(os.path.join(a.dir, "validation.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"\n(raw runs and validation.json in {a.dir})")


if __name__ == "__main__":
    main()
