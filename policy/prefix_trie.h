// Internal to policy/: a compressed (radix) trie over byte strings, built once, that finds every
// stored key that is a prefix of a given string in time linear in that string's length (not in
// the number of keys) and without allocating. The matcher indexes object-name prefixes with it.
#ifndef SHUTTLE_POLICY_PREFIX_TRIE_H_
#define SHUTTLE_POLICY_PREFIX_TRIE_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shuttle::policy::internal {

// Immutable after Build(); concurrent readers are safe.
class PrefixTrie {
 public:
  // Replaces the contents. Keys must be non-empty and distinct; values are opaque to the trie.
  void Build(std::vector<std::pair<std::string, uint32_t>> entries);

  // Calls f(prefix_length, value) for every stored key that is a prefix of `text` (including
  // `text` itself), shortest first.
  template <typename F>
  void ForEachPrefix(std::string_view text, F&& f) const {
    if (nodes_.empty()) return;
    uint32_t index = 0;
    size_t pos = 0;
    while (true) {
      const Node& node = nodes_[index];
      if (text.size() - pos < node.label_len ||
          std::memcmp(text.data() + pos, labels_.data() + node.label_begin, node.label_len) != 0) {
        return;
      }
      pos += node.label_len;
      if (node.value != kNoValue) f(pos, node.value);
      if (pos == text.size() || node.children_len == 0) return;
      const char c = text[pos];
      const char* first = child_chars_.data() + node.children_begin;
      const char* last = first + node.children_len;
      // Children are in std::string order, which compares bytes as unsigned char.
      const char* found =
          node.children_len <= 8
              ? std::find(first, last, c)
              : std::lower_bound(first, last, c, [](char a, char b) {
                  return static_cast<unsigned char>(a) < static_cast<unsigned char>(b);
                });
      if (found == last || *found != c) return;
      index = child_nodes_[static_cast<size_t>(found - child_chars_.data())];
    }
  }

  bool empty() const { return nodes_.empty(); }
  size_t node_count() const { return nodes_.size(); }

 private:
  static constexpr uint32_t kNoValue = UINT32_MAX;
  struct Node {
    uint32_t label_begin = 0;  // The edge label into this node, in labels_.
    uint32_t label_len = 0;
    uint32_t children_begin = 0;  // In child_chars_ / child_nodes_, sorted by first byte.
    uint32_t children_len = 0;
    uint32_t value = kNoValue;
  };

  uint32_t BuildRange(const std::vector<std::pair<std::string, uint32_t>>& sorted, size_t lo,
                      size_t hi, size_t depth);

  std::string labels_;
  std::vector<Node> nodes_;
  std::vector<char> child_chars_;
  std::vector<uint32_t> child_nodes_;
};

}  // namespace shuttle::policy::internal

#endif  // SHUTTLE_POLICY_PREFIX_TRIE_H_
