// One record of expert counts, whatever log it came from.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe::stats {

struct CountsRecord {
  int64_t step = 0;
  std::string layer;
  std::string split;               // "" when the log does not say
  std::vector<int64_t> counts;     // demand per expert
  std::vector<int64_t> served;     // empty when the log has none
  int64_t tokens = -1;             // the tokens behind the counts, -1 when the log does not say
  int rank = -1;                   // the expert-parallel rank that wrote it, -1 when not per rank
  bool local = false;              // counts of that rank's own experts only (a slice of the layer)
  std::vector<int64_t> rank_load;  // [ranks] each rank's experts' load, when known
  bool partial = false;  // one microbatch's part: summed with the rank's others of its step
  bool sparse = false;   // of a dump that lists only the experts chosen (shorter: zeros)
  bool absent_when_empty = false;  // all zero means nothing routed (a dense layer): no record
};

}  // namespace moe::stats
