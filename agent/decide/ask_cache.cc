// AskCache (ask_cache.h): answers kept by key, with their online and offline lifetimes, and the
// flights that coalesce concurrent asks.
#include "agent/decide/ask_cache.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"

namespace shuttle::agent {
namespace {

absl::Duration FromProto(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

bool IsConnectivityError(absl::StatusCode code) {
  return code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded;
}

}  // namespace

uint64_t AskRuleFingerprint(const v1::Policy& policy, const v1::Rule& rule) {
  v1::Rule content = rule;
  content.clear_location();
  std::string bytes;
  // Without map fields, the serialization of equal messages is equal (within one binary).
  content.SerializeToString(&bytes);
  return absl::Hash<std::pair<std::string_view, std::string_view>>()(
      {std::string_view(policy.name()), std::string_view(bytes)});
}

AskLimits AskLimits::FromParams(const v1::AskParams& params) {
  AskLimits limits;
  limits.ttl = std::max(FromProto(params.ttl()), absl::ZeroDuration());
  limits.offline_ttl = std::max(FromProto(params.offline_ttl()), absl::ZeroDuration());
  return limits;
}

// A key that owns its strings; view() is what the maps hold.
struct OwnedAskKey {
  explicit OwnedAskKey(const AskKey& key)
      : subject_vm(key.subject_vm),
        kind(key.kind),
        object_name(key.object_name),
        policy(key.policy),
        rule(key.rule),
        fingerprint(key.fingerprint) {}
  AskKey view() const { return AskKey{subject_vm, kind, object_name, policy, rule, fingerprint}; }

  std::string subject_vm;
  v1::InteractionKind kind;
  std::string object_name;
  std::string policy;
  std::string rule;
  uint64_t fingerprint;
};

struct AskCache::Entry {
  OwnedAskKey key;
  AskAnswer answer;
  absl::Time online_until;   // Usable until then while the controller is reachable.
  absl::Time offline_until;  // ... and until then while it is not.
};

class AskCache::Flight {
 public:
  Flight(const AskKey& key, const AskLimits& limits) : key(key), limits(limits) {}

