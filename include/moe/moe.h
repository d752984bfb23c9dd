/*
 * moe.h: the stable C ABI of moe-runtime, a Mixture-of-Experts layer runtime.
 *
 * Conventions (every function in this header follows them):
 *  - Every function returns a moe_status_t. On failure, moe_last_error() returns a
 *    thread-local message saying exactly what was wrong; nothing the caller passed
 *    is modified and every handle stays usable.
 *  - Handles are opaque. Each create has a destroy; destroy accepts NULL. A handle
 *    that was destroyed, or a handle of the wrong kind, is rejected with
 *    MOE_STATUS_INVALID_HANDLE (never dereferenced).
 *  - Every struct that crosses the ABI (except the frozen moe_tensor_t) begins with
 *    `size` and `version`. Fill it with its *_INIT macro: the library reads
 *    min(size, sizeof) bytes and supplies defaults for fields an older caller did not
 *    know about, so the ABI stays stable as structs grow.
 *  - Tensors are dense and row-major. Weights and gradients are owned by the caller;
 *    the library keeps pointers to bound weights and never frees them. Saved state
 *    (moe_ctx_t) and workspace are owned by the library.
 *  - Thread contract: one thread at a time per layer (and per context); independent
 *    layers may be used concurrently from different threads.
 *  - Integer sizes are 64-bit. The header is C99 and holds no C++, CUDA or MPI type.
 */
#ifndef MOE_MOE_H
#define MOE_MOE_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define MOE_API __declspec(dllexport)
#else
#define MOE_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_VERSION_MAJOR 0
#define MOE_VERSION_MINOR 1
#define MOE_VERSION_PATCH 0

/* ------------------------------------------------------------------ statuses */

typedef enum moe_status {
  MOE_STATUS_SUCCESS = 0,
  MOE_STATUS_NULL_POINTER = 1,     /* a required pointer argument was NULL */
  MOE_STATUS_INVALID_ARGUMENT = 2, /* a value is out of its documented range */
  MOE_STATUS_SHAPE_MISMATCH = 3,   /* a tensor's shape, rank or dtype does not fit */
  MOE_STATUS_INVALID_HANDLE = 4,   /* destroyed, never created, or of the wrong kind */
  MOE_STATUS_INVALID_STATE = 5,    /* call out of order (e.g. forward before weights) */
  MOE_STATUS_UNSUPPORTED = 6,      /* valid, but not available in this build/backend */
  MOE_STATUS_OUT_OF_MEMORY = 7,
  MOE_STATUS_BACKEND_ERROR = 8, /* the compute backend (oneDNN, CUDA) reported an error */
  MOE_STATUS_COMM_ERROR = 9,    /* a communicator failed: peer gone, timeout */
  MOE_STATUS_INTERNAL_ERROR = 10
} moe_status_t;

/* A static English name of the status, e.g. "MOE_STATUS_SHAPE_MISMATCH". Never NULL. */
MOE_API const char* moe_status_string(moe_status_t status);

/* The message of the last failed call on this thread ("" if none). Valid until the
 * next call into the library on the same thread. Never NULL. */
MOE_API const char* moe_last_error(void);

/* Library version (any pointer may be NULL). */
MOE_API moe_status_t moe_version(int32_t* major, int32_t* minor, int32_t* patch);

/* ------------------------------------------------------------------ enums */

typedef enum moe_dtype {
  MOE_DTYPE_F32 = 0,
  MOE_DTYPE_F64 = 1, /* cpu_ref only: for gradient checks by finite differences */
  MOE_DTYPE_BF16 = 2 /* bfloat16 storage, float32 (or wider) accumulation */
} moe_dtype_t;

typedef enum moe_device { MOE_DEVICE_CPU = 0, MOE_DEVICE_CUDA = 1 } moe_device_t;

typedef enum moe_activation {
  MOE_ACTIVATION_RELU = 0,
  MOE_ACTIVATION_GELU = 1,      /* exact erf form, as PyTorch's default */
  MOE_ACTIVATION_GELU_TANH = 2, /* tanh approximation */
  MOE_ACTIVATION_SILU = 3,
  MOE_ACTIVATION_SWIGLU = 4, /* gated: W1 is [d, 2*d_ff] = [gate | up]; silu(gate)*up */
  MOE_ACTIVATION_GEGLU = 5   /* gated: gelu(gate)*up (erf form) */
} moe_activation_t;

typedef enum moe_router {
  MOE_ROUTER_SOFTMAX = 0,      /* token choice, softmax scores */
  MOE_ROUTER_SIGMOID = 1,      /* token choice, sigmoid scores (DeepSeek-V3 style) */
  MOE_ROUTER_HASH = 2,         /* no learned weights, see moe_hash_mode_t */
  MOE_ROUTER_EXPERT_CHOICE = 3 /* each expert takes its top-C tokens */
} moe_router_t;

typedef enum moe_noise {
  MOE_NOISE_NONE = 0,
  MOE_NOISE_GAUSSIAN = 1,
  MOE_NOISE_GUMBEL = 2
} moe_noise_t;

typedef enum moe_drop_policy {
  MOE_DROP_POSITION = 0,   /* an expert keeps the earliest tokens by index */
  MOE_DROP_PROBABILITY = 1 /* an expert keeps the copies with the highest gates */
} moe_drop_policy_t;

/* The order in which the position policy fills capacity (docs/routing.md). */
typedef enum moe_capacity_order {
  MOE_CAPACITY_TOKEN_ORDER = 0,       /* token by token, each token's slots in rank order */
  MOE_CAPACITY_SLOT_MAJOR = 1,        /* every first choice before any second (GShard, Switch,
                                         DeepSpeed, flaxformer) */
  MOE_CAPACITY_BATCH_PRIORITIZED = 2, /* slot-major, each slot's tokens by their top-1
                                         probability, highest first (V-MoE, flaxformer's
                                         batch_prioritized_routing) */
  MOE_CAPACITY_RANDOM = 3             /* each expert keeps a uniformly random subset of its copies,
                                         seeded by (seed, step, token, slot) (DeepSpeed's random token
                                         selection) */
} moe_capacity_order_t;

/* The scope the load-balancing (aux) loss E * sum_e f_e * Pbar_e is taken over
 * (docs/routing.md). */
typedef enum moe_aux_loss_scope {
  MOE_AUX_LOSS_BATCH = 0,    /* the call's batch (Switch, GShard, Mixtral) */
  MOE_AUX_LOSS_SEQUENCE = 1, /* each sequence of seq_len tokens, averaged over the batch's
                                sequences (DeepSeek-V3's complementary sequence-wise loss) */
  MOE_AUX_LOSS_GLOBAL = 2    /* f from counts accumulated over training calls until
                                moe_layer_reset_aux_counts, summed over the data-parallel
                                communicator of moe_layer_set_aux_comm (Qwen3's global-batch
                                loss) */
} moe_aux_loss_scope_t;

