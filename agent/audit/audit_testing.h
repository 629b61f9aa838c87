// Test helpers for code that produces or stores audit records: an AuditSink that records what
// it is given (for decider tests), and a temporary directory for spools. Tests only.
#ifndef SHUTTLE_AGENT_AUDIT_AUDIT_TESTING_H_
#define SHUTTLE_AGENT_AUDIT_AUDIT_TESTING_H_

#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "agent/audit/audit_sink.h"
#include "common/logging.h"

namespace shuttle::agent::testing {

// Keeps every record submitted, in order. Thread-safe.
class RecordingSink final : public AuditSink {
 public:
  void Submit(v1::AuditRecord record) override {
    absl::MutexLock lock(&mu_);
    records_.push_back(std::move(record));
  }
  std::vector<v1::AuditRecord> records() const {
    absl::MutexLock lock(&mu_);
    return records_;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<v1::AuditRecord> records_ ABSL_GUARDED_BY(mu_);
};

// A fresh directory from mkdtemp under $TEST_TMPDIR or /tmp, removed with its contents on
// destruction. Crashes the test binary if it can't be created.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TEST_TMPDIR");
    std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/shuttle-audit-XXXXXX";
    SHUTTLE_CHECK(::mkdtemp(pattern.data()) != nullptr) << "mkdtemp " << pattern;
    path_ = std::move(pattern);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace shuttle::agent::testing

#endif  // SHUTTLE_AGENT_AUDIT_AUDIT_TESTING_H_
