// Semantic validation of a v1::Policy, shared by the YAML parser and ValidatePolicy(), and the
// error formatting of parser.h.
#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "policy/parser.h"
#include "policy/validate_internal.h"

namespace shuttle::policy {
namespace internal {

// ---------------------------------------------------------------------------------------------
// ErrorList

void ErrorList::SetPosition(std::string field, SourcePos pos) {
  if (pos.line == 0) return;
  positions_.insert_or_assign(std::move(field), pos);
}

void ErrorList::SetAlias(std::string field, std::string display) {
  aliases_.insert_or_assign(std::move(field), std::move(display));
}

std::string ErrorList::Display(std::string_view field) const {
  auto it = aliases_.find(field);
  return it == aliases_.end() ? std::string(field) : it->second;
}

SourcePos ErrorList::Locate(std::string_view field) const {
  while (true) {
    auto it = positions_.find(field);
    if (it != positions_.end()) return it->second;
    if (field.empty()) return {};
    size_t cut = field.find_last_of(".[");
    field = cut == std::string_view::npos ? std::string_view() : field.substr(0, cut);
  }
}

void ErrorList::Add(std::string field, SourcePos pos, std::string message) {
  if (truncated_) return;
  if (errors_.size() >= kMaxErrors) {
    truncated_ = true;
    v1::ValidationError& error = errors_.emplace_back();
    error.set_file(file_);
    error.set_line(pos.line);
    error.set_column(pos.column);
    error.set_message(Cat("too many errors; stopped after ", kMaxErrors));
    return;
  }
  v1::ValidationError& error = errors_.emplace_back();
  error.set_file(file_);
  error.set_line(pos.line);
  error.set_column(pos.column);
  error.set_field(std::move(field));
  error.set_message(std::move(message));
}

void ErrorList::AddStructural(std::string_view field, SourcePos pos, std::string message) {
  std::string shown = Display(field);
  structural_fields_.push_back(shown);
  Add(std::move(shown), pos, std::move(message));
}

void ErrorList::AddSemantic(std::string_view field, std::string message) {
  std::string shown = Display(field);
  for (const std::string& covered : structural_fields_) {
    if (covered.empty()) return;
    if (shown.starts_with(covered) &&
        (shown.size() == covered.size() || shown[covered.size()] == '.' ||
         shown[covered.size()] == '[')) {
      return;
    }
  }
  Add(std::move(shown), Locate(field), std::move(message));
}

std::vector<v1::ValidationError> ErrorList::Take() {
  // The "too many errors" entry, if any, stays last.
  auto end = truncated_ ? errors_.end() - 1 : errors_.end();
  std::stable_sort(
      errors_.begin(), end, [](const v1::ValidationError& a, const v1::ValidationError& b) {
        // Unknown positions (0) go last.
        uint64_t ka = a.line() == 0 ? UINT64_MAX : (uint64_t{a.line()} << 32) | a.column();
        uint64_t kb = b.line() == 0 ? UINT64_MAX : (uint64_t{b.line()} << 32) | b.column();
        return ka < kb;
      });
  return std::move(errors_);
}

std::string Quote(std::string_view text) {
  constexpr size_t kMaxShown = 64;
  std::string out = "'";
  for (size_t i = 0; i < text.size() && i < kMaxShown; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c >= 0x7f) {
      constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (text.size() > kMaxShown) out += "...";
  out += "'";
  return out;
}

// ---------------------------------------------------------------------------------------------
// Syntax helpers

namespace {

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool IsNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
}

}  // namespace

bool IsValidPolicyName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength || !IsLowerAlnum(name[0])) return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return IsLowerAlnum(c) || c == '.' || c == '_' || c == '-'; });
}

bool IsValidVmName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  if (!absl::ascii_isalnum(static_cast<unsigned char>(name[0]))) return false;
  return std::all_of(name.begin(), name.end(), IsNameChar);
}

NamePattern SplitPattern(std::string_view pattern) {
  if (!pattern.empty() && pattern.back() == '*') {
    return {pattern.substr(0, pattern.size() - 1), true};
  }
  return {pattern, false};
}