typedef enum moe_hash_mode {
  MOE_HASH_AUTO = 0,    /* table if one was built, else mix of ids, else content */
  MOE_HASH_MIX = 1,     /* token ids through a fixed 64-bit mix */
  MOE_HASH_TABLE = 2,   /* balanced lookup table (moe_layer_build_hash_table) */
  MOE_HASH_CONTENT = 3, /* a hash of the row's bytes; used when no ids are given */
  MOE_HASH_BALANCED = 4 /* each call's tokens split evenly by the rank of their hash (of the
                           id, else of the row): per-expert counts within 1 of each other */
} moe_hash_mode_t;

/* ------------------------------------------------------------------ tensors */

#define MOE_MAX_DIMS 4

/* A dense row-major tensor view. Frozen: this struct will never change size. */
typedef struct moe_tensor {
  void* data;
  int64_t shape[MOE_MAX_DIMS];
  int32_t ndim;
  moe_dtype_t dtype;
  moe_device_t device;
  int32_t device_index;
} moe_tensor_t;

/* A tensor the caller leaves out (data NULL, rank 0). */
#define MOE_TENSOR_EMPTY \
  { NULL, {0, 0, 0, 0}, 0, MOE_DTYPE_F32, MOE_DEVICE_CPU, 0 }

/* A host tensor over memory the caller holds as const, for the tensors the library only
 * reads: args.x, args.dy, the weights of moe_layer_set_weights. The library never writes
 * through those, so the one cast that `data`'s type needs lives here, not in every
 * caller. ndim (1..MOE_MAX_DIMS) values are read from shape; a bad ndim gives a tensor of
 * rank 0, which every entry point refuses. */
static inline moe_tensor_t moe_tensor_const(const void* data, moe_dtype_t dtype, int32_t ndim,
                                            const int64_t* shape) {
  moe_tensor_t t = MOE_TENSOR_EMPTY;
  int32_t i;
  t.data = (void*)(uintptr_t)data;
  t.dtype = dtype;
  if (ndim < 1 || ndim > MOE_MAX_DIMS || shape == NULL) return t;
  for (i = 0; i < ndim; ++i) t.shape[i] = shape[i];
  t.ndim = ndim;
  return t;
}

/* ------------------------------------------------------------------ layer config */

#define MOE_LAYER_CONFIG_VERSION 3

typedef struct moe_layer_config {
  uint32_t size;    /* sizeof(moe_layer_config_t) as the caller compiled it */
  uint32_t version; /* MOE_LAYER_CONFIG_VERSION */

  int64_t d_model;     /* d: row width of x and y, > 0 */
  int64_t d_ff;        /* expert hidden width, > 0 */
  int64_t num_experts; /* E, >= 1 */
  int64_t top_k;       /* k, 1 <= k <= E */
  moe_activation_t activation;
  moe_router_t router;
  moe_dtype_t dtype;
  int32_t expert_bias; /* 1: experts have biases b1 [E,F] and b2 [E,d] */
  const char* backend; /* a name of moe_backend_name ("cuda", "onednn", "cpu_ref"), "auto" or
                          NULL (= "auto": the first host-memory backend that supports the
                          config); copied at create */

  /* Router temperature, annealed linearly over training steps. */
  double router_temp_init;          /* > 0; default 1 */
  double router_temp_final;         /* > 0; default 1 */
  int64_t router_temp_anneal_iters; /* 0: constant router_temp_init */
  /* Selection noise (training calls only), std decaying linearly to 0. */
  moe_noise_t router_noise_type;    /* default none */
  double router_noise_std_init;     /* >= 0 */
  int64_t router_noise_decay_iters; /* 0: constant std */
  /* Losses. */
  double load_balance_alpha; /* weight of the Switch aux loss, >= 0; default 0 */
  double router_z_loss_coef; /* weight of the z-loss, >= 0; default 0 */
  /* Aux-loss-free balancing: selection bias b_e += rate*sign(mean load - load_e)
   * after each training step. 0 = off. */
  double bias_update_rate;
  /* Renormalise the k chosen gates to sum to 1: -1 = auto (on for k>1, off for k=1). */
  int32_t renormalize;
  /* Capacity: C = ceil(capacity_factor * T*k/E); <= 0 means dropless. */
  double capacity_factor;
  moe_drop_policy_t drop_policy;
  int32_t pad_to_capacity; /* 1: expert buffers hold exactly C rows each */
  moe_hash_mode_t hash_mode;
  uint64_t seed; /* every random choice (noise) derives from it */
  /* version 2 */
  int64_t telemetry_interval; /* record routing telemetry every N-th forward call; 0 = off;
                                 default 1 */
  double telemetry_ema_decay; /* EMA of every scalar: ema = decay*ema + (1-decay)*x;
                                 default 0.9 */
  /* version 3: DeepSeek-V3's group-limited routing (docs/routing.md). The experts form
   * n_group equal groups of consecutive ids; each token keeps the topk_group groups whose
   * two best selection scores sum highest, then takes its top_k inside them. */
  int64_t n_group;              /* 0 or 1: no groups; else divides num_experts */
  int64_t topk_group;           /* groups kept per token, in [1, n_group]; 0 = all */
  double routed_scaling_factor; /* every token-choice gate times this, after
                                   renormalisation; finite, in (0, 1e6]; default 1 */
  /* DeepSpeed's floor: C = max(min_capacity, ceil(capacity_factor*T*k/E)); token choice
   * with a capacity_factor > 0 only; 0 = none */
  int64_t min_capacity;
  /* Shared experts (DeepSeek-V2/V3, Qwen2-MoE): every token also goes through one MLP of
   * width num_shared_experts * shared_d_ff (the experts' activation; weights shared_w1,
   * shared_w2), added to the routed output, times sigmoid(x . shared_gate) when
   * shared_expert_gate is 1 (Qwen2-MoE's shared_expert_gate). */
  int64_t num_shared_experts; /* 0 = none */
  int64_t shared_d_ff;        /* each shared expert's hidden width; 0 with shared experts: d_ff */
  int32_t shared_expert_gate; /* 1: a per-token sigmoid gate [d, 1] on the shared output */
  /* Capacity conventions: the order the position policy fills capacity in, and whether
   * the renormalised gates are renormalised again over the copies kept after drops
   * (DeepSpeed's top-2 gating; the default renormalises before drops). */
  moe_capacity_order_t capacity_order;
  int32_t renormalize_after_drops;
  /* 1: the selection-bias update counts each expert's served copies, min(demand, C),
   * rather than its demand before drops (needs bias_update_rate > 0) */
  int32_t bias_update_from_served;
  /* The aux loss's scope, and whether its counts f_e come from each token's top_k of P
   * (the scores without selection bias, groups or noise: Megatron-Core's aux loss under
   * an expert bias) rather than from the experts chosen */
  moe_aux_loss_scope_t aux_loss_scope;
  int32_t aux_loss_unbiased_topk;
} moe_layer_config_t;

