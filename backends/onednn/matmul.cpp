#include "backends/onednn/matmul.hpp"

#include <oneapi/dnnl/dnnl_debug.h>

#include <map>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <tuple>
#include <unordered_map>

#include "core/error.hpp"

namespace moe::onednn {
namespace {

using dnnl::memory;
using Tag = memory::format_tag;
constexpr memory::dim kRuntime = DNNL_RUNTIME_DIM_VAL;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

template <typename S>
memory::data_type data_type_of() {
  return std::is_same<S, float>::value ? memory::data_type::f32 : memory::data_type::bf16;
}

Tag tag_of(bool transposed) {
  return transposed ? Tag::ba : Tag::ab;
}

struct PrimitiveKey {
  memory::data_type type;
  bool transpose_a, transpose_b, accumulate, bias;
  bool operator<(const PrimitiveKey& o) const {
    return std::tie(type, transpose_a, transpose_b, accumulate, bias) <
           std::tie(o.type, o.transpose_a, o.transpose_b, o.accumulate, o.bias);
  }
};

dnnl::matmul::primitive_desc describe(const PrimitiveKey& key) {
  const memory::desc a({kRuntime, kRuntime}, key.type, tag_of(key.transpose_a));
  const memory::desc b({kRuntime, kRuntime}, key.type, tag_of(key.transpose_b));
  const memory::desc c({kRuntime, kRuntime}, key.type, Tag::ab);
  dnnl::primitive_attr attr;
  if (key.accumulate) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  const auto desc =
      key.bias ? dnnl::matmul::desc(a, b, memory::desc({1, kRuntime}, key.type, Tag::ab), c)
               : dnnl::matmul::desc(a, b, c);
  return dnnl::matmul::primitive_desc(desc, attr, cpu_engine());
}

// Primitives are immutable once made and safe to execute from several threads.
const dnnl::matmul& cached_primitive(const PrimitiveKey& key) {
  static std::mutex mutex;
  static std::map<PrimitiveKey, dnnl::matmul> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  return cache.emplace(key, dnnl::matmul(describe(key))).first->second;
}

template <typename S>
memory wrap(int64_t rows, int64_t cols, bool transposed, const S* data) {
  return memory({{rows, cols}, data_type_of<S>(), tag_of(transposed)}, cpu_engine(),
                const_cast<S*>(data));
}

}  // namespace

template <typename S>
void matmul(bool transpose_a, bool transpose_b, int64_t M, int64_t N, int64_t K, const S* A,
            const S* B, S* C, bool accumulate, const S* bias) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum: C keeps its value, or becomes the bias (or zero)
    if (accumulate) return;
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * N + j] = bias ? bias[j] : S(0.0f);
    return;
  }
  try {
    const dnnl::matmul& primitive = cached_primitive(
        {data_type_of<S>(), transpose_a, transpose_b, accumulate, bias != nullptr});
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, wrap(M, K, transpose_a, A)},
                                            {DNNL_ARG_WEIGHTS, wrap(K, N, transpose_b, B)},
                                            {DNNL_ARG_DST, wrap(M, N, false, C)}};
    if (bias) args.emplace(DNNL_ARG_BIAS, wrap(1, N, false, bias));
    dnnl::stream stream(cpu_engine());
    primitive.execute(stream, args);
    stream.wait();
  } catch (const dnnl::error& e) {
    throw Error(MOE_STATUS_BACKEND_ERROR, std::string("oneDNN matmul failed (") +
                                              dnnl_status2str(e.status) + "): " + e.what());
  }
}

template void matmul<float>(bool, bool, int64_t, int64_t, int64_t, const float*, const float*,
                            float*, bool, const float*);
template void matmul<bfloat16>(bool, bool, int64_t, int64_t, int64_t, const bfloat16*,
                               const bfloat16*, bfloat16*, bool, const bfloat16*);

}  // namespace moe::onednn
