"""ctypes mirror of include/moe/moe.h (the structs, enums and function signatures)."""
import ctypes as C
import os
import sys
import sysconfig

MAX_DIMS = 4

STATUS_NAMES = {
    0: "SUCCESS", 1: "NULL_POINTER", 2: "INVALID_ARGUMENT", 3: "SHAPE_MISMATCH",
    4: "INVALID_HANDLE", 5: "INVALID_STATE", 6: "UNSUPPORTED", 7: "OUT_OF_MEMORY",
    8: "BACKEND_ERROR", 9: "COMM_ERROR", 10: "INTERNAL_ERROR",
}
DTYPES = {"float32": 0, "float64": 1, "bfloat16": 2}
ACTIVATIONS = {"relu": 0, "gelu": 1, "gelu_tanh": 2, "silu": 3, "swiglu": 4, "geglu": 5}
ROUTERS = {"softmax": 0, "sigmoid": 1, "hash": 2, "expert_choice": 3}
NOISE = {"none": 0, "gaussian": 1, "gumbel": 2}
DROP_POLICIES = {"position": 0, "probability": 1}
HASH_MODES = {"auto": 0, "mix": 1, "table": 2, "content": 3, "balanced": 4}
CAPACITY_ORDERS = {"token": 0, "slot_major": 1, "batch_prioritized": 2, "random": 3}
AUX_LOSS_SCOPES = {"batch": 0, "sequence": 1, "global": 2}


class Tensor(C.Structure):
    _fields_ = [("data", C.c_void_p), ("shape", C.c_int64 * MAX_DIMS), ("ndim", C.c_int32),
                ("dtype", C.c_int), ("device", C.c_int), ("device_index", C.c_int32)]


class LayerConfig(C.Structure):
    VERSION = 3  # MOE_LAYER_CONFIG_VERSION
    _fields_ = [
        ("size", C.c_uint32), ("version", C.c_uint32),
        ("d_model", C.c_int64), ("d_ff", C.c_int64), ("num_experts", C.c_int64),
        ("top_k", C.c_int64), ("activation", C.c_int), ("router", C.c_int), ("dtype", C.c_int),
        ("expert_bias", C.c_int32), ("backend", C.c_char_p),
        ("router_temp_init", C.c_double), ("router_temp_final", C.c_double),
        ("router_temp_anneal_iters", C.c_int64), ("router_noise_type", C.c_int),
        ("router_noise_std_init", C.c_double), ("router_noise_decay_iters", C.c_int64),
        ("load_balance_alpha", C.c_double), ("router_z_loss_coef", C.c_double),
        ("bias_update_rate", C.c_double), ("renormalize", C.c_int32),
        ("capacity_factor", C.c_double), ("drop_policy", C.c_int), ("pad_to_capacity", C.c_int32),
        ("hash_mode", C.c_int), ("seed", C.c_uint64),
        ("telemetry_interval", C.c_int64), ("telemetry_ema_decay", C.c_double),
        ("n_group", C.c_int64), ("topk_group", C.c_int64), ("routed_scaling_factor", C.c_double),
        ("min_capacity", C.c_int64), ("num_shared_experts", C.c_int64),
        ("shared_d_ff", C.c_int64), ("shared_expert_gate", C.c_int32),
        ("capacity_order", C.c_int), ("renormalize_after_drops", C.c_int32),
        ("bias_update_from_served", C.c_int32), ("aux_loss_scope", C.c_int),
        ("aux_loss_unbiased_topk", C.c_int32),
    ]


class Weights(C.Structure):
    VERSION = 2  # MOE_WEIGHTS_VERSION
    _fields_ = [("size", C.c_uint32), ("version", C.c_uint32), ("router", Tensor), ("w1", Tensor),
                ("b1", Tensor), ("w2", Tensor), ("b2", Tensor), ("shared_w1", Tensor),
                ("shared_w2", Tensor), ("shared_gate", Tensor)]


class ForwardArgs(C.Structure):
    VERSION = 3  # MOE_FORWARD_ARGS_VERSION
    _fields_ = [("size", C.c_uint32), ("version", C.c_uint32), ("x", Tensor), ("y", Tensor),
                ("token_ids", C.POINTER(C.c_int64)), ("seq_len", C.c_int64), ("train", C.c_int32),
                ("token_mask", C.POINTER(C.c_uint8)), ("recompute", C.c_int32)]


class BackwardArgs(C.Structure):
    VERSION = 2  # MOE_BACKWARD_ARGS_VERSION
    _fields_ = [("size", C.c_uint32), ("version", C.c_uint32), ("dy", Tensor), ("dx", Tensor),
                ("grads", Weights), ("flags", C.c_uint32), ("aux_loss_grad", C.c_double),
                ("z_loss_grad", C.c_double)]


