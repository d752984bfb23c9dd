#!/usr/bin/python3
"""moe-epmodel: replays routing traces over N expert-parallel ranks through a network model
and predicts the row exchange's time and the ranks' load imbalance, per-copy or with one
copy per destination rank (dedup), with the default placement or an EPLB placement.

The assumptions and formulas are in docs/ep_model.md; in short:

* a trace record (one layer, one step) gives counts[e], the token copies routed to expert
  e over the whole batch; the batch is split evenly over the N ranks and every rank's
  tokens follow the same distribution over experts;
* placement: contiguous blocks (expert e on rank floor(e*N/E)), or EPLB slots computed
  from the trace's load over a window (replicas, then greedy packing, as the library's
  moe_placement_from_load and DeepSeek's EPLB do); a replicated expert's copies are split
  into contiguous blocks of the batch over its holders in rank order (the library's rule);
* per-copy: every (token, expert) copy is one row out and one row back, forward (x out,
  y back) and backward (dy out, dx back); dedup: one row per (token, destination rank),
  with 16 bytes of metadata per copy forward and 8 bytes per copy backward;
* a token's k distinct experts are drawn in proportion to the counts (the estimate of the
  distinct ranks per token: --dedup-estimate);
* the network: ranks in nodes of G; per-direction bandwidth and per-message latency for
  the intra-node and the inter-node link; a rank's bytes on one link add; the exchange
  ends with its slowest rank; flat or hierarchical (node-pair aggregation through the
  rank of the same local index, then intra-node forwarding) all-to-all.

Exit status: 0 on success, 2 for anything refused (a bad option or value, a trace that
cannot be read), 1 for a failure to write the results.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from collections import OrderedDict
from fractions import Fraction

import numpy as np

VERSION = "0.1.0"
TOOL = "moe-epmodel"
DTYPE_BYTES = {"f32": 4, "bf16": 2, "f64": 8}
META_FORWARD_BYTES = 16  # per copy, dedup: expert id and gate travel with the token
META_BACKWARD_BYTES = 8  # per copy, dedup: the gate's gradient comes back
DEFAULT_RANKS = [8, 16, 32, 64, 128, 256, 512, 1024]


class Refusal(Exception):
    """A bad command line: printed as one line, exit status 2."""


class TraceError(Refusal):
    """A trace the tool cannot read or use (a missing file, malformed records, moe-stats
    failing on it): printed as one line, exit status 1, as for the other tools' runtime
    failures (docs/tools.md)."""


# ----------------------------------------------------------------------------- records

class Record:
    """One layer's counts at one step. counts: the copies the exchange carries per expert
    (served when the log has them, unless --demand); demand: the routed copies."""

    __slots__ = ("step", "layer", "split", "demand", "counts", "tokens", "_token_model")

    def __init__(self, step, layer, split, demand, counts, tokens):
        self.step, self.layer, self.split = step, layer, split
        self.demand, self.counts, self.tokens = demand, counts, tokens
        self._token_model = None

    def key(self):
        return self.layer if not self.split else self.layer + "/" + self.split

    def as_json(self):
        served = [] if np.array_equal(self.counts, self.demand) else [int(c) for c in self.counts]
        return OrderedDict([("step", self.step), ("layer", self.layer), ("split", self.split),
                            ("counts", [int(c) for c in self.demand]), ("served", served),
                            ("tokens", None if self.tokens is None else int(self.tokens))])


def _count_list(value, what, where):
    if not isinstance(value, list):
        raise TraceError(f"{where}: '{what}' is not a list")
    out = []
    for x in value:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) \
                or x < 0 or x != int(x):
            raise TraceError(f"{where}: '{what}' holds {x!r}, not a count")
        out.append(float(x))
    return np.array(out, dtype=np.float64)


def record_from_json(obj, where, use_demand):
    """A record as moe-stats --records prints it (counts, served, tokens optional)."""
    if not isinstance(obj, dict):
        raise TraceError(f"{where}: not a JSON object")
    if "counts" not in obj:
        raise TraceError(f"{where}: no 'counts' key")
    demand = _count_list(obj["counts"], "counts", where)
    if demand.size == 0:
        raise TraceError(f"{where}: 'counts' is empty")
    served = obj.get("served") or []
    counts = demand
    if served:
        served = _count_list(served, "served", where)
        if served.size != demand.size:
            raise TraceError(f"{where}: 'served' and 'counts' differ in length")
        if np.any(served > demand):
            raise TraceError(f"{where}: 'served' exceeds 'counts'")
        if not use_demand:
            counts = served
    step = obj.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int):
        raise TraceError(f"{where}: 'step' is not an integer")
    layer = obj.get("layer", "0")
    if isinstance(layer, int) and not isinstance(layer, bool):
        layer = str(layer)
    if not isinstance(layer, str):
        raise TraceError(f"{where}: 'layer' is neither a string nor an integer")
    split = obj.get("split") or ""
    if not isinstance(split, str):
        raise TraceError(f"{where}: 'split' is not a string")
    tokens = obj.get("tokens")
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, (int, float)) or tokens < 0 \
                or not math.isfinite(tokens):
            raise TraceError(f"{where}: 'tokens' is not a count")
        tokens = float(tokens) if tokens > 0 else None
    return Record(step, layer, split, demand, counts, tokens)


def read_records_file(path, use_demand):
    """Records already normalised (moe-stats --records output, or --write-trace)."""
    if path != "-" and not os.path.isfile(path):
        raise TraceError(f"{path}: no such file" if not os.path.exists(path)
                      else f"{path}: not a regular file")
    try:
        if path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(path, "r", encoding="utf-8") as f:
                lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(f"{path}: cannot read: {e}")
    records = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise TraceError(f"{where}: not valid JSON: {e.msg} at column {e.colno}")
        records.append(record_from_json(obj, where, use_demand))
    return records


def find_moe_stats(option):
    """--moe-stats, else $MOE_STATS, else beside this program, else on PATH, else the
    source tree's build/tools."""
    if option:
        if not (os.path.isfile(option) and os.access(option, os.X_OK)):
            raise Refusal(f"--moe-stats {option}: not an executable file")
        return option
    candidates = []
    if os.environ.get("MOE_STATS"):
        candidates.append(os.environ["MOE_STATS"])
    for here in (os.path.dirname(os.path.abspath(__file__)),
                 os.path.dirname(os.path.realpath(__file__))):
        candidates.append(os.path.join(here, "moe-stats"))
    on_path = shutil.which("moe-stats")
    if on_path:
        candidates.append(on_path)
    source = os.path.dirname(os.path.realpath(__file__))
    candidates.append(os.path.join(source, "..", "..", "build", "tools", "moe-stats"))
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise Refusal("moe-stats not found (looked at $MOE_STATS, beside this program, on PATH and "
                  "in build/tools): pass --moe-stats PATH, or --records-file")


def read_traces(paths, moe_stats, lenient, use_demand):
    """Every record of the logs, through moe-stats --records (its parser reads every
    counts-log format). Run with an argument list, never through a shell."""
    for p in paths:
        if p != "-" and not os.path.exists(p):
            raise TraceError(f"{p}: no such file")
    binary = find_moe_stats(moe_stats)
    args = [binary, "--records"] + (["--lenient"] if lenient else []) + ["--"] + list(paths)
    try:
        done = subprocess.run(args, capture_output=True, text=True, errors="replace",
                              stdin=sys.stdin if "-" in paths else subprocess.DEVNULL)
    except OSError as e:
        raise TraceError(f"cannot run {binary}: {e}")
    for line in done.stderr.splitlines():
        if line.strip():
            print(f"{TOOL}: {line}", file=sys.stderr)
    if done.returncode != 0:
        raise TraceError(f"moe-stats could not read the trace (exit {done.returncode}; its "
                      "message is above)")
    records = []
    for number, line in enumerate(done.stdout.splitlines(), 1):
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TraceError(f"moe-stats --records line {number}: not valid JSON: {e.msg}")
            records.append(record_from_json(obj, f"moe-stats --records line {number}",
                                            use_demand))
    return records


