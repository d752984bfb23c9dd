// The global-batch aux loss's state (Qwen3, Megatron-Core's global_aux_loss): expert
// counts accumulated over training calls until reset, each call's counts first summed
// over a data-parallel communicator, so every replica reads f_e of the global batch.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "dist/communicator.hpp"

namespace moe {

class GlobalAuxCounts {
 public:
  explicit GlobalAuxCounts(int64_t experts) : counts_(experts, 0.0) {}
  ~GlobalAuxCounts() { set_comm(nullptr); }
  GlobalAuxCounts(const GlobalAuxCounts&) = delete;
  GlobalAuxCounts& operator=(const GlobalAuxCounts&) = delete;

  // Holds `comm` (null: none) until replaced; the communicator refuses destruction meanwhile.
  void set_comm(dist::Communicator* comm);
  // The accumulated counts with this call's `demand` added (summed over the
  // communicator first, a collective): what this call's loss reads. Nothing changes
  // until commit(), so a call that fails later leaves the accumulator as it was.
  std::vector<double> with(const std::vector<int64_t>& demand) const;
  void commit(std::vector<double> counts) {
    counts_ = std::move(counts);
    ++calls_;
  }
  void reset();

  const std::vector<double>& counts() const { return counts_; }
  int64_t calls() const { return calls_; }

 private:
  std::vector<double> counts_;
  int64_t calls_ = 0;
  dist::Communicator* comm_ = nullptr;
};

}  // namespace moe
