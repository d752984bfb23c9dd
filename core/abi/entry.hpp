// What every C entry point shares: the status and message of a call (`guarded`), the
// handle lookups, and the checks of arguments that several entry points take. The
// entry points themselves live beside this, one file per kind of handle (layer_api,
// context_api, telemetry_api, group_api, comm_api, library_api).
#pragma once

#include <cstdint>
#include <new>
#include <string>

#include "core/abi/handle_registry.hpp"
#include "core/error.hpp"
#include "core/layer/layer.hpp"
#include "core/layer/layer_entry.hpp"
#include "core/telemetry/export.hpp"
#include "dist/communicator.hpp"
#include "moe/moe.h"

struct moe_group {
  std::vector<const_moe_layer_t> layers;  // handles: a destroyed layer is refused at query
};

struct moe_comm : moe::dist::Communicator {
  using Communicator::Communicator;
};

namespace moe::abi {

// The calling thread's last message (moe_last_error).
std::string& last_error();

moe_status_t fail(moe_status_t status, const std::string& message);

// Runs one entry point's body: a status for every outcome, the message in last_error,
// nothing thrown across the ABI (the faiss C API's pattern).
template <typename Body>
moe_status_t guarded(const char* function, Body&& body) {
  const LayerCall call;  // the layers this call enters are left when it returns
  try {
    last_error().clear();
    body();
    return MOE_STATUS_SUCCESS;
  } catch (const Error& e) {
    return fail(e.status(), std::string(function) + ": " + e.what());
  } catch (const std::bad_alloc&) {
    return fail(MOE_STATUS_OUT_OF_MEMORY, std::string(function) + ": out of memory");
  } catch (const std::exception& e) {
    return fail(MOE_STATUS_INTERNAL_ERROR, std::string(function) + ": " + e.what());
  } catch (...) {
    return fail(MOE_STATUS_INTERNAL_ERROR, std::string(function) + ": unknown error");
  }
}

// Handles are registry tokens (handle_registry.hpp), never the objects' addresses: every
// use goes through these lookups.
HandleRegistry& registry();

// A new handle of `kind` for a new object (the registry owns nothing: destroy deletes).
template <typename Handle, typename Object>
Handle new_handle(std::unique_ptr<Object> object, HandleKind kind) {
  auto handle = static_cast<Handle>(const_cast<void*>(registry().add(object.get(), kind)));
  object.release();
  return handle;
}

// Every use of a layer enters it: one thread at a time (layer_entry.hpp). Both lookups
// first run the bookkeeping of a forward still waiting for its counts
// (settle_pending_forward); the unsettled ones, which backward uses, leave it waiting,
// so that backward issues no host synchronisation either.
Layer& layer_of(const_moe_layer_t handle);
const SavedState& state_of(const_moe_ctx_t handle);
Layer& layer_unsettled(const_moe_layer_t handle);
const SavedState& state_unsettled(const_moe_ctx_t handle);
moe_comm& comm_of(moe_comm_t comm);
moe_group& group_of(moe_group_t group);

void require_pointer(const void* p, const char* name);
void require_expert_count(const Layer& layer, int64_t count);
// The global-batch aux loss's calls refuse a layer of another scope.
void require_global_aux(const Layer& layer);

// By reference: reading an out-of-range enum by value is undefined behaviour.
moe_split_t checked_split(const moe_split_t& split);
moe_scope_t checked_scope(const moe_scope_t& scope);
void checked_export_format(const moe_export_format_t& format);

MetricSet metrics_of(const Layer& l, const moe_split_t& split, const moe_scope_t& scope);
LayerExport export_of(const Layer& l, const MetricSet& m, moe_split_t split, moe_scope_t scope);

// Text out through a caller's buffer: *length always, the text (NUL-terminated) only
// when it fits.
void hand_out(const std::string& text, char* buffer, size_t capacity, size_t* length);

}  // namespace moe::abi