#define MOE_LAYER_CONFIG_INIT                                                                      \
  {                                                                                                \
    sizeof(moe_layer_config_t), MOE_LAYER_CONFIG_VERSION, 0, 0, 0, 1, MOE_ACTIVATION_GELU,         \
        MOE_ROUTER_SOFTMAX, MOE_DTYPE_F32, 0, NULL, 1.0, 1.0, 0, MOE_NOISE_NONE, 0.0, 0, 0.0, 0.0, \
        0.0, -1, 0.0, MOE_DROP_POSITION, 0, MOE_HASH_AUTO, 0, 1, 0.9, 0, 0, 1.0, 0, 0, 0, 0,       \
        MOE_CAPACITY_TOKEN_ORDER, 0, 0, MOE_AUX_LOSS_BATCH, 0                                      \
  }

/* ------------------------------------------------------------------ weights */

#define MOE_WEIGHTS_VERSION 2

/* Parameters (or, in backward, their gradients). Shapes, all of the layer's dtype:
 *   router [d, E]      (may be left empty for the hash router)
 *   w1     [E, d, F]   F = d_ff, or 2*d_ff for gated activations ([gate | up])
 *   b1     [E, F]      only with expert_bias
 *   w2     [E, d_ff, d]
 *   b2     [E, d]      only with expert_bias */
typedef struct moe_weights {
  uint32_t size;
  uint32_t version;
  moe_tensor_t router;
  moe_tensor_t w1;
  moe_tensor_t b1;
  moe_tensor_t w2;
  moe_tensor_t b2;
  /* version 2: the shared experts' MLP (config.num_shared_experts > 0), S = the number of
   * shared experts, F' = 2*S*shared_d_ff for swiglu/geglu, else S*shared_d_ff */
  moe_tensor_t shared_w1;   /* [d, F'] */
  moe_tensor_t shared_w2;   /* [S*shared_d_ff, d] */
  moe_tensor_t shared_gate; /* [d, 1], with config.shared_expert_gate only */
} moe_weights_t;

#define MOE_WEIGHTS_INIT                                                                          \
  {                                                                                               \
    sizeof(moe_weights_t), MOE_WEIGHTS_VERSION, MOE_TENSOR_EMPTY, MOE_TENSOR_EMPTY,               \
        MOE_TENSOR_EMPTY, MOE_TENSOR_EMPTY, MOE_TENSOR_EMPTY, MOE_TENSOR_EMPTY, MOE_TENSOR_EMPTY, \
        MOE_TENSOR_EMPTY                                                                          \
  }

/* ------------------------------------------------------------------ calls */

#define MOE_FORWARD_ARGS_VERSION 3

typedef struct moe_forward_args {
  uint32_t size;
  uint32_t version;
  moe_tensor_t x;           /* [IN]  [T, d] */
  moe_tensor_t y;           /* [OUT] [T, d]; overwritten (the caller adds the residual) */
  const int64_t* token_ids; /* [IN]  optional, T ids for the hash router */
  int64_t seq_len;          /* [IN]  tokens per sequence (telemetry), 0 = unknown */
  int32_t train;            /* [IN]  1: training call (noise, anneal, bias updates) */
  /* version 2 */
  const uint8_t* token_mask; /* [IN]  optional, T host bytes (an attention mask): 0 marks
                                padding, routed nowhere, output 0, in no loss or metric,
                                dx 0; NULL: every token takes part */
  /* version 3 */
  int32_t recompute; /* [IN]  1 (with train 1): activation checkpointing's second forward of a
                        training call, for its backward: the training call's routing at the
                        layer's current step and selection bias (set them back to the
                        original call's first), and no state change: no step, no bias
                        update, no telemetry, and the global-batch aux loss reads its
                        counts as they stand (docs/torch.md) */
} moe_forward_args_t;

#define MOE_FORWARD_ARGS_INIT                                                                 \
  {                                                                                           \
    sizeof(moe_forward_args_t), MOE_FORWARD_ARGS_VERSION, MOE_TENSOR_EMPTY, MOE_TENSOR_EMPTY, \
        NULL, 0, 1, NULL, 0                                                                   \
  }

#define MOE_BACKWARD_ACCUMULATE 1u /* add into gradient buffers instead of overwriting */

#define MOE_BACKWARD_ARGS_VERSION 2

typedef struct moe_backward_args {
  uint32_t size;
  uint32_t version;
  moe_tensor_t dy;     /* [IN]  [T, d] gradient of the loss w.r.t. y */
  moe_tensor_t dx;     /* [OUT] [T, d]; MOE_TENSOR_EMPTY (data NULL, rank 0) to skip */
  moe_weights_t grads; /* [OUT] gradient buffers, shaped as the weights; a tensor left
                          MOE_TENSOR_EMPTY is skipped (data NULL with a shape is refused) */
  uint32_t flags;      /* MOE_BACKWARD_ACCUMULATE applies to dx and to every grad */
  /* version 2: the gradient of the caller's loss with respect to the forward's
   * aux_loss_scaled and z_loss_scaled (moe_ctx_losses). Backward adds that multiple of
   * each loss's gradient to the router's: 1 (the default) when the losses are added to
   * the training loss as they are, 0 to leave them out (autograd frameworks pass the
   * incoming gradients). Finite. */
  double aux_loss_grad;
  double z_loss_grad;
} moe_backward_args_t;

#define MOE_BACKWARD_ARGS_INIT                                                                  \
  {                                                                                             \
    sizeof(moe_backward_args_t), MOE_BACKWARD_ARGS_VERSION, MOE_TENSOR_EMPTY, MOE_TENSOR_EMPTY, \
        MOE_WEIGHTS_INIT, 0, 1.0, 1.0                                                           \
  }

#define MOE_LOSSES_VERSION 1

typedef struct moe_losses {
  uint32_t size;
  uint32_t version;
  double aux_loss;        /* E * sum_e f_e * Pbar_e (1 when uniform), unscaled */
  double aux_loss_scaled; /* load_balance_alpha * aux_loss */
  double z_loss;          /* mean_t logsumexp(z_t)^2, unscaled */
  double z_loss_scaled;   /* router_z_loss_coef * z_loss */
} moe_losses_t;

#define MOE_LOSSES_INIT \
  { sizeof(moe_losses_t), MOE_LOSSES_VERSION, 0, 0, 0, 0 }

#define MOE_ROUTING_STATS_VERSION 2

/* Counts of one forward call. The per-expert arrays are caller-owned and may be NULL;
 * when either is given, `entries` says how many each holds, and fewer than E is
 * refused (MOE_STATUS_SHAPE_MISMATCH, nothing written). A version-1 caller's struct,
 * which has no `entries`, is trusted to hold E, as before. */
