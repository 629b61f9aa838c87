// The agent's audit spool (DESIGN.md section 2, "Audit"): an AuditSink that queues each record
// in memory without blocking the notification loop, and a writer thread that appends the records
// to CRC-checked segment files on disk, bounded in size; the uploader (uploader.h) reads what is
// not yet acknowledged and acknowledges it by advancing a durable cursor. Drops are counted.
//
// Files in the spool directory (<data-dir>/audit):
//   segment-<20 digits>.log  records, each: u32 length, u32 CRC32 of the payload (both little
//                            endian), payload = one serialized v1::AuditRecord
//   cursor                   "shuttle-audit-cursor 1 <segment> <offset> <last-seq>": every record
//                            before byte <offset> of segment <segment> is acknowledged; written
//                            atomically (tmp + fsync + rename + fsync of the directory)
//   lock                     flock()ed while a spool has the directory open
#ifndef SHUTTLE_AGENT_AUDIT_SPOOL_H_
#define SHUTTLE_AGENT_AUDIT_SPOOL_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/audit/audit_sink.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "shuttle/v1/types.pb.h"

namespace shuttle::agent {

struct AuditSpoolOptions {
  std::string dir;      // Created (0700) if missing.
  std::string host_id;  // Stamped on every record; part of its id.
  // This agent run's id, part of every record id; empty: 16 random hex digits.
  std::string boot_id;
  // Bound on the segment files' total size (at least 4096); a record that does not fit is dropped
  // (counted as "spool_full") until acknowledged segments are deleted.
  uint64_t max_bytes = uint64_t{64} << 20;
  // A segment is closed and a new one started at this size; clamped to max_bytes / 4 so that
  // acknowledged records held in a not yet deletable segment can never fill the spool.
  uint64_t segment_bytes = uint64_t{4} << 20;
  // Records waiting in memory for the writer; more are dropped ("queue_full").
  size_t queue_records = 8192;
  // False (tests of the bounded queue): records stay queued until StartWriter() or Stop().
  bool start_writer = true;
  // Group commit: once a record is queued, the writer waits up to this long (or until
  // kCommitBatch records are queued, or Flush()/Stop()) before it writes and fsyncs, so that a
  // busy agent pays one fdatasync per batch instead of one per decision (each is a disk flush,
  // and on a virtual disk a trap to the hypervisor). A crash loses at most this much of the
  // newest records. Zero: write as soon as a record is queued.
  absl::Duration commit_delay = absl::Milliseconds(5);
};

// A place in the spool: before the record at byte `offset` of segment number `segment`.
struct SpoolPosition {
  uint64_t segment = 0;
  uint64_t offset = 0;
  friend bool operator==(const SpoolPosition&, const SpoolPosition&) = default;
};

// Records read for one upload, oldest first. Hand it back to Acknowledge() once the controller
// has stored it.
struct AuditBatch {
  std::vector<v1::AuditRecord> records;
  uint64_t payload_bytes = 0;  // Serialized size of `records`.
  // Bookkeeping for Acknowledge(); callers only read these.
  SpoolPosition start;     // The cursor the batch was read from.
  SpoolPosition end;       // Where the cursor goes on Acknowledge().
  uint64_t end_index = 0;  // Records before `end` in its segment.
  uint64_t corrupt = 0;    // Records skipped because they failed their CRC or length check.
  uint64_t last_seq = 0;   // Highest sequence number among `records` (0: none).