  const OwnedAskKey key;
  const AskLimits limits;
  // Guarded by the cache's mu_.
  std::vector<AskWaiter> waiters;
  bool current = true;  // Still in flights_ (no policy change dropped its rule).
};

AskCache::AskCache(AskCacheOptions options)
    : clock_(options.clock != nullptr ? *options.clock : RealClock()),
      max_entries_(std::max<size_t>(options.max_entries, 1)),
      max_inflight_(std::max<size_t>(options.max_inflight, 1)) {}

AskCache::~AskCache() = default;

AskCache::EntryList::iterator AskCache::FindLocked(const AskKey& key, absl::Time now,
                                                   bool* expired) {
  *expired = false;
  auto found = index_.find(key);
  if (found == index_.end()) return entries_.end();
  EntryList::iterator it = found->second;
  if (now < (reachable_ ? it->online_until : it->offline_until)) return it;
  *expired = true;
  // Kept while it may still serve: online now, but offline use may come (or the reverse).
  if (now >= std::max(it->online_until, it->offline_until)) EraseLocked(it);
  return entries_.end();
}

void AskCache::EraseLocked(EntryList::iterator it) {
  index_.erase(it->key.view());
  entries_.erase(it);
}

AskCache::Found AskCache::Find(const AskKey& key) {
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  Found found;
  bool expired = false;
  EntryList::iterator it = FindLocked(key, now, &expired);
  if (it != entries_.end()) {
    entries_.splice(entries_.begin(), entries_, it);
    found.lookup = Lookup::kHit;
    found.answer = it->answer;
  } else {
    found.lookup = expired ? Lookup::kExpired : Lookup::kMiss;
  }
  return found;
}

AskCache::JoinResult AskCache::Join(const AskKey& key, const AskLimits& limits, AskWaiter waiter) {
  const absl::Time now = clock_.Now();
  JoinResult result;
  AskOutcome now_outcome;
  {
    absl::MutexLock lock(&mu_);
    if (auto flight = flights_.find(key); flight != flights_.end()) {
      flight->second->waiters.push_back(std::move(waiter));
      result.joined = Joined::kWaiting;
      return result;
    }
    bool expired = false;
    if (EntryList::iterator it = FindLocked(key, now, &expired); it != entries_.end()) {
      now_outcome.source = AskOutcome::Source::kCache;
      now_outcome.answer = it->answer;
    } else if (flights_.size() >= max_inflight_) {
      now_outcome.error = absl::ResourceExhaustedError(
          absl::StrCat("more than ", max_inflight_, " asks in flight"));
    } else {
      auto flight = std::make_shared<Flight>(key, limits);
      flight->waiters.push_back(std::move(waiter));
      flights_.emplace(flight->key.view(), flight);
      result.joined = Joined::kStart;
      result.flight = std::move(flight);
      return result;
    }
  }
  result.joined = Joined::kAnswered;
  std::move(waiter)(now_outcome);
  return result;
}

void AskCache::StoreLocked(const Flight& flight, AskAnswer answer, absl::Time now,
                           absl::Duration lifetime) {
  const AskKey key = flight.key.view();
  if (auto found = index_.find(key); found != index_.end()) EraseLocked(found->second);
  entries_.push_front(
      Entry{flight.key, std::move(answer), now + lifetime, now + flight.limits.offline_ttl});
  index_.emplace(entries_.front().key.view(), entries_.begin());
  while (entries_.size() > max_entries_) {
    EraseLocked(std::prev(entries_.end()));
    ++evictions_;
  }
}

void AskCache::Complete(const FlightPtr& flight, absl::StatusOr<v1::AuthorizeResponse> result) {
  const absl::Time now = clock_.Now();
  std::vector<AskWaiter> waiters;
  AskOutcome outcome;
  {
    absl::MutexLock lock(&mu_);
    const bool was_current = flight->current;
    if (was_current) {
      flights_.erase(flight->key.view());
      flight->current = false;
    }
    waiters.swap(flight->waiters);
    if (result.ok()) {
      reachable_ = true;  // It answered, whatever it said.
      const v1::Decision& decision = result->decision();
      const v1::Verdict verdict = decision.verdict();
      if (verdict != v1::VERDICT_ALLOW && verdict != v1::VERDICT_DENY &&
          verdict != v1::VERDICT_REDIRECT) {
        outcome.error = absl::InvalidArgumentError(
            absl::StrCat("the controller answered Authorize with verdict ", verdict,
                         "; expected allow, deny or redirect"));
      } else {
        outcome.source = AskOutcome::Source::kController;
        outcome.answer.verdict = verdict;
        outcome.answer.redirect = decision.redirect();
        outcome.answer.reason = decision.reason();
        absl::Duration lifetime = flight->limits.ttl;
        if (result->has_ttl()) {
          lifetime = std::min(lifetime, std::max(FromProto(result->ttl()), absl::ZeroDuration()));
        }
        // An answer for a rule that changed meanwhile still answers its waiters, who were
        // decided under that rule, but is not kept.
        if (was_current && lifetime > absl::ZeroDuration()) {
          StoreLocked(*flight, outcome.answer, now, lifetime);
        }
      }
    } else {
      outcome.error = result.status();
      const absl::StatusCode code = outcome.error.code();
      if (IsConnectivityError(code)) {
        reachable_ = false;
        bool expired = false;
        EntryList::iterator it = FindLocked(flight->key.view(), now, &expired);
        if (it != entries_.end()) {
          outcome.source = AskOutcome::Source::kCache;
          outcome.answer = it->answer;
        }
      } else if (code != absl::StatusCode::kCancelled) {
        reachable_ = true;  // The controller itself refused.
      }
    }
  }
  for (AskWaiter& waiter : waiters) std::move(waiter)(outcome);
}

size_t AskCache::OnPolicy(const policy::CompiledPolicy& policy) {
  using RuleId = std::tuple<std::string_view, std::string_view, uint64_t>;
  absl::flat_hash_set<RuleId> keep;
  for (const policy::CompiledRule& rule : policy.rules()) {
    if (rule.action != v1::ASK) continue;
    keep.insert(RuleId(rule.policy->name(), rule.rule->name(),
                       AskRuleFingerprint(*rule.policy, *rule.rule)));
  }
  auto kept = [&keep](const OwnedAskKey& key) {
    return keep.contains(RuleId(key.policy, key.rule, key.fingerprint));
  };
  absl::MutexLock lock(&mu_);
  size_t dropped = 0;
  for (auto it = entries_.begin(); it != entries_.end();) {
    auto next = std::next(it);
    if (!kept(it->key)) {
      EraseLocked(it);
      ++dropped;
    }
    it = next;
  }
  for (auto it = flights_.begin(); it != flights_.end();) {
    if (!kept(it->second->key)) {
      it->second->current = false;
      flights_.erase(it++);
    } else {
      ++it;
    }
  }
  return dropped;
}

void AskCache::SetReachable(bool reachable) {
  absl::MutexLock lock(&mu_);
  reachable_ = reachable;
}

bool AskCache::reachable() const {
  absl::MutexLock lock(&mu_);
  return reachable_;
}

size_t AskCache::size() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

size_t AskCache::inflight() const {
  absl::MutexLock lock(&mu_);
  return flights_.size();
}

uint64_t AskCache::evictions() const {
  absl::MutexLock lock(&mu_);
  return evictions_;
}

}  // namespace shuttle::agent