typedef struct moe_routing_stats {
  uint32_t size;
  uint32_t version;
  int64_t tokens;         /* T, less masked (padding) tokens */
  int64_t nonfinite_rows; /* tokens whose logits (or row, for hash) held NaN/Inf */
  int64_t capacity;       /* C (dropless: max demand) */
  int64_t dropped_total;
  int64_t* demand; /* [OUT] d_e, copies chosen per expert before capacity */
  int64_t* served; /* [OUT] s_e = min(d_e, C) */
  int64_t entries; /* [IN] room in demand and in served, >= E (version 2) */
} moe_routing_stats_t;

#define MOE_ROUTING_STATS_INIT \
  { sizeof(moe_routing_stats_t), MOE_ROUTING_STATS_VERSION, 0, 0, 0, 0, NULL, NULL, 0 }

/* ------------------------------------------------------------------ handles */

typedef struct moe_layer* moe_layer_t;
typedef const struct moe_layer* const_moe_layer_t;
typedef struct moe_ctx* moe_ctx_t; /* saved state of one forward call */
typedef const struct moe_ctx* const_moe_ctx_t;

/* ------------------------------------------------------------------ backends */

/* Number of backends a layer can ask for, and the name of the i-th, in "auto"'s order of
 * preference: cuda, onednn, then cpu_ref, always last. onednn and cpu_ref are compiled into
 * libmoe; cuda is a plugin, libmoe_cuda.so.0, listed when a regular file of that name is
 * beside libmoe (checked once per process) and loaded the first time a layer asks for it;
 * whatever stops it loading or running is that call's MOE_STATUS_UNSUPPORTED and message. */
MOE_API moe_status_t moe_backend_count(int32_t* count);
MOE_API moe_status_t moe_backend_name(int32_t index, const char** name);

/* ------------------------------------------------------------------ layer */

/* Creates a layer. Validates the whole config: sizes > 0, 1 <= k <= E, temperatures
 * > 0, non-negative coefficients, a known backend that supports the dtype. */
MOE_API moe_status_t moe_layer_create(const moe_layer_config_t* config, moe_layer_t* layer);
MOE_API moe_status_t moe_layer_destroy(moe_layer_t layer);

/* The layer's effective config (defaults resolved, backend = the one chosen; the
 * backend string stays owned by the layer). Reads config->size like every input. */
MOE_API moe_status_t moe_layer_get_config(const_moe_layer_t layer, moe_layer_config_t* config);

/* Binds caller-owned weights (no copy). Shapes and dtypes are checked here; the
 * memory must stay valid and unchanged from each forward to its backward. */
MOE_API moe_status_t moe_layer_set_weights(moe_layer_t layer, const moe_weights_t* weights);

/* Forward. ctx may be NULL (inference: nothing is saved). Otherwise *ctx receives a
 * new saved state that moe_layer_backward consumes and moe_ctx_destroy frees; several
 * may be alive at once (micro-batches). A training call (args->train) advances the
 * layer's step counter (temperature and noise schedules) and applies the selection-bias
 * update; an eval call changes no layer state. */
MOE_API moe_status_t moe_layer_forward(moe_layer_t layer, const moe_forward_args_t* args,
                                       moe_ctx_t* ctx);

/* Backward of the forward call that produced ctx. Writes dx and every non-empty
 * gradient buffer (overwrite, or add with MOE_BACKWARD_ACCUMULATE). The aux-loss and
 * z-loss gradients (scaled by their coefficients) are included in the router and x
 * gradients. ctx stays valid: backward may be called again. */
MOE_API moe_status_t moe_layer_backward(moe_layer_t layer, const_moe_ctx_t ctx,
                                        const moe_backward_args_t* args);

/* The device stream (a cudaStream_t for the cuda backend; see moe_cuda.h) on which
 * the layer's later calls enqueue their work; NULL is the default stream. Device
 * backends do not synchronise with the host except where a call says so: forward reads
 * the per-expert counts back once (they size the expert GEMMs and are the routing
 * telemetry), and outputs are ready when the stream reaches them. CPU backends
 * ignore the stream. */
MOE_API moe_status_t moe_layer_set_stream(moe_layer_t layer, void* stream);

/* Step counter (training forward calls so far); set it to resume a run. */
MOE_API moe_status_t moe_layer_get_step(const_moe_layer_t layer, int64_t* step);
MOE_API moe_status_t moe_layer_set_step(moe_layer_t layer, int64_t step);

/* Per-expert selection bias (E values, float64), used by the softmax and sigmoid
 * routers for selection only (not for gate values). */
MOE_API moe_status_t moe_layer_get_selection_bias(const_moe_layer_t layer, double* bias,
                                                  int64_t count);
MOE_API moe_status_t moe_layer_set_selection_bias(moe_layer_t layer, const double* bias,
                                                  int64_t count);

/* The global-batch aux loss (aux_loss_scope MOE_AUX_LOSS_GLOBAL): each training forward
 * adds its counts (the batch's, summed over the aux communicator) to an accumulator,
 * and f_e is read from it. Reset after each optimizer step, as Megatron-Core and Qwen3
 * do: the next micro-batch starts a new global batch. get copies the E accumulated
 * counts (count == num_experts) and the number of calls they hold (either may be NULL).
 * Both refuse a layer of another scope. */
MOE_API moe_status_t moe_layer_reset_aux_counts(moe_layer_t layer);
MOE_API moe_status_t moe_layer_get_aux_counts(const_moe_layer_t layer, double* counts,
                                              int64_t count, int64_t* calls);

/* A model family's published routing conventions (docs/routing.md, "Presets"): family
 * is "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3" or "switch". Sets the family's
 * experts, top_k, router, activation, renormalisation, groups, scaling, shared experts,
 * capacity, losses and balancing over an initialised config; leaves d_model, d_ff,
 * dtype, backend, seed and telemetry as they are. Change any field afterwards (small
 * experiments shrink num_experts). An unknown family is INVALID_ARGUMENT and leaves the
 * config untouched. */
MOE_API moe_status_t moe_layer_config_preset(moe_layer_config_t* config, const char* family);

/* Hash router: builds the balanced lookup table from token-id frequencies in ids[0..n)
 * (ids in [0, vocab_size)). Ids seen most often are placed first, each on the k least
 * loaded distinct experts. Ids outside the table fall back to the 64-bit mix. */
MOE_API moe_status_t moe_layer_build_hash_table(moe_layer_t layer, const int64_t* ids, int64_t n,
                                                int64_t vocab_size);

/* ------------------------------------------------------------------ saved state */

MOE_API moe_status_t moe_ctx_destroy(moe_ctx_t ctx);

/* Shape of the routing decision: *tokens = T, *slots = k for token choice, E for
 * expert choice (slot j of a token is then expert j, or -1 if e did not take it). */
MOE_API moe_status_t moe_ctx_routing_shape(const_moe_ctx_t ctx, int64_t* tokens, int64_t* slots);

/* Copies the routing decision into caller buffers of tokens*slots entries (any may
 * be NULL): expert id per slot (-1: none, e.g. a non-finite or masked row), gate (as
 * float, after renormalisation and routed_scaling_factor), dropped flag (1 if the copy
 * exceeded capacity). */
