#include "agent/audit/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "agent/intercept/unique_fd.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace shuttle::agent {
namespace {

using intercept::UniqueFd;

constexpr size_t kHeaderBytes = 8;  // u32 length + u32 CRC32.
// No record the agent builds comes near this (names are bounded by the interception's
// buffers); a length field above it is corruption, not a record.
constexpr uint32_t kMaxRecordBytes = 1 << 20;
constexpr uint64_t kMinSpoolBytes = 4096;
constexpr char kSegmentPrefix[] = "segment-";
constexpr char kSegmentSuffix[] = ".log";
constexpr char kCursorMagic[] = "shuttle-audit-cursor";

std::string Errno(int error) { return std::strerror(error); }

absl::Status ErrnoStatus(int error, absl::string_view what) {
  return absl::Status(error == ENOSPC || error == EDQUOT ? absl::StatusCode::kResourceExhausted
                                                         : absl::StatusCode::kInternal,
                      absl::StrCat(what, ": ", Errno(error)));
}

void PutU32(uint32_t v, char* out) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

uint32_t GetU32(const char* in) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) {
    v |= static_cast<uint32_t>(static_cast<unsigned char>(in[i])) << (8 * i);
  }
  return v;
}

uint32_t Crc32(std::string_view data) {
  return static_cast<uint32_t>(
      ::crc32(0L, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size())));
}

// Reads exactly `n` bytes at `offset`; false with errno set on an error, with errno 0 at EOF.
bool PreadFull(int fd, char* buf, size_t n, uint64_t offset) {
  size_t done = 0;
  while (done < n) {
    ssize_t got = ::pread(fd, buf + done, n - done, static_cast<off_t>(offset + done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      if (got == 0) errno = 0;
      return false;
    }
    done += static_cast<size_t>(got);
  }
  return true;
}

bool WriteFull(int fd, std::string_view data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t put = ::write(fd, data.data() + done, data.size() - done);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return false;
    done += static_cast<size_t>(put);
  }
  return true;
}

absl::Status FsyncDir(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd || ::fsync(fd.get()) != 0) return ErrnoStatus(errno, absl::StrCat("fsync ", dir));
  return absl::OkStatus();
}

absl::Status MakeDirs(const std::string& path) {
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      std::string partial = path.substr(0, i);
      if (::mkdir(partial.c_str(), 0700) != 0 && errno != EEXIST) {
        return ErrnoStatus(errno, absl::StrCat("cannot create directory ", partial));
      }
    }
  }
  return absl::OkStatus();
}

// The sequence number at the end of an id "<host>/<boot>/<seq>"; 0 if it has none.
uint64_t SeqOf(const std::string& id) {
  size_t slash = id.rfind('/');
  uint64_t seq = 0;
  if (slash == std::string::npos || !absl::SimpleAtoi(id.substr(slash + 1), &seq)) return 0;
  return seq;
}

// The segment number in a file name "segment-<digits>.log", or 0 if it is not one.
uint64_t SegmentNumber(std::string_view name) {
  const std::string_view prefix = kSegmentPrefix, suffix = kSegmentSuffix;
  if (name.size() <= prefix.size() + suffix.size() || name.substr(0, prefix.size()) != prefix ||
      name.substr(name.size() - suffix.size()) != suffix) {
    return 0;
  }
  std::string_view digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  uint64_t n = 0;
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      !absl::SimpleAtoi(absl::string_view(digits.data(), digits.size()), &n)) {
    return 0;
  }
  return n;
}

// Parses the cursor file: "shuttle-audit-cursor 1 <segment> <offset> <last-seq>".
bool ParseCursor(absl::string_view text, SpoolPosition* position, uint64_t* last_seq) {
  std::vector<absl::string_view> fields =
      absl::StrSplit(text, absl::ByAnyChar(" \n"), absl::SkipEmpty());
  return fields.size() == 5 && fields[0] == kCursorMagic && fields[1] == "1" &&
         absl::SimpleAtoi(fields[2], &position->segment) &&
         absl::SimpleAtoi(fields[3], &position->offset) && absl::SimpleAtoi(fields[4], last_seq);
}

