// shuttlectl's command line: a verb-first grammar (`shuttlectl policy get NAME --revision 3`)
// parsed by hand from a table of commands and flags, so that usage text, validation and the
// parser never disagree. Pure functions of argv and the environment; no I/O.
#ifndef SHUTTLE_CLI_ARGS_H_
#define SHUTTLE_CLI_ARGS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace shuttle::cli {

inline constexpr absl::string_view kDefaultController = "127.0.0.1:7443";
inline constexpr absl::string_view kDefaultDataDir = "/var/lib/shuttle/controller";
inline constexpr char kControllerEnv[] = "SHUTTLE_CONTROLLER";

enum class OutputFormat { kTable, kJson };

// Options every verb takes (DESIGN.md section 4).
struct GlobalOptions {
  std::string controller = std::string(kDefaultController);
  // Controller data directory; its pki/ holds the default CA and admin client certificate.
  std::string data_dir = std::string(kDefaultDataDir);
  std::string ca_path;          // Empty: <data_dir>/pki/ca.pem.
  std::string cert_path;        // Empty: <data_dir>/pki/admin.pem.
  std::string key_path;         // Empty: <data_dir>/pki/admin.key.
  bool insecure = false;        // Plaintext; only for a controller started with --insecure.
  bool no_client_cert = false;  // TLS without a client certificate (the controller refuses).
  std::string server_name;      // TLS name to verify instead of the host in `controller`.
  std::string agent_socket;     // Local agent socket; empty: $SHUTTLE_AGENT_SOCKET or default.
  OutputFormat output = OutputFormat::kTable;
  absl::Duration timeout = absl::Seconds(10);

  std::string CaPath() const;
  std::string CertPath() const;
  std::string KeyPath() const;
};

// Value types of flags; ParseArgs() checks every value against its type.
enum class FlagType {
  kBool,      // --insecure, --insecure=true|false
  kString,    // any text
  kUint,      // non-negative decimal integer (uids)
  kPositive,  // decimal integer >= 1 (revisions, limits)
  kDuration,  // absl duration ("10s", "1m30s") or a bare number of seconds
  kOutput,    // table | json
  kKind,      // an interaction kind name: unix-connect, tcp-connect, ...
  kVerdict,   // allow | deny | redirect
  kSince,     // a duration back from now ("1h") or an RFC 3339 time
  kUntil,     // a duration from now ("2h") or an RFC 3339 time
};

struct FlagSpec {
  absl::string_view name;  // Long name without dashes: "file".
  char short_name;         // 'f', or 0.
  FlagType type;
  absl::string_view value_name;  // "FILE" in usage; empty for booleans.
  absl::string_view help;
  bool global;  // Accepted by every command.
};

struct CommandSpec {
  absl::string_view name;  // Words of the verb: "policy apply".
  absl::string_view args;  // Positional arguments in usage: "NAME", "-- CMD...".
  size_t min_args;         // Positional arguments after the verb words.
  size_t max_args;
  std::vector<absl::string_view> flags;     // Long names of the verb's own flags.
  std::vector<absl::string_view> required;  // Of those, the ones that must be given.
  bool passthrough;                         // Takes arguments after "--" (run).
  absl::string_view summary;                // One line for the command list.
  absl::string_view details;                // A paragraph for the verb's --help; may be empty.
};

// Every flag and command shuttlectl knows, in usage order.
const std::vector<FlagSpec>& Flags();
const std::vector<CommandSpec>& Commands();
const FlagSpec* FindFlag(absl::string_view long_name);

// One parsed command line. When `help` is set, print HelpText() and do nothing else.
struct Invocation {
  GlobalOptions global;
  const CommandSpec* command = nullptr;  // Null only for top-level or group help.
  std::string help_topic;                // For help: "", "policy", "policy apply", ...
  bool help = false;
  std::vector<std::string> args;             // Positionals after the verb words.
  std::map<std::string, std::string> flags;  // Verb flags by long name; validated.
  std::vector<std::string> passthrough;      // Everything after "--".

  bool Has(absl::string_view flag) const;
  // The flag's value, or `fallback` when it was not given.
  std::string Get(absl::string_view flag, absl::string_view fallback = "") const;
  // Typed accessors; ParseArgs() has validated the values, so these cannot fail.
  std::optional<uint64_t> GetUint(absl::string_view flag) const;
  std::optional<absl::Duration> GetDuration(absl::string_view flag) const;
};

// Parses argv (without argv[0]). `env_controller` is $SHUTTLE_CONTROLLER or null.
// A usage error returns INVALID_ARGUMENT whose message is one line naming the command,
// e.g. "policy rollback: missing --to N".
absl::StatusOr<Invocation> ParseArgs(const std::vector<std::string>& argv,
                                     const char* env_controller);

// Usage text for a topic: "" (everything), a group ("policy") or a command ("policy get").
std::string HelpText(absl::string_view topic);

// "10s", "1m30s", "500ms" or a bare number of seconds; must be > 0.
absl::StatusOr<absl::Duration> ParseTimeout(absl::string_view text);

// --since: a duration back from `now` ("90m") or an RFC 3339 time ("2024-05-01T12:00:00Z").
absl::StatusOr<absl::Time> ParseSince(absl::string_view text, absl::Time now);

// --expires: a duration from `now` ("2h") or an RFC 3339 time.
absl::StatusOr<absl::Time> ParseUntil(absl::string_view text, absl::Time now);

}  // namespace shuttle::cli

#endif  // SHUTTLE_CLI_ARGS_H_