MOE_API moe_status_t moe_ctx_routing(const_moe_ctx_t ctx, int32_t* experts, float* gates,
                                     uint8_t* dropped);

MOE_API moe_status_t moe_ctx_losses(const_moe_ctx_t ctx, moe_losses_t* losses);
MOE_API moe_status_t moe_ctx_routing_stats(const_moe_ctx_t ctx, moe_routing_stats_t* stats);

/* ------------------------------------------------------------------ telemetry */
/* Every forward call that telemetry samples (config.telemetry_interval) records the
 * routing statistics of the call, from the very counts and probabilities that the
 * dispatch used. Training and eval calls are kept apart (split); each split has the
 * last call, a window summed since the last reset, and an EMA of every scalar (scope).
 * Metric names and definitions: docs/metrics.md; reading them: docs/telemetry.md. */

typedef enum moe_split { MOE_SPLIT_TRAIN = 0, MOE_SPLIT_EVAL = 1 } moe_split_t;

typedef enum moe_scope {
  MOE_SCOPE_LAST = 0,   /* the last sampled call */
  MOE_SCOPE_WINDOW = 1, /* counts summed since the last reset; per-token means token-weighted */
  MOE_SCOPE_EMA = 2     /* exponential moving average of each scalar (vectors: window) */
} moe_scope_t;

typedef enum moe_metric_shape {
  MOE_METRIC_SCALAR = 0,
  MOE_METRIC_PER_EXPERT = 1, /* E values */
  MOE_METRIC_MATRIX = 2      /* E x E values, row-major */
} moe_metric_shape_t;

/* The catalogue of metric names (scalars first, then per-expert, then matrix), so that
 * bindings never hard-code a layout. `help` may be NULL. */
MOE_API moe_status_t moe_metric_count(int32_t* count);
MOE_API moe_status_t moe_metric_info(int32_t index, const char** name, moe_metric_shape_t* shape,
                                     const char** help);

/* One metric by name: writes up to `capacity` values (1, E or E*E) and the number the
 * metric has in *count (query with values NULL). Undefined values (no tokens yet, no
 * sequence pairs) are NaN. */
MOE_API moe_status_t moe_layer_metric(const_moe_layer_t layer, moe_split_t split, moe_scope_t scope,
                                      const char* name, double* values, int64_t capacity,
                                      int64_t* count);

#define MOE_TELEMETRY_SNAPSHOT_VERSION 1

/* Every metric at once, in catalogue order. The arrays are caller-owned and may be NULL:
 * scalars [number of scalar metrics], per_expert [number of per-expert metrics * E],
 * coactivation [E * E]. */
typedef struct moe_telemetry_snapshot {
  uint32_t size;
  uint32_t version;
  moe_split_t split;      /* [IN] */
  moe_scope_t scope;      /* [IN] */
  double* scalars;        /* [OUT] */
  double* per_expert;     /* [OUT] */
  double* coactivation;   /* [OUT] */
  int32_t num_scalars;    /* [OUT] */
  int32_t num_per_expert; /* [OUT] */
  int64_t num_experts;    /* [OUT] */
  int64_t step; /* [OUT] layer step when the last call of this split was recorded, -1: none */
} moe_telemetry_snapshot_t;

#define MOE_TELEMETRY_SNAPSHOT_INIT                                                    \
  {                                                                                    \
    sizeof(moe_telemetry_snapshot_t), MOE_TELEMETRY_SNAPSHOT_VERSION, MOE_SPLIT_TRAIN, \
        MOE_SCOPE_LAST, NULL, NULL, NULL, 0, 0, 0, -1                                  \
  }

MOE_API moe_status_t moe_layer_telemetry(const_moe_layer_t layer,
                                         moe_telemetry_snapshot_t* snapshot);

/* Where the time goes: wall-clock seconds spent in each pipeline stage, summed over
 * the calls since the layer was created or the profile last reset. Host backends
 * (cpu_ref, onednn) time every stage; the cuda backend, whose stages run
 * asynchronously on the stream, fills the totals only. "other" is the rest of the
 * call (checks, saving the input, buffer allocation). */
#define MOE_STAGE_PROFILE_VERSION 1
typedef struct moe_stage_profile {
  uint32_t size;
  uint32_t version;
  int64_t forward_calls;  /* [OUT] */
  int64_t backward_calls; /* [OUT] */
  double forward_total, router, plan, permute, experts, combine, telemetry,
      forward_other; /* [OUT] seconds */
  double backward_total, combine_backward, experts_backward, permute_backward, router_backward,
      backward_other; /* [OUT] seconds */
  /* [OUT] seconds in the expert-parallel exchanges (counts, rows, results) of forward
   * and of backward; 0 without a communicator. Not part of the other stages. */
  double exchange, exchange_backward;
} moe_stage_profile_t;

#define MOE_STAGE_PROFILE_INIT                                                                     \
  {                                                                                                \
    sizeof(moe_stage_profile_t), MOE_STAGE_PROFILE_VERSION, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, \
        0, 0, 0, 0, 0                                                                              \
  }

/* Reads the profile; with reset != 0 also starts a new one. */
MOE_API moe_status_t moe_layer_stage_profile(moe_layer_t layer, moe_stage_profile_t* profile,
                                             int32_t reset);

/* Starts new windows and EMAs (both splits). */
MOE_API moe_status_t moe_layer_telemetry_reset(moe_layer_t layer);

/* The layer's name in exports (default "layer<serial>"); copied. */
MOE_API moe_status_t moe_layer_set_name(moe_layer_t layer, const char* name);

typedef enum moe_export_format {
  MOE_EXPORT_JSONL = 0,      /* one JSON object and a newline per layer */
  MOE_EXPORT_CSV = 1,        /* a header line and a row per layer (columns name_e<i>) */
  MOE_EXPORT_PROMETHEUS = 2, /* text exposition format, gauges named moe_<metric> */
  MOE_EXPORT_CSV_HEADER = 3, /* the CSV header line alone: write it once per file ... */
  MOE_EXPORT_CSV_ROW = 4     /* ... then append the rows alone on every call */
} moe_export_format_t;

/* Renders every metric of (split, scope) into `buffer` (NUL-terminated). *length gets
 * the length without the NUL; with buffer NULL or too small nothing is written and
 * *length says how much is needed. Every output is well formed whatever the layer's
 * name holds: the name is made valid UTF-8 (invalid bytes become U+FFFD) and escaped
 * for the format (JSON escapes, CSV quoting per RFC 4180, Prometheus label escapes). */
MOE_API moe_status_t moe_layer_telemetry_export(const_moe_layer_t layer, moe_export_format_t format,
                                                moe_split_t split, moe_scope_t scope, char* buffer,
                                                size_t capacity, size_t* length);

/* Verdicts (docs/metrics.md, verdicts). Each names the metric and threshold that decided it
 * and a hint; all strings are static. Thresholds are per layer. */
#define MOE_VERDICT_THRESHOLDS_VERSION 1

