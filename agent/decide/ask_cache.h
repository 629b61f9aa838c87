// The agent's cache of the controller's answers to `ask` rules (DESIGN.md section 2, "Cache
// and fail mode"), and the place where concurrent asks for the same thing meet: one Authorize
// in flight per key, however many intercepted calls wait for it.
//
// Key: (subject VM, kind, object name, asking rule, fingerprint of that rule's content).
// DESIGN.md says answers are cached "by policy version". The fleet version changes with every
// policy change anywhere in the fleet, so keying by it would throw every answer away on any
// unrelated edit; what an answer really depends on is the rule that asked. The rule's identity
// (policy name, rule name) plus a fingerprint of its content is the precise form of "by policy
// version": a new version invalidates exactly the answers whose rule changed or vanished, and
// OnPolicy() drops those when a version arrives. The controller's answer is assumed to be a
// function of that key (it decides per subject VM, e.g. from an allow list kept by automation);
// program and uid are sent with the request for its records, not keyed on.
//
// Lifetimes (an answer is "fetched" when the controller sent it):
//  - while the controller is reachable: min(answer ttl, rule ask.ttl) from the fetch; an
//    answer without a ttl gets the rule's; a zero lifetime is not cached (coalesced waiters
//    still get it);
//  - while it is not (the last Authorize failed with UNAVAILABLE or DEADLINE_EXCEEDED, or
//    SetReachable(false)): the rule's ask.offline_ttl from the fetch, so answers fetched
//    earlier keep deciding while the controller is away; an Authorize that fails for lack of
//    connection is answered from such an entry rather than by the fail mode.
// Any other outcome of an Authorize (an answer, or an error the controller sent) marks it
// reachable again; CANCELLED (the agent stopping) changes nothing. Bounded: at most max_entries
// answers (least recently used evicted first) and max_inflight Authorize calls (a further miss gets
// RESOURCE_EXHAUSTED at once).
#ifndef SHUTTLE_AGENT_DECIDE_ASK_CACHE_H_
#define SHUTTLE_AGENT_DECIDE_ASK_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "policy/matcher.h"
#include "shuttle/v1/agent.pb.h"
#include "shuttle/v1/types.pb.h"

namespace shuttle::agent {

// A fingerprint of what an `ask` rule says, for the cache key: the policy's name and the rule's
// content (subject, kinds, object, action, ask parameters, flags), not where it is written in
// its file (adding a rule above it moves it without changing it). Stable within one process,
// which is all an in-memory cache needs.
uint64_t AskRuleFingerprint(const v1::Policy& policy, const v1::Rule& rule);

// A cache key as views (no allocation to build one); the cache copies what it keeps.
struct AskKey {
  std::string_view subject_vm;  // "host" for host processes.
  v1::InteractionKind kind = v1::INTERACTION_KIND_UNSPECIFIED;
  std::string_view object_name;
  std::string_view policy;  // The asking rule's policy and name.
  std::string_view rule;
  uint64_t fingerprint = 0;  // AskRuleFingerprint() of that rule.

  friend bool operator==(const AskKey& a, const AskKey& b) {
    return a.fingerprint == b.fingerprint && a.kind == b.kind && a.subject_vm == b.subject_vm &&
           a.object_name == b.object_name && a.rule == b.rule && a.policy == b.policy;
  }
  template <typename H>
  friend H AbslHashValue(H h, const AskKey& k) {
    return H::combine(std::move(h), k.subject_vm, k.kind, k.object_name, k.policy, k.rule,
                      k.fingerprint);
  }
};

// The lifetimes the asking rule allows (its AskParams).
struct AskLimits {
  absl::Duration ttl = absl::ZeroDuration();          // While the controller is reachable.
  absl::Duration offline_ttl = absl::ZeroDuration();  // While it is not.

  static AskLimits FromParams(const v1::AskParams& params);
};

// The controller's answer, as kept.
struct AskAnswer {
  v1::Verdict verdict = v1::VERDICT_UNSPECIFIED;  // ALLOW, DENY or REDIRECT.
  v1::RedirectTarget redirect;                    // With REDIRECT.
  std::string reason;                             // The controller's, for the audit record.
};

// What a waiter learns when the Authorize it waited for completes.
struct AskOutcome {
  enum class Source : uint8_t {
    kController,  // The controller answered: `answer`.
    kCache,       // `answer` was cached: fetched earlier and still within its offline_ttl
                  // while there is no connection (`error` says why), or it arrived for the
                  // same key while this waiter was joining (`error` OK).
    kNone,        // No answer (`error`: DEADLINE_EXCEEDED, UNAVAILABLE, RESOURCE_EXHAUSTED
                  // when too many asks are in flight, INVALID_ARGUMENT for an answer without
                  // a verdict, or what the controller said); the rule's fail mode decides.
  };
  Source source = Source::kNone;
  AskAnswer answer;
  absl::Status error;
};

// Called once with the outcome, on the thread that completes the Authorize (or inline).
using AskWaiter = absl::AnyInvocable<void(const AskOutcome&) &&>;

struct AskCacheOptions {
  Clock* clock = nullptr;  // Null: RealClock().
  size_t max_entries = 10000;
  size_t max_inflight = 1024;
};

// Thread-safe (one mutex; waiters run outside it).
class AskCache {
 public:
  explicit AskCache(AskCacheOptions options = {});
  ~AskCache();
  AskCache(const AskCache&) = delete;
  AskCache& operator=(const AskCache&) = delete;

  enum class Lookup : uint8_t {
    kHit,      // `answer` is usable now.
    kMiss,     // Nothing cached.
    kExpired,  // Cached, but past the lifetime that applies now.
  };
  struct Found {
    Lookup lookup = Lookup::kMiss;
    AskAnswer answer;  // With kHit.
  };
  // Looks `key` up (a hit makes it most recently used). Does not start anything.
  Found Find(const AskKey& key);

  // One Authorize in flight; opaque to callers, who hand it back to Complete().
  class Flight;
  using FlightPtr = std::shared_ptr<Flight>;

  enum class Joined : uint8_t {
    kStart,     // A new flight: the caller sends the Authorize, then calls Complete(flight).
    kWaiting,   // Added to the flight already in the air.
    kAnswered,  // An answer arrived since Find(), or too many flights: the waiter already ran.
  };
  struct JoinResult {
    Joined joined = Joined::kWaiting;
    FlightPtr flight;  // With kStart.
  };
  // Hands `waiter` to the Authorize for `key`, opening one if none is in flight. `limits`
  // (the asking rule's) decide how long the answer is kept. The waiter always runs exactly
  // once: now (kAnswered) or from Complete().
  JoinResult Join(const AskKey& key, const AskLimits& limits, AskWaiter waiter);

  // Ends `flight` with the controller's response or the RPC's error, updates reachability,
  // caches the answer (unless a policy change dropped its rule meanwhile), and runs every
  // waiter on the calling thread. A response without a valid verdict is an error
  // (INVALID_ARGUMENT, not cached). Call once per flight.
  void Complete(const FlightPtr& flight, absl::StatusOr<v1::AuthorizeResponse> result);

  // A new policy: drops cached answers and forgets flights (their waiters are still answered,
  // but the answer is not kept) of `ask` rules that are no longer in `policy` with the same
  // fingerprint. Returns how many answers were dropped.
  size_t OnPolicy(const policy::CompiledPolicy& policy);

  // Overrides reachability until the next Authorize completes (e.g. the agent has no
  // connection to the controller at all).
  void SetReachable(bool reachable);
  bool reachable() const;

  size_t size() const;         // Cached answers.
  size_t inflight() const;     // Flights in the air.
  uint64_t evictions() const;  // Answers evicted for room (not for expiry or policy).

 private:
  struct Entry;
  using EntryList = std::list<Entry>;

  // The entry for `key` if it is usable now; drops it if it is of no use at all any more.
  EntryList::iterator FindLocked(const AskKey& key, absl::Time now, bool* expired)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseLocked(EntryList::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StoreLocked(const Flight& flight, AskAnswer answer, absl::Time now, absl::Duration lifetime)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Clock& clock_;
  const size_t max_entries_;
  const size_t max_inflight_;

  mutable absl::Mutex mu_;
  bool reachable_ ABSL_GUARDED_BY(mu_) = true;
  // Most recently used first. Map keys view the strings owned by the entries.
  EntryList entries_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<AskKey, EntryList::iterator> index_ ABSL_GUARDED_BY(mu_);
  // Map keys view the strings owned by the flights.
  absl::flat_hash_map<AskKey, FlightPtr> flights_ ABSL_GUARDED_BY(mu_);
  uint64_t evictions_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_DECIDE_ASK_CACHE_H_
