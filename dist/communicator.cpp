#include "dist/communicator.hpp"

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/raw_enum.hpp"

namespace moe::dist {
namespace {

// One rank's own arguments to an all-to-all, checked before any traffic: the counts
// present, each in [0, max_bytes], and a buffer wherever bytes move.
void check_exchange_args(int world, const void* send, const int64_t* send_bytes, const void* recv,
                         const int64_t* recv_bytes, int64_t max_bytes) {
  require(send_bytes && recv_bytes, MOE_STATUS_NULL_POINTER,
          "send_bytes and recv_bytes are required");
  bool sends = false, receives = false;
  for (int p = 0; p < world; ++p) {
    require(send_bytes[p] >= 0 && recv_bytes[p] >= 0, MOE_STATUS_INVALID_ARGUMENT,
            "byte counts must be >= 0 (peer " + std::to_string(p) + ")");
    require(send_bytes[p] <= max_bytes && recv_bytes[p] <= max_bytes, MOE_STATUS_INVALID_ARGUMENT,
            "byte counts must be <= 2^53 (peer " + std::to_string(p) + ")");
    sends = sends || send_bytes[p] > 0;
    receives = receives || recv_bytes[p] > 0;
  }
  // A transport would read or write through them: refuse before it does.
  require(send || !sends, MOE_STATUS_NULL_POINTER, "send is NULL with bytes to send");
  require(recv || !receives, MOE_STATUS_NULL_POINTER, "recv is NULL with bytes to receive");
}

// Counts a caller passes travel as doubles (the all-reduce's type): exact below 2^53.
constexpr int64_t kMaxCallerBytes = int64_t{1} << 53;

}  // namespace

Communicator::Communicator(const moe_comm_ops_t& ops, double timeout_s)
    : ops_(ops), timeout_s_(timeout_s) {
  require(ops.world >= 1, MOE_STATUS_INVALID_ARGUMENT,
          "ops->world must be >= 1, got " + std::to_string(ops.world));
  require(ops.rank >= 0 && ops.rank < ops.world, MOE_STATUS_INVALID_ARGUMENT,
          "ops->rank must be in [0, world), got " + std::to_string(ops.rank));
  require(ops.all_to_all && ops.all_reduce_sum && ops.barrier, MOE_STATUS_NULL_POINTER,
          "ops->all_to_all, all_reduce_sum and barrier are required");
  require(std::isfinite(timeout_s) && timeout_s >= 0.0, MOE_STATUS_INVALID_ARGUMENT,
          "timeout_s must be finite and >= 0 (0 = wait forever)");
  // The most ranks: one per expert at the most experts a layer has.
  require(ops.world <= kMaxExperts, MOE_STATUS_INVALID_ARGUMENT,
          "ops->world must be <= 2^20, got " + std::to_string(ops.world));
  require_enum(ops.device, MOE_DEVICE_CPU, MOE_DEVICE_CUDA, "ops->device", "moe_device_t");
}

Communicator::~Communicator() {
  if (ops_.destroy) ops_.destroy(ops_.state);
}

template <typename Call>
void Communicator::run(const char* what, Call&& call) {
  require(!broken_, MOE_STATUS_COMM_ERROR,
          std::string("the communicator is unusable after an earlier failure (") + broken_reason_ +
              ")");
  char err[512] = "";
  if (call(err, sizeof err) != 0) {
    err[sizeof err - 1] = '\0';
    broken_ = true;
    broken_reason_ = std::string(what) + ": " + (err[0] ? err : "the transport reported an error");
    throw Error(MOE_STATUS_COMM_ERROR, "rank " + std::to_string(rank()) + ": " + broken_reason_);
  }
}

void Communicator::all_to_all(const void* send, const int64_t* send_bytes, void* recv,
                              const int64_t* recv_bytes) {
  check_exchange_args(world(), send, send_bytes, recv, recv_bytes, INT64_MAX);
  transport_all_to_all(send, send_bytes, recv, recv_bytes);
}

void Communicator::transport_all_to_all(const void* send, const int64_t* send_bytes, void* recv,
                                        const int64_t* recv_bytes) {
  run("all_to_all", [&](char* err, size_t len) {
    return ops_.all_to_all(ops_.state, send, send_bytes, recv, recv_bytes, timeout_s_, err, len);
  });
}

void* Communicator::all_to_all_start(const void* send, const int64_t* send_bytes, void* recv,
                                     const int64_t* recv_bytes) {
  check_exchange_args(world(), send, send_bytes, recv, recv_bytes, INT64_MAX);
  void* request = nullptr;
  run("all_to_all_start", [&](char* err, size_t len) {
    return ops_.all_to_all_start(ops_.state, send, send_bytes, recv, recv_bytes, &request, err,
                                 len);
  });
  return request;
}

void Communicator::all_to_all_wait(void* request) {
  run("all_to_all_wait", [&](char* err, size_t len) {
    return ops_.all_to_all_wait(ops_.state, request, timeout_s_, err, len);
  });
}

void Communicator::all_to_all_paired(const void* send, const int64_t* send_bytes, void* recv,
                                     const int64_t* recv_bytes) {
  const int64_t W = world();
  // A rank's refusal of its own arguments goes into the same all-reduce as the counts,
  // so that every rank refuses together: a rank that refused alone would leave the
  // others waiting in the transport until the timeout broke the communicator.
  std::optional<Error> refusal;
  try {
    check_exchange_args(world(), send, send_bytes, recv, recv_bytes, kMaxCallerBytes);
  } catch (const Error& e) {
    refusal = e;
  }
  // sent[r][p]: what rank r sends p; expected[r][p]: what rank r expects from p; then the
  // number of ranks that refused. Each rank fills its own rows, the sum gives every rank
  // the whole tables, and every rank reaches the same verdict without a second round.
  std::vector<double> tables(2 * W * W + 1, 0.0);
  if (refusal) {
    tables.back() = 1.0;
  } else {
    for (int64_t p = 0; p < W; ++p) {
      tables[rank() * W + p] = static_cast<double>(send_bytes[p]);
      tables[W * W + rank() * W + p] = static_cast<double>(recv_bytes[p]);
    }
  }
  all_reduce_sum(tables.data(), static_cast<int64_t>(tables.size()));
  if (refusal) throw *refusal;
  require(tables.back() == 0.0, MOE_STATUS_INVALID_ARGUMENT,
          "another rank refused its own arguments to this all_to_all (nothing moved; the "
          "communicator stays usable)");
  for (int64_t from = 0; from < W; ++from)
    for (int64_t to = 0; to < W; ++to) {
      const double sent = tables[from * W + to], expected = tables[W * W + to * W + from];
      require(sent == expected, MOE_STATUS_INVALID_ARGUMENT,
              "byte counts do not pair up: rank " + std::to_string(from) + " sends " +
                  std::to_string(static_cast<int64_t>(sent)) + " bytes to rank " +
                  std::to_string(to) + ", which expects " +
                  std::to_string(static_cast<int64_t>(expected)) +
                  " (nothing moved; the communicator stays usable)");
    }
  transport_all_to_all(send, send_bytes, recv, recv_bytes);
}

void Communicator::all_reduce_sum(double* data, int64_t count) {
  require(count >= 0, MOE_STATUS_INVALID_ARGUMENT, "count must be >= 0");
  require(data || count == 0, MOE_STATUS_NULL_POINTER, "data is NULL");
  run("all_reduce_sum", [&](char* err, size_t len) {
    return ops_.all_reduce_sum(ops_.state, data, count, timeout_s_, err, len);
  });
}

void Communicator::barrier() {
  run("barrier",
      [&](char* err, size_t len) { return ops_.barrier(ops_.state, timeout_s_, err, len); });
}

}  // namespace moe::dist
