#include "cli/commands.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <utility>

#include <grpcpp/support/sync_stream.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "cli/client.h"
#include "cli/interrupt.h"
#include "cli/local_agent.h"
#include "cli/output.h"
#include "common/status_macros.h"
#include "policy/parser.h"

namespace shuttle::cli {
namespace {

using Pairs = std::vector<std::pair<std::string, std::string>>;

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
  }
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
  }
  return content.str();
}

// One unary call with the --timeout deadline; a failure becomes the one-line reason.
template <typename Stub, typename Request, typename Response>
absl::Status Call(const ControllerClient& client, Stub& stub,
                  grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&, Response*),
                  const Request& request, Response* response) {
  std::unique_ptr<grpc::ClientContext> ctx = client.NewContext();
  grpc::Status status = (stub.*method)(ctx.get(), request, response);
  return client.CallError(status);
}

absl::Status PrintJson(const google::protobuf::Message& message, std::ostream& out,
                       bool compact = false) {
  SHUTTLE_ASSIGN_OR_RETURN(std::string json, ToJson(message, compact));
  out << json;
  return absl::OkStatus();
}

bool Json(const Invocation& inv) { return inv.global.output == OutputFormat::kJson; }

std::string Str(uint64_t n) { return absl::StrCat(n); }

std::string RuleRef(absl::string_view policy, absl::string_view rule) {
  if (policy.empty() && rule.empty()) return "";
  return absl::StrCat(policy, "/", rule);
}

std::string Location(const v1::SourceLocation& loc) {
  if (loc.file().empty() && loc.line() == 0) return "";
  return absl::StrCat(loc.file(), ":", loc.line(), ":", loc.column());
}

// "file:line:col: field: message", with the local file name when the controller left it out.
std::string ErrorLine(v1::ValidationError error, const std::string& filename) {
  if (error.file().empty()) error.set_file(filename);
  return policy::FormatError(error);
}

std::string Plural(size_t n, absl::string_view noun) {
  return absl::StrCat(n, " ", noun, n == 1 ? "" : "s");
}

// ----- policy -------------------------------------------------------------------------------

absl::Status PolicyApply(const Invocation& inv, ControllerClient& client, std::ostream& out) {
  const std::string file = inv.Get("file");
  SHUTTLE_ASSIGN_OR_RETURN(std::string source, ReadFile(file));
  v1::ApplyRequest request;
  request.set_source(std::move(source));
  request.set_filename(file);
  v1::ApplyResponse response;
  std::unique_ptr<grpc::ClientContext> ctx = client.NewContext();
  grpc::Status status = client.policy().Apply(ctx.get(), request, &response);
  if (status.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
    // The controller lists every validation error, one per line (policy.proto).
    const std::string message = status.error_message();
    std::vector<absl::string_view> errors = absl::StrSplit(message, '\n', absl::SkipWhitespace());
    if (errors.size() > 1 && !Json(inv)) {
      for (absl::string_view line : errors) out << line << "\n";
      return absl::InvalidArgumentError(absl::StrCat("INVALID_ARGUMENT: ", file, ": ",
                                                     Plural(errors.size(), "error"),
                                                     " (listed above); nothing was applied"));
    }
  }
  SHUTTLE_RETURN_IF_ERROR(client.CallError(status));
  if (Json(inv)) return PrintJson(response, out);
  const v1::PolicyRevision& rev = response.revision();
  if (response.unchanged()) {
    out << "policy " << rev.name() << " unchanged: revision " << rev.revision()
        << " already has this source (fleet version " << rev.fleet_version() << ")\n";
  } else {
    out << "applied policy " << rev.name() << ": revision " << rev.revision() << ", fleet version "
        << rev.fleet_version() << "\n";
  }
  return absl::OkStatus();
}

