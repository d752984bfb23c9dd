// Errors inside the library are C++ exceptions carrying a status; the C ABI layer
// (core/abi/, entry.hpp's guarded) catches them and turns them into a status and a
// thread-local message.
#pragma once

#include <stdexcept>
#include <string>

#include "moe/moe.h"

namespace moe {

class Error : public std::runtime_error {
 public:
  Error(moe_status_t status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  moe_status_t status() const { return status_; }

 private:
  moe_status_t status_;
};

// Throws Error(status, message) when `condition` is false.
inline void require(bool condition, moe_status_t status, const std::string& message) {
  if (!condition) throw Error(status, message);
}

}  // namespace moe