enum class ReadResult { kOk, kCorrupt, kIoError };

// Reads and checks the record at `offset` of a segment whose valid data ends at `limit`.
// kCorrupt names what is wrong in `*why`; kIoError leaves errno set.
ReadResult ReadRecord(int fd, uint64_t offset, uint64_t limit, std::string* payload,
                      std::string* why) {
  if (limit - offset < kHeaderBytes) {
    *why = absl::StrCat("torn record header (", limit - offset, " bytes)");
    return ReadResult::kCorrupt;
  }
  char header[kHeaderBytes];
  if (!PreadFull(fd, header, sizeof(header), offset)) {
    if (errno != 0) return ReadResult::kIoError;
    *why = "file shorter than expected";
    return ReadResult::kCorrupt;
  }
  const uint32_t length = GetU32(header);
  if (length > kMaxRecordBytes || length > limit - offset - kHeaderBytes) {
    *why = absl::StrCat("record length ", length, " exceeds the ",
                        std::min<uint64_t>(kMaxRecordBytes, limit - offset - kHeaderBytes),
                        " bytes available");
    return ReadResult::kCorrupt;
  }
  payload->resize(length);
  if (!PreadFull(fd, payload->data(), length, offset + kHeaderBytes)) {
    if (errno != 0) return ReadResult::kIoError;
    *why = "file shorter than expected";
    return ReadResult::kCorrupt;
  }
  if (Crc32(*payload) != GetU32(header + 4)) {
    *why = "CRC mismatch";
    return ReadResult::kCorrupt;
  }
  return ReadResult::kOk;
}

// A segment as Open() found it: valid bytes, records in them, and where the first bad record
// starts (== valid bytes; `bad` says whether there is one).
struct ScannedSegment {
  uint64_t file_bytes = 0;
  uint64_t valid_bytes = 0;
  uint64_t records = 0;
  uint64_t last_seq = 0;
  bool bad = false;
  std::string why;
  // The first record boundary at or after `boundary_for`, and the records before it.
  uint64_t boundary = 0;
  uint64_t boundary_index = 0;
};

absl::StatusOr<ScannedSegment> ScanSegment(const std::string& path, uint64_t boundary_for) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("open ", path));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", path));
  ScannedSegment out;
  out.file_bytes = static_cast<uint64_t>(st.st_size);
  bool boundary_found = false;
  std::string payload;
  std::string last_payload;
  while (out.valid_bytes < out.file_bytes) {
    if (!boundary_found && out.valid_bytes >= boundary_for) {
      boundary_found = true;
      out.boundary = out.valid_bytes;
      out.boundary_index = out.records;
    }
    ReadResult r = ReadRecord(fd.get(), out.valid_bytes, out.file_bytes, &payload, &out.why);
    if (r == ReadResult::kIoError) return ErrnoStatus(errno, absl::StrCat("read ", path));
    if (r == ReadResult::kCorrupt) {
      out.bad = true;
      break;
    }
    out.valid_bytes += kHeaderBytes + payload.size();
    ++out.records;
    last_payload.swap(payload);
  }
  if (!boundary_found) {
    out.boundary = out.valid_bytes;
    out.boundary_index = out.records;
  }
  v1::AuditRecord last;
  if (out.records > 0 && last.ParseFromString(last_payload)) out.last_seq = SeqOf(last.id());
  return out;
}

}  // namespace