class Losses(C.Structure):
    _fields_ = [("size", C.c_uint32), ("version", C.c_uint32), ("aux_loss", C.c_double),
                ("aux_loss_scaled", C.c_double), ("z_loss", C.c_double),
                ("z_loss_scaled", C.c_double)]


class RoutingStats(C.Structure):
    _fields_ = [("size", C.c_uint32), ("version", C.c_uint32), ("tokens", C.c_int64),
                ("nonfinite_rows", C.c_int64), ("capacity", C.c_int64),
                ("dropped_total", C.c_int64), ("demand", C.POINTER(C.c_int64)),
                ("served", C.POINTER(C.c_int64)), ("entries", C.c_int64)]


SPLITS = {"train": 0, "eval": 1}
SCOPES = {"last": 0, "window": 1, "ema": 2}
EXPORT_FORMATS = {"jsonl": 0, "csv": 1, "prometheus": 2, "csv_header": 3, "csv_row": 4}
SHAPES = {0: "scalar", 1: "per_expert", 2: "matrix"}


class Verdict(C.Structure):
    _fields_ = [("label", C.c_char_p), ("metric", C.c_char_p), ("value", C.c_double),
                ("threshold", C.c_double), ("hint", C.c_char_p)]


class Verdicts(C.Structure):
    _fields_ = [("size", C.c_uint32), ("version", C.c_uint32), ("balance", Verdict),
                ("specialization", Verdict), ("capacity", Verdict)]


class VerdictThresholds(C.Structure):
    _fields_ = [("size", C.c_uint32), ("version", C.c_uint32)] + [
        (name, C.c_double) for name in (
            "collapse_max_frac", "collapse_active_experts", "imbalance_load_cv",
            "imbalance_entropy_norm", "imbalance_kl", "imbalance_dead_fraction",
            "imbalance_max_frac_floor", "imbalance_max_frac_experts", "moderate_load_cv",
            "diffuse_entropy_norm", "diffuse_top1_experts", "peaked_top1", "peaked_entropy_norm")
    ] + [("specialization_warmup_steps", C.c_int64), ("pressure_drop_rate", C.c_double),
         ("pressure_frac_gap", C.c_double)]


class WeightMetrics(C.Structure):
    _fields_ = [("size", C.c_uint32), ("version", C.c_uint32),
                ("router_gram_orthogonality", C.c_double), ("expert_similarity_mean", C.c_double),
                ("expert_similarity_std", C.c_double)]


class GroupMetrics(C.Structure):
    _fields_ = [("size", C.c_uint32), ("version", C.c_uint32), ("layers", C.c_int64),
                ("max_frac_mean", C.c_double), ("max_frac_max", C.c_double),
                ("active_min", C.c_double), ("aux_mean", C.c_double),
                ("drop_frac_mean", C.c_double), ("collapsed", C.c_int32)]


STAGE_PROFILE_FIELDS = ("forward_total", "router", "plan", "permute", "experts", "combine",
                        "telemetry", "forward_other", "backward_total", "combine_backward",
                        "experts_backward", "permute_backward", "router_backward",
                        "backward_other", "exchange", "exchange_backward")


class PeerTraffic(C.Structure):
    _fields_ = [("tokens_sent", C.c_int64), ("tokens_received", C.c_int64),
                ("bytes_sent", C.c_int64), ("bytes_received", C.c_int64)]


class CommTraffic(C.Structure):
    _fields_ = [("size", C.c_uint32), ("version", C.c_uint32), ("rank", C.c_int32),
                ("world", C.c_int32), ("exchanges", C.c_int64), ("exchange_seconds", C.c_double),
                ("tokens_sent", C.c_int64), ("tokens_received", C.c_int64),
                ("bytes_sent", C.c_int64), ("bytes_received", C.c_int64),
                ("row_bytes_sent", C.c_int64), ("row_bytes_received", C.c_int64),
                ("per_copy_row_bytes_sent", C.c_int64),
                ("per_copy_row_bytes_received", C.c_int64)]


class EpOptions(C.Structure):
    _fields_ = [("size", C.c_uint32), ("version", C.c_uint32), ("dedup", C.c_int32),
                ("chunks", C.c_int32)]


class StageProfile(C.Structure):
    _fields_ = ([("size", C.c_uint32), ("version", C.c_uint32), ("forward_calls", C.c_int64),
                 ("backward_calls", C.c_int64)] +
                [(name, C.c_double) for name in STAGE_PROFILE_FIELDS])


