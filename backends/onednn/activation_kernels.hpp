// The expert activation over every row of the expert stage at once, forward and
// backward, in float32, vectorized through glibc's vector math library (libmvec) and
// spread over threads with OpenMP. Gated kinds read [gate | up] halves of each row.
#pragma once

#include <cstdint>

#include "core/bfloat16.hpp"
#include "moe/moe.h"

namespace moe::onednn {

// h[rows, d_ff] = act(h_pre) (or act(gate) * up for gated kinds; h_pre is [rows, F]).
template <typename S>
void activation_forward(moe_activation_t kind, bool gated, int64_t rows, int64_t d_ff,
                        const S* h_pre, S* h);

// dh_pre[rows, F] from dh[rows, d_ff] and the saved h_pre.
template <typename S>
void activation_backward(moe_activation_t kind, bool gated, int64_t rows, int64_t d_ff,
                         const S* h_pre, const S* dh, S* dh_pre);

}  // namespace moe::onednn