AuditSpool::AuditSpool(AuditSpoolOptions options, prometheus::Registry& metrics)
    : options_(std::move(options)),
      records_gauge_(prometheus::BuildGauge()
                         .Name("shuttle_agent_audit_spool_records")
                         .Help("Audit records on disk not yet acknowledged by the controller")
                         .Register(metrics)
                         .Add({})),
      bytes_gauge_(prometheus::BuildGauge()
                       .Name("shuttle_agent_audit_spool_bytes")
                       .Help("Size of the audit spool's segment files (bounded by "
                             "--audit-spool-max-bytes)")
                       .Register(metrics)
                       .Add({})),
      dropped_(prometheus::BuildCounter()
                   .Name("shuttle_agent_audit_dropped_total")
                   .Help("Audit records dropped, by reason")
                   .Register(metrics)),
      dropped_queue_full_(dropped_.Add({{"reason", "queue_full"}})),
      dropped_spool_full_(dropped_.Add({{"reason", "spool_full"}})),
      dropped_corrupt_(dropped_.Add({{"reason", "corrupt"}})),
      dropped_too_large_(dropped_.Add({{"reason", "too_large"}})),
      dropped_io_error_(dropped_.Add({{"reason", "io_error"}})),
      dropped_stopped_(dropped_.Add({{"reason", "stopped"}})) {}

absl::StatusOr<std::unique_ptr<AuditSpool>> AuditSpool::Open(AuditSpoolOptions options,
                                                             prometheus::Registry& metrics) {
  if (options.dir.empty()) return absl::InvalidArgumentError("audit spool: no directory given");
  if (options.host_id.empty()) return absl::InvalidArgumentError("audit spool: empty host id");
  if (options.max_bytes < kMinSpoolBytes) {
    return absl::InvalidArgumentError(absl::StrCat("audit spool max bytes ", options.max_bytes,
                                                   " is too small (at least ", kMinSpoolBytes,
                                                   ")"));
  }
  if (options.queue_records == 0) {
    return absl::InvalidArgumentError("audit spool: queue must hold at least one record");
  }
  options.segment_bytes =
      std::clamp<uint64_t>(options.segment_bytes, kHeaderBytes + 1, options.max_bytes / 4);
  if (options.boot_id.empty()) {
    absl::BitGen gen;
    options.boot_id = absl::StrFormat("%016x", absl::Uniform<uint64_t>(gen));
  }
  std::unique_ptr<AuditSpool> spool(new AuditSpool(std::move(options), metrics));
  SHUTTLE_RETURN_IF_ERROR(spool->Recover());
  spool->opened_ = true;
  if (spool->options_.start_writer) spool->StartWriter();
  return spool;
}

AuditSpool::~AuditSpool() {
  Stop();
  if (lock_fd_ >= 0) ::close(lock_fd_);  // Releases the flock.
}

std::string AuditSpool::SegmentPath(uint64_t segment) const {
  return absl::StrFormat("%s/%s%020u%s", options_.dir, kSegmentPrefix, segment, kSegmentSuffix);
}