  // True if acknowledging the batch would move the cursor.
  bool advances() const { return !(start == end); }
};

// What the spool holds and has dropped, for tests and logs (the metrics say the same).
struct AuditSpoolStats {
  uint64_t unacked_records = 0;  // Records on disk not yet acknowledged.
  uint64_t unacked_bytes = 0;    // Their framed size.
  uint64_t disk_bytes = 0;       // Size of all segment files (what max_bytes bounds).
  uint64_t segments = 0;         // Segment files.
  uint64_t written = 0;          // Records appended since Open().
  uint64_t dropped_queue_full = 0;
  uint64_t dropped_spool_full = 0;
  uint64_t dropped_corrupt = 0;  // Torn tails truncated at Open() count one each.
  uint64_t dropped_too_large = 0;
  uint64_t dropped_io_error = 0;
  uint64_t dropped_stopped = 0;
};

// Thread-safe. Submit() may be called from any thread; ReadBatch()/Acknowledge() from one
// reader at a time (the uploader). Metrics go into the registry passed to Open(), which must
// outlive the spool:
//   shuttle_agent_audit_spool_records   gauge: unacknowledged records on disk
//   shuttle_agent_audit_spool_bytes     gauge: size of the segment files
//   shuttle_agent_audit_dropped_total{reason}  counter: queue_full, spool_full, corrupt,
//                                       too_large, io_error, stopped
class AuditSpool final : public AuditSink {
 public:
  // Opens (or creates) the spool in options.dir: takes its lock (FAILED_PRECONDITION if another
  // spool holds it), reads the cursor, checks every record of every segment and truncates a
  // segment at its first bad record (logged, counted as "corrupt"), deletes segments already
  // acknowledged, and starts the writer thread. Sequence numbers continue after the highest one
  // found on disk or in the cursor, so ids increase across restarts as well as being unique.
  static absl::StatusOr<std::unique_ptr<AuditSpool>> Open(AuditSpoolOptions options,
                                                          prometheus::Registry& metrics);
  // Stop(), then releases the lock. Records still queued after Stop() are lost (counted).
  ~AuditSpool() override;
  AuditSpool(const AuditSpool&) = delete;
  AuditSpool& operator=(const AuditSpool&) = delete;

  // AuditSink: assigns the next sequence number and queues the record; no I/O, one short
  // mutex. The writer stamps id "<host>/<boot>/<seq>" and host_id (also interaction.host_id when
  // empty). A sequence number is used even by a dropped record, so a gap in an agent's
  // sequence numbers shows where records were dropped.
  void Submit(v1::AuditRecord record) override;

  // Starts the writer thread if options.start_writer was false. Idempotent.
  void StartWriter();
  // Waits until every record queued before the call is on disk (fsynced) or counted as dropped.
  // False if `timeout` passes first.
  bool Flush(absl::Duration timeout);
  // Writes what is queued, fsyncs, and joins the writer thread. Later Submit()s are dropped
  // (counted as "stopped"). Reading and acknowledging keep working. Idempotent.
  void Stop();

  // Reads up to `max_records` unacknowledged records from the cursor on, stopping before
  // `max_bytes` of payload (but always at least one record if there is one). Records only
  // become readable once fsynced. A record that fails its check is skipped with the rest of
  // its segment (counted as "corrupt" when the batch is acknowledged). Errors: the files could
  // not be read (the caller retries later).
  absl::StatusOr<AuditBatch> ReadBatch(size_t max_records, uint64_t max_bytes);
  // Durably moves the cursor to batch.end and deletes the segments wholly before it.
  // FAILED_PRECONDITION if the batch was not read from the current cursor; errors writing the
  // cursor leave it where it was (the batch will be read and sent again).
  absl::Status Acknowledge(const AuditBatch& batch);

  // Waits until at least `min_records` unacknowledged records or `min_bytes` of them are
  // readable, `deadline` passes, or `cancel` is true (call WakeWaiters() after setting it).
  // Returns true if the records are there.
  bool WaitForRecords(size_t min_records, uint64_t min_bytes, absl::Time deadline,
                      const std::atomic<bool>& cancel);
  // Makes waiters in WaitForRecords() re-check their `cancel`.
  void WakeWaiters();

  const std::string& boot_id() const { return options_.boot_id; }
  const std::string& dir() const { return options_.dir; }
  AuditSpoolStats stats() const;

