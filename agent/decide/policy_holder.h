// The agent's current compiled policy. Writers (policy file load now, the controller stream in
// issue 4) swap in a new immutable snapshot by pointer; readers on the notification loop take
// the pointer and never wait for a writer (STYLE.md, "Shared state").
#ifndef SHUTTLE_AGENT_DECIDE_POLICY_HOLDER_H_
#define SHUTTLE_AGENT_DECIDE_POLICY_HOLDER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "policy/matcher.h"

namespace shuttle::agent {

// Thread-safe.
class PolicyHolder {
 public:
  // Starts with an empty policy (version 0): intra-VM allowed, everything else denied.
  PolicyHolder();

  using Observer = std::function<void(const std::shared_ptr<const policy::CompiledPolicy>&)>;

  std::shared_ptr<const policy::CompiledPolicy> Get() const { return current_.load(); }
  // Swaps in `compiled`, then tells the observers (on this thread, in the order they were
  // added).
  void Set(std::shared_ptr<const policy::CompiledPolicy> compiled) {
    current_.store(compiled);
    for (const Observer& observer : observers_) observer(compiled);
  }

  // Adds an observer, called after every Set() with the new snapshot, on the setter's thread
  // (e.g. the ask cache dropping the answers of rules that changed; the sharing of FIFOs and shm
  // files following the policy). Add them all before any Set() can run concurrently; an
  // observer must be thread-safe, must not call Set(), and should return quickly (hand slow
  // work, such as mounts, to its own thread).
  void AddObserver(Observer observer) { observers_.push_back(std::move(observer)); }

 private:
  std::atomic<std::shared_ptr<const policy::CompiledPolicy>> current_;
  std::vector<Observer> observers_;
};

// Reads one YAML policy file (same format as the controller's) and compiles the part that
// applies to `host_id`. Errors name the file, line and field. `version` becomes the snapshot's
// policy version.
absl::StatusOr<std::shared_ptr<const policy::CompiledPolicy>> LoadPolicyFile(
    const std::string& path, const std::string& host_id, uint64_t version);

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_DECIDE_POLICY_HOLDER_H_