absl::Status AuditSpool::Recover() {
  const std::string& dir = options_.dir;
  SHUTTLE_RETURN_IF_ERROR(MakeDirs(dir));
  const std::string lock_path = dir + "/lock";
  lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0) return ErrnoStatus(errno, absl::StrCat("open ", lock_path));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("audit spool ", dir, " is in use by another process (", lock_path,
                       " is locked): is another agent running with this data directory?"));
    }
    return ErrnoStatus(errno, absl::StrCat("lock ", lock_path));
  }

  // The cursor. An unreadable one means "nothing acknowledged": everything is sent again and
  // the controller drops what it already has, which loses nothing.
  SpoolPosition cursor;
  uint64_t acked_seq = 0;
  const std::string cursor_path = dir + "/cursor";
  if (UniqueFd fd(::open(cursor_path.c_str(), O_RDONLY | O_CLOEXEC)); fd) {
    char buf[256];
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) return ErrnoStatus(errno, absl::StrCat("read ", cursor_path));
    if (!ParseCursor(absl::string_view(buf, static_cast<size_t>(n)), &cursor, &acked_seq)) {
      SHUTTLE_LOG(WARNING) << "audit spool: cannot parse " << cursor_path
                           << "; sending every spooled record again (the controller drops "
                              "duplicates)";
      cursor = SpoolPosition{};
      acked_seq = 0;
    }
  } else if (errno != ENOENT) {
    return ErrnoStatus(errno, absl::StrCat("open ", cursor_path));
  }
  ::unlink((cursor_path + ".tmp").c_str());

  std::vector<uint64_t> numbers;
  {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return ErrnoStatus(errno, absl::StrCat("list ", dir));
    while (struct dirent* entry = ::readdir(d)) {
      if (uint64_t n = SegmentNumber(entry->d_name); n != 0) numbers.push_back(n);
    }
    ::closedir(d);
  }
  std::sort(numbers.begin(), numbers.end());

  uint64_t last_seq = acked_seq;
  bool deleted = false;
  absl::MutexLock lock(&state_mu_);
  for (uint64_t number : numbers) {
    const std::string path = SegmentPath(number);
    if (number < cursor.segment) {  // Acknowledged; the deletion did not happen before a crash.
      if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
        return ErrnoStatus(errno, absl::StrCat("delete acknowledged segment ", path));
      }
      deleted = true;
      continue;
    }
    SHUTTLE_ASSIGN_OR_RETURN(ScannedSegment scanned,
                             ScanSegment(path, number == cursor.segment ? cursor.offset : 0));
    if (scanned.bad) {
      SHUTTLE_LOG(WARNING) << "audit spool: " << path << ": " << scanned.why << " at offset "
                           << scanned.valid_bytes << "; truncating "
                           << scanned.file_bytes - scanned.valid_bytes << " bytes after "
                           << scanned.records << " good records";
      UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
      if (!fd || ::ftruncate(fd.get(), static_cast<off_t>(scanned.valid_bytes)) != 0 ||
          ::fsync(fd.get()) != 0) {
        return ErrnoStatus(errno, absl::StrCat("truncate the corrupt tail of ", path));
      }
      dropped_corrupt_.Increment();
    }
    if (number == cursor.segment) {
      if (scanned.boundary != cursor.offset) {
        SHUTTLE_LOG(WARNING) << "audit spool: cursor offset " << cursor.offset << " in " << path
                             << " is not a record boundary; continuing at " << scanned.boundary;
      }
      cursor.offset = scanned.boundary;
      cursor_index_ = scanned.boundary_index;
    }
    segments_[number] = Segment{scanned.valid_bytes, scanned.records};
    disk_bytes_ += scanned.valid_bytes;
    last_seq = std::max(last_seq, scanned.last_seq);
  }
  if (deleted) SHUTTLE_RETURN_IF_ERROR(FsyncDir(dir));

  const uint64_t last_segment = segments_.empty() ? 0 : segments_.rbegin()->first;
  next_segment_ = std::max(last_segment, cursor.segment) + 1;
  if (!segments_.contains(cursor.segment)) {
    // The cursor's segment is gone: continue at the next one there is, or the next new one.
    auto next = segments_.upper_bound(cursor.segment);
    cursor = {next == segments_.end() ? next_segment_ : next->first, 0};
    cursor_index_ = 0;
  }
  cursor_ = cursor;
  acked_seq_ = acked_seq;
  // Appends go to the last segment while it has room.
  if (last_segment != 0) {
    active_segment_ = last_segment;
    active_bytes_ = segments_[last_segment].bytes;
  }
  {
    absl::MutexLock queue_lock(&queue_mu_);
    next_seq_ = last_seq + 1;
  }
  UpdateGaugesLocked();
  SHUTTLE_LOG(INFO) << "audit spool " << dir << ": " << UnackedRecordsLocked()
                    << " records to upload in " << segments_.size() << " segments (" << disk_bytes_
                    << " bytes); boot " << options_.boot_id << ", next sequence " << last_seq + 1;
  return absl::OkStatus();
}

void AuditSpool::Submit(v1::AuditRecord record) {
  absl::MutexLock lock(&queue_mu_);
  const uint64_t seq = next_seq_++;
  if (stopping_) {
    dropped_stopped_.Increment();
    return;
  }
  if (queue_.size() >= options_.queue_records) {
    dropped_queue_full_.Increment();
    return;
  }
  queue_.push_back(Queued{seq, std::move(record)});
  last_queued_seq_ = seq;
}

