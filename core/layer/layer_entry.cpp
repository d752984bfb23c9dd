#include "core/layer/layer_entry.hpp"

#include <algorithm>
#include <thread>
#include <vector>

#include "core/error.hpp"

namespace moe {
namespace {

thread_local std::vector<Layer*> entered;  // by this thread's C call under way
thread_local int call_depth = 0;

}  // namespace

void enter_layer(Layer& layer) {
  const std::thread::id me = std::this_thread::get_id();
  std::thread::id holder;  // none
  if (layer.entered_by.compare_exchange_strong(holder, me)) {
    entered.push_back(&layer);
    return;
  }
  require(holder == me, MOE_STATUS_INVALID_STATE,
          "another thread is inside a call on this layer: a layer serves one thread at a "
          "time (docs/limits.md); this call changed nothing");
}

void forget_layer(Layer& layer) {
  entered.erase(std::remove(entered.begin(), entered.end(), &layer), entered.end());
}

LayerCall::LayerCall() {
  ++call_depth;
}

LayerCall::~LayerCall() {
  if (--call_depth > 0) return;
  for (Layer* layer : entered) layer->entered_by.store(std::thread::id());
  entered.clear();
}

}  // namespace moe
