// The backend-neutral conformance suite of the Store contract (store.h). Every backend runs it:
// link the `shuttle_store_test_suite` library into the backend's test binary and instantiate the
// suite with a harness factory, e.g.
//
//   INSTANTIATE_TEST_SUITE_P(Sqlite, StoreTest,
//                            ::testing::Values(StoreBackend{"sqlite", MakeSqliteHarness}),
//                            StoreBackendName);
//
// The tests use only the Store interface, a FakeClock and the harness, so they say nothing about
// how a backend keeps its data.
#ifndef SHUTTLE_CONTROLLER_STORE_STORE_TEST_SUITE_H_
#define SHUTTLE_CONTROLLER_STORE_STORE_TEST_SUITE_H_

#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "controller/store/store.h"
#include "gtest/gtest.h"

namespace shuttle::controller::testing {

// The data of one test: created empty for the test and destroyed after it.
class StoreTestHarness {
 public:
  virtual ~StoreTestHarness() = default;

  // Opens a store on this harness's data, stamping revisions with `clock` (which outlives the
  // store). The data is empty before the first call; every later call opens the same data
  // again: after the earlier store is destroyed that is a restart, while it is still open it is
  // a second replica writing concurrently. Must be safe to call from any thread.
  virtual absl::StatusOr<StorePtr> Open(Clock& clock) = 0;
};

// A backend under test: a name for test names (letters, digits, '_') and a harness factory.
struct StoreBackend {
  std::string name;
  std::function<std::unique_ptr<StoreTestHarness>()> make_harness;
};

inline void PrintTo(const StoreBackend& backend, std::ostream* os) { *os << backend.name; }

inline std::string StoreBackendName(const ::testing::TestParamInfo<StoreBackend>& info) {
  return info.param.name;
}

// Each test gets a new harness and a store opened on it; clock_ starts at a fixed time and only
// moves when a test advances it.
class StoreTest : public ::testing::TestWithParam<StoreBackend> {
 protected:
  void SetUp() override;

  // Opens another store on the same data (restart or second replica; see StoreTestHarness).
  absl::StatusOr<StorePtr> OpenAgain() { return harness_->Open(clock_); }

  FakeClock clock_;
  std::unique_ptr<StoreTestHarness> harness_;
  StorePtr store_;  // Declared last: destroyed before the harness and the clock.
};

}  // namespace shuttle::controller::testing

#endif  // SHUTTLE_CONTROLLER_STORE_STORE_TEST_SUITE_H_
