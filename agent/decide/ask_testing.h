// Test doubles for the `ask` path (header-only, tests only): an Asker whose calls the test
// completes by hand (FakeAsker), a NotificationScope whose deferred replies record how they
// were finished (ReplyLog, RecordingScope), shared ask rules, and helpers to compile a policy
// and to decide a call.
#ifndef SHUTTLE_AGENT_DECIDE_ASK_TESTING_H_
#define SHUTTLE_AGENT_DECIDE_ASK_TESTING_H_

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/decide/ask_client.h"
#include "agent/decide/decide_testing.h"
#include "agent/intercept/interception.h"
#include "policy/matcher.h"
#include "policy/parser.h"

namespace shuttle::agent::testing {

// The `ask` rules the tests share: calls from VM web to VM db. ask-db is the plain one;
// ask-open fails open; ask-watch is not enforced; ask-cache (last) is a tcp-connect.
inline constexpr char kAskPolicy[] = R"(name: asks
rules:
  - name: ask-db
    subject: { vm: web }
    kind: unix-connect
    object: { vm: db, path: /run/db.sock }
    action: ask
    ask: { ttl: 30s, offline_ttl: 5m, timeout: 2s }
  - name: ask-other
    subject: { vm: web }
    kind: unix-connect
    object: { vm: db, path: /run/other.sock }
    action: ask
    ask: { timeout: 2s }
  - name: ask-open
    subject: { vm: web }
    kind: unix-connect
    object: { vm: db, path: /run/open.sock }
    action: ask
    ask: { fail: open }
  - name: ask-watch
    subject: { vm: web }
    kind: unix-connect
    object: { vm: db, path: /run/watch.sock }
    action: ask
    audit_only: true
  - name: ask-cache
    subject: { vm: web }
    kind: tcp-connect
    object: { vm: db, address: "127.0.0.1:6379" }
    action: ask
)";

// Has `decider` decide a unix-connect from VM `vm` (pid: this process) to `path`. `scope`
// null: the call can't be deferred.
inline intercept::Answer DecideUnixConnect(intercept::Decider& decider, std::string_view path,
                                           intercept::NotificationScope* scope,
                                           std::string_view vm = "web") {
  return DecideCall(decider, vm, v1::UNIX_CONNECT, path, scope);
}

// Compiles one YAML policy as bundle `version`; null (and the errors in `*error`) if it fails.
inline std::shared_ptr<const policy::CompiledPolicy> CompileYaml(const std::string& yaml,
                                                                 uint64_t version,
                                                                 std::string* error) {
  absl::StatusOr<v1::Policy> parsed = policy::ParsePolicyOrStatus(yaml, "test.yaml");
  if (!parsed.ok()) {
    *error = std::string(parsed.status().message());
    return nullptr;
  }
  v1::PolicyBundle bundle;
  bundle.set_version(version);
  *bundle.add_policies() = *std::move(parsed);
  absl::StatusOr<std::shared_ptr<const policy::CompiledPolicy>> compiled =
      policy::CompiledPolicy::Compile(bundle);
  if (!compiled.ok()) {
    *error = std::string(compiled.status().message());
    return nullptr;
  }
  return *std::move(compiled);
}

// Keeps every Authorize until the test completes it (or answers at once, see AnswerInline).
// Thread-safe.
class FakeAsker final : public Asker {
 public:
  void Authorize(v1::AuthorizeRequest request, absl::Duration timeout, Done done) override {
    std::optional<absl::StatusOr<v1::AuthorizeResponse>> inline_answer;
    {
      absl::MutexLock lock(&mu_);
      calls_.push_back(Call{std::move(request), timeout, nullptr});
      if (inline_answer_.has_value()) {
        inline_answer = inline_answer_;
      } else {
        calls_.back().done = std::move(done);
      }
    }
    if (inline_answer.has_value()) std::move(done)(*std::move(inline_answer));
  }

