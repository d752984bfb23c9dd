"""Python binding of moe-runtime (ctypes + numpy).

    import moe
    layer = moe.Layer(d_model, d_ff, num_experts, top_k, activation="gelu",
                      router="softmax", capacity_factor=0.0, backend="auto", seed=0, **options)
    layer.set_weights(router=Wr, w1=W1, w2=W2)        # [d,E], [E,d,F], [E,d_ff,d]
    y = layer.forward(x, train=True, token_ids=None, seq_len=None)
    dx, grads = layer.backward(dy)                   # grads: router, w1, w2 (b1, b2)
    layer.routing(); layer.telemetry(); layer.losses()

The library is found through MOE_LIBRARY, else the source tree's build/ folder, else
the prefix the package is installed under, sys.prefix, /usr/local and /usr, else the
dynamic loader (docs/python.md); library_path() names the one loaded.
"""
import ctypes as C

import numpy as np

from . import _abi

__all__ = ["Layer", "Group", "Context", "MoeError", "backends", "version", "metric_names",
           "compare_routing", "library_path", "preset"]
__version__ = "0.1.0"  # the package's; version() is the loaded library's

_lib = _abi.load()


def library_path():
    """The path of the libmoe this package loaded."""
    return _abi.library_path

_ROUTER_OPTIONS = {
    "router_temp_init", "router_temp_final", "router_temp_anneal_iters", "router_noise_type",
    "router_noise_std_init", "router_noise_decay_iters", "load_balance_alpha",
    "router_z_loss_coef", "bias_update_rate", "renormalize", "drop_policy", "pad_to_capacity",
    "hash_mode", "expert_bias", "dtype", "telemetry_interval", "telemetry_ema_decay",
    "n_group", "topk_group", "routed_scaling_factor", "min_capacity", "num_shared_experts",
    "shared_d_ff", "shared_expert_gate", "capacity_order", "renormalize_after_drops",
    "bias_update_from_served", "aux_loss_scope", "aux_loss_unbiased_topk",
}


class MoeError(RuntimeError):
    """A call into the library failed; .status is the moe_status_t name."""

    def __init__(self, code):
        self.code = code
        self.status = _abi.STATUS_NAMES.get(code, str(code))
        super().__init__(f"MOE_STATUS_{self.status}: {_lib.moe_last_error().decode()}")


def _check(code):
    if code != 0:
        raise MoeError(code)


def version():
    parts = [C.c_int32() for _ in range(3)]
    _check(_lib.moe_version(*[C.byref(p) for p in parts]))
    return tuple(p.value for p in parts)


def backends():
    count = C.c_int32()
    _check(_lib.moe_backend_count(C.byref(count)))
    names = []
    for i in range(count.value):
        name = C.c_char_p()
        _check(_lib.moe_backend_name(i, C.byref(name)))
        names.append(name.value.decode())
    return names


def metric_names():
    """[(name, shape, help)] in catalogue order; shape: scalar, per_expert or matrix."""
    count = C.c_int32()
    _check(_lib.moe_metric_count(C.byref(count)))
    out = []
    for i in range(count.value):
        name, shape, help_ = C.c_char_p(), C.c_int(), C.c_char_p()
        _check(_lib.moe_metric_info(i, C.byref(name), C.byref(shape), C.byref(help_)))
        out.append((name.value.decode(), _abi.SHAPES[shape.value], help_.value.decode()))
    return out


class _Handle:
    """A library handle's owner: copying one would free the handle twice."""

    def __reduce__(self):
        raise TypeError(f"moe.{type(self).__name__} owns a library handle and cannot be "
                        "copied or pickled: make a new one (moe.torch.MoE modules can be)")


class Context(_Handle):
    """The saved state of one forward call: what its backward needs (and its routing and
    losses). forward(..., return_context=True) returns it; backward(dy, ctx=...) consumes
    it, so several forwards may be in flight (micro-batches, activation recompute)."""

    def __init__(self, handle, layer=None, weights=None):
        self._handle = handle
        self._layer = layer        # the layer it belongs to (backward checks it)
        self._weights = weights    # the arrays bound at forward time stay alive

    def __del__(self):
        if getattr(self, "_handle", None):
            _lib.moe_ctx_destroy(self._handle)


def compare_routing(a, b):
    """Routing consistency of two Contexts of the same probe batch:
    {"routing_consistency": .., "routing_topk_consistency": ..}."""
    if not isinstance(a, Context) or not isinstance(b, Context):
        raise TypeError("compare_routing takes two moe.Context (layer.keep_context())")
    top1, topk = C.c_double(), C.c_double()
    _check(_lib.moe_ctx_compare_routing(a._handle, b._handle, C.byref(top1), C.byref(topk)))
    return {"routing_consistency": top1.value, "routing_topk_consistency": topk.value}


def _export(function, handle, fmt, split, scope):
    """Text from moe_layer_telemetry_export or moe_group_telemetry_export."""
    args = (handle, _enum(_abi.EXPORT_FORMATS, fmt, "format"), _enum(_abi.SPLITS, split, "split"),
            _enum(_abi.SCOPES, scope, "scope"))
    length = C.c_size_t()
    _check(function(*args, None, 0, C.byref(length)))
    buffer = C.create_string_buffer(length.value + 1)
    _check(function(*args, buffer, length.value + 1, C.byref(length)))
    return buffer.raw[:length.value].decode("utf-8")


