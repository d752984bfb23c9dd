// The data-movement stages (permute, combine and their backwards) and the bias
// gradients, spread over OpenMP threads. Each output row is written by exactly one
// thread and summed in the reference's order (slot order), so the result does not
// depend on the thread count.
#pragma once

#include <cstdint>

#include "core/bfloat16.hpp"
#include "core/plan.hpp"

namespace moe::onednn {

template <typename S>
void permute_rows(const Plan& plan, int64_t d, const S* x, S* xp);
template <typename S>
void combine_rows(const Plan& plan, int64_t d, const double* gate, const S* yp, S* y);
template <typename S>
void combine_rows_backward(const Plan& plan, int64_t d, const double* gate, const S* yp,
                           const S* dy, S* dyp, double* dgate);
template <typename S>
void permute_rows_backward(const Plan& plan, int64_t d, const S* dxp, S* dx);
// out[j] += sum over i < rows of m[i, j], in row order, accumulated in double.
template <typename S>
void add_column_sums(const S* m, int64_t rows, int64_t cols, S* out);

}  // namespace moe::onednn