  // From now on, Authorize() calls `done` with `result` before it returns.
  void AnswerInline(absl::StatusOr<v1::AuthorizeResponse> result) {
    absl::MutexLock lock(&mu_);
    inline_answer_ = std::move(result);
  }

  size_t count() const {
    absl::MutexLock lock(&mu_);
    return calls_.size();
  }
  v1::AuthorizeRequest request(size_t i) const {
    absl::MutexLock lock(&mu_);
    return calls_.at(i).request;
  }
  absl::Duration timeout(size_t i) const {
    absl::MutexLock lock(&mu_);
    return calls_.at(i).timeout;
  }
  // Completes call `i` (once) on the calling thread.
  void Complete(size_t i, absl::StatusOr<v1::AuthorizeResponse> result) {
    Done done;
    {
      absl::MutexLock lock(&mu_);
      done = std::move(calls_.at(i).done);
      calls_.at(i).done = nullptr;
    }
    if (done) std::move(done)(std::move(result));
  }

 private:
  struct Call {
    v1::AuthorizeRequest request;
    absl::Duration timeout;
    Done done;
  };
  mutable absl::Mutex mu_;
  std::vector<Call> calls_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::StatusOr<v1::AuthorizeResponse>> inline_answer_ ABSL_GUARDED_BY(mu_);
};

// A response with `verdict` and, if `ttl` is not negative, that ttl.
inline v1::AuthorizeResponse Answer(v1::Verdict verdict, absl::Duration ttl = absl::Seconds(-1)) {
  v1::AuthorizeResponse response;
  response.mutable_decision()->set_verdict(verdict);
  response.mutable_decision()->set_reason("test says so");
  if (ttl >= absl::ZeroDuration()) {
    response.mutable_ttl()->set_seconds(absl::ToInt64Seconds(ttl));
  }
  return response;
}

// How the deferred replies of RecordingScopes were finished, by scope id. Thread-safe.
class ReplyLog {
 public:
  void Record(int id, intercept::Answer answer, bool abandoned) {
    absl::MutexLock lock(&mu_);
    finished_[id] = Finished{answer, abandoned};
  }
  struct Finished {
    intercept::Answer answer;
    bool abandoned = false;
  };
  // How reply `id` was finished, waiting up to `timeout`; nullopt if it was not.
  std::optional<Finished> Wait(int id, absl::Duration timeout) const {
    absl::MutexLock lock(&mu_);
    auto done = [this, id]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return finished_.count(id) > 0; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) return std::nullopt;
    return finished_.at(id);
  }
  size_t size() const {
    absl::MutexLock lock(&mu_);
    return finished_.size();
  }

 private:
  mutable absl::Mutex mu_;
  std::map<int, Finished> finished_ ABSL_GUARDED_BY(mu_);
};

// A notification that can be deferred; its reply records into a ReplyLog under `id`.
class RecordingScope final : public intercept::NotificationScope {
 public:
  RecordingScope(ReplyLog& log, int id) : log_(log), id_(id) {}
  bool StillValid() override { return true; }
  intercept::PendingReplyPtr Defer() override {
    ++defers_;
    return std::make_unique<Reply>(log_, id_);
  }
  int defers() const { return defers_; }

 private:
  class Reply final : public intercept::PendingReply {
   public:
    Reply(ReplyLog& log, int id) : log_(log), id_(id) {}
    ~Reply() override {
      if (!finished_.exchange(true)) log_.Record(id_, intercept::Answer::Fail(EPERM), true);
    }
    void Finish(intercept::Answer answer) override {
      if (!finished_.exchange(true)) log_.Record(id_, answer, false);
    }

   private:
    ReplyLog& log_;
    int id_;
    std::atomic<bool> finished_{false};
  };

  ReplyLog& log_;
  int id_;
  int defers_ = 0;
};

}  // namespace shuttle::agent::testing

#endif  // SHUTTLE_AGENT_DECIDE_ASK_TESTING_H_