typedef struct moe_verdict_thresholds {
  uint32_t size;
  uint32_t version;
  double collapse_max_frac;            /* 0.90 */
  double collapse_active_experts;      /* 1 */
  double imbalance_load_cv;            /* 0.6 */
  double imbalance_entropy_norm;       /* 0.5 */
  double imbalance_kl;                 /* 2.0 */
  double imbalance_dead_fraction;      /* 0.25 (dead_experts > E/4) */
  double imbalance_max_frac_floor;     /* 0.35 */
  double imbalance_max_frac_experts;   /* 3.0 (max_frac > max(0.35, 3/E)) */
  double moderate_load_cv;             /* 0.2 */
  double diffuse_entropy_norm;         /* 0.95 */
  double diffuse_top1_experts;         /* 1.2 (top1_p_mean < 1.2/E) */
  double peaked_top1;                  /* 0.8 */
  double peaked_entropy_norm;          /* 0.2 */
  int64_t specialization_warmup_steps; /* 100 */
  double pressure_drop_rate;           /* 0.02 */
  double pressure_frac_gap;            /* 0.02 (frac_dem_max - frac_srv_max) */
} moe_verdict_thresholds_t;

#define MOE_VERDICT_THRESHOLDS_INIT                                                           \
  {                                                                                           \
    sizeof(moe_verdict_thresholds_t), MOE_VERDICT_THRESHOLDS_VERSION, 0.90, 1, 0.6, 0.5, 2.0, \
        0.25, 0.35, 3.0, 0.2, 0.95, 1.2, 0.8, 0.2, 100, 0.02, 0.02                            \
  }

typedef struct moe_verdict {
  const char* label;  /* balance: balanced|moderate|imbalanced|collapsed; specialization:
                         healthy|diffuse|peaked|warming_up|not_applicable; capacity:
                         ok|pressure; any: no_data */
  const char* metric; /* the metric that decided it ("" for no_data, not_applicable) */
  double value;       /* its value */
  double threshold;   /* the threshold it crossed (or stayed within) */
  const char* hint;   /* what to change (the user's own levers), "" when nothing */
} moe_verdict_t;

#define MOE_VERDICTS_VERSION 1

typedef struct moe_verdicts {
  uint32_t size;
  uint32_t version;
  moe_verdict_t balance;
  moe_verdict_t specialization;
  moe_verdict_t capacity;
} moe_verdicts_t;

#define MOE_VERDICT_EMPTY \
  { "", "", 0.0, 0.0, "" }
#define MOE_VERDICTS_INIT                                                               \
  {                                                                                     \
    sizeof(moe_verdicts_t), MOE_VERDICTS_VERSION, MOE_VERDICT_EMPTY, MOE_VERDICT_EMPTY, \
        MOE_VERDICT_EMPTY                                                               \
  }

MOE_API moe_status_t moe_layer_set_verdict_thresholds(moe_layer_t layer,
                                                      const moe_verdict_thresholds_t* thresholds);
MOE_API moe_status_t moe_layer_verdicts(const_moe_layer_t layer, moe_split_t split,
                                        moe_scope_t scope, moe_verdicts_t* verdicts);

/* Routing consistency between two saved states of the same probe batch (e.g. two
 * checkpoints): the fraction of tokens with the same top-1 expert, and the mean
 * |S_A & S_B| / k. */
MOE_API moe_status_t moe_ctx_compare_routing(const_moe_ctx_t a, const_moe_ctx_t b,
                                             double* consistency, double* topk_consistency);

#define MOE_WEIGHT_METRICS_VERSION 1

/* Weight metrics (docs/metrics.md, weights), computed on request from the bound weights. */
typedef struct moe_weight_metrics {
  uint32_t size;
  uint32_t version;
  double router_gram_orthogonality; /* NaN for the hash router */
  double expert_similarity_mean;
  double expert_similarity_std;
} moe_weight_metrics_t;

#define MOE_WEIGHT_METRICS_INIT \
  { sizeof(moe_weight_metrics_t), MOE_WEIGHT_METRICS_VERSION, 0, 0, 0 }

MOE_API moe_status_t moe_layer_weight_metrics(const_moe_layer_t layer,
                                              moe_weight_metrics_t* metrics);

/* ------------------------------------------------------------------------------
 * Communicators (expert parallelism). moe.h holds no MPI, NCCL or CUDA type: a
 * communicator is a table of callbacks over the caller's own transport. moe_mpi.h and
 * moe_nccl.h fill one from an MPI_Comm or an ncclComm_t (inline, compiled with the
 * caller's MPI or NCCL); a caller may also bring its own.
 * Each callback returns 0 on success; on failure it returns nonzero and writes a
 * message into err (errlen bytes, NUL-terminated). timeout_s > 0 bounds the wait. */
#define MOE_COMM_OPS_VERSION 2
typedef struct moe_comm_ops {
  uint32_t size;
  uint32_t version;
  int32_t rank;        /* this process's rank in [0, world) */
  int32_t world;       /* number of ranks */
  moe_device_t device; /* where the buffers handed to the callbacks live */
  void* state;         /* the callbacks' first argument */
  /* Rank p receives send_bytes[p] bytes from this rank, packed in rank order in
   * `send`; this rank receives recv_bytes[p] bytes from rank p, packed in rank order
   * in `recv`. Counts may be zero and uneven. */
  int (*all_to_all)(void* state, const void* send, const int64_t* send_bytes, void* recv,
                    const int64_t* recv_bytes, double timeout_s, char* err, size_t errlen);
  /* In-place sum over the ranks of `count` doubles (host memory). */
  int (*all_reduce_sum)(void* state, double* data, int64_t count, double timeout_s, char* err,
                        size_t errlen);
  int (*barrier)(void* state, double timeout_s, char* err, size_t errlen);
  /* Called once by moe_comm_destroy; may be NULL. */
  void (*destroy)(void* state);
  /* Version 2, optional (both NULL when the transport has none): all_to_all split in
   * two, so that a layer computes while rows travel (moe_ep_options_t.chunks). start
   * begins the exchange and returns at once with *request set; wait completes it
   * (timeout_s as above) and releases the request. The buffers belong to the exchange
   * until its wait returns. Several may be outstanding; every rank starts them in the
   * same order. */
  int (*all_to_all_start)(void* state, const void* send, const int64_t* send_bytes, void* recv,
                          const int64_t* recv_bytes, void** request, char* err, size_t errlen);
  int (*all_to_all_wait)(void* state, void* request, double timeout_s, char* err, size_t errlen);
} moe_comm_ops_t;

typedef struct moe_comm* moe_comm_t;

/* A communicator over `ops` (copied; ops->state must outlive it). timeout_s applies to
 * every collective (0 = wait forever). After a failed or timed-out collective the
 * communicator refuses further use (MOE_STATUS_COMM_ERROR), as a peer may be gone. */
