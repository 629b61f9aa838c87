// The controller's policy plane: everything PolicyService does, without gRPC. Parses and
// validates YAML (policy/), writes revisions to the Store, keeps the compiled fleet snapshot
// that Explain (and later the push) reads, and tells subscribers when the fleet version moves.
#ifndef SHUTTLE_CONTROLLER_REGISTRY_POLICY_REGISTRY_H_
#define SHUTTLE_CONTROLLER_REGISTRY_POLICY_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "controller/store/store.h"
#include "policy/matcher.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "shuttle/v1/policy.pb.h"

namespace shuttle::controller {

// The fleet's current policies, compiled. Immutable once published.
struct FleetSnapshot {
  v1::PolicyBundle bundle;                                 // Every live policy.
  std::shared_ptr<const policy::CompiledPolicy> compiled;  // For every host.
};

// Thread-safe. Holds `store` by reference; it must outlive the registry.
class PolicyRegistry {
 public:
  // Metrics are registered in `metrics` (shuttle_controller_* families).
  PolicyRegistry(Store& store, prometheus::Registry& metrics);

  // Loads every live policy from the store and compiles the first snapshot. A stored policy
  // that no longer compiles is an error naming it (the controller refuses to start on it).
  absl::Status Load();

  // `author` is the caller's identity (certificate CN). Returns INVALID_ARGUMENT listing every
  // validation error, one per line, when the source does not validate.
  absl::StatusOr<v1::ApplyResponse> Apply(const v1::ApplyRequest& request,
                                          const std::string& author);
  v1::ValidateResponse Validate(const v1::ValidateRequest& request) const;
  absl::StatusOr<v1::GetPolicyResponse> Get(const v1::GetPolicyRequest& request);
  absl::StatusOr<v1::ListPoliciesResponse> List();
  absl::StatusOr<v1::DeletePolicyResponse> Delete(const v1::DeletePolicyRequest& request,
                                                  const std::string& author);
  absl::StatusOr<v1::PolicyHistoryResponse> History(const v1::PolicyHistoryRequest& request);
  absl::StatusOr<v1::RollbackResponse> Rollback(const v1::RollbackRequest& request,
                                                const std::string& author);
  absl::StatusOr<v1::ExplainResponse> Explain(const v1::ExplainRequest& request) const;

  // The current snapshot; never null after Load(). Readers never wait for a writer.
  std::shared_ptr<const FleetSnapshot> Snapshot() const;

  // `fn` is called (on the writer's thread, after the snapshot is published) with every new
  // snapshot. Subscribe before serving; subscribers live as long as the registry.
  void Subscribe(std::function<void(std::shared_ptr<const FleetSnapshot>)> fn);

 private:
  // Re-reads the store and publishes a new snapshot. Called after each successful write.
  absl::Status Refresh();
  // Counts a store failure by operation and passes the status through.
  absl::Status StoreError(const char* op, absl::Status status);

  Store& store_;
  prometheus::Family<prometheus::Counter>& store_errors_;
  prometheus::Gauge& fleet_version_gauge_;
  prometheus::Gauge& policies_gauge_;
  prometheus::Family<prometheus::Counter>& changes_;

  // Serialises writers so snapshots are published in version order.
  absl::Mutex write_mu_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const FleetSnapshot> snapshot_ ABSL_GUARDED_BY(mu_);
  std::vector<std::function<void(std::shared_ptr<const FleetSnapshot>)>> subscribers_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace shuttle::controller

#endif  // SHUTTLE_CONTROLLER_REGISTRY_POLICY_REGISTRY_H_
