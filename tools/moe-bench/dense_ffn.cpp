#include "tools/moe-bench/dense_ffn.hpp"

#include <random>

#include "backends/onednn/activation_kernels.hpp"
#include "backends/onednn/matmul.hpp"

namespace moe::bench {

template <typename S>
DenseFfn<S>::DenseFfn(const Shape& shape) : shape_(shape), hidden_(shape.top_k * shape.d_ff) {
  const int64_t T = shape.tokens, d = shape.d_model;
  const int64_t width = shape.gated() ? 2 * hidden_ : hidden_;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto fill = [&](std::vector<S>& v, int64_t n, float scale) {
    v.resize(static_cast<size_t>(n));
    for (S& e : v) e = S(scale * normal(rng));
  };
  fill(x_, T * d, 1.f);
  fill(dy_, T * d, 1.f);
  fill(w1_, d * width, 0.04f);
  fill(w2_, hidden_ * d, 0.04f);
  for (auto* v : {&h_pre_, &dh_pre_}) v->resize(static_cast<size_t>(T * width));
  for (auto* v : {&h_, &dh_}) v->resize(static_cast<size_t>(T * hidden_));
  for (auto* v : {&y_, &dx_}) v->resize(static_cast<size_t>(T * d));
  dw1_.resize(w1_.size());
  dw2_.resize(w2_.size());
}

template <typename S>
void DenseFfn<S>::forward() {
  const int64_t T = shape_.tokens, d = shape_.d_model;
  const int64_t width = shape_.gated() ? 2 * hidden_ : hidden_;
  onednn::matmul(false, false, T, width, d, x_.data(), w1_.data(), h_pre_.data(), false);
  onednn::activation_forward(shape_.activation, shape_.gated(), T, hidden_, h_pre_.data(),
                             h_.data());
  onednn::matmul(false, false, T, d, hidden_, h_.data(), w2_.data(), y_.data(), false);
}

template <typename S>
void DenseFfn<S>::backward() {
  const int64_t T = shape_.tokens, d = shape_.d_model;
  const int64_t width = shape_.gated() ? 2 * hidden_ : hidden_;
  onednn::matmul(false, true, T, hidden_, d, dy_.data(), w2_.data(), dh_.data(), false);
  onednn::matmul(true, false, hidden_, d, T, h_.data(), dy_.data(), dw2_.data(), false);
  onednn::activation_backward(shape_.activation, shape_.gated(), T, hidden_, h_pre_.data(),
                              dh_.data(), dh_pre_.data());
  onednn::matmul(true, false, d, width, T, x_.data(), dh_pre_.data(), dw1_.data(), false);
  onednn::matmul(false, true, T, d, width, dh_pre_.data(), w1_.data(), dx_.data(), false);
}

template class DenseFfn<float>;
template class DenseFfn<bfloat16>;

}  // namespace moe::bench
