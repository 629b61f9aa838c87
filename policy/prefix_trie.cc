#include "policy/prefix_trie.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

namespace shuttle::policy::internal {

void PrefixTrie::Build(std::vector<std::pair<std::string, uint32_t>> entries) {
  labels_.clear();
  nodes_.clear();
  child_chars_.clear();
  child_nodes_.clear();
  if (entries.empty()) return;
  std::sort(entries.begin(), entries.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  BuildRange(entries, 0, entries.size(), 0);
}

// Builds the node for sorted[lo, hi), whose keys share their first `depth` bytes (the path to
// the parent). Children are appended contiguously once all of them exist.
uint32_t PrefixTrie::BuildRange(const std::vector<std::pair<std::string, uint32_t>>& sorted,
                                size_t lo, size_t hi, size_t depth) {
  // In sorted order the common prefix of a range is that of its first and last keys.
  const std::string& first = sorted[lo].first;
  const std::string& last = sorted[hi - 1].first;
  size_t common = depth;
  while (common < first.size() && common < last.size() && first[common] == last[common]) {
    ++common;
  }
  const uint32_t index = static_cast<uint32_t>(nodes_.size());
  nodes_.emplace_back();
  nodes_[index].label_begin = static_cast<uint32_t>(labels_.size());
  nodes_[index].label_len = static_cast<uint32_t>(common - depth);
  labels_.append(first, depth, common - depth);

  size_t i = lo;
  if (first.size() == common) {  // Keys are distinct, so only the first can end here.
    nodes_[index].value = sorted[lo].second;
    ++i;
  }
  std::vector<std::pair<char, uint32_t>> children;
  while (i < hi) {
    const char c = sorted[i].first[common];
    size_t j = i + 1;
    while (j < hi && sorted[j].first[common] == c) ++j;
    children.emplace_back(c, BuildRange(sorted, i, j, common));
    i = j;
  }
  nodes_[index].children_begin = static_cast<uint32_t>(child_chars_.size());
  nodes_[index].children_len = static_cast<uint32_t>(children.size());
  for (const auto& [c, child] : children) {
    child_chars_.push_back(c);
    child_nodes_.push_back(child);
  }
  return index;
}

}  // namespace shuttle::policy::internal
