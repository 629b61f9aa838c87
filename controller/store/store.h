// The controller's state behind one interface (DESIGN.md section 2): policies with their full
// revision history and the fleet policy version. SQLite (embedded, default) implements it now;
// PostgreSQL (several replicas) later, under the same test suite (store_test_suite.h).
// Every mutating call is one transaction: it either happens whole or not at all, also across a
// kill -9 of the process.
#ifndef SHUTTLE_CONTROLLER_STORE_STORE_H_
#define SHUTTLE_CONTROLLER_STORE_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shuttle/v1/policy.pb.h"

namespace shuttle::controller {

// A change to write. `policy` must already be validated by the caller.
struct PolicyWrite {
  std::string name;    // Non-empty (else INVALID_ARGUMENT).
  std::string source;  // YAML as applied.
  v1::Policy policy;   // policy.name(), when set, must equal `name` (else INVALID_ARGUMENT).
  std::string author;
  std::string change;  // "apply", "rollback to 3".
  // When set, the write fails with ABORTED unless the current revision equals this (0 = none).
  // A deleted policy's current revision is 0. Checked before the "unchanged" shortcut, so a
  // stale writer always learns that it is stale.
  std::optional<uint64_t> expected_revision;
};

// Thread-safe: every method may be called concurrently from gRPC handler threads.
class Store {
 public:
  virtual ~Store() = default;

  // Stores a new revision of `write.name` (revision = previous + 1) and bumps the fleet version.
  // If the source equals the current live revision's source, writes nothing and returns the
  // current revision with *unchanged = true (unchanged may be null).
  virtual absl::StatusOr<v1::PolicyRevision> PutPolicy(const PolicyWrite& write,
                                                       bool* unchanged) = 0;

  // Writes a tombstone revision (deleted, change "delete", empty source and policy) and bumps the
  // fleet version. NOT_FOUND if not live. Applying the name again continues its revisions.
  virtual absl::StatusOr<v1::PolicyRevision> DeletePolicy(const std::string& name,
                                                          const std::string& author) = 0;

  // revision 0 = current live revision. NOT_FOUND if absent (or deleted, for revision 0).
  // A stored revision that can't be read back (damaged data) is DATA_LOSS naming it; this holds
  // for every read below.
  virtual absl::StatusOr<v1::PolicyRevision> GetPolicy(const std::string& name,
                                                       uint64_t revision) = 0;

  // Current revision of every live policy, ordered by name.
  virtual absl::StatusOr<std::vector<v1::PolicyRevision>> ListPolicies() = 0;

  // Every revision of `name`, oldest first, tombstones included. NOT_FOUND if never existed.
  virtual absl::StatusOr<std::vector<v1::PolicyRevision>> PolicyHistory(
      const std::string& name) = 0;

  // The fleet policy version: bumped by every policy change; 0 for an empty store.
  virtual absl::StatusOr<uint64_t> FleetVersion() = 0;
};

using StorePtr = std::unique_ptr<Store>;

}  // namespace shuttle::controller

#endif  // SHUTTLE_CONTROLLER_STORE_STORE_H_