def _router_records(skew, experts, top_k, layer, steps, tokens, d_model, rng):
    """A random linear router as moe-bench's layer has one: tokens ~ N(0, I_d), router
    weights ~ N(0, 1/d) with skew/sqrt(d) added to expert 0's column (moe-bench --ep-skew),
    each token's top_k largest logits; one router per layer, fresh tokens per step."""
    d = d_model
    W = rng.standard_normal((d, experts)) / np.sqrt(d)
    W[:, 0] += skew / np.sqrt(d)
    out = []
    for step in range(1, steps + 1):
        counts = np.zeros(experts, dtype=np.int64)
        for start in range(0, tokens, 2048):
            n = min(2048, tokens - start)
            logits = rng.standard_normal((n, d)) @ W
            chosen = np.argpartition(-logits, top_k - 1, axis=1)[:, :top_k]
            counts += np.bincount(chosen.ravel(), minlength=experts)
        c = counts.astype(np.float64)
        out.append(Record(step, f"layer{layer}", "", c, c, float(tokens)))
    return out


def synthetic_records(spec, experts, top_k, layers, steps, tokens, seed, d_model=None):
    """A trace made here, per layer and step. uniform: every expert exactly tokens*top_k/E
    copies (what a random router gives on average). router:S: a random linear router over
    d_model-wide Gaussian tokens, expert 0 made hot by S (moe-bench --ep-skew S; router:0 is
    moe-bench's plain layer). zipf:S: each of `tokens` tokens picks
    top_k distinct experts one after another in proportion to p (Gumbel top-k), p of the
    i-th most popular expert ~ 1/i^S, the popularity order shuffled per layer with the seed
    (so that hot experts do not sit in one contiguous block)."""
    if experts < 1 or top_k < 1 or top_k > experts:
        raise Refusal(f"--synthetic needs 1 <= --top-k <= --experts (got {top_k}, {experts})")
    rng = np.random.default_rng(seed)
    records = []
    for layer in range(layers):
        if spec.startswith("router:"):
            records += _router_records(float(spec.split(":", 1)[1]), experts, top_k, layer,
                                       steps, tokens, d_model, rng)
            continue
        if spec == "uniform":
            p = np.full(experts, 1.0 / experts)
        else:
            s = float(spec.split(":", 1)[1])
            p = 1.0 / np.arange(1, experts + 1, dtype=np.float64) ** s
            p = p[rng.permutation(experts)]
            p /= p.sum()
        logp = np.log(p)
        for step in range(1, steps + 1):
            if spec == "uniform":
                c = np.full(experts, tokens * top_k / experts)
                records.append(Record(step, f"layer{layer}", "", c, c, float(tokens)))
                continue
            counts = np.zeros(experts, dtype=np.int64)
            for start in range(0, tokens, 4096):
                n = min(4096, tokens - start)
                keys = logp[None, :] + rng.gumbel(size=(n, experts))
                chosen = np.argpartition(-keys, top_k - 1, axis=1)[:, :top_k]
                counts += np.bincount(chosen.ravel(), minlength=experts)
            c = counts.astype(np.float64)
            records.append(Record(step, f"layer{layer}", "", c, c, float(tokens)))
    return records


# ---------------------------------------------------------------------------- placement

def contiguous_holders(E, N):
    """The library's default: expert e on rank floor(e * N / E)."""
    return [[(e * N) // E] for e in range(E)]


def replicate(load, slots, max_replicas):
    """EPLB's replicate_experts: each slot past one per expert goes to the expert of largest
    load per replica (ties: the lower id), never past max_replicas. Returns replicas[E]."""
    load = np.asarray(load, dtype=np.float64)
    E = load.size
    replicas = np.ones(E, dtype=np.int64)
    for _ in range(E, slots):
        ratio = np.where(replicas < max_replicas, load / replicas, -np.inf)
        best = int(np.argmax(ratio))  # the first maximum: the lower id
        if ratio[best] == -np.inf:
            raise Refusal(f"{slots} slots cannot be filled: every expert already has a replica "
                          f"on each of the {max_replicas} ranks it may use")
        replicas[best] += 1
    return replicas


def pack(items, bins, per_bin):
    """EPLB's balanced_packing with the one-replica-per-rank rule (as the library's
    moe_placement_from_load): items (expert, weight) heaviest first (ties: the lower
    expert) to the least-loaded bin (ties: the lower bin) that has room and does not hold
    the expert yet; when none qualifies, an expert of a full bin moves to a bin with room.
    Returns each bin's experts, ascending."""
    order = sorted(range(len(items)), key=lambda i: (-items[i][1], items[i][0]))
    content = [[] for _ in range(bins)]  # (expert, weight)
    weight = np.zeros(bins)
    size = np.zeros(bins, dtype=np.int64)
    held = [set() for _ in range(bins)]
    for i in order:
        expert, w = items[i]
        eligible = (size < per_bin) & np.array([expert not in h for h in held])
        if eligible.any():
            best = int(np.argmin(np.where(eligible, weight, np.inf)))
        else:
            best = -1
            for full in range(bins):
                if best >= 0:
                    break
                if size[full] < per_bin or expert in held[full]:
                    continue
                for room in range(bins):
                    if best >= 0:
                        break
                    if size[room] >= per_bin:
                        continue
                    for j, (e2, w2) in enumerate(content[full]):
                        if e2 in held[room]:
                            continue
                        del content[full][j]
                        held[full].discard(e2)
                        weight[full] -= w2
                        size[full] -= 1
                        content[room].append((e2, w2))
                        held[room].add(e2)
                        weight[room] += w2
                        size[room] += 1
                        best = full
                        break
            if best < 0:
                raise Refusal("placement packing found no rank (more replicas than ranks?)")
        content[best].append((expert, w))
        held[best].add(expert)
        weight[best] += w
        size[best] += 1
    return [sorted(e for e, _ in c) for c in content]


def eplb_slots(load, N, num_slots, nodes=1):
    """slot_expert[num_slots] (slot i on rank i // (num_slots / N)): the library's
    moe_placement_from_load. nodes > 1: EPLB's hierarchical policy (whole experts packed
    onto nodes first, then replicated and packed within each node)."""
    load = np.asarray(load, dtype=np.float64)
    E = load.size
    per_rank = num_slots // N
    per_node_ranks = N // nodes
    node_experts = pack([(e, load[e]) for e in range(E)], nodes, E // nodes)
    slots = [-1] * num_slots
    for n, experts in enumerate(node_experts):
        sub = load[experts]
        replicas = replicate(sub, per_node_ranks * per_rank, per_node_ranks)
        items = [(experts[i], sub[i] / replicas[i]) for i in range(len(experts))
                 for _ in range(replicas[i])]
        ranks = pack(items, per_node_ranks, per_rank)
        for r, held in enumerate(ranks):
            base = (n * per_node_ranks + r) * per_rank
            for i, e in enumerate(held):
                slots[base + i] = e
    return slots


def holders_of_slots(slots, E, N):
    per_rank = len(slots) // N
    holders = [[] for _ in range(E)]
    for i, e in enumerate(slots):
        if e >= 0:
            holders[e].append(i // per_rank)
    return [sorted(h) for h in holders]


class Placement:
    """Which ranks hold each expert, and how a source rank's copies of an expert are split
    over its holders: the batch's copies of expert e, in batch order, go in contiguous equal
    blocks to its m holders in rank order (the library's rule), so source rank s (batch
    share [s/N, (s+1)/N)) sends to holder i the overlap of its share with [i/m, (i+1)/m)."""

    def __init__(self, name, holders, N, slots=None):
        self.name, self.holders, self.N, self.slots = name, holders, N, slots
        E = len(holders)
        self.E = E
        self.replicas = np.array([len(h) for h in holders], dtype=np.int64)
        if np.any(self.replicas < 1):
            raise Refusal(f"placement {name}: an expert has no rank")
        single = self.replicas == 1
        self.single_expert = np.nonzero(single)[0]
        self.single_rank = np.array([holders[e][0] for e in self.single_expert], dtype=np.int64)
        # Replicated experts: one column per (expert, holder), ordered by rank.
        entries = [(holders[e][i], e, i, len(holders[e])) for e in range(E) if not single[e]
                   for i in range(len(holders[e]))]
        entries.sort()
        self.cache = {}
        self.entries_of = [[] for _ in range(E)]
        for column, x in enumerate(entries):
            self.entries_of[x[1]].append((x[0], column))
        self.entry_rank = np.array([x[0] for x in entries], dtype=np.int64)
        self.entry_expert = np.array([x[1] for x in entries], dtype=np.int64)
        if entries:
            lo = np.arange(N)[:, None] / N
            hi = lo + 1.0 / N
            a = np.array([x[2] / x[3] for x in entries])[None, :]
            b = np.array([(x[2] + 1) / x[3] for x in entries])[None, :]
            self.overlap = np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0.0, None) * N
            ranks, starts = np.unique(self.entry_rank, return_index=True)
            self.entry_ranks, self.entry_starts = ranks, starts
        else:
            self.overlap = None

    def rank_load(self, counts):
        """Copies each rank's experts receive (an expert's copies split evenly over its
        replicas)."""
        load = np.zeros(self.N)
        per_replica = counts / self.replicas
        for e, h in enumerate(self.holders):
            for r in h:
                load[r] += per_replica[e]
        return load

    def destination(self, p):
        """Q[s, d]: the probability that a copy routed on rank s goes to rank d."""
        N = self.N
        base = np.zeros(N)
        np.add.at(base, self.single_rank, p[self.single_expert])
        Q = np.broadcast_to(base, (N, N)).copy()
        if self.overlap is not None:
            weighted = self.overlap * p[self.entry_expert][None, :]
            Q[:, self.entry_ranks] += np.add.reduceat(weighted, self.entry_starts, axis=1)
        return Q


def make_placements(kind, E, N, load, args):
    """The placements asked for at N ranks, for one layer (load: its window's load)."""
    out = []
    if kind in ("default", "both"):
        out.append(Placement("default", contiguous_holders(E, N), N))
    if kind in ("eplb", "both"):
        if args.redundant_slots is not None:
            num_slots = E + args.redundant_slots
            if num_slots % N:
                raise Refusal(f"--redundant-slots {args.redundant_slots}: E + R = {num_slots} "
                              f"is not a multiple of {N} ranks")
        elif args.slots_per_rank is not None:
            num_slots = args.slots_per_rank * N
            if num_slots < E:
                raise Refusal(f"--slots-per-rank {args.slots_per_rank}: {num_slots} slots on "
                              f"{N} ranks cannot hold {E} experts")
        else:  # one redundant slot per rank, or one slot per rank when experts are fewer
            num_slots = N * (-(-E // N) + (1 if E >= N else 0))
        nodes, note = 1, ""
        if args.nodes is not None:
            G = min(args.gpus_per_node, N)
            nodes = max(1, N // G) if args.nodes == "auto" else int(args.nodes)
            if nodes > 1 and (N % nodes or E % nodes or num_slots % nodes):
                note = (f"hierarchical packing needs {nodes} nodes to divide the ranks, experts "
                        f"and slots: global packing used")
                nodes = 1
        slots = eplb_slots(load, N, num_slots, nodes)
        name = "eplb" if nodes == 1 else f"eplb-h{nodes}"
        pl = Placement(name, holders_of_slots(slots, E, N), N, slots)
        pl.note = note
        pl.num_slots = num_slots
        out.append(pl)
    return out


# ------------------------------------------------------------------------------ traffic

def elementary_symmetric(w, k):
    """e_0..e_k of the values w."""
    e = np.zeros(k + 1)
    e[0] = 1.0
    for x in w:
        e[1:] = e[1:] + x * e[:-1]
    return e


def _inclusion_stable(w, k):
    """pi_i = w_i e_{k-1}(w without i) / e_k(w), by prefix and suffix products."""
    E = w.size
    pre = np.zeros((E + 1, k))
    suf = np.zeros((E + 1, k))
    pre[0, 0] = suf[E, 0] = 1.0
    for i in range(E):
        pre[i + 1] = pre[i]
        pre[i + 1, 1:] += w[i] * pre[i, :-1]
        j = E - 1 - i
        suf[j] = suf[j + 1]
        suf[j, 1:] += w[j] * suf[j + 1, :-1]
    without = np.einsum("ij,ij->i", pre[:E], suf[1:, ::-1])  # sum_j pre_j * suf_{k-1-j}
    return w * without / elementary_symmetric(w, k)[k]


def inclusion(w, k):
    """Inclusion probabilities of the conditional Poisson design with weights w and size k
    (P(S) proportional to prod_{e in S} w_e over the k-subsets S)."""
    if k == 0:
        return np.zeros_like(w)
    e = elementary_symmetric(w, k)
    without = np.ones_like(w)
    for j in range(1, k):  # e_j(w without i) = e_j - w_i e_{j-1}(w without i)
        without = e[j] - w * without
    pi = w * without / e[k]
    if np.all(np.isfinite(pi)) and pi.min() >= -1e-9 and pi.max() <= 1 + 1e-9 \
            and abs(pi.sum() - k) <= 1e-7 * k:
        return pi
    return _inclusion_stable(w, k)  # the recurrence lost its digits (a weight far above others)


class TokenModel:
    """How a token's k distinct experts are drawn: conditional Poisson sampling (each expert
    taken independently, the draw kept when it holds exactly k experts) with weights fitted
    so that expert e is in a fraction k*p_e of the tokens, as the counts say. Experts with
    k*p_e = 1 are in every token (forced); a trace with k*p_e > 1 cannot come from distinct
    experts: such shares are capped at 1 and the excess spread over the others."""

    def __init__(self, p, k):
        target = k * np.asarray(p, dtype=np.float64)
        if target.sum() <= 0:
            raise TraceError("a record with no copies")
        target *= k / target.sum()
        for _ in range(target.size):
            over = target > 1.0
            if not over.any():
                break
            excess = (target[over] - 1.0).sum()
            target[over] = 1.0
            room = (~over) & (target > 0)
            if not room.any():
                break
            target[room] += excess * target[room] / target[room].sum()
        self.forced = target >= 1.0 - 1e-9
        # Fewer experts with copies than k (e.g. one expert takes every copy): the tokens
        # hold what there is, every such expert in every token.
        self.k_free = int(round(target[~self.forced].sum()))
        self.k = int(self.forced.sum()) + self.k_free
        free = (~self.forced) & (target > 0)
        w = np.zeros_like(target)
        self.converged = True
        if self.k_free > 0:
            t = target[free]
            x = t / (1.0 - t)
            for _ in range(5000):
                pi = inclusion(x, self.k_free)
                if np.max(np.abs(pi - t)) < 1e-11:
                    break
                x = x * t / pi
                x /= np.exp(np.mean(np.log(x)))
            else:
                self.converged = False
            w[free] = x
        self.w = w
        self.free = free
        self.target = target
        self.e_k = elementary_symmetric(w[free], self.k_free)[self.k_free] if self.k_free else 1.0


def segments(placement):
    """The batch cut at every rank boundary s/N and every replica block boundary i/m: within
    a segment every expert's copies go to one holder. Returns (source rank, length * N) per
    segment and the first segment of each source rank."""
    cached = placement.cache.get("segments")
    if cached is not None:
        return cached
    N = placement.N
    cuts = {Fraction(i, N) for i in range(N + 1)}
    for h in placement.holders:
        if len(h) > 1:
            cuts.update(Fraction(i, len(h)) for i in range(1, len(h)))
    cuts = sorted(cuts)
    lo = np.array([float(c) for c in cuts[:-1]])
    hi = np.array([float(c) for c in cuts[1:]])
    mid = (lo + hi) / 2
    src = np.minimum((mid * N).astype(np.int64), N - 1)
    first = np.searchsorted(src, np.arange(N))
    out = (mid, (hi - lo) * N, first)
    placement.cache["segments"] = out
    return out


def group_shares(placement, groups, n_groups):
    """For each expert: the groups (ranks or nodes) holding it and, per group, whether each
    segment's copies of the expert go there (a 0/1 vector over the segments, the block
    rule; None: every copy)."""
    key = ("shares", n_groups)
    if key in placement.cache:
        return placement.cache[key]
    mid, _, _ = segments(placement)
    shares = []
    for e, holders in enumerate(placement.holders):
        per = OrderedDict()
        if len(holders) == 1:
            per[int(groups[holders[0]])] = None
        else:
            m = len(holders)
            chosen = np.array(holders)[np.minimum((mid * m).astype(np.int64), m - 1)]
            target = groups[chosen]
            for g in sorted({int(groups[h]) for h in holders}):
                share = (target == g).astype(np.float64)
                per[g] = None if share.min() == 1.0 else share
        shares.append(per)
    placement.cache[key] = shares
    return shares


def miss_matrix(model, placement, groups, n_groups):
    """miss[s, g]: P(no expert of a token routed on rank s lands in group g), exact for the
    conditional Poisson token model and the block rule of replicas: per batch segment
    P(miss) = e_k(w * (1 - f)) / e_k(w) (f: 1 for the experts whose copies there go to g),
    averaged over the source rank's segments."""
    N = placement.N
    mid, length, first = segments(placement)
    shares = group_shares(placement, groups, n_groups)
    n_seg = mid.size
    k = model.k_free
    base = np.zeros((n_groups, k + 1))
    base[:, 0] = 1.0
    partial = [[] for _ in range(n_groups)]
    forced = [[] for _ in range(n_groups)]
    for e, per in enumerate(shares):
        if model.forced[e]:
            for g, share in per.items():
                forced[g].append(share)
            continue
        if not model.free[e]:
            continue
        we = model.w[e]
        others = np.ones(n_groups, dtype=bool)
        for g, share in per.items():
            others[g] = False
            if share is not None:
                partial[g].append((we, share))
        if k:
            base[others, 1:] = base[others, 1:] + we * base[others, :-1]
    miss = np.empty((N, n_groups))
    for g in range(n_groups):
        if partial[g] or any(share is not None for share in forced[g]):
            poly = np.tile(base[g], (n_seg, 1))
            for we, share in partial[g]:
                poly[:, 1:] = poly[:, 1:] + (we * (1.0 - share))[:, None] * poly[:, :-1]
            seg = poly[:, k] / model.e_k
            for share in forced[g]:
                seg = seg * (0.0 if share is None else (1.0 - share))
            miss[:, g] = np.add.reduceat(seg * length, first)
        else:
            miss[:, g] = base[g, k] / model.e_k
            if forced[g]:
                miss[:, g] = 0.0
    return np.clip(miss, 0.0, 1.0)


def monte_carlo_rows(model, placement, tokens_per_rank, samples, seed, node_size=None):
    """rows[s, d] (and per node when node_size): `samples` tokens drawn with a fixed seed from
    the conditional Poisson token model, each with a batch position u that picks its source
    rank and, for a replicated expert, the replica (block rule); scaled to tokens_per_rank."""
    N = placement.N
    E = model.w.size
    rng = np.random.default_rng(seed)
    # The design is the same for weights c*w; c such that the Poisson draws hold k_free
    # experts on average accepts the most draws.
    lo, hi = -60.0, 60.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        cw = np.exp(mid) * model.w
        if (cw / (1.0 + cw)).sum() < model.k_free:
            lo = mid
        else:
            hi = mid
    cw = np.exp(0.5 * (lo + hi)) * model.w
    prob = np.where(model.forced, 1.0, cw / (1.0 + cw))
    m = placement.replicas
    table = np.full((E, int(m.max())), -1, dtype=np.int64)
    for e, h in enumerate(placement.holders):
        table[e, :len(h)] = h
    k = model.k
    rows = np.zeros((N, N))
    nodes = None if node_size is None else np.zeros((N, N // node_size))
    drawn = np.zeros(N)
    accepted = 0
    batch = max(1024, min(65536, 4_000_000 // max(E, 1)))
    for _ in range(100000):
        if accepted >= samples:
            break
        inc = rng.random((batch, E)) < prob[None, :]
        inc = inc[inc.sum(1) == k][: samples - accepted]
        n = inc.shape[0]
        if n == 0:
            continue
        accepted += n
        chosen = np.nonzero(inc)[1].reshape(n, k)
        u = rng.random(n)
        src = np.minimum((u * N).astype(np.int64), N - 1)
        replica = np.minimum((u[:, None] * m[chosen]).astype(np.int64), m[chosen] - 1)
        dest = np.sort(table[chosen, replica], axis=1)
        first = np.ones_like(dest, dtype=bool)
        first[:, 1:] = dest[:, 1:] != dest[:, :-1]
        s_rep = np.repeat(src[:, None], k, axis=1)
        np.add.at(rows, (s_rep[first], dest[first]), 1.0)
        if nodes is not None:
            nd = np.sort(dest // node_size, axis=1)
            nfirst = np.ones_like(nd, dtype=bool)
            nfirst[:, 1:] = nd[:, 1:] != nd[:, :-1]
            np.add.at(nodes, (s_rep[nfirst], nd[nfirst]), 1.0)
        np.add.at(drawn, src, 1.0)
    if accepted < samples:
        raise Refusal("Monte Carlo: too few draws held exactly k experts")
    scale = np.where(drawn > 0, tokens_per_rank / np.maximum(drawn, 1), 0.0)[:, None]
    return rows * scale, (None if nodes is None else nodes * scale)


# ------------------------------------------------------------------------------ network

class Network:
    def __init__(self, args):
        self.G = args.gpus_per_node
        self.intra_bw = args.intra_bw * 1e9
        self.intra_lat = args.intra_latency * 1e-6
        self.inter_bw = args.inter_bw * 1e9
        self.inter_lat = args.inter_latency * 1e-6
        self.self_bw = args.self_bw * 1e9
        self.node_bw = args.node_bw * 1e9
        self.links = args.links
        self.latency = args.latency
        self.stages = args.hier_stages

    def describe(self):
        return OrderedDict([
            ("gpus_per_node", self.G), ("intra_bw_GBps", self.intra_bw / 1e9),
            ("intra_latency_us", self.intra_lat * 1e6), ("inter_bw_GBps", self.inter_bw / 1e9),
            ("inter_latency_us", self.inter_lat * 1e6), ("self_bw_GBps", self.self_bw / 1e9),
            ("node_bw_GBps", self.node_bw / 1e9), ("links", self.links),
            ("latency", self.latency), ("hier_stages", self.stages)])


class Topology:
    def __init__(self, N, G):
        if N > G and N % G:
            raise Refusal(f"{N} ranks do not fill nodes of {G} (--gpus-per-node)")
        self.N, self.G = N, min(G, N)
        self.M = N // self.G
        node = np.arange(N) // self.G
        self.node = node
        self.same = node[:, None] == node[None, :]


def _link_time(out, inn, nout, nin, bw, lat, latency):
    t = np.maximum(out, inn) / bw
    if latency == "per-message":
        t = t + lat * np.maximum(nout, nin)
    else:
        t = t + lat * ((nout + nin) > 0)
    return t


def _combine(times, links):
    return np.sum(times, axis=0) if links == "serial" else np.max(times, axis=0)


def flat_round(B, net, topo):
    """Per-rank seconds of one all-to-all of B[s, d] bytes (diagonal: the rank's own rows),
    every message straight to its destination."""
    diag = np.diag(B).copy()
    off = B.copy()
    np.fill_diagonal(off, 0.0)
    times = []
    intra = off * topo.same if topo.M > 1 else off
    positive = intra > 0
    times.append(_link_time(intra.sum(1), intra.sum(0), positive.sum(1), positive.sum(0),
                            net.intra_bw, net.intra_lat, net.latency))
    if topo.M > 1:
        inter = off - intra
        positive = inter > 0
        times.append(_link_time(inter.sum(1), inter.sum(0), positive.sum(1), positive.sum(0),
                                net.inter_bw, net.inter_lat, net.latency))
    if net.self_bw > 0:
        times.append(diag / net.self_bw)
    t = _combine(np.array(times), net.links)
    if net.node_bw > 0:
        node_bytes = intra.sum(1) + (diag if net.self_bw > 0 else 0.0)
        per_node = node_bytes.reshape(topo.M, topo.G).sum(1) / net.node_bw
        t = np.maximum(t, per_node[topo.node])
    return t


def hierarchical_round(B, BN, net, topo):
    """Per-rank seconds when inter-node rows travel once per node pair through the rank of
    the same local index (BN[s, b]: bytes from rank s to node b over the inter-node link),
    which forwards them inside its node; intra-node rows go straight (DeepEP's normal
    kernels, NCCL's PXN). One node: the flat all-to-all."""
    if topo.M == 1:
        return flat_round(B, net, topo)
    M, G, N = topo.M, topo.G, topo.N
    R4 = B.reshape(M, G, M, G)
    C = R4.sum(0).transpose(1, 0, 2)  # [b, i, j]: to (b, j) through (b, i), or straight
    local = np.einsum("bii->bi", C).reshape(N)
    Coff = C.copy()
    idx = np.arange(G)
    Coff[:, idx, idx] = 0.0
    nvl_out = Coff.sum(2).reshape(N)
    nvl_in = Coff.sum(1).reshape(N)
    nvl_nout = (Coff > 0).sum(2).reshape(N)
    nvl_nin = (Coff > 0).sum(1).reshape(N)
    NR = BN.reshape(M, G, M).copy()  # [a, i, b]
    a_idx = np.arange(M)
    NR[a_idx, :, a_idx] = 0.0
    rdma_out = NR.sum(2).reshape(N)
    rdma_in = NR.sum(0).T.reshape(N)  # rank (b, i) receives from every (a, i)
    rdma_nout = (NR > 0).sum(2).reshape(N)
    rdma_nin = (NR > 0).sum(0).T.reshape(N)
    t_nvl = _link_time(nvl_out, nvl_in, nvl_nout, nvl_nin, net.intra_bw, net.intra_lat,
                       net.latency)
    t_rdma = _link_time(rdma_out, rdma_in, rdma_nout, rdma_nin, net.inter_bw, net.inter_lat,
                        net.latency)
    stage = t_nvl + t_rdma if net.stages == "sequential" else np.maximum(t_nvl, t_rdma)
    times = [stage]
    if net.self_bw > 0:
        times.append(local / net.self_bw)
    t = _combine(np.array(times), net.links)
    if net.node_bw > 0:
        node_bytes = nvl_out + (local if net.self_bw > 0 else 0.0)
        per_node = node_bytes.reshape(M, G).sum(1) / net.node_bw
        t = np.maximum(t, per_node[topo.node])
    return t


def round_time(B, BN, net, topo, a2a):
    t = hierarchical_round(B, BN, net, topo) if a2a == "hierarchical" else flat_round(B, net, topo)
    return float(t.max())


def by_node(X, topo):
    return X.reshape(topo.N, topo.M, topo.G).sum(2)


# ------------------------------------------------------------------------------ predict

def token_model(rec, p, k):
    """The token model of a record (fitted once, whatever the rank count)."""
    cached = getattr(rec, "_token_model", None)
    if cached is None:
        cached = TokenModel(p, k)
        if not cached.converged:
            print(f"{TOOL}: layer {rec.key()} step {rec.step}: the token model's fit did not "
                  "converge; its dedup estimate is approximate", file=sys.stderr)
        rec._token_model = cached
    return cached


def predict_record(rec, N, placement, exchange, a2a, net, topo, args, k):
    """One layer-step at N ranks: rows, bytes, round times (seconds) and imbalance."""
    E = rec.counts.size
    kept = rec.counts.sum()
    demand = rec.demand.sum()
    if kept <= 0:
        p = np.full(E, 1.0 / E)
    else:
        p = rec.counts / kept
    keep = kept / demand if demand > 0 else 1.0
    if args.tokens_per_rank is not None:
        T = float(args.tokens_per_rank)
    else:
        batch = rec.tokens if rec.tokens else demand / k
        T = batch / N
    copies_per_rank = T * k * keep
    rb = args.d_model * DTYPE_BYTES[args.dtype]
    Q = placement.destination(p)
    Rc = copies_per_rank * Q  # copies s -> d
    load = Rc.sum(0)
    out = OrderedDict()
    out["tokens_per_rank"] = T
    out["imbalance"] = float(load.max() / load.mean()) if load.mean() > 0 else 1.0
    hier = a2a == "hierarchical"
    if exchange == "per-copy":
        R = Rc
        RN = by_node(Rc, topo) if hier else None
    elif args.dedup_estimate == "independent":
        kk = k * keep
        R = T * (1.0 - (1.0 - Q) ** kk)
        RN = T * (1.0 - (1.0 - by_node(Q, topo)) ** kk) if hier else None
    else:
        tm = token_model(rec, p, k)
        if args.dedup_estimate == "mc":
            R, RN = monte_carlo_rows(tm, placement, T, args.mc_tokens, args.seed,
                                     topo.G if hier and topo.M > 1 else None)
            if hier and RN is None:
                RN = by_node(R, topo)
        else:
            R = T * (1.0 - miss_matrix(tm, placement, np.arange(N), N))
            RN = T * (1.0 - miss_matrix(tm, placement, topo.node, topo.M)) if hier else None
        # Drops: only a share `keep` of the copies travel; the kept copies' tokens are
        # taken in that proportion (an approximation; no drops: keep = 1).
        R = R * keep
        RN = RN * keep if RN is not None else None
    off = R.copy()
    np.fill_diagonal(off, 0.0)
    rows_in = R.sum(0)
    out["rows_sent_per_rank"] = float(off.sum() / N)
    out["rows_local_per_rank"] = float(np.trace(R) / N)
    out["copies_per_rank"] = float(copies_per_rank)
    out["row_imbalance"] = float(rows_in.max() / rows_in.mean()) if rows_in.mean() > 0 else 1.0
    dedup = exchange == "dedup"
    meta_f = META_FORWARD_BYTES * Rc if dedup else None
    meta_b = META_BACKWARD_BYTES * Rc if dedup else None
    inline = args.meta == "inline"
    rounds = OrderedDict()

    def timed(rows_bytes, node_bytes):
        return round_time(rows_bytes, node_bytes, net, topo, a2a)

    B = R * rb
    BN = RN * rb if hier else None
    if dedup and inline:
        rounds["dispatch"] = timed(B + meta_f, (BN + by_node(meta_f, topo)) if hier else None)
        rounds["combine"] = timed(B, BN)
        rounds["dy"] = timed(B, BN)
        rounds["dx"] = timed(B + meta_b, (BN + by_node(meta_b, topo)) if hier else None)
        rounds["meta_fwd"] = rounds["meta_bwd"] = 0.0
    else:
        rounds["dispatch"] = rounds["dy"] = timed(B, BN)
        rounds["combine"] = rounds["dx"] = rounds["dispatch"]
        if dedup:
            rounds["meta_fwd"] = timed(meta_f, by_node(meta_f, topo) if hier else None)
            rounds["meta_bwd"] = timed(meta_b, by_node(meta_b, topo) if hier else None)
        else:
            rounds["meta_fwd"] = rounds["meta_bwd"] = 0.0
    # Training with replicas: each holder of a replicated expert sends its partial weight
    # gradient to every other holder (the library's sum, one all-to-all in backward).
    rounds["replica_grads"] = 0.0
    if args.expert_params and placement.overlap is not None:
        G = placement.cache.get("replica_pairs")
        if G is None:
            G = np.zeros((N, N))
            for h in placement.holders:
                if len(h) > 1:
                    idx = np.array(h)
                    G[np.ix_(idx, idx)] += 1.0
            np.fill_diagonal(G, 0.0)
            placement.cache["replica_pairs"] = G
        grad = G * (args.expert_params * DTYPE_BYTES[args.dtype])
        rounds["replica_grads"] = timed(grad, by_node(grad, topo) if hier else None)
    out["replica_grad_ms"] = rounds["replica_grads"] * 1e3
    control = 0.0
    if args.control_fwd or args.control_bwd:
        cb = np.full((N, N), 8.0 * (E + 8))
        control = timed(cb, by_node(cb, topo) if hier else None)
    rounds["control"] = control
    # One forward dispatch: the rows to other ranks and, with dedup, their metadata.
    out["bytes_sent_per_rank"] = float(
        (off.sum() * rb + (META_FORWARD_BYTES * (Rc.sum() - np.trace(Rc)) if dedup else 0.0)) / N)
    fwd = rounds["dispatch"] + rounds["combine"] + rounds["meta_fwd"] + args.control_fwd * control
    bwd = (rounds["dy"] + rounds["dx"] + rounds["meta_bwd"] + rounds["replica_grads"]
           + args.control_bwd * control)
    # The token-row bytes a rank sends in one forward and backward, its own rows included:
    # what the library's moe_comm_traffic_t.row_bytes_sent counts (4 row all-to-alls, and
    # with dedup the metadata of every copy).
    out["row_bytes_per_layer_step"] = float(
        4 * R.sum() / N * rb
        + ((META_FORWARD_BYTES + META_BACKWARD_BYTES) * copies_per_rank if dedup else 0.0))
    out["dispatch_ms"] = rounds["dispatch"] * 1e3
    out["forward_ms"] = fwd * 1e3
    out["backward_ms"] = bwd * 1e3
    out["total_ms"] = (fwd + bwd) * 1e3
    out["control_round_ms"] = control * 1e3
    return out


def window_load(records, window):
    lo, hi = window
    chosen = [r for r in records if (lo is None or r.step >= lo) and (hi is None or r.step <= hi)]
    if not chosen:
        raise Refusal(f"--window holds no step of layer {records[0].key()}")
    return np.sum([r.counts for r in chosen], axis=0)


def infer_top_k(records, args):
    if args.top_k is not None:
        return args.top_k
    ratios = [r.demand.sum() / r.tokens for r in records if r.tokens]
    if len(ratios) == len(records):
        k = int(round(float(np.mean(ratios))))
        source = "the records' token counts"
    elif args.tokens_per_rank is not None:
        k = int(round(float(np.mean([r.demand.sum() for r in records])) / args.tokens_per_rank))
        source = f"sum(counts) / --tokens-per-rank {args.tokens_per_rank}"
        print(f"{TOOL}: --top-k inferred as {k} from {source}, taking each record as one "
              "rank's batch; pass --top-k when that is not so", file=sys.stderr)
    else:
        raise Refusal("--top-k is needed: the trace does not say how many tokens its counts "
                      "came from (give --top-k, or --tokens-per-rank to infer it)")
    E = records[0].counts.size
    if k < 1 or k > E:
        raise Refusal(f"top-k inferred as {k} from {source}, outside [1, {E}]: pass --top-k")
    return k


VARIANT_ORDER = [("per-copy", "default"), ("dedup", "default"), ("per-copy", "eplb"),
                 ("dedup", "eplb")]


def model(records, args):
    """Predictions for every rank count, variant and all-to-all, summed over the trace."""
    k = infer_top_k(records, args)
    layers = OrderedDict()
    for r in records:
        layers.setdefault(r.key(), []).append(r)
    for key, recs in layers.items():
        E = recs[0].counts.size
        if any(r.counts.size != E for r in recs):
            raise TraceError(f"layer {key} changes its number of experts")
        if k > E:
            raise Refusal(f"--top-k {k} is more than layer {key}'s {E} experts")
    if args.aggregate:
        merged = []
        for key, recs in layers.items():
            demand = np.sum([r.demand for r in recs], axis=0)
            counts = np.sum([r.counts for r in recs], axis=0)
            tokens = sum(r.tokens for r in recs) if all(r.tokens for r in recs) else None
            merged.append(Record(recs[-1].step, recs[0].layer, recs[0].split, demand, counts,
                                 tokens))
        layers = OrderedDict((r.key(), [r]) for r in merged)
    exchanges = ["per-copy", "dedup"] if args.exchange == "both" else [args.exchange]
    a2as = ["flat", "hierarchical"] if args.a2a == "both" else [args.a2a]
    net = Network(args)
    results = []
    for N in args.ranks:
        topo = Topology(N, net.G)
        per_variant = OrderedDict()
        notes = []
        for key, recs in layers.items():
            E = recs[0].counts.size
            load = window_load(recs, args.window)
            for pl in make_placements(args.placement, E, N, load, args):
                if getattr(pl, "note", ""):
                    notes.append(f"layer {key}: {pl.note}")
                for ex in exchanges:
                    for a2a in a2as:
                        name = (ex, pl.name, a2a)
                        acc = per_variant.setdefault(name, {"records": []})
                        for r in recs:
                            p = predict_record(r, N, pl, ex, a2a, net, topo, args, k)
                            p["layer"], p["step"] = key, r.step
                            acc["records"].append(p)
                        if pl.slots is not None:
                            acc.setdefault("slots", OrderedDict())[key] = pl.num_slots
        for (ex, pl, a2a), acc in per_variant.items():
            recs = acc["records"]
            row = OrderedDict([("ranks", N), ("nodes", topo.M), ("exchange", ex),
                               ("placement", pl), ("all_to_all", a2a),
                               ("layer_steps", len(recs))])
            for field in ("rows_sent_per_rank", "rows_local_per_rank", "bytes_sent_per_rank",
                          "row_bytes_per_layer_step",
                          "dispatch_ms", "forward_ms", "backward_ms", "total_ms",
                          "control_round_ms", "replica_grad_ms", "imbalance", "row_imbalance"):
                row[field] = float(np.mean([x[field] for x in recs]))
            row["imbalance_max"] = float(np.max([x["imbalance"] for x in recs]))
            row["sum_forward_ms"] = float(np.sum([x["forward_ms"] for x in recs]))
            row["sum_backward_ms"] = float(np.sum([x["backward_ms"] for x in recs]))
            row["sum_total_ms"] = row["sum_forward_ms"] + row["sum_backward_ms"]
            if "slots" in acc:
                row["slots"] = acc["slots"]
            if args.per_record:
                row["records"] = recs
            results.append(row)
        for n in sorted(set(notes)):
            print(f"{TOOL}: {N} ranks: {n}", file=sys.stderr)
    summary = OrderedDict([
        ("tool", f"{TOOL} {VERSION}"), ("top_k", k), ("d_model", args.d_model),
        ("dtype", args.dtype), ("row_bytes", args.d_model * DTYPE_BYTES[args.dtype]),
        ("expert_params", args.expert_params),
        ("tokens_per_rank", args.tokens_per_rank), ("layers", len(layers)),
        ("layer_steps", sum(len(v) for v in layers.values())),
        ("experts", sorted({v[0].counts.size for v in layers.values()})),
        ("dedup_estimate", args.dedup_estimate), ("meta", args.meta),
        ("control_rounds", [args.control_fwd, args.control_bwd]),
        ("network", net.describe()), ("results", results)])
    return summary


def table(summary):
    lines = []
    net = summary["network"]
    lines.append(
        f"moe-epmodel: top-{summary['top_k']}, rows of {summary['row_bytes']} B "
        f"(d_model {summary['d_model']}, {summary['dtype']}), {summary['layer_steps']} "
        f"layer-steps of {summary['layers']} layers, experts {summary['experts']}")
    lines.append(
        f"network: {net['gpus_per_node']} ranks/node, intra {net['intra_bw_GBps']:g} GB/s "
        f"{net['intra_latency_us']:g} us, inter {net['inter_bw_GBps']:g} GB/s "
        f"{net['inter_latency_us']:g} us, self {net['self_bw_GBps']:g} GB/s, links "
        f"{net['links']}, latency {net['latency']}; dedup estimate "
        f"{summary['dedup_estimate']}")
    lines.append("times are per layer-step (mean over the trace); sums over the trace in the "
                 "last column")
    head = (f"{'ranks':>5} {'a2a':<5} {'exchange':<8} {'placement':<9} {'rows out/rank':>13} "
            f"{'MB out/rank':>11} {'dispatch ms':>11} {'fwd ms':>9} {'bwd ms':>9} "
            f"{'imbalance':>9} {'max':>6} {'sum ms':>10}")
    lines.append(head)
    lines.append("-" * len(head))
    last = None
    for r in summary["results"]:
        if last is not None and r["ranks"] != last:
            lines.append("")
        last = r["ranks"]
        lines.append(
            f"{r['ranks']:>5} {r['all_to_all'][:4]:<5} {r['exchange']:<8} {r['placement']:<9} "
            f"{r['rows_sent_per_rank']:>13.1f} {r['bytes_sent_per_rank'] / 1e6:>11.3f} "
            f"{r['dispatch_ms']:>11.4f} {r['forward_ms']:>9.4f} {r['backward_ms']:>9.4f} "
            f"{r['imbalance']:>9.3f} {r['imbalance_max']:>6.2f} {r['sum_total_ms']:>10.3f}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- CLI

class Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"{TOOL}: {message}\nRun with --help for more information.", file=sys.stderr)
        sys.exit(2)


def _parsed(text, kind, noun, ok, bound):
    """An argparse value of `kind`, refused unless ok(value), with `bound` in the message."""
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {noun}: {text!r}")
    if not ok(v):
        raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
    return v


def _positive_int(text):
    return _parsed(text, int, "a whole number", lambda v: v >= 1, ">= 1")


def _nonnegative_int(text):
    return _parsed(text, int, "a whole number", lambda v: v >= 0, ">= 0")


def _positive_float(text):
    return _parsed(text, float, "a number", lambda v: math.isfinite(v) and v > 0,
                   "a finite number > 0")


def _nonnegative_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def _ranks(text):
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            if ".." in part:
                lo, hi = (int(x) for x in part.split(".."))
                if lo < 1 or hi < lo:
                    raise ValueError
                v = lo
                while v <= hi:  # powers of two between lo and hi
                    out.append(v)
                    v *= 2
            else:
                out.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"ranks must be whole numbers >= 1 (a list, or LO..HI for the doublings): {text!r}")
    if not out or any(v < 1 or v > 65536 for v in out):
        raise argparse.ArgumentTypeError(f"ranks must be in [1, 65536], got {text!r}")
    return out


def _window(text):
    try:
        lo, hi = text.split(":")
        lo = int(lo) if lo.strip() else None
        hi = int(hi) if hi.strip() else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"a window is FIRST:LAST steps (either may be empty), "
                                         f"got {text!r}")
    if lo is not None and hi is not None and hi < lo:
        raise argparse.ArgumentTypeError(f"the window {text!r} ends before it starts")
    return (lo, hi)


def _synthetic(text):
    if text == "uniform":
        return text
    for kind in ("zipf:", "router:"):
        if text.startswith(kind):
            try:
                s = float(text[len(kind):])
            except ValueError:
                s = float("nan")
            if math.isfinite(s) and s >= 0:
                return text
    raise argparse.ArgumentTypeError(f"uniform, zipf:S or router:S with S >= 0, got {text!r}")


def _control(text):
    try:
        f, b = (int(x) for x in text.split(","))
        if f < 0 or b < 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"FWD,BWD whole numbers >= 0, got {text!r}")
    return (f, b)


def _nodes(text):
    if text == "auto":
        return text
    return str(_positive_int(text))


def build_parser():
    p = Parser(
        prog=TOOL,
        description="Replays routing traces (any counts log moe-stats reads, or records from "
                    "moe-stats --records) over N expert-parallel ranks and predicts the row "
                    "exchange's time and the ranks' imbalance, per-copy or deduplicated, with "
                    "the default or an EPLB placement, over a flat or hierarchical all-to-all "
                    "(docs/ep_model.md).")
    p.add_argument("--version", action="version", version=f"{TOOL} {VERSION}")
    g = p.add_argument_group("trace")
    g.add_argument("traces", nargs="*", metavar="TRACE",
                   help="counts logs, read through moe-stats --records ('-': stdin)")
    g.add_argument("--records-file", metavar="FILE",
                   help="records already normalised (moe-stats --records output), instead")
    g.add_argument("--synthetic", type=_synthetic, metavar="SPEC",
                   help="instead of a trace, make one: uniform (exact average counts), "
                        "zipf:S (popularity ~ 1/i^S) or router:S (a random linear router, "
                        "expert 0 made hot by S as moe-bench --ep-skew S does); with --experts, "
                        "--top-k, --synthetic-tokens, --synthetic-layers, --synthetic-steps, "
                        "--seed")
    g.add_argument("--experts", type=_positive_int, default=64, help="--synthetic: experts")
    g.add_argument("--synthetic-tokens", type=_positive_int, default=8192,
                   help="--synthetic: tokens per step (the whole batch)")
    g.add_argument("--synthetic-layers", type=_positive_int, default=1)
    g.add_argument("--synthetic-steps", type=_positive_int, default=1)
    g.add_argument("--write-trace", metavar="FILE",
                   help="also write the records used as JSONL (readable by moe-stats and "
                        "--records-file)")
    g.add_argument("--moe-stats", metavar="PATH",
                   help="the moe-stats binary (default: $MOE_STATS, beside this program, on "
                        "PATH, build/tools)")
    g.add_argument("--lenient", action="store_true",
                   help="moe-stats skips malformed lines instead of failing")
    g.add_argument("--demand", action="store_true",
                   help="use the demand counts even where the log has served counts (the "
                        "exchange carries only the served copies)")
    g.add_argument("--split", help="only the records of this split (e.g. train)")
    g.add_argument("--layer", action="append", help="only these layers (repeatable)")
    g.add_argument("--aggregate", action="store_true",
                   help="sum each layer's records into one before modelling")
    g = p.add_argument_group("layer and batch")
    g.add_argument("--top-k", type=_positive_int,
                   help="experts per token (default: the records' tokens, or sum(counts) / "
                        "--tokens-per-rank)")
    g.add_argument("--tokens-per-rank", type=_positive_float,
                   help="tokens each rank routes; the trace then gives the distribution over "
                        "experts (default: the trace's batch split evenly over the ranks)")
    g.add_argument("--d-model", type=_positive_int, required=True, help="row width")
    g.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="bf16")
    g.add_argument("--ranks", type=_ranks, default=DEFAULT_RANKS,
                   help="rank counts, e.g. 2,4 or 8..1024 (doublings; default 8..1024)")
    g = p.add_argument_group("exchange and placement")
    g.add_argument("--exchange", choices=["per-copy", "dedup", "both"], default="both")
    g.add_argument("--placement", choices=["default", "eplb", "both"], default="both")
    g.add_argument("--redundant-slots", type=_nonnegative_int, metavar="R",
                   help="EPLB: E + R slots, (E + R) %% ranks == 0")
    g.add_argument("--slots-per-rank", type=_positive_int, metavar="S",
                   help="EPLB: S slots on every rank (instead of --redundant-slots; default: "
                        "one redundant slot per rank, or one slot per rank when E < ranks)")
    g.add_argument("--window", type=_window, default=(None, None), metavar="FIRST:LAST",
                   help="EPLB: the steps whose load the placement is computed from (default: "
                        "the whole trace)")
    g.add_argument("--nodes", type=_nodes, metavar="M|auto",
                   help="EPLB's hierarchical packing onto M nodes (auto: ranks / "
                        "--gpus-per-node); default: global packing")
    g.add_argument("--dedup-estimate", choices=["exact", "independent", "mc"],
                   default="exact",
                   help="distinct ranks per token: exact (closed form for tokens drawing k "
                        "distinct experts independently, conditioned on k, marginals matching "
                        "the counts), independent (1-(1-q)^k: with replacement, low), mc (Monte "
                        "Carlo of the same model as exact, --mc-tokens, --seed)")
    g.add_argument("--mc-tokens", type=_positive_int, default=65536)
    g.add_argument("--seed", type=_nonnegative_int, default=1)
    g.add_argument("--meta", choices=["separate", "inline"], default="separate",
                   help="dedup metadata: its own all-to-all (the library) or with the rows")
    g.add_argument("--expert-params", type=_nonnegative_int, default=0, metavar="P",
                   help="parameters per expert (e.g. 3*d_model*d_ff for SwiGLU): adds, with "
                        "replicas, the backward's sum of their weight gradients (each holder "
                        "sends its partial to the other holders); 0: not counted (inference)")
    g.add_argument("--control-rounds", type=_control, default=(3, 1), metavar="FWD,BWD",
                   help="small all-to-alls per forward and backward (check-in, count summary, "
                        "telemetry; 8*(E+8) bytes per peer), default 3,1")
    g = p.add_argument_group("network (GB/s = 1e9 bytes/s per direction; latency per message)")
    g.add_argument("--gpus-per-node", type=_positive_int, default=8)
    g.add_argument("--intra-bw", type=_positive_float, default=450.0,
                   help="intra-node bandwidth per rank (default 450: NVLink4)")
    g.add_argument("--intra-latency", type=_nonnegative_float, default=3.0, help="us")
    g.add_argument("--inter-bw", type=_positive_float, default=50.0,
                   help="inter-node bandwidth per rank (default 50: a 400 Gb/s NIC per GPU)")
    g.add_argument("--inter-latency", type=_nonnegative_float, default=5.0, help="us")
    g.add_argument("--self-bw", type=_nonnegative_float, default=0.0,
                   help="a rank's copy of its own rows (0: free, not counted)")
    g.add_argument("--node-bw", type=_nonnegative_float, default=0.0,
                   help="all of a node's intra-node (and own-row) bytes together (0: no limit)")
    g.add_argument("--links", choices=["parallel", "serial"], default="parallel",
                   help="whether a rank's intra-node, inter-node and own-row copies run at once "
                        "(GPU) or one after the other (one CPU core copies everything)")
    g.add_argument("--latency", choices=["per-message", "per-round"], default="per-message",
                   help="per-message: every non-empty message to a peer pays the latency, one "
                        "after the other (pairwise exchange); per-round: once per link")
    g.add_argument("--a2a", choices=["flat", "hierarchical", "both"], default="flat",
                   help="the all-to-all: flat, or hierarchical (DeepEP/PXN), or both")
    g.add_argument("--hier-stages", choices=["pipelined", "sequential"], default="pipelined",
                   help="hierarchical: the inter-node and intra-node stages overlap (chunked) "
                        "or run one after the other")
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print the predictions as JSON")
    g.add_argument("--per-record", action="store_true",
                   help="--json: include every layer-step's prediction")
    return p


def load_records(args):
    sources = sum(bool(x) for x in (args.traces, args.records_file, args.synthetic))
    if sources != 1:
        raise Refusal("give one trace source: log files, --records-file or --synthetic")
    if args.synthetic:
        if args.top_k is None:
            raise Refusal("--synthetic needs --top-k")
        records = synthetic_records(args.synthetic, args.experts, args.top_k,
                                    args.synthetic_layers, args.synthetic_steps,
                                    args.synthetic_tokens, args.seed, args.d_model)
    elif args.records_file:
        records = read_records_file(args.records_file, args.demand)
    else:
        records = read_traces(args.traces, args.moe_stats, args.lenient, args.demand)
    if args.split is not None:
        records = [r for r in records if r.split == args.split]
    if args.layer:
        records = [r for r in records if r.layer in args.layer]
    if not records:
        raise TraceError("the trace holds no records" + (" of that split or layer"
                                                      if args.split or args.layer else ""))
    if all(r.demand.sum() == 0 for r in records):
        raise TraceError("every record of the trace counts zero copies")
    return records


def run(argv):
    args = build_parser().parse_args(argv)
    args.control_fwd, args.control_bwd = args.control_rounds
    if args.redundant_slots is not None and args.slots_per_rank is not None:
        raise Refusal("give --redundant-slots or --slots-per-rank, not both")
    records = load_records(args)
    if args.write_trace:
        try:
            with open(args.write_trace, "w") as f:
                for r in records:
                    f.write(json.dumps(r.as_json()) + "\n")
        except OSError as e:
            raise Refusal(f"--write-trace {args.write_trace}: {e}")
    summary = model(records, args)
    text = json.dumps(summary, indent=2) + "\n" if args.json else table(summary)
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as e:
        print(f"{TOOL}: cannot write the results to stdout: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except TraceError as e:
        print(f"{TOOL}: {e}", file=sys.stderr)
        return 1
    except Refusal as e:
        print(f"{TOOL}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except MemoryError:
        print(f"{TOOL}: out of memory (fewer or smaller --ranks?)", file=sys.stderr)
        return 2
    except Exception as e:  # a defect: one line, no traceback
        print(f"{TOOL}: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