class Group(_Handle):
    """The layers of one model, summarised together (max_frac_mean, collapsed, ...)."""

    def __init__(self, layers=()):
        self._handle = C.c_void_p()
        _check(_lib.moe_group_create(C.byref(self._handle)))
        self._layers = []
        for layer in layers:
            self.add(layer)

    def __del__(self):
        if getattr(self, "_handle", None):
            _lib.moe_group_destroy(self._handle)

    def add(self, layer):
        _check(_lib.moe_group_add(self._handle, layer._handle))
        self._layers.append(layer)

    def export(self, fmt="prometheus", split="train", scope="last"):
        """Every layer's metrics in one text (docs/telemetry.md, exports): "prometheus"
        (each metric's HELP and TYPE once, a sample per layer: what a scrape endpoint
        serves), "jsonl" (a line per layer), "csv" (one header, a row per layer), or
        "csv_header" / "csv_row" to write the header once and append rows. The layers'
        names (Layer.set_name) must differ."""
        return _export(_lib.moe_group_telemetry_export, self._handle, fmt, split, scope)

    def metrics(self, split="train", scope="last"):
        m = _abi.sized(_abi.GroupMetrics)
        _check(_lib.moe_group_get_metrics(self._handle, _enum(_abi.SPLITS, split, "split"),
                                          _enum(_abi.SCOPES, scope, "scope"), C.byref(m)))
        return {name: getattr(m, name) for name, _ in _abi.GroupMetrics._fields_[2:]}


class Comm(_Handle):
    """A communicator for expert parallelism. Comm.local() is the built-in one-rank
    communicator; MPI and NCCL communicators come from C (moe_mpi.h, moe_nccl.h)."""

    def __init__(self, handle):
        self._handle = handle

    @classmethod
    def local(cls):
        handle = C.c_void_p()
        _check(_lib.moe_comm_create_local(C.byref(handle)))
        return cls(handle)

    def __del__(self):
        if getattr(self, "_handle", None):
            _lib.moe_comm_destroy(self._handle)

    @property
    def rank(self):
        return self._rank_world()[0]

    @property
    def world(self):
        return self._rank_world()[1]

    def _rank_world(self):
        rank, world = C.c_int32(), C.c_int32()
        _check(_lib.moe_comm_rank(self._handle, C.byref(rank), C.byref(world)))
        return rank.value, world.value


_INT64_MAX = 2 ** 63 - 1


def _int(value, what, low=0, high=_INT64_MAX):
    """An integer argument for an int64 field of the ABI: ctypes would wrap one out of
    range silently (2**64 + 8 became 8), so it is refused here."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{what} must be in [{low}, {high}], got {value}")
    return int(value)


def _flag(value, what):
    """A yes/no option: a bool (or 0/1); any other value (the string "no") is refused."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer))
                                               and int(value) in (0, 1)):
        return int(bool(value))
    raise TypeError(f"{what} must be True or False, got {value!r}")


def _token_ids(values, what):
    """Token ids for an int64 array of the ABI: integers only (floats such as 1.5 and
    unsigned ids past 2^63 - 1 were once converted silently), as a contiguous int64 copy."""
    array = np.asarray(values)
    if array.size and (array.dtype.kind not in "iu" or array.dtype == np.bool_):
        raise TypeError(f"{what} must hold integers, got dtype {array.dtype}")
    if array.dtype.kind == "u" and array.size and int(array.max()) > _INT64_MAX:
        raise ValueError(f"{what} holds ids past 2^63 - 1")
    return np.ascontiguousarray(array, dtype=np.int64).ravel()


def _enum(table, value, what):
    if value not in table:
        raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(table)}")
    return table[value]


def _comm_handle(comm):
    """A Comm's handle, or None for None; anything else is a TypeError."""
    if comm is None:
        return None
    if not isinstance(comm, Comm):
        raise TypeError(f"expected a moe.Comm or None, got {type(comm).__name__}")
    return comm._handle


_PRESET_FIELDS = (
    "num_experts", "top_k", "activation", "router", "load_balance_alpha", "router_z_loss_coef",
    "bias_update_rate", "renormalize", "capacity_factor", "drop_policy", "n_group", "topk_group",
    "routed_scaling_factor", "min_capacity", "num_shared_experts", "shared_d_ff",
    "shared_expert_gate", "capacity_order", "renormalize_after_drops",
    "bias_update_from_served", "aux_loss_scope", "aux_loss_unbiased_topk")


def _slot_table(slot_expert):
    if isinstance(slot_expert, (str, bytes)):
        raise TypeError("slot_expert must be a sequence of expert ids, not a string")
    given = np.asarray(slot_expert)
    if given.size and not np.issubdtype(given.dtype, np.integer):
        raise TypeError(f"slot_expert must hold integers, got dtype {given.dtype}")
    if given.size and (given.min() < -1 or given.max() > np.iinfo(np.int32).max):
        raise ValueError("slot_expert entries must be expert ids or -1")
    table = np.ascontiguousarray(given, dtype=np.int32)
    if table.ndim != 1 or table.size == 0:
        raise ValueError("slot_expert must be a non-empty 1-D sequence of expert ids (-1: empty)")
    return table