absl::Status PolicyValidate(const Invocation& inv, ControllerClient& client, std::ostream& out) {
  const std::string file = inv.Get("file");
  SHUTTLE_ASSIGN_OR_RETURN(std::string source, ReadFile(file));
  v1::ValidateRequest request;
  request.set_source(std::move(source));
  request.set_filename(file);
  v1::ValidateResponse response;
  SHUTTLE_RETURN_IF_ERROR(
      Call(client, client.policy(), &v1::PolicyService::Stub::Validate, request, &response));
  if (Json(inv)) {
    SHUTTLE_RETURN_IF_ERROR(PrintJson(response, out));
  } else if (response.valid()) {
    out << file << ": valid (policy " << response.policy().name() << ", "
        << Plural(static_cast<size_t>(response.policy().rules_size()), "rule") << ")\n";
  } else {
    for (const v1::ValidationError& error : response.errors()) {
      out << ErrorLine(error, file) << "\n";
    }
  }
  if (!response.valid()) {
    return absl::InvalidArgumentError(absl::StrCat(
        file, ": invalid, ", Plural(static_cast<size_t>(response.errors_size()), "error")));
  }
  return absl::OkStatus();
}

absl::Status PolicyGet(const Invocation& inv, ControllerClient& client, std::ostream& out) {
  v1::GetPolicyRequest request;
  request.set_name(inv.args[0]);
  request.set_revision(inv.GetUint("revision").value_or(0));
  v1::GetPolicyResponse response;
  SHUTTLE_RETURN_IF_ERROR(
      Call(client, client.policy(), &v1::PolicyService::Stub::Get, request, &response));
  if (Json(inv)) return PrintJson(response, out);
  const v1::PolicyRevision& rev = response.revision();
  if (rev.deleted()) {
    out << "# policy " << rev.name() << " revision " << rev.revision() << " is its deletion ("
        << rev.change() << " by " << rev.author() << " at " << FormatTimestamp(rev.created())
        << ")\n";
    return absl::OkStatus();
  }
  out << rev.source();
  if (!rev.source().empty() && rev.source().back() != '\n') out << "\n";
  return absl::OkStatus();
}

absl::Status PolicyList(const Invocation& inv, ControllerClient& client, std::ostream& out) {
  v1::ListPoliciesResponse response;
  SHUTTLE_RETURN_IF_ERROR(Call(client, client.policy(), &v1::PolicyService::Stub::List,
                               v1::ListPoliciesRequest(), &response));
  if (Json(inv)) return PrintJson(response, out);
  Table table({"NAME", "REVISION", "MODE", "RULES", "HOSTS", "UPDATED", "AUTHOR"});
  for (const v1::PolicyRevision& rev : response.policies()) {
    std::string hosts = absl::StrJoin(rev.policy().hosts(), ",");
    table.AddRow({rev.name(), Str(rev.revision()),
                  std::string(policy::PolicyModeName(rev.policy().mode())),
                  Str(static_cast<uint64_t>(rev.policy().rules_size())),
                  hosts.empty() ? "*" : hosts, FormatTimestamp(rev.created()), rev.author()});
  }
  out << table.Render() << "fleet version: " << response.fleet_version() << "\n";
  return absl::OkStatus();
}

absl::Status PolicyRemove(const Invocation& inv, ControllerClient& client, std::ostream& out) {
  v1::DeletePolicyRequest request;
  request.set_name(inv.args[0]);
  v1::DeletePolicyResponse response;
  SHUTTLE_RETURN_IF_ERROR(
      Call(client, client.policy(), &v1::PolicyService::Stub::Delete, request, &response));
  if (Json(inv)) return PrintJson(response, out);
  out << "deleted policy " << response.revision().name() << ": revision "
      << response.revision().revision() << ", fleet version " << response.revision().fleet_version()
      << "\n";
  return absl::OkStatus();
}