std::string_view ObjectFieldName(ObjectField field) {
  switch (field) {
    case ObjectField::kNone:
      return "(none)";
    case ObjectField::kPath:
      return "path";
    case ObjectField::kAbstract:
      return "abstract";
    case ObjectField::kAddress:
      return "address";
    case ObjectField::kName:
      return "name";
    case ObjectField::kProgram:
      return "program";
    case ObjectField::kService:
      return "service";
  }
  return "(none)";
}

namespace {

constexpr std::array<ObjectField, 6> kObjectFields = {ObjectField::kPath,    ObjectField::kAbstract,
                                                      ObjectField::kAddress, ObjectField::kName,
                                                      ObjectField::kProgram, ObjectField::kService};

const std::string& FieldValue(const v1::ObjectSelector& object, ObjectField field) {
  switch (field) {
    case ObjectField::kPath:
      return object.path();
    case ObjectField::kAbstract:
      return object.abstract();
    case ObjectField::kAddress:
      return object.address();
    case ObjectField::kName:
      return object.name();
    case ObjectField::kProgram:
      return object.program();
    case ObjectField::kService:
    case ObjectField::kNone:
      break;
  }
  return object.service();
}

}  // namespace

ObjectName ObjectNameOf(const v1::ObjectSelector& object) {
  for (ObjectField field : kObjectFields) {
    const std::string& value = FieldValue(object, field);
    if (!value.empty()) return {field, value};
  }
  return {};
}

namespace {

bool ParseIpv4Loopback(std::string_view ip) {
  int parts = 0;
  size_t start = 0;
  while (true) {
    size_t dot = ip.find('.', start);
    std::string_view part = ip.substr(start, dot == std::string_view::npos ? ip.npos : dot - start);
    if (part.empty() || part.size() > 3 ||
        !std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return false;
    }
    if (part.size() > 1 && part[0] == '0') return false;  // No octal-looking leading zeros.
    int value = 0;
    for (char c : part) value = value * 10 + (c - '0');
    if (value > 255) return false;
    if (parts == 0 && value != 127) return false;
    ++parts;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return parts == 4;
}

bool ParsePort(std::string_view text, uint32_t* port) {
  if (text.empty() || text.size() > 5) return false;
  uint32_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  if (value == 0 || value > 65535 || (text.size() > 1 && text[0] == '0')) return false;
  *port = value;
  return true;
}

}  // namespace

std::optional<AddressPattern> ParseAddressPattern(std::string_view address, std::string* error) {
  size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) {
    *error = "must be IP:PORT (e.g. 127.0.0.1:5432, [::1]:5432, *:5432)";
    return std::nullopt;
  }
  std::string_view ip = address.substr(0, colon);
  std::string_view port = address.substr(colon + 1);
  AddressPattern out;
  if (ip == "*") {
    out.any_ip = true;
  } else if (ip != "[::1]" && !ParseIpv4Loopback(ip)) {
    *error = Cat(Quote(ip),
                 " is not a loopback IP (127.0.0.0/8 as a dotted quad, [::1], or * for "
                 "any loopback address)");
    return std::nullopt;
  }
  if (port == "*") {
    out.any_port = true;
  } else if (!ParsePort(port, &out.port)) {
    *error = Cat("port ", Quote(port), " must be a number from 1 to 65535, or *");
    return std::nullopt;
  }
  if (out.any_ip && out.any_port) {
    *error = "'*:*' matches every address; leave `address` out instead";
    return std::nullopt;
  }
  return out;
}

uint32_t PortOfAddress(std::string_view address) {
  size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) return 0;
  uint32_t port = 0;
  return ParsePort(address.substr(colon + 1), &port) ? port : 0;
}

// ---------------------------------------------------------------------------------------------
// CheckPolicy

namespace {

constexpr int kFirstKind = v1::UNIX_CONNECT;
constexpr int kLastKind = v1::DEPEND;

// Bit i set: kind i takes object field ObjectField(i).
uint32_t FieldsOfKind(v1::InteractionKind kind) {
  auto bit = [](ObjectField f) { return 1u << static_cast<int>(f); };
  switch (kind) {
    case v1::UNIX_CONNECT:
      return bit(ObjectField::kPath) | bit(ObjectField::kAbstract);
    case v1::FIFO_OPEN:
      return bit(ObjectField::kPath);
    case v1::TCP_CONNECT:
    case v1::UDP_SEND:
      return bit(ObjectField::kAddress);
    case v1::SHM_OPEN:
    case v1::MQ_OPEN:
    case v1::SYNC_OPEN:
      return bit(ObjectField::kName);
    case v1::INVOKE:
    case v1::NAME_TRANSFER:
      return bit(ObjectField::kProgram);
    case v1::DEPEND:
      return bit(ObjectField::kService);
    default:
      return 0;
  }
}

std::string FieldsOfKindText(v1::InteractionKind kind) {
  std::vector<std::string_view> names;
  uint32_t mask = FieldsOfKind(kind);
  for (ObjectField f : kObjectFields) {
    if (mask & (1u << static_cast<int>(f))) names.push_back(ObjectFieldName(f));
  }
  if (names.empty()) return "it names no object, only the object's vm";
  return Cat("it takes ", Join(names, " or "));
}

// Checks an absolute, normalized path; `pattern` allows a trailing '*'. Empty result: fine.
std::string CheckPath(std::string_view value, bool pattern) {
  if (value.size() > kMaxObjectLength) return Cat("longer than ", kMaxObjectLength);
  if (value.find('\0') != std::string_view::npos) return "contains a NUL character";
  NamePattern p = pattern ? SplitPattern(value) : NamePattern{value, false};
  if (p.literal.find('*') != std::string_view::npos) {
    return "'*' is only allowed at the end (a prefix)";
  }
  if (p.literal.empty() || p.literal[0] != '/') {
    return Cat("must be an absolute path (start with '/'), not ", Quote(value));
  }
  // Components: none empty ("//"), "." or ".."; the last may be partial when a prefix.
  size_t start = 1;
  while (start <= p.literal.size()) {
    size_t slash = p.literal.find('/', start);
    bool last = slash == std::string_view::npos;
    std::string_view part = p.literal.substr(start, last ? p.literal.npos : slash - start);
    if (!last || !p.prefix) {
      if (part == "." || part == "..") return "must be normalized (no '.' or '..' components)";
      if (part.empty() && !(last && p.literal.size() == 1)) {
        if (!last) return "must be normalized (no empty components, '//')";
        return "must not end in '/' (name the file, or use '/dir/*')";
      }
    }
    if (last) break;
    start = slash + 1;
  }
  return "";
}

// Checks a name that may be any text (abstract socket, shm/mq/sync object, service).
std::string CheckName(std::string_view value, bool pattern) {
  if (value.size() > kMaxObjectLength) return Cat("longer than ", kMaxObjectLength);
  if (value.find('\0') != std::string_view::npos) return "contains a NUL character";
  NamePattern p = pattern ? SplitPattern(value) : NamePattern{value, false};
  if (p.literal.find('*') != std::string_view::npos) {
    return "'*' is only allowed at the end (a prefix)";
  }
  if (p.literal.empty()) {
    return "'*' alone matches every name; leave the field out instead";
  }
  return "";
}

std::string CheckObjectValue(ObjectField field, std::string_view value) {
  switch (field) {
    case ObjectField::kPath:
    case ObjectField::kProgram:
      return CheckPath(value, /*pattern=*/true);
    case ObjectField::kAddress: {
      std::string error;
      if (!ParseAddressPattern(value, &error)) return error;
      return "";
    }
    case ObjectField::kService: {
      std::string error = CheckName(value, /*pattern=*/true);
      if (!error.empty()) return error;
      NamePattern p = SplitPattern(value);
      if (!std::all_of(p.literal.begin(), p.literal.end(),
                       [](char c) { return IsNameChar(c) || c == '@'; })) {
        return "a service name has only letters, digits and . _ - @";
      }
      return "";
    }
    case ObjectField::kAbstract:
    case ObjectField::kName:
      return CheckName(value, /*pattern=*/true);
    case ObjectField::kNone:
      break;
  }
  return "";
}

// Checks a redirect's new object name against one kind.
std::string CheckRedirectName(v1::InteractionKind kind, std::string_view name) {
  if (name.find('*') != std::string_view::npos) return "a redirect names one object: no '*'";
  switch (kind) {
    case v1::UNIX_CONNECT:
      if (!name.empty() && name[0] == '@') {
        return name.size() == 1 ? "an abstract socket name after '@' is empty"
                                : CheckName(name.substr(1), false);
      }
      return CheckPath(name, false);
    case v1::FIFO_OPEN:
    case v1::INVOKE:
    case v1::NAME_TRANSFER:
      return CheckPath(name, false);
    case v1::TCP_CONNECT:
    case v1::UDP_SEND: {
      std::string error;
      if (!ParseAddressPattern(name, &error)) return error;
      return "";
    }
    case v1::SIGNAL:
      return "kind signal names no object, so a redirect can't rename one";
    default:
      return CheckName(name, false);
  }
}

std::string CheckVmSelector(std::string_view vm) {
  if (vm.empty() || vm == "*" || vm == "host") return "";
  if (IsValidVmName(vm)) return "";
  return Cat(Quote(vm), " is not a VM name ([A-Za-z0-9][A-Za-z0-9._-]*, at most ", kMaxNameLength,
             " characters), \"host\" or \"*\"");
}

std::string CheckHostPattern(std::string_view host) {
  if (host == "*") return "";
  NamePattern p = SplitPattern(host);
  if (p.literal.empty()) return "empty host id";
  if (p.literal.size() > kMaxNameLength) return Cat("longer than ", kMaxNameLength);
  if (p.literal.find('*') != std::string_view::npos) {
    return "'*' is only allowed at the end (a prefix)";
  }
  if (!std::all_of(p.literal.begin(), p.literal.end(), IsNameChar)) {
    return Cat(Quote(host), " is not a host id ([A-Za-z0-9._-], optionally ending in *)");
  }
  return "";
}

std::string CheckEnvName(std::string_view name) {
  NamePattern p = SplitPattern(name);
  if (p.literal.empty()) return "an empty name or '*' alone is not allowed";
  if (p.literal.find('*') != std::string_view::npos) {
    return "'*' is only allowed at the end (a prefix)";
  }
  bool ok = !absl::ascii_isdigit(static_cast<unsigned char>(p.literal[0])) &&
            std::all_of(p.literal.begin(), p.literal.end(), [](char c) {
              return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_';
            });
  if (!ok) return Cat(Quote(name), " is not an environment variable name");
  return "";
}

// A proto Duration that is well formed, not negative and, when `positive`, above zero.
std::string CheckDuration(const google::protobuf::Duration& d, bool positive) {
  if (d.seconds() < 0 || d.nanos() < 0 || d.nanos() >= 1000000000) {
    return "must not be negative";
  }
  if (d.seconds() > 315576000000) return "too long";
  if (positive && d.seconds() == 0 && d.nanos() == 0) return "must be longer than zero";
  return "";
}

void CheckRule(const v1::Rule& rule, const std::string& at, ErrorList& errors) {
  auto field = [&at](std::string_view name) { return Cat(at, ".", name); };

  // name
  if (rule.name().empty()) {
    errors.AddSemantic(field("name"), "a rule needs a name");
  } else if (!IsValidPolicyName(rule.name())) {
    errors.AddSemantic(
        field("name"),
        Cat(Quote(rule.name()), " is not a valid rule name ([a-z0-9][a-z0-9._-]*, at most ",
            kMaxNameLength, " characters)"));
  }

  // subject
  const v1::SubjectSelector& subject = rule.subject();
  if (std::string error = CheckVmSelector(subject.vm()); !error.empty()) {
    errors.AddSemantic(field("subject.vm"), error);
  }
  if (!subject.program().empty()) {
    if (std::string error = CheckPath(subject.program(), true); !error.empty()) {
      errors.AddSemantic(field("subject.program"), error);
    }
  }
  if (!subject.has_uid() && subject.uid() != 0) {
    errors.AddSemantic(field("subject.uid"), "uid is set but has_uid is false");
  }

  // kinds
  std::vector<v1::InteractionKind> kinds;
  uint32_t seen_kinds = 0;
  if (rule.kinds().empty()) {
    errors.AddSemantic(field("kinds"), "a rule needs a kind (kind: unix-connect, or kinds: [...])");
  }
  for (int i = 0; i < rule.kinds_size(); ++i) {
    int kind = rule.kinds(i);
    std::string at_kind = Cat(at, ".kinds[", i, "]");
    if (kind < kFirstKind || kind > kLastKind) {
      errors.AddSemantic(at_kind, Cat("unknown kind (", kind, ")"));
      continue;
    }
    if (seen_kinds & (1u << kind)) {
      errors.AddSemantic(at_kind, Cat("kind ", KindName(rule.kinds(i)), " is listed twice"));
      continue;
    }
    seen_kinds |= 1u << kind;
    kinds.push_back(rule.kinds(i));
  }

  // object
  const v1::ObjectSelector& object = rule.object();
  if (std::string error = CheckVmSelector(object.vm()); !error.empty()) {
    errors.AddSemantic(field("object.vm"), error);
  }
  std::vector<ObjectField> set_fields;
  for (ObjectField f : kObjectFields) {
    std::string_view value = FieldValue(object, f);
    if (value.empty()) continue;
    set_fields.push_back(f);
    std::string at_field = field(Cat("object.", ObjectFieldName(f)));
    bool fits = true;
    for (v1::InteractionKind kind : kinds) {
      if (!(FieldsOfKind(kind) & (1u << static_cast<int>(f)))) {
        errors.AddSemantic(at_field, Cat("`", ObjectFieldName(f), "` does not apply to kind ",
                                         KindName(kind), " (", FieldsOfKindText(kind), ")"));
        fits = false;
        break;
      }
    }
    if (!fits) continue;
    if (std::string error = CheckObjectValue(f, value); !error.empty()) {
      errors.AddSemantic(at_field, error);
    }
  }
  if (set_fields.size() > 1) {
    errors.AddSemantic(field(Cat("object.", ObjectFieldName(set_fields[1]))),
                       Cat("the object already names `", ObjectFieldName(set_fields[0]),
                           "`; a rule names one object (write two rules for two)"));
  }

  // action and its parameters
  v1::Action action = rule.action();
  bool action_known =
      action == v1::ALLOW || action == v1::DENY || action == v1::REDIRECT || action == v1::ASK;
  if (action == v1::ACTION_UNSPECIFIED) {
    errors.AddSemantic(field("action"), "a rule needs an action (allow, deny, redirect or ask)");
  } else if (!action_known) {
    errors.AddSemantic(field("action"), Cat("unknown action (", static_cast<int>(action), ")"));
  }

  if (action == v1::REDIRECT) {
    if (!rule.has_redirect() || rule.redirect().vm().empty()) {
      errors.AddSemantic(field("redirect.vm"),
                         "a redirect needs a target: redirect: { vm: VM-or-host, name: ... }");
    } else if (rule.redirect().vm() == "*" || !CheckVmSelector(rule.redirect().vm()).empty()) {
      errors.AddSemantic(field("redirect.vm"),
                         Cat(Quote(rule.redirect().vm()), " is not a VM name or \"host\""));
    }
    if (rule.has_redirect() && !rule.redirect().name().empty()) {
      for (v1::InteractionKind kind : kinds) {
        if (std::string error = CheckRedirectName(kind, rule.redirect().name()); !error.empty()) {
          errors.AddSemantic(field("redirect.name"), error);
          break;
        }
      }
    }
  } else if (rule.has_redirect()) {
    errors.AddSemantic(field("redirect"),
                       Cat("`redirect` is only for action redirect, not ", ActionName(action)));
  }

  if (action == v1::ASK) {
    if (rule.has_ask()) {
      const v1::AskParams& ask = rule.ask();
      if (std::string e = CheckDuration(ask.ttl(), false); !e.empty()) {
        errors.AddSemantic(field("ask.ttl"), e);
      }
      if (std::string e = CheckDuration(ask.offline_ttl(), false); !e.empty()) {
        errors.AddSemantic(field("ask.offline_ttl"), e);
      }
      if (ask.has_timeout()) {
        if (std::string e = CheckDuration(ask.timeout(), true); !e.empty()) {
          errors.AddSemantic(field("ask.timeout"), e);
        }
      }
      if (ask.fail_mode() != v1::FAIL_MODE_UNSPECIFIED && ask.fail_mode() != v1::FAIL_CLOSED &&
          ask.fail_mode() != v1::FAIL_OPEN) {
        errors.AddSemantic(field("ask.fail"),
                           Cat("unknown fail mode (", static_cast<int>(ask.fail_mode()), ")"));
      }
    }
  } else if (rule.has_ask()) {
    errors.AddSemantic(field("ask"), Cat("`ask` is only for action ask, not ", ActionName(action)));
  }

  // kind-specific modifiers
  if (rule.writable()) {
    for (v1::InteractionKind kind : kinds) {
      if (kind != v1::NAME_TRANSFER) {
        errors.AddSemantic(field("writable"),
                           Cat("`writable` is only for kind name-transfer, not ", KindName(kind)));
        break;
      }
    }
  }
  if (!rule.env().empty()) {
    for (v1::InteractionKind kind : kinds) {
      if (kind != v1::INVOKE) {
        errors.AddSemantic(field("env"),
                           Cat("`env` is only for kind invoke, not ", KindName(kind)));
        break;
      }
    }
    for (int i = 0; i < rule.env_size(); ++i) {
      if (std::string e = CheckEnvName(rule.env(i)); !e.empty()) {
        errors.AddSemantic(Cat(at, ".env[", i, "]"), e);
      }
    }
  }
}

}  // namespace

