// Policy files: YAML (yaml-cpp) -> v1::Policy, with every problem reported at once and each one
// naming file, line, column and field. Also the semantic validation of an already-parsed
// v1::Policy (used for bundles that arrive over the network, where there is no YAML).
// The YAML format is documented in docs/policy-reference.md.
#ifndef SHUTTLE_POLICY_PARSER_H_
#define SHUTTLE_POLICY_PARSER_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shuttle/v1/policy.pb.h"
#include "shuttle/v1/types.pb.h"

namespace shuttle::policy {

// Result of parsing one policy file. `policy` is set iff `errors` is empty.
struct ParseResult {
  std::optional<v1::Policy> policy;
  std::vector<v1::ValidationError> errors;
};

// Parses and validates one YAML policy file. Never throws, never crashes on any input; all
// syntax and semantic errors are collected (not only the first). Each rule carries its
// SourceLocation. Thread-safe (no shared state).
ParseResult ParsePolicyYaml(std::string_view source, std::string_view filename);

// Semantic validation of a parsed policy (names, kinds vs object fields, action parameters,
// absolute paths, duplicate rule names...). Errors carry the rules' SourceLocation when known.
std::vector<v1::ValidationError> ValidatePolicy(const v1::Policy& policy);

// "file:line:col: field: message", the one-line form used by the CLI and logs.
std::string FormatError(const v1::ValidationError& error);

// INVALID_ARGUMENT whose message lists every error, one FormatError() per line; OK if empty.
absl::Status ErrorsToStatus(const std::vector<v1::ValidationError>& errors);

// Convenience: ParsePolicyYaml folded into a StatusOr (errors via ErrorsToStatus).
absl::StatusOr<v1::Policy> ParsePolicyOrStatus(std::string_view source, std::string_view filename);

// The canonical YAML text of a policy (every field that is set, in the documented order), e.g.
// for `shuttlectl policy get -o yaml`. ParsePolicyYaml(PolicyToYaml(p)) yields p again, except
// for the rules' SourceLocation. Thread-safe.
std::string PolicyToYaml(const v1::Policy& policy);

// The parameters an `ask` rule gets for what its file leaves out: ttl 30s, offline_ttl 5m,
// timeout 200ms, fail closed. ParsePolicyYaml fills them in, so a parsed ask rule has all four.
v1::AskParams DefaultAskParams();

// Names used in YAML and the CLI for enums: "unix-connect" <-> UNIX_CONNECT, "allow" <-> ALLOW,
// "cross-vm" <-> CROSS_VM, etc. Parse* return nullopt for unknown names.
// Name functions return "unspecified" for the zero value and "unknown" for values out of range,
// except PolicyModeName / FailModeName, which name the documented default for the zero value.
std::string_view KindName(v1::InteractionKind kind);
std::optional<v1::InteractionKind> ParseKindName(std::string_view name);
std::string_view ActionName(v1::Action action);
std::optional<v1::Action> ParseActionName(std::string_view name);
std::string_view VerdictName(v1::Verdict verdict);
std::optional<v1::Verdict> ParseVerdictName(std::string_view name);
std::string_view ScopeName(v1::Scope scope);
std::optional<v1::Scope> ParseScopeName(std::string_view name);
std::string_view PolicyModeName(v1::PolicyMode mode);  // "enforce" | "monitor"
std::optional<v1::PolicyMode> ParsePolicyModeName(std::string_view name);
std::string_view FailModeName(v1::FailMode mode);  // "closed" | "open"
std::optional<v1::FailMode> ParseFailModeName(std::string_view name);

}  // namespace shuttle::policy

#endif  // SHUTTLE_POLICY_PARSER_H_