absl::Status PolicyHistory(const Invocation& inv, ControllerClient& client, std::ostream& out) {
  v1::PolicyHistoryRequest request;
  request.set_name(inv.args[0]);
  v1::PolicyHistoryResponse response;
  SHUTTLE_RETURN_IF_ERROR(
      Call(client, client.policy(), &v1::PolicyService::Stub::History, request, &response));
  if (Json(inv)) return PrintJson(response, out);
  Table table({"REVISION", "FLEET-VERSION", "CHANGE", "RULES", "CREATED", "AUTHOR"});
  for (const v1::PolicyRevision& rev : response.revisions()) {
    table.AddRow({Str(rev.revision()), Str(rev.fleet_version()), rev.change(),
                  rev.deleted() ? "" : Str(static_cast<uint64_t>(rev.policy().rules_size())),
                  FormatTimestamp(rev.created()), rev.author()});
  }
  out << table.Render();
  return absl::OkStatus();
}

absl::Status PolicyRollback(const Invocation& inv, ControllerClient& client, std::ostream& out) {
  v1::RollbackRequest request;
  request.set_name(inv.args[0]);
  request.set_revision(*inv.GetUint("to"));
  v1::RollbackResponse response;
  SHUTTLE_RETURN_IF_ERROR(
      Call(client, client.policy(), &v1::PolicyService::Stub::Rollback, request, &response));
  if (Json(inv)) return PrintJson(response, out);
  out << "rolled back policy " << response.revision().name() << " to revision "
      << request.revision() << ": now revision " << response.revision().revision()
      << ", fleet version " << response.revision().fleet_version() << "\n";
  return absl::OkStatus();
}

// ----- explain ------------------------------------------------------------------------------

absl::Status Explain(const Invocation& inv, ControllerClient& client, std::ostream& out) {
  v1::ExplainRequest request;
  v1::Interaction& interaction = *request.mutable_interaction();
  interaction.set_subject_vm(inv.Get("vm"));
  interaction.set_program(inv.Get("program"));
  interaction.set_uid(static_cast<uint32_t>(inv.GetUint("uid").value_or(0)));
  interaction.set_kind(*policy::ParseKindName(inv.Get("kind")));
  interaction.set_object_name(inv.Get("object"));
  interaction.set_object_vm(inv.Get("object-vm"));
  interaction.set_host_id(inv.Get("host"));
  request.set_host_id(inv.Get("host"));
  if (inv.Has("file")) {
    SHUTTLE_ASSIGN_OR_RETURN(std::string candidate, ReadFile(inv.Get("file")));
    request.set_candidate_source(std::move(candidate));
  }
  v1::ExplainResponse response;
  SHUTTLE_RETURN_IF_ERROR(
      Call(client, client.policy(), &v1::PolicyService::Stub::Explain, request, &response));
  if (Json(inv)) return PrintJson(response, out);

  const v1::Decision& decision = response.decision();
  std::string decided_by = "default (no rule matched)";
  if (!decision.rule().empty()) {
    decided_by = RuleRef(decision.policy(), decision.rule());
    if (response.has_winner()) {
      std::string where = Location(response.winner().location());
      if (!where.empty()) absl::StrAppend(&decided_by, " (", where, ")");
    }
  }
  Pairs pairs = {
      {"verdict", std::string(policy::VerdictName(decision.verdict()))},
      {"scope", std::string(policy::ScopeName(decision.scope()))},
      {"decided by", decided_by},
      {"enforced", decision.enforced() ? "yes" : "no (monitor mode or audit-only rule)"},
  };
  if (decision.verdict() == v1::VERDICT_REDIRECT) {
    pairs.emplace_back("redirect to",
                       absl::StrCat("vm ", decision.redirect().vm(),
                                    decision.redirect().name().empty()
                                        ? ""
                                        : absl::StrCat(", name ", decision.redirect().name())));
  }
  if (!decision.reason().empty()) pairs.emplace_back("reason", decision.reason());
  pairs.emplace_back("policy version", Str(decision.policy_version()));
  out << KeyValues(pairs);
  if (response.losers().empty()) {
    out << "losing rules: none\n";
    return absl::OkStatus();
  }
  Table losers({"POLICY", "RULE", "ACTION", "WHY"});
  for (const v1::LosingRule& loser : response.losers()) {
    losers.AddRow({loser.policy(), loser.rule(), std::string(policy::ActionName(loser.action())),
                   loser.why()});
  }
  out << "losing rules:\n" << losers.Render();
  return absl::OkStatus();
}