def sized(cls, version=None, **fields):
    """A struct with its size and version filled, as the *_INIT macros do (fields not
    given keep zero: fill defaults explicitly where zero is not the default)."""
    s = cls(**fields)
    s.size = C.sizeof(cls)
    s.version = getattr(cls, "VERSION", 1) if version is None else version
    return s


_LIBRARY_NAME = "libmoe.so.0"


def _libdirs():
    multiarch = sysconfig.get_config_var("MULTIARCH")  # x86_64-linux-gnu on Debian
    return ([f"lib/{multiarch}"] if multiarch else []) + ["lib64", "lib"]


def _installed_prefix(here):
    """PREFIX when this package sits in PREFIX/lib/pythonX.Y/{site,dist}-packages/moe."""
    packages = os.path.dirname(here)
    python = os.path.dirname(packages)
    lib = os.path.dirname(python)
    if (os.path.basename(packages) in ("site-packages", "dist-packages")
            and os.path.basename(python).startswith("python")
            and os.path.basename(lib) in ("lib", "lib64")):
        return os.path.dirname(lib)
    return None


def _candidates():
    """Where libmoe is looked for, in order (docs/python.md); MOE_LIBRARY alone when set."""
    explicit = os.environ.get("MOE_LIBRARY")
    if explicit:
        return [explicit]
    here = os.path.dirname(os.path.abspath(__file__))
    # A source checkout: bindings/python/moe -> the repository's build/.
    out = [os.path.normpath(os.path.join(here, "..", "..", "..", "build", "libmoe.so"))]
    seen = set()
    for prefix in (_installed_prefix(here), sys.prefix, "/usr/local", "/usr"):
        if prefix and os.path.realpath(prefix) not in seen:
            seen.add(os.path.realpath(prefix))
            out += [os.path.join(prefix, libdir, _LIBRARY_NAME) for libdir in _libdirs()]
    return out


def _find_library(candidates):
    """The path of the libmoe to load (MOE_LIBRARY as given, else the first candidate that
    exists), or the bare soname for the dynamic loader."""
    if os.environ.get("MOE_LIBRARY"):
        return candidates[0]
    return next((c for c in candidates if os.path.isfile(c)), _LIBRARY_NAME)


def _loaded_path(name):
    """The file the dynamic loader mapped for `name` (/proc/self/maps), else `name`."""
    stem = os.path.basename(name).split(".so")[0] + ".so"
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if os.path.basename(path).startswith(stem):
                    return path
    except OSError:
        pass
    return name


library_path = None  # the libmoe that load() opened


