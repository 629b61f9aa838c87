#include "controller/registry/policy_registry.h"

#include <utility>

#include "common/logging.h"
#include "common/status_macros.h"
#include "policy/parser.h"

namespace shuttle::controller {
namespace {

std::string FilenameOrDefault(const std::string& filename) {
  return filename.empty() ? std::string("<request>") : filename;
}

// Only failures of the store itself count as store errors; NOT_FOUND, ABORTED (a revision
// conflict) and INVALID_ARGUMENT are answers about the caller's request.
bool IsStoreFault(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
      return false;
    default:
      return !status.ok();
  }
}

}  // namespace

PolicyRegistry::PolicyRegistry(Store& store, prometheus::Registry& metrics)
    : store_(store),
      store_errors_(prometheus::BuildCounter()
                        .Name("shuttle_controller_store_errors_total")
                        .Help("Store operations that failed inside the store, by operation")
                        .Register(metrics)),
      fleet_version_gauge_(prometheus::BuildGauge()
                               .Name("shuttle_controller_policy_version")
                               .Help("Current fleet policy version")
                               .Register(metrics)
                               .Add({})),
      policies_gauge_(prometheus::BuildGauge()
                          .Name("shuttle_controller_policies")
                          .Help("Number of live policies")
                          .Register(metrics)
                          .Add({})),
      changes_(prometheus::BuildCounter()
                   .Name("shuttle_controller_policy_changes_total")
                   .Help("Policy changes written, by change (apply, delete, rollback)")
                   .Register(metrics)) {}

absl::Status PolicyRegistry::StoreError(const char* op, absl::Status status) {
  if (IsStoreFault(status)) {
    store_errors_.Add({{"op", op}}).Increment();
    SHUTTLE_LOG(ERROR) << "store " << op << ": " << status;
  }
  return status;
}

absl::Status PolicyRegistry::Load() {
  absl::MutexLock write_lock(&write_mu_);
  return Refresh();
}

absl::Status PolicyRegistry::Refresh() {
  absl::StatusOr<std::vector<v1::PolicyRevision>> live = store_.ListPolicies();
  if (!live.ok()) return StoreError("list", live.status());
  absl::StatusOr<uint64_t> version = store_.FleetVersion();
  if (!version.ok()) return StoreError("version", version.status());

  auto snapshot = std::make_shared<FleetSnapshot>();
  snapshot->bundle.set_version(*version);
  for (const v1::PolicyRevision& revision : *live) {
    *snapshot->bundle.add_policies() = revision.policy();
  }
  absl::StatusOr<std::shared_ptr<const policy::CompiledPolicy>> compiled =
      policy::CompiledPolicy::Compile(snapshot->bundle);
  if (!compiled.ok()) {
    return absl::Status(compiled.status().code(), "stored policies do not compile: " +
                                                      std::string(compiled.status().message()));
  }
  snapshot->compiled = *std::move(compiled);

  std::shared_ptr<const FleetSnapshot> published = std::move(snapshot);
  std::vector<std::function<void(std::shared_ptr<const FleetSnapshot>)>> subscribers;
  {
    absl::MutexLock lock(&mu_);
    snapshot_ = published;
    subscribers = subscribers_;
  }
  fleet_version_gauge_.Set(static_cast<double>(published->bundle.version()));
  policies_gauge_.Set(static_cast<double>(published->bundle.policies_size()));
  for (const auto& fn : subscribers) fn(published);
  return absl::OkStatus();
}

std::shared_ptr<const FleetSnapshot> PolicyRegistry::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return snapshot_;
}

void PolicyRegistry::Subscribe(std::function<void(std::shared_ptr<const FleetSnapshot>)> fn) {
  absl::MutexLock lock(&mu_);
  subscribers_.push_back(std::move(fn));
}