def placement_from_load(load, world, num_slots, num_nodes=1):
    """DeepSeek EPLB's placement for `load` [E] over `world` ranks and `num_slots` slots:
    (slot_expert [num_slots] int32, imbalance_before, imbalance_after), the ranks' load
    max/mean for contiguous blocks and for the table (docs/distributed.md)."""
    values = np.ascontiguousarray(load, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("load must be a non-empty 1-D sequence")
    slots = _int(num_slots, "num_slots", 1, 1 << 24)
    table = np.empty(slots, dtype=np.int32)
    before, after = C.c_double(), C.c_double()
    _check(_lib.moe_placement_from_load(
        values.ctypes.data_as(C.POINTER(C.c_double)), values.size,
        _int(world, "world", 1, 1 << 20), slots, _int(num_nodes, "num_nodes", 1, 1 << 20),
        table.ctypes.data_as(C.POINTER(C.c_int32)), C.byref(before), C.byref(after)))
    return table, before.value, after.value


def preset(family):
    """A model family's routing conventions (moe_layer_config_preset: "mixtral",
    "qwen2_moe", "qwen3_moe", "deepseek_v3", "switch") as Layer keyword arguments."""
    if not isinstance(family, str):
        raise TypeError(f"family must be a string, got {family!r}")
    if "\0" in family:
        raise ValueError("family must not contain NUL characters")
    cfg = _abi.sized(_abi.LayerConfig)
    _check(_lib.moe_layer_config_preset(C.byref(cfg), family.encode()))
    names = {"activation": _abi.ACTIVATIONS, "router": _abi.ROUTERS,
             "drop_policy": _abi.DROP_POLICIES, "capacity_order": _abi.CAPACITY_ORDERS,
             "aux_loss_scope": _abi.AUX_LOSS_SCOPES}
    out = {}
    for field in _PRESET_FIELDS:
        value = getattr(cfg, field)
        if field in names:
            value = {v: k for k, v in names[field].items()}[value]
        elif field in ("shared_expert_gate", "renormalize_after_drops",
                       "bias_update_from_served", "aux_loss_unbiased_topk"):
            value = bool(value)
        elif field == "renormalize":
            value = None if value < 0 else bool(value)
        out[field] = value
    return out


class Layer(_Handle):
    def __init__(self, d_model, d_ff, num_experts, top_k, activation="gelu", router="softmax",
                 capacity_factor=0.0, backend="auto", seed=0, **options):
        # moe.torch hands the library torch tensors itself, bfloat16 included.
        torch_tensors = options.pop("_torch_tensors", False)
        unknown = set(options) - _ROUTER_OPTIONS
        if unknown:
            raise TypeError(f"unknown options {sorted(unknown)}")
        dtype = options.pop("dtype", "float32")
        if str(dtype) == "bfloat16" and not torch_tensors:
            raise ValueError("dtype bfloat16 is not available from numpy (numpy has no "
                             "bfloat16); use float32 or float64, moe.torch, or the C ABI")
        self.dtype = None if str(dtype) == "bfloat16" else np.dtype(dtype)
        renorm = options.pop("renormalize", None)
        cfg = _abi.sized(_abi.LayerConfig)
        cfg.d_model, cfg.d_ff = _int(d_model, "d_model"), _int(d_ff, "d_ff")
        cfg.num_experts, cfg.top_k = _int(num_experts, "num_experts"), _int(top_k, "top_k")
        cfg.activation = _enum(_abi.ACTIVATIONS, activation, "activation")
        cfg.router = _enum(_abi.ROUTERS, router, "router")
        cfg.dtype = _enum(_abi.DTYPES, "bfloat16" if self.dtype is None else self.dtype.name,
                          "dtype")
        cfg.expert_bias = _flag(options.pop("expert_bias", False), "expert_bias")
        if backend is not None and not isinstance(backend, str):
            raise TypeError(f"backend must be a string (or None for auto), got {backend!r}")
        self._backend_name = (backend or "auto").encode()
        cfg.backend = self._backend_name
        cfg.router_temp_init = options.pop("router_temp_init", 1.0)
        cfg.router_temp_final = options.pop("router_temp_final", cfg.router_temp_init)
        cfg.router_temp_anneal_iters = _int(options.pop("router_temp_anneal_iters", 0),
                                            "router_temp_anneal_iters")
        cfg.router_noise_type = _enum(_abi.NOISE, options.pop("router_noise_type", "none"), "noise")
        cfg.router_noise_std_init = options.pop("router_noise_std_init", 0.0)
        cfg.router_noise_decay_iters = _int(options.pop("router_noise_decay_iters", 0),
                                            "router_noise_decay_iters")
        cfg.load_balance_alpha = options.pop("load_balance_alpha", 0.0)
        cfg.router_z_loss_coef = options.pop("router_z_loss_coef", 0.0)
        cfg.bias_update_rate = options.pop("bias_update_rate", 0.0)
        cfg.renormalize = -1 if renorm is None else _flag(renorm, "renormalize")
        cfg.capacity_factor = capacity_factor
        cfg.drop_policy = _enum(_abi.DROP_POLICIES, options.pop("drop_policy", "position"),
                                "drop_policy")
        cfg.pad_to_capacity = _flag(options.pop("pad_to_capacity", False), "pad_to_capacity")
        cfg.hash_mode = _enum(_abi.HASH_MODES, options.pop("hash_mode", "auto"), "hash_mode")
        cfg.seed = _int(seed, "seed", 0, 2 ** 64 - 1)
        cfg.telemetry_interval = _int(options.pop("telemetry_interval", 1), "telemetry_interval")
        cfg.telemetry_ema_decay = options.pop("telemetry_ema_decay", 0.9)
        cfg.n_group = _int(options.pop("n_group", 0), "n_group")
        cfg.topk_group = _int(options.pop("topk_group", 0), "topk_group")
        scaling = options.pop("routed_scaling_factor", 1.0)
        if isinstance(scaling, bool) or not isinstance(scaling, (int, float, np.integer,
                                                                 np.floating)):
            raise TypeError(f"routed_scaling_factor must be a number, got {scaling!r}")
        cfg.routed_scaling_factor = scaling
        cfg.min_capacity = _int(options.pop("min_capacity", 0), "min_capacity")
        cfg.num_shared_experts = _int(options.pop("num_shared_experts", 0), "num_shared_experts")
        cfg.shared_d_ff = _int(options.pop("shared_d_ff", 0), "shared_d_ff")
        cfg.shared_expert_gate = _flag(options.pop("shared_expert_gate", False),
                                       "shared_expert_gate")
        cfg.capacity_order = _enum(_abi.CAPACITY_ORDERS, options.pop("capacity_order", "token"),
                                   "capacity_order")
        cfg.renormalize_after_drops = _flag(options.pop("renormalize_after_drops", False),
                                            "renormalize_after_drops")
        cfg.bias_update_from_served = _flag(options.pop("bias_update_from_served", False),
                                            "bias_update_from_served")
        cfg.aux_loss_scope = _enum(_abi.AUX_LOSS_SCOPES, options.pop("aux_loss_scope", "batch"),
                                   "aux_loss_scope")
        cfg.aux_loss_unbiased_topk = _flag(options.pop("aux_loss_unbiased_topk", False),
                                           "aux_loss_unbiased_topk")
        self._handle = C.c_void_p()
        _check(_lib.moe_layer_create(C.byref(cfg), C.byref(self._handle)))
        self.d_model, self.d_ff = cfg.d_model, cfg.d_ff
        self.num_experts, self.top_k = cfg.num_experts, cfg.top_k
        self.router = router
        self.expert_bias = bool(cfg.expert_bias)
        self.num_shared_experts = cfg.num_shared_experts
        self.shared_expert_gate = bool(cfg.shared_expert_gate)
        self._weights = {}
        self._last = None      # the Context of the last forward
        self._pending = 0      # training forwards since the last backward
        self._comm = None
        self._aux_comm = None

    @classmethod
    def from_preset(cls, family, d_model, d_ff, backend="auto", seed=0, **overrides):
        """A layer with a model family's routing conventions (preset()), any of them
        overridden by keyword (num_experts=16 for a small experiment)."""
        options = preset(family)
        options.update(overrides)
        return cls(d_model, d_ff, options.pop("num_experts"), options.pop("top_k"),
                   backend=backend, seed=seed, **options)

    def __del__(self):
        self._last = None
        if getattr(self, "_handle", None):
            _lib.moe_layer_destroy(self._handle)
        self._comm = None  # only now may the communicators go
        self._aux_comm = None

    # ---------------------------------------------------------------- expert parallelism
    def set_comm(self, comm, expert_owner=None):
        """Attaches a Comm (None detaches); expert_owner: E ranks, or None for blocks.
        Unbinds the weights: bind this rank's experts (local_experts()) again."""
        owner = None
        if expert_owner is not None:
            owner = np.ascontiguousarray(expert_owner, dtype=np.int32)
        _check(_lib.moe_layer_set_comm(
            self._handle, _comm_handle(comm),
            owner.ctypes.data_as(C.POINTER(C.c_int32)) if owner is not None else None,
            0 if owner is None else owner.size))
        self._comm = comm
        self._weights = {}

    def set_aux_comm(self, comm):
        """The data-parallel Comm the global-batch aux loss sums its counts over (None
        detaches); aux_loss_scope="global" only."""
        _check(_lib.moe_layer_set_aux_comm(self._handle, _comm_handle(comm)))
        self._aux_comm = comm

    def reset_aux_counts(self):
        """Starts a new global batch (aux_loss_scope="global"): call after each optimizer
        step."""
        _check(_lib.moe_layer_reset_aux_counts(self._handle))

    def aux_counts(self):
        """(counts [E] float64, calls): what the global-batch aux loss accumulated."""
        counts = np.zeros(self.num_experts, dtype=np.float64)
        calls = C.c_int64()
        _check(_lib.moe_layer_get_aux_counts(
            self._handle, counts.ctypes.data_as(C.POINTER(C.c_double)), counts.size,
            C.byref(calls)))
        return counts, calls.value

    def local_experts(self):
        """This rank's experts (global ids, ascending: the order of its expert weights)."""
        count = C.c_int64()
        _check(_lib.moe_layer_local_experts(self._handle, None, 0, C.byref(count)))
        experts = np.empty(count.value, dtype=np.int32)
        _check(_lib.moe_layer_local_experts(
            self._handle, experts.ctypes.data_as(C.POINTER(C.c_int32)), count.value,
            C.byref(count)))
        return experts

    def reduce_router_grad(self, grad):
        """Sums the router gradient (a contiguous [d, E] array of the layer's dtype) over
        the communicator, in place."""
        self._require_output(grad, (self.d_model, self.num_experts), "grad")
        _check(_lib.moe_layer_reduce_router_grad(self._handle, self._tensor(grad)))

    def traffic(self, reset=False):
        """{"rank", "world", "exchanges", "exchange_seconds", totals..., "peers": [...]}."""
        totals = _abi.sized(_abi.CommTraffic)
        _check(_lib.moe_layer_comm_traffic(self._handle, C.byref(totals), None, 0, 0))
        peers = (_abi.PeerTraffic * max(totals.world, 1))()
        _check(_lib.moe_layer_comm_traffic(self._handle, C.byref(totals), peers, totals.world,
                                           int(bool(reset))))
        out = {name: getattr(totals, name) for name, _ in _abi.CommTraffic._fields_[2:]}
        out["peers"] = [{name: getattr(p, name) for name, _ in _abi.PeerTraffic._fields_}
                        for p in peers[:max(totals.world, 0)]]
        return out

    def set_ep_options(self, dedup=False, chunks=1):
        """Collective: dedup sends each token once per rank; chunks (with dedup) pipelines
        the forward's exchanges with the experts (docs/distributed.md)."""
        o = _abi.sized(_abi.EpOptions, dedup=_flag(dedup, "dedup"),
                       chunks=_int(chunks, "chunks", 1, 64))
        _check(_lib.moe_layer_set_ep_options(self._handle, C.byref(o)))

    def ep_options(self):
        """{"dedup": bool, "chunks": int} as set."""
        o = _abi.sized(_abi.EpOptions)
        _check(_lib.moe_layer_get_ep_options(self._handle, C.byref(o)))
        return {"dedup": bool(o.dedup), "chunks": o.chunks}

    def expert_load(self, reset=False):
        """[E] float64: each expert's pre-drop demand over the training forwards since the
        last reset (the whole expert-parallel batch's)."""
        load = np.zeros(self.num_experts, dtype=np.float64)
        _check(_lib.moe_layer_expert_load(self._handle, load.ctypes.data_as(
            C.POINTER(C.c_double)), load.size, _flag(reset, "reset")))
        return load

    def move_expert_tensor(self, slot_expert, array):
        """Collective: this rank's per-expert `array` ([local experts, ...], C-contiguous)
        moved to the slot table's placement; returns [new local experts, ...]."""
        table = _slot_table(slot_expert)
        src = np.ascontiguousarray(array)
        if not (np.issubdtype(src.dtype, np.number) or src.dtype == np.bool_):
            # The bytes are copied as they are: Python objects or strings would be copied
            # without their references.
            raise TypeError(f"array must hold numbers, got dtype {src.dtype}")
        if src.ndim < 1 or src.shape[0] != len(self.local_experts()):
            raise ValueError("array must be [local experts, ...]: %d experts here"
                             % len(self.local_experts()))
        per_expert = int(np.prod(src.shape[1:], dtype=np.int64)) * src.itemsize
        world = self.traffic()["world"]
        per_rank = table.size // world if world > 0 and table.size % world == 0 else 0
        rank = self.traffic()["rank"]
        held = int(np.count_nonzero(table[rank * per_rank:(rank + 1) * per_rank] >= 0)) \
            if per_rank else 0
        dst = np.empty((held,) + src.shape[1:], dtype=src.dtype)
        _check(_lib.moe_layer_move_expert_tensor(
            self._handle, table.ctypes.data_as(C.POINTER(C.c_int32)), table.size,
            src.ctypes.data if src.size else None, dst.ctypes.data if dst.size else None,
            max(per_expert, 1)))
        return dst

    def set_placement(self, slot_expert):
        """Collective: installs a slot table (EPLB's physical_to_logical shape; -1 empty).
        Unbinds the weights: bind the moved ones again."""
        table = _slot_table(slot_expert)
        _check(_lib.moe_layer_set_placement(
            self._handle, table.ctypes.data_as(C.POINTER(C.c_int32)), table.size))
        self._weights = {}

    # ---------------------------------------------------------------- helpers
    def _tensor(self, array):
        t = _abi.Tensor()
        if array is None:
            return t
        t.data = array.ctypes.data if array.size else None
        t.ndim = array.ndim
        for i, s in enumerate(array.shape):
            t.shape[i] = s
        t.dtype = _abi.DTYPES[array.dtype.name]
        return t

    def _array(self, value):
        """An input as a contiguous array of the layer's dtype (copied when needed). Only
        real numbers convert: complex values (their imaginary part would be dropped),
        strings and objects are refused."""
        if self.dtype is None:
            raise TypeError("this layer is bfloat16, which numpy has no type for: drive it "
                            "through moe.torch.MoE")
        kind = np.asarray(value).dtype.kind
        if kind not in "biuf":
            raise TypeError(f"expected an array of real numbers, got dtype kind {kind!r}")
        return np.ascontiguousarray(value, dtype=self.dtype)

    def config(self):
        """The effective config (moe_layer_get_config): defaults and the backend resolved,
        enums by the names the constructor takes (activation="gelu", backend="onednn")."""
        cfg = _abi.sized(_abi.LayerConfig)
        _check(_lib.moe_layer_get_config(self._handle, C.byref(cfg)))
        out = {name: getattr(cfg, name) for name, _ in _abi.LayerConfig._fields_[2:]}
        names = {"activation": _abi.ACTIVATIONS, "router": _abi.ROUTERS, "dtype": _abi.DTYPES,
                 "router_noise_type": _abi.NOISE, "drop_policy": _abi.DROP_POLICIES,
                 "hash_mode": _abi.HASH_MODES, "capacity_order": _abi.CAPACITY_ORDERS,
                 "aux_loss_scope": _abi.AUX_LOSS_SCOPES}
        for field, table in names.items():
            out[field] = {v: k for k, v in table.items()}.get(out[field], out[field])
        out["backend"] = out["backend"].decode() if out["backend"] else None
        for flag in ("expert_bias", "renormalize", "pad_to_capacity", "shared_expert_gate",
                     "renormalize_after_drops", "bias_update_from_served",
                     "aux_loss_unbiased_topk"):
            out[flag] = bool(out[flag])
        return out

    @property
    def step(self):
        s = C.c_int64()
        _check(_lib.moe_layer_get_step(self._handle, C.byref(s)))
        return s.value

    @step.setter
    def step(self, value):
        _check(_lib.moe_layer_set_step(self._handle, _int(value, "step", 0, 2 ** 62)))

    def stage_profile(self, reset=False):
        """Seconds spent per pipeline stage since creation or the last reset, with the
        call counts (moe_layer_stage_profile)."""
        p = _abi.sized(_abi.StageProfile)
        _check(_lib.moe_layer_stage_profile(self._handle, C.byref(p), 1 if reset else 0))
        out = {"forward_calls": p.forward_calls, "backward_calls": p.backward_calls}
        out.update({name: getattr(p, name) for name in _abi.STAGE_PROFILE_FIELDS})
        return out

    @property
    def selection_bias(self):
        out = np.zeros(self.num_experts, dtype=np.float64)
        _check(_lib.moe_layer_get_selection_bias(
            self._handle, out.ctypes.data_as(C.POINTER(C.c_double)), out.size))
        return out

    @selection_bias.setter
    def selection_bias(self, values):
        v = np.ascontiguousarray(values, dtype=np.float64)
        _check(_lib.moe_layer_set_selection_bias(
            self._handle, v.ctypes.data_as(C.POINTER(C.c_double)), v.size))

    def build_hash_table(self, token_ids, vocab_size):
        ids = _token_ids(token_ids, "token_ids")
        _check(_lib.moe_layer_build_hash_table(
            self._handle, ids.ctypes.data_as(C.POINTER(C.c_int64)), ids.size,
            _int(vocab_size, "vocab_size", 1, 2 ** 24)))

    # ---------------------------------------------------------------- the layer
    def set_weights(self, router=None, w1=None, w2=None, b1=None, b2=None, shared_w1=None,
                    shared_w2=None, shared_gate=None):
        """Binds the arrays (kept alive by this object). An array that already is contiguous
        in the layer's dtype is bound as it is, without a copy, so updating it in place
        updates the layer's weights; any other is converted into a copy first. shared_w1
        [d, F'], shared_w2 [S*shared_d_ff, d] and shared_gate [d, 1] belong to the shared
        experts (num_shared_experts, shared_expert_gate)."""
        arrays = {k: (None if v is None else self._array(v))
                  for k, v in dict(router=router, w1=w1, b1=b1, w2=w2, b2=b2, shared_w1=shared_w1,
                                   shared_w2=shared_w2, shared_gate=shared_gate).items()}
        w = _abi.sized(_abi.Weights)
        for name, array in arrays.items():
            setattr(w, name, self._tensor(array))
        _check(_lib.moe_layer_set_weights(self._handle, C.byref(w)))
        self._weights = arrays

    def forward(self, x, train=True, token_ids=None, seq_len=None, return_context=False,
                token_mask=None, recompute=False):
        """y = MoE(x). With return_context=True returns (y, ctx): pass ctx to backward()
        (and routing(), losses()) to use this call's state when other forwards follow.
        token_mask: T booleans or 0/1 integers (an attention mask); False/0 marks padding,
        which is routed nowhere, outputs 0 and is in no loss or metric. recompute=True
        (with train=True): activation checkpointing's second forward, which changes no
        state (set step and selection_bias back to the original call's first)."""
        x = self._array(x)
        if x.ndim != 2:
            raise ValueError(f"x must be [T, d], got shape {x.shape}")
        y = np.empty_like(x)
        args = _abi.sized(_abi.ForwardArgs)
        args.x, args.y = self._tensor(x), self._tensor(y)
        ids = None
        if token_ids is not None:
            ids = _token_ids(token_ids, "token_ids")
            if ids.size != x.shape[0]:
                raise ValueError(f"token_ids has {ids.size} entries for {x.shape[0]} tokens")
            args.token_ids = ids.ctypes.data_as(C.POINTER(C.c_int64))
        mask = None
        if token_mask is not None:
            mask = np.asarray(token_mask)
            if mask.size == 0:
                mask = mask.astype(np.uint8)  # [] of any dtype, for T = 0
            if mask.dtype != np.bool_ and (mask.dtype.kind not in "iu" or
                                           (mask.size and not np.isin(mask, (0, 1)).all())):
                raise TypeError(f"token_mask must hold booleans or 0/1, got {mask.dtype} "
                                f"{mask.ravel()[:4]}")
            if mask.ndim != 1 or mask.size != x.shape[0]:
                raise ValueError(f"token_mask must be [T] = [{x.shape[0]}], got shape {mask.shape}")
            mask = np.ascontiguousarray(mask, dtype=np.uint8)
            args.token_mask = mask.ctypes.data_as(C.POINTER(C.c_uint8))
        args.seq_len = 0 if seq_len is None else _int(seq_len, "seq_len")
        args.train = _flag(train, "train")
        args.recompute = _flag(recompute, "recompute")
        handle = C.c_void_p()
        _check(_lib.moe_layer_forward(self._handle, C.byref(args), C.byref(handle)))
        self._adopt_context(handle)
        return (y, self._last) if return_context else y

    def _adopt_context(self, handle):
        """The Context of a forward just made through the C ABI (moe.torch's too)."""
        self._last = Context(handle, self, self._weights)
        self._pending += 1
        return self._last

    def _context(self, ctx, for_backward=False):
        """The Context to use: the one given, else the last forward's. A backward without
        ctx after several forwards is refused: it would silently use the wrong state."""
        if ctx is not None:
            if not isinstance(ctx, Context):
                raise TypeError(f"ctx must be a moe.Context, got {type(ctx).__name__}")
            if ctx._layer is not self:
                raise ValueError("ctx belongs to another layer")
            if not ctx._handle:
                raise ValueError("ctx was released")
            return ctx
        if self._last is None:
            raise RuntimeError("call forward() first")
        if for_backward and self._pending > 1:
            raise RuntimeError(
                f"{self._pending} forward calls are waiting for backward: pass ctx= (from "
                "forward(..., return_context=True)) to say which one this gradient belongs to")
        return self._last

    def backward(self, dy, accumulate_into=None, ctx=None, aux_loss_grad=1.0, z_loss_grad=1.0):
        """Returns (dx, grads) for the forward whose Context is ctx (default: the last
        forward, when it is the only one waiting). With accumulate_into (a dict of
        gradient arrays, e.g. from an earlier call) gradients are added into those arrays
        (MOE_BACKWARD_ACCUMULATE); each must be a writable, aligned, C-contiguous array of
        the layer's dtype and the weight's shape, else ValueError (nothing is written).
        aux_loss_grad, z_loss_grad: the gradient of your loss with respect to the
        forward's aux_loss_scaled and z_loss_scaled (1: they are added to it as they are;
        0: leave them out)."""
        ctx = self._context(ctx, for_backward=True)
        if "w1" not in self._weights:
            raise RuntimeError("no weights bound (set_comm() unbinds them): call set_weights()")
        dy = self._array(dy)
        if dy.ndim != 2 or dy.shape[1] != self.d_model:
            raise ValueError(f"dy must be [T, {self.d_model}], got shape {dy.shape}")
        dx = np.empty_like(dy)
        shapes = {"w1": self._weights["w1"].shape, "w2": self._weights["w2"].shape}
        if self.router != "hash":
            shapes["router"] = self._weights["router"].shape
        if self.expert_bias:
            shapes["b1"] = self._weights["b1"].shape
            shapes["b2"] = self._weights["b2"].shape
        if self.num_shared_experts:
            shapes["shared_w1"] = self._weights["shared_w1"].shape
            shapes["shared_w2"] = self._weights["shared_w2"].shape
        if self.shared_expert_gate:
            shapes["shared_gate"] = self._weights["shared_gate"].shape
        if accumulate_into is not None:
            grads = accumulate_into
            self._check_gradients(grads, shapes)
        else:
            grads = {k: np.empty(s, dtype=self.dtype) for k, s in shapes.items()}
        args = _abi.sized(_abi.BackwardArgs)
        args.dy, args.dx = self._tensor(dy), self._tensor(dx)
        args.grads = _abi.sized(_abi.Weights)
        for name, array in grads.items():
            setattr(args.grads, name, self._tensor(array))
        args.flags = 1 if accumulate_into is not None else 0
        for name, value in (("aux_loss_grad", aux_loss_grad), ("z_loss_grad", z_loss_grad)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer,
                                                                 np.floating)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            setattr(args, name, float(value))
        if accumulate_into is not None:
            dx[...] = 0
        _check(_lib.moe_layer_backward(self._handle, ctx._handle, C.byref(args)))
        if ctx is self._last:
            self._pending = 0
        else:
            self._pending = max(self._pending - 1, 0)
        return dx, grads

    def _check_gradients(self, grads, shapes):
        """Arrays the library will write into: exactly the layout it writes (a copy could
        not be written back), so anything else is refused before the call."""
        if not isinstance(grads, dict):
            raise TypeError("accumulate_into must be a dict of gradient arrays")
        unknown = set(grads) - set(shapes)
        if unknown:
            raise ValueError(f"accumulate_into has unknown keys {sorted(unknown)}; "
                             f"expected some of {sorted(shapes)}")
        for name, array in grads.items():
            self._require_output(array, shapes[name], f"accumulate_into[{name!r}]")

    def _require_output(self, array, shape, what):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{what} must be a numpy array, got {type(array).__name__}")
        if array.dtype != self.dtype:
            raise ValueError(f"{what} has dtype {array.dtype}, the layer's is {self.dtype}")
        if tuple(array.shape) != tuple(shape):
            raise ValueError(f"{what} has shape {array.shape}, expected {tuple(shape)}")
        flags = array.flags
        if not (flags["C_CONTIGUOUS"] and flags["ALIGNED"]):
            raise ValueError(f"{what} must be C-contiguous and aligned (a Fortran-order array, "
                             "a strided or reversed view or a broadcast array is not)")
        if not flags["WRITEABLE"]:
            raise ValueError(f"{what} is read-only")

    def routing(self, ctx=None):
        """{"experts": [T,slots] int32 (-1 none), "gates": [T,slots], "dropped": [T,slots] bool}
        of ctx's forward (default: the last). slots = k for token choice, E for expert choice."""
        handle = self._context(ctx)._handle
        tokens, slots = C.c_int64(), C.c_int64()
        _check(_lib.moe_ctx_routing_shape(handle, C.byref(tokens), C.byref(slots)))
        shape = (tokens.value, slots.value)
        experts = np.empty(shape, dtype=np.int32)
        gates = np.empty(shape, dtype=np.float32)
        dropped = np.empty(shape, dtype=np.uint8)
        _check(_lib.moe_ctx_routing(handle, experts.ctypes.data_as(C.POINTER(C.c_int32)),
                                    gates.ctypes.data_as(C.POINTER(C.c_float)),
                                    dropped.ctypes.data_as(C.POINTER(C.c_uint8))))
        return {"experts": experts, "gates": gates, "dropped": dropped.astype(bool)}

    def losses(self, ctx=None):
        """The aux and z losses of ctx's forward (default: the last)."""
        out = _abi.sized(_abi.Losses)
        _check(_lib.moe_ctx_losses(self._context(ctx)._handle, C.byref(out)))
        return {"aux_loss": out.aux_loss, "aux_loss_scaled": out.aux_loss_scaled,
                "z_loss": out.z_loss, "z_loss_scaled": out.z_loss_scaled}

    def telemetry(self, split="train", scope="last"):
        """Every metric of the catalogue (moe.metric_names(); definitions in
        docs/metrics.md) as {name: value}: a float for each scalar, a list of E floats
        for each per-expert metric (expert_counts, expert_served, frac_dem, frac_srv,
        dropped), E lists of E for coactivation (an empty list past 256 experts, where
        the layer keeps no co-activation: docs/limits.md). NaN where a metric is
        undefined (no tokens recorded yet, no sequence pairs).
        split: "train" or "eval" (forward calls with train=True or False).
        scope: "last" (the last recorded call; every call unless the layer was made with
        telemetry_interval > 1), "window" (summed since reset_telemetry()) or "ema"
        (an exponential moving average of each scalar; vectors are the window's)."""
        split_id = _enum(_abi.SPLITS, split, "split")
        scope_id = _enum(_abi.SCOPES, scope, "scope")
        count = C.c_int64()
        out = {}
        for name, shape, _ in metric_names():
            args = (self._handle, split_id, scope_id, name.encode())
            _check(_lib.moe_layer_metric(*args, None, 0, C.byref(count)))
            values = np.empty(count.value, dtype=np.float64)
            _check(_lib.moe_layer_metric(*args, values.ctypes.data_as(C.POINTER(C.c_double)),
                                         values.size, C.byref(count)))
            if shape == "scalar":
                out[name] = float(values[0])
            elif shape == "per_expert":
                out[name] = values.tolist()
            else:
                out[name] = values.reshape(-1, self.num_experts).tolist() if values.size else []
        return out

    def telemetry_compare(self, scope="window"):
        """Train against eval: {scalar name: {"train": .., "eval": .., "diff": eval - train}}."""
        train, evaluation = self.telemetry("train", scope), self.telemetry("eval", scope)
        return {k: {"train": v, "eval": evaluation[k], "diff": evaluation[k] - v}
                for k, v in train.items() if isinstance(v, float)}

    def reset_telemetry(self):
        _check(_lib.moe_layer_telemetry_reset(self._handle))

    def set_name(self, name):
        """The layer's name in exports: any text without NUL characters (exports make it
        valid UTF-8 and escape it for their format)."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if "\0" in name:
            raise ValueError("name must not contain NUL characters")
        try:  # bytes that were not UTF-8 come back as they were (os.fsdecode's escapes)
            raw = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate: its code units, which exports repair
            raw = name.encode("utf-8", "surrogatepass")
        _check(_lib.moe_layer_set_name(self._handle, raw))

    def export(self, fmt="jsonl", split="train", scope="last"):
        """The metrics as text: "jsonl" (one line), "csv" (header and row), "prometheus",
        or "csv_header" / "csv_row" to write the header once per file and append a row
        per call."""
        return _export(_lib.moe_layer_telemetry_export, self._handle, fmt, split, scope)

    def set_verdict_thresholds(self, **thresholds):
        t = _abi.sized(_abi.VerdictThresholds)
        defaults = dict(collapse_max_frac=0.90, collapse_active_experts=1, imbalance_load_cv=0.6,
                        imbalance_entropy_norm=0.5, imbalance_kl=2.0, imbalance_dead_fraction=0.25,
                        imbalance_max_frac_floor=0.35, imbalance_max_frac_experts=3.0,
                        moderate_load_cv=0.2, diffuse_entropy_norm=0.95, diffuse_top1_experts=1.2,
                        peaked_top1=0.8, peaked_entropy_norm=0.2, specialization_warmup_steps=100,
                        pressure_drop_rate=0.02, pressure_frac_gap=0.02)
        unknown = set(thresholds) - set(defaults)
        if unknown:
            raise TypeError(f"unknown thresholds {sorted(unknown)}")
        if "specialization_warmup_steps" in thresholds:
            thresholds["specialization_warmup_steps"] = _int(
                thresholds["specialization_warmup_steps"], "specialization_warmup_steps")
        defaults.update(thresholds)
        for name, value in defaults.items():
            setattr(t, name, value)
        _check(_lib.moe_layer_set_verdict_thresholds(self._handle, C.byref(t)))

    def verdicts(self, split="train", scope="last"):
        """{"balance"|"specialization"|"capacity": {"label", "metric", "value", "threshold", "hint"}}."""
        v = _abi.sized(_abi.Verdicts)
        _check(_lib.moe_layer_verdicts(self._handle, _enum(_abi.SPLITS, split, "split"),
                                       _enum(_abi.SCOPES, scope, "scope"), C.byref(v)))
        out = {}
        for kind in ("balance", "specialization", "capacity"):
            x = getattr(v, kind)
            out[kind] = {"label": x.label.decode(), "metric": x.metric.decode(), "value": x.value,
                         "threshold": x.threshold, "hint": x.hint.decode()}
        return out

    def weight_metrics(self):
        m = _abi.sized(_abi.WeightMetrics)
        _check(_lib.moe_layer_weight_metrics(self._handle, C.byref(m)))
        return {name: getattr(m, name) for name, _ in _abi.WeightMetrics._fields_[2:]}

    def keep_context(self):
        """The last forward's Context (forward(..., return_context=True) returns it too)."""
        return self._context(None)