bool AuditSpool::Flush(absl::Duration timeout) {
  absl::MutexLock lock(&queue_mu_);
  const uint64_t target = last_queued_seq_;
  flush_requested_ = true;
  auto done = [this, target]() ABSL_SHARED_LOCKS_REQUIRED(queue_mu_) {
    return processed_seq_ >= target || writer_done_;
  };
  queue_mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  return processed_seq_ >= target;
}

void AuditSpool::StartWriter() {
  absl::MutexLock lock(&queue_mu_);
  if (writer_started_) return;
  writer_started_ = true;
  writer_ = std::thread([this] { WriterLoop(); });
}

void AuditSpool::Stop() {
  std::call_once(stop_once_, [this] {
    if (opened_) StartWriter();  // So that what is queued gets written.
    {
      absl::MutexLock lock(&queue_mu_);
      stopping_ = true;
    }
    if (writer_.joinable()) writer_.join();
  });
}

// Records that make the writer commit without waiting out the commit delay.
constexpr size_t kCommitBatch = 256;

void AuditSpool::WriterLoop() {
  while (true) {
    std::deque<Queued> batch;
    bool stop = false;
    {
      absl::MutexLock lock(&queue_mu_);
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(queue_mu_) {
        return !queue_.empty() || stopping_;
      };
      queue_mu_.Await(absl::Condition(&ready));
      if (!stopping_ && !flush_requested_ && options_.commit_delay > absl::ZeroDuration()) {
        // Group commit: let more records join this fsync (see AuditSpoolOptions::commit_delay).
        auto go = [this]() ABSL_SHARED_LOCKS_REQUIRED(queue_mu_) {
          return stopping_ || flush_requested_ || queue_.size() >= kCommitBatch;
        };
        queue_mu_.AwaitWithTimeout(absl::Condition(&go), options_.commit_delay);
      }
      flush_requested_ = false;
      batch.swap(queue_);
      stop = stopping_;
    }
    if (!batch.empty()) {
      const uint64_t last = batch.back().seq;
      WriteBatch(batch);
      absl::MutexLock lock(&queue_mu_);
      processed_seq_ = last;
    }
    // Submit() queues nothing once stopping_ is set, so `batch` held the last records.
    if (stop) break;
  }
  if (active_fd_ >= 0) ::close(active_fd_);
  active_fd_ = -1;
  absl::MutexLock lock(&queue_mu_);
  writer_done_ = true;
}

void AuditSpool::Drop(prometheus::Counter& counter, uint64_t n) {
  counter.Increment(static_cast<double>(n));
}