// ----- fleet and audit -----------------------------------------------------------------------

std::string NackText(const v1::HostStatus& host) {
  if (host.last_nack_error().empty() && host.last_nack_version() == 0) return "";
  // Compiler errors span lines; a table cell can't.
  return absl::StrCat("v", host.last_nack_version(), " ", FormatTimestamp(host.last_nack_time()),
                      ": ", OneLine(host.last_nack_error()));
}

std::string VmNames(const v1::HostStatus& host) {
  std::vector<std::string> names;
  for (const v1::VmInfo& vm : host.vms()) names.push_back(vm.name());
  return absl::StrJoin(names, ",");
}

absl::Status Hosts(const Invocation& inv, ControllerClient& client, std::ostream& out) {
  if (!inv.args.empty()) {
    v1::GetHostRequest request;
    request.set_host_id(inv.args[0]);
    v1::GetHostResponse response;
    SHUTTLE_RETURN_IF_ERROR(
        Call(client, client.fleet(), &v1::FleetService::Stub::GetHost, request, &response));
    if (Json(inv)) return PrintJson(response, out);
    const v1::HostStatus& host = response.host();
    out << KeyValues({{"host", host.host_id()},
                      {"connected", host.connected() ? "yes" : "no"},
                      {"last seen", FormatTimestamp(host.last_seen())},
                      {"policy version", Str(host.policy_version())},
                      {"fleet version", Str(host.fleet_version())},
                      {"vms", VmNames(host)},
                      {"last nack", NackText(host)}});
    return absl::OkStatus();
  }
  v1::ListHostsResponse response;
  SHUTTLE_RETURN_IF_ERROR(Call(client, client.fleet(), &v1::FleetService::Stub::ListHosts,
                               v1::ListHostsRequest(), &response));
  if (Json(inv)) return PrintJson(response, out);
  Table table(
      {"HOST", "CONNECTED", "POLICY-VERSION", "FLEET-VERSION", "VMS", "LAST-SEEN", "LAST-NACK"});
  for (const v1::HostStatus& host : response.hosts()) {
    table.AddRow({host.host_id(), host.connected() ? "yes" : "no", Str(host.policy_version()),
                  Str(host.fleet_version()), VmNames(host), FormatTimestamp(host.last_seen()),
                  NackText(host)});
  }
  out << table.Render();
  return absl::OkStatus();
}

// "db:/run/db.sock"; just the name when the object's VM is unknown.
std::string ObjectRef(absl::string_view vm, absl::string_view name) {
  return vm.empty() ? std::string(name) : absl::StrCat(vm, ":", name);
}

std::vector<std::string> AuditRow(const v1::AuditRecord& record) {
  const v1::Interaction& i = record.interaction();
  const v1::Decision& d = record.decision();
  return {FormatTimestamp(record.time()),
          record.host_id(),
          i.subject_vm(),
          i.pid() == 0 ? "" : Str(i.pid()),
          i.program(),
          std::string(policy::KindName(i.kind())),
          ObjectRef(i.object_vm(), i.object_name()),
          std::string(policy::VerdictName(d.verdict())),
          d.enforced() ? "yes" : "no",
          RuleRef(d.policy(), d.rule()),
          d.policy_version() == 0 ? "" : Str(d.policy_version()),
          record.has_latency() ? FormatDuration(record.latency()) : ""};
}

const std::vector<std::string>& AuditHeaders() {
  static const auto* const kHeaders =
      new std::vector<std::string>{"TIME",   "HOST",    "VM",       "PID",  "PROGRAM", "KIND",
                                   "OBJECT", "VERDICT", "ENFORCED", "RULE", "VERSION", "LATENCY"};
  return *kHeaders;
}