MOE_API moe_status_t moe_comm_create(const moe_comm_ops_t* ops, double timeout_s, moe_comm_t* comm);
/* The local communicator: one rank, in process (all-to-all copies to itself). A layer
 * attached to it runs the expert-parallel path with one rank owning every expert. */
MOE_API moe_status_t moe_comm_create_local(moe_comm_t* comm);
MOE_API moe_status_t moe_comm_destroy(moe_comm_t comm);
MOE_API moe_status_t moe_comm_rank(moe_comm_t comm, int32_t* rank, int32_t* world);
/* The collectives, for tests and for callers' own use (e.g. all-reducing the router
 * gradient): the same checks and timeout as the layer's exchanges. moe_comm_all_to_all
 * first checks, in one small all-reduce, that the ranks' byte counts pair up (what rank
 * p sends rank q is what q expects from p): a mismatch is refused on every rank with
 * MOE_STATUS_INVALID_ARGUMENT before any data moves, and the communicator stays usable.
 * Only a transport's failure or timeout breaks it. */
MOE_API moe_status_t moe_comm_all_to_all(moe_comm_t comm, const void* send,
                                         const int64_t* send_bytes, void* recv,
                                         const int64_t* recv_bytes);
MOE_API moe_status_t moe_comm_all_reduce_sum(moe_comm_t comm, double* data, int64_t count);
MOE_API moe_status_t moe_comm_barrier(moe_comm_t comm);

/* ------------------------------------------------------------------------------
 * Expert parallelism: a layer split across the ranks of a communicator. Each rank
 * owns some experts and routes its own tokens; token rows travel to their experts'
 * owners and back. The result on every rank is the one a single process would give
 * for the whole batch (the ranks' tokens concatenated in rank order): capacity, drops,
 * losses and telemetry are the batch's, not the rank's. docs/distributed.md. */

/* Attaches `comm` to the layer. Collective: every rank of `comm` calls it with an
 * identically configured layer and the same map, else every rank gets
 * MOE_STATUS_INVALID_ARGUMENT. expert_owner is [count == num_experts] ranks, or NULL
 * for contiguous blocks (expert e on rank e * world / num_experts). comm NULL detaches
 * (not collective). Attaching or detaching unbinds the weights: each rank then binds
 * only its own experts, [E_local, ...] in ascending expert id (moe_layer_local_experts),
 * and its expert gradients have those shapes; the router weight stays whole [d, E] on
 * every rank. forward and backward become collectives: every rank calls them in the
 * same order, also with zero tokens. `comm` must outlive the attachment
 * (moe_comm_destroy refuses while a layer holds it). Host layers need a host
 * communicator (MPI, local); cuda layers take either (rows move in device memory with
 * NCCL, staged through host memory otherwise). The expert-choice router is refused, as
 * its selection is batch-wide. */
MOE_API moe_status_t moe_layer_set_comm(moe_layer_t layer, moe_comm_t comm,
                                        const int32_t* expert_owner, int64_t count);

/* The data-parallel communicator of the global-batch aux loss (a layer of aux_loss_scope
 * MOE_AUX_LOSS_GLOBAL; NULL detaches): every training forward sums the call's expert
 * counts over it (one all-reduce of E doubles), so every replica reads f_e of the whole
 * global batch. Not the expert-parallel communicator: under expert parallelism the counts
 * are already the group's, and this adds the replicas'. Every rank of `comm` runs its
 * training forwards in the same order. `comm` must outlive the attachment. */
MOE_API moe_status_t moe_layer_set_aux_comm(moe_layer_t layer, moe_comm_t comm);

/* This rank's experts: their global ids, ascending, the order of its expert weights.
 * experts may be NULL to ask only the count; else it has room for `capacity`. Without
 * a communicator the layer owns every expert. */
MOE_API moe_status_t moe_layer_local_experts(const_moe_layer_t layer, int32_t* experts,
                                             int64_t capacity, int64_t* count);

/* The router gradient is per rank (each rank's tokens' share); this sums it in place
 * over the layer's communicator: in rank order with double accumulation, rounded once,
 * so every rank gets the same bits. grad: the layer's dtype, [d_model, num_experts],
 * in the layer's memory (host, or device for a cuda layer). A no-op without a
 * communicator. Collective. */
MOE_API moe_status_t moe_layer_reduce_router_grad(moe_layer_t layer, moe_tensor_t grad);

/* What the layer's exchanges moved, per peer (this rank included: its own experts'
 * rows are "sent" to itself through the same all-to-all). */
typedef struct moe_peer_traffic {
  int64_t tokens_sent;     /* token copies this rank dispatched to the peer's experts */
  int64_t tokens_received; /* token copies the peer dispatched to this rank's experts */
  int64_t bytes_sent;      /* every exchange: counts, rows, results, gradients */
  int64_t bytes_received;
} moe_peer_traffic_t;

#define MOE_COMM_TRAFFIC_VERSION 2
typedef struct moe_comm_traffic {
  uint32_t size;
  uint32_t version;
  int32_t rank;            /* [OUT] -1 without a communicator */
  int32_t world;           /* [OUT] */
  int64_t exchanges;       /* [OUT] all-to-all calls the layer made */
  double exchange_seconds; /* [OUT] time inside them: waiting for peers and moving data */
  int64_t tokens_sent, tokens_received, bytes_sent, bytes_received; /* [OUT] over peers */
  /* Version 2. [OUT] The bytes of the token-row exchanges alone (rows to the experts,
   * results back, dy out, dx back, with the token path's per-copy metadata), and what
   * the same calls would have moved sending one row per token copy. They differ when
   * moe_ep_options_t.dedup (or a replicated placement) sends each token once per rank. */
  int64_t row_bytes_sent, row_bytes_received;
  int64_t per_copy_row_bytes_sent, per_copy_row_bytes_received;
} moe_comm_traffic_t;

#define MOE_COMM_TRAFFIC_INIT \
  { sizeof(moe_comm_traffic_t), MOE_COMM_TRAFFIC_VERSION, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }

/* Reads the traffic since attachment or the last reset; peers (may be NULL) receives
 * min(peer_count, world) entries. reset != 0 starts counting anew. */
MOE_API moe_status_t moe_layer_comm_traffic(moe_layer_t layer, moe_comm_traffic_t* traffic,
                                            moe_peer_traffic_t* peers, int32_t peer_count,
                                            int32_t reset);

/* How an attached layer's exchanges run (docs/distributed.md, "One copy per rank").
 * Collective: every rank sets the same options, else every rank gets
 * MOE_STATUS_INVALID_ARGUMENT and nothing changes. Host backends only (a cuda layer
 * refuses dedup with MOE_STATUS_UNSUPPORTED). */