void AuditSpool::WriteBatch(std::deque<Queued>& batch) {
  std::string pending;  // Framed records for the active segment.
  uint64_t pending_records = 0;
  uint64_t full_drops = 0;
  std::string payload;
  for (Queued& queued : batch) {
    v1::AuditRecord& record = queued.record;
    record.set_id(absl::StrCat(options_.host_id, "/", options_.boot_id, "/", queued.seq));
    record.set_host_id(options_.host_id);
    if (record.interaction().host_id().empty()) {
      record.mutable_interaction()->set_host_id(options_.host_id);
    }
    payload.clear();
    record.SerializeToString(&payload);
    if (payload.size() > kMaxRecordBytes) {
      SHUTTLE_LOG(WARNING) << "audit spool: dropping record " << record.id() << " of "
                           << payload.size() << " bytes (limit " << kMaxRecordBytes << ")";
      Drop(dropped_too_large_, 1);
      continue;
    }
    const uint64_t framed = kHeaderBytes + payload.size();
    uint64_t disk_bytes;
    {
      absl::MutexLock lock(&state_mu_);
      disk_bytes = disk_bytes_;
    }
    if (disk_bytes + pending.size() + framed > options_.max_bytes) {
      ++full_drops;
      continue;
    }
    const bool fits =
        active_fd_ >= 0 && (active_bytes_ + pending.size() == 0 ||
                            active_bytes_ + pending.size() + framed <= options_.segment_bytes);
    if (!fits) {
      if (!pending.empty()) Append(pending, pending_records);
      pending.clear();
      pending_records = 0;
      absl::Status opened = OpenOrRotate(framed);
      if (!opened.ok()) {
        SHUTTLE_LOG(ERROR) << "audit spool: dropping a record: " << opened;
        Drop(dropped_io_error_, 1);
        continue;
      }
    }
    char header[kHeaderBytes];
    PutU32(static_cast<uint32_t>(payload.size()), header);
    PutU32(Crc32(payload), header + 4);
    pending.append(header, sizeof(header));
    pending.append(payload);
    ++pending_records;
  }
  if (!pending.empty()) Append(pending, pending_records);

  if (full_drops > 0) {
    Drop(dropped_spool_full_, full_drops);
    if (!full_logged_) {
      SHUTTLE_LOG(WARNING) << "audit spool " << options_.dir << " is full (" << options_.max_bytes
                           << " bytes): dropping new records until the controller acknowledges "
                              "some (shuttle_agent_audit_dropped_total{reason=\"spool_full\"})";
      full_logged_ = true;
    }
  } else if (full_logged_ && pending_records > 0) {
    SHUTTLE_LOG(INFO) << "audit spool " << options_.dir << " has room again";
    full_logged_ = false;
  }
}

absl::Status AuditSpool::OpenOrRotate(uint64_t framed) {
  // After Open(), the last segment takes appends while it has room.
  if (active_fd_ < 0 && active_segment_ != 0 &&
      (active_bytes_ == 0 || active_bytes_ + framed <= options_.segment_bytes)) {
    const std::string path = SegmentPath(active_segment_);
    active_fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (active_fd_ >= 0) return absl::OkStatus();
    SHUTTLE_LOG(WARNING) << "audit spool: cannot append to " << path << " (" << Errno(errno)
                         << "); starting a new segment";
  }
  return Rotate();
}

absl::Status AuditSpool::Rotate() {
  if (active_fd_ >= 0) {
    ::close(active_fd_);  // Every append was fsynced already.
    active_fd_ = -1;
  }
  uint64_t number;
  {
    absl::MutexLock lock(&state_mu_);
    number = next_segment_++;
  }
  const std::string path = SegmentPath(number);
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("create ", path));
  SHUTTLE_RETURN_IF_ERROR(FsyncDir(options_.dir));
  {
    absl::MutexLock lock(&state_mu_);
    segments_[number] = Segment{};
    UpdateGaugesLocked();
  }
  active_fd_ = fd.release();
  active_segment_ = number;
  active_bytes_ = 0;
  return absl::OkStatus();
}

bool AuditSpool::Append(const std::string& framed, uint64_t records) {
  if (!WriteFull(active_fd_, framed) || ::fdatasync(active_fd_) != 0) {
    const int error = errno;
    SHUTTLE_LOG(ERROR) << "audit spool: writing " << SegmentPath(active_segment_) << ": "
                       << Errno(error) << "; dropping " << records << " records";
    // Cut what was half written; if even that fails, the next Open() truncates it. Either way
    // the next record starts a new segment, and readers never look past the valid bytes.
    if (::ftruncate(active_fd_, static_cast<off_t>(active_bytes_)) == 0) {
      ::fdatasync(active_fd_);
    }
    ::close(active_fd_);
    active_fd_ = -1;
    active_segment_ = 0;
    Drop(dropped_io_error_, records);
    return false;
  }
  active_bytes_ += framed.size();
  absl::MutexLock lock(&state_mu_);
  Segment& segment = segments_[active_segment_];
  segment.bytes += framed.size();
  segment.records += records;
  disk_bytes_ += framed.size();
  written_ += records;
  UpdateGaugesLocked();
  return true;
}