google::protobuf::Timestamp ToTimestamp(absl::Time t) {
  google::protobuf::Timestamp ts;
  const int64_t micros = absl::ToUnixMicros(t);
  ts.set_seconds(micros / 1'000'000 - (micros % 1'000'000 < 0 ? 1 : 0));
  ts.set_nanos(static_cast<int32_t>((micros - ts.seconds() * 1'000'000) * 1000));
  return ts;
}

// Prints records as the controller stores them until the stream ends or the user interrupts
// (which is success). A stream can't be aligned in advance: one record per line, flushed.
absl::Status FollowAudit(const Invocation& inv, ControllerClient& client,
                         const v1::AuditFilter& filter, std::ostream& out) {
  v1::FollowAuditRequest request;
  *request.mutable_filter() = filter;
  std::unique_ptr<grpc::ClientContext> ctx = client.NewContext(/*streaming=*/true);
  // Before the call starts, so an interrupt at any point ends it cleanly.
  CancelOnInterrupt interrupt(ctx.get());
  std::unique_ptr<grpc::ClientReader<v1::AuditRecord>> reader =
      client.audit().Follow(ctx.get(), request);
  if (!Json(inv)) out << absl::StrJoin(AuditHeaders(), "  ") << "\n" << std::flush;
  v1::AuditRecord record;
  while (reader->Read(&record)) {
    if (Json(inv)) {
      SHUTTLE_RETURN_IF_ERROR(PrintJson(record, out, /*compact=*/true));
    } else {
      std::vector<std::string> cells = AuditRow(record);
      for (std::string& cell : cells) {
        if (cell.empty()) cell = "-";
      }
      out << absl::StrJoin(cells, "  ") << "\n";
    }
    out.flush();
  }
  grpc::Status status = reader->Finish();
  if (interrupt.interrupted()) return absl::OkStatus();
  return client.CallError(status);
}

absl::Status Audit(const Invocation& inv, ControllerClient& client, std::ostream& out) {
  v1::AuditFilter filter;
  filter.set_host_id(inv.Get("host"));
  filter.set_vm(inv.Get("vm"));
  if (inv.Has("since")) {
    SHUTTLE_ASSIGN_OR_RETURN(absl::Time since, ParseSince(inv.Get("since"), absl::Now()));
    *filter.mutable_since() = ToTimestamp(since);
  }
  if (inv.Has("verdict")) filter.set_verdict(*policy::ParseVerdictName(inv.Get("verdict")));
  if (inv.Has("kind")) filter.set_kind(*policy::ParseKindName(inv.Get("kind")));
  if (inv.Has("follow")) return FollowAudit(inv, client, filter, out);

  v1::QueryAuditRequest request;
  *request.mutable_filter() = filter;
  request.set_limit(static_cast<uint32_t>(inv.GetUint("limit").value_or(100)));
  v1::QueryAuditResponse response;
  SHUTTLE_RETURN_IF_ERROR(
      Call(client, client.audit(), &v1::AuditService::Stub::Query, request, &response));
  if (Json(inv)) return PrintJson(response, out);
  Table table(AuditHeaders());
  for (const v1::AuditRecord& record : response.records()) table.AddRow(AuditRow(record));
  out << table.Render();
  if (!response.next_page_token().empty()) {
    out << "(more records: narrow the query with --since or raise --limit)\n";
  }
  return absl::OkStatus();
}

absl::Status TokenCreate(const Invocation& inv, ControllerClient& client, std::ostream& out) {
  v1::CreateTokenRequest request;
  if (std::optional<absl::Duration> ttl = inv.GetDuration("ttl"); ttl.has_value()) {
    request.mutable_ttl()->set_seconds(absl::ToInt64Seconds(*ttl));
  }
  request.set_host_id(inv.Get("host"));
  v1::CreateTokenResponse response;
  SHUTTLE_RETURN_IF_ERROR(
      Call(client, client.fleet(), &v1::FleetService::Stub::CreateToken, request, &response));
  if (Json(inv)) return PrintJson(response, out);
  out << KeyValues({{"token", response.token()},
                    {"expires", FormatTimestamp(response.expires())},
                    {"host", request.host_id().empty() ? "any" : request.host_id()}});
  return absl::OkStatus();
}

