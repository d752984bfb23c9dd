// A device backend's memory as expert parallelism reaches it. A communicator moves
// either host memory (MPI) or device memory (NCCL); a buffer of the other kind is
// staged through a temporary of the communicator's kind. Every copy has completed
// when the call returns, so the exchange that follows may read it.
#pragma once

#include <cstddef>

namespace moe {

class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* data) = 0;
  virtual void to_device(void* device, const void* host, size_t bytes) = 0;
  virtual void to_host(void* host, const void* device, size_t bytes) = 0;
  // Host memory the device copies fast (pinned), of at least `bytes`: one buffer per
  // `slot` (0: what is sent, 1: what is received), grown as needed and kept for reuse.
  virtual void* host_staging(int slot, size_t bytes) = 0;
};

}  // namespace moe
