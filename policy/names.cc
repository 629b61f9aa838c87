// The names that YAML files, the CLI and logs use for the v1 enums (declared in parser.h).
#include <array>
#include <optional>
#include <string_view>
#include <utility>

#include "policy/parser.h"

namespace shuttle::policy {
namespace {

template <typename Enum, size_t N>
using NameTable = std::array<std::pair<Enum, std::string_view>, N>;

constexpr NameTable<v1::InteractionKind, 11> kKindNames = {{
    {v1::UNIX_CONNECT, "unix-connect"},
    {v1::TCP_CONNECT, "tcp-connect"},
    {v1::UDP_SEND, "udp-send"},
    {v1::FIFO_OPEN, "fifo-open"},
    {v1::SHM_OPEN, "shm-open"},
    {v1::MQ_OPEN, "mq-open"},
    {v1::SYNC_OPEN, "sync-open"},
    {v1::SIGNAL, "signal"},
    {v1::INVOKE, "invoke"},
    {v1::NAME_TRANSFER, "name-transfer"},
    {v1::DEPEND, "depend"},
}};

constexpr NameTable<v1::Action, 4> kActionNames = {{
    {v1::ALLOW, "allow"},
    {v1::DENY, "deny"},
    {v1::REDIRECT, "redirect"},
    {v1::ASK, "ask"},
}};

constexpr NameTable<v1::Verdict, 3> kVerdictNames = {{
    {v1::VERDICT_ALLOW, "allow"},
    {v1::VERDICT_DENY, "deny"},
    {v1::VERDICT_REDIRECT, "redirect"},
}};

constexpr NameTable<v1::Scope, 4> kScopeNames = {{
    {v1::INTRA_VM, "intra-vm"},
    {v1::CROSS_VM, "cross-vm"},
    {v1::VM_HOST, "vm-host"},
    {v1::HOST_VM, "host-vm"},
}};

constexpr NameTable<v1::PolicyMode, 2> kModeNames = {{
    {v1::ENFORCE, "enforce"},
    {v1::MONITOR, "monitor"},
}};

constexpr NameTable<v1::FailMode, 2> kFailModeNames = {{
    {v1::FAIL_CLOSED, "closed"},
    {v1::FAIL_OPEN, "open"},
}};

template <typename Enum, size_t N>
std::string_view NameOf(const NameTable<Enum, N>& table, Enum value) {
  if (static_cast<int>(value) == 0) return "unspecified";
  for (const auto& [e, name] : table) {
    if (e == value) return name;
  }
  return "unknown";
}

template <typename Enum, size_t N>
std::optional<Enum> ValueOf(const NameTable<Enum, N>& table, std::string_view name) {
  for (const auto& [e, n] : table) {
    if (n == name) return e;
  }
  return std::nullopt;
}

}  // namespace

std::string_view KindName(v1::InteractionKind kind) { return NameOf(kKindNames, kind); }
std::optional<v1::InteractionKind> ParseKindName(std::string_view name) {
  return ValueOf(kKindNames, name);
}
std::string_view ActionName(v1::Action action) { return NameOf(kActionNames, action); }
std::optional<v1::Action> ParseActionName(std::string_view name) {
  return ValueOf(kActionNames, name);
}
std::string_view VerdictName(v1::Verdict verdict) { return NameOf(kVerdictNames, verdict); }
std::optional<v1::Verdict> ParseVerdictName(std::string_view name) {
  return ValueOf(kVerdictNames, name);
}
std::string_view ScopeName(v1::Scope scope) { return NameOf(kScopeNames, scope); }
std::optional<v1::Scope> ParseScopeName(std::string_view name) {
  return ValueOf(kScopeNames, name);
}
std::string_view PolicyModeName(v1::PolicyMode mode) {
  if (mode == v1::POLICY_MODE_UNSPECIFIED) return "enforce";  // The proto's documented default.
  return NameOf(kModeNames, mode);
}
std::optional<v1::PolicyMode> ParsePolicyModeName(std::string_view name) {
  return ValueOf(kModeNames, name);
}
std::string_view FailModeName(v1::FailMode mode) {
  if (mode == v1::FAIL_MODE_UNSPECIFIED) return "closed";  // The proto's documented default.
  return NameOf(kFailModeNames, mode);
}
std::optional<v1::FailMode> ParseFailModeName(std::string_view name) {
  return ValueOf(kFailModeNames, name);
}

}  // namespace shuttle::policy
