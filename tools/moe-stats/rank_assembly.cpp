#include "tools/moe-stats/rank_assembly.hpp"

#include <algorithm>
#include <map>
#include <numeric>
#include <stdexcept>

#include "tools/moe-stats/count_text.hpp"

namespace moe::stats {
namespace {

// What one rank said about one layer at one step: microbatch records summed.
struct RankPart {
  std::vector<int64_t> counts;
  int64_t tokens = 0;
  bool tokens_known = true;
};

// Sums `counts` into `sum`; a sparse dump's shorter vector is padded with zeros.
void add_into(std::vector<int64_t>& sum, const std::vector<int64_t>& counts, bool sparse) {
  if (sum.size() != counts.size() && !sum.empty() && !sparse)
    throw std::runtime_error("the ranks' records differ in their number of experts (" +
                             std::to_string(sum.size()) + " and " + std::to_string(counts.size()) +
                             ")");
  if (sum.size() < counts.size()) sum.resize(counts.size(), 0);
  for (size_t e = 0; e < counts.size(); ++e) sum[e] = checked_add(sum[e], counts[e]);
}

}  // namespace

std::vector<int64_t> contiguous_rank_load(const std::vector<int64_t>& counts, int ranks) {
  if (ranks < 1 || counts.size() % static_cast<size_t>(ranks) != 0) return {};
  const size_t per_rank = counts.size() / static_cast<size_t>(ranks);
  std::vector<int64_t> load(static_cast<size_t>(ranks), 0);
  for (size_t e = 0; e < counts.size(); ++e)
    load[e / per_rank] = checked_add(load[e / per_rank], counts[e]);
  return load;
}

RankAssembler::RankAssembler(std::vector<std::unique_ptr<RecordSource>> sources,
                             std::vector<int> file_ranks, std::vector<std::string> names)
    : sources_(std::move(sources)),
      file_ranks_(std::move(file_ranks)),
      names_(std::move(names)),
      peeked_(sources_.size()),
      has_peeked_(sources_.size(), false),
      ended_(sources_.size(), false) {}

bool RankAssembler::peek(size_t i) {
  if (has_peeked_[i]) return true;
  if (ended_[i]) return false;
  if (!sources_[i]->next(peeked_[i])) {
    ended_[i] = true;
    const ParseSummary& s = sources_[i]->summary();
    summary_.skipped_lines += s.skipped_lines;
    for (const std::string& m : s.skipped_messages)
      if (summary_.skipped_messages.size() < kMaxSkippedMessages)
        summary_.skipped_messages.push_back(m);
    return false;
  }
  if (peeked_[i].rank < 0) peeked_[i].rank = file_ranks_[i];
  has_peeked_[i] = true;
  return true;
}

bool RankAssembler::next(CountsRecord& out) {
  while (ready_next_ == ready_.size()) {
    ready_.clear();
    ready_next_ = 0;
    // A record of no rank from a lone source passes through.
    if (sources_.size() == 1 && peek(0) && peeked_[0].rank < 0) {
      where_ = sources_[0]->where();
      out = std::move(peeked_[0]);
      has_peeked_[0] = false;
      return true;
    }
    bool any = false;
    for (size_t i = 0; i < sources_.size(); ++i) any = peek(i) || any;
    if (!any) return false;
    try {
      assemble_step();
    } catch (const ParseError&) {
      throw;
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(where_ + ": " + e.what());
    }
  }
  out = std::move(ready_[ready_next_++]);
  return true;
}

// " (its file)" for a rank whose file name gave it.
std::string RankAssembler::rank_file(int rank) const {
  for (size_t i = 0; i < file_ranks_.size(); ++i)
    if (file_ranks_[i] == rank) return " (" + names_[i] + ")";
  return "";
}

void RankAssembler::assemble_step() {
  int64_t step = 0;
  bool first = true;
  for (size_t i = 0; i < sources_.size(); ++i)
    if (has_peeked_[i] && (first || peeked_[i].step < step)) {
      step = peeked_[i].step;
      where_ = sources_[i]->where();
      first = false;
    }
  if (any_step_ && step <= last_step_)
    throw std::runtime_error("records of step " + std::to_string(step) + " come after step " +
                             std::to_string(last_step_) +
                             ": a rank's log is not in step order, or holds a step twice");
  // (split, layer) in order of appearance, then rank.
  std::vector<std::pair<std::string, std::string>> order;
  std::map<std::pair<std::string, std::string>, std::map<int, RankPart>> parts;
  bool local = false, source_view = false, sparse = false, absent_when_empty = false;
  int ranks = 0;
  for (size_t i = 0; i < sources_.size(); ++i) {
    while (peek(i) && peeked_[i].step == step) {
      CountsRecord& r = peeked_[i];
      where_ = sources_[i]->where();
      if (r.rank < 0)
        throw std::runtime_error(
            "a record that names no rank among per-rank logs (give each rank's log a name "
            "holding rank<N>)");
      (r.local ? local : source_view) = true;
      if (local && source_view)
        throw std::runtime_error("the ranks mix their own experts' counts with all experts'");
      const auto key = std::make_pair(r.split, r.layer);
      auto [it, added] = parts.try_emplace(key);
      if (added) order.push_back(key);
      RankPart& part = it->second[r.rank];
      if (!part.counts.empty() && part.counts.size() != r.counts.size())
        throw std::runtime_error("rank " + std::to_string(r.rank) +
                                 " changes its number of experts in layer " + r.layer);
      if (!part.counts.empty() && !r.partial)
        throw std::runtime_error("rank " + std::to_string(r.rank) + " gives layer " + r.layer +
                                 " of step " + std::to_string(step) + " twice");
      add_into(part.counts, r.counts, r.sparse);
      sparse = sparse || r.sparse;
      absent_when_empty = absent_when_empty || r.absent_when_empty;
      if (r.tokens < 0)
        part.tokens_known = false;
      else
        part.tokens = checked_add(part.tokens, r.tokens);
      ranks = std::max(ranks, r.rank + 1);
      has_peeked_[i] = false;
    }
  }
  // A run of per-rank files has as many ranks as files; ranks that the records name
  // count up to the largest.
  const int named = static_cast<int>(
      std::count_if(file_ranks_.begin(), file_ranks_.end(), [](int r) { return r >= 0; }));
  ranks = std::max({ranks, named, known_ranks_});
  known_ranks_ = ranks;
  for (const auto& key : order) {
    const std::map<int, RankPart>& by_rank = parts[key];
    CountsRecord r;
    r.step = step;
    r.split = key.first;
    r.layer = key.second;
    bool tokens_known = true;
    int64_t tokens = 0;
    for (int q = 0; q < ranks; ++q) {
      const auto it = by_rank.find(q);
      if (it == by_rank.end())
        throw std::runtime_error("step " + std::to_string(step) + ", layer " + r.layer +
                                 ": no record from rank " + std::to_string(q) + " of " +
                                 std::to_string(ranks) + rank_file(q));
      const RankPart& part = it->second;
      if (local) {
        r.counts.insert(r.counts.end(), part.counts.begin(), part.counts.end());
        int64_t load = 0;
        for (int64_t c : part.counts) load = checked_add(load, c);
        r.rank_load.push_back(load);
      } else {
        add_into(r.counts, part.counts, sparse);
      }
      tokens_known = tokens_known && part.tokens_known;
      if (part.tokens_known) tokens = checked_add(tokens, part.tokens);
    }
    if (!local) r.rank_load = contiguous_rank_load(r.counts, ranks);
    if (tokens_known) r.tokens = tokens;
    if (absent_when_empty &&
        std::all_of(r.counts.begin(), r.counts.end(), [](int64_t c) { return c == 0; }))
      continue;  // a layer no rank routed anything to (a dense layer in SGLang's dumps)
    ready_.push_back(std::move(r));
  }
  any_step_ = true;
  last_step_ = step;
}

}  // namespace moe::stats