#define MOE_EP_OPTIONS_VERSION 1
typedef struct moe_ep_options {
  uint32_t size;
  uint32_t version;
  /* 1: each token travels at most once to each rank, with its local experts and gates;
   * the rank sums the token's results there (gate-weighted) and sends one row back, and
   * backward mirrors it. 0 (default): one row per token copy, bit-identical to a single
   * process. With dedup, y and dx of a token whose experts span several ranks add the
   * ranks' partial sums, each rounded to the dtype once more (the bound is in the docs). */
  int32_t dedup;
  /* In [1, 64] (default 1). With dedup, > 1 pipelines the forward's exchanges with the
   * expert products: each rank's rows to each peer go in this many chunks, and while a
   * chunk's experts run, the next chunk's rows travel and the previous chunk's results
   * return. The same bits for any count on cpu_ref (the experts see the same rows). The
   * overlap needs a communicator with all_to_all_start/wait (moe_mpi.h, the local one);
   * with others the chunks run one after another. Backward is not chunked. */
  int32_t chunks;
} moe_ep_options_t;

#define MOE_EP_OPTIONS_INIT \
  { sizeof(moe_ep_options_t), MOE_EP_OPTIONS_VERSION, 0, 1 }

/* Options last until the communicator is detached or another attached (which resets
 * them). get reads them back as set: a replicated placement sends each token once per rank
 * whatever dedup says. */
MOE_API moe_status_t moe_layer_set_ep_options(moe_layer_t layer, const moe_ep_options_t* options);
MOE_API moe_status_t moe_layer_get_ep_options(const_moe_layer_t layer, moe_ep_options_t* options);

/* Replicated experts and load-driven placement (docs/distributed.md, "Placement from
 * load"). A placement is a slot table in the shape of DeepSeek's EPLB output
 * (physical_to_logical): slot_expert[num_slots] is the expert each slot holds, or -1 for
 * an empty slot; num_slots is a multiple of the world size and slot i lives on rank
 * i / (num_slots / world). An expert may hold several slots on different ranks
 * (replicas): the batch's kept copies of that expert, in batch order, are split into
 * contiguous, equal (within one) blocks over its holders in rank order, and its weight
 * gradients are summed over its holders inside moe_layer_backward (in rank order, with
 * double accumulation: every holder gets the same bits), so equal replicas stay equal.
 * A replicated placement always sends each token once per rank (as dedup does). */

/* The expert load the layer has seen: each expert's pre-drop demand (token copies),
 * summed over the training forwards since the last reset, over the whole expert-parallel
 * batch (the same on every rank). load[count >= num_experts] receives it (load may be
 * NULL only to reset); reset != 0 starts a new window. Works with or without a
 * communicator. */
MOE_API moe_status_t moe_layer_expert_load(moe_layer_t layer, double* load, int64_t count,
                                           int32_t reset);

/* A placement that lowers the most-loaded rank for `load` [num_experts] (any
 * non-negative weights, e.g. moe_layer_expert_load's), by DeepSeek EPLB's greedy
 * heuristic (not an optimum: on a nearly balanced load its table can come out worse
 * than the default blocks, so compare imbalance_after with imbalance_before):
 * the num_slots - num_experts redundant slots go one by one to the expert of largest
 * load per replica; then the replicas, heaviest first, go to the least-loaded rank that
 * has a free slot and does not hold the expert yet. With num_nodes > 1 (dividing
 * world, num_experts and num_slots), EPLB's hierarchical policy: whole experts are first packed
 * onto nodes (balanced), then replicated and packed within each node, so a token's replicas stay
 * inside its node's share. Writes slot_expert[num_slots] (ready for
 * moe_layer_set_placement) and, when not NULL, the ranks' load max/mean for the
 * default contiguous placement (imbalance_before) and for the result (imbalance_after).
 * Deterministic: ties go to the lower expert id and the lower rank. Not collective. */
MOE_API moe_status_t moe_placement_from_load(const double* load, int64_t num_experts, int32_t world,
                                             int64_t num_slots, int32_t num_nodes,
                                             int32_t* slot_expert, double* imbalance_before,
                                             double* imbalance_after);

/* Copies a per-expert tensor (weights, biases, optimizer moments: any bytes_per_expert
 * bytes per expert, in host memory) from the layer's current placement to the slot table
 * given: src is this rank's [current local experts] in their order, dst receives this
 * rank's [new local experts] (ascending id, moe_layer_local_experts after the change).
 * Each expert comes from its current owner, or is copied locally when this rank holds
 * it already. Collective; the placement itself does not change. */
MOE_API moe_status_t moe_layer_move_expert_tensor(moe_layer_t layer, const int32_t* slot_expert,
                                                  int64_t num_slots, const void* src, void* dst,
                                                  int64_t bytes_per_expert);

/* Installs a slot-table placement on an attached layer. Collective: every rank passes the
 * same table, between steps (a ctx saved before is refused by backward). Unbinds the
 * weights, as moe_layer_set_comm does: move every per-expert tensor first
 * (moe_layer_move_expert_tensor), then call this, then bind the moved weights. Host
 * backends only. */
MOE_API moe_status_t moe_layer_set_placement(moe_layer_t layer, const int32_t* slot_expert,
                                             int64_t num_slots);

/* A telemetry group: the layers of one model, summarised together. */
typedef struct moe_group* moe_group_t;

#define MOE_GROUP_METRICS_VERSION 1

typedef struct moe_group_metrics {
  uint32_t size;
  uint32_t version;
  int64_t layers;
  double max_frac_mean; /* mean over layers of max_frac */
  double max_frac_max;
  double active_min;     /* min over layers of active_experts */
  double aux_mean;       /* mean of aux_loss_scaled */
  double drop_frac_mean; /* mean of drop_rate */
  int32_t collapsed;     /* max_frac_max >= 0.90 or active_min <= 1 */
} moe_group_metrics_t;

#define MOE_GROUP_METRICS_INIT \
  { sizeof(moe_group_metrics_t), MOE_GROUP_METRICS_VERSION, 0, 0, 0, 0, 0, 0, 0 }

MOE_API moe_status_t moe_group_create(moe_group_t* group);
MOE_API moe_status_t moe_group_destroy(moe_group_t group);
/* Adds a layer (not owned; it must stay alive while the group is queried). */
MOE_API moe_status_t moe_group_add(moe_group_t group, const_moe_layer_t layer);
MOE_API moe_status_t moe_group_get_metrics(moe_group_t group, moe_split_t split, moe_scope_t scope,
                                           moe_group_metrics_t* metrics);
/* The whole model in one export, buffer and length as moe_layer_telemetry_export:
 * JSONL a line per layer; CSV one header and a row per layer (the layers must have one
 * expert count); Prometheus each metric's HELP and TYPE once with every layer's samples
 * (what a scrape endpoint serves; passes promtool check metrics). The layers' names
 * must differ (MOE_STATUS_INVALID_ARGUMENT otherwise: their series would collide). */
MOE_API moe_status_t moe_group_telemetry_export(moe_group_t group, moe_export_format_t format,
                                                moe_split_t split, moe_scope_t scope, char* buffer,
                                                size_t capacity, size_t* length);

#ifdef __cplusplus
}
#endif

#endif /* MOE_MOE_H */