def load():
    global library_path
    candidates = _candidates()
    path = _find_library(candidates)
    searched = ("$MOE_LIBRARY" if os.environ.get("MOE_LIBRARY") else
                ", ".join(candidates) + ", then the dynamic loader")
    try:
        lib = C.CDLL(path)
    except OSError as e:
        raise ImportError(
            f"moe: cannot load {path} ({e}). Install the library (cmake --install build "
            f"--prefix PREFIX) or set MOE_LIBRARY to its path; looked for: {searched}") from e
    if not hasattr(lib, "moe_version"):
        raise ImportError(f"moe: {path} is not libmoe (it has no moe_version)")
    library_path = _loaded_path(path)
    status = C.c_int
    layer, ctx = C.c_void_p, C.c_void_p
    sigs = {
        "moe_status_string": (C.c_char_p, [C.c_int]),
        "moe_last_error": (C.c_char_p, []),
        "moe_version": (status, [C.POINTER(C.c_int32)] * 3),
        "moe_backend_count": (status, [C.POINTER(C.c_int32)]),
        "moe_backend_name": (status, [C.c_int32, C.POINTER(C.c_char_p)]),
        "moe_layer_create": (status, [C.POINTER(LayerConfig), C.POINTER(layer)]),
        "moe_layer_destroy": (status, [layer]),
        "moe_layer_get_config": (status, [layer, C.POINTER(LayerConfig)]),
        "moe_layer_set_weights": (status, [layer, C.POINTER(Weights)]),
        "moe_layer_forward": (status, [layer, C.POINTER(ForwardArgs), C.POINTER(ctx)]),
        "moe_layer_backward": (status, [layer, ctx, C.POINTER(BackwardArgs)]),
        "moe_layer_get_step": (status, [layer, C.POINTER(C.c_int64)]),
        "moe_layer_stage_profile": (status, [layer, C.POINTER(StageProfile), C.c_int32]),
        "moe_layer_set_step": (status, [layer, C.c_int64]),
        "moe_layer_get_selection_bias": (status, [layer, C.POINTER(C.c_double), C.c_int64]),
        "moe_layer_set_selection_bias": (status, [layer, C.POINTER(C.c_double), C.c_int64]),
        "moe_layer_reset_aux_counts": (status, [layer]),
        "moe_layer_get_aux_counts": (status, [layer, C.POINTER(C.c_double), C.c_int64,
                                              C.POINTER(C.c_int64)]),
        "moe_layer_config_preset": (status, [C.POINTER(LayerConfig), C.c_char_p]),
        "moe_layer_set_aux_comm": (status, [layer, C.c_void_p]),
        "moe_layer_build_hash_table": (status, [layer, C.POINTER(C.c_int64), C.c_int64, C.c_int64]),
        "moe_ctx_destroy": (status, [ctx]),
        "moe_ctx_routing_shape": (status, [ctx, C.POINTER(C.c_int64), C.POINTER(C.c_int64)]),
        "moe_ctx_routing": (status, [ctx, C.POINTER(C.c_int32), C.POINTER(C.c_float),
                                     C.POINTER(C.c_uint8)]),
        "moe_ctx_losses": (status, [ctx, C.POINTER(Losses)]),
        "moe_ctx_routing_stats": (status, [ctx, C.POINTER(RoutingStats)]),
        "moe_metric_count": (status, [C.POINTER(C.c_int32)]),
        "moe_metric_info": (status, [C.c_int32, C.POINTER(C.c_char_p), C.POINTER(C.c_int),
                                     C.POINTER(C.c_char_p)]),
        "moe_layer_metric": (status, [layer, C.c_int, C.c_int, C.c_char_p,
                                      C.POINTER(C.c_double), C.c_int64, C.POINTER(C.c_int64)]),
        "moe_layer_telemetry_reset": (status, [layer]),
        "moe_layer_set_name": (status, [layer, C.c_char_p]),
        "moe_layer_telemetry_export": (status, [layer, C.c_int, C.c_int, C.c_int, C.c_char_p,
                                                C.c_size_t, C.POINTER(C.c_size_t)]),
        "moe_layer_set_verdict_thresholds": (status, [layer, C.POINTER(VerdictThresholds)]),
        "moe_layer_verdicts": (status, [layer, C.c_int, C.c_int, C.POINTER(Verdicts)]),
        "moe_ctx_compare_routing": (status, [ctx, ctx, C.POINTER(C.c_double),
                                             C.POINTER(C.c_double)]),
        "moe_layer_weight_metrics": (status, [layer, C.POINTER(WeightMetrics)]),
        "moe_comm_create_local": (status, [C.POINTER(C.c_void_p)]),
        "moe_comm_destroy": (status, [C.c_void_p]),
        "moe_comm_rank": (status, [C.c_void_p, C.POINTER(C.c_int32), C.POINTER(C.c_int32)]),
        "moe_layer_set_comm": (status, [layer, C.c_void_p, C.POINTER(C.c_int32), C.c_int64]),
        "moe_layer_local_experts": (status, [layer, C.POINTER(C.c_int32), C.c_int64,
                                             C.POINTER(C.c_int64)]),
        "moe_layer_reduce_router_grad": (status, [layer, Tensor]),
        "moe_layer_comm_traffic": (status, [layer, C.POINTER(CommTraffic),
                                            C.POINTER(PeerTraffic), C.c_int32, C.c_int32]),
        "moe_layer_set_ep_options": (status, [layer, C.POINTER(EpOptions)]),
        "moe_layer_get_ep_options": (status, [layer, C.POINTER(EpOptions)]),
        "moe_layer_expert_load": (status, [layer, C.POINTER(C.c_double), C.c_int64, C.c_int32]),
        "moe_placement_from_load": (status, [C.POINTER(C.c_double), C.c_int64, C.c_int32,
                                             C.c_int64, C.c_int32, C.POINTER(C.c_int32),
                                             C.POINTER(C.c_double), C.POINTER(C.c_double)]),
        "moe_layer_move_expert_tensor": (status, [layer, C.POINTER(C.c_int32), C.c_int64,
                                                  C.c_void_p, C.c_void_p, C.c_int64]),
        "moe_layer_set_placement": (status, [layer, C.POINTER(C.c_int32), C.c_int64]),
        "moe_group_create": (status, [C.POINTER(C.c_void_p)]),
        "moe_group_destroy": (status, [C.c_void_p]),
        "moe_group_add": (status, [C.c_void_p, layer]),
        "moe_group_get_metrics": (status, [C.c_void_p, C.c_int, C.c_int, C.POINTER(GroupMetrics)]),
        "moe_group_telemetry_export": (status, [C.c_void_p, C.c_int, C.c_int, C.c_int, C.c_char_p,
                                                C.c_size_t, C.POINTER(C.c_size_t)]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib
