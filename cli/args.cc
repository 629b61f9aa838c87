#include "cli/args.h"

#include <algorithm>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "policy/parser.h"

namespace shuttle::cli {
namespace {

constexpr absl::string_view kGroups[] = {"policy", "answer", "token", "vm", "service"};

// absl::string_view is not std::string_view in Debian's Abseil; this spells the copy plainly.
std::string ToString(absl::string_view s) { return std::string(s.data(), s.size()); }

bool IsGroup(absl::string_view word) {
  return std::find(std::begin(kGroups), std::end(kGroups), word) != std::end(kGroups);
}

std::string FlagLabel(const FlagSpec& flag) {
  std::string label = flag.short_name != 0
                          ? absl::StrCat("-", std::string(1, flag.short_name), ", --", flag.name)
                          : absl::StrCat("    --", flag.name);
  if (!flag.value_name.empty()) absl::StrAppend(&label, " ", flag.value_name);
  return label;
}

// "--to N" or "-f FILE": how a flag is named in error messages.
std::string FlagUse(const FlagSpec& flag) {
  std::string use = flag.short_name != 0 ? absl::StrCat("-", std::string(1, flag.short_name))
                                         : absl::StrCat("--", flag.name);
  if (!flag.value_name.empty()) absl::StrAppend(&use, " ", flag.value_name);
  return use;
}

std::string KindNames() {
  std::vector<std::string> names;
  const auto* descriptor = v1::InteractionKind_descriptor();
  for (int i = 0; i < descriptor->value_count(); ++i) {
    auto kind = static_cast<v1::InteractionKind>(descriptor->value(i)->number());
    if (kind == v1::INTERACTION_KIND_UNSPECIFIED) continue;
    names.emplace_back(policy::KindName(kind));
  }
  return absl::StrJoin(names, ", ");
}

absl::Status CheckValue(const FlagSpec& flag, absl::string_view value) {
  auto bad = [&](absl::string_view want) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag.name, ": '", value, "' is not ", want));
  };
  switch (flag.type) {
    case FlagType::kBool:
      if (value != "true" && value != "false") return bad("true or false");
      return absl::OkStatus();
    case FlagType::kString:
      if (value.empty()) return bad("a non-empty value");
      return absl::OkStatus();
    case FlagType::kUint: {
      uint64_t n = 0;
      if (value.empty() || value[0] == '-' || value[0] == '+' || !absl::SimpleAtoi(value, &n)) {
        return bad("a non-negative integer");
      }
      return absl::OkStatus();
    }
    case FlagType::kPositive: {
      uint64_t n = 0;
      if (value.empty() || value[0] == '-' || value[0] == '+' || !absl::SimpleAtoi(value, &n) ||
          n == 0) {
        return bad("a positive integer");
      }
      return absl::OkStatus();
    }
    case FlagType::kDuration:
      if (!ParseTimeout(value).ok()) return bad("a positive duration such as 10s or 1m30s");
      return absl::OkStatus();
    case FlagType::kOutput:
      if (value != "table" && value != "json") return bad("table or json");
      return absl::OkStatus();
    case FlagType::kKind:
      if (!policy::ParseKindName(std::string_view(value.data(), value.size())).has_value()) {
        return bad(absl::StrCat("an interaction kind (", KindNames(), ")"));
      }
      return absl::OkStatus();
    case FlagType::kVerdict:
      if (!policy::ParseVerdictName(std::string_view(value.data(), value.size())).has_value()) {
        return bad("allow, deny or redirect");
      }
      return absl::OkStatus();
    case FlagType::kSince:
      if (!ParseSince(value, absl::UnixEpoch()).ok()) {
        return bad("a duration back from now (90m) or an RFC 3339 time");
      }
      return absl::OkStatus();
    case FlagType::kUntil:
      if (!ParseUntil(value, absl::UnixEpoch()).ok()) {
        return bad("a duration from now (2h) or an RFC 3339 time");
      }
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

absl::Status ApplyGlobal(const FlagSpec& flag, const std::string& value, GlobalOptions& g) {
  const absl::string_view name = flag.name;
  if (name == "controller") {
    g.controller = value;
  } else if (name == "data-dir") {
    g.data_dir = value;
  } else if (name == "ca") {
    g.ca_path = value;
  } else if (name == "cert") {
    g.cert_path = value;
  } else if (name == "key") {
    g.key_path = value;
  } else if (name == "insecure") {
    g.insecure = value == "true";
  } else if (name == "no-client-cert") {
    g.no_client_cert = value == "true";
  } else if (name == "server-name") {
    g.server_name = value;
  } else if (name == "agent-socket") {
    g.agent_socket = value;
  } else if (name == "output") {
    g.output = value == "json" ? OutputFormat::kJson : OutputFormat::kTable;
  } else if (name == "timeout") {
    g.timeout = *ParseTimeout(value);
  }
  return absl::OkStatus();
}

const CommandSpec* FindCommand(absl::string_view name) {
  for (const CommandSpec& c : Commands()) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

std::string CommandUsage(const CommandSpec& c) {
  std::string line = absl::StrCat("shuttlectl ", c.name);
  if (!c.args.empty() && !c.passthrough) absl::StrAppend(&line, " ", c.args);
  for (absl::string_view name : c.flags) {
    const FlagSpec* flag = FindFlag(name);
    const bool required = std::find(c.required.begin(), c.required.end(), name) != c.required.end();
    absl::StrAppend(&line, " ", required ? "" : "[", FlagUse(*flag), required ? "" : "]");
  }
  if (c.passthrough) absl::StrAppend(&line, " ", c.args);
  return line;
}

void AppendFlagHelp(const std::vector<const FlagSpec*>& flags, std::string& out) {
  size_t width = 0;
  for (const FlagSpec* f : flags) width = std::max(width, FlagLabel(*f).size());
  for (const FlagSpec* f : flags) {
    std::string label = FlagLabel(*f);
    absl::StrAppend(&out, "  ", label, std::string(width - label.size() + 2, ' '), f->help, "\n");
  }
}

std::string GlobalFlagHelp() {
  std::vector<const FlagSpec*> globals;
  for (const FlagSpec& f : Flags()) {
    if (f.global) globals.push_back(&f);
  }
  std::string out = "Global flags (any command, anywhere on the line):\n";
  AppendFlagHelp(globals, out);
  return out;
}

std::string CommandList(absl::string_view group) {
  std::string out;
  size_t width = 0;
  for (const CommandSpec& c : Commands()) {
    if (group.empty() || absl::StartsWith(c.name, absl::StrCat(group, " "))) {
      width = std::max(width, c.name.size());
    }
  }
  for (const CommandSpec& c : Commands()) {
    if (group.empty() || absl::StartsWith(c.name, absl::StrCat(group, " "))) {
      absl::StrAppend(&out, "  ", c.name, std::string(width - c.name.size() + 2, ' '), c.summary,
                      "\n");
    }
  }
  return out;
}

std::string GroupSubcommands(absl::string_view group) {
  std::vector<std::string> subs;
  for (const CommandSpec& c : Commands()) {
    if (absl::StartsWith(c.name, absl::StrCat(group, " "))) {
      subs.emplace_back(c.name.substr(group.size() + 1));
    }
  }
  return absl::StrJoin(subs, ", ");
}

}  // namespace

std::string GlobalOptions::CaPath() const {
  return ca_path.empty() ? absl::StrCat(data_dir, "/pki/ca.pem") : ca_path;
}
std::string GlobalOptions::CertPath() const {
  return cert_path.empty() ? absl::StrCat(data_dir, "/pki/admin.pem") : cert_path;
}
std::string GlobalOptions::KeyPath() const {
  return key_path.empty() ? absl::StrCat(data_dir, "/pki/admin.key") : key_path;
}

const std::vector<FlagSpec>& Flags() {
  static const auto* const kFlags = new std::vector<FlagSpec>{
      // Global.
      {"controller", 0, FlagType::kString, "ADDR",
       "controller gRPC address (default $SHUTTLE_CONTROLLER, else 127.0.0.1:7443)", true},
      {"data-dir", 0, FlagType::kString, "DIR",
       "controller data dir whose pki/ has ca.pem, admin.pem, admin.key "
       "(default /var/lib/shuttle/controller)",
       true},
      {"ca", 0, FlagType::kString, "FILE", "CA certificate to verify the controller", true},
      {"cert", 0, FlagType::kString, "FILE", "client certificate (its OU is the role)", true},
      {"key", 0, FlagType::kString, "FILE", "client private key", true},
      {"insecure", 0, FlagType::kBool, "", "plaintext, for a controller run with --insecure", true},
      {"no-client-cert", 0, FlagType::kBool, "", "TLS without a client certificate", true},
      {"server-name", 0, FlagType::kString, "NAME",
       "TLS name to verify instead of the --controller host", true},
      {"output", 'o', FlagType::kOutput, "table|json",
       "output: tables for people (default) or protobuf JSON for automation", true},
      {"timeout", 0, FlagType::kDuration, "DURATION", "deadline of each call (default 10s)", true},
      {"help", 'h', FlagType::kBool, "", "show usage", true},
      {"agent-socket", 0, FlagType::kString, "PATH",
       "local agent socket for vm, run and service (default $SHUTTLE_AGENT_SOCKET, else "
       "/run/shuttle/agent.sock)",
       true},
      // Verbs.
      {"file", 'f', FlagType::kString, "FILE", "policy YAML file", false},
      {"revision", 0, FlagType::kPositive, "N", "a revision of the policy", false},
      {"to", 0, FlagType::kPositive, "N", "revision to make current again", false},
      {"vm", 0, FlagType::kString, "VM", "VM name", false},
      {"program", 0, FlagType::kString, "PATH", "absolute path of the subject's program", false},
      {"uid", 0, FlagType::kUint, "UID", "uid of the subject (default 0)", false},
      {"kind", 0, FlagType::kKind, "KIND", "interaction kind: unix-connect, tcp-connect, ...",
       false},
      {"object", 0, FlagType::kString, "NAME",
       "object: path, abstract name, IP:PORT, queue/segment name or program (answer set: a glob, "
       "each '*' matching anything)",
       false},
      {"object-vm", 0, FlagType::kString, "VM", "VM that owns the object, or host", false},
      {"host", 0, FlagType::kString, "HOST", "host id", false},
      {"follow", 0, FlagType::kBool, "", "keep printing records as they arrive", false},
      {"since", 0, FlagType::kSince, "T", "90m (back from now) or an RFC 3339 time", false},
      {"verdict", 0, FlagType::kVerdict, "V", "allow, deny or redirect (answer set: allow or deny)",
       false},
      {"limit", 0, FlagType::kPositive, "N", "at most N records (default 100)", false},
      {"ttl", 0, FlagType::kDuration, "DURATION",
       "token create: how long the token can enroll (default 1h); answer set: how long agents "
       "may cache the answer (default: the controller's --ask-default-ttl)",
       false},
      {"expires", 0, FlagType::kUntil, "T",
       "when the answer stops applying: 2h (from now) or an RFC 3339 time (default: never)", false},
      {"note", 0, FlagType::kString, "TEXT", "free text kept with the answer, e.g. a ticket",
       false},
      {"id", 0, FlagType::kString, "ID",
       "answer id to create or replace (default: the answer with the same VM, kind and objects, "
       "else a new id)",
       false},
      {"user", 0, FlagType::kString, "USER",
       "run as this user (name or uid; run: default yours; service add: default root)", false},
      {"name", 0, FlagType::kString, "NAME", "service name ([A-Za-z0-9._@-])", false},
      {"ready", 0, FlagType::kString, "ADDR",
       "where the service accepts when ready: unix:/PATH, abstract:NAME or tcp:127.0.0.1:PORT",
       false},
      {"start-timeout", 0, FlagType::kDuration, "DURATION",
       "how long the service may take to become ready (default 10s)", false},
      {"cwd", 0, FlagType::kString, "DIR", "working directory inside the VM (default /)", false},
  };
  return *kFlags;
}

const std::vector<CommandSpec>& Commands() {
  static const auto* const kCommands = new std::vector<CommandSpec>{
      {"policy apply",
       "",
       0,
       0,
       {"file"},
       {"file"},
       false,
       "validate and store a policy file as the policy's next revision",
       "Prints the new revision and fleet version. An invalid file is not stored: every error is\n"
       "printed as file:line:col: field: message and the exit status is 1."},
      {"policy validate",
       "",
       0,
       0,
       {"file"},
       {"file"},
       false,
       "check a policy file on the controller without storing it",
       "Prints every error as file:line:col: field: message; exit status 1 if there is any."},
      {"policy get",
       "NAME",
       1,
       1,
       {"revision"},
       {},
       false,
       "print a policy's YAML source (current revision unless --revision)",
       "With -o json, prints the stored revision: metadata, source and the parsed policy."},
      {"policy ls", "", 0, 0, {}, {}, false, "list the live policies and the fleet version", ""},
      {"policy rm",
       "NAME",
       1,
       1,
       {},
       {},
       false,
       "delete a policy (its history is kept; rollback brings it back)",
       ""},
      {"policy history",
       "NAME",
       1,
       1,
       {},
       {},
       false,
       "list every revision of a policy, oldest first",
       ""},
      {"policy rollback",
       "NAME",
       1,
       1,
       {"to"},
       {"to"},
       false,
       "make an old revision current again, as a new revision",
       ""},
      {"explain",
       "",
       0,
       0,
       {"vm", "kind", "object", "object-vm", "program", "uid", "file", "host"},
       {"vm", "kind", "object"},
       false,
       "what would be decided for an interaction, by which rule, and which rules lost",
       "--vm is the subject's VM (host for the host); --object-vm the VM that owns the object.\n"
       "With -f, the candidate file is evaluated instead of the stored policies (dry run);\n"
       "with --host, the policies that apply to that host id."},
      {"hosts",
       "[HOST]",
       0,
       1,
       {},
       {},
       false,
       "agents, the policy version each runs, and their last NACK",
       ""},
      {"audit",
       "",
       0,
       0,
       {"follow", "vm", "host", "since", "verdict", "kind", "limit"},
       {},
       false,
       "query the audit log of crossing decisions (--follow to stream)",
       "--vm matches the subject's or the object's VM. Records are listed oldest first, at most\n"
       "--limit (at most 10000). --follow prints records as the controller stores them until\n"
       "interrupted (Ctrl-C exits 0); with --since it first prints the stored ones from then."},
      {"answer set",
       "",
       0,
       0,
       {"vm", "kind", "object", "object-vm", "verdict", "ttl", "expires", "note", "id"},
       {"vm", "kind", "object", "verdict"},
       false,
       "answer `ask` rules centrally: allow or deny a VM's interactions with matching objects",
       "--vm is the subject's VM (or '*' for any), --object-vm the VM owning the object (default\n"
       "any). The most specific answer wins: an exact VM over '*', an exact object over a glob, a\n"
       "longer glob over a shorter one; deny wins a tie. An `ask` no answer matches is denied.\n"
       "Setting the same VM, kind and objects again replaces that answer."},
      {"answer ls", "", 0, 0, {}, {}, false, "list the standing answers to `ask`", ""},
      {"answer rm", "ID", 1, 1, {}, {}, false, "remove a standing answer", ""},
      {"token create",
       "",
       0,
       0,
       {"ttl", "host"},
       {},
       false,
       "create a single-use join token for a new agent (--host binds it to one host id)",
       ""},
      {"vm create", "NAME", 1, 1, {}, {}, false, "create a VM on the local agent", ""},
      {"vm ls", "", 0, 0, {}, {}, false, "list the VMs of the local agent", ""},
      {"vm rm", "NAME", 1, 1, {}, {}, false, "destroy a VM of the local agent", ""},
      {"run",
       "-- CMD [ARG...]",
       0,
       0,
       {"vm", "user"},
       {"vm"},
       true,
       "run a command in a VM of the local agent, with this terminal's stdio",
       ""},
      {"service add",
       "-- CMD [ARG...]",
       0,
       0,
       {"vm", "name", "ready", "user", "start-timeout", "cwd"},
       {"vm", "name", "ready"},
       true,
       "register a service that a `depend` rule lets other VMs start on demand",
       "When a brokered connect from another VM to the --ready address finds nothing listening\n"
       "and a depend rule allows it, the agent starts CMD in --vm (as --user, default root) and\n"
       "the connect completes once the service accepts there. CMD must stay in the foreground;\n"
       "its output goes to the agent's data dir (services/VM.NAME.log). Root only."},
      {"service ls",
       "",
       0,
       0,
       {},
       {},
       false,
       "list the registered services, their state and last exit",
       "VM shows '(missing)' after the service's VM when that VM does not exist."},
      {"service rm",
       "",
       0,
       0,
       {"vm", "name"},
       {"vm", "name"},
       false,
       "unregister a service (a running instance keeps running)",
       ""},
  };
  return *kCommands;
}

const FlagSpec* FindFlag(absl::string_view long_name) {
  for (const FlagSpec& f : Flags()) {
    if (f.name == long_name) return &f;
  }
  return nullptr;
}

bool Invocation::Has(absl::string_view flag) const {
  return flags.find(ToString(flag)) != flags.end();
}

std::string Invocation::Get(absl::string_view flag, absl::string_view fallback) const {
  auto it = flags.find(ToString(flag));
  return it == flags.end() ? ToString(fallback) : it->second;
}

std::optional<uint64_t> Invocation::GetUint(absl::string_view flag) const {
  auto it = flags.find(ToString(flag));
  uint64_t n = 0;
  if (it == flags.end() || !absl::SimpleAtoi(it->second, &n)) return std::nullopt;
  return n;
}

std::optional<absl::Duration> Invocation::GetDuration(absl::string_view flag) const {
  auto it = flags.find(ToString(flag));
  if (it == flags.end()) return std::nullopt;
  absl::StatusOr<absl::Duration> d = ParseTimeout(it->second);
  if (!d.ok()) return std::nullopt;
  return *d;
}

absl::StatusOr<absl::Duration> ParseTimeout(absl::string_view text) {
  absl::Duration d;
  uint64_t seconds = 0;
  if (!text.empty() && absl::ascii_isdigit(text[0]) && absl::SimpleAtoi(text, &seconds)) {
    d = absl::Seconds(seconds);
  } else if (!absl::ParseDuration(text, &d)) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a duration"));
  }
  if (d <= absl::ZeroDuration() || d == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a positive duration"));
  }
  return d;
}