absl::StatusOr<v1::ApplyResponse> PolicyRegistry::Apply(const v1::ApplyRequest& request,
                                                        const std::string& author) {
  policy::ParseResult parsed =
      policy::ParsePolicyYaml(request.source(), FilenameOrDefault(request.filename()));
  if (!parsed.errors.empty()) return policy::ErrorsToStatus(parsed.errors);

  PolicyWrite write;
  write.name = parsed.policy->name();
  write.source = request.source();
  write.policy = *std::move(parsed.policy);
  write.author = author;
  write.change = "apply";
  if (request.has_expected_revision()) write.expected_revision = request.expected_revision();

  absl::MutexLock write_lock(&write_mu_);
  bool unchanged = false;
  absl::StatusOr<v1::PolicyRevision> revision = store_.PutPolicy(write, &unchanged);
  if (!revision.ok()) return StoreError("put", revision.status());
  v1::ApplyResponse response;
  *response.mutable_revision() = *std::move(revision);
  response.set_unchanged(unchanged);
  if (!unchanged) {
    changes_.Add({{"change", "apply"}}).Increment();
    SHUTTLE_LOG(INFO) << "policy " << write.name << " revision " << response.revision().revision()
                      << " applied by " << author << "; fleet version "
                      << response.revision().fleet_version();
    SHUTTLE_RETURN_IF_ERROR(Refresh());
  }
  return response;
}

v1::ValidateResponse PolicyRegistry::Validate(const v1::ValidateRequest& request) const {
  policy::ParseResult parsed =
      policy::ParsePolicyYaml(request.source(), FilenameOrDefault(request.filename()));
  v1::ValidateResponse response;
  response.set_valid(parsed.errors.empty());
  for (v1::ValidationError& error : parsed.errors) *response.add_errors() = std::move(error);
  if (parsed.policy) *response.mutable_policy() = *std::move(parsed.policy);
  return response;
}

absl::StatusOr<v1::GetPolicyResponse> PolicyRegistry::Get(const v1::GetPolicyRequest& request) {
  if (request.name().empty()) return absl::InvalidArgumentError("name is required");
  absl::StatusOr<v1::PolicyRevision> revision =
      store_.GetPolicy(request.name(), request.revision());
  if (!revision.ok()) return StoreError("get", revision.status());
  v1::GetPolicyResponse response;
  *response.mutable_revision() = *std::move(revision);
  return response;
}

absl::StatusOr<v1::ListPoliciesResponse> PolicyRegistry::List() {
  absl::StatusOr<std::vector<v1::PolicyRevision>> live = store_.ListPolicies();
  if (!live.ok()) return StoreError("list", live.status());
  absl::StatusOr<uint64_t> version = store_.FleetVersion();
  if (!version.ok()) return StoreError("version", version.status());
  v1::ListPoliciesResponse response;
  for (v1::PolicyRevision& revision : *live) *response.add_policies() = std::move(revision);
  response.set_fleet_version(*version);
  return response;
}

absl::StatusOr<v1::DeletePolicyResponse> PolicyRegistry::Delete(
    const v1::DeletePolicyRequest& request, const std::string& author) {
  if (request.name().empty()) return absl::InvalidArgumentError("name is required");
  absl::MutexLock write_lock(&write_mu_);
  absl::StatusOr<v1::PolicyRevision> tombstone = store_.DeletePolicy(request.name(), author);
  if (!tombstone.ok()) return StoreError("delete", tombstone.status());
  changes_.Add({{"change", "delete"}}).Increment();
  SHUTTLE_LOG(INFO) << "policy " << request.name() << " deleted by " << author << "; fleet version "
                    << tombstone->fleet_version();
  SHUTTLE_RETURN_IF_ERROR(Refresh());
  v1::DeletePolicyResponse response;
  *response.mutable_revision() = *std::move(tombstone);
  return response;
}

absl::StatusOr<v1::PolicyHistoryResponse> PolicyRegistry::History(
    const v1::PolicyHistoryRequest& request) {
  if (request.name().empty()) return absl::InvalidArgumentError("name is required");
  absl::StatusOr<std::vector<v1::PolicyRevision>> history = store_.PolicyHistory(request.name());
  if (!history.ok()) return StoreError("history", history.status());
  v1::PolicyHistoryResponse response;
  for (v1::PolicyRevision& revision : *history) *response.add_revisions() = std::move(revision);
  return response;
}

