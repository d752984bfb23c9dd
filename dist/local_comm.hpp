// The local communicator: one rank, in process. Its all-to-all copies the send buffer
// to the receive buffer and its sum is the identity, so a layer attached to it runs
// the whole expert-parallel path (counts, exchanges, regrouping) without MPI:
// single-process tests of that path, and the default for callers who want one code
// path whether or not they run distributed.
#pragma once

#include "moe/moe.h"

namespace moe::dist {

moe_comm_ops_t local_comm_ops();

}  // namespace moe::dist