namespace {

// An RFC 3339 time, or `now` moved by a duration: back when `back`, ahead otherwise.
absl::StatusOr<absl::Time> TimeOrOffset(absl::string_view text, absl::Time now, bool back) {
  absl::Time t;
  std::string err;
  if (absl::ParseTime(absl::RFC3339_full, ToString(text), &t, &err)) return t;
  absl::StatusOr<absl::Duration> offset = ParseTimeout(text);
  if (!offset.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is neither a duration nor an RFC 3339 time"));
  }
  return back ? now - *offset : now + *offset;
}

}  // namespace

absl::StatusOr<absl::Time> ParseSince(absl::string_view text, absl::Time now) {
  return TimeOrOffset(text, now, /*back=*/true);
}

absl::StatusOr<absl::Time> ParseUntil(absl::string_view text, absl::Time now) {
  return TimeOrOffset(text, now, /*back=*/false);
}

absl::StatusOr<Invocation> ParseArgs(const std::vector<std::string>& argv,
                                     const char* env_controller) {
  Invocation inv;
  if (env_controller != nullptr && env_controller[0] != '\0') {
    inv.global.controller = env_controller;
  }

  // Pass 1: split flags (by the global table) from positionals, so flags may come anywhere.
  std::vector<std::pair<const FlagSpec*, std::string>> given;
  std::vector<std::string> words;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg == "--") {
      inv.passthrough.assign(argv.begin() + static_cast<std::ptrdiff_t>(i) + 1, argv.end());
      break;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      words.push_back(arg);
      continue;
    }
    const FlagSpec* flag = nullptr;
    std::optional<std::string> value;
    if (arg[1] == '-') {
      absl::string_view body = absl::string_view(arg).substr(2);
      size_t eq = body.find('=');
      if (eq != absl::string_view::npos) {
        value = ToString(body.substr(eq + 1));
        body = body.substr(0, eq);
      }
      flag = FindFlag(body);
    } else if (arg.size() == 2) {
      for (const FlagSpec& f : Flags()) {
        if (f.short_name == arg[1]) flag = &f;
      }
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", arg));
    }
    if (!value.has_value()) {
      if (flag->type == FlagType::kBool) {
        value = "true";
      } else if (i + 1 < argv.size()) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("flag ", arg, " needs a value (", flag->value_name, ")"));
      }
    }
    given.emplace_back(flag, *std::move(value));
  }

  // Help wins over everything else, whatever else is wrong with the line.
  bool help = false;
  for (const auto& [flag, value] : given) {
    if (flag->name == "help" && value != "false") help = true;
  }
  if (!words.empty() && words[0] == "help") {
    help = true;
    words.erase(words.begin());
  }

  // Pass 2: the verb is the longest command name that the leading words spell.
  const CommandSpec* command = nullptr;
  size_t verb_words = 0;
  if (!words.empty()) {
    if (IsGroup(words[0])) {
      if (words.size() >= 2) command = FindCommand(absl::StrCat(words[0], " ", words[1]));
      verb_words = 2;
    } else {
      command = FindCommand(words[0]);
      verb_words = 1;
    }
  }
  if (help) {
    inv.help = true;
    if (command != nullptr) {
      inv.command = command;
      inv.help_topic = ToString(command->name);
    } else if (!words.empty() && IsGroup(words[0])) {
      inv.help_topic = words[0];
    }
    return inv;
  }
  if (words.empty()) {
    return absl::InvalidArgumentError("missing command (see shuttlectl --help)");
  }
  if (command == nullptr) {
    if (IsGroup(words[0])) {
      if (words.size() < 2) {
        return absl::InvalidArgumentError(
            absl::StrCat(words[0], ": missing subcommand (", GroupSubcommands(words[0]), ")"));
      }
      return absl::InvalidArgumentError(absl::StrCat(words[0], ": unknown subcommand '", words[1],
                                                     "' (", GroupSubcommands(words[0]), ")"));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("unknown command '", words[0], "' (see shuttlectl --help)"));
  }
  inv.command = command;
  const std::string name(command->name);
  auto usage_error = [&](absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": ", what, " (see shuttlectl ", name, " --help)"));
  };

  // Pass 3: check every flag against the verb and its type.
  for (const auto& [flag, value] : given) {
    if (flag->name == "help") continue;
    if (!flag->global && std::find(command->flags.begin(), command->flags.end(), flag->name) ==
                             command->flags.end()) {
      return usage_error(absl::StrCat("unknown flag --", flag->name));
    }
    if (absl::Status s = CheckValue(*flag, value); !s.ok()) return usage_error(s.message());
    if (flag->global) {
      if (absl::Status s = ApplyGlobal(*flag, value, inv.global); !s.ok()) {
        return usage_error(s.message());
      }
    } else {
      inv.flags[ToString(flag->name)] = value;
    }
  }
  for (absl::string_view required : command->required) {
    if (!inv.Has(required)) {
      return usage_error(absl::StrCat("missing ", FlagUse(*FindFlag(required))));
    }
  }

  inv.args.assign(words.begin() + static_cast<std::ptrdiff_t>(verb_words), words.end());
  if (inv.args.size() < command->min_args) {
    return usage_error(absl::StrCat("missing ", command->args));
  }
  if (inv.args.size() > command->max_args) {
    return usage_error(absl::StrCat("unexpected argument '", inv.args[command->max_args], "'"));
  }
  if (command->passthrough && inv.passthrough.empty()) {
    return usage_error(absl::StrCat("missing ", command->args));
  }
  if (!command->passthrough && !inv.passthrough.empty()) {
    return usage_error("takes no arguments after --");
  }
  return inv;
}

