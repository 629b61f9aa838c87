// Internal to policy/: the one set of semantic checks behind both ParsePolicyYaml() and
// ValidatePolicy(), the error list that places each error at the best-known source position,
// and the small syntax checks (names, paths, addresses) that the matcher shares.
#ifndef SHUTTLE_POLICY_VALIDATE_INTERNAL_H_
#define SHUTTLE_POLICY_VALIDATE_INTERNAL_H_

#include <concepts>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"
#include "shuttle/v1/policy.pb.h"
#include "shuttle/v1/types.pb.h"

namespace shuttle::policy::internal {

// This Abseil is built with its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0), so
// absl::StrCat and absl's transparent string hashing do not take std::string_view. These small
// stand-ins do.

// Hash and equality for string-keyed maps that find by std::string_view without allocating.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const {
    return absl::Hash<absl::string_view>()(absl::string_view(s.data(), s.size()));
  }
};
struct StringEq {
  using is_transparent = void;
  bool operator()(std::string_view a, std::string_view b) const { return a == b; }
};
template <typename V>
using StringMap = absl::flat_hash_map<std::string, V, StringHash, StringEq>;

inline void AppendPiece(std::string& out, std::string_view piece) { out.append(piece); }
inline void AppendPiece(std::string& out, char c) { out.push_back(c); }
template <std::integral T>
requires(!std::same_as<T, char> && !std::same_as<T, bool>) void AppendPiece(std::string& out,
                                                                            T value) {
  out.append(std::to_string(value));
}
// Append(&s, "a", view, 3) and Cat("a", view, 3): string building for std::string_view pieces.
template <typename... Pieces>
void Append(std::string* out, const Pieces&... pieces) {
  (AppendPiece(*out, pieces), ...);
}
template <typename... Pieces>
std::string Cat(const Pieces&... pieces) {
  std::string out;
  (AppendPiece(out, pieces), ...);
  return out;
}
// "a, b, c"
template <typename Container>
std::string Join(const Container& items, std::string_view separator) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out.append(separator);
    AppendPiece(out, item);
  }
  return out;
}

// 'text' for an error message: at most 64 bytes, control and non-ASCII bytes as \xNN, so a
// hostile value can't flood a terminal or a log line.
std::string Quote(std::string_view text);

// Limits that keep a hostile file from costing more than it is worth.
inline constexpr size_t kMaxErrors = 500;         // Then one "too many errors" entry.
inline constexpr size_t kMaxNameLength = 128;     // Policy, rule, VM, host, service names.
inline constexpr size_t kMaxObjectLength = 4096;  // Paths and object names (PATH_MAX).

// 1-based; 0 means unknown.
struct SourcePos {
  uint32_t line = 0;
  uint32_t column = 0;
};

// Collects validation errors for one policy. Positions come from what the reader recorded for
// each field path (YAML), else from the enclosing rule's SourceLocation (network bundles).
// Not thread-safe; one per validation.
class ErrorList {
 public:
  explicit ErrorList(std::string file) : file_(std::move(file)) {}

  // Records where the value of `field` (a dotted proto path, e.g. "rules[2].object.path") is.
  void SetPosition(std::string field, SourcePos pos);
  // Shows proto path `field` as `display` in errors (the YAML `kind:` form of `kinds`).
  void SetAlias(std::string field, std::string display);

  // An error found while reading the source (syntax, types, unknown keys and values). Semantic
  // errors at or below the same field are dropped later: they would only repeat it.
  void AddStructural(std::string_view field, SourcePos pos, std::string message);
  // Drops later semantic errors at or below `field` without reporting one: e.g. no "action
  // missing" after "unknown key 'acton' (did you mean 'action'?)".
  void Cover(std::string_view field) { structural_fields_.push_back(Display(field)); }
  // An error found by CheckPolicy(), placed at `field` or its nearest ancestor with a position.
  void AddSemantic(std::string_view field, std::string message);

  // The best-known position of `field`: its own, else its nearest ancestor's.
  SourcePos Locate(std::string_view field) const;
  bool empty() const { return errors_.empty(); }
  // Every error, ordered by position (stable for equal positions).
  std::vector<v1::ValidationError> Take();

 private:
  void Add(std::string field, SourcePos pos, std::string message);
  std::string Display(std::string_view field) const;

  std::string file_;
  StringMap<SourcePos> positions_;
  StringMap<std::string> aliases_;
  std::vector<std::string> structural_fields_;
  std::vector<v1::ValidationError> errors_;
  bool truncated_ = false;
};

// The semantic checks of one policy (parser.h, ValidatePolicy). Adds every problem to `errors`.
void CheckPolicy(const v1::Policy& policy, ErrorList& errors);

// [a-z0-9][a-z0-9._-]* up to kMaxNameLength: policy and rule names.
bool IsValidPolicyName(std::string_view name);
// [A-Za-z0-9][A-Za-z0-9._-]* up to kMaxNameLength: VM names ("host" and "*" are handled apart).
bool IsValidVmName(std::string_view name);

// A selector's name: the literal part and whether it ended in '*' (a prefix).
struct NamePattern {
  std::string_view literal;
  bool prefix = false;
};
NamePattern SplitPattern(std::string_view pattern);

// The object name fields of ObjectSelector, in declaration order.
enum class ObjectField { kNone, kPath, kAbstract, kAddress, kName, kProgram, kService };
std::string_view ObjectFieldName(ObjectField field);  // "path", "abstract", ...
// The (first) object name field that `object` sets and its value; {kNone, ""} if none is set.
// A valid selector sets at most one.
struct ObjectName {
  ObjectField field = ObjectField::kNone;
  std::string_view value;
};
ObjectName ObjectNameOf(const v1::ObjectSelector& object);

// An object address "IP:PORT": IP is a loopback address (127.0.0.0/8 dotted quad, or [::1]) or
// "*" (any loopback address); PORT is 1-65535 or "*" (any port; then it is a prefix). Not both.
struct AddressPattern {
  bool any_ip = false;    // "*:PORT"
  bool any_port = false;  // "IP:*"
  uint32_t port = 0;      // When !any_port.
};
// Returns nullopt and a reason in `error` when `address` is not such a pattern.
std::optional<AddressPattern> ParseAddressPattern(std::string_view address, std::string* error);
// The port of a concrete "IP:PORT" (as the agent reports it), or 0. Does not allocate.
uint32_t PortOfAddress(std::string_view address);

}  // namespace shuttle::policy::internal

#endif  // SHUTTLE_POLICY_VALIDATE_INTERNAL_H_