absl::StatusOr<v1::RollbackResponse> PolicyRegistry::Rollback(const v1::RollbackRequest& request,
                                                              const std::string& author) {
  if (request.name().empty()) return absl::InvalidArgumentError("name is required");
  if (request.revision() == 0)
    return absl::InvalidArgumentError("revision to roll back to is required");
  absl::MutexLock write_lock(&write_mu_);
  absl::StatusOr<v1::PolicyRevision> target = store_.GetPolicy(request.name(), request.revision());
  if (!target.ok()) return StoreError("get", target.status());
  if (target->deleted()) {
    return absl::FailedPreconditionError("revision " + std::to_string(request.revision()) + " of " +
                                         request.name() +
                                         " is a deletion; roll back to a revision with content");
  }
  // The stored policy was valid when written; the rules may have changed since, so check again.
  std::vector<v1::ValidationError> errors = policy::ValidatePolicy(target->policy());
  if (!errors.empty()) return policy::ErrorsToStatus(errors);

  PolicyWrite write;
  write.name = request.name();
  write.source = target->source();
  write.policy = target->policy();
  write.author = author;
  write.change = "rollback to " + std::to_string(request.revision());
  bool unchanged = false;
  absl::StatusOr<v1::PolicyRevision> revision = store_.PutPolicy(write, &unchanged);
  if (!revision.ok()) return StoreError("put", revision.status());
  if (!unchanged) {
    changes_.Add({{"change", "rollback"}}).Increment();
    SHUTTLE_LOG(INFO) << "policy " << request.name() << " rolled back to revision "
                      << request.revision() << " by " << author << "; fleet version "
                      << revision->fleet_version();
    SHUTTLE_RETURN_IF_ERROR(Refresh());
  }
  v1::RollbackResponse response;
  *response.mutable_revision() = *std::move(revision);
  return response;
}

absl::StatusOr<v1::ExplainResponse> PolicyRegistry::Explain(
    const v1::ExplainRequest& request) const {
  const v1::Interaction& interaction = request.interaction();
  if (interaction.subject_vm().empty()) {
    return absl::InvalidArgumentError("interaction.subject_vm is required (a VM name or \"host\")");
  }
  if (interaction.kind() == v1::INTERACTION_KIND_UNSPECIFIED) {
    return absl::InvalidArgumentError("interaction.kind is required");
  }
  std::shared_ptr<const FleetSnapshot> snapshot = Snapshot();
  std::shared_ptr<const policy::CompiledPolicy> compiled = snapshot->compiled;
  if (!request.candidate_source().empty() || !request.host_id().empty()) {
    v1::PolicyBundle bundle = snapshot->bundle;
    if (!request.candidate_source().empty()) {
      SHUTTLE_ASSIGN_OR_RETURN(
          v1::Policy candidate,
          policy::ParsePolicyOrStatus(request.candidate_source(), "<candidate>"));
      bool replaced = false;
      for (v1::Policy& existing : *bundle.mutable_policies()) {
        if (existing.name() == candidate.name()) {
          existing = candidate;
          replaced = true;
        }
      }
      if (!replaced) *bundle.add_policies() = std::move(candidate);
    }
    SHUTTLE_ASSIGN_OR_RETURN(compiled, policy::CompiledPolicy::Compile(bundle, request.host_id()));
  }

  policy::Explanation explanation =
      compiled->Explain(policy::InteractionView::FromProto(interaction));
  v1::ExplainResponse response;
  *response.mutable_decision() = compiled->ToProto(explanation.verdict);
  if (explanation.verdict.rule != nullptr) {
    *response.mutable_winner() = *explanation.verdict.rule->rule;
  }
  for (const policy::Explanation::Loser& loser : explanation.losers) {
    v1::LosingRule* out = response.add_losers();
    out->set_policy(loser.rule->policy->name());
    out->set_rule(loser.rule->rule->name());
    out->set_action(loser.rule->rule->action());
    out->set_why(loser.why);
  }
  return response;
}

}  // namespace shuttle::controller
