// A replicated expert's weight gradient is the sum of its holders' partial gradients,
// so that its replicas, updated alike, stay equal. Each holder sends its partial to the
// expert's other holders; every holder adds them in rank order with double accumulation,
// so every holder gets the same bits.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "backends/backend.hpp"
#include "core/host_buffer.hpp"
#include "dist/expert_parallel.hpp"

namespace moe {

template <typename S>
class ReplicaGradients {
 public:
  // Without replicas, the backend writes the caller's gradients directly.
  ReplicaGradients(dist::ExpertParallel& ep, const LayerConfig& c, const ExpertGradients<S>& caller)
      : ep_(ep), target_(caller) {
    if (!ep.placement.replicated()) return;
    const int64_t H = ep.local_expert_count(), F = c.ff_width();
    sizes_ = {c.d_model * F, c.expert_bias ? F : 0, c.d_ff * c.d_model,
              c.expert_bias ? c.d_model : 0};
    for (int part = 0; part < 4; ++part) {
      parts_[part].assign(static_cast<size_t>(H * sizes_[part]), S(0));
    }
    target_ = {parts_[0].data(), sizes_[1] ? parts_[1].data() : nullptr, parts_[2].data(),
               sizes_[3] ? parts_[3].data() : nullptr};
  }

  // Where the backend accumulates this call's expert gradients.
  ExpertGradients<S>& target() { return target_; }

  // Collective among the holders (through one all-to-all of the group). Adds the summed
  // gradients into the caller's (those it passed).
  void sum_into(const ExpertGradients<S>& caller) {
    if (!ep_.placement.replicated()) return;
    const dist::Placement& pl = ep_.placement;
    const int W = ep_.world(), me = ep_.rank();
    // To each peer, this rank's partials (in the dtype) of the experts both hold,
    // ascending; the same experts come back from it.
    std::vector<S> send;
    std::vector<int64_t> send_bytes(W, 0);
    for (int p = 0; p < W; ++p)
      for (size_t j = 0; j < pl.local_experts.size(); ++j) {
        const auto& holders = pl.holders[pl.local_experts[j]];
        if (p == me || !std::binary_search(holders.begin(), holders.end(), p)) continue;
        for (int part = 0; part < 4; ++part) {
          const S* from = parts_[part].data() + static_cast<int64_t>(j) * sizes_[part];
          send.insert(send.end(), from, from + sizes_[part]);
          send_bytes[p] += sizes_[part] * static_cast<int64_t>(sizeof(S));
        }
      }
    std::vector<S> recv(send.size());
    ep_.exchange(send.data(), send_bytes, recv.data(), send_bytes);
    std::vector<int64_t> cursor(W + 1, 0);
    for (int p = 0; p < W; ++p)
      cursor[p + 1] = cursor[p] + send_bytes[p] / static_cast<int64_t>(sizeof(S));
    S* dst[4] = {caller.dw1, caller.db1, caller.dw2, caller.db2};
    std::vector<double> sum;
    for (size_t j = 0; j < pl.local_experts.size(); ++j) {
      for (int part = 0; part < 4; ++part) {
        const int64_t n = sizes_[part];
        sum.assign(static_cast<size_t>(n), 0.0);
        for (int32_t h : pl.holders[pl.local_experts[j]]) {
          const S* from =
              h == me ? parts_[part].data() + static_cast<int64_t>(j) * n : recv.data() + cursor[h];
          for (int64_t i = 0; i < n; ++i) sum[i] += static_cast<double>(from[i]);
          if (h != me) cursor[h] += n;
        }
        // The sum, rounded once, added to the caller's gradient.
        S* to = dst[part] ? dst[part] + static_cast<int64_t>(j) * n : nullptr;
        for (int64_t i = 0; to && i < n; ++i)
          to[i] = static_cast<S>(static_cast<double>(to[i]) +
                                 static_cast<double>(static_cast<S>(sum[i])));
      }
    }
  }

 private:
  dist::ExpertParallel& ep_;
  ExpertGradients<S> target_;
  std::vector<int64_t> sizes_ = {0, 0, 0, 0};
  std::vector<S> parts_[4];
};

}  // namespace moe