void CheckPolicy(const v1::Policy& policy, ErrorList& errors) {
  if (policy.name().empty()) {
    errors.AddSemantic("name", "a policy needs a name");
  } else if (!IsValidPolicyName(policy.name())) {
    errors.AddSemantic("name", Cat(Quote(policy.name()),
                                   " is not a valid policy name ([a-z0-9][a-z0-9._-]*, at most ",
                                   kMaxNameLength, " characters)"));
  }
  if (policy.mode() != v1::POLICY_MODE_UNSPECIFIED && policy.mode() != v1::ENFORCE &&
      policy.mode() != v1::MONITOR) {
    errors.AddSemantic("mode", Cat("unknown mode (", static_cast<int>(policy.mode()), ")"));
  }
  for (int i = 0; i < policy.hosts_size(); ++i) {
    if (std::string error = CheckHostPattern(policy.hosts(i)); !error.empty()) {
      errors.AddSemantic(Cat("hosts[", i, "]"), error);
    }
  }
  if (policy.rules().empty()) {
    errors.AddSemantic("rules", "a policy needs at least one rule");
  }
  absl::flat_hash_map<std::string, int> first_by_name;
  for (int i = 0; i < policy.rules_size(); ++i) {
    const v1::Rule& rule = policy.rules(i);
    std::string at = Cat("rules[", i, "]");
    CheckRule(rule, at, errors);
    if (rule.name().empty()) continue;
    auto [it, inserted] = first_by_name.emplace(rule.name(), i);
    if (!inserted) {
      std::string first = Cat("rules[", it->second, "]");
      SourcePos pos = errors.Locate(first);
      errors.AddSemantic(Cat(at, ".name"),
                         Cat("duplicate rule name ", Quote(rule.name()), " (first used by ", first,
                             pos.line > 0 ? Cat(" at line ", pos.line) : std::string(), ")"));
    }
  }
}

}  // namespace internal