// ----- standing answers to `ask` ----------------------------------------------------------------

std::string AnswerTtl(const v1::StandingAnswer& a) {
  return a.has_ttl() ? FormatDuration(a.ttl()) : "default";
}

std::string AnswerExpiry(const v1::StandingAnswer& a) {
  if (!a.has_expires()) return "never";
  const bool past = a.expires().seconds() <= absl::ToUnixSeconds(absl::Now());
  return absl::StrCat(FormatTimestamp(a.expires()), past ? " (expired)" : "");
}

absl::Status AnswerSet(const Invocation& inv, ControllerClient& client, std::ostream& out) {
  v1::PutAnswerRequest request;
  v1::StandingAnswer& a = *request.mutable_answer();
  a.set_id(inv.Get("id"));
  a.set_subject_vm(inv.Get("vm"));
  a.set_kind(*policy::ParseKindName(inv.Get("kind")));
  a.set_object_vm(inv.Get("object-vm"));
  a.set_object(inv.Get("object"));
  const v1::Verdict verdict = *policy::ParseVerdictName(inv.Get("verdict"));
  if (verdict != v1::VERDICT_ALLOW && verdict != v1::VERDICT_DENY) {
    return absl::InvalidArgumentError(absl::StrCat("--verdict must be allow or deny, not ",
                                                   inv.Get("verdict"),
                                                   " (a standing answer can't redirect)"));
  }
  a.set_verdict(verdict);
  if (std::optional<absl::Duration> ttl = inv.GetDuration("ttl"); ttl.has_value()) {
    a.mutable_ttl()->set_seconds(absl::ToInt64Seconds(*ttl));
    a.mutable_ttl()->set_nanos(
        static_cast<int32_t>(absl::ToInt64Nanoseconds(*ttl - absl::Seconds(a.ttl().seconds()))));
  }
  if (inv.Has("expires")) {
    SHUTTLE_ASSIGN_OR_RETURN(absl::Time expires, ParseUntil(inv.Get("expires"), absl::Now()));
    *a.mutable_expires() = ToTimestamp(expires);
  }
  a.set_note(inv.Get("note"));
  v1::PutAnswerResponse response;
  SHUTTLE_RETURN_IF_ERROR(
      Call(client, client.answers(), &v1::AnswerService::Stub::Put, request, &response));
  if (Json(inv)) return PrintJson(response, out);
  const v1::StandingAnswer& stored = response.answer();
  out << (response.replaced() ? "replaced" : "added") << " answer " << stored.id() << ": "
      << stored.subject_vm() << " " << policy::KindName(stored.kind()) << " "
      << ObjectRef(stored.object_vm(), stored.object()) << " -> "
      << policy::VerdictName(stored.verdict()) << " (ttl " << AnswerTtl(stored) << ", expires "
      << AnswerExpiry(stored) << ")\n";
  return absl::OkStatus();
}

absl::Status AnswerList(const Invocation& inv, ControllerClient& client, std::ostream& out) {
  v1::ListAnswersResponse response;
  SHUTTLE_RETURN_IF_ERROR(Call(client, client.answers(), &v1::AnswerService::Stub::List,
                               v1::ListAnswersRequest(), &response));
  if (Json(inv)) return PrintJson(response, out);
  Table table(
      {"ID", "VM", "KIND", "OBJECT", "VERDICT", "TTL", "EXPIRES", "AUTHOR", "CREATED", "NOTE"});
  for (const v1::StandingAnswer& a : response.answers()) {
    table.AddRow({a.id(), a.subject_vm(), std::string(policy::KindName(a.kind())),
                  ObjectRef(a.object_vm(), a.object()),
                  std::string(policy::VerdictName(a.verdict())), AnswerTtl(a), AnswerExpiry(a),
                  a.author(), FormatTimestamp(a.created()), OneLine(a.note())});
  }
  out << table.Render();
  return absl::OkStatus();
}