 private:
  struct Segment {
    uint64_t bytes = 0;    // Valid (checked or written and fsynced) bytes.
    uint64_t records = 0;  // Records in those bytes.
  };
  struct Queued {
    uint64_t seq;
    v1::AuditRecord record;
  };
  AuditSpool(AuditSpoolOptions options, prometheus::Registry& metrics);
  absl::Status Recover();
  void WriterLoop();
  void WriteBatch(std::deque<Queued>& batch);
  // Appends `framed` (holding `records` records) to the active segment and fsyncs it; on
  // failure truncates the segment back and drops the records (io_error).
  bool Append(const std::string& framed, uint64_t records);
  // Makes a segment ready for a record of `framed` bytes: the last one found by Open() while it
  // has room, else a new one.
  absl::Status OpenOrRotate(uint64_t framed);
  absl::Status Rotate();
  absl::Status WriteCursor(const SpoolPosition& position, uint64_t last_seq);
  void Drop(prometheus::Counter& counter, uint64_t n);
  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_mu_);
  uint64_t UnackedRecordsLocked() const ABSL_SHARED_LOCKS_REQUIRED(state_mu_);
  uint64_t UnackedBytesLocked() const ABSL_SHARED_LOCKS_REQUIRED(state_mu_);
  std::string SegmentPath(uint64_t segment) const;

  AuditSpoolOptions options_;
  int lock_fd_ = -1;
  bool opened_ = false;  // Recover() succeeded; set before any thread starts.

  prometheus::Gauge& records_gauge_;
  prometheus::Gauge& bytes_gauge_;
  prometheus::Family<prometheus::Counter>& dropped_;
  prometheus::Counter& dropped_queue_full_;
  prometheus::Counter& dropped_spool_full_;
  prometheus::Counter& dropped_corrupt_;
  prometheus::Counter& dropped_too_large_;
  prometheus::Counter& dropped_io_error_;
  prometheus::Counter& dropped_stopped_;

  // Submit() side: the in-memory queue.
  mutable absl::Mutex queue_mu_;
  std::deque<Queued> queue_ ABSL_GUARDED_BY(queue_mu_);
  uint64_t next_seq_ ABSL_GUARDED_BY(queue_mu_) = 1;
  uint64_t last_queued_seq_ ABSL_GUARDED_BY(queue_mu_) = 0;
  uint64_t processed_seq_ ABSL_GUARDED_BY(queue_mu_) = 0;  // Written or dropped.
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;
  bool flush_requested_ ABSL_GUARDED_BY(queue_mu_) = false;  // Flush(): skip the commit delay.
  bool writer_started_ ABSL_GUARDED_BY(queue_mu_) = false;
  bool writer_done_ ABSL_GUARDED_BY(queue_mu_) = false;

  // The writer thread's own: the active segment, open for appending.
  int active_fd_ = -1;
  uint64_t active_segment_ = 0;  // 0: none; the next write opens or creates one.
  uint64_t active_bytes_ = 0;
  bool full_logged_ = false;  // The spool_full warning was logged; reset once a record fits.

  // What is on disk, shared by the writer and the reader.
  mutable absl::Mutex state_mu_;
  std::map<uint64_t, Segment> segments_ ABSL_GUARDED_BY(state_mu_);
  uint64_t disk_bytes_ ABSL_GUARDED_BY(state_mu_) = 0;
  uint64_t next_segment_ ABSL_GUARDED_BY(state_mu_) = 1;  // Number of the next new segment.
  SpoolPosition cursor_ ABSL_GUARDED_BY(state_mu_);
  uint64_t cursor_index_ ABSL_GUARDED_BY(state_mu_) = 0;  // Records before cursor_ in its segment.
  uint64_t acked_seq_ ABSL_GUARDED_BY(state_mu_) = 0;     // Highest sequence number acknowledged.
  uint64_t written_ ABSL_GUARDED_BY(state_mu_) = 0;

  std::once_flag stop_once_;
  std::thread writer_;  // Started under queue_mu_, joined by Stop().
};

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_AUDIT_SPOOL_H_