uint64_t AuditSpool::UnackedRecordsLocked() const {
  uint64_t n = 0;
  for (auto it = segments_.lower_bound(cursor_.segment); it != segments_.end(); ++it) {
    n += it->second.records;
  }
  return segments_.contains(cursor_.segment) ? n - std::min(n, cursor_index_) : n;
}

uint64_t AuditSpool::UnackedBytesLocked() const {
  uint64_t n = 0;
  for (auto it = segments_.lower_bound(cursor_.segment); it != segments_.end(); ++it) {
    n += it->second.bytes;
  }
  return segments_.contains(cursor_.segment) ? n - std::min(n, cursor_.offset) : n;
}

void AuditSpool::UpdateGaugesLocked() {
  records_gauge_.Set(static_cast<double>(UnackedRecordsLocked()));
  bytes_gauge_.Set(static_cast<double>(disk_bytes_));
}

absl::StatusOr<AuditBatch> AuditSpool::ReadBatch(size_t max_records, uint64_t max_bytes) {
  struct Snapshot {
    uint64_t number;
    Segment segment;
    bool sealed;  // A later segment exists: this one takes no more appends.
  };
  std::vector<Snapshot> snapshot;
  AuditBatch batch;
  uint64_t index;
  {
    absl::ReaderMutexLock lock(&state_mu_);
    batch.start = cursor_;
    index = cursor_index_;
    for (auto it = segments_.lower_bound(cursor_.segment); it != segments_.end(); ++it) {
      snapshot.push_back(Snapshot{it->first, it->second, std::next(it) != segments_.end()});
    }
  }
  SpoolPosition pos = batch.start;
  std::string payload, why;
  bool full = false;
  for (size_t i = 0; i < snapshot.size() && !full; ++i) {
    const Snapshot& s = snapshot[i];
    if (s.number != pos.segment) {
      pos = {s.number, 0};
      index = 0;
    }
    const std::string path = SegmentPath(s.number);
    UniqueFd fd;
    if (pos.offset < s.segment.bytes) {
      fd.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd && errno != ENOENT) return ErrnoStatus(errno, absl::StrCat("open ", path));
      if (!fd) why = "file missing";
    }
    while (pos.offset < s.segment.bytes) {
      if (batch.records.size() >= max_records) {
        full = true;
        break;
      }
      ReadResult r = fd ? ReadRecord(fd.get(), pos.offset, s.segment.bytes, &payload, &why)
                        : ReadResult::kCorrupt;
      v1::AuditRecord record;
      if (r == ReadResult::kIoError) return ErrnoStatus(errno, absl::StrCat("read ", path));
      if (r == ReadResult::kOk && !record.ParseFromString(payload)) {
        why = "record does not parse";
        r = ReadResult::kCorrupt;
      }
      if (r == ReadResult::kCorrupt) {
        // The rest of this segment (up to what the writer had written) can't be framed: skip
        // it. Whatever is written later starts on a record boundary again.
        const uint64_t lost = s.segment.records - std::min(s.segment.records, index);
        SHUTTLE_LOG(WARNING) << "audit spool: " << path << ": " << why << " at offset "
                             << pos.offset << "; skipping " << lost << " records";
        batch.corrupt += lost;
        pos.offset = s.segment.bytes;
        index = s.segment.records;
        break;
      }
      if (!batch.records.empty() && batch.payload_bytes + payload.size() > max_bytes) {
        full = true;
        break;
      }
      batch.payload_bytes += payload.size();
      batch.last_seq = std::max(batch.last_seq, SeqOf(record.id()));
      batch.records.push_back(std::move(record));
      pos.offset += kHeaderBytes + payload.size();
      ++index;
    }
    if (!full && s.sealed) {
      pos = {snapshot[i + 1].number, 0};
      index = 0;
    }
    if (!s.sealed) break;
  }
  batch.end = pos;
  batch.end_index = index;
  return batch;
}

