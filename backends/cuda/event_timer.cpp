#include "backends/cuda/event_timer.hpp"

#include <cstdio>
#include <cstdlib>
#include <string>

namespace moe::cuda {

EventTimer::EventTimer(cudaStream_t stream, const char* call)
    : enabled_(std::getenv("MOE_CUDA_PROFILE") != nullptr), stream_(stream), call_(call) {
  // Timing waits for its events, which a CUDA graph's capture may not do.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (enabled_ && cudaStreamIsCapturing(stream, &capture) == cudaSuccess &&
      capture != cudaStreamCaptureStatusNone)
    enabled_ = false;
  mark("begin");
}

void EventTimer::mark(const char* stage) {
  if (!enabled_) return;
  cudaEvent_t event;
  cudaEventCreate(&event);
  cudaEventRecord(event, stream_);
  marks_.push_back({stage, event});
}

EventTimer::~EventTimer() {
  if (!enabled_ || marks_.empty()) return;
  cudaEventSynchronize(marks_.back().second);
  std::string line = std::string("moe cuda ") + call_ + ":";
  float total = 0.f;
  for (size_t i = 1; i < marks_.size(); ++i) {
    float ms = 0.f;
    cudaEventElapsedTime(&ms, marks_[i - 1].second, marks_[i].second);
    total += ms;
    char item[96];
    std::snprintf(item, sizeof item, " %s %.3f", marks_[i].first, ms);
    line += item;
  }
  for (auto& m : marks_) cudaEventDestroy(m.second);
  std::fprintf(stderr, "%s | total %.3f ms\n", line.c_str(), total);
}

}  // namespace moe::cuda
