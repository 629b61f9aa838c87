// How the controller answers `ask` (AgentService.Authorize, DESIGN.md section 2: "authz/ answers
// ask"): from standing answers that operators and automation keep in the store (answers.proto),
// e.g. a per-VM allow list. The answers are held as an immutable, indexed snapshot that Authorize
// reads without waiting for writers, so it can run on a gRPC thread; writes go to the store first
// and then replace the snapshot.
#ifndef SHUTTLE_CONTROLLER_AUTHZ_ANSWERS_H_
#define SHUTTLE_CONTROLLER_AUTHZ_ANSWERS_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "controller/store/store.h"
#include "shuttle/v1/agent.pb.h"
#include "shuttle/v1/answers.pb.h"

namespace shuttle::controller {

struct AnswerOptions {
  // The cache lifetime given to agents when the winning answer names none, and for "no answer".
  absl::Duration default_ttl = absl::Seconds(30);
  // The longest ttl an answer may name.
  absl::Duration max_ttl = absl::Hours(24);
};

// True if `name` matches `pattern`, where each '*' in the pattern matches any run of characters
// ('/' included) and every other character matches itself. A pattern without '*' is an exact
// name. O(|pattern| x |name|) at worst, no recursion, no allocation.
bool GlobMatch(absl::string_view pattern, absl::string_view name);

// Checks a standing answer as a client sent it to Put and normalizes it in place: empty
// subject_vm / object_vm become "*". INVALID_ARGUMENT naming the field otherwise: the id (when
// set) and the VMs must be names ([A-Za-z0-9][A-Za-z0-9._-]*; ids up to 64, VMs up to 128
// characters; a VM may also be "host" or "*"), the kind set, the object non-empty (up to 4096
// bytes), the verdict allow or deny, ttl in (0, options.max_ttl], expires after `now`, the
// note up to 1024 bytes. Leaves author and created alone.
absl::Status ValidateStandingAnswer(v1::StandingAnswer& answer, absl::Time now,
                                    const AnswerOptions& options);

// An immutable index of standing answers for one lookup per interaction: buckets by (subject VM,
// kind); in each, exact object names in a hash map and globs by decreasing specificity. Thread-
// safe (const).
class AnswerSet {
 public:
  // `answers` must be normalized (ValidateStandingAnswer) answers.
  explicit AnswerSet(std::vector<v1::StandingAnswer> answers);

  // The answer that decides `interaction` at `now`, or null if none matches. An answer matches
  // when its kind equals the interaction's, its subject VM is the interaction's or "*", its
  // object VM is the interaction's or "*" (an interaction whose object VM is unknown matches only
  // "*"), its object pattern matches the object name (GlobMatch), and it has not expired
  // (expires unset or > now). Among matches the most specific wins: an exact subject VM over "*";
  // then an exact object over a glob, a glob with more literal characters over one with fewer;
  // then an exact object VM over "*"; then deny over allow. The pointer stays valid as long as
  // this AnswerSet.
  const v1::StandingAnswer* Match(const v1::Interaction& interaction, absl::Time now) const;

  // Every answer, ordered by id.
  const std::vector<v1::StandingAnswer>& answers() const { return answers_; }

 private:
  struct Entry {
    const v1::StandingAnswer* answer;
    size_t literal_chars;  // Characters of the object pattern other than '*'.
    bool any_object_vm;
    bool deny;
  };
  struct Bucket {
    absl::flat_hash_map<std::string, std::vector<Entry>> exact;  // Object name -> entries.
    std::vector<Entry> globs;                                    // Most specific first.
  };

  // Order within a bucket, most specific first: more literal characters, an exact object VM,
  // then deny.
  static bool MoreSpecific(const Entry& a, const Entry& b);
  static bool Usable(const Entry& entry, const v1::Interaction& interaction, absl::Time now);
  const v1::StandingAnswer* MatchBucket(const Bucket& bucket, const v1::Interaction& interaction,
                                        absl::Time now) const;

  std::vector<v1::StandingAnswer> answers_;
  // Key: subject VM + '\0' + kind number.
  absl::flat_hash_map<std::string, Bucket> buckets_;
};

// The standing answers of the controller: the store's, validated on the way in, and an AnswerSet
// snapshot of them for Authorize. Thread-safe. With several controllers on one store, each sees
// the others' changes after its next write or Load (a replica has no change feed yet).
class AnswerAuthority {
 public:
  // `store` and `clock` are borrowed and must outlive the authority. Call Load before use.
  AnswerAuthority(Store& store, Clock& clock, AnswerOptions options = {});

  // (Re)reads every answer from the store into a new snapshot. Blocking (store I/O).
  absl::Status Load();

  // Validates `answer`, sets author and created (now), gives it an id when it has none (the id
  // of the stored answer with the same selector, so setting a selector again replaces its
  // answer; else a new "ans-" + 8 hex digits), stores it and publishes a new snapshot. Blocking.
  absl::StatusOr<v1::PutAnswerResponse> Put(v1::StandingAnswer answer, const std::string& author);
  // Every stored answer, ordered by id (read from the store, so it also shows other replicas'
  // changes). Blocking.
  absl::StatusOr<v1::ListAnswersResponse> List();
  // Removes an answer; NOT_FOUND if there is none with `id`. Blocking.
  absl::StatusOr<v1::DeleteAnswerResponse> Delete(const std::string& id);

  // Decides one `ask` for the agent whose certificate names `caller_host`: PERMISSION_DENIED
  // naming both host ids unless the interaction's host_id is `caller_host` (an agent can't ask
  // for another host); INVALID_ARGUMENT without a subject VM or kind. Otherwise the winning
  // answer's verdict, or deny ("no standing answer for ...") when none matches; scope from the
  // interaction's VMs; policy, rule and policy_version from the request; enforced (the agent
  // applies its policy's monitor mode); ttl = the answer's or the default, never past the
  // answer's expiry. Never blocks (reads the snapshot): may run on a gRPC thread.
  absl::StatusOr<v1::AuthorizeResponse> Authorize(const std::string& caller_host,
                                                  const v1::AuthorizeRequest& request) const;

  // The current snapshot. Never null after construction.
  std::shared_ptr<const AnswerSet> Snapshot() const;

  const AnswerOptions& options() const { return options_; }

 private:
  // Publishes a new snapshot read from the store. Requires write_mu_.
  absl::Status Reload() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  Store& store_;
  Clock& clock_;
  const AnswerOptions options_;
  absl::Mutex write_mu_;  // Serialises Put/Delete/Load: snapshots are published in write order.
  mutable absl::Mutex snapshot_mu_;
  std::shared_ptr<const AnswerSet> snapshot_ ABSL_GUARDED_BY(snapshot_mu_);
};

}  // namespace shuttle::controller

#endif  // SHUTTLE_CONTROLLER_AUTHZ_ANSWERS_H_