using internal::Append;
using internal::Cat;

// ---------------------------------------------------------------------------------------------
// parser.h

std::vector<v1::ValidationError> ValidatePolicy(const v1::Policy& policy) {
  std::string file;
  for (const v1::Rule& rule : policy.rules()) {
    if (!rule.location().file().empty()) {
      file = rule.location().file();
      break;
    }
  }
  internal::ErrorList errors(file);
  for (int i = 0; i < policy.rules_size(); ++i) {
    const v1::SourceLocation& loc = policy.rules(i).location();
    errors.SetPosition(Cat("rules[", i, "]"), {loc.line(), loc.column()});
  }
  internal::CheckPolicy(policy, errors);
  return errors.Take();
}

std::string FormatError(const v1::ValidationError& error) {
  std::string out = error.file();
  if (error.line() > 0) {
    Append(&out, out.empty() ? "" : ":", error.line(), ":", error.column());
  }
  if (!error.field().empty()) Append(&out, out.empty() ? "" : ": ", error.field());
  Append(&out, out.empty() ? "" : ": ", error.message());
  return out;
}

absl::Status ErrorsToStatus(const std::vector<v1::ValidationError>& errors) {
  if (errors.empty()) return absl::OkStatus();
  std::string message;
  for (const v1::ValidationError& error : errors) {
    if (!message.empty()) message.push_back('\n');
    message += FormatError(error);
  }
  return absl::InvalidArgumentError(message);
}

}  // namespace shuttle::policy
