#include "core/layer/global_aux_counts.hpp"

#include <algorithm>

namespace moe {

void GlobalAuxCounts::set_comm(dist::Communicator* comm) {
  if (comm_) comm_->detach();
  comm_ = comm;
  if (comm_) comm_->attach();
}

std::vector<double> GlobalAuxCounts::with(const std::vector<int64_t>& demand) const {
  std::vector<double> call(demand.begin(), demand.end());
  if (comm_) comm_->all_reduce_sum(call.data(), static_cast<int64_t>(call.size()));
  std::vector<double> out = counts_;
  for (size_t e = 0; e < out.size(); ++e) out[e] += call[e];
  return out;
}

void GlobalAuxCounts::reset() {
  std::fill(counts_.begin(), counts_.end(), 0.0);
  calls_ = 0;
}

}  // namespace moe