absl::Status AnswerRemove(const Invocation& inv, ControllerClient& client, std::ostream& out) {
  v1::DeleteAnswerRequest request;
  request.set_id(inv.args[0]);
  v1::DeleteAnswerResponse response;
  SHUTTLE_RETURN_IF_ERROR(
      Call(client, client.answers(), &v1::AnswerService::Stub::Delete, request, &response));
  if (Json(inv)) return PrintJson(response, out);
  out << "removed answer " << response.answer().id() << "\n";
  return absl::OkStatus();
}

// ----- local agent (a later issue) ------------------------------------------------------------

using RemoteHandler = absl::Status (*)(const Invocation&, ControllerClient&, std::ostream&);

struct Verb {
  absl::string_view name;
  RemoteHandler remote;  // Null for verbs that do not talk to the controller.
  absl::StatusOr<int> (*local)(const Invocation&, std::ostream&);  // Returns the exit status.
};

constexpr Verb kVerbs[] = {
    {"policy apply", PolicyApply, nullptr},
    {"policy validate", PolicyValidate, nullptr},
    {"policy get", PolicyGet, nullptr},
    {"policy ls", PolicyList, nullptr},
    {"policy rm", PolicyRemove, nullptr},
    {"policy history", PolicyHistory, nullptr},
    {"policy rollback", PolicyRollback, nullptr},
    {"explain", Explain, nullptr},
    {"hosts", Hosts, nullptr},
    {"audit", Audit, nullptr},
    {"answer set", AnswerSet, nullptr},
    {"answer ls", AnswerList, nullptr},
    {"answer rm", AnswerRemove, nullptr},
    {"token create", TokenCreate, nullptr},
    {"vm create", nullptr, RunLocalAgentVerb},
    {"vm ls", nullptr, RunLocalAgentVerb},
    {"vm rm", nullptr, RunLocalAgentVerb},
    {"run", nullptr, RunLocalAgentVerb},
    {"service add", nullptr, RunLocalAgentVerb},
    {"service ls", nullptr, RunLocalAgentVerb},
    {"service rm", nullptr, RunLocalAgentVerb},
};

}  // namespace

absl::StatusOr<int> RunCommand(const Invocation& invocation, std::ostream& out) {
  if (invocation.command == nullptr) return absl::InvalidArgumentError("missing command");
  for (const Verb& verb : kVerbs) {
    if (verb.name != invocation.command->name) continue;
    if (verb.local != nullptr) return verb.local(invocation, out);
    SHUTTLE_ASSIGN_OR_RETURN(std::unique_ptr<ControllerClient> client,
                             ControllerClient::Create(invocation.global));
    SHUTTLE_RETURN_IF_ERROR(verb.remote(invocation, *client, out));
    return kExitOk;
  }
  return absl::InternalError(absl::StrCat("no handler for ", invocation.command->name));
}

int RunCli(const std::vector<std::string>& args, const char* env_controller, std::ostream& out,
           std::ostream& err) {
  absl::StatusOr<Invocation> invocation = ParseArgs(args, env_controller);
  if (!invocation.ok()) {
    err << "shuttlectl: " << OneLine(invocation.status().message()) << "\n";
    return kExitUsage;
  }
  if (invocation->help) {
    out << HelpText(invocation->help_topic);
    return kExitOk;
  }
  absl::StatusOr<int> status = RunCommand(*invocation, out);
  out.flush();
  if (!status.ok()) {
    err << "shuttlectl: " << invocation->command->name << ": " << OneLine(status.status().message())
        << "\n";
    return kExitFailure;
  }
  return *status;
}

}  // namespace shuttle::cli
