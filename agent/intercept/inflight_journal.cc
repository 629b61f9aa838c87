#include "agent/intercept/inflight_journal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace shuttle::agent::intercept {
namespace {

constexpr char kMagic[8] = {'S', 'H', 'T', 'L', 'J', 'R', 'N', '1'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderSize = 64;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t slot_count;
  uint64_t reserved[6];
};
static_assert(sizeof(Header) == kHeaderSize);

absl::Status ErrnoStatus(int err, const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

// mkdir -p of the parent directories of `path`, mode 0700.
absl::Status MakeParents(const std::string& path) {
  for (size_t pos = path.find('/', 1); pos != std::string::npos; pos = path.find('/', pos + 1)) {
    std::string dir = path.substr(0, pos);
    if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return ErrnoStatus(errno, absl::StrCat("mkdir ", dir));
    }
  }
  return absl::OkStatus();
}

}  // namespace

struct InflightJournal::Slot {
  uint64_t id;
  uint64_t state;
};

absl::StatusOr<std::unique_ptr<InflightJournal>> InflightJournal::Open(const std::string& path,
                                                                       uint32_t slots) {
  if (slots < 1 || slots > kMaxSlots) {
    return absl::InvalidArgumentError(
        absl::StrCat("journal slots must be in [1, ", kMaxSlots, "], not ", slots));
  }
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat("journal path must be absolute: '", path, "'"));
  }
  if (absl::Status s = MakeParents(path); !s.ok()) return s;
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("open ", path));
  if (flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("journal ", path, " is held by another running agent"));
    }
    return ErrnoStatus(errno, absl::StrCat("flock ", path));
  }

  // Collect what a previous owner left in flight (bounded by the size it declared and by the
  // file's actual size; a file that is not a journal is ignored and overwritten).
  std::vector<uint64_t> leftover;
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("fstat ", path));
  Header old;
  if (st.st_size >= static_cast<off_t>(kHeaderSize) &&
      pread(fd.get(), &old, sizeof(old), 0) == static_cast<ssize_t>(sizeof(old)) &&
      std::memcmp(old.magic, kMagic, sizeof(kMagic)) == 0 && old.version == kVersion &&
      old.slot_count <= kMaxSlots) {
    uint64_t fit = (static_cast<uint64_t>(st.st_size) - kHeaderSize) / sizeof(Slot);
    uint64_t count = old.slot_count < fit ? old.slot_count : fit;
    std::vector<Slot> old_slots(count);
    ssize_t want = static_cast<ssize_t>(count * sizeof(Slot));
    if (count > 0 && pread(fd.get(), old_slots.data(), want, kHeaderSize) == want) {
      for (const Slot& s : old_slots) {
        if (s.state == 1) leftover.push_back(s.id);
      }
    }
  }

  size_t size = kHeaderSize + size_t{slots} * sizeof(Slot);
  if (ftruncate(fd.get(), 0) != 0 || ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("ftruncate ", path));
  }
  void* map = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (map == MAP_FAILED) return ErrnoStatus(errno, absl::StrCat("mmap ", path));
  Header header{};
  std::memcpy(header.magic, kMagic, sizeof(kMagic));
  header.version = kVersion;
  header.slot_count = slots;
  std::memcpy(map, &header, sizeof(header));  // Slots are zero (free) after the truncation.
  return std::unique_ptr<InflightJournal>(
      new InflightJournal(std::move(fd), map, size, slots, std::move(leftover)));
}

InflightJournal::InflightJournal(UniqueFd fd, void* map, size_t map_size, uint32_t slots,
                                 std::vector<uint64_t> leftover)
    : fd_(std::move(fd)),
      map_(map),
      map_size_(map_size),
      slot_count_(slots),
      leftover_(std::move(leftover)) {
  free_.reserve(slots);
  for (int i = static_cast<int>(slots) - 1; i >= 0; --i) free_.push_back(i);
  released_next_ = std::make_unique<std::atomic<int32_t>[]>(slots);
}

InflightJournal::~InflightJournal() { munmap(map_, map_size_); }

InflightJournal::Slot* InflightJournal::slots() const {
  return reinterpret_cast<Slot*>(static_cast<char*>(map_) + kHeaderSize);
}

int InflightJournal::Record(uint64_t id) {
  if (free_.empty()) {
    Reclaim();
    if (free_.empty()) return -1;
  }
  int slot = free_.back();
  free_.pop_back();
  Slot& s = slots()[slot];
  // The id before the state: a reader never sees "in flight" with a stale id.
  std::atomic_ref<uint64_t>(s.id).store(id, std::memory_order_relaxed);
  std::atomic_ref<uint64_t>(s.state).store(1, std::memory_order_release);
  return slot;
}

void InflightJournal::Clear(int slot) {
  if (slot < 0 || static_cast<uint32_t>(slot) >= slot_count_) return;
  std::atomic_ref<uint64_t>(slots()[slot].state).store(0, std::memory_order_release);
  free_.push_back(slot);
}

void InflightJournal::Release(int slot) {
  if (slot < 0 || static_cast<uint32_t>(slot) >= slot_count_) return;
  std::atomic_ref<uint64_t>(slots()[slot].state).store(0, std::memory_order_release);
  released_count_.fetch_add(1, std::memory_order_relaxed);
  int32_t head = released_head_.load(std::memory_order_relaxed);
  do {
    released_next_[static_cast<size_t>(slot)].store(head, std::memory_order_relaxed);
  } while (!released_head_.compare_exchange_weak(head, slot, std::memory_order_release,
                                                 std::memory_order_relaxed));
}

void InflightJournal::Reclaim() {
  int32_t slot = released_head_.exchange(-1, std::memory_order_acquire);
  while (slot >= 0) {
    free_.push_back(slot);
    released_count_.fetch_sub(1, std::memory_order_relaxed);
    slot = released_next_[static_cast<size_t>(slot)].load(std::memory_order_relaxed);
  }
}

}  // namespace shuttle::agent::intercept
