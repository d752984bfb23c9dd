#include "core/telemetry/weight_metrics.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace moe {
namespace {

double cosine(const double* a, const double* b, int64_t n, int64_t stride_a, int64_t stride_b) {
  double dot = 0, na = 0, nb = 0;
  for (int64_t i = 0; i < n; ++i) {
    dot += a[i * stride_a] * b[i * stride_b];
    na += a[i * stride_a] * a[i * stride_a];
    nb += b[i * stride_b] * b[i * stride_b];
  }
  return na > 0 && nb > 0 ? dot / std::sqrt(na * nb) : 0.0;
}

}  // namespace

moe_weight_metrics_t weight_metrics(const std::vector<double>& router, int64_t d, int64_t E,
                                    const std::vector<double>& w1) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  moe_weight_metrics_t out = MOE_WEIGHT_METRICS_INIT;
  out.router_gram_orthogonality = nan;
  out.expert_similarity_mean = nan;
  out.expert_similarity_std = nan;
  if (E < 2) return out;
  // Router rows w_e are the columns of the [d, E] matrix: G[i,j] = cos(w_i, w_j).
  if (!router.empty()) {
    double off = 0;
    for (int64_t i = 0; i < E; ++i)
      for (int64_t j = 0; j < E; ++j)
        if (i != j) off += std::abs(cosine(&router[i], &router[j], d, E, E));
    out.router_gram_orthogonality = 1.0 - off / static_cast<double>(E * (E - 1));
  }
  const int64_t n = static_cast<int64_t>(w1.size()) / E;
  double sum = 0, sq = 0;
  int64_t pairs = 0;
  for (int64_t i = 0; i < E; ++i)
    for (int64_t j = i + 1; j < E; ++j) {
      const double c = cosine(&w1[i * n], &w1[j * n], n, 1, 1);
      sum += c;
      sq += c * c;
      ++pairs;
    }
  const double mean = sum / static_cast<double>(pairs);
  out.expert_similarity_mean = mean;
  out.expert_similarity_std =
      std::sqrt(std::max(0.0, sq / static_cast<double>(pairs) - mean * mean));
  return out;
}

}  // namespace moe
