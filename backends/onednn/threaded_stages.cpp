#include "backends/onednn/threaded_stages.hpp"

#include <algorithm>
#include <vector>

#include "core/parallel_threshold.hpp"

namespace moe::onednn {

template <typename S>
void permute_rows(const Plan& plan, int64_t d, const S* x, S* xp) {
#pragma omp parallel for schedule(static) if (worth_threads(plan.rows * d))
  for (int64_t r = 0; r < plan.rows; ++r) {
    const int64_t t = plan.token_of_row[r];
    if (t >= 0) {
      std::copy_n(x + t * d, d, xp + r * d);
    } else {
      std::fill_n(xp + r * d, d, S(0.0f));
    }
  }
}

template <typename S>
void combine_rows(const Plan& plan, int64_t d, const double* gate, const S* yp, S* y) {
  const int64_t slots = plan.slots;
#pragma omp parallel if (worth_threads(plan.tokens * slots * d))
  {
    std::vector<float> acc(static_cast<size_t>(d));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < plan.tokens; ++t) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = 0; j < slots; ++j) {
        const int64_t r = plan.row[t * slots + j];
        if (r < 0) continue;
        const float g = static_cast<float>(gate[t * slots + j]);
        const S* src = yp + r * d;
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) acc[i] += g * static_cast<float>(src[i]);
      }
      std::copy(acc.begin(), acc.end(), y + t * d);
    }
  }
}

template <typename S>
void combine_rows_backward(const Plan& plan, int64_t d, const double* gate, const S* yp,
                           const S* dy, S* dyp, double* dgate) {
  const int64_t slots = plan.slots;
#pragma omp parallel for schedule(static) if (worth_threads(plan.rows * d))
  for (int64_t r = 0; r < plan.rows; ++r)
    if (plan.token_of_row[r] < 0) std::fill_n(dyp + r * d, d, S(0.0f));
#pragma omp parallel for schedule(static) if (worth_threads(plan.tokens * slots * d))
  for (int64_t t = 0; t < plan.tokens; ++t) {
    const S* grad = dy + t * d;
    for (int64_t j = 0; j < slots; ++j) {
      const int64_t s = t * slots + j, r = plan.row[s];
      dgate[s] = 0.0;
      if (r < 0) continue;
      const float g = static_cast<float>(gate[s]);
      const S* out = yp + r * d;
      S* dst = dyp + r * d;
      double dot = 0.0;
#pragma omp simd reduction(+ : dot)
      for (int64_t i = 0; i < d; ++i) {
        dot += static_cast<double>(static_cast<float>(grad[i])) * static_cast<float>(out[i]);
        dst[i] = g * static_cast<float>(grad[i]);
      }
      dgate[s] = dot;
    }
  }
}

template <typename S>
void permute_rows_backward(const Plan& plan, int64_t d, const S* dxp, S* dx) {
  const int64_t slots = plan.slots;
#pragma omp parallel if (worth_threads(plan.tokens * slots * d))
  {
    std::vector<float> acc(static_cast<size_t>(d));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < plan.tokens; ++t) {
      S* out = dx + t * d;
      for (int64_t i = 0; i < d; ++i) acc[i] = out[i];
      for (int64_t j = 0; j < slots; ++j) {
        const int64_t r = plan.row[t * slots + j];
        if (r < 0) continue;
        const S* src = dxp + r * d;
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) acc[i] += static_cast<float>(src[i]);
      }
      std::copy(acc.begin(), acc.end(), out);
    }
  }
}

template <typename S>
void add_column_sums(const S* m, int64_t rows, int64_t cols, S* out) {
  constexpr int64_t kBlock = 64;  // columns per task: rows are read a block at a time
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (worth_threads(rows * cols))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t j0 = b * kBlock, width = std::min(kBlock, cols - j0);
    double sum[kBlock] = {};
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < width; ++j) sum[j] += static_cast<float>(m[i * cols + j0 + j]);
    for (int64_t j = 0; j < width; ++j)
      out[j0 + j] = static_cast<float>(static_cast<float>(out[j0 + j]) + sum[j]);
  }
}

#define MOE_INSTANTIATE_THREADED_STAGES(S)                                                        \
  template void permute_rows<S>(const Plan&, int64_t, const S*, S*);                              \
  template void combine_rows<S>(const Plan&, int64_t, const double*, const S*, S*);               \
  template void combine_rows_backward<S>(const Plan&, int64_t, const double*, const S*, const S*, \
                                         S*, double*);                                            \
  template void permute_rows_backward<S>(const Plan&, int64_t, const S*, S*);                     \
  template void add_column_sums<S>(const S*, int64_t, int64_t, S*);

MOE_INSTANTIATE_THREADED_STAGES(float)
MOE_INSTANTIATE_THREADED_STAGES(bfloat16)

}  // namespace moe::onednn
