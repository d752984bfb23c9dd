// The communicators' entry points, and a layer's expert parallelism over one.
#include <string>

#include "core/abi/entry.hpp"
#include "core/layer/attach.hpp"
#include "core/sized_struct.hpp"
#include "dist/local_comm.hpp"

using namespace moe::abi;  // guarded, the handle lookups, the shared checks (entry.hpp)

namespace {

moe_comm_t new_comm(const moe_comm_ops_t& ops, double timeout_s) {
  return moe::abi::new_handle<moe_comm_t>(std::make_unique<moe_comm>(ops, timeout_s),
                                          moe::HandleKind::Comm);
}

}  // namespace

extern "C" {

moe_status_t moe_comm_create(const moe_comm_ops_t* ops, double timeout_s, moe_comm_t* comm) {
  return guarded(__func__, [&] {
    require_pointer(comm, "comm");
    const moe_comm_ops_t defaults{};
    *comm = new_comm(moe::read_sized(ops, defaults, "ops"), timeout_s);
  });
}

moe_status_t moe_comm_create_local(moe_comm_t* comm) {
  return guarded(__func__, [&] {
    require_pointer(comm, "comm");
    *comm = new_comm(moe::dist::local_comm_ops(), 0.0);
  });
}

moe_status_t moe_comm_destroy(moe_comm_t comm) {
  return guarded(__func__, [&] {
    if (comm == nullptr) return;
    const moe_comm& c = comm_of(comm);
    moe::require(
        c.attached_layers() == 0, MOE_STATUS_INVALID_STATE,
        std::to_string(c.attached_layers()) +
            " layer(s) still use this communicator: detach them first "
            "(moe_layer_set_comm(layer, NULL, NULL, 0), moe_layer_set_aux_comm(layer, NULL)) "
            "or destroy them");
    delete static_cast<moe_comm*>(registry().remove(comm, moe::HandleKind::Comm, "comm"));
  });
}

moe_status_t moe_comm_rank(moe_comm_t comm, int32_t* rank, int32_t* world) {
  return guarded(__func__, [&] {
    const moe::dist::Communicator& c = comm_of(comm);
    if (rank) *rank = c.rank();
    if (world) *world = c.world();
  });
}

moe_status_t moe_comm_all_to_all(moe_comm_t comm, const void* send, const int64_t* send_bytes,
                                 void* recv, const int64_t* recv_bytes) {
  return guarded(__func__,
                 [&] { comm_of(comm).all_to_all_paired(send, send_bytes, recv, recv_bytes); });
}

moe_status_t moe_comm_all_reduce_sum(moe_comm_t comm, double* data, int64_t count) {
  return guarded(__func__, [&] { comm_of(comm).all_reduce_sum(data, count); });
}

moe_status_t moe_comm_barrier(moe_comm_t comm) {
  return guarded(__func__, [&] { comm_of(comm).barrier(); });
}

moe_status_t moe_layer_set_comm(moe_layer_t layer, moe_comm_t comm, const int32_t* expert_owner,
                                int64_t count) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    moe::dist::attach(l, comm ? &comm_of(comm) : nullptr, expert_owner, count);
  });
}

moe_status_t moe_layer_set_aux_comm(moe_layer_t layer, moe_comm_t comm) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    require_global_aux(l);
    moe::require(comm == nullptr || comm_of(comm).device() == MOE_DEVICE_CPU,
                 MOE_STATUS_UNSUPPORTED,
                 "the aux communicator sums host counts: give a host communicator (MPI, local)");
    l.global_aux.set_comm(comm ? &comm_of(comm) : nullptr);
  });
}

moe_status_t moe_layer_local_experts(const_moe_layer_t layer, int32_t* experts, int64_t capacity,
                                     int64_t* count) {
  return guarded(__func__, [&] {
    const moe::Layer& l = layer_of(layer);
    require_pointer(count, "count");
    std::vector<int32_t> mine;
    if (l.ep) {
      mine = l.ep->placement.local_experts;
    } else {
      for (int32_t e = 0; e < l.config.num_experts; ++e) mine.push_back(e);
    }
    const int64_t n = static_cast<int64_t>(mine.size());
    if (experts) {
      moe::require(capacity >= n, MOE_STATUS_SHAPE_MISMATCH,
                   "capacity is " + std::to_string(capacity) + ", this rank has " +
                       std::to_string(n) + " experts");
      std::copy(mine.begin(), mine.end(), experts);
    }
    *count = n;
  });
}

moe_status_t moe_layer_reduce_router_grad(moe_layer_t layer, moe_tensor_t grad) {
  return guarded(__func__, [&] { moe::dist::reduce_router_grad(layer_of(layer), grad); });
}

moe_status_t moe_layer_comm_traffic(moe_layer_t layer, moe_comm_traffic_t* traffic,
                                    moe_peer_traffic_t* peers, int32_t peer_count, int32_t reset) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    moe::require(peers == nullptr || peer_count >= 0, MOE_STATUS_INVALID_ARGUMENT,
                 "peer_count must be >= 0");
    moe_comm_traffic_t out = MOE_COMM_TRAFFIC_INIT;
    if (l.ep) l.ep->read_traffic(out, peers, peer_count);
    moe::write_sized(traffic, out, "traffic");
    if (reset && l.ep) l.ep->reset_traffic();
  });
}

}  // extern "C"
