// Test helpers for Store backends, shared by the backend-neutral suite (store_test_suite.h) and
// backend-specific tests (crash safety, migrations): building writes, checking that a store's
// histories and fleet version are exactly consistent, and temporary directories. Tests only.
#ifndef SHUTTLE_CONTROLLER_STORE_STORE_TESTING_H_
#define SHUTTLE_CONTROLLER_STORE_STORE_TESTING_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "controller/store/store.h"

namespace shuttle::controller::testing {

// A valid-looking write of policy `name` whose content is derived from `source`.
PolicyWrite MakeWrite(const std::string& name, const std::string& source,
                      std::optional<uint64_t> expected_revision = std::nullopt,
                      const std::string& author = "alice");

// Checks the invariants every backend must keep, given every policy name that was ever written
// (the Store interface can't enumerate deleted policies):
// - each history has revisions 1..n in order, fleet versions increasing, tombstones empty;
// - the fleet versions of all revisions are exactly 1..FleetVersion(), each used once;
// - ListPolicies() is exactly the latest revision of each name whose latest is not a tombstone,
//   and GetPolicy(name, 0) agrees.
// Returns the first violation found. Not thread-safe against concurrent writers.
absl::Status CheckConsistent(Store& store, const std::vector<std::string>& names);

// A fresh directory from mkdtemp under $TEST_TMPDIR, $TMPDIR or /tmp, removed with its contents
// on destruction. Aborts the test binary if it can't be created.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace shuttle::controller::testing

#endif  // SHUTTLE_CONTROLLER_STORE_STORE_TESTING_H_
