// The in-flight journal (DESIGN.md, driver-shim): a small memory-mapped file with fixed slots
// in which the notification loop notes each notification id it has received and not yet
// answered. A notification received by an agent that then dies stays blocked, and its id dies
// with the agent; the journal outlives the agent (its stores are in the page cache the moment
// they are made), so the next agent can answer those ids first (see
// SeccompInterceptionSource::RecoverInflight). A deferred answer (PendingReply) keeps its slot
// until it is finished, on whatever thread that happens (Release()).
//
// File layout (host byte order; the file never leaves the host): a 64-byte header
// {char magic[8] = "SHTLJRN1", u32 version = 1, u32 slot_count, 48 bytes zero}, then slot_count
// slots of {u64 id, u64 state (1: in flight, 0: free)}.
#ifndef SHUTTLE_AGENT_INTERCEPT_INFLIGHT_JOURNAL_H_
#define SHUTTLE_AGENT_INTERCEPT_INFLIGHT_JOURNAL_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/intercept/unique_fd.h"

namespace shuttle::agent::intercept {

class InflightJournal {
 public:
  static constexpr uint32_t kMaxSlots = 65536;

  // Opens the journal at `path` (creating it, mode 0600, and its missing parent directories,
  // mode 0700) and locks it (flock, exclusive): FAILED_PRECONDITION if another live agent holds
  // it. Collects the ids a previous owner left in flight (leftover()), then resets the file to
  // `slots` (1..kMaxSlots) free slots.
  static absl::StatusOr<std::unique_ptr<InflightJournal>> Open(const std::string& path,
                                                               uint32_t slots);

  ~InflightJournal();  // Unmaps and unlocks; the file stays.
  InflightJournal(const InflightJournal&) = delete;
  InflightJournal& operator=(const InflightJournal&) = delete;

  // Notes `id` as in flight; returns its slot, or -1 if every slot is taken (the id then goes
  // unjournaled). No syscall, no allocation. Not thread-safe: the loop thread only. When no
  // slot is free it first takes back the slots Release()d by other threads.
  int Record(uint64_t id);

  // Frees a slot returned by Record (ignores -1). The loop thread only (it is the hot path:
  // no atomic read-modify-write, no lock).
  void Clear(int slot);

  // Frees a slot from any thread (a deferred answer finished elsewhere; ignores -1). The file
  // shows the slot free at once; the loop thread reuses it once its own free slots run out
  // (lock-free: a push onto a list that Record() takes whole, so there is no ABA). Each slot
  // must be freed once, by Clear() or Release(), never both.
  void Release(int slot);

  // Ids that were in flight when the journal was opened.
  const std::vector<uint64_t>& leftover() const { return leftover_; }
  void ForgetLeftover() { leftover_.clear(); }

  uint32_t slot_count() const { return slot_count_; }
  // Slots recorded and not yet cleared or released. The loop thread only.
  size_t in_use() const {
    return slot_count_ - free_.size() - released_count_.load(std::memory_order_acquire);
  }

 private:
  struct Slot;
  InflightJournal(UniqueFd fd, void* map, size_t map_size, uint32_t slots,
                  std::vector<uint64_t> leftover);
  Slot* slots() const;
  // Moves every Release()d slot onto free_ (loop thread).
  void Reclaim();

  UniqueFd fd_;
  void* map_;
  size_t map_size_;
  uint32_t slot_count_;
  std::vector<int> free_;  // Stack of free slot indices; preallocated to slot_count_.
  // Slots freed by Release() and not yet back on free_: a lock-free stack (Treiber push, the
  // loop takes the whole list with one exchange) threaded through released_next_.
  std::unique_ptr<std::atomic<int32_t>[]> released_next_;
  std::atomic<int32_t> released_head_{-1};
  std::atomic<uint32_t> released_count_{0};
  std::vector<uint64_t> leftover_;
};

}  // namespace shuttle::agent::intercept

#endif  // SHUTTLE_AGENT_INTERCEPT_INFLIGHT_JOURNAL_H_
