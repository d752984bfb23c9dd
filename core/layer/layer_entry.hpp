// One thread at a time in a layer (docs/limits.md, threads): every C call that touches a
// layer enters it first, and a second thread entering while the first is inside gets
// MOE_STATUS_INVALID_STATE instead of racing it (two threads training one layer once
// lost updates silently). Entries last for one C call and are re-entrant within it (a
// group export enters each of its layers; a layer named twice is entered once).
#pragma once

#include "core/layer/layer.hpp"

namespace moe {

// Enters `layer` for the C call under way on this thread; throws INVALID_STATE when
// another thread is inside it.
void enter_layer(Layer& layer);

// Forgets `layer`, about to be deleted while this thread is inside it: it stays marked
// as entered to its last moment, so that another thread is refused, not let in.
void forget_layer(Layer& layer);

// Lives for one C call: the outermost one leaves every layer its thread entered.
class LayerCall {
 public:
  LayerCall();
  ~LayerCall();
  LayerCall(const LayerCall&) = delete;
  LayerCall& operator=(const LayerCall&) = delete;
};

}  // namespace moe
