// The in-flight journal (DESIGN.md, driver-shim): a small memory-mapped file with fixed slots
// in which the notification loop notes each notification id it has received and not yet
// answered. A notification received by an agent that then dies stays blocked, and its id dies
// with the agent; the journal outlives the agent (its stores are in the page cache the moment
// they are made), so the next agent can answer those ids first (see
// SeccompInterceptionSource::RecoverInflight).
//
// File layout (host byte order; the file never leaves the host): a 64-byte header
// {char magic[8] = "SHTLJRN1", u32 version = 1, u32 slot_count, 48 bytes zero}, then slot_count
// slots of {u64 id, u64 state (1: in flight, 0: free)}.
#ifndef SHUTTLE_AGENT_INTERCEPT_INFLIGHT_JOURNAL_H_
#define SHUTTLE_AGENT_INTERCEPT_INFLIGHT_JOURNAL_H_

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
  // unjournaled). No syscall, no allocation. Not thread-safe: the loop thread only.
  int Record(uint64_t id);

  // Frees a slot returned by Record (ignores -1).
  void Clear(int slot);

  // Ids that were in flight when the journal was opened.
  const std::vector<uint64_t>& leftover() const { return leftover_; }
  void ForgetLeftover() { leftover_.clear(); }

  uint32_t slot_count() const { return slot_count_; }
  size_t in_use() const { return slot_count_ - free_.size(); }

 private:
  struct Slot;
  InflightJournal(UniqueFd fd, void* map, size_t map_size, uint32_t slots,
                  std::vector<uint64_t> leftover);
  Slot* slots() const;

  UniqueFd fd_;
  void* map_;
  size_t map_size_;
  uint32_t slot_count_;
  std::vector<int> free_;  // Stack of free slot indices; preallocated to slot_count_.
  std::vector<uint64_t> leftover_;
};

}  // namespace shuttle::agent::intercept

#endif  // SHUTTLE_AGENT_INTERCEPT_INFLIGHT_JOURNAL_H_
