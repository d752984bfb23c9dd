// Opt-in stage timing of the cuda pipeline (MOE_CUDA_PROFILE=1): an event after each
// stage, and the times between them printed to stderr when the call ends. This
// synchronises, so it is for finding where time goes, not for production.
#pragma once

#include <cuda_runtime_api.h>

#include <utility>
#include <vector>

namespace moe::cuda {

class EventTimer {
 public:
  EventTimer(cudaStream_t stream, const char* call);
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void mark(const char* stage);

 private:
  bool enabled_;
  cudaStream_t stream_;
  const char* call_;
  std::vector<std::pair<const char*, cudaEvent_t>> marks_;
};

}  // namespace moe::cuda
