// The name of each status, for messages at any layer (moe_status_string returns it).
#pragma once

#include "core/raw_enum.hpp"
#include "moe/moe.h"

namespace moe {

inline const char* status_name(moe_status_t status) {
  switch (raw_enum(status)) {
    case MOE_STATUS_SUCCESS: return "MOE_STATUS_SUCCESS";
    case MOE_STATUS_NULL_POINTER: return "MOE_STATUS_NULL_POINTER";
    case MOE_STATUS_INVALID_ARGUMENT: return "MOE_STATUS_INVALID_ARGUMENT";
    case MOE_STATUS_SHAPE_MISMATCH: return "MOE_STATUS_SHAPE_MISMATCH";
    case MOE_STATUS_INVALID_HANDLE: return "MOE_STATUS_INVALID_HANDLE";
    case MOE_STATUS_INVALID_STATE: return "MOE_STATUS_INVALID_STATE";
    case MOE_STATUS_UNSUPPORTED: return "MOE_STATUS_UNSUPPORTED";
    case MOE_STATUS_OUT_OF_MEMORY: return "MOE_STATUS_OUT_OF_MEMORY";
    case MOE_STATUS_BACKEND_ERROR: return "MOE_STATUS_BACKEND_ERROR";
    case MOE_STATUS_COMM_ERROR: return "MOE_STATUS_COMM_ERROR";
    case MOE_STATUS_INTERNAL_ERROR: return "MOE_STATUS_INTERNAL_ERROR";
  }
  return "MOE_STATUS_UNKNOWN";
}

}  // namespace moe