absl::Status AuditSpool::WriteCursor(const SpoolPosition& position, uint64_t last_seq) {
  const std::string path = options_.dir + "/cursor";
  const std::string tmp = path + ".tmp";
  const std::string content = absl::StrCat(kCursorMagic, " 1 ", position.segment, " ",
                                           position.offset, " ", last_seq, "\n");
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd || !WriteFull(fd.get(), content) || ::fsync(fd.get()) != 0) {
      return ErrnoStatus(errno, absl::StrCat("write ", tmp));
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("rename ", tmp, " to ", path));
  }
  return FsyncDir(options_.dir);
}

absl::Status AuditSpool::Acknowledge(const AuditBatch& batch) {
  uint64_t last_seq;
  {
    absl::ReaderMutexLock lock(&state_mu_);
    if (!(batch.start == cursor_)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "audit batch was read at segment ", batch.start.segment, " offset ", batch.start.offset,
          " but the cursor is at segment ", cursor_.segment, " offset ", cursor_.offset));
    }
    last_seq = std::max(acked_seq_, batch.last_seq);
  }
  if (!batch.advances()) return absl::OkStatus();
  SHUTTLE_RETURN_IF_ERROR(WriteCursor(batch.end, last_seq));
  std::vector<uint64_t> doomed;
  {
    absl::MutexLock lock(&state_mu_);
    cursor_ = batch.end;
    cursor_index_ = batch.end_index;
    acked_seq_ = last_seq;
    for (auto it = segments_.begin(); it != segments_.end() && it->first < cursor_.segment;) {
      doomed.push_back(it->first);
      disk_bytes_ -= it->second.bytes;
      it = segments_.erase(it);
    }
    UpdateGaugesLocked();
  }
  for (uint64_t number : doomed) {
    const std::string path = SegmentPath(number);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      // Harmless: the next Open() deletes it (it is before the cursor).
      SHUTTLE_LOG(WARNING) << "audit spool: cannot delete " << path << ": " << Errno(errno);
    }
  }
  if (!doomed.empty()) {
    absl::Status synced = FsyncDir(options_.dir);
    if (!synced.ok()) {
      SHUTTLE_LOG(WARNING) << "audit spool: " << synced;
    }
  }
  if (batch.corrupt > 0) Drop(dropped_corrupt_, batch.corrupt);
  return absl::OkStatus();
}

bool AuditSpool::WaitForRecords(size_t min_records, uint64_t min_bytes, absl::Time deadline,
                                const std::atomic<bool>& cancel) {
  absl::MutexLock lock(&state_mu_);
  auto there = [&]() ABSL_SHARED_LOCKS_REQUIRED(state_mu_) {
    return UnackedRecordsLocked() >= min_records || UnackedBytesLocked() >= min_bytes;
  };
  auto done = [&]() ABSL_SHARED_LOCKS_REQUIRED(state_mu_) { return cancel.load() || there(); };
  state_mu_.AwaitWithDeadline(absl::Condition(&done), deadline);
  return there();
}

void AuditSpool::WakeWaiters() {
  // absl::Mutex re-evaluates waiters' conditions when it is released.
  absl::MutexLock lock(&state_mu_);
}

AuditSpoolStats AuditSpool::stats() const {
  AuditSpoolStats out;
  {
    absl::ReaderMutexLock lock(&state_mu_);
    out.unacked_records = UnackedRecordsLocked();
    out.unacked_bytes = UnackedBytesLocked();
    out.disk_bytes = disk_bytes_;
    out.segments = segments_.size();
    out.written = written_;
  }
  auto count = [](const prometheus::Counter& c) { return static_cast<uint64_t>(c.Value()); };
  out.dropped_queue_full = count(dropped_queue_full_);
  out.dropped_spool_full = count(dropped_spool_full_);
  out.dropped_corrupt = count(dropped_corrupt_);
  out.dropped_too_large = count(dropped_too_large_);
  out.dropped_io_error = count(dropped_io_error_);
  out.dropped_stopped = count(dropped_stopped_);
  return out;
}

}  // namespace shuttle::agent
