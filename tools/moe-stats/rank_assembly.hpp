// Expert-parallel logs: every rank writes its own records (Megatron-Core, TensorRT-LLM,
// SGLang's per-rank dumps, vLLM's engines). The assembler joins the ranks' records of
// one step into the layer's record and says what each rank's experts carried
// (CountsRecord::rank_load), reading every rank's log one step at a time.
// contiguous_rank_load gives logs that name no ranks the same blocks (--ep-ranks).
#pragma once

#include <memory>
#include <vector>

#include "tools/moe-stats/counts_log.hpp"

namespace moe::stats {

// Each rank's experts' load when the experts lie in contiguous blocks of E / ranks, one
// per rank, as every framework places them without a load balancer; empty if E does not
// divide.
std::vector<int64_t> contiguous_rank_load(const std::vector<int64_t>& counts, int ranks);

class RankAssembler : public RecordSource {
 public:
  // One source per rank log (file_ranks[i]: the rank its file name gives, -1 when the
  // records say; names[i]: its file, for errors), or one source whose records carry
  // their rank. Records that carry no rank in a source of no rank pass through.
  RankAssembler(std::vector<std::unique_ptr<RecordSource>> sources, std::vector<int> file_ranks,
                std::vector<std::string> names);
  bool next(CountsRecord& out) override;
  std::string where() const override { return where_; }
  const ParseSummary& summary() const override { return summary_; }

 private:
  bool peek(size_t i);
  void assemble_step();
  std::string rank_file(int rank) const;

  std::vector<std::unique_ptr<RecordSource>> sources_;
  std::vector<int> file_ranks_;
  std::vector<std::string> names_;
  int known_ranks_ = 0;  // the most ranks any step had: a later step must have them all
  std::vector<CountsRecord> peeked_;
  std::vector<bool> has_peeked_, ended_;
  std::vector<CountsRecord> ready_;
  size_t ready_next_ = 0;
  bool any_step_ = false;
  int64_t last_step_ = 0;
  std::string where_;
  ParseSummary summary_;
};

}  // namespace moe::stats