std::string HelpText(absl::string_view topic) {
  if (const CommandSpec* c = FindCommand(topic); c != nullptr) {
    std::string out = absl::StrCat("usage: ", CommandUsage(*c), "\n\n", c->summary, "\n");
    if (!c->details.empty()) absl::StrAppend(&out, "\n", c->details, "\n");
    std::vector<const FlagSpec*> own;
    for (absl::string_view name : c->flags) own.push_back(FindFlag(name));
    if (!own.empty()) {
      absl::StrAppend(&out, "\nFlags:\n");
      AppendFlagHelp(own, out);
    }
    absl::StrAppend(&out, "\n", GlobalFlagHelp());
    return out;
  }
  if (IsGroup(topic)) {
    return absl::StrCat("usage: shuttlectl ", topic, " ", "COMMAND [flags]\n\nCommands:\n",
                        CommandList(topic), "\nRun 'shuttlectl ", topic,
                        " COMMAND --help' for a command's flags.\n\n", GlobalFlagHelp());
  }
  return absl::StrCat(
      "usage: shuttlectl COMMAND [flags]\n\n"
      "shuttlectl drives a Shuttle controller: policies, explain, hosts, audit, standing\n"
      "answers to `ask`, join tokens.\n"
      "It connects with mTLS using the controller's CA and admin certificate from --data-dir\n"
      "unless --ca/--cert/--key say otherwise.\n\nCommands:\n",
      CommandList(""),
      "\nRun 'shuttlectl COMMAND --help' for a command's flags.\n"
      "Exit status: 0 success, 1 failure (one line on stderr), 2 usage error.\n\n",
      GlobalFlagHelp());
}

}  // namespace shuttle::cli
